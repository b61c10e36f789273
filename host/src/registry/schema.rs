//! JSON Schemas for agent input and output, compiled once per agent.

use std::sync::Arc;

use serde::Serialize;

/// A compiled JSON Schema.
#[derive(Clone)]
pub struct Schema {
    source: Arc<serde_json::Value>,
    validator: Arc<jsonschema::Validator>,
}

/// A schema that is not a valid JSON Schema.
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON Schema: {0}")]
pub struct SchemaError(String);

impl Schema {
    /// Compiles a schema.
    pub fn new(source: serde_json::Value) -> Result<Self, SchemaError> {
        let validator =
            jsonschema::validator_for(&source).map_err(|e| SchemaError(e.to_string()))?;
        Ok(Self {
            source: Arc::new(source),
            validator: Arc::new(validator),
        })
    }

    /// Parses and compiles a schema from JSON text.
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let value = serde_json::from_str(text).map_err(|e| SchemaError(e.to_string()))?;
        Self::new(value)
    }

    /// The schema document.
    pub fn source(&self) -> &serde_json::Value {
        &self.source
    }

    /// Checks a value; the error lists every violation (at most ten), each with its location.
    pub fn validate(&self, value: &serde_json::Value) -> Result<(), String> {
        let problems: Vec<String> = self
            .validator
            .iter_errors(value)
            .take(10)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Schema").field(&self.source).finish()
    }
}

impl Serialize for Schema {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.source.serialize(s)
    }
}
