//! User metadata of documents: string or number key-values, filterable at search time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A metadata value: user metadata is string or number key-values.
///
/// Serialised untagged: a JSON number is a [`MetaValue::Number`], a JSON string a
/// [`MetaValue::Text`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetaValue {
    /// A number.
    Number(f64),
    /// A string.
    Text(String),
}

/// User metadata of a document.
pub type Metadata = BTreeMap<String, MetaValue>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_deserialise_untagged() {
        let m: Metadata =
            serde_json::from_str(r#"{"year": 2021, "lang": "en", "x": 2.5}"#).expect("valid json");
        assert_eq!(m["year"], MetaValue::Number(2021.0));
        assert_eq!(m["lang"], MetaValue::Text("en".into()));
        assert_eq!(m["x"], MetaValue::Number(2.5));
        let back = serde_json::to_string(&m).expect("serialises");
        assert_eq!(back, r#"{"lang":"en","x":2.5,"year":2021.0}"#);
    }
}
