//! The `json-query` tool: selects values from a JSON document by a path.
//!
//! A path is a dot-separated list of keys, each followed by any number of indexes:
//! `a.b[0].c`. `*` (as a key or as `[*]`) selects every member of an object or every element of
//! an array; a negative index counts from the end (`[-1]` is the last element); `["a key"]`
//! selects a key that is not a plain name. An empty path (or `$`) selects the whole document.
//!
//! Input `{"document": {...}, "path": "items[*].name"}`, output `{"values": [...]}`: every value
//! the path selects, in document order (none if nothing matches).

use drover_sdk::{Error, Tool, Value, export_toolbox, json};
use serde::{Deserialize, Serialize};

/// Longest path accepted, in bytes.
const MAX_PATH: usize = 1024;
/// Most values one query may select.
const MAX_VALUES: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    document: Value,
    path: String,
}

#[derive(Serialize)]
struct Output {
    values: Vec<Value>,
}

struct JsonQuery;

impl Tool for JsonQuery {
    type Input = Input;
    type Output = Output;

    const NAME: &'static str = "json-query";
    const DESCRIPTION: &'static str = "Selects values from a JSON document by a path such as \
        a.b[0].c, items[*].name or list[-1]; returns every selected value";

    fn input_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "document": { "description": "The JSON document to select from" },
                "path": {
                    "type": "string",
                    "maxLength": MAX_PATH,
                    "description": "Dot-separated keys with [index], [*] or [\"key\"] selectors"
                }
            },
            "required": ["document", "path"],
            "additionalProperties": false
        }))
    }

    fn output_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": { "values": { "type": "array" } },
            "required": ["values"]
        }))
    }

    fn call(input: Input) -> Result<Output, Error> {
        let path = parse(&input.path)?;
        let values = select(&input.document, &path)?;
        Ok(Output {
            values: values.into_iter().cloned().collect(),
        })
    }
}

export_toolbox!(JsonQuery);

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(i64),
    All,
}

fn invalid(path: &str, what: impl std::fmt::Display) -> Error {
    Error::new("InvalidPath", format!("path {path:?}: {what}")).permanent()
}

/// Parses a path into steps.
fn parse(path: &str) -> Result<Vec<Step>, Error> {
    if path.len() > MAX_PATH {
        return Err(invalid(path, format_args!("longer than {MAX_PATH} bytes")));
    }
    let text = path.trim();
    let text = text.strip_prefix('$').unwrap_or(text);
    let text = text.strip_prefix('.').unwrap_or(text);
    let mut steps = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut expect_key = true;
    while let Some(&(at, c)) = chars.peek() {
        match c {
            '[' => {
                chars.next();
                let rest = &text[at + 1..];
                let close = if let Some(quoted) = rest.strip_prefix('"') {
                    // A quoted key: up to the closing quote, then `]`.
                    let end = quoted
                        .find('"')
                        .ok_or_else(|| invalid(path, "an unterminated quoted key"))?;
                    if !quoted[end + 1..].starts_with(']') {
                        return Err(invalid(path, "expected ']' after a quoted key"));
                    }
                    steps.push(Step::Key(quoted[..end].to_string()));
                    end + 2
                } else {
                    let end = rest
                        .find(']')
                        .ok_or_else(|| invalid(path, "an unclosed '['"))?;
                    let inner = rest[..end].trim();
                    steps.push(if inner == "*" {
                        Step::All
                    } else {
                        Step::Index(inner.parse().map_err(|_| {
                            invalid(
                                path,
                                format_args!("{inner:?} is not an index, '*' or a quoted key"),
                            )
                        })?)
                    });
                    end
                };
                // Skip past the closing bracket.
                while chars.next_if(|&(i, _)| i <= at + 1 + close).is_some() {}
                expect_key = false;
            }
            '.' => {
                chars.next();
                if expect_key {
                    return Err(invalid(path, format_args!("an empty key at offset {at}")));
                }
                expect_key = true;
                if chars.peek().is_none() {
                    return Err(invalid(path, "it ends with '.'"));
                }
            }
            _ => {
                if !expect_key {
                    return Err(invalid(
                        path,
                        format_args!("expected '.' or '[' at offset {at}"),
                    ));
                }
                let mut key = String::new();
                while let Some((_, c)) = chars.next_if(|&(_, c)| c != '.' && c != '[') {
                    key.push(c);
                }
                let key = key.trim();
                steps.push(if key == "*" {
                    Step::All
                } else {
                    Step::Key(key.to_string())
                });
                expect_key = false;
            }
        }
    }
    Ok(steps)
}

/// Every value `path` selects in `document`.
fn select<'a>(document: &'a Value, path: &[Step]) -> Result<Vec<&'a Value>, Error> {
    let mut current = vec![document];
    for step in path {
        let mut next = Vec::new();
        for value in current {
            match (step, value) {
                (Step::Key(key), Value::Object(map)) => next.extend(map.get(key)),
                (Step::Index(i), Value::Array(items)) => {
                    let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
                    let index = if *i < 0 { len + i } else { *i };
                    next.extend(usize::try_from(index).ok().and_then(|i| items.get(i)));
                }
                (Step::All, Value::Object(map)) => next.extend(map.values()),
                (Step::All, Value::Array(items)) => next.extend(items.iter()),
                _ => {}
            }
            if next.len() > MAX_VALUES {
                return Err(Error::new(
                    "TooManyValues",
                    format!("the path selects more than {MAX_VALUES} values"),
                )
                .permanent());
            }
        }
        current = next;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects() {
        let doc = json!({
            "a": { "b": [{ "c": 1 }, { "c": 2 }] },
            "items": [{ "name": "x" }, { "name": "y" }, { "other": true }],
            "odd key": 5
        });
        let run = |p: &str| {
            select(&doc, &parse(p).expect("valid path"))
                .expect("select")
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(run("a.b[0].c"), vec![json!(1)]);
        assert_eq!(run("a.b[-1].c"), vec![json!(2)]);
        assert_eq!(run("items[*].name"), vec![json!("x"), json!("y")]);
        assert_eq!(run("a.b.*.c"), vec![json!(1), json!(2)]);
        assert_eq!(run("[\"odd key\"]"), vec![json!(5)]);
        assert_eq!(run("missing.key"), Vec::<Value>::new());
        assert_eq!(run("$"), vec![doc.clone()]);
        for bad in ["a..b", "a[", "a[x]", "a.", "a[0]b"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
