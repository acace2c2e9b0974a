//! Metadata filters, evaluated per document (its metadata and id).
//!
//! A [`Filter`] is a conjunction of [`Condition`]s. Filters are applied *inside* retrieval (the
//! dense and lexical searches only ever see allowed chunks), so a selective filter still returns
//! `top_k` hits when that many exist.
//!
//! JSON form (externally tagged, snake_case):
//! ```json
//! {"conditions": [
//!   {"eq": {"key": "lang", "value": "en"}},
//!   {"in": {"key": "team", "values": ["a", "b"]}},
//!   {"range": {"key": "year", "gte": 2020, "lt": 2025}},
//!   {"doc_ids": ["<64 hex chars>"]}
//! ]}
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::ids::DocId;
use crate::meta::{MetaValue, Metadata};

/// A conjunction of conditions: a document passes when every condition holds. An empty filter
/// passes everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The conditions, all of which must hold.
    pub conditions: Vec<Condition>,
}

/// One condition on a document's metadata or id.
///
/// Numbers compare numerically (`2` equals `2.0`); a text never equals a number; a condition on
/// a missing key is false.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// The value under `key` equals `value`.
    Eq {
        /// Metadata key.
        key: String,
        /// The value to compare with.
        value: MetaValue,
    },
    /// The value under `key` equals one of `values`.
    In {
        /// Metadata key.
        key: String,
        /// Accepted values.
        values: Vec<MetaValue>,
    },
    /// The value under `key` is a number within every given bound. False for a missing or text
    /// value. With no bound at all it only requires a number.
    Range {
        /// Metadata key.
        key: String,
        /// Exclusive lower bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gt: Option<f64>,
        /// Inclusive lower bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gte: Option<f64>,
        /// Exclusive upper bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lt: Option<f64>,
        /// Inclusive upper bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lte: Option<f64>,
    },
    /// The document is one of these.
    DocIds(Vec<DocId>),
}

impl Filter {
    /// A filter requiring every one of `conditions`.
    pub fn new(conditions: Vec<Condition>) -> Self {
        Self { conditions }
    }

    /// Checks that every bound and compared number is finite.
    pub fn validate(&self) -> Result<()> {
        self.conditions.iter().try_for_each(Condition::validate)
    }

    /// Whether the document with this id and metadata passes the filter.
    pub fn matches(&self, doc: &DocId, metadata: &Metadata) -> bool {
        self.conditions.iter().all(|c| c.matches(doc, metadata))
    }
}

impl Condition {
    fn validate(&self) -> Result<()> {
        let finite = |v: &MetaValue| !matches!(v, MetaValue::Number(n) if !n.is_finite());
        let ok = match self {
            Condition::Eq { value, .. } => finite(value),
            Condition::In { values, .. } => values.iter().all(finite),
            Condition::Range {
                gt, gte, lt, lte, ..
            } => [gt, gte, lt, lte]
                .iter()
                .all(|b| b.is_none_or(f64::is_finite)),
            Condition::DocIds(_) => true,
        };
        if ok {
            Ok(())
        } else {
            Err(IndexError::InvalidInput(
                "filter numbers must be finite".into(),
            ))
        }
    }

    /// Whether the condition holds for the document with this id and metadata.
    pub fn matches(&self, doc: &DocId, metadata: &Metadata) -> bool {
        match self {
            Condition::Eq { key, value } => metadata.get(key).is_some_and(|v| equal(v, value)),
            Condition::In { key, values } => metadata
                .get(key)
                .is_some_and(|v| values.iter().any(|w| equal(v, w))),
            Condition::Range {
                key,
                gt,
                gte,
                lt,
                lte,
            } => match metadata.get(key) {
                Some(MetaValue::Number(x)) => {
                    let x = *x;
                    gt.is_none_or(|b| x > b)
                        && gte.is_none_or(|b| x >= b)
                        && lt.is_none_or(|b| x < b)
                        && lte.is_none_or(|b| x <= b)
                }
                Some(MetaValue::Text(_)) | None => false,
            },
            Condition::DocIds(ids) => ids.contains(doc),
        }
    }
}

