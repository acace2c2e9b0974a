//! `kill -9` in the middle of ingesting 200 documents loses and duplicates nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hearth_index::decode_chunks;

use crate::common::{Backend, Node, objects};

/// Writes `n` distinct documents in three formats; deterministic.
fn make_corpus(dir: &std::path::Path, n: usize) {
    let words = [
        "storage",
        "kernel",
        "packet",
        "filesystem",
        "compiler",
        "archive",
        "license",
        "scheduler",
        "router",
        "cipher",
        "journal",
        "mirror",
    ];
    for i in 0..n {
        let mut body = String::new();
        for p in 0..12 {
            let sentence: Vec<&str> = (0..14)
                .map(|k| words[(i * 7 + p * 3 + k * k) % words.len()])
                .collect();
            body.push_str(&format!(
                "Paragraph {p} of document {i}: {}.\n\n",
                sentence.join(" ")
            ));
        }
        let (name, text) = match i % 3 {
            0 => (
                format!("doc-{i:03}.md"),
                format!("# Document {i}\n\n{body}"),
            ),
            1 => (
                format!("doc-{i:03}.html"),
                format!(
                    "<html><head><title>Doc {i}</title></head><body><h1>Document {i}</h1><p>{}</p></body></html>",
                    body.replace("\n\n", "</p><p>")
                ),
            ),
            _ => (format!("doc-{i:03}.txt"), format!("Document {i}\n\n{body}")),
        };
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_ingesting_loses_and_duplicates_nothing() {
    const N: usize = 200;
    let src = tempfile::tempdir().unwrap();
    make_corpus(src.path(), N);
    let node = Node::new(Backend::Local).env("HEARTH__INGEST__WORKERS", "1");
    let records_dir = node.dir.path().join("data/store/docs/crash");

    let mut child = node
        .command()
        .args(["ingest", "-c", "crash"])
        .arg(src.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = std::fs::read_dir(&records_dir).map_or(0, |d| d.count());
        if seen >= 40 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "ingest finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "ingest made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();

    // Some documents were caught mid-way.
    let states: Vec<String> = node
        .docs("crash")
        .iter()
        .map(|r| r["state"].as_str().unwrap().to_owned())
        .collect();
    assert!(states.len() < N, "the kill came too late to test anything");

    // Restart: the same command finishes the job.
    let summary = node.ingest("crash", &[src.path()]);
    assert_eq!(summary["failed"], 0, "{summary:#}");

    let records = node.docs("crash");
    assert_eq!(records.len(), N);
    let store = node.store();
    let chunks = objects(&store, "chunks/crash/").await;
    let raw = store.list("raw/crash/").await.unwrap();
    assert_eq!(raw.len(), N);
    assert_eq!(chunks.len(), N);
    let mut sources = BTreeSet::new();
    for r in &records {
        assert_eq!(r["state"], "indexed", "{r:#}");
        assert!(
            sources.insert(r["source"].as_str().unwrap().to_owned()),
            "duplicate record {r:#}"
        );
        let key = format!("chunks/crash/{}.arrow", r["doc_id"].as_str().unwrap());
        let decoded = decode_chunks(&key, &chunks[&key]).unwrap();
        assert_eq!(decoded.len() as u64, r["chunks"].as_u64().unwrap());
        let ordinals: Vec<u32> = decoded.iter().map(|c| c.ordinal).collect();
        assert_eq!(ordinals, (0..decoded.len() as u32).collect::<Vec<_>>());
    }

    // Every chunk is searchable exactly once: "paragraph" is in every chunk.
    let total: u64 = records.iter().map(|r| r["chunks"].as_u64().unwrap()).sum();
    let hits = node.search("crash", "paragraph", &["--mode", "bm25", "--top-k", "1000"]);
    let ids: Vec<&str> = hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["chunk_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len() as u64,
        total,
        "searchable chunks vs stored chunks"
    );
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "a chunk is indexed twice"
    );
}

/// One strace line's system call: `Some((name, args))` for a completed call that succeeded.
fn syscall(line: &str) -> Option<(&str, &str)> {
    // "PID name(args) = 0" (with -f); failed calls are skipped.
    let line = line.split_once(' ').map_or(line, |(pid, rest)| {
        if pid.chars().all(|c| c.is_ascii_digit()) {
            rest.trim_start()
        } else {
            line
        }
    });
    let (name, rest) = line.split_once('(')?;
    let (args, result) = rest.rsplit_once(") = ")?;
    (result.trim() == "0").then_some((name, args))
}

/// The quoted paths among a call's arguments, else the `<path>` of its descriptor (`-y`).
fn paths_in(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, part) in args.split('"').enumerate() {
        if i % 2 == 1 {
            out.push(part.to_owned());
        }
    }
    if out.is_empty()
        && let Some(fd) = args.split_once('<').and_then(|(_, p)| p.split_once('>'))
    {
        out.push(fd.0.to_owned());
    }
    out
}

/// Runs `hearth ARGS` under strace, returning the log's successful file syncs, renames, links
/// and unlinks in order, as (call, paths).
fn traced(node: &Node, args: &[&str]) -> Vec<(String, Vec<String>)> {
    let log = node.dir.path().join("strace.log");
    let cmd = node.command();
    let mut strace = std::process::Command::new("strace");
    strace
        .args(["-f", "-qq", "-y", "--seccomp-bpf", "-o"])
        .arg(&log)
        .args([
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat,unlink,unlinkat",
        ])
        .arg(cmd.get_program())
        .args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => strace.env(k, v),
            None => strace.env_remove(k),
        };
    }
    strace.current_dir(node.dir.path());
    let out = strace.output().unwrap();
    crate::common::assert_ok(&out);
    let text = std::fs::read_to_string(&log).unwrap();
    rejoined(&text)
        .iter()
        .filter_map(|l| syscall(l))
        .map(|(name, args)| (name.to_owned(), paths_in(args)))
        .collect()
}

