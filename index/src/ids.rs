//! Identifiers shared across crates.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::{IndexError, Result};

/// A document's identity: the SHA-256 of its original bytes, so uploading the same bytes twice
/// yields the same id and the second upload is a no-op.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId([u8; 32]);

impl DocId {
    /// Hashes document bytes into their id.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Wraps a raw 32-byte digest.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters; the form used in keys and APIs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({})", &self.to_hex()[..12])
    }
}

impl FromStr for DocId {
    type Err = IndexError;

    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(IndexError::InvalidInput(format!(
                "document id must be 64 lowercase hex characters, got {:?}",
                truncate_for_message(s)
            )));
        }
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(IndexError::InvalidInput(
                "document id must be lowercase hex".into(),
            ));
        }
        Ok(Self(out))
    }
}

impl Serialize for DocId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for DocId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A chunk's identity: derived from its document and ordinal, stable across re-ingestion.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ChunkId(u64);

impl ChunkId {
    /// The id of chunk number `ordinal` (0-based) of document `doc`.
    pub fn new(doc: &DocId, ordinal: u32) -> Self {
        let mut h = Sha256::new();
        h.update(doc.as_bytes());
        h.update(ordinal.to_le_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self(u64::from_le_bytes(first))
    }

    /// The numeric value, as stored in the chunk segments.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The id a chunk segment stores (`get`'s value; `new` is how it was made).
    pub(crate) fn from_stored(value: u64) -> Self {
        Self(value)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A validated collection name: 1–64 characters of `a-z 0-9 _ -`, starting with a letter or
/// digit. The restriction keeps names safe to use inside object-store keys and URLs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
#[serde(transparent)]
pub struct CollectionName(String);

impl CollectionName {
    /// Validates a collection name.
    pub fn new(name: &str) -> Result<Self> {
        let ok_len = (1..=64).contains(&name.len());
        let ok_first = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok_len && ok_first && ok_chars {
            Ok(Self(name.to_owned()))
        } else {
            Err(IndexError::InvalidInput(format!(
                "collection name {:?} is invalid: use 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit",
                truncate_for_message(name)
            )))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CollectionName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Lowercase hex SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    sha256_open(&file, &|| true).map_err(io)
}

/// Lowercase hex SHA-256 of an open file's contents (see [`read_blocks`]).
pub(crate) fn sha256_open(file: &File, wanted: &dyn Fn() -> bool) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    read_blocks(file, 0, None, wanted, |b| hasher.update(b))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Feeds `f` the bytes of `file` from offset `from`, `len` of them (to the end with `None`),
/// 1 MiB at a time with `pread` (the file's own offset is not moved). Fails if the file ends
/// first, and gives up (with an error) once `wanted` says no.
pub(crate) fn read_blocks(
    file: &File,
    from: u64,
    len: Option<u64>,
    wanted: &dyn Fn() -> bool,
    mut f: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut left) = (from, len);
    while left != Some(0) {
        let want = left.map_or(buf.len(), |l| l.min(buf.len() as u64) as usize);
        let got = file.read_at(&mut buf[..want], at)?;
        if got == 0 {
            return match left {
                None => Ok(()),
                Some(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            };
        }
        if !wanted() {
            return Err(std::io::Error::other("check abandoned"));
        }
        f(&buf[..got]);
        at += got as u64;
        left = left.map(|l| l - got as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_id_is_sha256_and_round_trips_through_hex() {
        let id = DocId::of_bytes(b"abc");
        assert_eq!(
            id.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(id.to_hex().parse::<DocId>().unwrap(), id);
        assert!(
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
                .parse::<DocId>()
                .is_err()
        );
        assert!("../etc/passwd".parse::<DocId>().is_err());
    }

    #[test]
    fn chunk_ids_differ_by_ordinal_and_document() {
        let a = DocId::of_bytes(b"a");
        let b = DocId::of_bytes(b"b");
        assert_ne!(ChunkId::new(&a, 0), ChunkId::new(&a, 1));
        assert_ne!(ChunkId::new(&a, 0), ChunkId::new(&b, 0));
        assert_eq!(ChunkId::new(&a, 7), ChunkId::new(&a, 7));
    }

    #[test]
    fn collection_names_reject_traversal_and_odd_characters() {
        for good in ["docs", "a", "team-1_archive", "0day"] {
            assert!(CollectionName::new(good).is_ok(), "{good}");
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            "../x",
            "Docs",
            "a/b",
            "-x",
            "_x",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(CollectionName::new(bad).is_err(), "{bad}");
        }
    }
}
