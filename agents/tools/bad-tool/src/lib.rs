//! The `bad-tool` tool: misbehaves on request, to show that a tool's misbehaviour stays inside
//! its call. Its input's `mode` picks what it does:
//!
//! | `mode`         | what it does                                                     |
//! |----------------|------------------------------------------------------------------|
//! | `ok`           | returns `{"ok": true}`                                           |
//! | `trap`         | panics                                                           |
//! | `spin`         | loops forever (its fuel or its timeout ends it)                  |
//! | `hoard`        | allocates until its memory limit stops it                        |
//! | `big-output`   | returns a string of `bytes` bytes (default 8 MiB)                |
//! | `sleep`        | sleeps `ms` milliseconds (default 10 minutes)                    |
//! | `fail`         | fails with tag `Broken`                                          |
//! | `wrong-output` | returns output that does not match its output schema             |
//! | `chatty`       | writes to stdout and stderr, logs and emits events, then returns |

use drover_sdk::{Error, Level, Tool, Value, export_toolbox, json};
use serde::Deserialize;

#[derive(Deserialize)]
struct Input {
    mode: String,
    bytes: Option<usize>,
    ms: Option<u64>,
}

struct BadTool;

impl Tool for BadTool {
    type Input = Input;
    type Output = Value;

    const NAME: &'static str = "bad-tool";
    const DESCRIPTION: &'static str = "Misbehaves on request (a test fixture): traps, spins, hoards memory, floods its output, \
         sleeps past its timeout or fails";

    fn input_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "mode": {
                    "enum": ["ok", "trap", "spin", "hoard", "big-output", "sleep", "fail",
                             "wrong-output", "chatty"]
                },
                "bytes": { "type": "integer", "minimum": 0 },
                "ms": { "type": "integer", "minimum": 0 }
            },
            "required": ["mode"]
        }))
    }

    fn output_schema() -> Option<Value> {
        Some(json!({ "type": "object" }))
    }

    fn call(input: Input) -> Result<Value, Error> {
        match input.mode.as_str() {
            "ok" => Ok(json!({ "ok": true })),
            "trap" => panic!("bad-tool trapped on purpose"),
            "spin" => spin(),
            "hoard" => hoard(),
            "big-output" => Ok(json!({ "blob": "x".repeat(input.bytes.unwrap_or(8 << 20)) })),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(
                    input.ms.unwrap_or(600_000),
                ));
                Ok(json!({ "slept": true }))
            }
            "fail" => Err(Error::new("Broken", "bad-tool failed on purpose").permanent()),
            "wrong-output" => Ok(json!(["not", "an", "object"])),
            "chatty" => {
                println!("bad-tool on stdout");
                eprintln!("bad-tool on stderr");
                drover_sdk::log(Level::Info, "bad-tool logs");
                drover_sdk::emit("bad_tool", &json!({ "n": 1 }))?;
                drover_sdk::heartbeat();
                Ok(json!({ "chatty": true, "stopRequested": drover_sdk::stop_requested() }))
            }
            other => Err(Error::new("UnknownMode", format!("unknown mode {other:?}")).permanent()),
        }
    }
}

export_toolbox!(BadTool);

fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn hoard() -> Result<Value, Error> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        chunk[0] = 1;
        chunks.push(std::hint::black_box(chunk));
        if chunks.len() > 1 << 16 {
            return Ok(json!({ "chunks": chunks.len() }));
        }
    }
}
