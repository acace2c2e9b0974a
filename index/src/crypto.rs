//! Encryption at rest: AES-256-GCM envelope encryption of every object in the store.
//!
//! A store is either plain or encrypted, decided once, when it is first used: an encrypted
//! store has a keyring at [`KEYRING_KEY`] holding its data keys, each wrapped (AES-256-GCM) by
//! the key-encryption key (KEK), which never touches the store. Every other object is
//! `MAGIC | version | data-key id (u32 LE) | nonce (12) | ciphertext | tag (16)`, sealed with
//! the object's key as associated data, so an object moved to another key does not open.
//!
//! Rotating the KEK re-wraps the data keys and rewrites the keyring (one atomic put); no
//! content is re-encrypted. A wrong KEK fails at start-up with a clear error; a damaged object
//! fails its tag check and is reported, never returned as garbage.
//!
//! Key material is wiped from memory when dropped (`zeroize`): the KEK, the text it was read
//! from (the key file's contents, the environment variable's value as read), every unwrapped
//! data key, and the AES key schedules inside the ciphers (the `aes` crate's "zeroize"
//! feature), so a core dump or a later read of freed memory does not find them. Not covered:
//! the environment variable itself, which stays in the process's environment (prefer
//! `kek_file`); the GHASH subkey each AES-GCM cipher derives from its key (it could forge tags,
//! not decrypt); copies the compiler leaves in registers or on the stack; the key file in the
//! kernel's page cache; and memory swapped out before it was wiped. None of this stops a
//! process that can read hearth's memory while it runs.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{IndexError, Result};

/// Where the keyring lives (never encrypted itself: it holds only wrapped keys).
pub const KEYRING_KEY: &str = "crypto/keyring.json";

const MAGIC: &[u8; 4] = b"HTHE";
const VERSION: u8 = 1;
const NONCE: usize = 12;
const HEADER: usize = MAGIC.len() + 1 + 4 + NONCE;
const TAG: usize = 16;
/// The cipher, as reports name it.
pub const CIPHER: &str = "AES-256-GCM";

/// Where the key-encryption key comes from (`[storage.encryption]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// A file holding the 32-byte key-encryption key as 64 hex characters (e.g.
    /// `openssl rand -hex 32 > kek`; keep it readable by hearth only).
    pub kek_file: Option<PathBuf>,
    /// The name of an environment variable holding the key as 64 hex characters.
    pub kek_env: Option<String>,
}

impl EncryptionConfig {
    /// Whether encryption at rest is configured.
    pub fn enabled(&self) -> bool {
        self.kek_file.is_some() || self.kek_env.is_some()
    }

    /// `file:PATH` or `env:NAME`, for reports; never the key.
    pub fn source(&self) -> Option<String> {
        match (&self.kek_file, &self.kek_env) {
            (Some(p), _) => Some(format!("file:{}", p.display())),
            (None, Some(n)) => Some(format!("env:{n}")),
            (None, None) => None,
        }
    }

    /// Checks that at most one source is given.
    pub fn validate(&self) -> Result<()> {
        if self.kek_file.is_some() && self.kek_env.is_some() {
            return Err(IndexError::InvalidInput(
                "storage.encryption: set kek_file or kek_env, not both".into(),
            ));
        }
        if self.kek_env.as_deref().is_some_and(str::is_empty) {
            return Err(IndexError::InvalidInput(
                "storage.encryption.kek_env must name an environment variable".into(),
            ));
        }
        Ok(())
    }

    /// Reads the key, if one is configured.
    pub fn load(&self) -> Result<Option<Kek>> {
        self.validate()?;
        match (&self.kek_file, &self.kek_env) {
            (Some(p), _) => Kek::from_file(p).map(Some),
            (None, Some(n)) => {
                let v = Zeroizing::new(std::env::var(n).map_err(|_| {
                    IndexError::InvalidInput(format!(
                        "storage.encryption.kek_env names {n}, which is not set"
                    ))
                })?);
                Kek::from_hex(&v, &format!("environment variable {n}")).map(Some)
            }
            (None, None) => Ok(None),
        }
    }
}

