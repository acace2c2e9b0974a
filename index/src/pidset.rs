//! A fixed-size bitset over point ids (pids), used for tombstones and for the per-query set of
//! allowed pids.

use std::ops::Range;

/// A set of pids in `0..capacity`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PidSet {
    words: Vec<u64>,
    capacity: u32,
    len: usize,
}

impl PidSet {
    /// An empty set able to hold pids `0..capacity`.
    pub(crate) fn new(capacity: u32) -> Self {
        Self {
            words: vec![0; (capacity as usize).div_ceil(64)],
            capacity,
            len: 0,
        }
    }

    /// Grows the set so it can hold pids `0..capacity` (never shrinks).
    pub(crate) fn grow(&mut self, capacity: u32) {
        if capacity > self.capacity {
            self.capacity = capacity;
            self.words.resize((capacity as usize).div_ceil(64), 0);
        }
    }

    /// How many pids are in the set.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether `pid` is in the set (false beyond the capacity).
    pub(crate) fn contains(&self, pid: u32) -> bool {
        self.words
            .get((pid / 64) as usize)
            .is_some_and(|w| w & (1u64 << (pid % 64)) != 0)
    }

    /// Adds `pid`, growing the set if needed.
    pub(crate) fn insert(&mut self, pid: u32) {
        self.grow(pid.saturating_add(1));
        let (w, bit) = ((pid / 64) as usize, 1u64 << (pid % 64));
        if self.words[w] & bit == 0 {
            self.words[w] |= bit;
            self.len += 1;
        }
    }

    /// Adds every pid of `range`, growing the set if needed.
    pub(crate) fn insert_range(&mut self, range: Range<u32>) {
        if range.is_empty() {
            return;
        }
        self.grow(range.end);
        let (mut pid, end) = (range.start, range.end);
        while pid < end {
            let w = (pid / 64) as usize;
            let lo = pid % 64;
            let hi = (end - (pid - lo)).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            self.len += (mask & !self.words[w]).count_ones() as usize;
            self.words[w] |= mask;
            pid = pid - lo + hi;
        }
    }

    /// The pids in the set, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let base = (i as u32) * 64;
            BitIter(word).map(move |b| base + b)
        })
    }

    /// The set as maximal runs of consecutive pids, ascending.
    pub(crate) fn ranges(&self) -> Vec<Range<u32>> {
        let mut out: Vec<Range<u32>> = Vec::new();
        for pid in self.iter() {
            match out.last_mut() {
                Some(last) if last.end == pid => last.end = pid + 1,
                _ => out.push(pid..pid + 1),
            }
        }
        out
    }
}

struct BitIter(u64);

impl Iterator for BitIter {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_iter_and_ranges() {
        let mut s = PidSet::new(10);
        s.insert_range(3..6);
        s.insert(5);
        s.insert(63);
        s.insert(64);
        s.insert(200);
        assert_eq!(s.len(), 6);
        assert!(s.contains(3) && s.contains(64) && s.contains(200));
        assert!(!s.contains(2) && !s.contains(6) && !s.contains(10_000));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 4, 5, 63, 64, 200]);
        assert_eq!(s.ranges(), vec![3..6, 63..65, 200..201]);
    }

    #[test]
    fn range_insertion_matches_single_insertion() {
        for (a, b) in [
            (0, 0),
            (0, 64),
            (5, 70),
            (63, 64),
            (64, 200),
            (10, 11),
            (1, 300),
        ] {
            let mut fast = PidSet::new(0);
            let mut slow = PidSet::new(0);
            fast.insert(7);
            slow.insert(7);
            fast.insert_range(a..b);
            for p in a..b {
                slow.insert(p);
            }
            assert_eq!(
                fast.iter().collect::<Vec<_>>(),
                slow.iter().collect::<Vec<_>>()
            );
            assert_eq!(fast.len(), slow.len(), "{a}..{b}");
        }
    }
}
