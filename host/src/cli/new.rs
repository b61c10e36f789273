//! `drover-host new`: a ready agent in the agents directory, in Rust, TypeScript or Python.
//!
//! A Rust agent is a crate of the agents workspace (`agents/Cargo.toml`, which lists it as a
//! member); a TypeScript or Python agent is one module. Each gets a manifest beside where its
//! component will go (`agents/<name>.toml`) with the defaults written out, commented, and the
//! command that builds it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

/// The language of a new agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// A Rust crate with `drover-sdk`, built for `wasm32-wasip2`.
    Rust,
    /// A TypeScript module, built with `guest-sdk/js/build.mjs`.
    Ts,
    /// A JavaScript module, built with `guest-sdk/js/build.mjs`.
    Js,
    /// A Python module, built with `drover_sdk.build`.
    Py,
}

/// How a new agent lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NewLifecycle {
    /// Runs to completion and returns an output.
    Job,
    /// Loops until it is asked to stop.
    LongLived,
}

/// `drover-host new <name>`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The agent's name: its directory, its component's file name and its id (1 to 64
    /// lowercase letters, digits, `-` or `_`, starting with a letter).
    pub name: String,
    /// The language to write it in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Whether it runs to completion or until stopped.
    #[arg(long, value_enum, default_value_t = NewLifecycle::Job)]
    pub lifecycle: NewLifecycle,
    /// The agents directory (for Rust, the agents workspace).
    #[arg(long, env = "DROVER_AGENTS_DIR", default_value = "agents")]
    pub agents: PathBuf,
}

/// Creates the agent and prints what to do next.
pub fn new(args: NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let agents = &args.agents;
    if !agents.is_dir() {
        bail!(
            "{} is not a directory: run this from the repository root, or pass --agents",
            agents.display()
        );
    }
    let dir = agents.join(&args.name);
    if dir.exists() {
        bail!("{} exists already; pick another name", dir.display());
    }
    let manifest = agents.join(format!("{}.toml", args.name));
    if manifest.exists() {
        bail!("{} exists already; pick another name", manifest.display());
    }
    let long_lived = args.lifecycle == NewLifecycle::LongLived;
    let name = args.name.as_str();
    let build = match args.lang {
        Lang::Rust => {
            let workspace = agents.join("Cargo.toml");
            let text = std::fs::read_to_string(&workspace).with_context(|| {
                format!(
                    "a Rust agent is a crate of the agents workspace, and {} cannot be read \
                     (for a TypeScript or Python agent, pass --lang ts or --lang py)",
                    workspace.display()
                )
            })?;
            let members = with_member(&text, name).with_context(|| {
                format!(
                    "cannot add {name} to the members of {}",
                    workspace.display()
                )
            })?;
            write(&dir.join("Cargo.toml"), &rust_crate(name))?;
            write(&dir.join("src/lib.rs"), &rust_agent(name, long_lived))?;
            write(&workspace, &members)?;
            let crate_file = name.replace('-', "_");
            format!(
                "cargo build --release --target wasm32-wasip2 --manifest-path {ws} -p {name}\n  \
                 cp {agents}/target/wasm32-wasip2/release/{crate_file}.wasm {agents}/.{name}.tmp \
                 && mv {agents}/.{name}.tmp {agents}/{name}.wasm",
                ws = workspace.display(),
                agents = agents.display(),
            )
        }
        Lang::Ts | Lang::Js => {
            let file = if args.lang == Lang::Ts {
                "agent.ts"
            } else {
                "agent.js"
            };
            write(
                &dir.join(file),
                &js_agent(name, long_lived, args.lang == Lang::Ts),
            )?;
            format!(
                "node guest-sdk/js/build.mjs {} -o {}",
                dir.join(file).display(),
                agents.join(format!("{name}.wasm")).display()
            )
        }
        Lang::Py => {
            write(&dir.join("app.py"), &py_agent(name, long_lived))?;
            format!(
                "PYTHONPATH=guest-sdk/python python3 -m drover_sdk.build {} -o {}",
                dir.join("app.py").display(),
                agents.join(format!("{name}.wasm")).display()
            )
        }
    };
    write(&manifest, &manifest_text(name, long_lived))?;
    let first = if long_lived {
        format!("drover-host enqueue {name}      # then: drover-host stop <job id>")
    } else {
        format!(r#"drover-host enqueue {name} '{{"name": "Ada"}}' --wait"#)
    };
    let agents_flag = if agents == Path::new("agents") {
        String::new()
    } else {
        format!(" --agents {}", agents.display())
    };
    println!(
        "created {} and {}\n\nbuild it and install it into the agents directory (add --watch to \
         rebuild on every change):\n  drover-host build {name}{agents_flag}\n\nwhich runs:\n  \
         {build}\n\nthen, with the host running:\n  {first}",
        dir.display(),
        manifest.display(),
    );
    Ok(())
}

/// An agent name that is also a crate name, a file name and an id.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "{name:?} is not a valid agent name: use 1 to 64 lowercase letters, digits, `-` or \
             `_`, starting with a letter (e.g. `greeter`)"
        );
    }
    Ok(())
}