/// A 256-bit key-encryption key, wiped from memory when dropped.
#[derive(Clone)]
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// Parses 64 hex characters (surrounding whitespace ignored); `what` names the source in
    /// errors.
    pub fn from_hex(text: &str, what: &str) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut key[..]).map_err(|_| {
            IndexError::InvalidInput(format!(
                "{what} must hold a 256-bit key as 64 hex characters (e.g. from `openssl rand -hex 32`)"
            ))
        })?;
        Ok(Self(key))
    }

    /// Reads a key file (64 hex characters).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            IndexError::InvalidInput(format!(
                "cannot read the key-encryption key {}: {e}",
                path.display()
            ))
        })?);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path)
                && m.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(file = %path.display(), "the key-encryption key file is readable by other users; chmod 600 it");
            }
        }
        Self::from_hex(&text, &format!("key file {}", path.display()))
    }

    fn cipher(&self) -> Aes256Gcm {
        // By reference: converting the array would leave a copy of the key on the stack.
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0[..]))
    }
}

/// One wrapped data key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WrappedKey {
    id: u32,
    /// hex(nonce | ciphertext | tag).
    wrapped: String,
}

/// The keyring object.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyringFile {
    format: u32,
    cipher: String,
    /// The data key new objects are sealed with.
    active: u32,
    keys: Vec<WrappedKey>,
}

fn wrap_aad(id: u32) -> Vec<u8> {
    format!("hearth data key {id}").into_bytes()
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    fill_random(&mut b)?;
    Ok(b)
}

fn fill_random(b: &mut [u8]) -> Result<()> {
    getrandom::fill(b).map_err(|e| IndexError::Internal(format!("no randomness from the OS: {e}")))
}

/// A fresh data key, generated where it stays until it is wiped.
fn random_key() -> Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    fill_random(&mut key[..])?;
    Ok(key)
}

/// Seals the files of a node's local index cache with its store's data keys
/// (`index.encrypt_cache`): the same envelope as the store's objects, with the file's place in
/// the cache (`{collection}/{file}`) as associated data, so a file does not open under
/// another name or in another collection.
#[derive(Clone)]
pub struct CacheSealer(std::sync::Arc<Sealer>);

impl std::fmt::Debug for CacheSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheSealer")
    }
}

impl CacheSealer {
    pub(crate) fn new(sealer: std::sync::Arc<Sealer>) -> Self {
        Self(sealer)
    }

    fn aad(name: &str) -> String {
        format!("local-index-cache/{name}")
    }

    /// Seals the contents of the cache file `name`.
    pub(crate) fn seal(&self, name: &str, plain: &[u8]) -> Result<Bytes> {
        self.0.seal(&Self::aad(name), plain)
    }

    /// Opens the cache file `name`; fails on plaintext, damage or a file moved from elsewhere.
    pub(crate) fn open(&self, name: &str, stored: Vec<u8>) -> Result<Bytes> {
        self.0.open_object(&Self::aad(name), Bytes::from(stored))
    }
}

/// The unwrapped data keys of a store: seals and opens objects.
pub(crate) struct Sealer {
    active: u32,
    keys: Vec<(u32, Aes256Gcm)>,
}

impl Sealer {
    /// A new keyring with one random data key, wrapped by `kek`: (sealer, keyring bytes).
    pub(crate) fn create(kek: &Kek) -> Result<(Self, Bytes)> {
        let dek = random_key()?;
        let file = KeyringFile {
            format: 1,
            cipher: CIPHER.into(),
            active: 1,
            keys: vec![WrappedKey {
                id: 1,
                wrapped: wrap(kek, 1, &dek)?,
            }],
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| IndexError::Internal(format!("encoding the keyring: {e}")))?;
        Ok((Self::from_file(kek, &file)?, bytes.into()))
    }

    /// Opens a stored keyring with `kek`.
    pub(crate) fn open(kek: &Kek, keyring: &[u8]) -> Result<Self> {
        Self::from_file(kek, &parse_keyring(keyring)?)
    }

