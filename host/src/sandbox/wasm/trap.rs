//! Turning a wasmtime error into a short, useful message for a run's record.
//!
//! A trap's `Display` starts with the context wasmtime adds, the backtrace header ("error while
//! executing at wasm backtrace:"), and keeps the trap itself ("wasm trap: call stack
//! exhausted") further down the chain. The message recorded for a run is the chain without
//! the backtrace, followed by the innermost few frames of the backtrace, each cut short.

use wasmtime::WasmBacktrace;

/// Frames of the backtrace kept in a message.
const FRAMES: usize = 3;
/// Longest function name kept (names of generic Rust functions can run to kilobytes).
const MAX_FRAME: usize = 120;
/// Longest single message of the chain kept.
const MAX_CAUSE: usize = 300;
/// What wasmtime's backtrace context starts with.
const BACKTRACE_HEADER: &str = "error while executing at wasm backtrace:";

/// The error's messages, outermost first, without the backtrace header: `"wasm trap: call
/// stack exhausted"`, or what a host function reported. Empty only if the chain is empty of
/// anything but the backtrace.
pub(crate) fn causes(error: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.starts_with(BACKTRACE_HEADER) {
            continue;
        }
        let line = text.lines().next().unwrap_or_default().trim();
        if line.is_empty() || parts.iter().any(|p| p == line) {
            continue;
        }
        parts.push(shorten(line, MAX_CAUSE));
    }
    parts.join(": ")
}

/// The innermost frames of the error's wasm backtrace, if it has one:
/// `"chaos::recurse ×3"` or `"core::panicking::panic, chaos::run, …"`.
pub(crate) fn top_frames(error: &wasmtime::Error) -> Option<String> {
    let backtrace = error.downcast_ref::<WasmBacktrace>()?;
    frames_of(&backtrace.to_string())
}

/// `causes`, then the top frames in brackets: the message recorded for a trap.
pub(crate) fn describe(error: &wasmtime::Error) -> String {
    let causes = causes(error);
    let causes = if causes.is_empty() {
        "the guest failed".to_string()
    } else {
        causes
    };
    match top_frames(error) {
        Some(frames) => format!("{causes} (in {frames})"),
        None => causes,
    }
}

/// Parses the frames out of a backtrace's `Display` (which has already demangled the names):
///
/// ```text
/// error while executing at wasm backtrace:
///     0:  0x1d3c - chaos.wasm!chaos::recurse::h2b1f…
///                 at src/lib.rs:12:5
///     1:  0x1d40 - <unknown>!<wasm function 42>
/// ```
///
/// The frames of the language runtime's panic and abort machinery at the top are skipped (the
/// frame that panicked is the interesting one), repeats are collapsed, and at most [`FRAMES`]
/// are kept.
fn frames_of(text: &str) -> Option<String> {
    let names: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let (index, rest) = line.trim_start().split_once(": ")?;
            (!index.is_empty() && index.chars().all(|c| c.is_ascii_digit()))
                .then(|| frame_name(rest))
        })
        .collect();
    let first_own = names.iter().position(|name| !is_runtime(name)).unwrap_or(0);
    let mut frames: Vec<(&str, usize)> = Vec::new();
    let mut shown = 0;
    for name in &names[first_own..] {
        let full = frames.len() == FRAMES;
        match frames.last_mut() {
            Some((last, count)) if *last == name => *count += 1,
            _ if full => break,
            _ => frames.push((name, 1)),
        }
        shown += 1;
    }
    if frames.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = frames
        .into_iter()
        .map(|(name, count)| match count {
            1 => name.to_string(),
            n => format!("{name} ×{n}"),
        })
        .collect();
    // wasmtime captures at most 20 frames by default: a trace that long may have been cut.
    if first_own + shown < names.len() || names.len() >= 20 {
        parts.push("…".to_string());
    }
    Some(parts.join(", "))
}

/// Whether a frame belongs to the Rust runtime's panic, abort or allocation machinery.
fn is_runtime(name: &str) -> bool {
    let function = name.split_once('!').map_or(name, |(_, f)| f);
    let function = function.trim_start_matches('<');
    [
        "abort",
        "std::",
        "core::",
        "alloc::",
        "__rust",
        "rust_panic",
        "rust_begin_unwind",
        "__rdl_",
        "__rg_",
        "dlmalloc::",
    ]
    .iter()
    .any(|prefix| function.starts_with(prefix))
}

