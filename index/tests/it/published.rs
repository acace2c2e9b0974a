//! Published indexes: a collection's index in the object store, fetched by a node whose cache
//! is empty, on a local directory and on SeaweedFS; an interrupted publish; collection of
//! what no generation names; damaged and hostile manifests; encrypted stores.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hearth_index::fixtures::SeaweedFs;
use hearth_index::{
    BlobStore, CollectionIndex, CollectionName, IndexError, PublishedIndex, Uploaded,
    cache_is_empty,
};

use super::retrieval::{DIM, Rng, assert_same, build, doc_id, make_doc, params, probe, text};

fn name() -> CollectionName {
    CollectionName::new("handbook").unwrap()
}

/// The tantivy segment files of an index directory (their names carry the segment's id: a
/// rebuilt BM25 index has others).
fn tantivy_segments(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("tantivy"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".idx") || n.ends_with(".store"))
        .collect()
}

/// The graph file of an index directory, with its bytes.
fn graph_file(dir: &Path) -> (String, Vec<u8>) {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".hgraph"))
        .map(|n| (n.clone(), std::fs::read(dir.join(n)).unwrap()))
        .expect("a graph file")
}

/// The stored files (each in one object or more: its parts).
async fn files_in_store(store: &BlobStore) -> usize {
    parts_in_store(store)
        .await
        .iter()
        .map(|k| k.rsplit_once('/').unwrap().0.to_owned())
        .collect::<BTreeSet<_>>()
        .len()
}

async fn parts_in_store(store: &BlobStore) -> Vec<String> {
    store.list("index/handbook/v0/files/").await.unwrap()
}

async fn round_trip(store: BlobStore, part: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let (mut index, _) = build(&a, 400, 7);
    index.delete(&doc_id(3)).unwrap();
    index.commit().unwrap();
    let expected = probe(&index, 11);
    let mut published = PublishedIndex::new(store.clone(), &name(), 0);
    if let Some(bytes) = part {
        published = published.with_part_size(bytes);
    }
    assert_eq!(published.latest_generation().await.unwrap(), None);

    let snap = index.snapshot().unwrap().unwrap();
    assert!(snap.files().iter().any(|f| f.starts_with("seg-")));
    assert!(snap.files().iter().any(|f| f.ends_with(".hgraph")));
    assert!(snap.files().iter().any(|f| f == "tantivy/meta.json"));
    assert!(!snap.files().iter().any(|f| f.starts_with("vectors-")));
    let mut known = Uploaded::default();
    let first = published.publish(&snap, &mut known).await.unwrap().unwrap();
    assert_eq!(first.generation, 1);
    assert_eq!(first.uploaded, first.files);
    assert_eq!(files_in_store(&store).await, first.files);
    if part.is_some() {
        // Files larger than a part are stored in several.
        assert!(parts_in_store(&store).await.len() > 2 * first.files);
    }
    // The same state again uploads nothing. Another process (a restart) that finds this very
    // state published commits nothing either.
    let again = published.publish(&snap, &mut known).await.unwrap().unwrap();
    assert_eq!((again.generation, again.uploaded), (2, 0));
    let other = published
        .publish(&snap, &mut Uploaded::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((other.generation, other.uploaded), (2, 0));
    assert_eq!(published.latest_generation().await.unwrap(), Some(2));
    assert_eq!(files_in_store(&store).await, first.files);

    // A node with an empty cache fetches it and answers exactly as the publisher does.
    let b = dir.path().join("b");
    assert!(cache_is_empty(&b, None));
    let fetched = published.fetch(&b, None).await.unwrap().unwrap();
    assert_eq!((fetched.generation, fetched.files), (2, first.files));
    assert!(!cache_is_empty(&b, None));
    let copy = CollectionIndex::open(&b, params(DIM)).unwrap();
    assert_same(&expected, &probe(&copy, 11));
    assert_eq!(copy.doc_ids(), index.doc_ids());
    assert!(!copy.contains(&doc_id(3)));
    // BM25 and the graph are the publisher's files, not rebuilt ones (a rebuilt tantivy index
    // has segments of other ids; a rebuilt graph is written under a new generation).
    assert_eq!(tantivy_segments(&b), tantivy_segments(&a));
    assert_eq!(graph_file(&b), graph_file(&a));
    // It goes on from there: its next commit is searchable and publishes on top.
    drop(copy);
    let mut copy = CollectionIndex::open(&b, params(DIM)).unwrap();
    let (doc, chunks) = make_doc(900, 3, &mut Rng::new(5), text);
    copy.add(doc, &chunks).unwrap();
    copy.commit().unwrap();
    let mut seeded = fetched.uploaded.clone();
    let next = published
        .publish(&copy.snapshot().unwrap().unwrap(), &mut seeded)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.generation, 3);
    assert!(next.uploaded >= 1 && next.uploaded < next.files, "{next:?}");
    // What that publish named is that commit's whole state: tantivy's meta.json keeps its
    // name from commit to commit, and the store's copy is the new one (a stale one would make
    // the fetching node rebuild BM25, with segments of other ids).
    let d = dir.path().join("d");
    published.fetch(&d, None).await.unwrap().unwrap();
    drop(CollectionIndex::open(&d, params(DIM)).unwrap());
    assert_eq!(tantivy_segments(&d), tantivy_segments(&b));
    // Restarted after that publish, the node finds its state in the store: nothing to do.
    let restarted = published
        .publish(&copy.snapshot().unwrap().unwrap(), &mut Uploaded::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((restarted.generation, restarted.uploaded), (3, 0));

    // A part missing from the store (a store that lost it): the fetch fails and leaves an
    // empty cache, from which the node rebuilds.
    if part.is_some() {
        let parts = parts_in_store(&store).await;
        let victim = parts.iter().find(|k| k.ends_with("/000001")).unwrap();
        store.delete(victim).await.unwrap();
        let c = dir.path().join("c");
        assert!(published.fetch(&c, None).await.is_err());
        assert!(cache_is_empty(&c, None));
    }
}

#[tokio::test]
async fn a_fetched_index_answers_like_the_published_one_on_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(BlobStore::local(dir.path()).unwrap(), None).await;
}

