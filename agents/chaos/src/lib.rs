//! A misbehaving agent for the host's containment tests. Its input picks the misbehaviour:
//!
//! | `mode`        | what it does                                                         |
//! |---------------|----------------------------------------------------------------------|
//! | `spin`        | loops forever in pure compute                                        |
//! | `hoard`       | allocates memory until something stops it                            |
//! | `panic`       | panics with a message                                                |
//! | `recurse`     | recurses until the call stack overflows                              |
//! | `oob`         | reads linear memory out of bounds                                    |
//! | `escape`      | tries to read files outside its scratch directory, saying why each failed |
//! | `sockets`     | tries a TCP connect to 127.0.0.1:`port`, a UDP send to `udpPort`, a name lookup |
//! | `env`         | returns every environment variable it can see                        |
//! | `big-output`  | returns an output of `bytes` bytes                                   |
//! | `flood`       | emits events until something stops it                                |
//! | `big-event`   | emits one event with a payload of about `bytes` bytes, then succeeds |
//! | `log-flood`   | makes `lines` `log` calls (of `bytes` bytes each, default short), then succeeds |
//! | `print`       | writes `lines` lines to stdout and stderr, then succeeds             |
//! | `blank-lines` | writes `lines` empty lines to stdout, then succeeds                  |
//! | `fail`        | returns an error (`retryable` as given)                               |
//! | `deaf`        | a long wait that ignores stop requests                               |
//! | `sleep`       | sleeps `ms` milliseconds (waking early on a stop), then succeeds    |
//! | `sieve`       | counts the primes below `n` (a CPU-bound workload)                   |
//! | `json`        | writes and re-reads a 200-item JSON document `n` times (CPU-bound)   |
//! | `clock-loop`  | calls `monotonic-clock.now` in a loop forever                        |
//! | `random-loop` | calls `get-random-bytes(bytes)` (default 64 KiB) in a loop forever   |
//! | `random`      | one `get-random-bytes(bytes)` call (default 2 GiB), then succeeds    |
//! | `pollables`   | subscribes to `monotonic-clock` timers forever, never dropping one   |
//! | `open-files`  | opens files in `/scratch` until refused, keeping each one open       |
//! | `long-fail`   | fails with a tag and a message of about `bytes` bytes each (multi-byte characters) |
//! | `fill-disk`   | writes `bytes` bytes (default 64 MiB) to a file in `/scratch`, then succeeds |
//! | `many-files`  | creates `n` empty files (default 1000) in `/scratch`, then succeeds  |
//! | `touch`       | allocates `bytes` bytes, writes to every page, then succeeds         |
//! | `model`       | asks the model behind alias `cheap` once, and returns its answer     |
//! | `ok`          | returns `{"ok": true}`                                               |

use std::hint::black_box;
use std::time::Duration;

use drover_sdk::{Agent, Error, Level, Value, emit, json};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    mode: String,
    #[serde(default)]
    bytes: Option<usize>,
    #[serde(default)]
    lines: Option<usize>,
    #[serde(default)]
    retryable: Option<bool>,
    #[serde(default)]
    ms: Option<u64>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    udp_port: Option<u16>,
}

struct Chaos;

impl Agent for Chaos {
    type Input = Input;
    type Output = Value;

