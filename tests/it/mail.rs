//! E-mail (`testdata/mail`, written by Python's email and mailbox packages): a message's
//! headers become metadata usable in filters, its attachments and a mailbox's messages become
//! documents of their own linked by `parent`, questions about a subject, a body and an
//! attachment find them, and deleting a message deletes its attachments, through `hearth
//! ingest`, `hearth docs`, `hearth search` and `hearth delete`.

use crate::common::{Backend, Node, assert_ok, by_source, hit_files, root};

#[test]
fn messages_attachments_and_mailboxes_index_as_linked_documents() {
    let node = Node::new(Backend::Local);
    let dir = root().join("testdata/mail");
    node.ingest("mail", &[&dir]);
    let docs = node.docs("mail");

    // The message: indexed, headers as metadata, three attachments: a Word file and a workbook
    // that index, and a logo in which OCR finds no text.
    let eml = by_source(&docs, "supplier-contract.eml");
    assert_eq!(eml["state"], "indexed", "{eml:#}");
    assert_eq!(
        eml["metadata"]["from"],
        "Clara Lindqvist <clara.lindqvist@kestrel-storage.example>"
    );
    assert_eq!(eml["metadata"]["date"], "2026-03-12T09:41:00Z");
    assert_eq!(eml["children"].as_array().map(Vec::len), Some(3), "{eml:#}");
    let eml_id = eml["doc_id"].as_str().unwrap();
    let logo = by_source(&docs, "supplier-contract.eml/logo.png");
    assert_eq!(logo["state"], "failed", "{logo:#}");
    assert_eq!(
        logo["reason"], "OCR found no text in the PNG image",
        "{logo:#}"
    );
    assert_eq!(logo["metadata"]["parent"], eml_id, "{logo:#}");
    for att in [
        "supplier-contract.eml/storage-runbook.docx",
        "supplier-contract.eml/offices.xlsx",
    ] {
        let a = by_source(&docs, att);
        assert_eq!(a["state"], "indexed", "{a:#}");
        assert_eq!(a["metadata"]["parent"], eml_id, "{a:#}");
    }
    // The mailbox: each message a document, linked to it.
    let mbox = by_source(&docs, "board.mbox");
    assert_eq!(mbox["state"], "indexed", "{mbox:#}");
    let mbox_id = mbox["doc_id"].as_str().unwrap();
    for n in 1..=3 {
        let m = by_source(&docs, &format!("board.mbox/message-0000{n}.eml"));
        assert_eq!(m["state"], "indexed", "{m:#}");
        assert_eq!(m["metadata"]["parent"], mbox_id, "{m:#}");
    }

    // A question about the body of the message.
    let out = node.search(
        "mail",
        "by when must the Nordlicht contract be signed",
        &["--top-k", "1"],
    );
    assert!(
        out["hits"][0]["text"]
            .as_str()
            .unwrap()
            .contains("15 May 2026"),
        "{out:#}"
    );
    // About an e-mail's subject (German, encoded in the header).
    let out = node.search("mail", "Schlüsselkarten Büroumzug", &["--top-k", "1"]);
    assert_eq!(hit_files(&out)[0], "message-00002.eml", "{out:#}");
    // About an attachment's table.
    let out = node.search("mail", "phone number of the Lyon office", &["--top-k", "1"]);
    assert!(
        out["hits"][0]["text"]
            .as_str()
            .unwrap()
            .contains("+33 4 5550 8841"),
        "{out:#}"
    );
    // Filtered by sender: only Ravi's message.
    let out = node.search(
        "mail",
        "budget",
        &[
            "--filter",
            "from=Ravi Menon <ravi.menon@kestrel-storage.example>",
        ],
    );
    assert!(!hit_files(&out).is_empty(), "{out:#}");
    assert!(
        hit_files(&out).iter().all(|f| f == "message-00003.eml"),
        "{out:#}"
    );

    // Deleting the message deletes what came out of it: an erasure request names the message.
    let out = node.run(&["delete", "-c", "mail", eml_id]);
    assert_ok(&out);
    let left: Vec<String> = node
        .docs("mail")
        .iter()
        .filter_map(|d| d["source"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !left.iter().any(|s| s.contains("supplier-contract.eml")),
        "{left:#?}"
    );
    assert_eq!(
        left.len(),
        4,
        "the mailbox and its messages stay: {left:#?}"
    );
    let out = node.search("mail", "phone number of the Lyon office", &[]);
    assert!(
        !out.to_string().contains("5550 8841"),
        "the attachment's text is gone from search: {out:#}"
    );
}
