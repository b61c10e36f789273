"""The seed's first agent, in Python: ``{n}`` in, ``{received: n, ok: true}`` out."""

from drover_sdk import Agent, export


class Echo(Agent):
    id = "echo-py"
    version = "0.1.0"
    description = "Echoes the number it is given (Python)"
    input_schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    }
    output_schema = {
        "type": "object",
        "properties": {"received": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["received", "ok"],
    }

    def run(self, input):
        return {"received": input["n"], "ok": True}


WitWorld = export(Echo)
