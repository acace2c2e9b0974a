//! Conversations against a real server: an ask starts one, follow-ups name it instead of
//! sending their history, and it belongs to the key that started it. Answers drawn from a
//! document the key can no longer read are withheld; the owner's delete, the collection's
//! delete and the expiry remove it from the store.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::access::{BUDGET, CONTRACT, HANDBOOK, create_corp, indexed, put};
use crate::common::{Backend, Node, Server, create_key};

const ID_CHARS: &str = "0123456789abcdef";

async fn ask(s: &Server, key: &str, body: Value) -> Value {
    let r = s
        .call(Some(key), "POST", "/v1/collections/corp/ask", Some(body))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn path(id: &str) -> String {
    format!("/v1/collections/corp/conversations/{id}")
}

/// The stored conversation objects of collection `corp`.
async fn stored(node: &Node) -> Vec<String> {
    node.store().list("conversations/corp/").await.unwrap()
}

async fn upload_all(s: &Server, writer: &str, admin: &str) -> [String; 3] {
    let mut ids = Vec::new();
    for (name, text) in [
        ("contract.md", CONTRACT),
        ("budget.md", BUDGET),
        ("handbook.md", HANDBOOK),
    ] {
        let r = put(s, writer, name, text, None).await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        indexed(s, admin, id).await;
    }
    ids.try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_carries_follow_ups_and_stays_its_owners() {
    let node = Node::new(Backend::Local)
        .env("HEARTH__SERVER__RATE_PER_MINUTE", "100000")
        .env("HEARTH__ASK__MAX_CONVERSATIONS", "2");
    let admin = create_key(&node, "ops", "admin", &[], &[]);
    let writer = create_key(&node, "ingest", "writer", &["corp"], &[]);
    let lena = create_key(&node, "lena", "reader", &["corp"], &["--groups", "legal"]);
    let finn = create_key(&node, "finn", "reader", &["corp"], &["--groups", "legal"]);
    let outsider = create_key(&node, "xavier", "reader", &["other"], &[]);
    let s = node.serve(&[]).await;
    create_corp(&s, &admin).await;
    let [_contract, budget, _handbook] = upload_all(&s, &writer, &admin).await;

    // The first question starts the conversation.
    let first = ask(
        &s,
        &lena,
        json!({"question": "When does the Acme supply contract end?", "conversation": true}),
    )
    .await;
    assert!(
        first["answer"].as_str().unwrap().contains("31 March 2031"),
        "{first}"
    );
    let id = first["conversation_id"].as_str().unwrap().to_owned();
    assert!(
        id.len() == 32 && id.chars().all(|c| ID_CHARS.contains(c)),
        "{id}"
    );
    assert!(first.get("search_query").is_none(), "{first}");

    // A follow-up that names nothing is searched after the question before it.
    let second = ask(
        &s,
        &lena,
        json!({"question": "And how much does it cost a year?", "conversation_id": id}),
    )
    .await;
    assert_eq!(second["conversation_id"], json!(id));
    assert!(
        second["answer"].as_str().unwrap().contains("480,000"),
        "{second}"
    );
    let q = second["search_query"].as_str().unwrap();
    assert!(
        q.contains("contract end") && q.ends_with("cost a year?"),
        "{q}"
    );

    // Streamed: the turn is stored before `done` arrives.
    let events = s
        .sse_as(
            Some(&lena),
            "/v1/collections/corp/ask",
            &json!({"question": "What is the penalty for late delivery?", "conversation_id": id, "stream": true}),
        )
        .await;
    let (name, done) = events.last().unwrap();
    assert_eq!(name, "done", "{events:?}");
    assert_eq!(done["conversation_id"], json!(id));
    assert!(
        done["answer"].as_str().unwrap().contains("four percent"),
        "{done}"
    );
    let conv = s.call(Some(&lena), "GET", &path(&id), None).await;
    assert_eq!(conv.status, 200, "{}", String::from_utf8_lossy(&conv.body));
    let conv = conv.json();
    let turns = conv["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 3, "{conv}");
    assert_eq!(turns[1]["question"], "And how much does it cost a year?");
    assert!(turns[1]["answer"].as_str().unwrap().contains("480,000"));
    assert!(conv.get("owner").is_none(), "{conv}");
    let keys = stored(&node).await;
    assert!(
        keys.len() == 1 && keys[0].ends_with(&format!("/{id}.json")),
        "{keys:?}"
    );

    // Another key, even an admin or one with the same groups, is told it does not exist.
    for key in [&finn, &admin] {
        s.call(Some(key), "GET", &path(&id), None)
            .await
            .error(404, "not_found");
        s.call(Some(key), "DELETE", &path(&id), None)
            .await
            .error(404, "not_found");
        s.call(
            Some(key),
            "POST",
            "/v1/collections/corp/ask",
            Some(json!({"question": "and the notice period?", "conversation_id": id})),
        )
        .await
        .error(404, "not_found");
    }

    // A key of another collection is refused before anything about the conversation shows.
    for (method, body) in [("GET", None), ("DELETE", None)] {
        let m = s
            .call(Some(&outsider), method, &path(&id), body)
            .await
            .error(403, "forbidden");
        assert!(m.contains("no access to collection corp"), "{m}");
    }
    s.call(
        Some(&outsider),
        "POST",
        "/v1/collections/corp/ask",
        Some(json!({"question": "and the notice period?", "conversation_id": id})),
    )
    .await
    .error(403, "forbidden");

    // Bad input names what is wrong and changes nothing.
    for (body, says) in [
        (
            json!({"question": "q", "conversation_id": "../keys/x"}),
            "32 lowercase hex",
        ),
        (
            json!({"question": "q", "conversation": true, "conversation_id": id}),
            "give one",
        ),
        (
            json!({"question": "q", "conversation_id": id, "history": [{"role": "user", "content": "x"}]}),
            "not both",
        ),
    ] {
        let m = s
            .call(Some(&lena), "POST", "/v1/collections/corp/ask", Some(body))
            .await
            .error(400, "invalid_request");
        assert!(m.contains(says), "{m}");
    }
    s.call(Some(&lena), "GET", &path("not-an-id"), None)
        .await
        .error(400, "invalid_request");
    let unknown = "0".repeat(32);
    s.call(Some(&lena), "GET", &path(&unknown), None)
        .await
        .error(404, "not_found");
    let conv = s.call(Some(&lena), "GET", &path(&id), None).await.json();
    assert_eq!(conv["turns"].as_array().unwrap().len(), 3);

    // Once the key may no longer read a document, the answers drawn from it are withheld
    // (their questions stay); the stored text comes back if the access does.
    let budget_path = format!("/v1/collections/corp/documents/{budget}");
    let r = s
        .call(
            Some(&admin),
            "PATCH",
            &budget_path,
            Some(json!({"access": ["group:finance"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = s.call(Some(&lena), "GET", &path(&id), None).await;
    assert!(!String::from_utf8_lossy(&r.body).contains("480,000"));
    let conv = r.json();
    let turns = conv["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 3);
    for t in turns {
        let drew_on_budget = t["documents"].as_array().unwrap().contains(&json!(budget));
        assert_eq!(t["withheld"] == json!(true), drew_on_budget, "{t}");
        if drew_on_budget {
            assert_eq!(t["answer"], json!(hearth_api::WITHHELD));
        }
    }
    assert_eq!(turns[1]["withheld"], json!(true), "{conv}");
    assert_eq!(turns[1]["question"], "And how much does it cost a year?");
    // A follow-up's history carries the withheld answer, not its text.
    let more = ask(
        &s,
        &lena,
        json!({"question": "and the notice period?", "conversation_id": id}),
    )
    .await;
    assert!(!more.to_string().contains("480,000"), "{more}");
    let r = s
        .call(
            Some(&admin),
            "PATCH",
            &budget_path,
            Some(json!({"access": ["*"]})),
        )
        .await;
    assert_eq!(r.status, 200);
    let conv = s.call(Some(&lena), "GET", &path(&id), None).await.json();
    assert!(
        conv["turns"][1]["answer"]
            .as_str()
            .unwrap()
            .contains("480,000"),
        "{conv}"
    );
    assert_eq!(conv["turns"].as_array().unwrap().len(), 4);

    // The owner's delete removes it from the store.
    let r = s.call(Some(&lena), "DELETE", &path(&id), None).await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    s.call(Some(&lena), "GET", &path(&id), None)
        .await
        .error(404, "not_found");
    assert!(stored(&node).await.is_empty());

    // A key holds at most ask.max_conversations (2 here) in a collection at once.
    let start = json!({"question": "What is the penalty for late delivery?", "conversation": true});
    let kept = ask(&s, &lena, start.clone()).await;
    ask(&s, &lena, start.clone()).await;
    let m = s
        .call(
            Some(&lena),
            "POST",
            "/v1/collections/corp/ask",
            Some(start.clone()),
        )
        .await
        .error(409, "conflict");
    assert!(m.contains("holds 2 conversations"), "{m}");
    let r = s
        .call(
            Some(&lena),
            "DELETE",
            &path(kept["conversation_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    ask(&s, &lena, start).await;

    // Deleting the collection deletes its conversations.
    let other = ask(
        &s,
        &finn,
        json!({"question": "Who looks after the Acme supply contract?", "conversation": true}),
    )
    .await;
    assert!(
        other["answer"].as_str().unwrap().contains("legal team"),
        "{other}"
    );
    assert_eq!(stored(&node).await.len(), 3);
    let r = s
        .call(Some(&admin), "DELETE", "/v1/collections/corp", None)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(stored(&node).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_conversation_is_swept_from_the_store() {
    let node = Node::new(Backend::Local)
        .env("HEARTH__SERVER__RATE_PER_MINUTE", "100000")
        .env("HEARTH__ASK__CONVERSATION_TTL_SECS", "2");
    let admin = create_key(&node, "ops", "admin", &[], &[]);
    let s = node.serve(&[]).await;
    let r = s
        .call(
            Some(&admin),
            "POST",
            "/v1/collections",
            Some(json!({"name": "corp"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = put(&s, &admin, "contract.md", CONTRACT, None).await;
    indexed(&s, &admin, r.json()["id"].as_str().unwrap()).await;
    let a = ask(
        &s,
        &admin,
        json!({"question": "When does the Acme supply contract end?", "conversation": true}),
    )
    .await;
    let id = a["conversation_id"].as_str().unwrap().to_owned();
    assert_eq!(stored(&node).await.len(), 1);
    // Untouched, it is swept (every second at this TTL) within a few seconds of its expiry.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stored(&node).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the expired conversation is still stored"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    s.call(Some(&admin), "GET", &path(&id), None)
        .await
        .error(404, "not_found");
    let m = s
        .call(
            Some(&admin),
            "POST",
            "/v1/collections/corp/ask",
            Some(json!({"question": "and the penalty?", "conversation_id": id})),
        )
        .await
        .error(404, "not_found");
    assert!(m.contains("conversation"), "{m}");
}
