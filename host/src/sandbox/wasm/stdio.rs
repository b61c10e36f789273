//! A guest's log output, within one byte budget per run: stdout and stderr, captured line by line
//! as `log` events, and the messages of its `log` calls.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::sandbox::RunContext;

/// Longest line kept whole; longer ones are split.
const MAX_LINE: usize = 8 << 10;
/// Lines of stderr remembered for error messages (a panic's message is printed there).
const STDERR_TAIL: usize = 8;

/// The captured output of one run.
#[derive(Clone)]
pub(crate) struct Capture {
    shared: Arc<Shared>,
}

struct Shared {
    ctx: Option<RunContext>,
    remaining: AtomicU64,
    truncated: AtomicBool,
    stdout: Mutex<Vec<u8>>,
    stderr: Mutex<Vec<u8>>,
    stderr_tail: Mutex<VecDeque<String>>,
}

impl Capture {
    /// A capture that writes `log` events to `ctx` (none: output is discarded), keeping at most
    /// `budget` bytes.
    pub(crate) fn new(ctx: Option<RunContext>, budget: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                ctx,
                remaining: AtomicU64::new(budget),
                truncated: AtomicBool::new(false),
                stdout: Mutex::new(Vec::new()),
                stderr: Mutex::new(Vec::new()),
                stderr_tail: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// The guest's stdout.
    pub(crate) fn stdout(&self) -> Stream {
        Stream {
            shared: Arc::clone(&self.shared),
            stderr: false,
        }
    }

    /// The guest's stderr.
    pub(crate) fn stderr(&self) -> Stream {
        Stream {
            shared: Arc::clone(&self.shared),
            stderr: true,
        }
    }

    /// Emits what is left of unterminated lines.
    pub(crate) fn finish(&self) {
        for stderr in [false, true] {
            let rest = std::mem::take(&mut *self.shared.buffer(stderr));
            if !rest.is_empty() {
                self.shared.line(stderr, &rest);
            }
        }
    }

    /// Records a message of the guest's `log` call as a `log` event, charged to the same budget
    /// as stdout and stderr (an empty message costs a byte). What does not fit is dropped, with
    /// one notice for the run; a long message is split into lines of at most 8 KiB.
    pub(crate) async fn log(&self, level: &str, message: &str) {
        let charge = message.len().max(1) as u64;
        let allowed = self.shared.take(charge);
        let mut keep = usize::try_from(allowed)
            .unwrap_or(usize::MAX)
            .min(message.len());
        while !message.is_char_boundary(keep) {
            keep -= 1;
        }
        if allowed < charge {
            self.shared.note_truncated(None);
        }
        if allowed == 0 {
            return;
        }
        let Some(ctx) = &self.shared.ctx else {
            return;
        };
        let mut rest = &message[..keep];
        loop {
            let mut end = rest.len().min(MAX_LINE);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            let (line, tail) = rest.split_at(end);
            if let Some(payload) = log_payload(None, level, line) {
                ctx.record_log(payload).await;
            }
            if tail.is_empty() {
                break;
            }
            rest = tail;
        }
    }

    /// The last lines the guest wrote to stderr.
    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        self.finish();
        lock(&self.shared.stderr_tail).iter().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn buffer(&self, stderr: bool) -> std::sync::MutexGuard<'_, Vec<u8>> {
        lock(if stderr { &self.stderr } else { &self.stdout })
    }

    /// Takes up to `len` bytes from the budget; returns how many were granted.
    fn take(&self, len: u64) -> u64 {
        let remaining = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(len))
            })
            .unwrap_or(0);
        remaining.min(len)
    }

    /// Says, once per run, that the budget is spent and output is being dropped.
    fn note_truncated(&self, stream: Option<&str>) {
        if !self.truncated.swap(true, Ordering::Relaxed) {
            self.emit(
                stream,
                "output truncated: the run's log budget is spent",
                "warn",
            );
        }
    }

    fn write(&self, stderr: bool, bytes: &[u8]) {
        let len = bytes.len() as u64;
        let allowed = self.take(len);
        let kept = &bytes[..usize::try_from(allowed).unwrap_or(0)];
        if kept.len() < bytes.len() {
            self.note_truncated(Some(stream_name(stderr)));
        }
        let mut lines = Vec::new();
        {
            let mut buffer = self.buffer(stderr);
            buffer.extend_from_slice(kept);
            // Complete lines are cut off with a cursor and removed in one go at the end, so a
            // write of many short lines costs time in proportion to its length.
            let mut start = 0;
            loop {
                let rest = &buffer[start..];
                let window = &rest[..rest.len().min(MAX_LINE + 1)];
                let end = match window.iter().position(|b| *b == b'\n') {
                    Some(newline) => newline + 1,
                    None if rest.len() >= MAX_LINE => MAX_LINE,
                    None => break,
                };
                lines.push(rest[..end].to_vec());
                start += end;
            }
            buffer.drain(..start);
        }
        for line in lines {
            self.line(stderr, &line);
        }
    }

    fn line(&self, stderr: bool, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        if stderr {
            let mut tail = lock(&self.stderr_tail);
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(text.to_string());
        }
        self.emit(
            Some(stream_name(stderr)),
            text,
            if stderr { "error" } else { "info" },
        );
    }

    /// Records a `log` event without waiting (output streams cannot wait).
    fn emit(&self, stream: Option<&str>, message: &str, level: &str) {
        if let Some(ctx) = &self.ctx
            && let Some(payload) = log_payload(stream, level, message)
        {
            // A recorder that is far behind drops log lines rather than stall the guest.
            ctx.record_log_now(payload);
        }
    }
}

/// The payload of a `log` event: `{stream?, level, message}`.
fn log_payload(
    stream: Option<&str>,
    level: &str,
    message: &str,
) -> Option<Arc<serde_json::value::RawValue>> {
    let payload = match stream {
        Some(stream) => serde_json::json!({ "stream": stream, "level": level, "message": message }),
        None => serde_json::json!({ "level": level, "message": message }),
    };
    serde_json::value::to_raw_value(&payload)
        .ok()
        .map(Arc::from)
}

fn stream_name(stderr: bool) -> &'static str {
    if stderr { "stderr" } else { "stdout" }
}

/// One of a guest's output streams.
#[derive(Clone)]
pub(crate) struct Stream {
    shared: Arc<Shared>,
    stderr: bool,
}

impl IsTerminal for Stream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Stream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stream {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Stream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.shared.write(self.stderr, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.shared.write(self.stderr, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_lines_of_at_most_max_line_bytes() {
        let capture = Capture::new(None, 1 << 20);
        let long = "x".repeat(MAX_LINE + 5);
        capture
            .shared
            .write(true, format!("a\nbb\n{long}\ntail").as_bytes());
        assert_eq!(
            capture.stderr_tail(),
            ["a", "bb", &long[..MAX_LINE], "xxxxx", "tail"]
        );
        assert!(capture.shared.buffer(true).is_empty());
    }

    #[test]
    fn a_write_of_a_mebibyte_of_empty_lines_finishes() {
        let capture = Capture::new(None, 1 << 20);
        let started = std::time::Instant::now();
        capture.shared.write(true, &vec![b'\n'; 1 << 20]);
        // Cutting line by line from the front of the buffer took minutes here.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        assert!(capture.shared.buffer(true).is_empty());
        assert_eq!(capture.stderr_tail(), vec![String::new(); STDERR_TAIL]);
    }
}
