"""Capsule's helper for plugins written in Python.

It gives a Python plugin what the Rust SDK's `Dispatch` gives a Rust one:
operations looked up by name, JSON payloads parsed and written, the
contract's `plugin-error` raised as ordinary exceptions (a host service's
refusal becomes one too), and the static manifest `capsule sign` embeds,
built from the same declarations so it cannot drift from the code.

It is one file over the bindings componentize-py generates from Capsule's
WIT (world `plugin`) and the standard library; copy it next to your plugin
(`capsule new NAME --lang python` does) and build with::

    componentize-py -d wit -w plugin componentize app -o NAME.wasm

Everything else — `log`, `config`, `kv`, `events`, `metrics`, `plugins`,
`trace`, `response` (chunks a streaming caller receives as they are
written: `response.write(b"...")`) — is used through the generated
bindings (`wit_world.imports`).

An exception that is not a `PluginError` (a bug, a `KeyError`) is not
caught: the call traps, and the host reports it as a `trap` carrying the
exception's last line, as it reports a Rust panic.
"""

import json
from typing import Any, Callable, Dict, List, Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import plugins, types

# The manifest format the host reads (`capsule-manifest` section).
MANIFEST_FORMAT = 1


class PluginError(Exception):
    """Fails the call with the contract's `plugin-error`; use a subclass."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wit(self) -> types.PluginError:
        return types.PluginError_Failed(self.message)


class InvalidInput(PluginError):
    """The payload or metadata could not be understood (HTTP 400)."""

    def to_wit(self) -> types.PluginError:
        return types.PluginError_InvalidInput(self.message)


class Unsupported(PluginError):
    """The plugin does not implement the requested operation (HTTP 404)."""

    def to_wit(self) -> types.PluginError:
        return types.PluginError_Unsupported(self.message)


class Denied(PluginError):
    """A host service the plugin needed was denied to it (HTTP 403)."""

    def to_wit(self) -> types.PluginError:
        return types.PluginError_Denied(self.message)


class Failed(PluginError):
    """Anything else that went wrong inside the plugin (HTTP 500)."""


def from_service_error(error: Err) -> PluginError:
    """The plugin error a host service's refusal becomes: `denied` stays
    `denied`; a quota, an invalid request or an unavailable service fails
    the call, naming which."""
    value = error.value
    message = getattr(value, "value", str(value))
    if isinstance(value, types.ServiceError_Denied):
        return Denied(message)
    if isinstance(value, types.ServiceError_QuotaExceeded):
        return Failed(f"quota exceeded: {message}")
    if isinstance(value, types.ServiceError_Invalid):
        return Failed(f"invalid request to a host service: {message}")
    return Failed(f"host service unavailable: {message}")


class _Operation:
    def __init__(self, name: str, about: str, function: Callable[..., Any],
                 raw: bool, input: Optional[dict], output: Optional[dict]) -> None:
        self.name = name
        self.about = about
        self.function = function
        self.raw = raw
        self.input = input
        self.output = output

    def manifest(self) -> Dict[str, Any]:
        entry: Dict[str, Any] = {"name": self.name}
        if self.about:
            entry["description"] = self.about
        if self.input is not None:
            entry["input"] = self.input
        if self.output is not None:
            entry["output"] = self.output
        return entry


class Plugin:
    """One plugin: what it says about itself and the operations it offers.

    `metrics` are declarations as the manifest writes them (`name`, `kind`
    of `counter`/`gauge`/`histogram`, `help`, `labels`); `config` is the
    JSON Schema of the plugin's configuration; `requires` lists
    `{"plugin": …}` or `{"capability": …}` with a semver `version` range.
    """

    def __init__(self, name: str, version: str, description: str = "",
                 capabilities: Optional[List[str]] = None,
                 metrics: Optional[List[dict]] = None,
                 config: Optional[dict] = None,
                 requires: Optional[List[dict]] = None) -> None:
        self.name = name
        self.version = version
        self.description = description
        self.capabilities = list(capabilities or [])
        self.metrics = list(metrics or [])
        self.config = config
        self.requires = list(requires or [])
        self._operations: Dict[str, _Operation] = {}
        self._on_event: Optional[Callable[[types.Event], types.EventOutcome]] = None
        self._on_init: Optional[Callable[[], None]] = None

    def operation(self, name: str, about: str = "", *, raw: bool = False,
                  input: Optional[dict] = None,
                  output: Optional[dict] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declares operation `name`. The function gets the payload parsed
        as JSON and returns a value written as JSON; with `raw=True` it gets
        the whole `Request` and returns `bytes` or a `Response`. `input` and
        `output` are JSON Schemas the manifest carries (the host checks
        requests against `input` when the operator turns `validate_input`
        on)."""
        if name in self._operations:
            raise ValueError(f"operation `{name}` is declared twice")

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            self._operations[name] = _Operation(name, about, function, raw, input, output)
            return function

        return register

    def on_event(self, function: Callable[[types.Event], types.EventOutcome]) -> Callable[[types.Event], types.EventOutcome]:
        """Handles events from subscribed topics (the default acknowledges
        every event)."""
        self._on_event = function
        return function

    def on_init(self, function: Callable[[], None]) -> Callable[[], None]:
        """Runs once on every fresh instance before it serves calls."""
        self._on_init = function
        return function

    def manifest(self) -> str:
        """The static manifest as JSON, as `capsule sign` embeds it."""
        document: Dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "capabilities": self.capabilities,
            "operations": [op.manifest() for op in self._operations.values()],
            "requires": self.requires,
        }
        if self.config is not None:
            document["config"] = self.config
        if self.metrics:
            document["metrics"] = self.metrics
        return json.dumps(document, separators=(",", ":"))

    def handle(self, request: types.Request) -> types.Response:
        operation = self._operations.get(request.operation)
        if operation is None:
            raise Err(types.PluginError_Unsupported(
                f"`{self.name}` has no operation `{request.operation}`"))

        def run() -> types.Response:
            if operation.raw:
                result = operation.function(request)
                if isinstance(result, types.Response):
                    return result
                return types.Response(payload=bytes(result), metadata=[])
            try:
                data = json.loads(request.payload) if request.payload else None
            except ValueError as err:
                raise InvalidInput(f"the payload is not JSON: {err}")
            result = operation.function(data)
            return types.Response(payload=json.dumps(result).encode(), metadata=[])

        return _answering(run)

    def handler(self) -> type:
        """The class componentize-py instantiates for the `handler` export:
        assign it to `Handler` in the app module."""
        plugin = self

        class Handler(exports.Handler):
            def describe(self) -> types.PluginInfo:
                return types.PluginInfo(name=plugin.name, version=plugin.version,
                                        description=plugin.description,
                                        capabilities=plugin.capabilities)

            def manifest(self) -> str:
                return plugin.manifest()

            def init(self) -> None:
                if plugin._on_init is not None:
                    _answering(plugin._on_init)

            def handle(self, request: types.Request) -> types.Response:
                return plugin.handle(request)

            def on_event(self, event: types.Event) -> types.EventOutcome:
                if plugin._on_event is None:
                    return types.EventOutcome_Ack()
                return _answering(lambda: plugin._on_event(event))

            def shutdown(self) -> None:
                pass

        return Handler