/// Writes a new file, creating its directory.
fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The workspace manifest with `name` added to its `members` list (one line or several).
fn with_member(workspace: &str, name: &str) -> anyhow::Result<String> {
    let start = workspace
        .find("members = [")
        .context("it has no `members = [` list")?;
    let open = start + "members = [".len();
    let close = open
        + workspace[open..]
            .find(']')
            .context("its `members` list is not closed")?;
    let list = &workspace[open..close];
    let quoted = format!("\"{name}\"");
    if list.contains(&quoted) {
        return Ok(workspace.to_string());
    }
    let trimmed = list.trim_end();
    let addition = if trimmed.trim().is_empty() {
        quoted
    } else if trimmed.ends_with(',') {
        if list.contains('\n') {
            format!("\n    {quoted},")
        } else {
            format!(" {quoted}")
        }
    } else {
        format!(", {quoted}")
    };
    let end = open + trimmed.len();
    Ok(format!(
        "{}{addition}{}",
        &workspace[..end],
        &workspace[end..]
    ))
}

fn rust_crate(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
description = "What {name} does, in one line"
version.workspace = true
edition.workspace = true
publish = false

[lib]
# A component is a dynamic library: without this, cargo builds no .wasm.
crate-type = ["cdylib"]

[dependencies]
drover-sdk.workspace = true
serde.workspace = true
"#
    )
}

fn rust_agent(name: &str, long_lived: bool) -> String {
    if long_lived {
        return format!(
            r#"//! {name}: a long-lived agent. It loops until the host asks it to stop, heartbeating,
//! then returns (which the host records as completed).

use std::time::Duration;

use drover_sdk::{{Agent, Error, Lifecycle, Value, emit, heartbeat, json, sleep, stop_requested}};

struct Worker;

impl Agent for Worker {{
    type Input = Value;
    type Output = Value;

    const LIFECYCLE: Lifecycle = Lifecycle::LongLived;

    fn run(_input: Value) -> Result<Value, Error> {{
        let mut ticks = 0u64;
        while !stop_requested() {{
            heartbeat();
            ticks += 1;
            emit("tick", &json!({{ "n": ticks }}))?;
            if sleep(Duration::from_secs(5)) {{
                break; // asked to stop: finish up and return
            }}
        }}
        Ok(json!({{ "ticks": ticks }}))
    }}
}}

drover_sdk::export_agent!(Worker);
"#
        );
    }
    format!(
        r#"//! {name}: `{{"name": "Ada"}}` in, `{{"greeting": "Hello, Ada!"}}` out.

use drover_sdk::{{Agent, Error, Value, emit, json}};
use serde::{{Deserialize, Serialize}};

#[derive(Deserialize)]
struct Input {{
    name: String,
}}

#[derive(Serialize)]
struct Output {{
    greeting: String,
}}

struct Greeter;

impl Agent for Greeter {{
    type Input = Input;
    type Output = Output;

    fn input_schema() -> Option<Value> {{
        Some(json!({{
            "type": "object",
            "properties": {{ "name": {{ "type": "string" }} }},
            "required": ["name"]
        }}))
    }}

    fn run(input: Input) -> Result<Output, Error> {{
        if input.name.is_empty() {{
            return Err(Error::new("EmptyName", "name must not be empty").permanent());
        }}
        emit("greeted", &json!({{ "name": input.name }}))?;
        Ok(Output {{
            greeting: format!("Hello, {{}}!", input.name),
        }})
    }}
}}

drover_sdk::export_agent!(Greeter);
"#
    )
}

