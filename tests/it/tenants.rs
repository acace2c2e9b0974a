//! Tenants against a real server: stored documents and bytes, requests per minute of all a
//! tenant's keys together, and generated tokens per day; usage in `/v1/tenants` and
//! `/metrics`, each tenant seeing only its own.

use serde_json::{Value, json};

use crate::common::{Backend, Node, Server, assert_ok, create_key};

async fn upload(s: &Server, key: &str, c: &str, name: &str, body: Vec<u8>) -> crate::common::Reply {
    s.upload_as(key, c, name, "text/markdown", body).await
}

fn text(n: usize, tag: &str) -> Vec<u8> {
    let mut t = format!("# {tag}\n\n");
    while t.len() < n {
        t.push_str(&format!("The {tag} note says nothing of interest. "));
    }
    t.truncate(n);
    t.into_bytes()
}

async fn chat(s: &Server, key: &str) -> crate::common::Reply {
    s.call(
        Some(key),
        "POST",
        "/v1/chat/completions",
        Some(
            json!({"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from one to twenty in words."}]}),
        ),
    )
    .await
}

fn tenant_usage(v: &Value, name: &str) -> Value {
    v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {v}"))["usage"]
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_quotas_hold_and_each_sees_only_its_usage() {
    let node = Node::new(Backend::Local).env("HEARTH__SERVER__RATE_PER_MINUTE", "100000");
    for args in [
        &[
            "tenants",
            "set",
            "acme",
            "-c",
            "acme-*",
            "--max-documents",
            "3",
            "--max-bytes",
            "5000",
            "--tokens-per-day",
            "20",
        ][..],
        &[
            "tenants",
            "set",
            "beta",
            "-c",
            "beta-*",
            "--rate-per-minute",
            "5",
        ][..],
    ] {
        assert_ok(&node.run(args));
    }
    // Tenants may not share collections.
    assert!(
        !node
            .run(&["tenants", "set", "gamma", "-c", "acme-x"])
            .status
            .success()
    );
    let admin = create_key(&node, "ops", "admin", &[], &[]);
    let acme_admin = create_key(&node, "acme-ops", "admin", &[], &["--tenant", "acme"]);
    let acme = create_key(&node, "acme-app", "writer", &[], &["--tenant", "acme"]);
    let beta1 = create_key(&node, "beta-1", "writer", &[], &["--tenant", "beta"]);
    let beta2 = create_key(&node, "beta-2", "reader", &[], &["--tenant", "beta"]);
    // A key of a tenant gets the tenant's collections, and no others.
    let bad = node.run(&[
        "keys",
        "create",
        "--name",
        "x",
        "--tenant",
        "acme",
        "-c",
        "beta-docs",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not tenant acme's"));
    let s = node.serve(&[]).await;

    for (key, c) in [(&acme, "acme-docs"), (&beta1, "beta-docs")] {
        let r = s
            .call(
                Some(key),
                "POST",
                "/v1/collections",
                Some(json!({"name": c})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    s.call(
        Some(&acme),
        "POST",
        "/v1/collections",
        Some(json!({"name": "beta-x"})),
    )
    .await
    .error(403, "forbidden");

    // Stored documents: three fit, the fourth is refused until one goes.
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = upload(
            &s,
            &acme,
            "acme-docs",
            &format!("n{i}.md"),
            text(1000, &format!("n{i}")),
        )
        .await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let m = upload(&s, &acme, "acme-docs", "n3.md", text(1000, "n3"))
        .await
        .error(403, "quota_exceeded");
    assert!(m.contains("3 documents") && m.contains("acme"), "{m}");
    // An admin of every collection is held to the tenant's quota too: it is the collection's.
    upload(&s, &admin, "acme-docs", "n3.md", text(1000, "n3"))
        .await
        .error(403, "quota_exceeded");
    let r = s
        .call(
            Some(&acme),
            "DELETE",
            &format!("/v1/collections/acme-docs/documents/{}", ids[0]),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    // Stored bytes: 2,000 held; 3,500 more would pass 5,000.
    let m = upload(&s, &acme, "acme-docs", "big.md", text(3500, "big"))
        .await
        .error(403, "quota_exceeded");
    assert!(m.contains("bytes"), "{m}");
    let r = upload(&s, &acme, "acme-docs", "n4.md", text(2500, "n4")).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    // Another tenant's collections are not held to acme's quota.
    for i in 0..4 {
        let r = upload(
            &s,
            &admin,
            "beta-docs",
            &format!("b{i}.md"),
            text(3000, &format!("b{i}")),
        )
        .await;
        assert_eq!(r.status, 202);
    }

    // Usage: the node's admin sees every tenant, a tenant's admin its own, a writer none.
    let all = s
        .call(Some(&admin), "GET", "/v1/tenants", None)
        .await
        .json();
    let u = tenant_usage(&all, "acme");
    assert_eq!(
        (u["documents"].as_u64(), u["stored_bytes"].as_u64()),
        (Some(3), Some(4500))
    );
    assert_eq!(tenant_usage(&all, "beta")["documents"], 4);
    let own = s
        .call(Some(&acme_admin), "GET", "/v1/tenants", None)
        .await
        .json();
    assert_eq!(own["tenants"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(own["tenants"][0]["name"], "acme");
    s.call(Some(&acme), "GET", "/v1/tenants", None)
        .await
        .error(403, "forbidden");
    // A tenant's admin is not the node's: node-wide routes stay closed to it.
    s.call(Some(&acme_admin), "GET", "/v1/residency", None)
        .await
        .error(403, "forbidden");
    let metrics = |r: crate::common::Reply| String::from_utf8(r.body).unwrap();
    let full = metrics(s.call(Some(&admin), "GET", "/metrics", None).await);
    assert!(
        full.contains("hearth_tenant_documents{tenant=\"acme\"} 3"),
        "{full}"
    );
    assert!(
        full.contains("hearth_tenant_documents{tenant=\"beta\"} 4"),
        "{full}"
    );
    let mine = metrics(s.call(Some(&acme_admin), "GET", "/metrics", None).await);
    assert!(
        mine.contains("tenant=\"acme\"") && !mine.contains("tenant=\"beta\""),
        "{mine}"
    );
    let writer = metrics(s.call(Some(&acme), "GET", "/metrics", None).await);
    assert!(!writer.contains("hearth_tenant_"), "{writer}");

    // Generated tokens per day: acme's chats stop once 20 are used; beta's go on.
    let mut refused = None;
    for _ in 0..6 {
        let r = chat(&s, &acme).await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = refused.expect("acme's chats went on past its 20 tokens a day");
    let m = r.error(429, "quota_exceeded");
    assert!(m.contains("20 tokens"), "{m}");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait));
    let used = tenant_usage(
        &s.call(Some(&admin), "GET", "/v1/tenants", None)
            .await
            .json(),
        "acme",
    )["generated_tokens_today"]
        .as_u64()
        .unwrap();
    assert!(used >= 20, "{used}");
    assert_eq!(chat(&s, &beta2).await.status, 200);

    // Requests per minute of all a tenant's keys together: beta has 5 (refilled one every
    // 12 s), two used above; its two keys take turns, each far below its own limit.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let key = if i % 2 == 0 { &beta1 } else { &beta2 };
        statuses.push(s.call(Some(key), "GET", "/v1/collections", None).await);
    }
    let first = statuses
        .iter()
        .position(|r| r.status == 429)
        .expect("no 429");
    assert!(first <= 5, "beta made {first} requests in a row");
    let m = statuses[first].error(429, "rate_limited");
    assert!(m.contains("tenant beta"), "{m}");
    // The bucket is shared: the other key is refused right after.
    statuses[first + 1].error(429, "rate_limited");
    // Acme's keys are not held by beta's rate.
    assert_eq!(
        s.call(Some(&acme), "GET", "/v1/collections", None)
            .await
            .status,
        200
    );
}
