//! The paged KV cache: fixed-size blocks of key/value rows, a free list, reference counts and
//! the prefix cache that lets sequences with the same prompt prefix share blocks.
//!
//! Storage, per layer, is one flat array for keys and one for values, block by block and
//! within a block kv head by kv head, in `f32` (the default) or `f16` (`engine.kv_precision`:
//! half the memory, so twice the tokens in the same `engine.kv_cache_mb`, and half the bytes
//! a decode step's attention reads). A head's values are `block_size` rows of `head_dim`; its
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

use half::f16;
use half::slice::HalfFloatSliceExt;

pub(crate) use crate::config::KvPrecision;

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

/// Where a block's rows lie in a layer's arrays.
#[derive(Clone, Copy)]
struct Geometry {
    block_size: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Geometry {
    fn offset(&self, block: u32, head: usize, slot: usize) -> usize {
        ((block as usize * self.kv_heads + head) * self.block_size + slot) * self.head_dim
    }

    /// Values per kv head per block (keys or values).
    fn head_block(&self) -> usize {
        self.block_size * self.head_dim
    }
}

/// A number type the cache can hold: `f32`, or `f16` at half the memory.
trait KvElem: Copy + Default + Send + Sync + 'static {
    /// `dst[i] = src[i]`, rounded to nearest even where `Self` is narrower (and held at its
    /// largest finite value beyond its range).
    fn put(dst: &mut [Self], src: &[f32]);
    /// `dst[i] = src[i]`, exactly.
    fn get(dst: &mut [f32], src: &[Self]);
}

impl KvElem for f32 {
    fn put(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }

    fn get(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for f16 {
    fn put(dst: &mut [f16], src: &[f32]) {
        // `half` converts 8 at a time with F16C where the CPU has it. A key or value beyond
        // ±65,504 (none in the models measured) would become infinite and turn its rows'
        // attention into NaN: held at the largest finite f16 instead.
        dst.convert_from_f32_slice(src);
        for h in dst.iter_mut().filter(|h| h.is_infinite()) {
            *h = if h.is_sign_negative() {
                f16::MIN
            } else {
                f16::MAX
            };
        }
    }

    fn get(dst: &mut [f32], src: &[f16]) {
        src.convert_to_f32_slice(dst);
    }
}

/// Every layer's keys and values in one number type.
struct Arrays<T> {
    k: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
    /// One token's keys in `T`, before they are scattered into the transposed rows.
    staged: Vec<T>,
}

impl<T: KvElem> Arrays<T> {
    fn new(layers: usize, per_layer: usize) -> Self {
        Self {
            k: (0..layers).map(|_| vec![T::default(); per_layer]).collect(),
            v: (0..layers).map(|_| vec![T::default(); per_layer]).collect(),
            staged: Vec::new(),
        }
    }

    fn write(&mut self, g: Geometry, layer: usize, block: u32, slot: usize, k: &[f32], v: &[f32]) {
        let hd = g.head_dim;
        self.staged.resize(k.len(), T::default());
        T::put(&mut self.staged, k);
        for h in 0..g.kv_heads {
            let o = g.offset(block, h, slot);
            T::put(&mut self.v[layer][o..o + hd], &v[h * hd..(h + 1) * hd]);
            let at = g.offset(block, h, 0);
            let keys = &mut self.k[layer][at..][..g.head_block()];
            for (row, &x) in keys
                .chunks_exact_mut(g.block_size)
                .zip(&self.staged[h * hd..])
            {
                row[slot] = x;
            }
        }
    }

    fn layer(&self, g: Geometry, layer: usize) -> Layer<'_, T> {
        Layer {
            g,
            k: &self.k[layer],
            v: &self.v[layer],
        }
    }
}

enum Data {
    F32(Arrays<f32>),
    F16(Arrays<f16>),
}

/// The key and value arrays.
pub(crate) struct KvStore {
    pub(crate) block_size: usize,
    g: Geometry,
    data: Data,
}

impl KvStore {
    pub(crate) fn new(
        layers: usize,
        blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
        precision: KvPrecision,
    ) -> Self {
        let per_layer = blocks * kv_heads * block_size * head_dim;
        Self {
            block_size,
            g: Geometry {
                block_size,
                kv_heads,
                head_dim,
            },
            data: match precision {
                KvPrecision::F32 => Data::F32(Arrays::new(layers, per_layer)),
                KvPrecision::F16 => Data::F16(Arrays::new(layers, per_layer)),
            },
        }
    }

