//! The paged KV cache: fixed-size blocks of key/value rows, a free list, reference counts and
//! the prefix cache that lets sequences with the same prompt prefix share blocks.
//!
//! Storage, per layer, is one flat `f32` array for keys and one for values, block by block and
//! within a block kv head by kv head. A head's values are `block_size` rows of `head_dim`; its
//! keys are stored transposed, `head_dim` rows of the block's positions, so the attention
//! kernel scores 16 positions with one vector multiply-add per key dimension instead of one
//! horizontal sum per position.
//!
//! Block bookkeeping ([`BlockPool`]) is separate from the storage so the scheduler can plan a
//! step (allocate, share, free) without touching the arrays.
//!
//! Prefix caching: a *full* block whose rows were computed from tokens `t[0..(i+1)·B]` gets a
//! key hashing those tokens (chained: the previous block's key and this block's tokens, plus
//! the adapter, since an adapter changes K and V, and the caller's scope, so that one caller's
//! cache hits say nothing about another's prompts; keyed SipHash, so no caller can aim a block
//! at another's key). A new sequence of the same scope whose prompt starts with the same
//! tokens reuses such blocks instead of recomputing them. A block whose last user leaves
//! keeps its key and goes to the back of the free list; it is reused as a cached block until
//! the allocator takes it for new rows, oldest-freed first (LRU eviction).

use std::collections::HashMap;

/// No block: the end of a list.
const NIL: u32 = u32::MAX;

/// Identity of a full block's contents: its tokens, everything before them, the adapter and
/// the cache scope.
pub(crate) type BlockKey = u64;

/// Whose blocks a sequence may share: the adapter that computed them (an adapter changes K and
/// V) and the caller's scope (requests of different scopes never share, so one caller cannot
/// learn from cache hits, or from the time to the first token, what another one's prompts held).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheSalt {
    pub(crate) adapter: u32,
    pub(crate) scope: u64,
}

/// This process's secret key for block keys.
static BLOCK_HASHER: std::sync::LazyLock<std::hash::RandomState> =
    std::sync::LazyLock::new(std::hash::RandomState::new);

/// Chains the key of the next full block from the previous one.
pub(crate) fn block_key(prev: Option<BlockKey>, tokens: &[u32], salt: CacheSalt) -> BlockKey {
    use std::hash::{BuildHasher, Hasher};
    // SipHash under a key drawn at start-up: a caller who chooses tokens cannot aim at another
    // scope's key (an unkeyed hash such as FNV-1a lets one compute a colliding block, and so
    // read another caller's cached keys and values). It hashes 64 bytes a block of 16 tokens,
    // once per block, beside milliseconds of prefill for that block (not measured apart).
    let mut h = BLOCK_HASHER.build_hasher();
    h.write_u64(prev.unwrap_or(0x9e37_79b9_7f4a_7c15));
    h.write_u32(salt.adapter);
    h.write_u64(salt.scope);
    for &t in tokens {
        h.write_u32(t);
    }
    h.finish()
}

/// Block bookkeeping: reference counts, the free list (an intrusive doubly linked list in LRU
/// order) and the prefix-cache map. All operations are O(1) except none.
pub(crate) struct BlockPool {
    refs: Vec<u32>,
    key: Vec<Option<BlockKey>>,
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    free: usize,
    cached: HashMap<BlockKey, u32>,
}

impl BlockPool {
    pub(crate) fn new(blocks: usize) -> Self {
        let n = u32::try_from(blocks).expect("block count fits u32");
        let mut pool = Self {
            refs: vec![0; blocks],
            key: vec![None; blocks],
            prev: vec![NIL; blocks],
            next: vec![NIL; blocks],
            head: NIL,
            tail: NIL,
            free: 0,
            cached: HashMap::new(),
        };
        for b in 0..n {
            pool.push_back(b);
        }
        pool
    }

