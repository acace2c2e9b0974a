//! The OpenAI-compatible endpoints checked with the official `openai` Python client (installed
//! into the test virtual environment by scripts/test-deps.sh), streaming included.

use crate::common::{Backend, Node, root};

fn venv_python() -> std::path::PathBuf {
    let cache = std::env::var_os("HEARTH_CACHE").map_or_else(
        || std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/hearth"),
        std::path::PathBuf::from,
    );
    let py = cache.join("venv/bin/python");
    assert!(
        py.is_file(),
        "{} missing: run scripts/test-deps.sh",
        py.display()
    );
    py
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
