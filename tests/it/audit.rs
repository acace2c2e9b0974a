//! The audit log of a real server and of the CLI: every API request and every command that
//! reads or changes the store is recorded with its actor, action, collection, document and
//! outcome (no query text by default); `hearth audit verify` finds a flipped byte, a deleted
//! entry, a chain cut back with its head rewritten (by this node's witness, or by a signed head
//! kept outside the store), and a deleted log; a flood of keyless requests writes a count, not
//! an entry each.

use serde_json::{Value, json};

use crate::common::{Backend, Node, assert_ok, create_key};

fn verify(node: &Node) -> (bool, String) {
    let out = node.run(&["audit", "verify"]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_recorded_in_a_chain_that_detects_tampering() {
    let node = Node::new(Backend::Local);
    let s = node.serve(&[]).await;
    let out = node.run(&["keys", "create", "--name", "auditor", "--role", "admin"]);
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let id = key.split('_').nth(1).unwrap().to_owned();
    let post = |path: &str, body: Value| {
        s.client
            .post(format!("{}{path}", s.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    assert_eq!(
        s.send(post("/v1/collections", json!({"name": "hr"})))
            .await
            .status,
        201
    );
    let r = s
        .send(
            s.client
                .post(format!(
                    "{}/v1/collections/hr/documents?source=leave.md",
                    s.url
                ))
                .bearer_auth(&key)
                .header("content-type", "text/markdown")
                .body("# Leave\n\nStaff get thirty days of paid leave per year."),
        )
        .await;
    assert_eq!(r.status, 202);
    let doc = r.json()["id"].as_str().unwrap().to_owned();
    let secret_query = "how many days of leave does Amelia get";
    s.send(post(
        "/v1/collections/hr/search",
        json!({"query": secret_query}),
    ))
    .await;
    // A refused request is recorded too, as anonymous.
    assert_eq!(s.get("/v1/collections").await.status, 401);

    let store = node.store();
    let keys: Vec<String> = store
        .list("audit/")
        .await
        .unwrap()
        .into_iter()
        .filter(|k| !k.ends_with("HEAD.json"))
        .collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    let mut entries = Vec::new();
    for k in &keys {
        let v: Value = serde_json::from_slice(&store.get(k).await.unwrap()).unwrap();
        assert!(
            !v.to_string().contains("Amelia"),
            "query text recorded: {v}"
        );
        entries.push(v);
    }
    let summary: Vec<(String, String, Option<String>, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["collection"].as_str().map(str::to_owned),
                e["outcome"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("cli".into(), "admin".into(), None, 0),
            (id.clone(), "admin".into(), None, 201),
            (id.clone(), "upload".into(), Some("hr".into()), 202),
            (id.clone(), "search".into(), Some("hr".into()), 200),
            ("anonymous".into(), "read".into(), None, 401),
        ]
    );
    assert_eq!(entries[0]["target"], "hearth keys create");
    assert_eq!(entries[2]["document"], doc.as_str());
    let (ok, text) = verify(&node);
    assert!(ok, "{text}");
    assert!(text.contains("intact: 5 entries"), "{text}");

    // One flipped byte in the upload's entry.
    let mut bytes = store.get(&keys[2]).await.unwrap().to_vec();
    let at = String::from_utf8_lossy(&bytes).find("\"hr\"").unwrap() + 1;
    bytes[at] = b'x';
    store.put(&keys[2], bytes.clone().into()).await.unwrap();
    let (ok, text) = verify(&node);
    assert!(!ok && text.contains("entry 2 was edited"), "{text}");
    bytes[at] = b'h';
    store.put(&keys[2], bytes.into()).await.unwrap();
    assert!(verify(&node).0);

    // One deleted entry.
    store.delete(&keys[3]).await.unwrap();
    let (ok, text) = verify(&node);
    assert!(!ok && text.contains("entry 3 is missing"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn query_text_is_recorded_only_when_configured() {
    let node = Node::new(Backend::Local).env("HEARTH__SERVER__AUDIT_QUERIES", "true");
    let s = node.serve(&["--open"]).await;
    s.post_json("/v1/collections", &json!({"name": "hr"})).await;
    s.post_json(
        "/v1/collections/hr/search",
        &json!({"query": "parental leave rules"}),
    )
    .await;
    let store = node.store();
    let last = store.list("audit/").await.unwrap();
    let entry = last
        .iter()
        .rev()
        .find(|k| !k.ends_with("HEAD.json"))
        .unwrap();
    let v: Value = serde_json::from_slice(&store.get(entry).await.unwrap()).unwrap();
    assert_eq!(v["query"], "parental leave rules", "{v}");
    assert_eq!(v["actor"], "open");
    assert!(verify(&node).0);
}

/// The audit entries' (actor, target) in order.
async fn chain(node: &Node) -> Vec<(String, String)> {
    let store = node.store();
    let mut out = Vec::new();
    for k in store.list("audit/").await.unwrap() {
        if k.ends_with("HEAD.json") {
            continue;
        }
        let v: Value = serde_json::from_slice(&store.get(&k).await.unwrap()).unwrap();
        out.push((
            v["actor"].as_str().unwrap().to_owned(),
            v["target"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

/// Someone with write access to the store cuts the chain back and points `audit/HEAD.json` at
/// the new last entry (no hashing needed), or deletes `audit/` entirely: never "intact".
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_cut_back_with_its_head_or_a_deleted_log_is_found() {
    let node = Node::new(Backend::Local);
    let key = create_key(&node, "auditor", "admin", &[], &[]);
    let s = node.serve(&[]).await;
    let create = |name: String| {
        s.client
            .post(format!("{}/v1/collections", s.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(json!({ "name": name }).to_string())
    };
    for i in 0..2 {
        assert_eq!(s.send(create(format!("c{i}"))).await.status, 201);
    }
    // A command beside the running server: its entry goes between the server's (which then
    // loses the race for that number and takes the next), none overwritten.
    create_key(&node, "second", "reader", &[], &[]);
    assert_eq!(s.send(create("c2".into())).await.status, 201);
    let targets: Vec<String> = chain(&node).await.into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        targets,
        [
            "hearth keys create",
            "POST /v1/collections",
            "POST /v1/collections",
            "hearth keys create",
            "POST /v1/collections",
        ]
    );
    let (ok, text) = verify(&node);
    assert!(ok && text.contains("intact: 5 entries"), "{text}");

    // A signed head, kept outside the store.
    let out = node.run(&["audit", "head"]);
    assert_ok(&out);
    let head: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(head["seq"], 4, "{head}");
    let kept = node.dir.path().join("kept-head.json");
    std::fs::write(&kept, &out.stdout).unwrap();
    let expect = ["audit", "verify", "--expect", kept.to_str().unwrap()];
    let out = node.run(&expect);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    for i in 3..5 {
        assert_eq!(s.send(create(format!("c{i}"))).await.status, 201);
    }
    // The cut: entries 2.. deleted, the head rewritten to entry 1's number and hash.
    let store = node.store();
    let entry = |n: u64| format!("audit/{n:020}.json");
    let one: Value = serde_json::from_slice(&store.get(&entry(1)).await.unwrap()).unwrap();
    for n in 2..7 {
        store.delete(&entry(n)).await.unwrap();
    }
    store
        .put(
            "audit/HEAD.json",
            json!({"seq": 1, "hash": one["hash"]}).to_string().into(),
        )
        .await
        .unwrap();
    // This node's witness of the last entry it wrote catches it.
    let (ok, text) = verify(&node);
    assert!(
        !ok && text.contains("witness") && text.contains("names entry 6"),
        "{text}"
    );
    // Checked from a node without the witness (a new machine, a wiped data directory), the
    // store alone looks whole...
    let witness = node.dir.path().join("data/audit/witness.json");
    std::fs::remove_file(&witness).unwrap();
    let (ok, text) = verify(&node);
    assert!(ok && text.contains("intact: 2 entries"), "{text}");
    // ...and the head kept outside catches it.
    let out = node.run(&expect);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("expected head") && text.contains("names entry 4"),
        "{text}"
    );
    // A kept head edited to claim less (so that the cut chain would pass) is refused.
    let mut forged = head.clone();
    forged["seq"] = json!(1);
    forged["hash"] = one["hash"].clone();
    std::fs::write(&kept, forged.to_string()).unwrap();
    let out = node.run(&expect);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The whole log deleted: the store still holds collections and keys.
    for k in store.list("audit/").await.unwrap() {
        store.delete(&k).await.unwrap();
    }
    let (ok, text) = verify(&node);
    assert!(
        !ok && text.contains("holds collections and API keys but no audit log"),
        "{text}"
    );
    assert!(!text.contains("intact"), "{text}");
}

/// Thousands of keyless requests with long paths in a minute: one short entry, not one each
/// (the rest of the minute is a count written later: `a_minute_of_refusals_is_one_entry_and_a_count`
/// in api/src/http/audit.rs).
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_keyless_requests_writes_one_entry_not_one_each() {
    let node = Node::new(Backend::Local);
    let key = create_key(&node, "auditor", "admin", &[], &[]);
    let s = node.serve(&[]).await;
    let long = "x".repeat(20_000);
    let mut refused = 0;
    for i in 0..2_000 {
        let r = s
            .send(
                s.client
                    .get(format!(
                        "{}/v1/collections/{long}{i}/documents/{long}",
                        s.url
                    ))
                    .bearer_auth("hk_not_a_key"),
            )
            .await;
        refused += usize::from(r.status == 401);
    }
    assert_eq!(refused, 2_000);
    let entries = chain(&node).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[1].0, "anonymous");
    let bytes: usize = {
        let store = node.store();
        let mut n = 0;
        for k in store.list("audit/").await.unwrap() {
            n += store.get(&k).await.unwrap().len();
        }
        n
    };
    assert!(bytes < 4_000, "{bytes} bytes of audit log");
    // A key's request is recorded as always.
    let r = s
        .send(
            s.client
                .get(format!("{}/v1/collections", s.url))
                .bearer_auth(&key),
        )
        .await;
    assert_eq!(r.status, 200);
    let entries = chain(&node).await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert!(verify(&node).0);
}
