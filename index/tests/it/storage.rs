//! The same storage contract, checked on a local directory and on a real SeaweedFS S3 server.

use bytes::Bytes;
use hearth_index::fixtures::SeaweedFs;
use hearth_index::{
    BlobStore, Chunk, CollectionName, CollectionSettings, DocId, IndexError, decode_chunks,
    encode_chunks, keys,
};

async fn contract(store: BlobStore) {
    // Missing objects.
    assert!(store.get_opt("raw/c/missing").await.unwrap().is_none());
    assert!(matches!(
        store.get("raw/c/missing").await,
        Err(IndexError::NotFound(_))
    ));
    assert!(!store.exists("raw/c/missing").await.unwrap());
    store.delete("raw/c/missing").await.unwrap();

    // Put, get, overwrite.
    store
        .put("raw/c/a", Bytes::from_static(b"one"))
        .await
        .unwrap();
    assert_eq!(
        store.get("raw/c/a").await.unwrap(),
        Bytes::from_static(b"one")
    );
    store
        .put("raw/c/a", Bytes::from_static(b"two!"))
        .await
        .unwrap();
    assert_eq!(
        store.get("raw/c/a").await.unwrap(),
        Bytes::from_static(b"two!")
    );
    assert!(store.exists("raw/c/a").await.unwrap());

    // Binary content survives byte for byte, including a multi-megabyte object.
    let big: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    store
        .put("raw/c/big", Bytes::from(big.clone()))
        .await
        .unwrap();
    assert_eq!(
        store.get("raw/c/big").await.unwrap().as_ref(),
        big.as_slice()
    );

    // Listing is by prefix, sorted, and does not leak across prefixes.
    store
        .put("raw/c2/x", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(
        store.list("raw/c/").await.unwrap(),
        vec!["raw/c/a".to_owned(), "raw/c/big".to_owned()]
    );
    assert!(store.list("nothing/").await.unwrap().is_empty());

    // Delete.
    store.delete("raw/c/a").await.unwrap();
    assert!(!store.exists("raw/c/a").await.unwrap());
    assert_eq!(
        store.list("raw/c/").await.unwrap(),
        vec!["raw/c/big".to_owned()]
    );

    // Chunk segments round-trip through the store.
    let c = CollectionName::new("docs").unwrap();
    let doc = DocId::of_bytes(b"content");
    let chunks: Vec<Chunk> = (0..5)
        .map(|i| Chunk {
            doc_id: doc,
            ordinal: i,
            text: format!("passage {i} ﬁ"),
            page_start: Some(i + 1),
            page_end: Some(i + 1),
            heading: vec!["H".into()],
            span_start: u64::from(i) * 20,
            span_end: u64::from(i) * 20 + 12,
            token_count: 6,
            embedding: None,
        })
        .collect();
    let key = keys::chunks(&c, &doc);
    store
        .put(&key, encode_chunks(&chunks, 384).unwrap())
        .await
        .unwrap();
    assert_eq!(
        decode_chunks(&key, &store.get(&key).await.unwrap()).unwrap(),
        chunks
    );

    // Collection settings are fixed at creation.
    let settings = CollectionSettings {
        redaction: Default::default(),
        ocr_languages: Vec::new(),
        default_access: Default::default(),
        format_version: hearth_index::FORMAT_VERSION,
        chunk_tokens: 256,
        chunk_overlap: 32,
        tokenizer_sha256: "ab".repeat(32),
        embedding_dim: 384,
        embedder: "all-MiniLM-L6-v2".into(),
        embedder_sha256: "cd".repeat(32),
        vectors: 0,
        reembed: None,
    };
    settings.open_or_create(&store, &c).await.unwrap();
    settings.open_or_create(&store, &c).await.unwrap();
    // The chunking is the collection's: other chunk settings asked for later get the stored.
    let other = CollectionSettings {
        chunk_tokens: 512,
        chunk_overlap: 64,
        ..settings.clone()
    };
    let kept = other.open_or_create(&store, &c).await.unwrap();
    assert_eq!((kept.chunk_tokens, kept.chunk_overlap), (256, 32));
    let read = CollectionSettings::read(&store, &c).await.unwrap().unwrap();
    assert_eq!((read.chunk_tokens, read.chunk_overlap), (256, 32));
    // Another model, or the same name with other weights, is a conflict too.
    for (name, sha, says) in [
        (
            "multilingual-e5-small",
            "cd",
            "embedder all-MiniLM-L6-v2 (asked: multilingual-e5-small)",
        ),
        (
            "all-MiniLM-L6-v2",
            "ef",
            "embedder all-MiniLM-L6-v2 with sha256 cdcdcdcdcdcd",
        ),
    ] {
        let other = CollectionSettings {
            embedder: name.into(),
            embedder_sha256: sha.repeat(32),
            ..settings.clone()
        };
        let err = other.open_or_create(&store, &c).await.unwrap_err();
        assert!(
            matches!(err, IndexError::Conflict(ref m) if m.contains(says)),
            "{err}"
        );
    }
    assert_eq!(CollectionSettings::list(&store).await.unwrap(), vec![c]);

    // Keys that are not valid object paths are refused, not mangled.
    assert!(matches!(
        store.put("raw/../etc", Bytes::new()).await,
        Err(IndexError::InvalidInput(_))
    ));

    // Listing with version tags: every key once, in order (S3 lists it in 16 ranges by the
    // first character, so names that are not hex are the test), and a tag that changes with
    // the object and matches what a read gives.
    let mut names: Vec<String> = (0..40u32)
        .map(|i| {
            format!(
                "{:064x}.json",
                u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            )
        })
        .collect();
    names.extend(
        [
            "0", "9", "9~x", "a", "A-upper", "f~", "g", "zz", "~tilde", "-dash", "f0f",
        ]
        .map(String::from),
    );
    for n in &names {
        store
            .put(&format!("tags/{n}"), Bytes::from(n.clone()))
            .await
            .unwrap();
    }
    let tagged = store.list_tagged("tags/").await.unwrap();
    let keys: Vec<&str> = tagged.iter().map(|(k, _)| k.as_str()).collect();
    let plain = store.list("tags/").await.unwrap();
    assert_eq!(keys, plain.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(keys.len(), names.len());
    let (key, tag) = &tagged[3];
    let (_, read_tag) = store.get_tagged(key).await.unwrap().unwrap();
    assert_eq!(&read_tag, tag, "a read gives another tag than the listing");
    store
        .put(key, Bytes::from_static(b"changed"))
        .await
        .unwrap();
    let again = store.list_tagged("tags/").await.unwrap();
    assert_ne!(&again[3].1, tag, "a rewritten object kept its tag");
    assert_eq!(again[4], tagged[4]);
}

#[tokio::test]
async fn local_backend_meets_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(BlobStore::local(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn encrypted_stores_meet_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, "11".repeat(32)).unwrap();
    let encryption = hearth_index::EncryptionConfig {
        kek_file: Some(kek),
        kek_env: None,
    };
    let local = hearth_index::StorageConfig {
        data_dir: dir.path().join("data"),
        encryption: encryption.clone(),
        ..Default::default()
    };
    let store = BlobStore::open(&local).await.unwrap();
    assert!(store.encrypted());
    contract(store).await;
    let s3 = hearth_index::StorageConfig {
        backend: hearth_index::StorageBackend::S3,
        s3: SeaweedFs::shared().fresh_bucket(),
        encryption,
        ..Default::default()
    };
    let store = BlobStore::open(&s3).await.unwrap();
    assert!(store.encrypted());
    contract(store).await;
    // Opened again: the same keyring, the same data.
    let again = BlobStore::open(&s3).await.unwrap();
    again
        .put("raw/c/z", Bytes::from_static(b"zz"))
        .await
        .unwrap();
    assert_eq!(
        &BlobStore::open(&s3)
            .await
            .unwrap()
            .get("raw/c/z")
            .await
            .unwrap()[..],
        b"zz"
    );
}

#[tokio::test]
async fn s3_backend_meets_the_storage_contract() {
    let cfg = SeaweedFs::shared().fresh_bucket();
    contract(BlobStore::s3(&cfg).unwrap()).await;
}

#[tokio::test]
async fn s3_prefix_isolates_deployments_in_one_bucket() {
    let cfg = SeaweedFs::shared().fresh_bucket();
    let a = BlobStore::s3(&hearth_index::S3Config {
        prefix: "site-a".into(),
        ..cfg.clone()
    })
    .unwrap();
    let b = BlobStore::s3(&hearth_index::S3Config {
        prefix: "site-b".into(),
        ..cfg
    })
    .unwrap();
    a.put("raw/c/x", Bytes::from_static(b"a")).await.unwrap();
    assert!(b.get_opt("raw/c/x").await.unwrap().is_none());
    assert_eq!(a.list("raw/").await.unwrap(), vec!["raw/c/x".to_owned()]);
}

#[tokio::test]
async fn unreachable_s3_endpoint_is_a_clear_error() {
    let cfg = hearth_index::S3Config {
        endpoint: "http://127.0.0.1:9".into(),
        bucket: "b".into(),
        ..Default::default()
    };
    let store = BlobStore::s3(&cfg).unwrap();
    let err = store.get_opt("raw/c/x").await.unwrap_err();
    assert!(
        matches!(err, IndexError::Store { ref key, .. } if key == "raw/c/x"),
        "{err}"
    );
}

fn outcome(report: &hearth_index::WriteChecks, name: &str) -> hearth_index::WriteOutcome {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:?}"))
        .outcome
}

#[tokio::test]
async fn seaweedfs_keeps_its_conditional_write_promises() {
    use hearth_index::WriteOutcome::Passed;
    let cfg = SeaweedFs::shared().fresh_bucket();
    let store = BlobStore::s3(&cfg).unwrap();
    // Several runs: a race that a store loses now and then must not pass by luck.
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let report = store.check_conditional_writes().await.unwrap();
        println!(
            "probe in {:?}: {}",
            started.elapsed(),
            serde_json::to_string_pretty(&report).unwrap()
        );
        for name in [
            "create-race",
            "create-existing",
            "update-stale",
            "update-current",
            "update-race",
        ] {
            assert_eq!(outcome(&report, name), Passed, "{name}: {report:?}");
        }
        assert!(report.all_passed());
    }
    // The probe leaves nothing behind.
    assert!(store.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_store_that_ignores_conditions_fails_the_probe_by_name() {
    use hearth_index::WriteOutcome::Failed;
    let weed = SeaweedFs::shared();
    let bucket = weed.fresh_bucket().bucket;
    let proxy = hearth_index::fixtures::ConditionIgnoringProxy::start(&weed.endpoint).unwrap();
    let store = BlobStore::s3(&proxy.bucket(&bucket)).unwrap();
    // Through the proxy the store still works as a store...
    store
        .put("raw/c/a", Bytes::from_static(b"one"))
        .await
        .unwrap();
    assert_eq!(&store.get("raw/c/a").await.unwrap()[..], b"one");
    store.delete("raw/c/a").await.unwrap();
    // ...but every condition is lost, and the probe says which promises break.
    let report = store.check_conditional_writes().await.unwrap();
    for name in [
        "create-race",
        "create-existing",
        "update-stale",
        "update-race",
    ] {
        assert_eq!(outcome(&report, name), Failed, "{name}: {report:?}");
    }
    let create = report.create_failure().unwrap();
    assert_eq!(create.name, "create-race");
    assert!(create.detail.contains("8 succeeded"), "{}", create.detail);
    assert_eq!(report.update_failure().unwrap().name, "update-stale");
    // And put_new, which the audit log's entries rely on, is what it breaks.
    assert!(
        store
            .put_new("raw/c/b", Bytes::from_static(b"1"))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_new("raw/c/b", Bytes::from_static(b"2"))
            .await
            .unwrap()
    );
    assert!(store.list("_probe/").await.unwrap().is_empty());
}
