//! Listing a collection's documents at scale, before and after the catalog file and its change
//! journal, in the same run, on the local backend and on a real SeaweedFS S3 server (started
//! on loopback):
//! - before: what `Registry::list` did until the catalog, one listing then a read of every
//!   record object (16 at a time);
//! - cold, no catalog file: the first listing of a collection (reads every record, writes the
//!   file);
//! - a fresh process right after the bulk write, every change still in the journal;
//! - once the journal is compacted (the file covers it, its entries removed): a fresh process
//!   (a new node, `hearth docs`, a replica): the file plus the journal's listing; the same
//!   registry again (the journal alone); the same with the record objects listed (as before
//!   the journal);
//! - after 100 changes by another writer: warm, and a fresh process.
//!
//! Page views, `/metrics` counts, opening a collection and the resume of pending documents
//! are all this listing. Writes `bench-catalog.json` in the cargo target directory.
//!
//!     cargo bench --bench catalog
//!
//! `HEARTH_BENCH_DOCS` sets the number of documents (default 100,000); `HEARTH_BENCH_BACKENDS`
//! picks among `local`, `s3` and `s3-20ms` (SeaweedFS behind a proxy that holds every request
//! for 20 ms, as a store across a network would; default `local,s3`).

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use hearth_index::fixtures::{ConditionIgnoringProxy, SeaweedFs};
use hearth_index::{BlobStore, CollectionName, keys};
use hearth_ingest::{DocRecord, JournalTiming, Registry};

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let docs: u32 = std::env::var("HEARTH_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let backends = std::env::var("HEARTH_BENCH_BACKENDS").unwrap_or_else(|_| "local,s3".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut results = Vec::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut servers = Vec::new();
    for backend in backends.split(',') {
        let store = match backend {
            "local" => BlobStore::local_synced(dir.path(), false).expect("local store"),
            "s3" => {
                servers.push(SeaweedFs::start().expect("SeaweedFS"));
                let bucket = servers.last().expect("just started").fresh_bucket();
                BlobStore::s3(&bucket).expect("s3 store")
            }
            "s3-20ms" => {
                // The same server behind 20 ms per request: a store across a network.
                servers.push(SeaweedFs::start().expect("SeaweedFS"));
                let weed = servers.last().expect("just started");
                let bucket = weed.fresh_bucket().bucket;
                let proxy = ConditionIgnoringProxy::delaying(
                    &weed.endpoint,
                    std::time::Duration::from_millis(20),
                )
                .expect("proxy");
                BlobStore::s3(&proxy.bucket(&bucket)).expect("s3 store")
            }
            other => panic!("unknown backend {other}"),
        };
        let r = rt.block_on(run(backend, store, docs));
        results.push(r);
    }
    let out = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("bench-catalog.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&results).expect("json")).expect("write");
    println!("wrote {}", out.display());
}

fn record(c: &CollectionName, i: u32) -> DocRecord {
    // Document ids are SHA-256 digests, spread evenly over the key space.
    let id: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(i.to_le_bytes()).into();
    let department = ["legal", "finance", "ops"][i as usize % 3];
    // A record as ingestion leaves one: source, kind, size, metadata, state, counts, times.
    serde_json::from_value(serde_json::json!({
        "format_version": 1,
        "doc_id": hex::encode(id),
        "collection": c.as_str(),
        "source": format!("/srv/share/reports/2026/quarter-{}/report-{i:06}.pdf", i % 4 + 1),
        "kind": "pdf",
        "size": 180_000 + u64::from(i % 9_000) * 37,
        "metadata": {"department": department, "year": 2026},
        "state": if i.is_multiple_of(50) { "failed" } else { "indexed" },
        "reason": if i.is_multiple_of(50) { Some("the PDF is encrypted") } else { None },
        "title": format!("Quarterly report {i}"),
        "pages": 12 + i % 40,
        "chunks": 30 + i % 90,
        "attempts": 1,
        "created_ms": 1_780_000_000_000u64 + u64::from(i),
        "updated_ms": 1_780_000_100_000u64 + u64::from(i),
    }))
    .expect("a valid record")
}

/// The listing before the catalog: every record object read.
async fn every_record(store: &BlobStore, c: &CollectionName) -> usize {
    let keys = store
        .list(&keys::doc_records_prefix(c))
        .await
        .expect("list");
    let recs: Vec<DocRecord> = futures::stream::iter(keys)
        .map(|key| async move {
            let bytes = store.get(&key).await?;
            serde_json::from_slice::<DocRecord>(&bytes)
                .map_err(|e| hearth_index::IndexError::Internal(e.to_string()))
        })
        .buffered(16)
        .try_collect()
        .await
        .expect("records");
    recs.len()
}

async fn run(backend: &str, store: BlobStore, docs: u32) -> serde_json::Value {
    let c = CollectionName::new("bench").expect("name");
    let t = Instant::now();
    let writer = Registry::new(store.clone());
    futures::stream::iter(0..docs)
        .map(|i| {
            let writer = writer.clone();
            let c = c.clone();
            async move {
                let mut r = record(&c, i);
                let updated = r.updated_ms;
                writer.put(&mut r).await.map(|()| updated)
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .expect("writing records");
    println!(
        "{backend}: {docs} records written in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let n = every_record(&store, &c).await;
    let before = t.elapsed().as_secs_f64();
    assert_eq!(n, docs as usize);

    let timed = |reg: Registry| {
        let c = c.clone();
        async move {
            let t = Instant::now();
            let (recs, st) = reg.list_counted(&c).await.expect("list");
            (t.elapsed().as_secs_f64(), recs.len(), st)
        }
    };
    let t = Instant::now();
    let listed = store
        .list_tagged(&keys::doc_records_prefix(&c))
        .await
        .expect("list");
    let listing = t.elapsed().as_secs_f64();
    assert_eq!(listed.len(), docs as usize);
    let first = Registry::new(store.clone());
    let (cold_no_file, n1, st1) = timed(first.clone()).await;
    let (cold_journal_full, n0, st0) = timed(Registry::new(store.clone())).await;
    // The journal compacted, as a node does a few minutes after a bulk write: entries settle
    // and go at once here.
    let compactor = Registry::with_timing(
        store.clone(),
        JournalTiming {
            settle: std::time::Duration::ZERO,
            gap: std::time::Duration::from_secs(60),
            grace: std::time::Duration::ZERO,
        },
    );
    let (_, stc) = compactor.list_counted(&c).await.expect("list");
    assert!(
        stc.catalog_written && stc.journal_removed >= docs as usize,
        "{stc:?}"
    );
    let (cold_file, n2, st2) = timed(Registry::new(store.clone())).await;
    let warm_reg = Registry::new(store.clone());
    timed(warm_reg.clone()).await;
    let (warm, n3, st3) = timed(warm_reg.clone()).await;
    // The same, listing the record objects every time (as before the journal).
    let listing_reg = Registry::with_timing(
        store.clone(),
        JournalTiming {
            gap: std::time::Duration::ZERO,
            ..JournalTiming::default()
        },
    );
    timed(listing_reg.clone()).await;
    let (warm_listed, n6, st6) = timed(listing_reg.clone()).await;
    let other = Registry::new(store.clone());
    for i in 0..100 {
        let mut r = record(&c, i * (docs / 100).max(1));
        r.attempts = 2;
        other.put(&mut r).await.expect("put");
    }
    let (warm_changed, n4, st4) = timed(warm_reg.clone()).await;
    let (cold_changed, n5, st5) = timed(Registry::new(store.clone())).await;
    for n in [n0, n1, n2, n3, n4, n5, n6] {
        assert_eq!(n, docs as usize);
    }
    assert_eq!((st2.read, st3.read, st4.read, st5.read), (0, 0, 100, 100));
    assert!(!st2.records_listed && !st3.records_listed && !st4.records_listed);
    assert!(st6.records_listed && st0.records_listed);
    let file_bytes = store
        .get(&keys::catalog(&c))
        .await
        .map(|b| b.len())
        .unwrap_or(0);
    println!(
        "{backend}, {docs} records: before (read every record) {before:.3} s; first listing {cold_no_file:.3} s (read {}, file written: {}); fresh process with the whole bulk write in the journal {cold_journal_full:.3} s; journal compacted: fresh process {cold_file:.3} s ({:.1}x faster than before), warm {warm:.3} s ({:.0}x), warm listing the records {warm_listed:.3} s, warm after 100 changes {warm_changed:.3} s (read {}), fresh process after them {cold_changed:.3} s (read {}); catalog file {:.1} MB; the listing of keys and tags alone {listing:.3} s",
        st1.read,
        st1.catalog_written,
        before / cold_file,
        before / warm,
        st4.read,
        st5.read,
        file_bytes as f64 / 1e6,
    );
    serde_json::json!({
        "backend": backend, "records": docs,
        "before_s": before,
        "first_listing_s": cold_no_file,
        "fresh_process_whole_write_in_journal_s": cold_journal_full,
        "fresh_process_s": cold_file,
        "warm_s": warm,
        "warm_listing_records_s": warm_listed,
        "warm_after_100_changes_s": warm_changed,
        "fresh_process_after_100_changes_s": cold_changed,
        "read": {"first": st1.read, "fresh": st2.read, "warm": st3.read, "warm_changed": st4.read, "fresh_changed": st5.read},
        "catalog_file_bytes": file_bytes,
        "listing_alone_s": listing,
    })
}
