//! Statements applied to many rows at once ([`Bulk`]), and statements sent together as one
//! transaction in one round trip ([`transaction_batch`]): an embedded database steps a
//! prepared statement once per row; a remote server gets each statement once, its rows in one
//! JSON parameter ([`Rows::Json`]), and the values of a batch written into its text as SQL
//! literals ([`inline_params`]), since a libsql server takes batches only as text.

use libsql::{Connection, Value};

use super::{Conn, DbError, row_values};

/// One statement applied to many rows: see [`Db::bulk`](super::Db::bulk).
#[derive(Debug)]
pub struct Bulk {
    /// The statement, taking its rows as [`Rows`] says (its source built with
    /// [`Rows::source`]) after the fixed parameters.
    pub sql: fn(Rows) -> String,
    /// Parameters `?1…?k` shared by every row.
    pub fixed: Vec<Value>,
    /// Values per row.
    pub cols: usize,
    /// The rows' values, `cols` per row.
    pub values: Vec<Value>,
}

impl Bulk {
    fn rows(&self) -> usize {
        self.values.len() / self.cols.max(1)
    }
}

/// Embedded databases: one transaction; each statement prepared once, stepped once per row.
pub(super) async fn bulk_prepared(
    conn: Conn,
    statements: Vec<Bulk>,
) -> Result<Vec<Vec<Vec<Value>>>, DbError> {
    conn.execute("BEGIN IMMEDIATE", ()).await?;
    let applied = async {
        let mut results = Vec::with_capacity(statements.len());
        for bulk in statements {
            let mut returned = Vec::new();
            let rows = bulk.rows();
            if rows > 0 {
                let sql = (bulk.sql)(Rows::One);
                let statement = conn.prepare_cached(&sql).await?;
                let Bulk {
                    fixed,
                    cols,
                    values,
                    ..
                } = bulk;
                let mut values = values.into_iter();
                for _ in 0..rows {
                    let params: Vec<Value> = fixed
                        .iter()
                        .cloned()
                        .chain(values.by_ref().take(cols))
                        .collect();
                    // Reset before every reuse: libsql does not, and would keep the old bindings.
                    statement.reset();
                    let mut rows = statement.query(params).await?;
                    while let Some(row) = rows.next().await? {
                        returned.push(row_values(&row)?);
                    }
                }
                conn.keep(&sql, statement);
            }
            results.push(returned);
        }
        Ok::<_, DbError>(results)
    }
    .await;
    let committed = match applied {
        Ok(results) => conn
            .execute("COMMIT", ())
            .await
            .map(|_| results)
            .map_err(DbError::from),
        Err(e) => Err(e),
    };
    if committed.is_err()
        && !conn.is_autocommit()
        && let Err(rollback) = conn.execute("ROLLBACK", ()).await
    {
        tracing::warn!(error = %rollback, "rolling back a failed batch failed");
    }
    committed
}

/// Remote databases: every statement with its rows in JSON parameters, all of them in one
/// transaction sent as one request (or, past [`MAX_BATCH_TEXT`], in as many as it takes).
pub(super) async fn bulk_multi_row(
    conn: Conn,
    statements: Vec<Bulk>,
) -> Result<Vec<Vec<Vec<Value>>>, DbError> {
    // (statement index, SQL, parameters) of every chunk, in order.
    let mut chunks: Vec<(usize, String, Vec<Value>)> = Vec::new();
    for (n, bulk) in statements.iter().enumerate() {
        if bulk.rows() == 0 {
            continue;
        }
        let sql = (bulk.sql)(Rows::Json);
        for rows in json_rows(&bulk.values, bulk.cols)? {
            let params = bulk.fixed.iter().cloned().chain([Value::Text(rows)]);
            chunks.push((n, sql.clone(), params.collect()));
        }
    }
    let mut results = vec![Vec::new(); statements.len()];
    let mut pending: Vec<(usize, &str, &[Value])> = Vec::new();
    let mut pending_text = 0;
    for (i, (n, sql, params)) in chunks.iter().enumerate() {
        pending.push((*n, sql, params));
        pending_text += sql.len() + params.iter().map(literal_len).sum::<usize>();
        let last = i + 1 == chunks.len();
        if last || pending_text >= MAX_BATCH_TEXT {
            let batch: Vec<(&str, &[Value])> = pending.iter().map(|(_, s, p)| (*s, *p)).collect();
            let returned = transaction_batch(&conn, &batch).await?;
            for ((n, _, _), rows) in pending.drain(..).zip(returned) {
                for row in rows {
                    results[n].push(row_values(&row)?);
                }
            }
            pending_text = 0;
        }
    }
    Ok(results)
}

