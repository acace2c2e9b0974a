//! PII redaction per collection: matches are replaced before the text is chunked, embedded or
//! stored, the unredacted original is not kept, nothing of it reaches the object store, the
//! local caches or the logs; collections without redaction are untouched.

use std::collections::BTreeMap;

use serde_json::json;

use crate::common::{Backend, Node, assert_ok, files_under};

const PII: [&str; 7] = [
    "jane.doe@kestrel.example",
    "+49 30 1234 5678",
    "DE89 3704 0044 0532 0130 00",
    "4111 1111 1111 1111",
    "192.168.44.17",
    "2001:db8::8a2e:370:7334",
    "EMP-004711",
];

fn document() -> String {
    format!(
        "# Payroll contacts\n\nFor payroll questions write to {} or call {}. Salaries are paid to \
         {} and the company card {} covers travel. The payroll server answers at {} and {}. \
         The payroll lead is employee {}.\n\nPayroll runs on the last working day of the month.\n",
        PII[0], PII[1], PII[2], PII[3], PII[4], PII[5], PII[6]
    )
}

fn holding(files: &BTreeMap<String, Vec<u8>>, needle: &str) -> Vec<String> {
    files
        .iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(k, _)| k.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pii_is_redacted_before_anything_is_stored() {
    let node = Node::new(Backend::Local).env("HEARTH_LOG", "debug");
    let file = node.dir.path().join("payroll.md");
    std::fs::write(&file, document()).unwrap();
    let data = node.dir.path().join("data");

    let out = node
        .command()
        .args(["ingest", "--json", "-c", "hr", "--redact", "all"])
        .args(["--redact-pattern", "employee=EMP-[0-9]{6}"])
        .arg(&file)
        .output()
        .unwrap();
    assert_ok(&out);
    let logs = String::from_utf8_lossy(&out.stderr).into_owned();
    // The same bytes in a collection without redaction: the control for every scan below.
    node.ingest("plain", &[&file]);

    let hits = node.search("hr", "payroll questions contact", &["--top-k", "3"]);
    let text = hits["hits"][0]["text"].as_str().unwrap();
    for label in ["EMAIL", "PHONE", "IBAN", "CARD", "IP", "EMPLOYEE"] {
        assert!(
            text.contains(&format!("[REDACTED:{label}]")),
            "{label}: {text}"
        );
    }
    assert!(
        text.contains("last working day"),
        "the rest of the text stays: {text}"
    );
    let rec = &node.docs("hr")[0];
    assert_eq!(rec["redactions"], 7, "{rec}");
    assert_eq!(rec["original_discarded"], true, "{rec}");

    let part = |p: &str| -> BTreeMap<String, Vec<u8>> {
        files_under(&data)
            .into_iter()
            .filter(|(k, _)| k.contains(p))
            .collect()
    };
    let (hr, plain) = (part("/hr"), part("/plain"));
    assert!(hr.len() >= 3 && plain.len() >= 3, "{:?}", hr.keys());
    for pii in PII {
        assert!(
            !holding(&plain, pii).is_empty(),
            "control: {pii} is stored without redaction"
        );
        assert!(
            holding(&hr, pii).is_empty(),
            "{pii} stored in {:?}",
            holding(&hr, pii)
        );
        assert!(!logs.contains(pii), "{pii} in the logs:\n{logs}");
    }
    assert!(
        logs.contains("DEBUG") || logs.contains("INFO"),
        "logging was on: {logs}"
    );
    assert!(
        !logs.contains("last working day"),
        "document text in the logs:\n{logs}"
    );

    // The rules are fixed at creation.
    let out = node.run(&["ingest", "-c", "hr", "--redact", "email"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("redaction") && err.contains("cannot change"),
        "{err}"
    );
    let out = node.run(&["ingest", "-c", "x", "--redact", "ssn"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown redaction kind \"ssn\""));

    // Over HTTP: created with rules, echoed, the original not downloadable.
    let s = node.serve(&["--open"]).await;
    let r = s
        .post_json(
            "/v1/collections",
            &json!({"name": "hr2", "redaction": {"kinds": ["email", "phone"], "patterns": [{"name": "emp", "regex": "EMP-[0-9]+"}]}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json());
    assert_eq!(r.json()["redaction"]["kinds"], json!(["email", "phone"]));
    let m = s
        .post_json(
            "/v1/collections",
            &json!({"name": "hr3", "redaction": {"kinds": ["email"], "patterns": [{"name": "x", "regex": "("}]}}),
        )
        .await
        .error(400, "invalid_request");
    assert!(m.contains("redaction pattern \"x\""), "{m}");
    let r = s
        .post_json(
            "/v1/collections",
            &json!({"name": "hr", "redaction": {"kinds": ["email"]}}),
        )
        .await;
    r.error(409, "conflict");
    let r = s
        .upload("hr2", "payroll.md", document().as_bytes(), None)
        .await;
    assert_eq!(r.status, 202, "{}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let done = s.wait_done("hr2", &id).await;
    assert_eq!(done["redactions"], 3, "email, phone, employee: {done}");
    let m = s
        .get(&format!("/v1/collections/hr2/documents/{id}/raw"))
        .await
        .error(410, "original_discarded");
    assert!(m.contains("keeps no unredacted original"), "{m}");
    let r = s.get("/v1/collections/plain").await;
    assert!(r.json().get("redaction").is_none(), "{}", r.json());
}

/// A redacting collection redacts the document's name and the user's metadata too: an e-mail
/// address in a file name or a metadata value is stored and returned nowhere; two names that
/// differ only in the redacted part stay two documents.
#[tokio::test(flavor = "multi_thread")]
async fn names_and_user_metadata_are_redacted_like_the_text() {
    let node = Node::new(Backend::Local);
    let s = node.serve(&["--open"]).await;
    let r = s
        .post_json(
            "/v1/collections",
            &json!({"name": "hr", "redaction": {"kinds": ["email", "phone"]}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let (jane, john) = ("jane.doe@kestrel.example", "john.roe@kestrel.example");
    let mut ids = Vec::new();
    for (who, body) in [
        (jane, "Leave: thirty days a year."),
        (john, "Leave: twenty-five days a year."),
    ] {
        let meta = json!({"owner": who, "desk": "+49 30 1234 5678", "year": 2027});
        let r = s
            .upload(
                "hr",
                &format!("leave-{who}.md"),
                body.as_bytes(),
                Some(&meta),
            )
            .await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            !String::from_utf8_lossy(&r.body).contains(who),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let id = r.json()["id"].as_str().unwrap().to_owned();
        s.wait_done("hr", &id).await;
        ids.push(id);
    }
    let list = s.get("/v1/collections/hr/documents").await;
    let text = String::from_utf8_lossy(&list.body).into_owned();
    for pii in [jane, john, "1234 5678"] {
        assert!(!text.contains(pii), "{pii} in {text}");
    }
    let docs = list.json()["documents"].as_array().unwrap().clone();
    assert_eq!(docs.len(), 2, "both documents stay: {text}");
    for id in &ids {
        let one = s.get(&format!("/v1/collections/hr/documents/{id}")).await;
        let body = String::from_utf8_lossy(&one.body);
        assert!(!body.contains("kestrel"), "{body}");
    }
    let sources: Vec<&str> = docs.iter().filter_map(|d| d["source"].as_str()).collect();
    for src in &sources {
        assert!(
            src.starts_with("[REDACTED:EMAIL] (") && src.ends_with(").md"),
            "{sources:?}"
        );
    }
    assert_eq!(docs[0]["metadata"]["owner"], "[REDACTED:EMAIL]", "{text}");
    assert_eq!(docs[0]["metadata"]["year"].as_f64(), Some(2027.0), "{text}");
    // Search finds the passages, and names no one.
    let hits = s
        .post_json(
            "/v1/collections/hr/search",
            &json!({"query": "how many days of leave"}),
        )
        .await;
    assert_eq!(hits.status, 200);
    assert!(!String::from_utf8_lossy(&hits.body).contains("kestrel"));
    // Nothing in the store or the node's files holds the addresses.
    let mut all = crate::common::objects(&node.store(), "").await;
    all.extend(files_under(&node.dir.path().join("data")));
    for pii in [jane, john] {
        assert!(
            holding(&all, pii).is_empty(),
            "{pii}: {:?}",
            holding(&all, pii)
        );
    }
}