#[tokio::test]
async fn a_fetched_index_answers_like_the_published_one_on_seaweedfs_in_parts() {
    // Parts of 4 KiB: every segment and the graph are stored in many.
    round_trip(
        BlobStore::s3(&SeaweedFs::shared().fresh_bucket()).unwrap(),
        Some(4096),
    )
    .await;
}

#[tokio::test]
async fn a_publish_cut_short_loses_nothing_and_its_files_are_collected_after_the_grace() {
    let store = BlobStore::s3(&SeaweedFs::shared().fresh_bucket()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let (mut index, _) = build(&a, 300, 3);
    let expected = probe(&index, 5);
    let published = PublishedIndex::new(store.clone(), &name(), 0);
    let mut known = Uploaded::default();
    let first = published
        .publish(&index.snapshot().unwrap().unwrap(), &mut known)
        .await
        .unwrap()
        .unwrap();

    // More documents, committed locally; the publisher uploads their files and is killed
    // before its manifest.
    let mut rng = Rng::new(9);
    for i in 1000..1100 {
        let (doc, chunks) = make_doc(i, 3, &mut rng, text);
        index.add(doc, &chunks).unwrap();
    }
    index.commit().unwrap();
    let (_, orphans, _) = published
        .upload(&index.snapshot().unwrap().unwrap(), &known)
        .await
        .unwrap()
        .unwrap();
    assert!(orphans >= 1);
    assert_eq!(files_in_store(&store).await, first.files + orphans);
    assert_eq!(published.latest_generation().await.unwrap(), Some(1));

    // A fresh node gets the last committed generation, whole.
    let b = dir.path().join("b");
    published.fetch(&b, None).await.unwrap().unwrap();
    assert_same(
        &expected,
        &probe(&CollectionIndex::open(&b, params(DIM)).unwrap(), 5),
    );

    // Unnamed files younger than the grace stay (a writer may be about to commit them)...
    let kept = published.collect().await.unwrap();
    assert_eq!((kept.files, kept.young), (0, orphans));
    // ...and go once older.
    let strict = published.clone().with_grace(Duration::ZERO);
    let collected = strict.collect().await.unwrap();
    assert_eq!((collected.files, collected.young), (orphans, 0));
    assert_eq!(files_in_store(&store).await, first.files);
    let c = dir.path().join("c");
    published.fetch(&c, None).await.unwrap().unwrap();
    assert_same(
        &expected,
        &probe(&CollectionIndex::open(&c, params(DIM)).unwrap(), 5),
    );

    // Later generations: two are kept, and the files only older ones named are collected
    // (each commit here writes a new graph file, the old one is named by nothing kept).
    let mut generations = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            let (doc, chunks) = make_doc(2000 + round * 100 + i, 3, &mut rng, text);
            index.add(doc, &chunks).unwrap();
        }
        index.commit().unwrap();
        let p = strict
            .publish(&index.snapshot().unwrap().unwrap(), &mut known)
            .await
            .unwrap()
            .unwrap();
        generations.push(p);
    }
    let done = strict.collect().await.unwrap();
    assert_eq!(done.manifests, 2, "generations 1 and 2 go, 3 and 4 stay");
    assert_eq!(
        store
            .list("index/handbook/v0/manifests/")
            .await
            .unwrap()
            .len(),
        2
    );
    let latest = generations.last().unwrap();
    assert!(files_in_store(&store).await >= latest.files);
    let expected = probe(&index, 8);
    let d = dir.path().join("d");
    assert_eq!(
        strict.fetch(&d, None).await.unwrap().unwrap().generation,
        latest.generation
    );
    assert_same(
        &expected,
        &probe(&CollectionIndex::open(&d, params(DIM)).unwrap(), 8),
    );

    // A purge (after a compaction erased documents) keeps the newest generation alone and
    // nothing it does not name, however young, where the default grace kept them.
    let purged = published.purge().await.unwrap();
    assert_eq!(purged.manifests, 1);
    assert_eq!(
        store
            .list("index/handbook/v0/manifests/")
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(files_in_store(&store).await, latest.files);
    let e = dir.path().join("e");
    published.fetch(&e, None).await.unwrap().unwrap();
    assert_same(
        &expected,
        &probe(&CollectionIndex::open(&e, params(DIM)).unwrap(), 8),
    );
}