/// `0x1d3c - chaos.wasm!chaos::recurse::h2b1f0a9c3d4e5f67` → `chaos.wasm!chaos::recurse`.
fn frame_name(rest: &str) -> String {
    let rest = match rest.split_once(" - ") {
        Some((offset, name)) if offset.trim_start().starts_with("0x") => name,
        _ => rest,
    };
    let rest = rest.strip_prefix("<unknown>!").unwrap_or(rest).trim();
    shorten(&strip_disambiguators(strip_hash(rest)), MAX_FRAME)
}

/// Drops the `::h0123456789abcdef` hash a legacy-mangled Rust symbol ends with.
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((path, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            path
        }
        _ => name,
    }
}

/// Drops the `[d123b7a1a2ed1472]` crate disambiguators of v0-mangled Rust symbols.
fn strip_disambiguators(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(open) = rest.find('[') {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        match after[1..].find(']') {
            Some(close) if close > 0 && after[1..=close].chars().all(|c| c.is_ascii_hexdigit()) => {
                rest = &after[close + 2..];
            }
            _ => {
                out.push('[');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Cuts `text` to at most `max` bytes (on a character boundary), marking the cut.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backtrace_header_is_skipped_and_the_trap_kept() {
        let error = wasmtime::format_err!("wasm trap: call stack exhausted")
            .context(format!("{BACKTRACE_HEADER}\n    0: 0x1 - a!f"));
        assert_eq!(causes(&error), "wasm trap: call stack exhausted");
    }

    #[test]
    fn frames_are_parsed_collapsed_and_cut() {
        let text = format!(
            "{BACKTRACE_HEADER}\n    0:  0x1d3c - chaos.wasm!chaos::recurse::h2b1f0a9c3d4e5f67\n\
             \x20                   at src/lib.rs:12:5\n    1:  0x1d40 - chaos.wasm!chaos::recurse::h2b1f0a9c3d4e5f67\n\
             \x20   2:  0x1d40 - chaos.wasm!chaos::recurse::h2b1f0a9c3d4e5f67\n\
             \x20   3:  0x2000 - <unknown>!<wasm function 42>\n\
             \x20   4:  0x2100 - chaos.wasm!main\n    5:  0x2200 - chaos.wasm!_start"
        );
        assert_eq!(
            frames_of(&text).as_deref(),
            Some("chaos.wasm!chaos::recurse ×3, <wasm function 42>, chaos.wasm!main, …")
        );
        assert_eq!(frames_of(BACKTRACE_HEADER), None);
        let long = format!("{BACKTRACE_HEADER}\n    0: 0x1 - {}", "x".repeat(1000));
        assert!(frames_of(&long).is_some_and(|f| f.len() <= MAX_FRAME + 4));
    }

    #[test]
    fn the_panic_machinery_is_skipped() {
        let text = format!(
            "{BACKTRACE_HEADER}\n    0: 0x1 - chaos.wasm!abort\n\
             \x20   1: 0x2 - chaos.wasm!std[d123b7a1a2ed1472]::process::abort\n\
             \x20   1: 0x2 - chaos.wasm!std::rt::begin::<{{closure#0}}, !>\n\
             \x20   2: 0x3 - chaos.wasm!<chaos::Chaos as drover_sdk::Agent>::run\n\
             \x20   3: 0x4 - chaos.wasm!drover_sdk[0123456789abcdef]::__private::run"
        );
        assert_eq!(
            frames_of(&text).as_deref(),
            Some(
                "chaos.wasm!<chaos::Chaos as drover_sdk::Agent>::run, \
                 chaos.wasm!drover_sdk::__private::run"
            )
        );
        // Nothing but runtime frames: those are shown.
        let text = format!("{BACKTRACE_HEADER}\n    0: 0x1 - chaos.wasm!abort");
        assert_eq!(frames_of(&text).as_deref(), Some("chaos.wasm!abort"));
    }
}
