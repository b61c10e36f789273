"""The ``text`` tools, in Python: counts words and letters, and changes case.

``words``: ``{"text": "a b"}`` → ``{"words": 2, "characters": 3}``;
``upper``: ``{"text": "a b"}`` → ``{"text": "A B"}``.
"""

from drover_sdk import AgentError, Tool, export_tools

TEXT = {
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": 100000}},
    "required": ["text"],
    "additionalProperties": False,
}


def words(input):
    text = input["text"]
    return {"words": len(text.split()), "characters": len(text)}


def upper(input):
    text = input["text"]
    if not text:
        raise AgentError("EmptyText", "there is no text to change").permanent()
    return {"text": text.upper()}


ToolProvider = export_tools(
    {
        "words": Tool(
            words,
            description="Counts the words and characters of a text",
            input_schema=TEXT,
            output_schema={
                "type": "object",
                "properties": {"words": {"type": "integer"}, "characters": {"type": "integer"}},
                "required": ["words", "characters"],
            },
        ),
        "upper": Tool(upper, description="Returns the text in capitals", input_schema=TEXT),
    }
)