    fn run(input: Input) -> Result<Value, Error> {
        match input.mode.as_str() {
            "spin" => spin(),
            "hoard" => hoard(),
            "panic" => panic!("chaos agent panicked on purpose"),
            "recurse" => Ok(json!({ "depth": recurse(0) })),
            "oob" => Ok(json!({ "read": out_of_bounds() })),
            "escape" => Ok(escape()),
            "sockets" => {
                let port = input.port.unwrap_or(9);
                Ok(sockets(port, input.udp_port.unwrap_or(port)))
            }
            "env" => Ok(json!(
                std::env::vars().collect::<std::collections::BTreeMap<_, _>>()
            )),
            "big-output" => Ok(json!({ "blob": "x".repeat(input.bytes.unwrap_or(8 << 20)) })),
            "flood" => flood(),
            "big-event" => {
                let blob = "x".repeat(input.bytes.unwrap_or(1 << 20));
                emit("big", &json!({ "blob": blob }))?;
                Ok(json!({ "ok": true }))
            }
            "log-flood" => {
                let lines = input.lines.unwrap_or(1000);
                let filler = "y".repeat(input.bytes.unwrap_or(0));
                for i in 0..lines {
                    drover_sdk::log(Level::Info, &format!("log line {i}{filler}"));
                }
                Ok(json!({ "ok": true, "lines": lines }))
            }
            "print" => {
                for i in 0..input.lines.unwrap_or(3) {
                    println!("stdout line {i}");
                    eprintln!("stderr line {i}");
                }
                Ok(json!({ "ok": true }))
            }
            "blank-lines" => {
                for _ in 0..input.lines.unwrap_or(3) {
                    println!();
                }
                Ok(json!({ "ok": true }))
            }
            "model" => {
                let request = drover_sdk::model::Request {
                    model: "cheap".into(),
                    messages: vec![drover_sdk::model::Message::user("hi")],
                    tools: Vec::new(),
                    max_output_tokens: None,
                    temperature: None,
                    json_output: false,
                };
                let response = drover_sdk::model::complete(&request)?;
                Ok(json!({ "content": response.message.content }))
            }
            "fail" => {
                let error = Error::new("ChaosFailure", "failed on purpose");
                Err(if input.retryable.unwrap_or(true) {
                    error
                } else {
                    error.permanent()
                })
            }
            "deaf" => {
                // Ignores stop requests: keeps waiting out its full minute whatever `sleep` says.
                let until = drover_sdk::now_ms() + 60_000;
                while drover_sdk::now_ms() < until {
                    drover_sdk::sleep(Duration::from_millis(100));
                }
                Ok(json!({ "ok": true }))
            }
            "sleep" => {
                let stopped = drover_sdk::sleep(Duration::from_millis(input.ms.unwrap_or(1000)));
                Ok(json!({ "ok": true, "stopped": stopped }))
            }
            "sieve" => Ok(json!({ "primes": sieve(input.n.unwrap_or(1_000_000)) })),
            "json" => round_trips(input.n.unwrap_or(100)),
            "clock-loop" => loop {
                black_box(wasip2::clocks::monotonic_clock::now());
            },
            "random-loop" => {
                let len = input.bytes.unwrap_or(64 << 10) as u64;
                loop {
                    black_box(wasip2::random::random::get_random_bytes(len));
                }
            }
            "random" => {
                let len = input.bytes.map_or(2 << 30, |b| b as u64);
                let bytes = wasip2::random::random::get_random_bytes(len);
                Ok(json!({ "ok": true, "bytes": bytes.len() }))
            }
            "pollables" => {
                let mut held = Vec::new();
                loop {
                    held.push(wasip2::clocks::monotonic_clock::subscribe_duration(
                        1_000_000,
                    ));
                }
            }
            "open-files" => open_files(),
            "fill-disk" => fill_disk(input.bytes.unwrap_or(64 << 20)),
            "many-files" => {
                let n = input.n.unwrap_or(1000);
                for i in 0..n {
                    std::fs::File::create(format!("/scratch/empty-{i}")).map_err(|e| {
                        Error::new("CreateFailed", format!("file {i}: {}", describe_io(&e)))
                    })?;
                }
                Ok(json!({ "ok": true, "files": n }))
            }
            "long-fail" => {
                let chars = input.bytes.unwrap_or(1 << 20) / 2;
                Err(Error::new("É".repeat(chars), "ü".repeat(chars)))
            }
            "touch" => {
                let mut block = vec![0u8; input.bytes.unwrap_or(64 << 20)];
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                let touched = black_box(&block).iter().filter(|b| **b == 1).count();
                Ok(json!({ "ok": true, "pages": touched }))
            }
            "ok" => Ok(json!({ "ok": true })),
            other => Err(Error::new("UnknownMode", format!("unknown mode {other:?}")).permanent()),
        }
    }
}

/// Counts the primes below `n` with the sieve of Eratosthenes.
fn sieve(n: usize) -> usize {
    let mut composite = vec![false; n];
    let mut count = 0;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            if i <= (n - 1) / i {
                let mut j = i * i;
                while j < n {
                    composite[j] = true;
                    j += i;
                }
            }
        }
    }
    count
}

