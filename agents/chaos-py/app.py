"""A misbehaving Python agent, for the containment tests: ``{mode}`` picks what it tries."""

import os

from drover_sdk import Agent, AgentError, export


def spin(_):
    n = 0
    while True:
        n += 1


def hoard(_):
    held = []
    while True:
        held.append(bytearray(1 << 20))


def throw(_):
    raise RuntimeError("chaos agent raised on purpose")


def fail(_):
    raise AgentError("ChaosFailure", "chaos agent failed on purpose").permanent()


def escape(_):
    """What a Python agent can reach of its surroundings: files, the environment."""
    found = {"environ": dict(os.environ)}
    for path in ["/etc/passwd", "/proc/self/environ", "../../etc/passwd"]:
        try:
            with open(path) as f:
                found[path] = f.read(64)
        except OSError as e:
            found[path] = f"{type(e).__name__}: {e.strerror or e}"
    try:
        found["listdir"] = os.listdir("/")
    except OSError as e:
        found["listdir"] = f"{type(e).__name__}: {e.strerror or e}"
    return found


def sockets(_):
    try:
        import socket  # CPython for WASI may not have it at all

        socket.create_connection(("127.0.0.1", 80), timeout=1)
        return {"connected": True}
    except Exception as e:
        return {"connected": False, "error": f"{type(e).__name__}: {e}"}


MODES = {"spin": spin, "hoard": hoard, "throw": throw, "fail": fail, "escape": escape, "sockets": sockets,
         "ok": lambda _: {"ok": True}}


class Chaos(Agent):
    id = "chaos-py"
    description = "Misbehaves on purpose (Python)"

    def run(self, input):
        mode = MODES.get((input or {}).get("mode"))
        if mode is None:
            raise AgentError("UnknownMode", f"no mode {input!r}").permanent()
        return mode(input)


WitWorld = export(Chaos)
