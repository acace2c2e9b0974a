//! API keys against a real server: no key or a wrong key is 401, a key without the role or the
//! collection is 403, limits answer 429 with Retry-After, revocation takes effect, keys are
//! stored hashed, and open mode is refused off loopback.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Backend, Node, Reply, Server, create_key, root};

async fn upload(s: &Server, key: &str, c: &str, text: &str) -> Reply {
    let source = format!("note-{}.md", text.len());
    s.upload_as(key, c, &source, "text/markdown", text.as_bytes().to_vec())
        .await
}

async fn upload_mbox(s: &Server, key: &str, bytes: &[u8]) -> Reply {
    s.upload_as(key, "c", "vault.mbox", "application/mbox", bytes.to_vec())
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_and_collections_decide_what_a_key_may_do() {
    let node = Node::new(Backend::Local);
    let s = node.serve(&[]).await;
    assert!(s.banner.contains("no API keys yet"), "{}", s.banner);

    // No key, a malformed header, an unknown key: 401 with a challenge.
    let r = s.call(None, "GET", "/v1/collections", None).await;
    let m = r.error(401, "unauthorized");
    assert!(m.contains("hearth keys create"), "{m}");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = s
        .send(
            s.client
                .get(format!("{}/v1/collections", s.url))
                .header("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
        )
        .await;
    r.error(401, "unauthorized");
    s.call(Some("hth_0123456789ab_00"), "GET", "/v1/models", None)
        .await
        .error(401, "unauthorized");
    // Health and readiness need no key.
    assert_eq!(s.get("/healthz").await.status, 200);
    assert_eq!(s.get("/readyz").await.status, 200);

    let admin = create_key(&node, "ops", "admin", &[], &[]);
    let writer_a = create_key(&node, "ingest-a", "writer", &["a"], &[]);
    let reader_a = create_key(&node, "analyst-a", "reader", &["a"], &[]);
    let reader_b = create_key(&node, "analyst-b", "reader", &["b"], &[]);
    let mut wrong = admin.clone();
    wrong.replace_range(wrong.len() - 4.., "0000");
    s.call(Some(&wrong), "GET", "/v1/collections", None)
        .await
        .error(401, "unauthorized");

    // Tokens are not stored, only their hashes.
    let store = node.store();
    for key in store.list("keys/").await.unwrap() {
        let text = String::from_utf8(store.get(&key).await.unwrap().to_vec()).unwrap();
        for t in [&admin, &writer_a, &reader_a, &reader_b] {
            assert!(!text.contains(t.rsplit('_').next().unwrap()));
        }
    }
    let listed = node.run(&["keys", "list"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&admin));

    for c in ["a", "b"] {
        let r = s
            .call(
                Some(&admin),
                "POST",
                "/v1/collections",
                Some(json!({"name": c})),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    // A writer scoped to "a".
    s.call(
        Some(&writer_a),
        "POST",
        "/v1/collections",
        Some(json!({"name": "c"})),
    )
    .await
    .error(403, "forbidden");
    let r = upload(
        &s,
        &writer_a,
        "a",
        "# Fleet\n\nThe fleet has twelve electric vans.",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.json());
    let doc = r.json()["id"].as_str().unwrap().to_owned();
    upload(&s, &writer_a, "b", "# B\n\nSecret plans of collection b.")
        .await
        .error(403, "forbidden");
    s.call(Some(&writer_a), "DELETE", "/v1/collections/a", None)
        .await
        .error(403, "forbidden");
    let r = s
        .call(Some(&writer_a), "GET", "/v1/collections", None)
        .await;
    assert_eq!(r.json()["collections"], json!([{"name": "a"}]));

    // The residency report is for admins.
    s.call(Some(&reader_a), "GET", "/v1/residency", None)
        .await
        .error(403, "forbidden");
    s.call(Some(&writer_a), "GET", "/v1/residency", None)
        .await
        .error(403, "forbidden");
    assert_eq!(
        s.call(Some(&admin), "GET", "/v1/residency", None)
            .await
            .status,
        200
    );
    // An admin of collection a administers a, not what every collection shares: not the
    // residency report (every store and model), not the adapters every answer may use.
    let admin_a = create_key(&node, "admin-a", "admin", &["a"], &[]);
    let m = s
        .call(Some(&admin_a), "GET", "/v1/residency", None)
        .await
        .error(403, "forbidden");
    assert!(m.contains("scoped to some collections"), "{m}");
    s.call(Some(&admin_a), "DELETE", "/v1/adapters/support-tone", None)
        .await
        .error(403, "forbidden");
    let r = s
        .send(
            s.client
                .put(format!("{}/v1/adapters/support-tone", s.url))
                .bearer_auth(&admin_a)
                .header("content-type", "multipart/form-data; boundary=x")
                .body("--x--\r\n"),
        )
        .await;
    r.error(403, "forbidden");
    // The node's admin gets past the key check: the adapter does not exist.
    s.call(Some(&admin), "DELETE", "/v1/adapters/support-tone", None)
        .await
        .error(404, "adapter_not_found");
    // Within its collection the scoped admin is an admin.
    assert_eq!(
        s.call(Some(&admin_a), "GET", "/v1/collections/a", None)
            .await
            .status,
        200
    );

    // A reader scoped to "a": reads a, writes nothing, sees nothing of b.
    upload(&s, &reader_a, "a", "# X\n\nReaders cannot upload.")
        .await
        .error(403, "forbidden");
    let path = format!("/v1/collections/a/documents/{doc}");
    assert_eq!(
        s.call(Some(&reader_a), "GET", &path, None).await.status,
        200
    );
    s.call(Some(&reader_a), "DELETE", &path, None)
        .await
        .error(403, "forbidden");
    s.call(Some(&reader_b), "GET", &path, None)
        .await
        .error(403, "forbidden");
    s.call(Some(&reader_b), "GET", &format!("{path}/raw"), None)
        .await
        .error(403, "forbidden");
    // Listing goes through the service's document records now: still refused out of scope.
    s.call(Some(&reader_b), "GET", "/v1/collections/a/documents", None)
        .await
        .error(403, "forbidden");
    let q = json!({"query": "electric vans"});
    assert_eq!(
        s.call(
            Some(&reader_a),
            "POST",
            "/v1/collections/a/search",
            Some(q.clone())
        )
        .await
        .status,
        200
    );
    s.call(Some(&reader_a), "POST", "/v1/collections/b/search", Some(q))
        .await
        .error(403, "forbidden");
    s.call(
        Some(&reader_b),
        "POST",
        "/v1/collections/a/ask",
        Some(json!({"question": "How many vans?"})),
    )
    .await
    .error(403, "forbidden");
    // Not even the existence of another collection leaks: 403, not 404.
    s.call(Some(&reader_a), "GET", "/v1/collections/zzz", None)
        .await
        .error(403, "forbidden");
    assert_eq!(
        s.call(Some(&reader_b), "GET", "/v1/models", None)
            .await
            .status,
        200
    );
    // An e-mail's attachments become documents of collection a: they carry a's scope, so a
    // key of b can neither read one nor delete the message (which would cascade to them).
    let eml = std::fs::read(root().join("testdata/mail/supplier-contract.eml")).unwrap();
    let r = s
        .send(
            s.client
                .post(format!(
                    "{}/v1/collections/a/documents?source=contract.eml",
                    s.url
                ))
                .bearer_auth(&writer_a)
                .header("content-type", "message/rfc822")
                .body(eml),
        )
        .await;
    assert_eq!(r.status, 202);
    let msg = r.json()["id"].as_str().unwrap().to_owned();
    let msg_path = format!("/v1/collections/a/documents/{msg}");
    let mut record = json!(null);
    for _ in 0..600 {
        record = s.call(Some(&reader_a), "GET", &msg_path, None).await.json();
        if record["status"] == "indexed" || record["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(record["status"], "indexed", "{record}");
    let child = record["children"][0].as_str().unwrap().to_owned();
    let child_path = format!("/v1/collections/a/documents/{child}");
    let own = s
        .call(Some(&reader_a), "GET", &child_path, None)
        .await
        .json();
    assert_eq!(own["metadata"]["parent"], msg.as_str(), "{own}");
    s.call(Some(&reader_b), "GET", &child_path, None)
        .await
        .error(403, "forbidden");
    s.call(Some(&reader_b), "DELETE", &msg_path, None)
        .await
        .error(403, "forbidden");
    s.call(None, "GET", &child_path, None)
        .await
        .error(401, "unauthorized");

    // The admin may delete; the writer may delete documents in its collection.
    assert_eq!(
        s.call(Some(&writer_a), "DELETE", &path, None).await.status,
        204
    );
    assert_eq!(
        s.call(Some(&admin), "DELETE", "/v1/collections/b", None)
            .await
            .status,
        200
    );

    // Revocation takes effect within seconds on the running server.
    let id = reader_a.split('_').nth(1).unwrap().to_owned();
    let out = node.run(&["keys", "revoke", &id]);
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s
            .call(Some(&reader_a), "GET", "/v1/collections", None)
            .await;
        if r.status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "revoked key still accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!node.run(&["keys", "revoke", &id]).status.success());
    assert!(
        !node
            .run(&["keys", "create", "--name", "x", "--role", "root"])
            .status
            .success()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_key_rate_and_concurrency_limits_answer_429() {
    let node = Node::new(Backend::Local);
    let s = node.serve(&[]).await;
    let slow = create_key(&node, "slow", "reader", &[], &["--rate-per-minute", "3"]);
    for _ in 0..3 {
        assert_eq!(
            s.call(Some(&slow), "GET", "/v1/models", None).await.status,
            200
        );
    }
    let r = s.call(Some(&slow), "GET", "/v1/models", None).await;
    r.error(429, "rate_limited");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    // Another key is not affected.
    let other = create_key(&node, "other", "reader", &[], &["--concurrency", "1"]);
    assert_eq!(
        s.call(Some(&other), "GET", "/v1/models", None).await.status,
        200
    );

    // One request in flight (a stream held open) blocks a second one until it ends.
    let mut stream = s
        .client
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(&other)
        .header("content-type", "application/json")
        .body(
            json!({"model": "SmolLM2-135M-Instruct.Q4_1", "stream": true, "max_tokens": 64,
                   "messages": [{"role": "user", "content": "Tell a story."}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let r = s.call(Some(&other), "GET", "/v1/models", None).await;
    r.error(429, "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    while stream.chunk().await.unwrap().is_some() {}
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.call(Some(&other), "GET", "/v1/models", None).await.status != 200 {
        assert!(Instant::now() < deadline, "the slot was not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn open_mode_is_refused_off_loopback() {
    let node = Node::new(Backend::Local);
    let out = node.run(&["serve", "--open", "--bind", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
}

/// The generator's prefix cache is per key: a key sees its own prompts cached (the cache still
/// works), never another key's, so neither `cached_tokens` nor the log-probabilities can
/// confirm a guess about passages or questions that another key's prompts held.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_learns_nothing_from_another_keys_cached_prompts() {
    let node = Node::new(Backend::Local);
    let alice = create_key(&node, "alice", "reader", &["hr"], &[]);
    let mallory = create_key(&node, "mallory", "reader", &["other"], &[]);
    let s = node.serve(&[]).await;
    // A prompt as /ask builds it: instructions, then a passage of alice's collection.
    let secret = "Answer from the passage only.\n\n[1] salaries.md: The 2027 salary band for \
                  senior engineers in the Lisbon office is 71,000 to 84,000 euros, reviewed \
                  every March by the compensation committee, and the retention bonus for the \
                  platform team is twelve percent of base pay, paid in two parts.\n\nQuestion: \
                  What is the salary band for senior engineers?";
    let chat = |key: &str| {
        s.client
            .post(format!("{}/v1/chat/completions", s.url))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(
                json!({
                    "model": "SmolLM2-135M-Instruct.Q4_1",
                    "messages": [{"role": "user", "content": secret}],
                    "max_tokens": 1,
                    "temperature": 0,
                    "logprobs": true,
                    "top_logprobs": 5,
                })
                .to_string(),
            )
    };
    let cached = |r: &Reply| -> u64 {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    // The log-probabilities of the first token, as a caller sees them.
    let logprobs = |r: &Reply| r.json()["choices"][0]["logprobs"]["content"][0].clone();
    let first = s.send(chat(&alice)).await;
    assert_eq!(cached(&first), 0);
    // The same key again: its prefix is reused.
    let again = cached(&s.send(chat(&alice)).await);
    assert!(again >= 32, "alice's own prompt was not cached: {again}");
    // Another key sending the very same prompt (a correct guess) sees no hit, and its
    // log-probabilities are those of a prompt computed afresh: nothing of alice's cache shows.
    let guess = s.send(chat(&mallory)).await;
    assert_eq!(cached(&guess), 0);
    assert_eq!(logprobs(&guess), logprobs(&first));
    assert_eq!(
        logprobs(&first)["top_logprobs"].as_array().unwrap().len(),
        5
    );
    // And twice: its own copy is now cached, for it alone.
    assert!(cached(&s.send(chat(&mallory)).await) >= 32);
    // Asking for log-probabilities is refused like any chat without a key, and out of range
    // with the field named, before anything is generated.
    let unkeyed = s
        .client
        .post(format!("{}/v1/chat/completions", s.url))
        .header("content-type", "application/json")
        .body(
            json!({"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": 1, "logprobs": true,
                   "messages": [{"role": "user", "content": secret}]})
            .to_string(),
        );
    s.send(unkeyed).await.error(401, "unauthorized");
    let too_many = s
        .client
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(&mallory)
        .header("content-type", "application/json")
        .body(
            json!({"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": 1, "logprobs": true,
                   "top_logprobs": 21, "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        );
    let r = s.send(too_many).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("logprobs must be in [0, 20]"));
}

/// The routes this stop changed answer a key without the collection with 403 before anything
/// about the collection's state shows: not the 404 of a deleted collection, the 409 of a name
/// still being deleted or the 413 of an oversized body (the upload budget's 503 comes later
/// still: the body is read after the key check); and a reader may not upload at all.
#[tokio::test(flavor = "multi_thread")]
async fn changed_routes_refuse_other_collections_keys_before_showing_state() {
    let node = Node::new(Backend::Local).env("HEARTH__INGEST__MAX_DOCUMENT_BYTES", "1048576");
    let admin = create_key(&node, "ops", "admin", &[], &[]);
    let writer_c = create_key(&node, "ingest-c", "writer", &["c"], &[]);
    let reader_c = create_key(&node, "analyst-c", "reader", &["c"], &[]);
    let outsider = create_key(&node, "ingest-x", "writer", &["x"], &[]);
    let legal_writer = create_key(
        &node,
        "ingest-legal",
        "writer",
        &["c"],
        &["--groups", "legal"],
    );
    let s = node.serve(&[]).await;
    let create = json!({"name": "c"});
    let r = s
        .call(
            Some(&admin),
            "POST",
            "/v1/collections",
            Some(create.clone()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        upload(&s, &writer_c, "c", "The vault holds 40 boxes.")
            .await
            .status,
        202
    );

    let refused = |r: Reply, what: &str| {
        let m = r.error(403, "forbidden");
        assert!(m.contains("no access to collection c"), "{what}: {m}");
    };
    refused(upload(&s, &outsider, "c", "x").await, "upload");
    // Over the size limit by its Content-Length: 403, not the 413 naming the limit.
    let big = s
        .send(
            s.client
                .post(format!(
                    "{}/v1/collections/c/documents?source=big.txt",
                    s.url
                ))
                .bearer_auth(&outsider)
                .header("content-type", "text/plain")
                .body(vec![b'a'; 3 << 20]),
        )
        .await;
    refused(big, "oversized upload");
    // A reader of the collection may not upload.
    let m = upload(&s, &reader_c, "c", "x")
        .await
        .error(403, "forbidden");
    assert!(m.contains("writer"), "{m}");
    // A mailbox over the document limit (streamed, spooled): refused to a reader and to a key
    // of another collection before any byte is spooled; the same mailbox from a writer that
    // may not read the stored one is 409 without its record.
    let mut mbox = String::new();
    for n in 0..40 {
        mbox.push_str(&format!(
            "From a{n}@example.com Mon Jan  1 00:00:00 2024\nFrom: a{n}@example.com\nSubject: vault {n}\n\n{}\n\n",
            "The vault holds boxes. ".repeat(2500)
        ));
    }
    assert!(mbox.len() > 2 << 20);
    let spool = node.dir.path().join("data/uploads");
    let bytes = mbox.into_bytes();
    refused(upload_mbox(&s, &outsider, &bytes).await, "a large mailbox");
    let m = upload_mbox(&s, &reader_c, &bytes)
        .await
        .error(403, "forbidden");
    assert!(m.contains("writer"), "{m}");
    assert!(std::fs::read_dir(&spool).map_or(true, |mut d| d.next().is_none()));
    let r = s
        .send(
            s.client
                .post(format!(
                    "{}/v1/collections/c/documents?source=vault.mbox&access=legal",
                    s.url
                ))
                .bearer_auth(&legal_writer)
                .header("content-type", "application/mbox")
                .body(bytes.clone()),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["messages"], 40);
    let m = upload_mbox(&s, &writer_c, &bytes)
        .await
        .error(409, "duplicate");
    assert!(m.contains("may not read"), "{m}");

    // Deleting needs an admin of the collection.
    s.call(Some(&outsider), "DELETE", "/v1/collections/c", None)
        .await
        .error(403, "forbidden");

    let r = s
        .call(Some(&admin), "DELETE", "/v1/collections/c", None)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Deleted (and perhaps still being swept): the outsider learns neither.
    refused(
        upload(&s, &outsider, "c", "x").await,
        "upload after the delete",
    );
    refused(
        s.call(Some(&outsider), "POST", "/v1/collections", Some(create))
            .await,
        "re-create",
    );
    refused(
        s.call(Some(&outsider), "GET", "/v1/collections/c", None)
            .await,
        "get",
    );
    // The collection's own writer is told it is gone.
    upload(&s, &writer_c, "c", "late")
        .await
        .error(404, "not_found");
}