#[tokio::test]
async fn damaged_or_hostile_published_files_are_refused_and_leave_an_empty_cache() {
    let root = tempfile::tempdir().unwrap();
    let store = BlobStore::local(&root.path().join("store")).unwrap();
    let (index, _) = build(&root.path().join("a"), 50, 1);
    let published = PublishedIndex::new(store.clone(), &name(), 0);
    published
        .publish(
            &index.snapshot().unwrap().unwrap(),
            &mut Uploaded::default(),
        )
        .await
        .unwrap()
        .unwrap();

    // One file's bytes changed in the store: the fetch names it, and the cache stays empty
    // (the node rebuilds from the documents instead).
    let files = store.list("index/handbook/v0/files/").await.unwrap();
    let victim = &files[0];
    let mut bytes = store.get(victim).await.unwrap().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    store.put(victim, Bytes::from(bytes)).await.unwrap();
    let b = root.path().join("b");
    let err = published.fetch(&b, None).await.unwrap_err();
    assert!(
        matches!(&err, IndexError::Corrupt { detail, .. } if detail.contains("does not match")),
        "{err}"
    );
    assert!(cache_is_empty(&b, None));

    // A manifest naming a path outside the cache is refused before anything is written.
    let hostile = serde_json::json!({
        "format_version": 1,
        "index": {},
        "files": [{"name": "../escaped", "id": "ab", "sha256": "00", "bytes": 1, "parts": 1, "part_bytes": 1}],
    });
    store
        .put(
            &format!("index/handbook/v0/manifests/{:020}", 2),
            Bytes::from(serde_json::to_vec(&hostile).unwrap()),
        )
        .await
        .unwrap();
    let err = published.fetch(&b, None).await.unwrap_err();
    assert!(err.to_string().contains("../escaped"), "{err}");
    assert!(!root.path().join("escaped").exists());
    assert!(cache_is_empty(&b, None));
}

