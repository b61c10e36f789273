"""drover-sdk for Python: agents and tools as WASI 0.2 components.

An agent is a subclass of :class:`Agent` whose ``run`` takes the job's input (parsed JSON) and
returns its output (anything ``json.dumps`` takes); ``WitWorld = export(MyAgent)`` in the app
module makes it the component's export. A toolbox is a dict of :class:`Tool` by name, exported
with ``ToolProvider = export_tools({...})``. Each function below wraps one function of
``wit/agent.wit`` (the contract with the host), in snake_case. Build with ``drover-build-py``
(``python -m drover_sdk.build``).

A toolbox's world imports only ``host``; the functions of the other interfaces fail there.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional


def _interface(name: str):
    """The bindings of host interface ``name``, or ``None`` where the world has none (a
    toolbox imports only ``host``) or outside a component build.

    They are imported here, when the app imports this module at build time: componentize-py
    keeps only the interfaces imported then, so one imported later would be missing."""
    try:
        return importlib.import_module(f"wit_world.imports.{name}")
    except ImportError:
        return None


types = _interface("types")
host = _interface("host")
model = _interface("model")
tools = _interface("tools")
agents = _interface("agents")
inbox = _interface("inbox")
try:
    from componentize_py_types import Err, Ok
except ImportError:  # outside a component build
    Err = Ok = None

__all__ = [
    "Agent",
    "AgentError",
    "Tool",
    "export",
    "export_tools",
    "emit",
    "heartbeat",
    "log",
    "now",
    "stop_requested",
    "sleep",
    "model_aliases",
    "complete",
    "list_tools",
    "call_tool",
    "call_tools",
    "spawn",
    "wait_for",
    "stop_child",
    "list_children",
    "receive",
    "reply",
]


class AgentError(Exception):
    """A failure the host records with its ``tag``; ``retryable`` says whether another attempt
    may help."""
    def __init__(self, tag: str, message: str, retryable: bool = True):
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.retryable = retryable

    def permanent(self) -> "AgentError":
        """The same failure, marked as not worth retrying."""
        self.retryable = False
        return self

    def __repr__(self) -> str:
        return f"AgentError({self.tag!r}, {self.message!r}, retryable={self.retryable})"


def _failure(error: BaseException):
    """Any exception, as the WIT ``failure`` record."""
    if isinstance(error, AgentError):
        return types.Failure(tag=error.tag, message=error.message, retryable=error.retryable)
    message = str(error) or type(error).__name__
    return types.Failure(tag=type(error).__name__, message=message, retryable=True)


def _from_failure(failure) -> AgentError:
    return AgentError(failure.tag, failure.message, failure.retryable)


def _host_call(f: Callable[[], Any]) -> Any:
    """Calls ``f``, turning the ``Err`` a WIT import raises into an :class:`AgentError`."""
    try:
        return f()
    except Err as e:
        raise _from_failure(e.value) from None


def _fail(error: BaseException):
    """Raises ``error`` as the ``Err`` componentize-py returns as a WIT ``result``'s error."""
    raise Err(_failure(error))