fn equal(a: &MetaValue, b: &MetaValue) -> bool {
    match (a, b) {
        (MetaValue::Number(x), MetaValue::Number(y)) => x == y,
        (MetaValue::Text(x), MetaValue::Text(y)) => x == y,
        (MetaValue::Number(_), MetaValue::Text(_)) | (MetaValue::Text(_), MetaValue::Number(_)) => {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, MetaValue)]) -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn num(x: f64) -> MetaValue {
        MetaValue::Number(x)
    }

    fn text(s: &str) -> MetaValue {
        MetaValue::Text(s.into())
    }

    #[test]
    fn eq_compares_numbers_numerically_and_never_mixes_types() {
        let doc = DocId::of_bytes(b"d");
        let m = meta(&[
            ("year", num(2.0)),
            ("lang", text("en")),
            ("code", text("2")),
        ]);
        let eq = |key: &str, value: MetaValue| Condition::Eq {
            key: key.into(),
            value,
        };
        assert!(eq("year", num(2.0)).matches(&doc, &m));
        let from_json: MetaValue = serde_json::from_str("2").unwrap();
        assert!(eq("year", from_json).matches(&doc, &m));
        assert!(!eq("year", text("2")).matches(&doc, &m));
        assert!(!eq("code", num(2.0)).matches(&doc, &m));
        assert!(eq("code", text("2")).matches(&doc, &m));
        assert!(eq("lang", text("en")).matches(&doc, &m));
        assert!(!eq("lang", text("EN")).matches(&doc, &m));
        assert!(!eq("missing", text("en")).matches(&doc, &m));
    }

    #[test]
    fn in_matches_any_listed_value() {
        let doc = DocId::of_bytes(b"d");
        let m = meta(&[("team", text("b")), ("n", num(3.0))]);
        let cond = |key: &str, values: Vec<MetaValue>| Condition::In {
            key: key.into(),
            values,
        };
        assert!(cond("team", vec![text("a"), text("b")]).matches(&doc, &m));
        assert!(!cond("team", vec![text("a"), text("c")]).matches(&doc, &m));
        assert!(!cond("team", vec![]).matches(&doc, &m));
        assert!(cond("n", vec![text("3"), num(3.0)]).matches(&doc, &m));
        assert!(!cond("n", vec![text("3")]).matches(&doc, &m));
    }

    #[test]
    fn range_bounds_are_strict_or_inclusive_and_reject_text_or_missing() {
        let doc = DocId::of_bytes(b"d");
        let m = meta(&[("year", num(2020.0)), ("name", text("2020"))]);
        let range = |key: &str, gt, gte, lt, lte| Condition::Range {
            key: key.into(),
            gt,
            gte,
            lt,
            lte,
        };
        assert!(range("year", None, Some(2020.0), None, None).matches(&doc, &m));
        assert!(!range("year", Some(2020.0), None, None, None).matches(&doc, &m));
        assert!(range("year", None, None, None, Some(2020.0)).matches(&doc, &m));
        assert!(!range("year", None, None, Some(2020.0), None).matches(&doc, &m));
        assert!(range("year", Some(2019.5), None, Some(2020.5), None).matches(&doc, &m));
        assert!(!range("year", Some(2019.5), None, Some(2019.9), None).matches(&doc, &m));
        assert!(range("year", None, None, None, None).matches(&doc, &m));
        assert!(!range("name", None, None, None, None).matches(&doc, &m));
        assert!(!range("name", Some(0.0), None, None, None).matches(&doc, &m));
        assert!(!range("missing", None, Some(0.0), None, None).matches(&doc, &m));
    }

    #[test]
    fn doc_ids_and_conjunction() {
        let a = DocId::of_bytes(b"a");
        let b = DocId::of_bytes(b"b");
        let m = meta(&[("lang", text("en"))]);
        let f = Filter::new(vec![
            Condition::DocIds(vec![a]),
            Condition::Eq {
                key: "lang".into(),
                value: text("en"),
            },
        ]);
        assert!(f.matches(&a, &m));
        assert!(!f.matches(&b, &m));
        assert!(!f.matches(&a, &Metadata::new()));
        assert!(Filter::default().matches(&b, &Metadata::new()));
    }

    #[test]
    fn json_form_round_trips_and_rejects_typos() {
        let id = DocId::of_bytes(b"a");
        let json = format!(
            r#"{{"conditions":[{{"eq":{{"key":"lang","value":"en"}}}},{{"in":{{"key":"n","values":[1,"x"]}}}},{{"range":{{"key":"year","gte":2020}}}},{{"doc_ids":["{id}"]}}]}}"#
        );
        let f: Filter = serde_json::from_str(&json).unwrap();
        assert_eq!(f.conditions.len(), 4);
        assert_eq!(
            f.conditions[2],
            Condition::Range {
                key: "year".into(),
                gt: None,
                gte: Some(2020.0),
                lt: None,
                lte: None
            }
        );
        let back: Filter = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        assert!(
            serde_json::from_str::<Filter>(r#"{"conditions":[{"range":{"key":"y","gtee":1}}]}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<Filter>(r#"{"conditions":[{"like":{"key":"y"}}]}"#).is_err()
        );
    }

    #[test]
    fn non_finite_numbers_are_invalid() {
        let f = Filter::new(vec![Condition::Range {
            key: "x".into(),
            gt: Some(f64::NAN),
            gte: None,
            lt: None,
            lte: None,
        }]);
        assert!(matches!(f.validate(), Err(IndexError::InvalidInput(_))));
        let ok = Filter::new(vec![Condition::Eq {
            key: "x".into(),
            value: MetaValue::Number(1.0),
        }]);
        assert!(ok.validate().is_ok());
    }
}