/// strace's lines with each call that another thread interrupted joined again: "PID
/// name(args <unfinished ...>" and, later, "PID <... name resumed>rest" become one line, in
/// the place where the call finished (what it did is done by then).
fn rejoined(text: &str) -> Vec<String> {
    let mut open: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let pid = line.split_once(' ').map_or("", |(p, _)| p);
        if let Some(head) = line.strip_suffix(" <unfinished ...>") {
            open.insert(pid, head);
        } else if let Some((_, rest)) = line.split_once(" resumed>") {
            // The result is padded: ")             = 0".
            let rest = match rest.split_once('=') {
                Some((call, result)) => format!("{} ={result}", call.trim_end()),
                None => rest.to_owned(),
            };
            if let Some(head) = open.remove(pid) {
                out.push(format!("{head}{rest}"));
            }
        } else {
            out.push(line.to_owned());
        }
    }
    out
}

/// With `storage.fsync` (the default), every object an ingest puts in the local store has its
/// bytes synced before it is renamed or linked into place, and the directory naming it synced
/// after; a delete syncs the directory that named what it removed (a power cut then neither
/// loses an acknowledged document nor brings back a deleted one). With `fsync = false`, no
/// store path is synced. Watched on the real process with strace.
#[test]
fn the_local_store_syncs_what_it_acknowledges_and_deletes() {
    for fsync in [true, false] {
        let node = Node::new(Backend::Local).env(
            "HEARTH__STORAGE__FSYNC",
            if fsync { "true" } else { "false" },
        );
        let note = node.dir.path().join("note.txt");
        std::fs::write(
            &note,
            "The night shift rotates the backup tapes every Tuesday at 02:00.\n",
        )
        .unwrap();
        let store = node.dir.path().join("data/store");
        let calls = traced(
            &node,
            &["ingest", "-c", "d", note.to_str().unwrap(), "--json"],
        );
        let mut files = Vec::new();
        let mut todo = vec![store.clone()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    files.push(p.to_string_lossy().into_owned());
                }
            }
        }
        let objects = files.iter().filter(|f| !f.contains("/audit/")).count();
        assert!(objects >= 3, "{files:?}");
        let under_store = |p: &String| p.starts_with(store.to_str().unwrap());
        let synced: Vec<(usize, &String)> = calls
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| name == "fsync" || name == "fdatasync")
            .filter_map(|(i, (_, p))| p.last().filter(|p| under_store(p)).map(|p| (i, p)))
            .collect();
        if !fsync {
            assert!(synced.is_empty(), "{synced:?}");
            continue;
        }
        for f in &files {
            // Put in place by a rename or link from a staging file ("KEY#N") ...
            let (placed, (_, from)) = calls
                .iter()
                .enumerate()
                .rfind(|(_, (name, p))| {
                    (name.starts_with("rename") || name.starts_with("link")) && p.last() == Some(f)
                })
                .unwrap_or_else(|| panic!("{f} was not renamed or linked into place"));
            let staging = &from[0];
            // ... whose bytes were synced before, and whose directory was synced after.
            assert!(
                synced.iter().any(|(i, p)| *i < placed && *p == staging),
                "{f}: staging file {staging} not synced before it was placed"
            );
            let dir = std::path::Path::new(f)
                .parent()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(
                synced.iter().any(|(i, p)| *i > placed && **p == dir),
                "{f}: its directory was not synced after it was placed"
            );
        }

        // A delete: the directories that named the removed objects are synced after.
        let id = node.docs("d")[0]["doc_id"].as_str().unwrap().to_owned();
        let calls = traced(&node, &["delete", "-c", "d", &id]);
        let removed: Vec<(usize, &String)> = calls
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| name.starts_with("unlink"))
            .filter_map(|(i, (_, p))| {
                p.last()
                    .filter(|p| under_store(p) && p.contains(&id))
                    .map(|x| (i, x))
            })
            .collect();
        assert!(!removed.is_empty(), "{calls:?}");
        for (at, f) in removed {
            let synced_after = calls.iter().skip(at + 1).any(|(name, p)| {
                name == "fsync"
                    && p.last().is_some_and(|d| {
                        under_store(d) && std::path::Path::new(f).starts_with(d) && d != f
                    })
            });
            assert!(
                synced_after,
                "{f}: no directory above it synced after the delete"
            );
        }
    }
}
