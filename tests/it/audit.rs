//! The audit log of a real server: every API request is recorded with its actor, action,
//! collection, document and outcome (no query text by default), and `hearth audit verify`
//! finds a flipped byte or a deleted entry.

use serde_json::{Value, json};

use crate::common::{Backend, Node};

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
    assert_eq!(keys.len(), 4, "{keys:?}");
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
            (id.clone(), "admin".into(), None, 201),
            (id.clone(), "upload".into(), Some("hr".into()), 202),
            (id.clone(), "search".into(), Some("hr".into()), 200),
            ("anonymous".into(), "read".into(), None, 401),
        ]
    );
    assert_eq!(entries[1]["document"], doc.as_str());
    let (ok, text) = verify(&node);
    assert!(ok, "{text}");
    assert!(text.contains("intact: 4 entries"), "{text}");

    // One flipped byte in the upload's entry.
    let mut bytes = store.get(&keys[1]).await.unwrap().to_vec();
    let at = String::from_utf8_lossy(&bytes).find("\"hr\"").unwrap() + 1;
    bytes[at] = b'x';
    store.put(&keys[1], bytes.clone().into()).await.unwrap();
    let (ok, text) = verify(&node);
    assert!(!ok && text.contains("entry 1 was edited"), "{text}");
    bytes[at] = b'h';
    store.put(&keys[1], bytes.into()).await.unwrap();
    assert!(verify(&node).0);

    // One deleted entry.
    store.delete(&keys[2]).await.unwrap();
    let (ok, text) = verify(&node);
    assert!(!ok && text.contains("entry 2 is missing"), "{text}");
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