    fn from_file(kek: &Kek, file: &KeyringFile) -> Result<Self> {
        let keys = file
            .keys
            .iter()
            .map(|k| {
                let dek = unwrap(kek, k)?;
                Ok((k.id, Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&dek[..]))))
            })
            .collect::<Result<Vec<_>>>()?;
        if !keys.iter().any(|(id, _)| *id == file.active) {
            return Err(corrupt_keyring("the active data key is missing"));
        }
        Ok(Self {
            active: file.active,
            keys,
        })
    }

    /// Seals `plain` for the object at `key`.
    pub(crate) fn seal(&self, key: &str, plain: &[u8]) -> Result<Bytes> {
        let cipher = self
            .cipher(self.active)
            .ok_or_else(|| IndexError::Internal("the active data key is not loaded".into()))?;
        let nonce: [u8; NONCE] = random()?;
        // One buffer, encrypted in place: header, then the plaintext turned ciphertext, then
        // the tag.
        let mut out = Vec::with_capacity(HEADER + plain.len() + TAG);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.active.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = cipher
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                key.as_bytes(),
                &mut out[HEADER..],
            )
            .map_err(|_| IndexError::Internal(format!("encrypting {key} failed")))?;
        out.extend_from_slice(&tag);
        Ok(out.into())
    }

    /// Opens the object stored at `key`, decrypting in place when `stored` is not shared.
    pub(crate) fn open_object(&self, key: &str, stored: Bytes) -> Result<Bytes> {
        let damaged = |why: &str| IndexError::Corrupt {
            key: key.to_owned(),
            detail: format!("encrypted object {why}"),
        };
        if stored.len() < HEADER + TAG || &stored[..4] != MAGIC {
            return Err(damaged(
                "expected, found unencrypted or truncated bytes (written without encryption?)",
            ));
        }
        if stored[4] != VERSION {
            return Err(damaged(&format!(
                "has unknown format version {}",
                stored[4]
            )));
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&stored[5..9]);
        let id = u32::from_le_bytes(id);
        let cipher = self
            .cipher(id)
            .ok_or_else(|| damaged(&format!("names data key {id}, which the keyring lacks")))?;
        let mut buf = stored
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let end = buf.len() - TAG;
        let tag = Tag::clone_from_slice(&buf[end..]);
        let nonce = Nonce::clone_from_slice(&buf[9..HEADER]);
        cipher
            .decrypt_in_place_detached(&nonce, key.as_bytes(), &mut buf[HEADER..end], &tag)
            .map_err(|_| {
                damaged("failed its integrity check (altered, or moved from another key)")
            })?;
        buf.truncate(end);
        Ok(buf.split_off(HEADER).freeze())
    }

    fn cipher(&self, id: u32) -> Option<&Aes256Gcm> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, c)| c)
    }
}

fn parse_keyring(bytes: &[u8]) -> Result<KeyringFile> {
    let file: KeyringFile = serde_json::from_slice(bytes)
        .map_err(|e| corrupt_keyring(&format!("not a keyring: {e}")))?;
    if file.format != 1 || file.cipher != CIPHER {
        return Err(corrupt_keyring(&format!(
            "unsupported format {} / cipher {}",
            file.format, file.cipher
        )));
    }
    Ok(file)
}

fn corrupt_keyring(detail: &str) -> IndexError {
    IndexError::Corrupt {
        key: KEYRING_KEY.into(),
        detail: detail.into(),
    }
}