/// Bytes of statement text past which [`bulk_multi_row`] sends what it has and starts another
/// request (and transaction).
const MAX_BATCH_TEXT: usize = 8 << 20;

/// Runs `statements` (SQL with `?N` parameters, and their values) in one transaction and one
/// round trip, returning the rows each returned. A libsql server takes a batch of statements
/// only as text, so the values are written into it as SQL literals ([`inline_params`]).
pub async fn transaction_batch(
    conn: &Connection,
    statements: &[(&str, &[Value])],
) -> Result<Vec<Vec<libsql::Row>>, DbError> {
    let mut text = String::from("BEGIN IMMEDIATE;\n");
    for (sql, params) in statements {
        text.push_str(&inline_params(sql, params)?);
        text.push_str(";\n");
    }
    text.push_str("COMMIT;");
    let ran = async {
        let mut batch = conn.execute_batch(&text).await?;
        // BEGIN first; then each statement's rows (none, embedded, for a statement that
        // returned none); COMMIT last.
        let _begin = batch.next_stmt_row();
        let mut out = Vec::with_capacity(statements.len());
        for _ in statements {
            let mut returned = Vec::new();
            if let Some(Some(mut rows)) = batch.next_stmt_row() {
                while let Some(row) = rows.next().await? {
                    returned.push(row);
                }
            }
            out.push(returned);
        }
        Ok::<_, DbError>(out)
    }
    .await;
    // An embedded database stops at the failed statement inside the transaction; a server
    // rolls back itself when the stream ends.
    if ran.is_err() && !conn.is_autocommit() {
        let _ = conn.execute("ROLLBACK", ()).await;
    }
    ran
}

/// `sql` with each `?N` parameter replaced by `params[N-1]` as a literal: an integer or real
/// as a number, text as a quoted string (as a cast blob when it holds a NUL, which a statement's
/// text cannot), a blob as `X'…'`. Parameters inside quotes and comments are left as they are.
/// Fails on a `?` without a number or with one past `params`.
pub fn inline_params(sql: &str, params: &[Value]) -> Result<String, DbError> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + params.iter().map(literal_len).sum::<usize>());
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            b'?' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let n: usize = sql[i + 1..i + 1 + digits].parse().map_err(|_| {
                    DbError::Decode(format!(
                        "a batched statement has an unnumbered parameter: {sql}"
                    ))
                })?;
                let value = n
                    .checked_sub(1)
                    .and_then(|k| params.get(k))
                    .ok_or_else(|| {
                        DbError::Decode(format!(
                            "a batched statement has parameter ?{n} but only {} values",
                            params.len()
                        ))
                    })?;
                out.push_str(&sql[copied..i]);
                push_literal(&mut out, value);
                i += 1 + digits;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied.min(sql.len())..]);
    Ok(out)
}

/// Appends `value` to `out` as an SQL literal (see [`inline_params`]).
fn push_literal(out: &mut String, value: &Value) {
    use std::fmt::Write as _;
    match value {
        Value::Null => out.push_str("NULL"),
        // Written as a negative literal, the least integer would be read as a real.
        Value::Integer(i64::MIN) => out.push_str("(-9223372036854775807 - 1)"),
        Value::Integer(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Real(x) if x.is_nan() => out.push_str("NULL"),
        Value::Real(x) if x.is_infinite() => {
            out.push_str(if *x > 0.0 { "9e999" } else { "-9e999" })
        }
        Value::Real(x) => {
            let _ = write!(out, "{x:?}");
        }
        Value::Text(t) if t.contains('\0') => {
            out.push_str("CAST(");
            push_hex(out, t.as_bytes());
            out.push_str(" AS TEXT)");
        }
        Value::Text(t) => {
            out.push('\'');
            out.push_str(&t.replace('\'', "''"));
            out.push('\'');
        }
        Value::Blob(b) => push_hex(out, b),
    }
}

/// Appends `X'…'`, the blob literal of `bytes`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    use std::fmt::Write as _;
    out.push_str("X'");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out.push('\'');
}

