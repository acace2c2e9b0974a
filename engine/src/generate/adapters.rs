//! The adapter registry: names mapped to adapter directories, with at most `resident` of them
//! loaded (least recently used unloaded first).
//!
//! Registering loads and checks an adapter on the caller's thread. A request for an adapter
//! that was unloaded goes to the loader thread instead of the scheduler; the loader reads the
//! files again and then hands the request on. The scheduler never waits for a file, so running
//! decodes keep their pace while adapters come and go.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{EngineError, Result};

use super::arch::ModelSpec;
use super::lora::{Adapter, AdapterInfo};

/// Adapter names: what `base:adapter` model names and URLs can carry.
const MAX_NAME: usize = 64;

struct Entry {
    dir: PathBuf,
    id: u32,
    info: AdapterInfo,
    loaded: Option<Arc<Adapter>>,
    /// Tick of the last use, for LRU.
    used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    clock: u64,
    last_id: u32,
}

impl Inner {
    fn touch(&mut self, name: &str) {
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(name) {
            e.used = self.clock;
        }
    }

    /// Unloads least recently used adapters (other than `keep`) until at most `resident`
    /// are loaded. Sequences already running with one keep their own reference.
    fn evict(&mut self, resident: usize, keep: &str) {
        loop {
            let loaded = self.entries.values().filter(|e| e.loaded.is_some()).count();
            if loaded <= resident {
                return;
            }
            let victim = self
                .entries
                .iter_mut()
                .filter(|(n, e)| e.loaded.is_some() && n.as_str() != keep)
                .min_by_key(|(_, e)| e.used);
            match victim {
                Some((name, e)) => {
                    tracing::debug!(adapter = %name, "adapter unloaded");
                    e.loaded = None;
                }
                None => return,
            }
        }
    }
}

pub(crate) struct Registry {
    inner: Mutex<Inner>,
    spec: ModelSpec,
    resident: usize,
}

impl Registry {
    pub(crate) fn new(spec: ModelSpec, resident: usize) -> Self {
        Self {
            inner: Mutex::default(),
            spec,
            resident: resident.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent (every update is one
        // insert or field store), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Loads, checks and registers the adapter in `dir` as `name`, replacing one of that
    /// name (requests already running keep the old one).
    pub(crate) fn register(&self, name: &str, dir: &Path) -> Result<AdapterInfo> {
        check_name(name)?;
        let id = {
            let mut inner = self.lock();
            inner.last_id = inner.last_id.checked_add(1).ok_or_else(|| {
                EngineError::Internal("adapter ids exhausted; restart the generator".into())
            })?;
            inner.last_id
        };
        let adapter = Arc::new(Adapter::load(dir, name, id, &self.spec)?);
        let info = adapter.info.clone();
        let mut inner = self.lock();
        inner.entries.insert(
            name.to_owned(),
            Entry {
                dir: dir.to_owned(),
                id,
                info: info.clone(),
                loaded: Some(adapter),
                used: 0,
            },
        );
        inner.touch(name);
        inner.evict(self.resident, name);
        tracing::info!(adapter = name, rank = info.rank, "adapter registered");
        Ok(info)
    }

    /// Forgets `name`; false when there was no such adapter.
    pub(crate) fn remove(&self, name: &str) -> bool {
        self.lock().entries.remove(name).is_some()
    }

    /// Every registered adapter, by name.
    pub(crate) fn list(&self) -> Vec<AdapterInfo> {
        let inner = self.lock();
        let mut all: Vec<_> = inner
            .entries
            .values()
            .map(|e| AdapterInfo {
                resident: e.loaded.is_some(),
                ..e.info.clone()
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The loaded adapter `name`, or `None` when it has to be loaded again first.
    pub(crate) fn get(&self, name: &str) -> Result<Option<Arc<Adapter>>> {
        let mut inner = self.lock();
        let loaded = match inner.entries.get(name) {
            None => return Err(EngineError::UnknownAdapter(name.to_owned())),
            Some(e) => e.loaded.clone(),
        };
        if loaded.is_some() {
            inner.touch(name);
        }
        Ok(loaded)
    }

    /// Loads `name` again from its directory (slow: the loader thread calls this).
    pub(crate) fn reload(&self, name: &str) -> Result<Arc<Adapter>> {
        let (dir, id) = {
            let inner = self.lock();
            let e = inner
                .entries
                .get(name)
                .ok_or_else(|| EngineError::UnknownAdapter(name.to_owned()))?;
            if let Some(a) = &e.loaded {
                return Ok(a.clone());
            }
            (e.dir.clone(), e.id)
        };
        let adapter = Arc::new(Adapter::load(&dir, name, id, &self.spec)?);
        let mut inner = self.lock();
        match inner.entries.get_mut(name) {
            // Still the same registration: keep it loaded.
            Some(e) if e.id == id => {
                let a = e.loaded.get_or_insert(adapter).clone();
                inner.touch(name);
                inner.evict(self.resident, name);
                tracing::debug!(adapter = name, "adapter loaded again");
                Ok(a)
            }
            // Removed or replaced meanwhile: this request still gets what it asked for.
            _ => Ok(adapter),
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidInput(format!(
            "adapter name {name:?}: use 1 to {MAX_NAME} letters, digits, '-', '_' or '.' \
             (not starting with '.')"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        for ok in ["legal", "hr-v2", "a.b_c", "X1"] {
            check_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "a:b", "ä", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
