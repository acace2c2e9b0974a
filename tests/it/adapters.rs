//! LoRA adapters over HTTP: upload (checked against the model, stored), use through ask and
//! the OpenAI endpoint, survive a restart, refuse bad files, delete.

use serde_json::{Value, json};

use crate::common::{Backend, Node, Reply, Server, root};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

async fn put_adapter(s: &Server, name: &str, config: &[u8], weights: &[u8]) -> Reply {
    let boundary = "adapter-boundary-19f";
    let mut body = Vec::new();
    for (file, bytes) in [
        ("adapter_config.json", config),
        ("adapter_model.safetensors", weights),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    s.send(
        s.client
            .put(format!("{}/v1/adapters/{name}", s.url))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body),
    )
    .await
}

async fn chat(s: &Server, model: &str) -> Reply {
    s.post_json(
        "/v1/chat/completions",
        &json!({"model": model, "max_tokens": 16, "temperature": 0,
                "messages": [{"role": "user", "content": "Name three colours."}]}),
    )
    .await
}

fn text(r: &Reply) -> String {
    let v: Value = r.json();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn adapters_are_uploaded_used_restored_and_deleted() {
    let dir = root().join("testdata/lora/all-r4");
    let config = std::fs::read(dir.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let node = Node::new(Backend::Local);
    let s = node.serve(&["--open"]).await;

    let base = chat(&s, MODEL).await;
    assert_eq!(base.status, 200);
    let r = put_adapter(&s, "support", &config, &weights).await;
    assert_eq!(r.status, 201, "{}", r.json());
    let info = r.json();
    assert_eq!(info["rank"], 4);
    assert_eq!(info["model"], format!("{MODEL}:support"));
    assert_eq!(info["modules"].as_array().unwrap().len(), 7);
    let list = s.get("/v1/adapters").await.json();
    assert_eq!(list["adapters"][0]["name"], "support");
    let models = s.get("/v1/models").await.json();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == format!("{MODEL}:support"))
    );
    let tuned = chat(&s, &format!("{MODEL}:support")).await;
    assert_eq!(tuned.status, 200, "{}", tuned.json());
    assert_ne!(text(&tuned), text(&base), "the adapter changes nothing");
    // Stored in the object store.
    let store = node.store();
    assert_eq!(
        store.list("adapters/support/").await.unwrap(),
        [
            "adapters/support/adapter_config.json",
            "adapters/support/adapter_model.safetensors"
        ]
    );

    // Bad uploads: nothing registered, nothing stored.
    let wrong = root().join("testdata/lora/qv-r2-rslora");
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(wrong.join("adapter_config.json")).unwrap()).unwrap();
    cfg["use_dora"] = true.into();
    let r = put_adapter(
        &s,
        "dora",
        cfg.to_string().as_bytes(),
        &std::fs::read(wrong.join("adapter_model.safetensors")).unwrap(),
    )
    .await;
    assert!(matches!(r.status, 400 | 422), "{}", r.json());
    let r = put_adapter(&s, "trunc", &config, &weights[..weights.len() / 2]).await;
    r.error(422, "invalid_adapter");
    put_adapter(&s, ".hidden", &config, &weights)
        .await
        .error(400, "invalid_request");
    assert!(store.list("adapters/trunc/").await.unwrap().is_empty());
    assert!(store.list("adapters/dora/").await.unwrap().is_empty());
    assert_eq!(
        s.get("/v1/adapters").await.json()["adapters"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A restart registers the stored adapter again.
    drop(s);
    let s = node.serve(&["--open"]).await;
    let again = chat(&s, &format!("{MODEL}:support")).await;
    assert_eq!(again.status, 200);
    assert_eq!(text(&again), text(&tuned));

    // Delete: gone from the generator and the store.
    assert_eq!(s.delete("/v1/adapters/support").await.status, 204);
    s.delete("/v1/adapters/support")
        .await
        .error(404, "adapter_not_found");
    chat(&s, &format!("{MODEL}:support"))
        .await
        .error(404, "adapter_not_found");
    assert!(store.list("adapters/").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn only_admins_manage_adapters() {
    let node = Node::new(Backend::Local);
    let s = node.serve(&[]).await;
    let out = node.run(&["keys", "create", "--name", "w", "--role", "writer"]);
    let writer = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let r = s
        .send(
            s.client
                .delete(format!("{}/v1/adapters/x", s.url))
                .bearer_auth(&writer),
        )
        .await;
    r.error(403, "forbidden");
    let r = s
        .send(
            s.client
                .get(format!("{}/v1/adapters", s.url))
                .bearer_auth(&writer),
        )
        .await;
    assert_eq!(r.status, 200);
}
