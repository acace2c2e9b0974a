//! Configuration errors name the key and exit with code 2.

use crate::common::{Backend, Node};

#[test]
fn invalid_values_exit_2_naming_the_key() {
    let node = Node::new(Backend::Local).env("HEARTH__INGEST__CHUNK_TOKENS", "\"lots\"");
    let out = node.run(&["docs", "-c", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ingest.chunk_tokens"), "{err}");

    let node = Node::new(Backend::Local);
    std::fs::write(
        node.dir.path().join("hearth.toml"),
        "[storage]\nbackend = \"ftp\"\n",
    )
    .unwrap();
    let out = node.run(&["docs", "-c", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage.backend"), "{err}");
}

#[test]
fn a_bad_collection_name_is_refused_before_anything_is_written() {
    let node = Node::new(Backend::Local);
    let out = node.run(&["ingest", "-c", "../etc", "."]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("collection name"));
    assert!(!node.dir.path().join("data/store/raw").exists());
}
