//! Mailboxes larger than a document may be: a 1 GiB mbox uploaded raw is written to the spool
//! as it arrives and split into its messages in the memory of one message (the server's peak
//! resident memory is measured); `hearth ingest` reads a large mailbox file the same way. Each
//! message is a document linked to the mailbox, whose listing names them; a message over the
//! size limit is skipped with a warning; the same mailbox again is a duplicate.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Backend, Node, Server, assert_ok, by_source, create_key};

const MIB: u64 = 1 << 20;

/// The messages that say something: (subject, body).
const TOLD: [(&str, &str); 3] = [
    (
        "Quarterly figures for Halden",
        "Revenue in the third quarter reached 4.2 million euros, driven by the cold storage contracts.",
    ),
    (
        "Warehouse inspection",
        "The fire inspection of the Tromsø warehouse is booked for the 14th of November.",
    ),
    (
        "Holiday rota",
        "Ingrid covers the help desk during the last week of December.",
    ),
];

fn message(out: &mut impl Write, n: usize, subject: &str, body: &str) -> std::io::Result<()> {
    write!(
        out,
        "From sender{n}@example.com Mon Jan  1 00:00:00 2024\nFrom: Sender {n} <sender{n}@example.com>\nTo: board@example.com\nSubject: {subject}\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID: <m{n}@example.com>\nMIME-Version: 1.0\n"
    )?;
    if body.is_empty() {
        return Ok(());
    }
    write!(out, "Content-Type: text/plain\n\n{body}\n\n")
}

/// A message with `kib` KiB of base64 attachment (binary data: refused as an attachment, a
/// warning on the message).
fn filler(out: &mut impl Write, n: usize, kib: u64, line: &[u8]) -> std::io::Result<()> {
    message(out, n, &format!("Scanner output {n}"), "")?;
    write!(
        out,
        "Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nScanner output {n}.\n--b\nContent-Type: application/octet-stream\nContent-Disposition: attachment; filename=\"scan{n}.bin\"\nContent-Transfer-Encoding: base64\n\n"
    )?;
    for _ in 0..(kib * 1024 / line.len() as u64) {
        out.write_all(line)?;
    }
    write!(out, "--b--\n\n")
}