fn js_agent(name: &str, long_lived: bool, typescript: bool) -> String {
    if long_lived {
        return format!(
            r#"// {name}: a long-lived agent. It loops until the host asks it to stop, heartbeating,
// then returns (which the host records as completed).

import {{ defineAgent, emit, heartbeat, sleep, stopRequested }} from 'drover-sdk';

export const {{ describe, run }} = defineAgent({{
  id: '{name}',
  lifecycle: 'long-lived',
  run() {{
    let ticks = 0;
    while (!stopRequested()) {{
      heartbeat();
      ticks += 1;
      emit('tick', {{ n: ticks }});
      if (sleep(5000)) {{
        break; // asked to stop: finish up and return
      }}
    }}
    return {{ ticks }};
  }},
}});
"#
        );
    }
    let (input_type, param) = if typescript {
        ("\ninterface Input {\n  name: string;\n}\n", "input: Input")
    } else {
        ("", "input")
    };
    format!(
        r#"// {name}: `{{"name": "Ada"}}` in, `{{"greeting": "Hello, Ada!"}}` out.

import {{ AgentError, defineAgent, emit }} from 'drover-sdk';
{input_type}
export const {{ describe, run }} = defineAgent({{
  id: '{name}',
  description: 'What {name} does, in one line',
  inputSchema: {{
    type: 'object',
    properties: {{ name: {{ type: 'string' }} }},
    required: ['name'],
  }},
  run({param}) {{
    if (input.name === '') {{
      throw new AgentError('EmptyName', 'name must not be empty').permanent();
    }}
    emit('greeted', {{ name: input.name }});
    return {{ greeting: `Hello, ${{input.name}}!` }};
  }},
}});
"#
    )
}

fn py_agent(name: &str, long_lived: bool) -> String {
    let class = class_name(name);
    if long_lived {
        return format!(
            r#""""{name}: a long-lived agent. It loops until the host asks it to stop, heartbeating,
then returns (which the host records as completed)."""

from drover_sdk import Agent, emit, export, heartbeat, sleep, stop_requested


class {class}(Agent):
    id = "{name}"
    lifecycle = "long-lived"

    def run(self, input):
        ticks = 0
        while not stop_requested():
            heartbeat()
            ticks += 1
            emit("tick", {{"n": ticks}})
            if sleep(5000):
                break  # asked to stop: finish up and return
        return {{"ticks": ticks}}


WitWorld = export({class})
"#
        );
    }
    format!(
        r#""""{name}: ``{{"name": "Ada"}}`` in, ``{{"greeting": "Hello, Ada!"}}`` out."""

from drover_sdk import Agent, AgentError, emit, export


class {class}(Agent):
    id = "{name}"
    description = "What {name} does, in one line"
    input_schema = {{
        "type": "object",
        "properties": {{"name": {{"type": "string"}}}},
        "required": ["name"],
    }}

    def run(self, input):
        if not input["name"]:
            raise AgentError("EmptyName", "name must not be empty").permanent()
        emit("greeted", {{"name": input["name"]}})
        return {{"greeting": f"Hello, {{input['name']}}!"}}


WitWorld = export({class})
"#
    )
}

/// `my-agent` → `MyAgent`.
fn class_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

fn manifest_text(name: &str, long_lived: bool) -> String {
    let lifecycle = if long_lived { "long-lived" } else { "job" };
    format!(
        r#"# The manifest of {name}: beside {name}.wasm, read when it loads. Every field is optional;
# the commented lines show the defaults.
lifecycle = "{lifecycle}"
# description = "…"                  # what the component's own description says
# scratch-dir = false                # a private directory per run, at /scratch
# stop-grace-ms = 30000              # long-lived: how long a stop waits before interrupting
# models = ["cheap"]                 # model aliases (from the host's drover.toml) it may call
# tools = ["calc"]                   # tools it may call
# allowed-outbound-hosts = []        # where its HTTP requests may go
# secrets = []                       # secrets the host puts into its requests

[limits]                             # defaults for a job (a long-lived agent: see the docs)
# fuel = 10_000_000_000              # about one unit an instruction; "unlimited" for none
# memory = "64MiB"
# timeout-ms = 60000                 # wall-clock time per run; "none" for no limit
# max-output-bytes = "1MiB"
# max-events = 10000                 # events per run

[env]
# GREETING = "hello"                 # variables the agent can read (Rust, Python)
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_a_member_to_one_line_and_multi_line_lists() {
        let one = "[workspace]\nmembers = [\"echo\", \"chaos\"]\n";
        assert_eq!(
            with_member(one, "greeter").expect("added"),
            "[workspace]\nmembers = [\"echo\", \"chaos\", \"greeter\"]\n"
        );
        let many = "[workspace]\nmembers = [\n    \"echo\",\n]\n";
        assert_eq!(
            with_member(many, "greeter").expect("added"),
            "[workspace]\nmembers = [\n    \"echo\",\n    \"greeter\",\n]\n"
        );
        let empty = "[workspace]\nmembers = []\n";
        assert_eq!(
            with_member(empty, "greeter").expect("added"),
            "[workspace]\nmembers = [\"greeter\"]\n"
        );
        assert_eq!(with_member(one, "echo").expect("kept"), one);
        assert!(with_member("[workspace]\n", "greeter").is_err());
    }

    #[test]
    fn names_are_checked() {
        for good in ["greeter", "my-agent", "a1_b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Greeter", "1st", "a.b", "a b", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(class_name("my-agent_x"), "MyAgentX");
    }
}
