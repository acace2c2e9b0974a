//! Identical vectors share one HNSW node.
//!
//! RAG corpora repeat themselves: licence headers, disclaimers, page footers and navigation
//! produce many chunks with bit-identical embeddings. Inserted as separate nodes they form a
//! clique at distance zero that soaks up the neighbour lists around it, and a graph walk can get
//! stuck in it (measured: 100 copies among 300 random 384-d vectors made searches for the other
//! vectors return only copies). So only the first id with a given vector enters the graph; later
//! ids with the same vector become *aliases* of that node and are expanded back into results.
//!
//! Vectors are recognised by a 128-bit hash of their exact bit pattern (as given to `hnsw_rs`).
//! An accidental collision between different embeddings is not a practical concern at 128 bits
//! (and would only make one chunk report the other's score).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::error::{IndexError, Result};

const MAGIC: &[u8; 8] = b"HRTHALS1";

/// Aliases of graph nodes, and the hashes of the vectors in the graph.
#[derive(Debug, Default)]
pub(crate) struct Duplicates {
    by_hash: HashMap<u128, u32>,
    /// Graph id → the ids sharing its vector (not in the graph), in insertion order.
    aliases: HashMap<u32, Vec<u32>>,
    count: usize,
    /// Set for a table read back without hashes ([`Duplicates::from_pairs`]): the first
    /// insertion hashes the vectors then ([`Duplicates::hash_rows`]), so that an open does not
    /// read them all.
    unhashed: bool,
}

impl Duplicates {
    /// Records `id` with vector `v`: `true` when it needs a graph node, `false` when it became
    /// an alias of an existing node.
    pub(crate) fn admit(&mut self, id: u32, v: &[f32]) -> bool {
        debug_assert!(!self.unhashed, "hash_rows first");
        match self.by_hash.entry(hash(v)) {
            std::collections::hash_map::Entry::Occupied(node) => {
                self.aliases.entry(*node.get()).or_default().push(id);
                self.count += 1;
                false
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(id);
                true
            }
        }
    }

    /// The table of a graph file: `(node, alias)` pairs, without the hashes (see
    /// [`Duplicates::hash_rows`]).
    pub(crate) fn from_pairs(pairs: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut dups = Self {
            unhashed: true,
            ..Self::default()
        };
        for (node, alias) in pairs {
            dups.aliases.entry(node).or_default().push(alias);
            dups.count += 1;
        }
        dups
    }

    /// Every `(node, alias)` pair, sorted.
    pub(crate) fn pairs(&self) -> Vec<(u32, u32)> {
        let mut pairs: Vec<(u32, u32)> = self
            .aliases
            .iter()
            .flat_map(|(&node, list)| list.iter().map(move |&a| (node, a)))
            .collect();
        pairs.sort_unstable();
        pairs
    }

    /// Hashes the vectors of the ids held (`rows`, `dim` wide, row `i` is id `i`) if the table
    /// was read without them; a no-op otherwise. The first id of each vector is its node.
    pub(crate) fn hash_rows(&mut self, rows: &[f32], dim: usize) {
        if self.unhashed {
            for (i, row) in rows.chunks_exact(dim).enumerate() {
                self.by_hash.entry(hash(row)).or_insert(i as u32);
            }
            self.unhashed = false;
        }
    }

    /// Number of aliases (ids not in the graph).
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The aliases of graph node `node`.
    pub(crate) fn of(&self, node: u32) -> &[u32] {
        self.aliases.get(&node).map_or(&[], Vec::as_slice)
    }

