//! Arrays that start as a file's pages and grow on the heap (issue 21: the graph and its codes
//! live in the OS page cache, not the heap).
//!
//! A [`Mapping`] maps a whole file copy-on-write (`MAP_PRIVATE`): reads come from the page
//! cache, and a write (a neighbour list relinked by an insertion) copies only the page it
//! touches into the process; the file never changes. A [`Grow`] is one section of such a
//! file followed by a heap tail for what was appended since; a slice handed out lies wholly in
//! one of the two (the callers' lists and rows never straddle the boundary, since the section
//! holds whole ones). Saving writes a new file, which the owner maps again, so the tail stays
//! small in a long-running process.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use memmap2::{MmapMut, MmapOptions};

use super::sq8::Line;

/// A file mapped copy-on-write, shared by the arrays that view its sections.
pub(crate) struct Mapping {
    map: MmapMut,
}

impl Mapping {
    /// Maps `path` copy-on-write. The caller's files are immutable once written (a new
    /// generation gets a new name), which is what makes reading them in place sound.
    #[allow(unsafe_code)]
    pub(crate) fn open(path: &Path) -> std::io::Result<Arc<Self>> {
        let file = File::open(path)?;
        // SAFETY: the file is never modified after it is written (each save writes a new
        // name), and the mapping is private, so our writes never reach it.
        let map = unsafe { MmapOptions::new().map_copy(&file)? };
        Ok(Arc::new(Self { map }))
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// Element types that may be viewed in place in a mapped file: plain bytes of a fixed layout,
/// valid for every bit pattern.
pub(crate) trait Plain: Sized {}
impl Plain for AtomicU32 {}
impl Plain for Line {}
impl Plain for f32 {}

/// A growable array whose first `base` elements may be a section of a [`Mapping`].
pub(crate) struct Grow<T: Plain> {
    /// The mapped section: the mapping (kept alive), the first element and the count.
    base: Option<(Arc<Mapping>, *const T, usize)>,
    tail: Vec<T>,
}

// SAFETY: the raw pointer points into the `Arc<Mapping>` held beside it, which lives as long
// as the `Grow`; elements are only read, or written through `AtomicU32`'s interior mutability,
// exactly as a `Vec<T>` would allow.
#[allow(unsafe_code)]
unsafe impl<T: Plain + Send + Sync> Send for Grow<T> {}
#[allow(unsafe_code)]
unsafe impl<T: Plain + Send + Sync> Sync for Grow<T> {}

impl<T: Plain> Default for Grow<T> {
    fn default() -> Self {
        Self::from(Vec::new())
    }
}

impl<T: Plain> From<Vec<T>> for Grow<T> {
    fn from(tail: Vec<T>) -> Self {
        Self { base: None, tail }
    }
}

impl<T: Plain> Grow<T> {
    /// `count` elements of `map` from byte `offset`; `None` when they do not lie inside the
    /// file or `offset` is not aligned for `T`.
    #[allow(unsafe_code)]
    pub(crate) fn mapped(map: &Arc<Mapping>, offset: usize, count: usize) -> Option<Self> {
        let bytes = map.bytes();
        let end = count
            .checked_mul(size_of::<T>())
            .and_then(|len| offset.checked_add(len))?;
        if end > bytes.len() {
            return None;
        }
        let first = bytes[offset..].as_ptr();
        if !(first as usize).is_multiple_of(align_of::<T>()) {
            return None;
        }
        Some(Self {
            base: Some((Arc::clone(map), first.cast::<T>(), count)),
            tail: Vec::new(),
        })
    }

    fn base(&self) -> &[T] {
        match &self.base {
            // SAFETY: checked in `mapped`: `count` aligned elements inside the mapping, which
            // the `Arc` keeps alive; every bit pattern is a valid `T` (`Plain`).
            #[allow(unsafe_code)]
            Some((_, first, count)) => unsafe { std::slice::from_raw_parts(*first, *count) },
            None => &[],
        }
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        self.base.as_ref().map_or(0, |b| b.2) + self.tail.len()
    }

    /// The elements in `range`, which must lie wholly in the mapped section or wholly after it.
    ///
    /// # Panics
    /// If the range is out of bounds or straddles the end of the mapped section.
    #[inline]
    pub(crate) fn get(&self, range: Range<usize>) -> &[T] {
        let split = self.base.as_ref().map_or(0, |b| b.2);
        if range.start >= split {
            &self.tail[range.start - split..range.end - split]
        } else {
            &self.base()[range]
        }
    }

    /// All the elements as one slice.
    ///
    /// # Panics
    /// If elements were appended to a mapped section (they are not contiguous then).
    pub(crate) fn whole(&self) -> &[T] {
        match self.base {
            None => &self.tail,
            Some(_) => {
                assert!(self.tail.is_empty(), "a mapped array grown on the heap");
                self.base()
            }
        }
    }

    /// Reserves room for `more` appended elements.
    pub(crate) fn reserve_exact(&mut self, more: usize) {
        self.tail.reserve_exact(more);
    }

    /// The appended elements from `start` (an index past the mapped section), writable.
    ///
    /// # Panics
    /// If `start` lies in the mapped section.
    pub(crate) fn tail_mut(&mut self, start: usize) -> &mut [T] {
        let split = self.base.as_ref().map_or(0, |b| b.2);
        &mut self.tail[start - split..]
    }

    /// Every element in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.base().iter().chain(&self.tail)
    }

    /// Bytes on the heap (the appended elements' capacity).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.tail.capacity() * size_of::<T>()
    }

    /// Bytes viewed in the mapped file.
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.base.as_ref().map_or(0, |b| b.2 * size_of::<T>())
    }
}

impl<T: Plain> Extend<T> for Grow<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        self.tail.extend(iter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn a_mapped_section_reads_in_place_takes_writes_privately_and_grows_on_the_heap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut bytes = vec![0u8; 64];
        for w in 0..32u32 {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        let map = Mapping::open(&path).unwrap();
        assert!(
            Grow::<AtomicU32>::mapped(&map, 64, 33).is_none(),
            "past the end"
        );
        assert!(
            Grow::<AtomicU32>::mapped(&map, 2, 4).is_none(),
            "misaligned"
        );
        assert!(
            Grow::<Line>::mapped(&map, 32, 1).is_none(),
            "misaligned line"
        );
        let mut g = Grow::<AtomicU32>::mapped(&map, 64, 32).unwrap();
        assert_eq!(g.len(), 32);
        assert_eq!(g.get(5..7)[1].load(Relaxed), 6);
        g.get(3..4)[0].store(99, Relaxed);
        g.extend([AtomicU32::new(40), AtomicU32::new(41)]);
        assert_eq!(g.len(), 34);
        assert_eq!(g.get(33..34)[0].load(Relaxed), 41);
        g.tail_mut(32)[0].store(7, Relaxed);
        let all: Vec<u32> = g.iter().map(|a| a.load(Relaxed)).collect();
        assert_eq!(all[3], 99);
        assert_eq!(&all[32..], &[7, 41]);
        assert_eq!(g.mapped_bytes(), 128);
        drop(g);
        drop(map);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the file is unchanged"
        );
    }
}
