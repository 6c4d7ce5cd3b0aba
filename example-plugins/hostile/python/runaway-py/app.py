"""runaway-py: a hostile plugin in Python. Each operation misbehaves the
way a Python plugin can, to show the sandbox stops it with the same typed
errors as a Rust plugin:

- `spin` loops for ever (`timeout`, or `out_of_fuel` under a fuel budget);
- `hoard` allocates without bound (`memory_limit`);
- `raise` raises an exception nothing catches (`trap`, with the exception's
  text);
- `recurse` recurses without bound past Python's own recursion limit
  (Python stops it with `RecursionError`, so this too is a `trap`).
"""

from capsule import Plugin

plugin = Plugin("runaway-py", "0.1.0", "Misbehaves in Python on purpose")


@plugin.operation("spin", "Loops for ever", raw=True)
def spin(_request):
    n = 0
    while True:
        n += 1


@plugin.operation("hoard", "Allocates without bound", raw=True)
def hoard(_request):
    kept = []
    while True:
        kept.append(bytearray(1 << 20))


@plugin.operation("raise", "Raises an exception nothing catches", raw=True)
def fail(_request):
    raise RuntimeError("runaway-py gave up on purpose")


def down(n: int) -> int:
    return down(n + 1) + 1


@plugin.operation("recurse", "Recurses without bound", raw=True)
def recurse(_request):
    return down(0)


Handler = plugin.handler()