fn wrap(kek: &Kek, id: u32, dek: &[u8; 32]) -> Result<String> {
    let nonce: [u8; NONCE] = random()?;
    let sealed = kek
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: dek,
                aad: &wrap_aad(id),
            },
        )
        .map_err(|_| IndexError::Internal("wrapping a data key failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(hex::encode(out))
}

fn unwrap(kek: &Kek, k: &WrappedKey) -> Result<Zeroizing<[u8; 32]>> {
    let raw = hex::decode(&k.wrapped)
        .ok()
        .filter(|r| r.len() == NONCE + 32 + 16)
        .ok_or_else(|| corrupt_keyring(&format!("data key {} is malformed", k.id)))?;
    let plain = kek
        .cipher()
        .decrypt(
            Nonce::from_slice(&raw[..NONCE]),
            Payload {
                msg: &raw[NONCE..],
                aad: &wrap_aad(k.id),
            },
        )
        .map_err(|_| {
            IndexError::InvalidInput(format!(
                "the key-encryption key does not open this store's data keys ({KEYRING_KEY}): wrong key, or the keyring was altered"
            ))
        })?;
    let plain = Zeroizing::new(plain);
    let mut dek = Zeroizing::new([0u8; 32]);
    dek.copy_from_slice(&plain);
    Ok(dek)
}

/// Re-wraps every data key of `keyring` from `old` to `new`: the new keyring's bytes. Content
/// sealed with the data keys is untouched.
pub(crate) fn rewrap(keyring: &[u8], old: &Kek, new: &Kek) -> Result<Bytes> {
    let mut file = parse_keyring(keyring)?;
    for k in &mut file.keys {
        let dek = unwrap(old, k)?;
        k.wrapped = wrap(new, k.id, &dek)?;
    }
    let bytes = serde_json::to_vec_pretty(&file)
        .map_err(|e| IndexError::Internal(format!("encoding the keyring: {e}")))?;
    Ok(bytes.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(b: u8) -> Kek {
        Kek(Zeroizing::new([b; 32]))
    }

    #[test]
    fn objects_round_trip_and_are_bound_to_their_key() {
        let (s, ring) = Sealer::create(&kek(1)).unwrap();
        let sealed = s.seal("raw/c/a", b"secret text").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &s.open_object("raw/c/a", sealed.clone()).unwrap()[..],
            b"secret text"
        );
        // Moved to another key: refused.
        assert!(s.open_object("raw/c/b", sealed.clone()).is_err());
        // One flipped bit anywhere: refused.
        for i in [0, 5, 10, HEADER, sealed.len() - 1] {
            let mut bad = sealed.to_vec();
            bad[i] ^= 1;
            let e = s
                .open_object("raw/c/a", bad.into())
                .unwrap_err()
                .to_string();
            assert!(e.contains("raw/c/a"), "{e}");
        }
        assert!(
            s.open_object(
                "raw/c/a",
                Bytes::from_static(b"plain bytes, never encrypted")
            )
            .is_err()
        );
        // The same keyring opened again reads it.
        let again = Sealer::open(&kek(1), &ring).unwrap();
        assert_eq!(
            &again.open_object("raw/c/a", sealed.clone()).unwrap()[..],
            b"secret text"
        );
    }

    #[test]
    fn a_wrong_kek_is_a_clear_error() {
        let (_, ring) = Sealer::create(&kek(1)).unwrap();
        let e = Sealer::open(&kek(2), &ring).err().unwrap().to_string();
        assert!(e.contains("does not open this store's data keys"), "{e}");
    }

    #[test]
    fn rotation_rewraps_without_touching_content() {
        let (s, ring) = Sealer::create(&kek(1)).unwrap();
        let sealed = s.seal("k", b"content").unwrap();
        let rotated = rewrap(&ring, &kek(1), &kek(3)).unwrap();
        assert!(
            Sealer::open(&kek(1), &rotated).is_err(),
            "the old KEK no longer opens it"
        );
        let s3 = Sealer::open(&kek(3), &rotated).unwrap();
        assert_eq!(&s3.open_object("k", sealed).unwrap()[..], b"content");
        assert!(
            rewrap(&ring, &kek(9), &kek(3)).is_err(),
            "rotation needs the current KEK"
        );
    }

    #[test]
    fn key_material_is_wiped_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>() {}
        // The KEK and unwrapped data keys.
        wiped::<Zeroizing<[u8; 32]>>();
        // The key schedule inside every AES-256-GCM cipher: only with the `aes` crate's
        // "zeroize" feature, which this fails to compile without.
        wiped::<aes::Aes256>();
    }

    #[test]
    fn keys_parse_from_hex_only() {
        assert!(Kek::from_hex(&"ab".repeat(32), "k").is_ok());
        assert!(Kek::from_hex(&format!(" {}\n", "AB".repeat(32)), "k").is_ok());
        for bad in [
            "",
            "abc",
            &"ab".repeat(31),
            &"zz".repeat(32),
            &"ab".repeat(33),
        ] {
            let e = Kek::from_hex(bad, "key file x").unwrap_err().to_string();
            assert!(e.contains("key file x") && e.contains("64 hex"), "{e}");
        }
        assert_eq!(format!("{:?}", kek(7)), "Kek(<redacted>)");
    }
}