    pub(crate) fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be allocated now (cached-but-unused ones included).
    pub(crate) fn free(&self) -> usize {
        self.free
    }

    pub(crate) fn in_use(&self) -> usize {
        self.total() - self.free
    }

    fn push_back(&mut self, b: u32) {
        let i = b as usize;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.free += 1;
    }

    fn unlink(&mut self, b: u32) {
        let i = b as usize;
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.free -= 1;
    }

    /// Takes a block for new rows: the least recently freed one, whose cached contents (if
    /// any) are forgotten.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        if let Some(k) = self.key[b as usize].take()
            && self.cached.get(&k) == Some(&b)
        {
            self.cached.remove(&k);
        }
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// The cached block holding these contents, now shared with one more sequence.
    pub(crate) fn share(&mut self, key: BlockKey) -> Option<u32> {
        let b = *self.cached.get(&key)?;
        let i = b as usize;
        if self.refs[i] == 0 {
            self.unlink(b);
        }
        self.refs[i] += 1;
        Some(b)
    }

    /// Whether a block with these contents is cached (without taking it).
    #[cfg(test)]
    pub(crate) fn is_cached(&self, key: BlockKey) -> bool {
        self.cached.contains_key(&key)
    }

    /// Records that block `b` (full, in use) holds the contents `key`. If another block
    /// already holds them, the map keeps the older one.
    pub(crate) fn publish(&mut self, b: u32, key: BlockKey) {
        let i = b as usize;
        debug_assert!(self.refs[i] > 0);
        if self.key[i].is_some() {
            return;
        }
        self.key[i] = Some(key);
        self.cached.entry(key).or_insert(b);
    }

    /// Drops one reference; the last one puts the block at the back of the free list, its
    /// cached contents kept until it is allocated again.
    pub(crate) fn release(&mut self, b: u32) {
        let i = b as usize;
        assert!(self.refs[i] > 0, "block {b} released more often than taken");
        self.refs[i] -= 1;
        if self.refs[i] == 0 {
            if let Some(k) = self.key[i]
                && self.cached.get(&k) != Some(&b)
            {
                // A duplicate of a block the map already points at: nothing to keep.
                self.key[i] = None;
            }
            self.push_back(b);
        }
    }

    /// Checks the pool's invariants (used by tests): every block is either referenced or on
    /// the free list exactly once, the free count matches, and every cached key maps to a
    /// block that carries it.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut on_list = vec![false; self.total()];
        let mut b = self.head;
        let mut count = 0;
        while b != NIL {
            if on_list[b as usize] {
                return Err(format!("block {b} twice on the free list"));
            }
            on_list[b as usize] = true;
            count += 1;
            b = self.next[b as usize];
        }
        if count != self.free {
            return Err(format!("free count {} but {count} on the list", self.free));
        }
        for (i, &r) in self.refs.iter().enumerate() {
            if (r == 0) != on_list[i] {
                return Err(format!("block {i} has {r} refs but on_list={}", on_list[i]));
            }
        }
        for (k, &b) in &self.cached {
            if self.key[b as usize] != Some(*k) {
                return Err(format!(
                    "cached key maps to block {b}, which does not carry it"
                ));
            }
        }
        Ok(())
    }
}

/// The key and value arrays.
pub(crate) struct KvStore {
    pub(crate) block_size: usize,
    kv_heads: usize,
    head_dim: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvStore {
    pub(crate) fn new(
        layers: usize,
        blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let per_layer = blocks * kv_heads * block_size * head_dim;
        Self {
            block_size,
            kv_heads,
            head_dim,
            k: (0..layers).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..layers).map(|_| vec![0.0; per_layer]).collect(),
        }
    }

    /// Bytes of one block across all layers, keys and values.
    pub(crate) fn block_bytes(
        layers: usize,
        block_size: usize,
        kv_heads: usize,
        hd: usize,
    ) -> usize {
        2 * layers * kv_heads * block_size * hd * std::mem::size_of::<f32>()
    }

