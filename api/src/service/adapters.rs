//! LoRA adapters as a managed resource: uploaded PEFT files are checked against the loaded
//! model, kept in the object store (`adapters/{name}/...`) and registered with the generator;
//! at start-up every stored adapter is registered again.
//!
//! The generator reads an adapter's files again whenever it reloads one it had unloaded, so
//! each registered adapter has a local copy under `{data_dir}/adapters/`, one directory per
//! upload (a replacement never changes files the previous version may still be read from).

use std::path::{Path, PathBuf};

use hearth_engine::AdapterInfo;

use super::Service;
use crate::error::{Result, ServiceError};

/// PEFT's file names.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's file names.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

fn store_key(name: &str, file: &str) -> String {
    format!("adapters/{name}/{file}")
}

/// Checks an adapter name: 1-64 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn check_adapter_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidInput(format!(
            "adapter name {:?} is invalid: use 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-', not starting with '.'",
            name.chars().take(80).collect::<String>()
        )))
    }
}

impl Service {
    fn adapters_dir(&self) -> PathBuf {
        self.data_dir.join("adapters")
    }

    /// Writes the two files into a fresh local directory and registers them with the
    /// generator (which validates them against the model). Returns the directory.
    async fn register_files(
        &self,
        name: &str,
        config: bytes::Bytes,
        weights: bytes::Bytes,
    ) -> Result<(AdapterInfo, PathBuf)> {
        let g = self.generator()?.clone();
        let root = self.adapters_dir();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let io = |p: &Path, e: std::io::Error| {
                ServiceError::Internal(format!("writing {}: {e}", p.display()))
            };
            std::fs::create_dir_all(&root).map_err(|e| io(&root, e))?;
            let dir = tempfile::Builder::new()
                .prefix(&format!("{name}."))
                .tempdir_in(&root)
                .map_err(|e| io(&root, e))?;
            for (file, bytes) in [(ADAPTER_CONFIG, &config), (ADAPTER_WEIGHTS, &weights)] {
                let p = dir.path().join(file);
                std::fs::write(&p, bytes).map_err(|e| io(&p, e))?;
            }
            // On failure the temporary directory is removed when `dir` drops.
            let info = g.register_adapter(&name, dir.path())?;
            Ok((info, dir.keep()))
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("adapter task: {e}")))?
    }

    /// Checks and registers an adapter from its PEFT files, then stores them; replaces an
    /// adapter of the same name. Nothing is stored when the adapter does not fit the model.
    pub async fn install_adapter(
        &self,
        name: &str,
        config: bytes::Bytes,
        weights: bytes::Bytes,
    ) -> Result<AdapterInfo> {
        check_adapter_name(name)?;
        let _guard = self.adapter_lock.lock().await;
        let (info, dir) = self
            .register_files(name, config.clone(), weights.clone())
            .await?;
        let stored = async {
            self.store
                .put(&store_key(name, ADAPTER_WEIGHTS), weights)
                .await?;
            self.store
                .put(&store_key(name, ADAPTER_CONFIG), config)
                .await
        }
        .await;
        if let Err(e) = stored {
            self.generator()?.remove_adapter(name);
            remove_dir(dir).await;
            return Err(e.into());
        }
        let old = self.adapter_dirs.lock().await.insert(name.to_owned(), dir);
        if let Some(old) = old {
            remove_dir(old).await;
        }
        Ok(info)
    }

    /// Unregisters an adapter and deletes its files; false when there was none.
    pub async fn delete_adapter(&self, name: &str) -> Result<bool> {
        check_adapter_name(name)?;
        let _guard = self.adapter_lock.lock().await;
        let registered = self.generator()?.remove_adapter(name);
        let stored = self.store.exists(&store_key(name, ADAPTER_CONFIG)).await?;
        self.store.delete(&store_key(name, ADAPTER_CONFIG)).await?;
        self.store.delete(&store_key(name, ADAPTER_WEIGHTS)).await?;
        if let Some(dir) = self.adapter_dirs.lock().await.remove(name) {
            remove_dir(dir).await;
        }
        Ok(registered || stored)
    }

    /// The local files of every registered adapter, by name (what the generator reads).
    pub async fn adapter_files(&self) -> Vec<(String, Vec<PathBuf>)> {
        self.adapter_dirs
            .lock()
            .await
            .iter()
            .map(|(name, dir)| {
                let files = [ADAPTER_CONFIG, ADAPTER_WEIGHTS].map(|f| dir.join(f));
                (name.clone(), files.to_vec())
            })
            .collect()
    }

    /// The registered adapters.
    pub fn adapters(&self) -> Result<Vec<AdapterInfo>> {
        Ok(self.generator()?.adapters())
    }

    /// Registers every adapter in the object store (at start-up). An adapter that no longer
    /// fits the model is skipped with a warning. Returns how many were registered.
    pub async fn restore_adapters(&self) -> Result<usize> {
        // Local copies of an earlier run are stale by definition: start from the store.
        let root = self.adapters_dir();
        if root.exists() {
            let r = root.clone();
            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&r))
                .await
                .map_err(|e| ServiceError::Internal(format!("adapter task: {e}")))?
                .map_err(|e| ServiceError::Internal(format!("clearing {}: {e}", root.display())))?;
        }
        let mut names: Vec<String> = self
            .store
            .list("adapters/")
            .await?
            .iter()
            .filter_map(|k| {
                k.strip_prefix("adapters/")?
                    .split_once('/')
                    .map(|(n, _)| n.to_owned())
            })
            .collect();
        names.dedup();
        let mut n = 0;
        for name in names {
            if check_adapter_name(&name).is_err() {
                continue;
            }
            let config = self
                .store
                .get_opt(&store_key(&name, ADAPTER_CONFIG))
                .await?;
            let weights = self
                .store
                .get_opt(&store_key(&name, ADAPTER_WEIGHTS))
                .await?;
            let (Some(config), Some(weights)) = (config, weights) else {
                tracing::warn!(adapter = %name, "adapter files incomplete in the store; skipped");
                continue;
            };
            match self.register_files(&name, config, weights).await {
                Ok((_, dir)) => {
                    self.adapter_dirs.lock().await.insert(name, dir);
                    n += 1;
                }
                Err(e) => {
                    tracing::warn!(adapter = %name, error = %e, "stored adapter not registered")
                }
            }
        }
        Ok(n)
    }
}

async fn remove_dir(dir: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}

#[cfg(test)]
mod tests {
    use super::check_adapter_name;

    #[test]
    fn adapter_names() {
        for ok in ["a", "support-v2", "x.y_z", &"a".repeat(64)] {
            assert!(check_adapter_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "a b",
            "ü",
            &"a".repeat(65),
            "a:b",
        ] {
            assert!(check_adapter_name(bad).is_err(), "{bad}");
        }
    }
}