def _answering(body: Callable[[], Any]) -> Any:
    """Runs an export's body: a `PluginError`, or the error an import raised
    (a host service's refusal, another plugin's failure), becomes the
    export's `plugin-error`; anything else propagates and traps."""
    try:
        return body()
    except PluginError as err:
        raise Err(err.to_wit())
    except Err as err:
        answer = _from_import_error(err.value)
        if answer is None:
            raise
        raise Err(answer)


def _from_import_error(value: Any) -> Optional[types.PluginError]:
    """The plugin error an import's error case becomes, or None for a value
    that is not one (an `Err` the plugin raised with a plugin error)."""
    if isinstance(value, (types.ServiceError_Denied, types.ServiceError_QuotaExceeded,
                          types.ServiceError_Invalid, types.ServiceError_Unavailable)):
        return from_service_error(Err(value)).to_wit()
    # `plugins.call`: the callee's own error passes through; a denied edge
    # is `denied`; anything else fails the call, naming what happened.
    if isinstance(value, plugins.CallError_Plugin):
        return value.value
    if isinstance(value, plugins.CallError_Denied):
        return Denied(value.value).to_wit()
    if isinstance(value, plugins.CallError_Failed):
        return Failed(f"the callee stopped ({value.value.kind}): {value.value.message}").to_wit()
    if isinstance(value, (plugins.CallError_UnknownTarget, plugins.CallError_Ambiguous,
                          plugins.CallError_Refused)):
        return Failed(f"the call was not made: {value.value}").to_wit()
    return None