/// Serializes a document of 200 records and parses it back, `rounds` times: the kind of work
/// an agent that transforms JSON does.
fn round_trips(rounds: usize) -> Result<Value, Error> {
    let items: Vec<Value> = (0..200)
        .map(|i| {
            json!({
                "id": i,
                "name": format!("item-{i}"),
                "tags": ["alpha", "beta", "gamma"],
                "score": f64::from(i) * 0.25,
                "active": i % 3 == 0,
            })
        })
        .collect();
    let mut doc = json!({ "items": items });
    let mut bytes = 0;
    for _ in 0..rounds {
        let text = serde_json::to_string(&doc)
            .map_err(|e| Error::new("Json", e.to_string()).permanent())?;
        bytes += text.len();
        doc = serde_json::from_str(&text)
            .map_err(|e| Error::new("Json", e.to_string()).permanent())?;
    }
    Ok(json!({ "bytes": bytes }))
}

/// Opens (creates) files in the scratch directory and keeps every one open until an open fails,
/// then fails with how many it held.
fn open_files() -> Result<Value, Error> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::create(format!("/scratch/open-{}", held.len())) {
            Ok(file) => held.push(file),
            Err(e) => {
                return Err(Error::new(
                    "OpenRefused",
                    format!("open number {} failed: {}", held.len() + 1, describe_io(&e)),
                ));
            }
        }
    }
}

/// Writes `bytes` bytes to `/scratch/fill`, 64 KiB at a time.
fn fill_disk(bytes: usize) -> Result<Value, Error> {
    use std::io::Write;
    let failed = |e: std::io::Error| Error::new("WriteFailed", describe_io(&e));
    let mut file = std::fs::File::create("/scratch/fill").map_err(failed)?;
    let chunk = vec![7u8; 64 << 10];
    let mut written = 0;
    while written < bytes {
        let n = chunk.len().min(bytes - written);
        file.write_all(&chunk[..n]).map_err(failed)?;
        written += n;
    }
    file.flush().map_err(failed)?;
    Ok(json!({ "ok": true, "written": written }))
}

fn spin() -> Result<Value, Error> {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
}

fn hoard() -> Result<Value, Error> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(black_box(vec![1u8; 1 << 20]));
    }
}

/// Recurses until the WebAssembly call stack is exhausted. The work after the call keeps it
/// from being turned into a loop, and no local lives in memory, so only the call stack grows.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1).rotate_left(1) ^ depth
}

fn flood() -> Result<Value, Error> {
    let mut n = 0u64;
    loop {
        emit("flood", &json!({ "n": n }))?;
        n += 1;
    }
}

/// Reads a byte far beyond the end of linear memory, which traps.
fn out_of_bounds() -> u8 {
    // An address no 32-bit linear memory of this agent reaches (it is held to far less).
    let address = black_box(0xFFFF_FF00_usize);
    // SAFETY: none; this is the point. The read traps in the WebAssembly sandbox.
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::read_volatile(address as *const u8)
    }
}

/// One attempt to reach something the sandbox should deny.
fn attempt(what: &str, result: Result<String, (&str, String)>) -> Value {
    match result {
        Ok(done) => json!({ "what": what, "escaped": true, "result": done }),
        Err((stage, error)) => json!({
            "what": what,
            "escaped": false,
            "stage": stage,
            "error": error,
        }),
    }
}

/// A read through `std::fs`, failing at stage `read` with the error's kind and message.
fn read(path: &str) -> Result<String, (&'static str, String)> {
    std::fs::read_to_string(path)
        .map(|text| format!("read {} bytes", text.len()))
        .map_err(|e| ("read", describe_io(&e)))
}

fn describe_io(e: &std::io::Error) -> String {
    format!("{:?}: {e}", e.kind())
}

/// Creates a symbolic link `name` in the scratch directory pointing at `target` (std has no
/// stable API for this on WASI, so this goes through the WASI filesystem interface directly).
/// Fails at stage `create-symlink` with the WASI error code.
fn symlink(target: &str, name: &str) -> Result<(), (&'static str, String)> {
    let scratch = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, path)| path == "/scratch")
        .ok_or(("create-symlink", "no /scratch preopen".to_string()))?;
    scratch
        .0
        .symlink_at(target, name)
        .map_err(|e| ("create-symlink", e.name().to_string()))
}