def _parse_input(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise AgentError("InvalidInput", f"input is not JSON: {e}").permanent() from None


def _output_text(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise AgentError("InvalidOutput", f"the output cannot be written as JSON: {e}").permanent() from None


def _schema_text(schema: Any) -> Optional[str]:
    return None if schema is None else json.dumps(schema)


class Agent:
    """Subclass it, set the class attributes, and implement ``run``."""
    #: The id the agent suggests for itself (the host names it after its file).
    id: str = "agent"
    #: The agent's version.
    version: str = "0.1.0"
    #: One line on what it does.
    description: str = ""
    #: ``"job"`` (runs to completion) or ``"long-lived"`` (loops until stopped).
    lifecycle: str = "job"
    #: JSON Schema of the input (the host rejects other input before the run).
    input_schema: Any = None
    #: JSON Schema of the output.
    output_schema: Any = None

    def run(self, input: Any) -> Any:
        """Runs once per job: the input, parsed; returns the output. Raise :class:`AgentError`
        to fail with a tag."""
        raise NotImplementedError


def export(agent: type) -> type:
    """The ``WitWorld`` class componentize-py exports, running ``agent``: in the app module,
    ``WitWorld = export(MyAgent)``."""
    if not (isinstance(agent, type) and issubclass(agent, Agent)):
        raise TypeError("export takes a subclass of drover_sdk.Agent")
    if agent.lifecycle not in ("job", "long-lived"):
        raise ValueError(f"lifecycle is 'job' or 'long-lived', not {agent.lifecycle!r}")

    class WitWorld:
        def describe(self):
            return types.AgentInfo(
                id=agent.id,
                version=agent.version,
                description=agent.description,
                lifecycle=types.Lifecycle.JOB if agent.lifecycle == "job" else types.Lifecycle.LONG_LIVED,
                input_schema=_schema_text(agent.input_schema),
                output_schema=_schema_text(agent.output_schema),
            )

        def run(self, input: str) -> str:
            try:
                return _output_text(agent().run(_parse_input(input)))
            except Exception as e:  # every failure goes back to the host as a failure record
                _fail(e)

    return WitWorld


@dataclass
class Tool:
    """One tool of a toolbox: what it does, its schemas, and the function that answers it."""
    call: Callable[[Any], Any]
    description: str = ""
    input_schema: Any = None
    output_schema: Any = None


def export_tools(toolset: dict) -> type:
    """The ``ToolProvider`` class componentize-py exports for a toolbox: in the app module,
    ``ToolProvider = export_tools({"name": Tool(...)})``."""
    if not toolset:
        raise ValueError("export_tools needs at least one tool")

    class ToolProvider:
        def describe(self):
            return [
                types.ToolInfo(
                    name=name,
                    description=tool.description,
                    input_schema=_schema_text(tool.input_schema),
                    output_schema=_schema_text(tool.output_schema),
                )
                for name, tool in toolset.items()
            ]

        def call(self, name: str, input: str) -> str:
            try:
                tool = toolset.get(name)
                if tool is None:
                    raise AgentError("NotFound", f"no tool named {name}").permanent()
                return _output_text(tool.call(_parse_input(input)))
            except Exception as e:
                _fail(e)

    return ToolProvider


def emit(kind: str, payload: Any = None) -> None:
    """Appends an event ``kind`` with a JSON ``payload`` to the run's timeline."""
    host.emit(kind, json.dumps({} if payload is None else payload))


def heartbeat() -> None:
    """Marks the run as alive. Long-lived agents call this every loop."""
    host.heartbeat()


def log(level: str, message: str) -> None:
    """Writes a log line (``trace``, ``debug``, ``info``, ``warn`` or ``error``) to the run's
    timeline."""
    host.log(types.Level[level.upper()], str(message))


def now() -> int:
    """Wall-clock time in milliseconds since the Unix epoch."""
    return host.now()


def stop_requested() -> bool:
    """Whether the host has asked this agent to stop."""
    return host.stop_requested()


def sleep(ms: float) -> bool:
    """Sleeps up to ``ms`` milliseconds; ``True`` when it woke early because a stop was
    requested."""
    return host.sleep(max(0, int(ms)))


def model_aliases() -> list:
    """Model aliases this agent may call."""
    return model.aliases()


def complete(
    model_alias: str,
    messages: list,
    tools: Optional[list] = None,
    max_output_tokens: Optional[int] = None,
    temperature: Optional[float] = None,
    json_output: bool = False,
) -> dict:
    """Calls a model through the host. ``messages`` are dicts ``{role, content, tool_calls?,
    tool_call_id?}``; ``tools`` are ``{name, description, parameters}`` with ``parameters`` a
    JSON Schema. Returns ``{message, finish_reason, usage, cost_usd, model}`` as dicts."""
    def message(m: dict):
        return model.Message(
            role=model.Role[m["role"].upper()],
            content=m.get("content") or "",
            tool_calls=[
                model.ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"])
                for c in m.get("tool_calls") or []
            ],
            tool_call_id=m.get("tool_call_id"),
        )

    request = model.Request(
        model=model_alias,
        messages=[message(m) for m in messages],
        tools=[
            model.ToolDefinition(
                name=t["name"],
                description=t.get("description", ""),
                parameters=t["parameters"] if isinstance(t.get("parameters"), str) else json.dumps(t.get("parameters") or {}),
            )
            for t in tools or []
        ],
        max_output_tokens=max_output_tokens,
        temperature=temperature,
        json_output=json_output,
    )
    response = _host_call(lambda: model.complete(request))
    reply = response.message
    return {
        "message": {
            "role": reply.role.name.lower(),
            "content": reply.content,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls],
            "tool_call_id": reply.tool_call_id,
        },
        "finish_reason": response.finish_reason.name.lower().replace("_", "-"),
        "usage": {"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens},
        "cost_usd": response.cost_usd,
        "model": response.model,
    }


def list_tools() -> list:
    """The tools this agent may call: ``{name, description, input_schema, output_schema}``."""
    return [
        {
            "name": t.name,
            "description": t.description,
            "input_schema": None if t.input_schema is None else json.loads(t.input_schema),
            "output_schema": None if t.output_schema is None else json.loads(t.output_schema),
        }
        for t in tools.list()
    ]


def call_tool(name: str, input: Any) -> Any:
    """Calls tool ``name`` with ``input``; returns its output or raises its :class:`AgentError`."""
    return json.loads(_host_call(lambda: tools.call(name, json.dumps(input))))


def call_tools(calls: list) -> list:
    """Calls several tools ``(name, input)`` at once; returns, in order, the output or the
    :class:`AgentError` of each."""
    results = tools.call_many([tools.ToolRequest(name=n, input=json.dumps(i)) for n, i in calls])
    return [json.loads(r.value) if isinstance(r, Ok) else _from_failure(r.value) for r in results]


def spawn(
    agent_id: str,
    input: Any,
    priority: Optional[int] = None,
    max_attempts: Optional[int] = None,
    lifecycle: Optional[str] = None,
) -> str:
    """Spawns a child agent with ``input``; returns its id."""
    options = agents.SpawnOptions(
        priority=priority,
        max_attempts=max_attempts,
        lifecycle=None if lifecycle is None else types.Lifecycle[lifecycle.upper().replace("-", "_")],
    )
    return _host_call(lambda: agents.spawn(agent_id, json.dumps(input), options))


def wait_for(child_id: str, timeout_ms: int) -> dict:
    """Waits up to ``timeout_ms`` for a child: ``{status, output, error}``."""
    outcome = _host_call(lambda: agents.wait(child_id, max(0, int(timeout_ms))))
    return {
        "status": outcome.status.name.lower(),
        "output": None if outcome.output is None else json.loads(outcome.output),
        "error": None if outcome.error is None else _from_failure(outcome.error),
    }


def stop_child(child_id: str) -> None:
    """Asks a child to stop (a long-lived child stops gracefully; a job is cancelled)."""
    _host_call(lambda: agents.stop(child_id))


def list_children() -> list:
    """This run's children: ``{id, agent_id, status}``."""
    return [{"id": c.id, "agent_id": c.agent_id, "status": c.status.name.lower()} for c in agents.list_children()]


def receive(timeout_ms: int) -> Optional[dict]:
    """Waits up to ``timeout_ms`` for the next message: ``{id, body}``, or ``None``."""
    message = inbox.receive(max(0, int(timeout_ms)))
    return None if message is None else {"id": message.id, "body": json.loads(message.body)}


def reply(message_id: str, body: Any) -> None:
    """Answers message ``message_id`` with ``body``."""
    _host_call(lambda: inbox.reply(message_id, json.dumps(body)))