    /// Every node with aliases, and its aliases.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &[u32])> {
        self.aliases.iter().map(|(&n, a)| (n, a.as_slice()))
    }

    /// Whether a filtered graph walk should accept `node`: it or one of its aliases is kept.
    pub(crate) fn accepts(&self, node: u32, keep: &dyn Fn(u32) -> bool) -> bool {
        keep(node) || self.of(node).iter().any(|&a| keep(a))
    }

    /// Writes the alias table as `MAGIC, count: u64, (node: u32, alias: u32) × count`, little
    /// endian, sorted, and fsyncs it.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let io = |source| IndexError::Io {
            path: path.to_path_buf(),
            source,
        };
        let pairs = self.pairs();
        let mut bytes = Vec::with_capacity(16 + pairs.len() * 8);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
        for (node, alias) in pairs {
            bytes.extend_from_slice(&node.to_le_bytes());
            bytes.extend_from_slice(&alias.to_le_bytes());
        }
        let mut file = std::fs::File::create(path).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Reads a table written by [`Self::write`]; `graph` yields `(id, vector)` for every node
    /// of the graph it belongs to, to restore the hashes. Every alias must point at a node
    /// (an [`IndexError::Corrupt`] otherwise).
    pub(crate) fn read<'a>(
        path: Option<&Path>,
        graph: impl Iterator<Item = (u32, &'a [f32])>,
    ) -> Result<Self> {
        let mut dups = Self::default();
        for (id, v) in graph {
            dups.by_hash.entry(hash(v)).or_insert(id);
        }
        let Some(path) = path else {
            return Ok(dups);
        };
        let corrupt = |detail: &str| IndexError::Corrupt {
            key: path.display().to_string(),
            detail: detail.to_owned(),
        };
        let bytes = std::fs::read(path).map_err(|source| IndexError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (head, body) = bytes
            .split_at_checked(16)
            .ok_or_else(|| corrupt("truncated"))?;
        let count = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        if &head[..8] != MAGIC || Some(body.len() as u64) != count.checked_mul(8) {
            return Err(corrupt("not an alias table of the stated length"));
        }
        let nodes: std::collections::HashSet<u32> = dups.by_hash.values().copied().collect();
        for pair in body.chunks_exact(8) {
            let node = u32::from_le_bytes(pair[..4].try_into().expect("4 bytes"));
            let alias = u32::from_le_bytes(pair[4..].try_into().expect("4 bytes"));
            if !nodes.contains(&node) {
                return Err(corrupt("an alias points at a missing node"));
            }
            dups.aliases.entry(node).or_default().push(alias);
            dups.count += 1;
        }
        for list in dups.aliases.values_mut() {
            list.sort_unstable();
        }
        Ok(dups)
    }
}

/// 128-bit hash of a vector's exact bit pattern (two independent multiply-rotate lanes).
fn hash(v: &[f32]) -> u128 {
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;
    let (mut a, mut b) = (
        0x243f_6a88_85a3_08d3_u64 ^ v.len() as u64,
        0x1319_8a2e_0370_7344_u64,
    );
    for pair in v.chunks(2) {
        let lo = u64::from(pair[0].to_bits());
        let hi = pair.get(1).map_or(0, |x| u64::from(x.to_bits()));
        let x = lo | hi << 32;
        a = (a ^ x).wrapping_mul(K1).rotate_left(29);
        b = (b ^ x.rotate_left(17)).wrapping_mul(K2).rotate_left(31);
    }
    let fin = |mut h: u64| {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ h >> 33
    };
    u128::from(fin(a ^ b.rotate_left(7))) << 64 | u128::from(fin(b ^ a.rotate_left(13)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_vectors_alias_the_first_and_round_trip() {
        let a = [0.6f32, 0.8, 0.0];
        let b = [0.8f32, 0.6, 0.0];
        let mut d = Duplicates::default();
        assert!(d.admit(1, &a));
        assert!(d.admit(2, &b));
        assert!(!d.admit(3, &a));
        assert!(!d.admit(4, &a));
        assert_eq!((d.of(1), d.of(2), d.len()), (&[3, 4][..], &[][..], 2));
        assert!(d.accepts(1, &|id| id == 4));
        assert!(!d.accepts(2, &|id| id == 4));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aliases");
        d.write(&path).unwrap();
        let graph = [(1u32, &a[..]), (2, &b[..])];
        let mut back = Duplicates::read(Some(&path), graph.into_iter()).unwrap();
        assert_eq!((back.of(1), back.len()), (&[3, 4][..], 2));
        // Hashes are restored from the graph: a new copy is recognised.
        assert!(!back.admit(5, &b));
        assert_eq!(back.of(2), &[5]);

        // An alias of a node the graph does not hold is corruption, as is a cut file.
        assert!(Duplicates::read(Some(&path), [(2u32, &b[..])].into_iter()).is_err());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(Duplicates::read(Some(&path), graph.into_iter()).is_err());
    }

    #[test]
    fn one_bit_of_difference_is_another_vector() {
        let a = [0.6f32, 0.8];
        let b = [0.6f32, f32::from_bits(0.8f32.to_bits() + 1)];
        assert_ne!(hash(&a), hash(&b));
        assert_ne!(hash(&[1.0, 0.0]), hash(&[0.0, 1.0]));
    }
}