    /// Bytes of one block across all layers, keys and values.
    pub(crate) fn block_bytes(
        layers: usize,
        block_size: usize,
        kv_heads: usize,
        hd: usize,
        precision: KvPrecision,
    ) -> usize {
        let elem = match precision {
            KvPrecision::F32 => size_of::<f32>(),
            KvPrecision::F16 => size_of::<f16>(),
        };
        2 * layers * kv_heads * block_size * hd * elem
    }

    /// Writes one token's keys and values (`kv_heads × head_dim` each) at `slot` of `block`.
    pub(crate) fn write(&mut self, layer: usize, block: u32, slot: usize, k: &[f32], v: &[f32]) {
        let g = self.g;
        match &mut self.data {
            Data::F32(a) => a.write(g, layer, block, slot, k, v),
            Data::F16(a) => a.write(g, layer, block, slot, k, v),
        }
    }

    /// One layer's key and value arrays, for the attention kernel.
    pub(crate) fn layer(&self, layer: usize) -> LayerKv<'_> {
        match &self.data {
            Data::F32(a) => LayerKv::F32(a.layer(self.g, layer)),
            Data::F16(a) => LayerKv::F16(a.layer(self.g, layer)),
        }
    }
}

/// A read-only view of one layer's cache in its number type.
#[derive(Clone, Copy)]
pub(crate) struct Layer<'a, T> {
    g: Geometry,
    k: &'a [T],
    v: &'a [T],
}

impl<'a, T> Layer<'a, T> {
    /// Keys of `head` in `block`, transposed: `head_dim` rows of `block_size` positions.
    pub(crate) fn keys(&self, block: u32, head: usize) -> &'a [T] {
        let o = self.g.offset(block, head, 0);
        &self.k[o..o + self.g.head_block()]
    }

    /// Values of `head` in `block`: `block_size` rows of `head_dim`.
    pub(crate) fn values(&self, block: u32, head: usize) -> &'a [T] {
        let o = self.g.offset(block, head, 0);
        &self.v[o..o + self.g.head_block()]
    }
}

/// A read-only view of one layer's cache.
#[derive(Clone, Copy)]
pub(crate) enum LayerKv<'a> {
    F32(Layer<'a, f32>),
    F16(Layer<'a, f16>),
}

impl<'a> LayerKv<'a> {
    /// [`Layer::keys`] in `f32`: the cache's own slice, or converted into `buf`.
    pub(crate) fn keys_f32<'b>(&self, block: u32, head: usize, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            Self::F32(l) => l.keys(block, head),
            Self::F16(l) => converted(l.keys(block, head), buf),
        }
    }

    /// [`Layer::values`] in `f32`: the cache's own slice, or converted into `buf`.
    pub(crate) fn values_f32<'b>(&self, block: u32, head: usize, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            Self::F32(l) => l.values(block, head),
            Self::F16(l) => converted(l.values(block, head), buf),
        }
    }
}

fn converted<'b, T: KvElem>(src: &[T], buf: &'b mut Vec<f32>) -> &'b [f32] {
    buf.resize(src.len(), 0.0);
    T::get(buf, src);
    buf
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

    /// An f16 cache holds what it is given to f16's rounding, keys transposed, and values
    /// beyond f16's range at its largest finite value, not infinity.
    #[test]
    fn f16_cache_rounds_and_saturates() {
        let (bs, kv_heads, hd) = (4, 2, 3);
        let mut kv = KvStore::new(1, 2, bs, kv_heads, hd, KvPrecision::F16);
        let k = [1.0f32, -2.5, 1e6, 0.1, -1e6, 3.0];
        let v = [0.5f32, 70_000.0, -0.25, 1.0 / 3.0, 2.0, -80_000.0];
        kv.write(0, 1, 2, &k, &v);
        let LayerKv::F16(layer) = kv.layer(0) else {
            panic!("an f16 cache")
        };
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for h in 0..kv_heads {
            let t = layer.keys(1, h);
            keys.extend((0..hd).map(|d| t[d * bs + 2].to_f32()));
            values.extend(
                layer.values(1, h)[2 * hd..3 * hd]
                    .iter()
                    .map(|x| x.to_f32()),
            );
        }
        let round = |x: f32| f16::from_f32(x).to_f32();
        let max = f16::MAX.to_f32();
        assert_eq!(keys, [1.0, -2.5, max, round(0.1), -max, 3.0]);
        assert_eq!(values, [0.5, max, -0.25, round(1.0 / 3.0), 2.0, -max]);
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