#[tokio::test]
async fn an_encrypted_store_holds_published_files_sealed_and_a_sealed_cache_fetches_them() {
    let root = tempfile::tempdir().unwrap();
    let kek = root.path().join("kek");
    std::fs::write(&kek, "22".repeat(32)).unwrap();
    let config = hearth_index::StorageConfig {
        data_dir: root.path().join("data"),
        encryption: hearth_index::EncryptionConfig {
            kek_file: Some(kek),
            kek_env: None,
        },
        ..Default::default()
    };
    let store = BlobStore::open(&config).await.unwrap();
    let sealer = store.cache_sealer().unwrap();
    // The publisher's cache is sealed too: its files are opened to publish them.
    let a = root.path().join("a");
    let mut index = CollectionIndex::open_sealed(&a, params(DIM), Some(sealer.clone())).unwrap();
    let mut rng = Rng::new(4);
    for i in 0..120 {
        let (doc, chunks) = make_doc(i, 3, &mut rng, text);
        index.add(doc, &chunks).unwrap();
    }
    index.commit().unwrap();
    let expected = probe(&index, 6);
    let published = PublishedIndex::new(store.clone(), &name(), 0);
    let snap = index.snapshot().unwrap().unwrap();
    assert!(!snap.files().iter().any(|f| f.starts_with("tantivy/")));
    published
        .publish(&snap, &mut Uploaded::default())
        .await
        .unwrap()
        .unwrap();

    // What lies in the store under index/ is ciphertext: no chunk text, source or title.
    let raw = BlobStore::local(&root.path().join("data").join("store")).unwrap();
    let keys = raw.list("index/").await.unwrap();
    assert!(keys.len() >= 3, "{keys:?}");
    for key in &keys {
        let bytes = raw.get(key).await.unwrap();
        for needle in [&b"topic7 "[..], b"doc7.txt", b"Document 7", b"handbook"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{key} holds {:?} in plaintext",
                String::from_utf8_lossy(needle)
            );
        }
    }

    // A sealed cache elsewhere fetches it (BM25 rebuilt in memory, as every sealed open does).
    let b = root.path().join("b");
    published
        .fetch(&b, Some(sealer.clone()))
        .await
        .unwrap()
        .unwrap();
    for e in std::fs::read_dir(&b).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap_or_default();
        assert!(!bytes.windows(7).any(|w| w == b"topic7 "), "{:?}", e.path());
    }
    let copy = CollectionIndex::open_sealed(&b, params(DIM), Some(sealer)).unwrap();
    assert_same(&expected, &probe(&copy, 6));
}

/// Two writers that both believe they may publish on top of one generation (a replica paused
/// past its lease and the one that took over): exactly one commits the next generation, the
/// other commits nothing and is told, and publishes once it has loaded the winner's.
async fn fenced_writers(store: BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = build(&dir.path().join("a"), 30, 1);
    let (mut b, _) = build(&dir.path().join("b"), 30, 2);
    let (doc, chunks) = make_doc(700, 2, &mut Rng::new(9), text);
    b.add(doc, &chunks).unwrap();
    b.commit().unwrap();
    let published = PublishedIndex::new(store, &name(), 0);
    let (sa, sb) = (
        a.snapshot().unwrap().unwrap(),
        b.snapshot().unwrap().unwrap(),
    );
    let (mut ka, mut kb) = (Uploaded::default(), Uploaded::default());
    let first = published
        .publish_after(&sa, &mut ka, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.generation, 1);
    let err = published
        .publish_after(&sb, &mut kb, 0)
        .await
        .expect_err("a second generation 1");
    assert!(matches!(err, IndexError::Conflict(_)), "{err}");
    let (g, docs) = published.latest_documents().await.unwrap().unwrap();
    assert_eq!(g, 1);
    let mut ids: Vec<_> = docs.into_iter().map(|(d, _)| d).collect();
    ids.sort_unstable();
    assert_eq!(ids, a.doc_ids(), "the loser's state reached the store");
    // Both on top of generation 1, at once: one wins.
    let (ra, rb) = tokio::join!(
        published.publish_after(&sa, &mut ka, 1),
        published.publish_after(&sb, &mut kb, 1)
    );
    let won = [&ra, &rb]
        .iter()
        .filter(|r| matches!(r, Ok(Some(_))))
        .count();
    let lost = [&ra, &rb]
        .iter()
        .filter(|r| matches!(r, Err(IndexError::Conflict(_))))
        .count();
    assert_eq!((won, lost), (1, 1), "{ra:?} {rb:?}");
    assert_eq!(published.latest_generation().await.unwrap(), Some(2));
    // The loser, in line with generation 2 now, publishes 3.
    let (loser, known) = if ra.is_ok() {
        (&sb, &mut kb)
    } else {
        (&sa, &mut ka)
    };
    let third = published
        .publish_after(loser, known, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.generation, 3);
}

#[tokio::test]
async fn fenced_writers_on_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    fenced_writers(BlobStore::local(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn fenced_writers_on_seaweedfs() {
    fenced_writers(BlobStore::s3(&SeaweedFs::shared().fresh_bucket()).unwrap()).await;
}
