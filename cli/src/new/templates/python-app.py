"""__NAME__: a Capsule plugin written in Python.

- `greet` with `{"name": "Ada"}` answers `{"greeting": "Hello, Ada!"}`. The
  operator can change the greeting word with the config value `greeting`.
- Any other operation is answered with the `unsupported` plugin error.

`capsule.py` (beside this file) dispatches by operation and reads and
writes JSON; host services come from the bindings componentize-py
generates from `wit/plugin.wit` (`wit_world.imports`).
"""

from wit_world.imports import config, log

from capsule import InvalidInput, Plugin

plugin = Plugin("__NAME__", "0.1.0", "A Capsule plugin written in Python")


@plugin.operation(
    "greet",
    "Greets someone by name",
    input={"type": "object", "properties": {"name": {"type": "string", "minLength": 1}},
           "required": ["name"]},
)
def greet(data):
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("`name` must be a non-empty string")
    # A denied host service raises; the helper turns it into a plugin error.
    word = config.get("greeting") or "Hello"
    log.log(log.Level.INFO, f"greeting {name}")
    return {"greeting": f"{word}, {name}!"}


# componentize-py instantiates `Handler` for the `handler` export.
Handler = plugin.handler()
