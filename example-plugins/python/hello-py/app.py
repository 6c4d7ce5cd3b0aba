"""hello-py: the hello plugin, written in Python.

- `greet` with `{"name": "..."}` answers `{"greeting": "Hello, <name>!"}`;
  the operator may change the greeting word with the config key `greeting`.
  It counts greetings per name in the kv namespace it was granted (a
  greeting is still given without the grant) and by greeting word in the
  metric `greetings` when `metrics` is granted.
- `count` with `{"name": "..."}` answers `{"name": ..., "count": N}`: how
  often that name was greeted; without a kv grant the call is `denied`.
- `announce` with `{"topic": "...", "name": "..."}` publishes the greeting
  as an event; topics the operator did not grant are denied.
- `env` answers `{"vars": {...}}`: the environment the operator granted.

Built with componentize-py against Capsule's WIT (world `plugin`), with the
helper `capsule.py` for dispatch and JSON; every host service is reached
through the generated bindings.
"""

import json
import os

from componentize_py_types import Err
from wit_world.imports import config, events, kv, log, metrics

from capsule import InvalidInput, Plugin

plugin = Plugin(
    "hello-py",
    "0.1.0",
    "Greets people; the greeting word comes from the operator's config (Python)",
    capabilities=["greeting"],
    metrics=[{"name": "greetings", "kind": "counter",
              "help": "Greetings given, by greeting word", "labels": ["word"]}],
)

NAME = {"type": "string", "minLength": 1, "maxLength": 64}


def greeting(name: str) -> str:
    word = config.get("greeting") or "Hello"
    try:
        metrics.counter_add("greetings", [word], 1.0)
    except Err:
        pass  # a metric is never worth failing a greeting for
    return f"{word}, {name}!"


def name_of(data) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        raise InvalidInput("expected {\"name\": \"...\"} with a non-empty name")
    return data["name"]


@plugin.operation("greet", "Greets someone by name, with the operator's greeting word",
                  input={"type": "object", "properties": {"name": NAME}, "required": ["name"]},
                  output={"type": "object", "properties": {"greeting": {"type": "string"}},
                          "required": ["greeting"]})
def greet(data):
    name = name_of(data)
    log.log(log.Level.INFO, f"greeting {name}")
    try:
        kv.increment(f"greeted/{name}", 1)
    except Err as err:
        log.log(log.Level.DEBUG, f"not counted: {err.value}")
    return {"greeting": greeting(name)}


@plugin.operation("count", "How often a name was greeted (needs a kv grant)",
                  input={"type": "object", "properties": {"name": NAME}, "required": ["name"]})
def count(data):
    name = name_of(data)
    stored = kv.get(f"greeted/{name}")
    # `increment` keeps a counter as a little-endian signed 64-bit integer.
    count = int.from_bytes(stored, "little", signed=True) if stored is not None else 0
    return {"name": name, "count": count}


@plugin.operation("announce", "Publishes a greeting as an event on a granted topic")
def announce(data):
    if not isinstance(data, dict) or not isinstance(data.get("topic"), str):
        raise InvalidInput("expected {\"topic\": \"...\", \"name\": \"...\"}")
    text = greeting(name_of(data))
    events.publish(data["topic"], json.dumps({"greeting": text}).encode())
    return {"topic": data["topic"], "published": True}


@plugin.operation("env", "The environment variables the plugin was granted")
def env(_data):
    return {"vars": dict(os.environ)}


Handler = plugin.handler()
