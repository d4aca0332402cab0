//! `Pii<T>`: a value that is protected health information. It serializes as itself (to the
//! authorized caller) but its `Debug` and `Display` print `[redacted]`, so it cannot reach a log
//! line by accident. Modelled on str0m's `Pii` wrapper.

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Pii<T>(pub T);

impl<T> Pii<T> {
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> std::fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Pii<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let name = Pii("Quixotefeather".to_string());
        assert_eq!(format!("{name:?} {name}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"Quixotefeather\"");
    }
}
