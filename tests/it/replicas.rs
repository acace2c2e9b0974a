//! Several `hearth serve` replicas over one S3 store (a SeaweedFS cluster of separate
//! processes on loopback: a master, two volume servers, a filer with the S3 gateway):
//! whatever goes in through one replica is found (or gone) through every other within
//! seconds, one of them indexes, and another takes over when it is killed.

use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use hearth_index::fixtures::{ConditionIgnoringProxy, SeaweedFs};
use hearth_index::{BlobStore, S3Config};
use serde_json::{Value, json};

use crate::access::put;
use crate::common::{Backend, Node, Server, create_key};

/// How long a change may take to reach every replica.
const REACH: Duration = Duration::from_secs(10);

fn replica(cfg: &S3Config, name: &str) -> Node {
    Node::new(Backend::S3(cfg.clone()))
        .env("HEARTH__CLUSTER__ENABLED", "true")
        .env("HEARTH__CLUSTER__POLL_MS", "200")
        .env("HEARTH__CLUSTER__LEASE_S", "2")
        .env("HEARTH__CLUSTER__NAME", name)
}

/// The sources of the top hits for `q` (full-text, so that a hit means the words are in).
async fn found(s: &Server, c: &str, q: &str) -> Vec<String> {
    let r = s
        .post_json(
            &format!("/v1/collections/{c}/search"),
            &json!({"query": q, "top_k": 5, "mode": "bm25"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["source"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until every server finds `source` for `q` (or, `present` false, no longer does),
/// at most `REACH`; returns how long the slowest took.
async fn reaches(servers: &[&Server], c: &str, q: &str, source: &str, present: bool) -> Duration {
    let start = Instant::now();
    for s in servers {
        loop {
            let hits = found(s, c, q).await;
            if hits.iter().any(|h| h == source) == present {
                break;
            }
            assert!(
                start.elapsed() < REACH,
                "{source} still {} through {} after {REACH:?}: {hits:?}",
                if present { "missing" } else { "found" },
                s.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    start.elapsed()
}

async fn create(s: &Server, c: &str) {
    let r = s.post_json("/v1/collections", &json!({"name": c})).await;
    assert_eq!(r.status, 201, "{}", r.json());
}

/// Waits until the proxy holds back a write (at most `REACH`).
async fn until_held(proxy: &ConditionIgnoringProxy) {
    let start = Instant::now();
    while proxy.held() == 0 {
        assert!(
            start.elapsed() < REACH,
            "the indexer never wrote a manifest"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no change marker of collection `c` is left (at most `REACH`).
async fn until_settled(store: &BlobStore, c: &str) {
    let start = Instant::now();
    while !store
        .list(&format!("changes/{c}/"))
        .await
        .unwrap()
        .is_empty()
    {
        assert!(start.elapsed() < REACH, "change markers left unsettled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A first replica, r1, that reaches the store through a proxy able to hold back its
/// manifest writes, indexing collection "shared" with `TEXTS[1]` in it.
async fn indexer_behind_a_proxy(
    cfg: &S3Config,
    env: &[(&str, &str)],
) -> (ConditionIgnoringProxy, Node, Server) {
    let proxy = ConditionIgnoringProxy::holding(&cfg.endpoint, "/manifests/").unwrap();
    let cut = S3Config {
        endpoint: proxy.endpoint.clone(),
        ..cfg.clone()
    };
    let r1 = env
        .iter()
        .fold(replica(&cut, "r1"), |n, (k, v)| n.env(k, v));
    let s1 = r1.serve(&["--open"]).await;
    create(&s1, "shared").await;
    let (name, text, q) = TEXTS[1];
    upload(&s1, "shared", name, text).await;
    reaches(&[&s1], "shared", q, name, true).await;
    assert_eq!(holder(&r1, "shared").await, "r1");
    (proxy, r1, s1)
}

async fn upload(s: &Server, c: &str, name: &str, text: &str) -> String {
    let r = s.upload(c, name, text.as_bytes(), None).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_owned()
}

/// The replica named in the collection's lease.
async fn holder(node: &Node, c: &str) -> String {
    let lease = node
        .store()
        .get_opt(&format!("index/{c}/lease"))
        .await
        .unwrap()
        .expect("no replica holds the lease");
    let v: Value = serde_json::from_slice(&lease).unwrap();
    v["holder"].as_str().unwrap().to_owned()
}

const LEDGER: &str = "# Ledger\n\nThe saffron invoices are paid from the kitchen budget.\n";

const TEXTS: [(&str, &str, &str); 4] = [
    (
        "aquarium.md",
        "# Aquarium\n\nThe zebrafish tanks in room 4 are cleaned every Tuesday by the night shift.\n",
        "zebrafish tanks",
    ),
    (
        "bikes.md",
        "# Bicycles\n\nThe cargo bicycles are charged in the basement garage overnight.\n",
        "cargo bicycles basement",
    ),
    (
        "choir.md",
        "# Choir\n\nThe company choir rehearses madrigals in the atrium on Fridays.\n",
        "choir madrigals atrium",
    ),
    (
        "drones.md",
        "# Drones\n\nSurvey drones may not fly over the quarry without a permit.\n",
        "survey drones quarry",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn replicas_over_one_store() {
    let weed = SeaweedFs::start_cluster().unwrap();
    let cfg = weed.fresh_bucket();
    let nodes: Vec<Node> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| replica(&cfg, n))
        .collect();
    let mut servers = Vec::new();
    for n in &nodes {
        servers.push(Some(n.serve(&["--open"]).await));
    }
    let all = |servers: &Vec<Option<Server>>| -> Vec<usize> {
        (0..servers.len())
            .filter(|i| servers[*i].is_some())
            .collect()
    };
    create(servers[1].as_ref().unwrap(), "shared").await;
    // A second collection, through another replica (its lease may go to another).
    let s3 = servers[2].as_ref().unwrap();
    create(s3, "other").await;
    upload(s3, "other", "ledger.md", LEDGER).await;

    // An upload through each replica (at least two of them do not index) is searchable
    // through every replica within seconds.
    let mut slowest = Duration::ZERO;
    for (i, (name, text, q)) in TEXTS.iter().take(3).enumerate() {
        let s = servers[i].as_ref().unwrap();
        upload(s, "shared", name, text).await;
        let live: Vec<&Server> = servers.iter().flatten().collect();
        slowest = slowest.max(reaches(&live, "shared", q, name, true).await);
    }
    eprintln!("uploads reached every replica within {slowest:?}");
    let lead = holder(&nodes[0], "shared").await;
    let lead_at = ["r1", "r2", "r3"].iter().position(|n| *n == lead).unwrap();

    // A delete through a replica that does not index reaches every replica.
    let follower = (lead_at + 1) % 3;
    let (_, _, q0) = TEXTS[0];
    let docs = servers[follower]
        .as_ref()
        .unwrap()
        .get("/v1/collections/shared/documents")
        .await
        .json();
    let aquarium = docs["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"] == "aquarium.md")
        .expect("aquarium.md listed")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = servers[follower]
        .as_ref()
        .unwrap()
        .delete(&format!("/v1/collections/shared/documents/{aquarium}"))
        .await;
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    {
        let live: Vec<&Server> = servers.iter().flatten().collect();
        reaches(&live, "shared", q0, "aquarium.md", false).await;
    }

    // kill -9 of the indexer: another replica takes the lease over, and an upload through a
    // survivor becomes searchable through both survivors.
    let mut killed = servers[lead_at].take().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let survivor = all(&servers)[0];
    let (name, text, q) = TEXTS[3];
    upload(servers[survivor].as_ref().unwrap(), "shared", name, text).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the dead holder's term
    {
        let live: Vec<&Server> = servers.iter().flatten().collect();
        reaches(&live, "shared", q, name, true).await;
    }
    let new_lead = holder(&nodes[0], "shared").await;
    assert_ne!(new_lead, lead, "the lease was not taken over");

    // A replica started against the store alone (empty data directory) serves the same, in
    // every collection.
    let fresh = replica(&cfg, "r4");
    let s4 = fresh.serve(&["--open"]).await;
    let mut want = Vec::new();
    for (name, _, q) in &TEXTS[1..] {
        let hits = found(servers[survivor].as_ref().unwrap(), "shared", q).await;
        assert!(hits.iter().any(|h| h == name), "{hits:?}");
        assert_eq!(found(&s4, "shared", q).await, hits);
        want.push(hits);
    }
    assert_eq!(found(&s4, "other", "saffron invoices").await, ["ledger.md"]);

    // Wiping a replica's cache changes no result.
    let mut wiped = servers[survivor].take().unwrap();
    wiped.child.kill().unwrap();
    wiped.child.wait().unwrap();
    std::fs::remove_dir_all(nodes[survivor].dir.path().join("data/index")).unwrap();
    servers[survivor] = Some(nodes[survivor].serve(&["--open"]).await);
    for ((_, _, q), hits) in TEXTS[1..].iter().zip(&want) {
        assert_eq!(
            &found(servers[survivor].as_ref().unwrap(), "shared", q).await,
            hits
        );
    }

    // Requests through every replica at once append to one audit chain, which verifies on
    // every node (each checks its own witness of the last entry it wrote).
    let before = nodes[0].store().list("audit/").await.unwrap().len();
    let live: Vec<&Server> = servers.iter().flatten().chain([&s4]).collect();
    futures::future::join_all(
        live.iter()
            .flat_map(|s| (0..6).map(move |_| found(s, "shared", "cargo bicycles"))),
    )
    .await;
    let after = nodes[0].store().list("audit/").await.unwrap().len();
    assert!(after >= before + 18, "{before} -> {after} audit entries");
    for n in nodes.iter().chain([&fresh]) {
        let out = n.run(&["audit", "verify"]);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !found(&s4, "shared", q0)
            .await
            .contains(&"aquarium.md".to_owned())
    );

    // Re-embedding is refused on replicas (not coordinated between them yet), saying why.
    let r = s4
        .post_json(
            "/v1/collections/shared/reembed",
            &json!({"embedder": "multilingual-e5-small"}),
        )
        .await;
    let msg = r.error(409, "conflict");
    assert!(msg.contains("replicas"), "{msg}");

    // Every change is published: no marker is left.
    until_settled(&nodes[0].store(), "shared").await;

    // A collection deleted through one replica is gone from the others.
    let r = s4.delete("/v1/collections/shared").await;
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    let deadline = Instant::now() + REACH;
    for s in servers.iter().flatten() {
        loop {
            let r = s
                .post_json(
                    "/v1/collections/shared/search",
                    &json!({"query": "cargo bicycles", "mode": "bm25"}),
                )
                .await;
            if r.status == 404 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the deleted collection still answers through {}",
                s.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The ids of the published files of collection `c` in the store, and those some manifest
/// names.
async fn published_files(store: &BlobStore, c: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let prefix = format!("index/{c}/v0/files/");
    let stored = store
        .list(&prefix)
        .await
        .unwrap()
        .iter()
        .map(|k| k[prefix.len()..].split('/').next().unwrap().to_owned())
        .collect();
    let mut named = BTreeSet::new();
    for key in store
        .list(&format!("index/{c}/v0/manifests/"))
        .await
        .unwrap()
    {
        let Some(bytes) = store.get_opt(&key).await.unwrap() else {
            continue;
        };
        let m: Value = serde_json::from_slice(&bytes).unwrap();
        for f in m["files"].as_array().unwrap() {
            named.insert(f["id"].as_str().unwrap().to_owned());
        }
    }
    (stored, named)
}

/// The files (name, id) of the newest published manifest of collection `c`.
async fn newest_files(store: &BlobStore, c: &str) -> BTreeSet<(String, String)> {
    let keys = store
        .list(&format!("index/{c}/v0/manifests/"))
        .await
        .unwrap();
    let newest = keys.iter().max().expect("a manifest");
    let m: Value = serde_json::from_slice(&store.get_opt(newest).await.unwrap().unwrap()).unwrap();
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_owned(),
                f["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The indexer killed after uploading its files and before its manifest is committed: nothing
/// uploaded is lost (another replica takes over and indexes it), and the files it left, which
/// no manifest names, are collected once older than the grace.
#[tokio::test(flavor = "multi_thread")]
async fn an_indexer_killed_before_its_manifest_loses_nothing() {
    let cfg = SeaweedFs::shared().fresh_bucket();
    let grace = [("HEARTH__INDEX__PUBLISH_GRACE_S", "1")];
    let (proxy, _r1, mut s1) = indexer_behind_a_proxy(&cfg, &grace).await;
    let (name, _, q) = TEXTS[1];
    let r2 = replica(&cfg, "r2").env("HEARTH__INDEX__PUBLISH_GRACE_S", "1");
    let s2 = r2.serve(&["--open"]).await;
    reaches(&[&s2], "shared", q, name, true).await;
    // One more published while r2 follows: r2 loads it into its own index (its own files).
    let (name, text, q) = TEXTS[0];
    upload(&s1, "shared", name, text).await;
    reaches(&[&s1, &s2], "shared", q, name, true).await;

    // An upload through r2; r1 indexes it, uploads its files and is stopped at the manifest.
    proxy.set_holding(true);
    let (name, text, q) = TEXTS[2];
    upload(&s2, "shared", name, text).await;
    until_held(&proxy).await;
    s1.child.kill().unwrap();
    s1.child.wait().unwrap();
    let store = r2.store();
    let before = newest_files(&store, "shared").await;
    let (stored, named) = published_files(&store, "shared").await;
    let orphans: BTreeSet<String> = stored.difference(&named).cloned().collect();
    assert!(
        !orphans.is_empty(),
        "r1 uploaded nothing before its manifest"
    );

    // r2 takes over and indexes the upload, publishing on top of r1's files: it took them
    // over (its own, built by loading generations, would all be uploaded anew).
    reaches(&[&s2], "shared", q, name, true).await;
    assert_eq!(holder(&r2, "shared").await, "r2");
    let after = newest_files(&store, "shared").await;
    // (BM25's segment files carry random ids: r2's own would have other names.)
    let kept: Vec<_> = before
        .iter()
        .filter(|(n, _)| {
            n.starts_with("tantivy/") && !n.ends_with("meta.json") && !n.ends_with(".managed.json")
        })
        .collect();
    assert!(!kept.is_empty());
    for f in kept {
        assert!(after.contains(f), "{f:?} uploaded again: {after:?}");
    }

    // The orphans go once older than the grace, at a later collection (every 8th publish).
    // Uploads that arrive while a publish is under way share the next one, so the publishes
    // are counted by what the store shows: upload until the orphans are gone, 24 at most.
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliett", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
        "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    ];
    let mut left = orphans.clone();
    for (i, word) in words.iter().enumerate() {
        let name = format!("extra{i}.md");
        let text = format!("# Extra\n\nThe codeword {word}quartz opens locker {i}.\n");
        upload(&s2, "shared", &name, &text).await;
        reaches(&[&s2], "shared", &format!("{word}quartz"), &name, true).await;
        let (stored, _) = published_files(&store, "shared").await;
        left = stored.intersection(&orphans).cloned().collect();
        if left.is_empty() {
            break;
        }
    }
    assert!(
        left.is_empty(),
        "the dead indexer's files are still stored after {} uploads: {left:?}",
        words.len()
    );
    // The change markers go once a published generation holds their change: a round of the
    // indexer after the one that published (under load, after the uploads were seen).
    let started = std::time::Instant::now();
    loop {
        let left = store.list("changes/shared/").await.unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "change markers left 30 s after their changes were served: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn signal(s: &Server, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &s.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Two replicas that both believe they hold the lease: the indexer is paused in the middle of
/// its publish (its files uploaded, its manifest on the way) past its term, the other takes
/// over and publishes the same generation first; the paused one's manifest then arrives and
/// is refused, the winner's stands, and nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn two_indexers_at_once_never_lose_a_manifest() {
    let cfg = SeaweedFs::shared().fresh_bucket();
    let (proxy, _r1, s1) = indexer_behind_a_proxy(&cfg, &[]).await;
    let (name, _, q) = TEXTS[1];
    let r2 = replica(&cfg, "r2");
    let s2 = r2.serve(&["--open"]).await;
    reaches(&[&s2], "shared", q, name, true).await;
    assert_eq!(holder(&r2, "shared").await, "r1");

    proxy.set_holding(true);
    let (name, text, q) = TEXTS[2];
    upload(&s2, "shared", name, text).await;
    until_held(&proxy).await;
    signal(&s1, "-STOP");
    // r2 takes over and publishes the generation r1 is trying to commit.
    reaches(&[&s2], "shared", q, name, true).await;
    assert_eq!(holder(&r2, "shared").await, "r2");
    let store = r2.store();
    let manifests = || async {
        let mut out = Vec::new();
        for key in store.list("index/shared/v0/manifests/").await.unwrap() {
            out.push((key.clone(), store.get_opt(&key).await.unwrap()));
        }
        out
    };
    let before = manifests().await;
    // r1's manifest goes on, late, and r1 runs again believing it holds the lease.
    proxy.set_holding(false);
    signal(&s1, "-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = manifests().await;
    for (key, bytes) in &before {
        if let Some((_, now)) = after.iter().find(|(k, _)| k == key) {
            assert_eq!(now, bytes, "{key} was overwritten");
        }
    }
    assert_eq!(holder(&r2, "shared").await, "r2");
    // Both serve everything; r1, now following, sees what goes in through it.
    reaches(&[&s1, &s2], "shared", q, name, true).await;
    let (name, text, q) = TEXTS[3];
    upload(&s1, "shared", name, text).await;
    reaches(&[&s1, &s2], "shared", q, name, true).await;
    until_settled(&store, "shared").await;
}

/// Read your writes: a document's status gives the generation that holds it once its change is
/// published, and a search through a replica that has not loaded it yet (one that looks at
/// the store only every 30 s) waits for it with `min_generation`.
#[tokio::test(flavor = "multi_thread")]
async fn min_generation_reads_your_writes_on_a_slow_replica() {
    let cfg = SeaweedFs::shared().fresh_bucket();
    let r1 = replica(&cfg, "r1");
    let s1 = r1.serve(&["--open"]).await;
    create(&s1, "shared").await;
    let (name, text, q) = TEXTS[0];
    upload(&s1, "shared", name, text).await;
    reaches(&[&s1], "shared", q, name, true).await;
    let slow = replica(&cfg, "slow")
        .env("HEARTH__CLUSTER__POLL_MS", "30000")
        .env("HEARTH__CLUSTER__LEASE_S", "120")
        .env("HEARTH__CLUSTER__READ_WAIT_MS", "5000");
    let s2 = slow.serve(&["--open"]).await;
    // The slow replica opens the collection now (and holds what is published so far).
    assert_eq!(found(&s2, "shared", q).await, [name]);

    let (name, text, q) = TEXTS[1];
    let id = upload(&s2, "shared", name, text).await;
    // Not deleted through a replica that does not index while the indexer processes it (the
    // indexer's work under way would write it back).
    let msg = s2
        .delete(&format!("/v1/collections/shared/documents/{id}"))
        .await
        .error(409, "conflict");
    assert!(msg.contains("still being processed"), "{msg}");
    let start = Instant::now();
    let generation = loop {
        let v = s2
            .get(&format!("/v1/collections/shared/documents/{id}"))
            .await
            .json();
        if let Some(g) = v["generation"].as_u64() {
            assert_eq!(v["status"], "indexed");
            break g;
        }
        assert!(
            start.elapsed() < REACH,
            "no generation after {REACH:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Without it the slow replica does not have the document yet; with it, it does at once.
    assert!(found(&s2, "shared", q).await.is_empty());
    let search = |min: u64| {
        let s2 = &s2;
        async move {
            s2.post_json(
                "/v1/collections/shared/search",
                &json!({"query": q, "mode": "bm25", "min_generation": min}),
            )
            .await
        }
    };
    let r = search(generation).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let hits = r.json();
    assert_eq!(hits["hits"][0]["source"], name, "{hits}");
    let header: u64 = r.headers["hearth-generation"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(header >= generation, "{header} < {generation}");
    // Answers too: a quoted answer (no model) from the generation asked for.
    let r = s2
        .post_json(
            "/v1/collections/shared/ask",
            &json!({"question": "Where are the cargo bicycles charged?", "answer": "quote",
                    "min_generation": generation}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    assert!(
        answer["answer"].as_str().unwrap().contains("basement"),
        "{answer}"
    );
    assert!(r.headers.contains_key("hearth-generation"));
    // A generation nobody published: 503 once the wait is over.
    let started = Instant::now();
    let msg = search(generation + 1000).await.error(503, "unavailable");
    assert!(msg.contains("not loaded"), "{msg}");
    assert!(started.elapsed() >= Duration::from_secs(5));
}

/// A replica refuses to start on a store without conditional updates (the local directory),
/// and without publishing (the other replicas would never see its work), naming why.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_refuse_what_they_cannot_run_on() {
    let node = Node::new(Backend::Local).env("HEARTH__CLUSTER__ENABLED", "true");
    let out = node.run(&["serve", "--bind", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster.enabled") && err.contains("update-"),
        "{err}"
    );
    let node =
        replica(&SeaweedFs::shared().fresh_bucket(), "r1").env("HEARTH__INDEX__PUBLISH", "false");
    let out = node.run(&["serve", "--bind", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("index.publish"), "{err}");
}

/// The search hits' sources for `key`, through `s`, from generation `min` on.
async fn found_as(s: &Server, key: &str, c: &str, q: &str, min: u64) -> Vec<String> {
    let r = s
        .call(
            Some(key),
            "POST",
            &format!("/v1/collections/{c}/search"),
            Some(json!({"query": q, "mode": "bm25", "min_generation": min})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["source"].as_str().unwrap().to_owned())
        .collect()
}

/// Keys and access lists across replicas: a document's access list, and a change of it made
/// through a replica that does not index, hold on every replica; a key scoped to one
/// collection is refused another's search at once, before any wait for a generation; a
/// reader who may not read a document learns nothing of it, its generation included.
#[tokio::test(flavor = "multi_thread")]
async fn access_lists_and_scoped_keys_hold_across_replicas() {
    let cfg = SeaweedFs::shared().fresh_bucket();
    let r1 = replica(&cfg, "r1");
    let admin = create_key(&r1, "ops", "admin", &[], &[]);
    let writer = create_key(&r1, "ingest", "writer", &["corp"], &["--groups", "legal"]);
    let lena = create_key(&r1, "lena", "reader", &["corp"], &["--groups", "legal"]);
    let finn = create_key(&r1, "finn", "reader", &["corp"], &["--groups", "finance"]);
    let s1 = r1.serve(&[]).await;
    for c in ["corp", "other"] {
        let r = s1
            .call(
                Some(&admin),
                "POST",
                "/v1/collections",
                Some(json!({"name": c})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let r2 = replica(&cfg, "r2");
    let s2 = r2.serve(&[]).await;

    // Uploaded through the replica that does not index, for the legal group only.
    let (name, text, q) = TEXTS[2];
    let r = put(&s2, &writer, name, text, Some("legal")).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/collections/corp/documents/{id}");
    let start = Instant::now();
    let generation = loop {
        let v = s2.call(Some(&admin), "GET", &path, None).await.json();
        if let Some(g) = v["generation"].as_u64() {
            break g;
        }
        assert!(
            start.elapsed() < REACH,
            "no generation after {REACH:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for s in [&s1, &s2] {
        assert_eq!(found_as(s, &lena, "corp", q, generation).await, [name]);
        assert!(found_as(s, &finn, "corp", q, generation).await.is_empty());
        // Not even its existence, nor its generation, for a reader who may not read it.
        s.call(Some(&finn), "GET", &path, None)
            .await
            .error(404, "not_found");
    }
    // A key for "corp" cannot make a node wait on "other" (a generation nobody published).
    let started = Instant::now();
    s1.call(
        Some(&lena),
        "POST",
        "/v1/collections/other/search",
        Some(json!({"query": q, "min_generation": generation + 1000})),
    )
    .await
    .error(403, "forbidden");
    assert!(started.elapsed() < Duration::from_secs(2));

    // An access list changed through the replica that does not index reaches the indexer
    // (through its change marker); one changed through the indexer reaches the other (through
    // the generation it publishes).
    for (through, seen_on, group, reader, other) in [
        (&s2, &s1, "finance", &finn, &lena),
        (&s1, &s2, "legal", &lena, &finn),
    ] {
        let r = through
            .call(
                Some(&admin),
                "PATCH",
                &path,
                Some(json!({"access": [group]})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let start = Instant::now();
        loop {
            let sees = found_as(seen_on, reader, "corp", q, 1).await;
            let other_sees = found_as(seen_on, other, "corp", q, 1).await;
            if sees == [name] && other_sees.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < REACH,
                "access {group} not on {} after {REACH:?}: {sees:?}, {other_sees:?}",
                seen_on.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
