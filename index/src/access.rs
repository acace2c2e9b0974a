//! Who may read a document: its [`Access`] list, checked against the [`Reader`] a search runs
//! for. Like a metadata filter, access is applied *inside* retrieval: a chunk its reader may
//! not read is never a candidate, so it can neither be returned nor crowd out one that is.
//!
//! Principals are `user:NAME` and `group:NAME`; a bare `NAME` in input means `group:NAME`;
//! `*` means everyone who may read the collection (the default, and what documents stored
//! before access lists existed have).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};

/// Most principals one document may list.
pub const MAX_ACCESS_ENTRIES: usize = 256;
/// Longest principal name (after the `user:` or `group:` prefix), in bytes.
pub const MAX_PRINCIPAL_BYTES: usize = 256;

const EVERYONE: &str = "*";

/// The principals allowed to read a document: sorted, without duplicates, each `user:NAME` or
/// `group:NAME`, or the single entry `*` (everyone who may read the collection).
///
/// Serialised as a JSON list of strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Access(Vec<String>);

impl Default for Access {
    fn default() -> Self {
        Self::everyone()
    }
}

impl Access {
    /// Everyone who may read the collection.
    pub fn everyone() -> Self {
        Self(vec![EVERYONE.to_owned()])
    }

    /// Parses a list of principals: `*`, `user:NAME`, `group:NAME` or a bare group name. A
    /// list holding `*` is everyone's, whatever else it holds. Names are 1-256 bytes without
    /// whitespace, control characters or commas; at most 256 entries; an empty list is an
    /// error (say `*` for everyone).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        if entries.is_empty() {
            return Err(IndexError::InvalidInput(
                "an access list names at least one user or group, or * for everyone".into(),
            ));
        }
        if entries.len() > MAX_ACCESS_ENTRIES {
            return Err(IndexError::InvalidInput(format!(
                "an access list holds at most {MAX_ACCESS_ENTRIES} entries, got {}",
                entries.len()
            )));
        }
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let e = e.as_ref().trim();
            if e == EVERYONE {
                return Ok(Self::everyone());
            }
            out.push(principal(e)?);
        }
        out.sort_unstable();
        out.dedup();
        Ok(Self(out))
    }

    /// Parses a comma-separated list (`legal,user:alice`), as command lines and query
    /// strings give it.
    pub fn parse_list(raw: &str) -> Result<Self> {
        let entries: Vec<&str> = raw.split(',').filter(|s| !s.trim().is_empty()).collect();
        Self::parse(&entries)
    }

    /// Whether everyone who may read the collection may read the document.
    pub fn is_everyone(&self) -> bool {
        self.0.len() == 1 && self.0[0] == EVERYONE
    }

    /// The entries, sorted.
    pub fn entries(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<Vec<String>> for Access {
    type Error = IndexError;

    fn try_from(v: Vec<String>) -> Result<Self> {
        Self::parse(&v)
    }
}

impl From<Access> for Vec<String> {
    fn from(a: Access) -> Self {
        a.0
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Checks one principal and writes it in its stored form.
fn principal(e: &str) -> Result<String> {
    let (kind, name) = match e.split_once(':') {
        Some(("user", n)) => ("user", n),
        Some(("group", n)) => ("group", n),
        _ => ("group", e),
    };
    check_name(name).map_err(|why| {
        IndexError::InvalidInput(format!(
            "access entry {:?} is invalid: {why}",
            e.chars().take(80).collect::<String>()
        ))
    })?;
    Ok(format!("{kind}:{name}"))
}

/// Checks a user or group name: 1-256 bytes, no whitespace, control characters or commas.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_PRINCIPAL_BYTES {
        return Err(format!(
            "a user or group name is 1-{MAX_PRINCIPAL_BYTES} bytes"
        ));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err("a user or group name has no spaces, control characters or commas".into());
    }
    if name == EVERYONE {
        return Err("* is not a name".into());
    }
    Ok(())
}

/// Who a search, listing or download runs for. The default is a reader in no group, who
/// reads only documents open to everyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reader {
    /// Reads every document: the collection's administrators, the command line on the node.
    Everything,
    /// Reads documents listing `*` or one of these principals (`user:NAME`, `group:NAME`).
    Principals(HashSet<String>),
}

impl Default for Reader {
    fn default() -> Self {
        Self::Principals(HashSet::new())
    }
}

impl Reader {
    /// A reader who is `user` (when known) and a member of `groups`.
    pub fn member(user: Option<&str>, groups: &[String]) -> Self {
        let mut set: HashSet<String> = groups.iter().map(|g| format!("group:{g}")).collect();
        if let Some(u) = user {
            set.insert(format!("user:{u}"));
        }
        Self::Principals(set)
    }

    /// Whether this reader may read a document with access list `a`.
    pub fn may_read(&self, a: &Access) -> bool {
        match self {
            Reader::Everything => true,
            Reader::Principals(p) => a.is_everyone() || a.0.iter().any(|e| p.contains(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_normalised_and_checked() {
        let a = Access::parse(&["legal", "user:alice@example.com", "group:legal"]).unwrap();
        assert_eq!(a.entries(), ["group:legal", "user:alice@example.com"]);
        assert_eq!(a.to_string(), "group:legal,user:alice@example.com");
        assert!(Access::parse(&["legal", "*"]).unwrap().is_everyone());
        assert_eq!(
            Access::parse_list(" legal , finance,")
                .unwrap()
                .entries()
                .len(),
            2
        );
        for bad in [
            vec![],
            vec!["a b"],
            vec!["user:"],
            vec!["group:*"],
            vec!["x\u{7}"],
        ] {
            assert!(Access::parse(&bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_ACCESS_ENTRIES).map(|i| format!("g{i}")).collect();
        assert!(Access::parse(&many).is_err());
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"["group:legal","user:alice@example.com"]"#);
        assert_eq!(serde_json::from_str::<Access>(&json).unwrap(), a);
        assert!(serde_json::from_str::<Access>("[]").is_err());
    }

    #[test]
    fn readers_read_what_lists_them() {
        let legal = Access::parse(&["legal"]).unwrap();
        let alice = Access::parse(&["user:alice"]).unwrap();
        let everyone = Access::everyone();
        let r = Reader::member(Some("bob"), &["legal".into()]);
        assert!(r.may_read(&legal) && r.may_read(&everyone) && !r.may_read(&alice));
        // A group named like a user is not the user.
        let g = Reader::member(None, &["alice".into()]);
        assert!(!g.may_read(&alice));
        let nobody = Reader::member(None, &[]);
        assert!(nobody.may_read(&everyone) && !nobody.may_read(&legal));
        assert!(Reader::Everything.may_read(&alice));
    }
}