/// About how long `value` is as a literal (for sizing requests).
fn literal_len(value: &Value) -> usize {
    match value {
        Value::Text(t) => t.len() + 2,
        Value::Blob(b) => 2 * b.len() + 3,
        _ => 20,
    }
}

/// Most rows one [`Rows::Json`] statement carries.
const MAX_JSON_ROWS: usize = 4096;

/// Bytes of JSON past which a [`Rows::Json`] statement takes no more rows (it may pass this by
/// one row).
const MAX_JSON_BYTES: usize = 4 << 20;

/// `values`, `cols` a row, as JSON arrays of rows (`[[1,"a"],[2,"b"]]`), as many as keep each
/// within [`MAX_JSON_ROWS`] and [`MAX_JSON_BYTES`]. A real that JSON cannot hold (an infinity,
/// NaN) goes as null; a blob cannot go at all.
fn json_rows(values: &[Value], cols: usize) -> Result<Vec<String>, DbError> {
    use std::fmt::Write as _;
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rows = 0;
    for row in values.chunks(cols.max(1)) {
        text.push(if rows == 0 { '[' } else { ',' });
        text.push('[');
        for (i, value) in row.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            match value {
                Value::Null => text.push_str("null"),
                Value::Integer(n) => {
                    let _ = write!(text, "{n}");
                }
                Value::Real(x) => match serde_json::Number::from_f64(*x) {
                    Some(number) => {
                        let _ = write!(text, "{number}");
                    }
                    None => text.push_str("null"),
                },
                Value::Text(t) => {
                    let quoted = serde_json::to_string(t)
                        .map_err(|e| DbError::Decode(format!("cannot quote a text value: {e}")))?;
                    text.push_str(&quoted);
                }
                Value::Blob(_) => {
                    return Err(DbError::Decode(
                        "a bulk statement cannot carry a blob to a remote database".into(),
                    ));
                }
            }
        }
        text.push(']');
        rows += 1;
        if rows == MAX_JSON_ROWS || text.len() >= MAX_JSON_BYTES {
            text.push(']');
            out.push(std::mem::take(&mut text));
            rows = 0;
        }
    }
    if rows > 0 {
        text.push(']');
        out.push(text);
    }
    Ok(out)
}

/// How a [`Bulk`] statement takes its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// One row of numbered parameters: an embedded database prepares the statement once and
    /// steps it once per row.
    One,
    /// Every row in one parameter, a JSON array of rows: a remote server gets one short
    /// statement however many rows it carries, instead of a `VALUES` list of a parameter per
    /// value (which the server parses, plans and binds at a cost that grows faster than the
    /// rows).
    Json,
}