/// Writes a mailbox of about `total` bytes: the told messages, one message of `huge` KiB (over
/// the limit), then fillers of `each` KiB. Returns its message count.
fn write_mailbox(path: &Path, total: u64, each: u64, huge: u64) -> usize {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    // 76 base64 characters of varied bytes and a newline.
    let line: Vec<u8> = (0..76u8)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                [(i as usize * 7) % 64]
        })
        .chain([b'\n'])
        .collect();
    let mut n = 0;
    for (subject, body) in TOLD {
        n += 1;
        message(&mut out, n, subject, body).unwrap();
    }
    n += 1;
    filler(&mut out, n, huge, &line).unwrap();
    let mut written = huge * 1024;
    while written < total {
        n += 1;
        filler(&mut out, n, each, &line).unwrap();
        written += each * 1024;
    }
    out.flush().unwrap();
    n
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn doc(s: &Server, key: &str, id: &str) -> Value {
    let r = s
        .call(
            Some(key),
            "GET",
            &format!("/v1/collections/mail/documents/{id}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_mailbox_is_split_into_messages_in_bounded_memory() {
    let node = Node::new(Backend::Local)
        .env(
            "HEARTH__INGEST__MAX_DOCUMENT_BYTES",
            &(16 * MIB).to_string(),
        )
        .env("HEARTH__SERVER__REQUEST_TIMEOUT_SECS", "900")
        .env("HEARTH__SERVER__RATE_PER_MINUTE", "100000");
    let key = create_key(&node, "ops", "admin", &[], &[]);
    let path = node.dir.path().join("archive.mbox");
    let messages = write_mailbox(&path, 1 << 30, 8 * 1024, 20 * 1024);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size >= 1 << 30, "{size}");
    let s = node.serve(&[]).await;
    let r = s
        .call(
            Some(&key),
            "POST",
            "/v1/collections",
            Some(serde_json::json!({"name": "mail"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let pid = s.child.id();
    let rss_before = proc_kib(pid, "VmRSS:");

    let upload = |s: &Server| {
        let url = format!(
            "{}/v1/collections/mail/documents?source=archive.mbox",
            s.url
        );
        let client = s.client.clone();
        let key = key.clone();
        let path = path.clone();
        async move {
            let file = tokio::fs::File::open(&path).await.unwrap();
            // Sent in 1 MiB pieces, never whole.
            let chunks = futures::stream::unfold(file, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; MIB as usize];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok::<_, std::io::Error>(buf), f))
                    }
                    Err(e) => Some((Err(e), f)),
                }
            });
            let body = reqwest::Body::wrap_stream(chunks);
            let r = client
                .post(url)
                .bearer_auth(key)
                .header("content-type", "application/mbox")
                .header("content-length", size)
                .body(body)
                .timeout(Duration::from_secs(900))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let started = Instant::now();
    let (status, out) = upload(&s).await;
    let took = started.elapsed();
    assert_eq!(status, 202, "{out}");
    assert_eq!(out["messages"], messages, "{out}");
    let skipped = out["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{out}");
    assert!(
        skipped[0]
            .as_str()
            .unwrap()
            .starts_with("message 4 not ingested"),
        "{out}"
    );
    // The whole upload and split took no more memory than a few messages.
    let peak = proc_kib(pid, "VmHWM:");
    println!(
        "1 GiB mailbox ({messages} messages) uploaded and split in {:.1} s; server RSS {} MiB before, peak {} MiB",
        took.as_secs_f64(),
        rss_before / 1024,
        peak / 1024
    );
    assert!(
        peak < rss_before + 256 * 1024,
        "peak resident memory {peak} KiB against {rss_before} KiB before the upload"
    );
    // Nothing is left in the spool.
    let spool = node.dir.path().join("data/uploads");
    assert!(
        std::fs::read_dir(&spool).map_or(true, |mut d| d.next().is_none()),
        "files left in {}",
        spool.display()
    );

    // The mailbox is a listing; its messages are documents linked to it, and the ones that say
    // something are found by what they say.
    let id = out["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(600);
    let listing = loop {
        let d = doc(&s, &key, &id).await;
        if d["status"] == "indexed" || d["status"] == "failed" {
            break d;
        }
        assert!(Instant::now() < deadline, "the listing is not indexed: {d}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(listing["status"], "indexed", "{listing}");
    assert_eq!(listing["metadata"]["messages"], messages.to_string());
    assert_eq!(
        listing["children"].as_array().unwrap().len(),
        messages - 1,
        "{listing}"
    );
    let first = listing["children"][1].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let d = doc(&s, &key, &first).await;
        if d["status"] == "indexed" {
            assert_eq!(d["source"], "archive.mbox/message-00002.eml");
            assert_eq!(d["metadata"]["parent"], id.as_str());
            assert_eq!(d["metadata"]["subject"], "Warehouse inspection");
            break;
        }
        assert!(Instant::now() < deadline, "message 2 is not indexed: {d}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = s
        .call(
            Some(&key),
            "POST",
            "/v1/collections/mail/search",
            Some(serde_json::json!({"query": "when is the fire inspection of the warehouse", "top_k": 1})),
        )
        .await;
    let hit = &r.json()["hits"][0];
    assert_eq!(hit["source"], "archive.mbox/message-00002.eml", "{hit}");

    // The same mailbox again is a duplicate, and stores nothing more.
    let (status, again) = upload(&s).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], id.as_str());
}

#[test]
fn hearth_ingest_reads_a_large_mailbox_file_as_a_stream() {
    let node =
        Node::new(Backend::Local).env("HEARTH__INGEST__MAX_DOCUMENT_BYTES", &MIB.to_string());
    let path = node.dir.path().join("small.mbox");
    // Over the 1 MiB limit as a whole; each message under it but one.
    let messages = write_mailbox(&path, 3 * MIB, 512, 2 * 1024);
    assert!(std::fs::metadata(&path).unwrap().len() > MIB);
    let out = node.run(&["ingest", "-c", "mail", "--json", path.to_str().unwrap()]);
    assert_ok(&out);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &summary["documents"][0];
    assert_eq!(d["status"], "ok", "{summary}");
    assert_eq!(d["attachments"], messages - 1, "{summary}");
    let docs = node.docs("mail");
    let listing = by_source(&docs, path.to_str().unwrap());
    assert!(
        listing["warnings"]
            .to_string()
            .contains("message 4 not ingested"),
        "{listing}"
    );
    let told = by_source(&docs, &format!("{}/message-00001.eml", path.display()));
    assert_eq!(told["state"], "indexed", "{told}");
    assert_eq!(told["metadata"]["parent"], listing["doc_id"]);
    let hits = node.search(
        "mail",
        "who covers the help desk in December",
        &["--top-k", "1"],
    );
    assert!(
        hits["hits"][0]["source"]
            .as_str()
            .unwrap()
            .ends_with("message-00003.eml"),
        "{hits}"
    );
}
