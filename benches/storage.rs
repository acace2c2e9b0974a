//! Object-store throughput with and without encryption at rest, in the same run: puts and gets
//! of document-sized objects (64 KiB and 1 MiB) through `BlobStore` on the local backend, plain
//! vs AES-256-GCM sealed, both synced to disk before each put returns (`storage.fsync`, the
//! default); and plain without the syncs. Reports MB/s and the ratios. Writes
//! `bench-storage.json` in the cargo target directory.
//!
//!     cargo bench --bench storage
//!
//! `HEARTH_BENCH_MB` sets the megabytes moved per configuration (default 256).

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use hearth_index::{BlobStore, EncryptionConfig, StorageConfig};

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let total_mb: usize = std::env::var("HEARTH_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut results = Vec::new();
    for size in [64 << 10, 1 << 20] {
        let n = (total_mb << 20) / size;
        // Alternate the order so neither configuration always runs on a warm page cache.
        // Configurations: (encrypted, fsync).
        let configs = [(false, true), (true, true), (false, false)];
        let mut rates = [[0f64; 2]; 3]; // per configuration: [put, get]
        for round in 0..2 {
            for c in 0..configs.len() {
                let c = if round == 0 { c } else { configs.len() - 1 - c };
                let (enc, fsync) = configs[c];
                let (put, get) = rt.block_on(run(size, n, enc, fsync));
                rates[c][0] = rates[c][0].max(put);
                rates[c][1] = rates[c][1].max(get);
            }
        }
        println!(
            "{:>5} KiB objects x {n}: put plain {:>7.0} MB/s, encrypted {:>7.0} MB/s ({:.2}x), unsynced {:>7.0} MB/s (synced/unsynced {:.2}x); get plain {:>7.0} MB/s, encrypted {:>7.0} MB/s ({:.2}x)",
            size >> 10,
            rates[0][0],
            rates[1][0],
            rates[1][0] / rates[0][0],
            rates[2][0],
            rates[0][0] / rates[2][0],
            rates[0][1],
            rates[1][1],
            rates[1][1] / rates[0][1],
        );
        results.push(serde_json::json!({
            "object_kib": size >> 10, "objects": n,
            "put_mb_s": {"plain": rates[0][0], "encrypted": rates[1][0], "plain_unsynced": rates[2][0]},
            "get_mb_s": {"plain": rates[0][1], "encrypted": rates[1][1], "plain_unsynced": rates[2][1]},
        }));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    std::fs::create_dir_all(&target).expect("target dir");
    let out = target.join("bench-storage.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results).expect("json")).expect("write");
    println!("wrote {}", out.display());
}

/// Puts then gets `n` objects of `size` bytes; (put MB/s, get MB/s). Best of the two rounds is
/// kept by the caller.
async fn run(size: usize, n: usize, encrypted: bool, fsync: bool) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = dir.path().join("kek");
    std::fs::write(&kek, "5a".repeat(32)).expect("kek");
    let cfg = StorageConfig {
        data_dir: dir.path().join("data"),
        encryption: EncryptionConfig {
            kek_file: encrypted.then_some(kek),
            kek_env: None,
        },
        fsync,
        ..StorageConfig::default()
    };
    let store = BlobStore::open(&cfg).await.expect("open the store");
    assert_eq!(store.encrypted(), encrypted);
    // Incompressible-looking bytes, like PDFs and Arrow files.
    let body: Bytes = (0..size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();
    let mb = (size * n) as f64 / 1e6;
    let t = Instant::now();
    for i in 0..n {
        store
            .put(&format!("raw/bench/{i:06}"), body.clone())
            .await
            .expect("put");
    }
    let put = mb / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        let got = store.get(&format!("raw/bench/{i:06}")).await.expect("get");
        assert_eq!(got.len(), size);
    }
    let get = mb / t.elapsed().as_secs_f64();
    (put, get)
}