impl Rows {
    /// The rows as a query, `cols` values a row from parameter `?first`: `VALUES (?2,?3)`, or
    /// `SELECT value->>0, value->>1 FROM json_each(?2) WHERE true`. Either is the body of a
    /// `WITH` table or the source of an `INSERT` (the `WHERE true` lets an upsert clause follow).
    pub fn source(self, cols: usize, first: usize) -> String {
        let columns = 0..cols.max(1);
        match self {
            Rows::One => {
                let params: Vec<String> = columns.map(|c| format!("?{}", first + c)).collect();
                format!("VALUES ({})", params.join(","))
            }
            Rows::Json => {
                let values: Vec<String> = columns.map(|c| format!("value->>{c}")).collect();
                format!(
                    "SELECT {} FROM json_each(?{first}) WHERE true",
                    values.join(",")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn parameters_are_inlined_as_literals_outside_quotes_and_comments() {
        let params = [
            Value::Integer(-3),
            Value::Text("it's".into()),
            Value::Null,
            Value::Real(0.25),
            Value::Text("a\0b".into()),
            Value::Blob(vec![0xde, 0xad]),
            Value::Integer(i64::MIN),
        ];
        let sql = "SELECT ?1, ?2, '?3', ?3 -- ?4 it's\n, ?4, /* ?5 */ ?5, ?6, ?7";
        assert_eq!(
            inline_params(sql, &params).ok().as_deref(),
            Some(
                "SELECT -3, 'it''s', '?3', NULL -- ?4 it's\n, 0.25, /* ?5 */ \
                 CAST(X'610062' AS TEXT), X'dead', (-9223372036854775807 - 1)"
            )
        );
        assert!(inline_params("SELECT ?", &params).is_err());
        assert!(inline_params("SELECT ?9", &params).is_err());
    }

    #[tokio::test]
    async fn a_transaction_batch_returns_each_statements_rows_and_applies_all_or_nothing() {
        let db = Db::open(":memory:", None).await.expect("open");
        let (rows, failed, count, autocommit) = db
            .write(|conn| async move {
                conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", ())
                    .await?;
                let one = [Value::Text("x'y".into())];
                let rows = transaction_batch(
                    &conn,
                    &[
                        ("INSERT INTO t (v) VALUES (?1)", &one),
                        ("INSERT INTO t (v) VALUES (?1) RETURNING id, v", &one),
                        ("SELECT count(*) FROM t", &[]),
                    ],
                )
                .await?;
                let failed = transaction_batch(
                    &conn,
                    &[
                        ("INSERT INTO t (v) VALUES ('z')", &[]),
                        ("INSERT INTO nowhere VALUES (1)", &[]),
                    ],
                )
                .await
                .is_err();
                let mut count = conn.query("SELECT count(*) FROM t", ()).await?;
                let count = match count.next().await? {
                    Some(row) => row.get_value(0)?,
                    None => Value::Null,
                };
                let rows: Vec<Vec<Vec<Value>>> = rows
                    .iter()
                    .map(|rows| rows.iter().map(row_values).collect::<Result<_, _>>())
                    .collect::<Result<_, _>>()?;
                Ok((rows, failed, count, conn.is_autocommit()))
            })
            .await
            .expect("batches");
        assert_eq!(
            rows,
            vec![
                vec![],
                vec![vec![Value::Integer(2), Value::Text("x'y".into())]],
                vec![vec![Value::Integer(2)]],
            ]
        );
        assert!(failed, "a batch with a failing statement fails");
        assert_eq!(
            count,
            Value::Integer(2),
            "and applies none of its statements"
        );
        assert!(autocommit, "and leaves no transaction open");
    }

    #[test]
    fn builds_row_sources() {
        assert_eq!(Rows::One.source(3, 2), "VALUES (?2,?3,?4)");
        assert_eq!(
            Rows::Json.source(2, 4),
            "SELECT value->>0,value->>1 FROM json_each(?4) WHERE true"
        );
    }

    #[test]
    fn json_rows_carry_every_value_and_split_long_lists() {
        let values = vec![
            Value::Integer(-7),
            Value::Text("a \"quote\" and a \u{0} nul".into()),
            Value::Null,
            Value::Real(0.5),
            Value::Real(f64::NAN),
            Value::Text("é".into()),
        ];
        assert_eq!(
            json_rows(&values, 3).ok(),
            Some(vec![
                r#"[[-7,"a \"quote\" and a \u0000 nul",null],[0.5,null,"é"]]"#.to_string()
            ])
        );
        let many = vec![Value::Integer(1); MAX_JSON_ROWS + 1];
        let split = json_rows(&many, 1).unwrap_or_default();
        assert_eq!(split.len(), 2);
        assert_eq!(split[1], "[[1]]");
        assert!(json_rows(&[Value::Blob(vec![1])], 1).is_err());
    }
}
