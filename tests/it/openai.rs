//! The OpenAI-compatible endpoints checked with the official `openai` Python client (installed
//! into the test virtual environment by scripts/test-deps.sh), streaming included; a large
//! embeddings job does not hold up other keys' searches.

use crate::common::{Backend, Node, root, venv_bin};

fn venv_python() -> std::path::PathBuf {
    venv_bin("python")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_client_works_unchanged() {
    let node = Node::new(Backend::Local);
    let s = node.serve(&[]).await;
    let out = node.run(&["keys", "create", "--name", "sdk", "--role", "reader"]);
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let script = root().join("tests/openai/check_client.py");
    let url = s.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(venv_python())
            .arg(&script)
            .args([&url, &key, "SmolLM2-135M-Instruct.Q4_1", "all-MiniLM-L6-v2"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("all OpenAI client checks passed"),
        "{stdout}"
    );
}

/// A batch job on `/v1/embeddings` (300 passages) runs beside ingestion, not ahead of other
/// keys' searches: a search sent while it runs waits for one batch, not for the whole job (in
/// the security review, two such requests made a search take 38 s instead of 12 ms).
#[tokio::test(flavor = "multi_thread")]
async fn a_large_embeddings_request_does_not_hold_up_other_keys_searches() {
    use std::time::{Duration, Instant};
    let node = Node::new(Backend::Local);
    node.ingest("docs", &[&root().join("testdata/corpus/qemu-img.html")]);
    let batch = crate::common::create_key(&node, "batch", "reader", &[], &[]);
    let analyst = crate::common::create_key(&node, "analyst", "reader", &["docs"], &[]);
    let s = node.serve(&[]).await;
    let inputs: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "passage {i}: {}",
                "the quick brown fox jumps over the lazy dog ".repeat(11)
            )
        })
        .collect();
    let big = s
        .client
        .post(format!("{}/v1/embeddings", s.url))
        .bearer_auth(&batch)
        .header("content-type", "application/json")
        .body(serde_json::json!({"model": "all-MiniLM-L6-v2", "input": inputs}).to_string());
    let started = Instant::now();
    let job = tokio::spawn(async move {
        let r = big.send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        (
            status,
            body["data"].as_array().map_or(0, Vec::len),
            started.elapsed(),
        )
    });
    // Let the job reach the embedder first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let r = s
        .call(
            Some(&analyst),
            "POST",
            "/v1/collections/docs/search",
            Some(serde_json::json!({"query": "convert a disk image to qcow2"})),
        )
        .await;
    let search = asked.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (status, n, job_took) = job.await.unwrap();
    assert_eq!((status, n), (200, 300));
    assert!(
        search * 4 < job_took,
        "the search took {search:?} while the job took {job_took:?}: it waited for the job"
    );
}
