//! Parsers of command-line values the client subcommands share: durations, points in time and
//! JSON documents given inline, as `@FILE` or as `-` (standard input).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses a duration such as `500ms`, `30s`, `5m` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"30s\", \"5m\" or \"500ms\": {e}"))
}

/// Parses a point in time: RFC 3339 (`2026-12-24T18:00:00Z`) or epoch milliseconds. Returns
/// epoch milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!(
            "{text:?} is not a time like \"2026-12-24T18:00:00Z\" (RFC 3339, UTC) or epoch \
             milliseconds: {e}"
        )
    })?;
    epoch_ms(time)
}

/// Epoch milliseconds of `time`.
pub fn epoch_ms(time: SystemTime) -> Result<i64, String> {
    let since = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the time is before 1970".to_string())?;
    i64::try_from(since.as_millis()).map_err(|_| "the time is too far away".to_string())
}

/// A JSON document given on the command line: the text itself, `@FILE` for a file's contents,
/// or `-` for standard input's. `what` names it in errors (`the input`, `the message`).
pub fn read_json(arg: &str, what: &str) -> Result<serde_json::Value, String> {
    let (text, source) = if arg == "-" {
        let text = std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("cannot read {what} from standard input: {e}"))?;
        (text, " (from standard input)".to_string())
    } else if let Some(path) = arg.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {what} from {path}: {e}"))?;
        (text, format!(" (from {path})"))
    } else {
        (arg.to_string(), String::new())
    };
    serde_json::from_str(&text).map_err(|e| {
        let hint = if source.is_empty() && !looks_like_json(arg) {
            format!(" (a string needs JSON quotes: '\"{arg}\"'; a file: @FILE; standard input: -)")
        } else {
            String::new()
        };
        format!("{what}{source} is not JSON: {e}{hint}")
    })
}

/// Whether `text` starts like a JSON document rather than a bare word.
fn looks_like_json(text: &str) -> bool {
    let text = text.trim_start();
    text.starts_with(['{', '[', '"', '-'])
        || text.starts_with(|c: char| c.is_ascii_digit())
        || ["true", "false", "null"]
            .iter()
            .any(|w| text.starts_with(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        let error = parse_duration("soon").expect_err("not a duration");
        assert!(error.contains("\"30s\""), "{error}");
    }

    #[test]
    fn times_are_rfc3339_or_epoch_milliseconds() {
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert!(
            parse_time("tomorrow")
                .expect_err("not a time")
                .contains("RFC 3339")
        );
    }

    #[test]
    fn json_comes_inline_or_from_a_file() {
        assert_eq!(
            read_json(r#"{"n": 1}"#, "the input"),
            Ok(serde_json::json!({"n": 1}))
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("input.json");
        std::fs::write(&path, "[1, 2]").expect("write");
        let arg = format!("@{}", path.display());
        assert_eq!(read_json(&arg, "the input"), Ok(serde_json::json!([1, 2])));
        let missing = read_json("@/nonexistent/input.json", "the input").expect_err("no file");
        assert!(
            missing.contains("cannot read the input from /nonexistent"),
            "{missing}"
        );
        // A bare word is told how to quote it.
        let bare = read_json("hello", "the message").expect_err("not JSON");
        assert!(bare.contains(r#"'"hello"'"#), "{bare}");
    }
}