    fn offset(&self, block: u32, head: usize, slot: usize) -> usize {
        ((block as usize * self.kv_heads + head) * self.block_size + slot) * self.head_dim
    }

    /// Writes one token's keys and values (`kv_heads × head_dim` each) at `slot` of `block`.
    pub(crate) fn write(&mut self, layer: usize, block: u32, slot: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        for h in 0..self.kv_heads {
            let o = self.offset(block, h, slot);
            self.v[layer][o..o + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
            let (at, stride) = (self.offset(block, h, 0), self.block_size);
            let keys = &mut self.k[layer][at..][..stride * hd];
            for (row, &x) in keys.chunks_exact_mut(stride).zip(&k[h * hd..]) {
                row[slot] = x;
            }
        }
    }

    /// One layer's key and value arrays, for the attention kernel.
    pub(crate) fn layer(&self, layer: usize) -> LayerKv<'_> {
        LayerKv {
            store: self,
            k: &self.k[layer],
            v: &self.v[layer],
        }
    }
}

/// A read-only view of one layer's cache.
#[derive(Clone, Copy)]
pub(crate) struct LayerKv<'a> {
    store: &'a KvStore,
    k: &'a [f32],
    v: &'a [f32],
}

impl LayerKv<'_> {
    /// Keys of `head` in `block`, transposed: `head_dim` rows of `block_size` positions.
    pub(crate) fn keys(&self, block: u32, head: usize) -> &[f32] {
        let o = self.store.offset(block, head, 0);
        &self.k[o..o + self.store.block_size * self.store.head_dim]
    }

    /// Values of `head` in `block`: `block_size` rows of `head_dim`.
    pub(crate) fn values(&self, block: u32, head: usize) -> &[f32] {
        let o = self.store.offset(block, head, 0);
        &self.v[o..o + self.store.block_size * self.store.head_dim]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_sharing_and_lru_eviction() {
        let mut pool = BlockPool::new(3);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        let ka = block_key(None, &[1, 2], CacheSalt::default());
        let kb = block_key(Some(ka), &[3, 4], CacheSalt::default());
        pool.publish(a, ka);
        pool.publish(b, kb);
        assert_eq!(pool.free(), 1);
        // A second user of the same prefix shares both blocks.
        assert_eq!(pool.share(ka), Some(a));
        assert_eq!(pool.share(kb), Some(b));
        pool.release(a);
        pool.release(b);
        assert_eq!(pool.free(), 1, "still held by the first user");
        pool.release(b);
        pool.release(a);
        assert_eq!(pool.free(), 3);
        pool.check().unwrap();
        // Cached blocks survive on the free list and can be revived...
        assert!(pool.is_cached(ka) && pool.is_cached(kb));
        // ...until allocation evicts them, oldest-freed first: the never-used block, then b.
        let c = pool.allocate().unwrap();
        assert!(c != a && c != b);
        assert_eq!(pool.allocate(), Some(b));
        assert!(!pool.is_cached(kb) && pool.is_cached(ka));
        assert_eq!(pool.share(ka), Some(a));
        assert_eq!(pool.allocate(), None);
        pool.check().unwrap();
    }

    #[test]
    fn keys_depend_on_history_adapter_and_scope() {
        let base = CacheSalt::default();
        let k1 = block_key(None, &[1, 2, 3], base);
        assert_ne!(k1, block_key(None, &[1, 2, 4], base));
        let adapter = CacheSalt { adapter: 1, ..base };
        assert_ne!(k1, block_key(None, &[1, 2, 3], adapter));
        let scope = CacheSalt { scope: 1, ..base };
        assert_ne!(k1, block_key(None, &[1, 2, 3], scope));
        assert_ne!(block_key(Some(k1), &[5], base), block_key(None, &[5], base));
        assert_eq!(k1, block_key(None, &[1, 2, 3], base));
    }
}