/// Tries every way out of the scratch directory it can think of and reports, for each, what
/// happened: which stage failed (`read`, or `create-symlink` for a link the host refused to
/// make) and why. A read through a symbolic link is only tried once the link exists.
fn escape() -> Value {
    let mut attempts = Vec::new();
    for path in [
        "/etc/passwd",
        "/proc/self/environ",
        "../../etc/passwd",
        "/scratch/../etc/passwd",
        "/scratch/../../../etc/passwd",
    ] {
        attempts.push(attempt(path, read(path)));
    }
    attempts.push(attempt(
        "symlink to /etc/passwd",
        symlink("/etc/passwd", "link-abs").and_then(|()| read("/scratch/link-abs")),
    ));
    attempts.push(attempt(
        "symlink to ../../etc/passwd",
        symlink("../../etc/passwd", "link-rel").and_then(|()| read("/scratch/link-rel")),
    ));
    attempts.push(attempt(
        "symlink to .., then up/etc/passwd",
        symlink("..", "up").and_then(|()| read("/scratch/up/etc/passwd")),
    ));
    attempts.push(attempt(
        "list /",
        std::fs::read_dir("/")
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .map_err(|e| ("list", describe_io(&e))),
    ));
    // The scratch directory itself works.
    let scratch = std::fs::write("/scratch/note.txt", "hello")
        .and_then(|()| std::fs::read_to_string("/scratch/note.txt"));
    json!({
        "attempts": attempts,
        "scratch": scratch.map_err(|e| e.to_string()),
    })
}

/// Tries the network: a TCP connect to 127.0.0.1:`port` (writing a greeting if it connects), a
/// UDP datagram to 127.0.0.1:`udp_port`, and a name lookup of `localhost`. Reports, for each,
/// the stage that failed and the WASI error code, or what it achieved.
fn sockets(port: u16, udp_port: u16) -> Value {
    use wasip2::sockets::network::{
        ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress,
    };
    use wasip2::sockets::{
        instance_network, ip_name_lookup, tcp_create_socket, udp, udp_create_socket,
    };

    let failed = |stage: &'static str| move |e: ErrorCode| (stage, e.name().to_string());
    let net = instance_network::instance_network();
    let target = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port,
        address: (127, 0, 0, 1),
    });

    let tcp = (|| {
        let socket = tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4)
            .map_err(failed("create"))?;
        socket
            .start_connect(&net, target)
            .map_err(failed("connect"))?;
        let (_input, output) = loop {
            match socket.finish_connect() {
                Err(ErrorCode::WouldBlock) => socket.subscribe().block(),
                other => break other.map_err(failed("connect"))?,
            }
        };
        output
            .blocking_write_and_flush(b"hello from chaos")
            .map_err(|e| ("write", format!("{e:?}")))?;
        Ok("connected and wrote a greeting".to_string())
    })();

    let udp = (|| {
        let socket = udp_create_socket::create_udp_socket(IpAddressFamily::Ipv4)
            .map_err(failed("create"))?;
        let local = IpSocketAddress::Ipv4(Ipv4SocketAddress {
            port: 0,
            address: (127, 0, 0, 1),
        });
        socket.start_bind(&net, local).map_err(failed("bind"))?;
        loop {
            match socket.finish_bind() {
                Err(ErrorCode::WouldBlock) => socket.subscribe().block(),
                other => break other.map_err(failed("bind"))?,
            }
        }
        let remote = IpSocketAddress::Ipv4(Ipv4SocketAddress {
            port: udp_port,
            address: (127, 0, 0, 1),
        });
        let (_incoming, outgoing) = socket.stream(Some(remote)).map_err(failed("send"))?;
        outgoing.subscribe().block();
        outgoing.check_send().map_err(failed("send"))?;
        let sent = outgoing
            .send(&[udp::OutgoingDatagram {
                data: b"hello from chaos".to_vec(),
                remote_address: None,
            }])
            .map_err(failed("send"))?;
        Ok(format!("sent {sent} datagram(s)"))
    })();

    let lookup = (|| {
        let stream =
            ip_name_lookup::resolve_addresses(&net, "localhost").map_err(failed("resolve"))?;
        let mut found = 0;
        loop {
            match stream.resolve_next_address() {
                Ok(Some(_)) => found += 1,
                Ok(None) => break,
                Err(ErrorCode::WouldBlock) => stream.subscribe().block(),
                Err(e) => return Err(failed("resolve")(e)),
            }
        }
        Ok(format!("resolved {found} address(es)"))
    })();

    json!({
        "attempts": [
            attempt("tcp connect", tcp),
            attempt("udp send", udp),
            attempt("name lookup", lookup),
        ]
    })
}

drover_sdk::export_agent!(Chaos);
