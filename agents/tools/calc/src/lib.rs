//! The `calc` tool: evaluates an arithmetic expression.
//!
//! Numbers are decimals (`3`, `0.5`, `.5`, `1e3`); operators are `+ - * / %` and `^` (power,
//! right-associative, binding tighter than unary minus: `-2^2` is `-4`), with parentheses.
//! Division or remainder by zero, a result that is not a finite number, bad syntax, an
//! expression longer than [`MAX_LEN`] bytes or nested deeper than [`MAX_DEPTH`] fail with a
//! clear error.
//!
//! Input `{"expression": "2 * (3 + 4)"}`, output `{"value": 14}`.

use drover_sdk::{Error, Tool, Value, export_toolbox, json};
use serde::{Deserialize, Serialize};

/// Longest expression accepted, in bytes.
const MAX_LEN: usize = 1024;
/// Deepest nesting of parentheses and unary operators accepted.
const MAX_DEPTH: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    expression: String,
}

#[derive(Serialize)]
struct Output {
    value: f64,
}

struct Calc;

impl Tool for Calc {
    type Input = Input;
    type Output = Output;

    const NAME: &'static str = "calc";
    const DESCRIPTION: &'static str = "Evaluates an arithmetic expression with + - * / % ^ \
        (power), parentheses, unary minus and decimal numbers, and returns its value";

    fn input_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_LEN,
                    "description": "The expression, e.g. \"2 * (3 + 4) ^ 2 / 7\""
                }
            },
            "required": ["expression"],
            "additionalProperties": false
        }))
    }

    fn output_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": { "value": { "type": "number" } },
            "required": ["value"]
        }))
    }

    fn call(input: Input) -> Result<Output, Error> {
        evaluate(&input.expression).map(|value| Output { value })
    }
}

export_toolbox!(Calc);

/// Evaluates `text`.
fn evaluate(text: &str) -> Result<f64, Error> {
    if text.len() > MAX_LEN {
        return Err(Error::new(
            "InputTooLong",
            format!(
                "the expression is {} bytes; at most {MAX_LEN} are accepted",
                text.len()
            ),
        )
        .permanent());
    }
    let mut parser = Parser {
        text: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let value = parser.expression()?;
    parser.skip_spaces();
    if parser.pos < parser.text.len() {
        return Err(parser.syntax("an operator or the end of the expression"));
    }
    if !value.is_finite() {
        return Err(
            Error::new("NotFinite", "the result is too large (or not a number)").permanent(),
        );
    }
    Ok(value)
}

/// A recursive-descent parser that evaluates as it goes.
struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        while self.text.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_spaces();
        self.text.get(self.pos).copied()
    }

    fn syntax(&self, expected: &str) -> Error {
        let found = match self.text.get(self.pos) {
            Some(_) => {
                let rest = String::from_utf8_lossy(&self.text[self.pos..]);
                format!("{:?}", rest.chars().next().unwrap_or(' '))
            }
            None => "the end".to_string(),
        };
        Error::new(
            "SyntaxError",
            format!("expected {expected} at offset {}, found {found}", self.pos),
        )
        .permanent()
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(Error::new(
                "TooDeep",
                format!("the expression nests deeper than {MAX_DEPTH} levels"),
            )
            .permanent());
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    /// expression := term (('+' | '-') term)*
    fn expression(&mut self) -> Result<f64, Error> {
        let mut value = self.term()?;
        loop {
            match self.peek() {
                Some(b'+') => {
                    self.pos += 1;
                    value += self.term()?;
                }
                Some(b'-') => {
                    self.pos += 1;
                    value -= self.term()?;
                }
                _ => return Ok(value),
            }
        }
    }

    /// term := unary (('*' | '/' | '%') unary)*
    fn term(&mut self) -> Result<f64, Error> {
        let mut value = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(op @ (b'*' | b'/' | b'%')) => op,
                _ => return Ok(value),
            };
            self.pos += 1;
            let rhs = self.unary()?;
            value = match op {
                b'*' => value * rhs,
                _ if rhs == 0.0 => {
                    return Err(Error::new("DivisionByZero", "division by zero").permanent());
                }
                b'/' => value / rhs,
                _ => value % rhs,
            };
        }
    }

    /// unary := ('-' | '+') unary | power
    fn unary(&mut self) -> Result<f64, Error> {
        match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                self.nested(|p| p.unary()).map(|v| -v)
            }
            Some(b'+') => {
                self.pos += 1;
                self.nested(|p| p.unary())
            }
            _ => self.power(),
        }
    }

    /// power := atom ('^' unary)?
    fn power(&mut self) -> Result<f64, Error> {
        let base = self.atom()?;
        if self.peek() == Some(b'^') {
            self.pos += 1;
            let exponent = self.nested(|p| p.unary())?;
            return Ok(base.powf(exponent));
        }
        Ok(base)
    }

    /// atom := number | '(' expression ')'
    fn atom(&mut self) -> Result<f64, Error> {
        match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                let value = self.nested(|p| p.expression())?;
                if self.peek() != Some(b')') {
                    return Err(self.syntax("')'"));
                }
                self.pos += 1;
                Ok(value)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            _ => Err(self.syntax("a number or '('")),
        }
    }

    fn number(&mut self) -> Result<f64, Error> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            while p.text.get(p.pos).is_some_and(u8::is_ascii_digit) {
                p.pos += 1;
            }
        };
        digits(self);
        if self.text.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            digits(self);
        }
        if matches!(self.text.get(self.pos), Some(b'e' | b'E')) {
            let mark = self.pos;
            self.pos += 1;
            if matches!(self.text.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            let exponent_start = self.pos;
            digits(self);
            if self.pos == exponent_start {
                self.pos = mark;
            }
        }
        let literal = std::str::from_utf8(&self.text[start..self.pos]).unwrap_or("");
        literal.parse::<f64>().map_err(|_| {
            self.pos = start;
            self.syntax("a number")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::evaluate;

    #[test]
    fn evaluates() {
        let cases = [
            ("1 + 2 * 3", 7.0),
            ("(1 + 2) * 3", 9.0),
            ("-2 ^ 2", -4.0),
            ("2 ^ 3 ^ 2", 512.0),
            ("2 ^ -1", 0.5),
            ("7 % 4", 3.0),
            ("--3", 3.0),
            (".5 + 1.25", 1.75),
            ("1e3 / 4", 250.0),
        ];
        for (text, value) in cases {
            assert_eq!(
                evaluate(text).map_err(|e| e.to_string()),
                Ok(value),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses() {
        let cases = [
            ("1 / 0", "DivisionByZero"),
            ("1 % 0", "DivisionByZero"),
            ("1 +", "SyntaxError"),
            ("(1", "SyntaxError"),
            ("1 2", "SyntaxError"),
            ("abc", "SyntaxError"),
            ("", "SyntaxError"),
            ("10 ^ 400", "NotFinite"),
        ];
        for (text, tag) in cases {
            assert_eq!(
                evaluate(text).map_err(|e| e.tag),
                Err(tag.to_string()),
                "{text}"
            );
        }
        assert_eq!(
            evaluate(&"(".repeat(100)).map_err(|e| e.tag),
            Err("TooDeep".to_string())
        );
        assert_eq!(
            evaluate(&"1+".repeat(600)).map_err(|e| e.tag),
            Err("InputTooLong".to_string())
        );
    }
}
