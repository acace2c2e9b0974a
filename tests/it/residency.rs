//! Residency: the jurisdiction policy refuses stores outside it (exit 2), `/v1/residency` and
//! `hearth residency` report what is true, and a node inside a network namespace, with a veth
//! to a SeaweedFS store as its only way out, opens no connection but to that store while it
//! ingests and answers (every `connect` recorded by strace).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hearth_index::fixtures::SeaweedFs;
use hearth_index::{BlobStore, S3Config};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::{Backend, Node, models, root};

fn corpus(name: &str) -> PathBuf {
    root().join("testdata/corpus").join(name)
}

fn sha256_hex(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn stores_outside_the_jurisdiction_are_refused_at_start_up() {
    let s3 = S3Config {
        endpoint: "http://127.0.0.1:9".into(),
        bucket: "b".into(),
        ..S3Config::default()
    };
    let node = Node::new(Backend::S3(s3)).env("HEARTH__RESIDENCY__JURISDICTION", "eu");
    for (declared, expect) in [
        (None, "storage.s3.jurisdiction is not declared"),
        (
            Some("us"),
            "is in jurisdiction \"us\", but residency.jurisdiction = \"eu\"",
        ),
    ] {
        for args in [
            &["serve", "--bind", "127.0.0.1:0"][..],
            &["ingest", "-c", "c", "."],
        ] {
            let mut cmd = node.command();
            if let Some(j) = declared {
                cmd.env("HEARTH__STORAGE__S3__JURISDICTION", j);
            }
            let out = cmd.args(args).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains(expect), "{}", stderr(&out));
        }
    }
    let out = node
        .command()
        .env("HEARTH__STORAGE__S3__JURISDICTION", "eu")
        .env("HEARTH__RESIDENCY__JURISDICTION", "e u")
        .args(["residency"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("residency.jurisdiction \"e u\" is invalid"));
}

#[tokio::test(flavor = "multi_thread")]
async fn residency_report_is_truthful() {
    let s3 = SeaweedFs::shared().fresh_bucket();
    let endpoint = s3.endpoint.clone();
    let bucket = s3.bucket.clone();
    let node = Node::new(Backend::S3(s3))
        .env("HEARTH__STORAGE__S3__JURISDICTION", "eu")
        .env("HEARTH__RESIDENCY__JURISDICTION", "eu");
    let s = node.serve(&["--open"]).await;

    // An adapter, so that its files are reported too.
    let dir = root().join("testdata/lora/all-r4");
    let files = ["adapter_config.json", "adapter_model.safetensors"];
    let boundary = "residency-boundary-7a1";
    let mut body = Vec::new();
    for name in files {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(&std::fs::read(dir.join(name)).unwrap());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let r = s
        .send(
            s.client
                .put(format!("{}/v1/adapters/support", s.url))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    let r = s.get("/v1/residency").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rep = r.json();
    assert_eq!(rep["jurisdiction"], "eu");
    assert_eq!(rep["enforced"], true);
    assert_eq!(rep["telemetry"], false);
    assert_eq!(rep["storage"][0]["backend"], "s3");
    assert_eq!(
        rep["storage"][0]["location"],
        format!("{endpoint}/{bucket}")
    );
    assert_eq!(rep["storage"][0]["jurisdiction"], "eu");
    let origin = endpoint.clone();
    assert_eq!(rep["egress_allowlist"], serde_json::json!([origin]));
    assert_eq!(rep["encryption"]["at_rest"], false);
    assert_eq!(rep["build"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(!rep["build"]["commit"].as_str().unwrap().is_empty());

    // Every model file hearth reads, with the digest of its bytes as computed here.
    let m = models();
    let expected = [
        m.join("all-MiniLM-L6-v2/model.safetensors"),
        m.join("all-MiniLM-L6-v2/config.json"),
        m.join("all-MiniLM-L6-v2/tokenizer.json"),
        m.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    ];
    let reported = rep["models"].as_array().unwrap();
    assert_eq!(reported.len(), expected.len(), "{rep:#}");
    for (p, r) in expected.iter().zip(reported) {
        assert_eq!(Path::new(r["path"].as_str().unwrap()), p, "{r}");
        assert_eq!(r["sha256"], sha256_hex(p), "{r}");
        assert_eq!(r["bytes"], std::fs::metadata(p).unwrap().len());
    }
    let adapter = &rep["adapters"][0];
    assert_eq!(adapter["name"], "support");
    for (name, f) in files.iter().zip(adapter["files"].as_array().unwrap()) {
        assert_eq!(f["role"], *name);
        assert_eq!(f["sha256"], sha256_hex(&dir.join(name)), "{f}");
    }

    // The CLI reports the same (adapters as kept in the store).
    let out = node.run(&["residency", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "jurisdiction",
        "enforced",
        "storage",
        "egress_allowlist",
        "models",
        "encryption",
        "build",
    ] {
        assert_eq!(cli[key], rep[key], "{key}");
    }
    let digests = |v: &Value| -> Vec<Value> {
        v["adapters"][0]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["sha256"].clone())
            .collect()
    };
    assert_eq!(digests(&cli), digests(&rep));
    let text = node.run(&["residency"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("jurisdiction: eu (enforced at start-up)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("outbound connections: only to {origin}")),
        "{text}"
    );
}

/// A network namespace whose only link is a veth pair to this host; removed on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), stderr(&out).trim()))
    }
}

impl Netns {
    fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let net = format!("10.231.{}", pid % 250);
        let me = Self {
            name: format!("hearth-t{pid}"),
            host_if: format!("hth{pid}a"),
            host_ip: format!("{net}.1"),
        };
        let ns_if = format!("hth{pid}b");
        ip(&["netns", "add", &me.name])?;
        let ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &me.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        ip(&[
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &me.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", me.host_ip),
            "dev",
            &me.host_if,
        ])?;
        ip(&["link", "set", &me.host_if, "up"])?;
        ns(&["addr", "add", &format!("{net}.2/24"), "dev", &ns_if])?;
        ns(&["link", "set", &ns_if, "up"])?;
        ns(&["link", "set", "lo", "up"])?;
        Ok(me)
    }

    /// `ip netns exec NS strace ... PROGRAM ARGS` with `cmd`'s program, arguments,
    /// environment and directory; strace writes every connect(2) of the process tree to `log`.
    fn traced(&self, cmd: &Command, log: &Path) -> Command {
        let mut out = Command::new("ip");
        out.args([
            "netns",
            "exec",
            &self.name,
            "strace",
            "-f",
            "-qq",
            "--seccomp-bpf",
        ])
        .args(["-e", "trace=connect", "-o"])
        .arg(log)
        .arg(cmd.get_program())
        .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => out.env(k, v),
                None => out.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            out.current_dir(d);
        }
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// The destinations of the connect(2) calls in a strace log: `inet HOST:PORT`, `unix PATH`, or
/// the family and raw text for anything else.
fn connects(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap();
    let field = |line: &str, key: &str, end: char| -> Option<String> {
        let start = line.find(key)? + key.len();
        let rest = &line[start..];
        Some(rest[..rest.find(end)?].to_owned())
    };
    text.lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|c| c.starts_with("connect("))
        })
        .filter_map(|l| {
            let family = field(l, "sa_family=", ',').or_else(|| field(l, "sa_family=", '}'))?;
            Some(match family.as_str() {
                "AF_INET" => format!(
                    "inet {}:{}",
                    field(l, "sin_addr=inet_addr(\"", '"').unwrap_or_default(),
                    field(l, "sin_port=htons(", ')').unwrap_or_default()
                ),
                "AF_UNIX" => format!("unix {}", field(l, "sun_path=", '}').unwrap_or_default()),
                _ => format!("{family} {l}"),
            })
        })
        .collect()
}

#[test]
fn strace_lines_are_read_as_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("x.strace");
    std::fs::write(
        &log,
        "12 connect(9, {sa_family=AF_INET, sin_port=htons(8333), sin_addr=inet_addr(\"10.0.0.1\")}, 16) = -1 EINPROGRESS\n\
         13 connect(4, {sa_family=AF_UNIX, sun_path=\"/var/run/nscd/socket\"}, 110) = -1 ENOENT\n\
         14 connect(5, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, \"::1\", &sin6_addr), sin6_scope_id=0}, 28 <unfinished ...>\n\
         14 <... connect resumed>) = -1 ENETUNREACH\n\
         15 read(3, \"connect(\", 8) = 8\n",
    )
    .unwrap();
    let got = connects(&log);
    assert_eq!(got[0], "inet 10.0.0.1:8333");
    assert_eq!(got[1], "unix \"/var/run/nscd/socket\"");
    assert!(got[2].starts_with("AF_INET6 "), "{got:?}");
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn a_node_in_a_network_namespace_connects_only_to_its_store() {
    let uid = Command::new("id").arg("-u").output().unwrap().stdout;
    if String::from_utf8_lossy(&uid).trim() != "0" {
        eprintln!("skipped: network namespaces need root, and this test runs as another user");
        return;
    }
    let netns = match Netns::create() {
        Ok(n) => n,
        Err(e) => {
            eprintln!(
                "skipped: the kernel does not let this process make a network namespace: {e}"
            );
            return;
        }
    };
    assert!(
        Command::new("strace").arg("-V").output().is_ok(),
        "strace is missing: scripts/test-deps.sh installs it"
    );
    let weed = SeaweedFs::start_on(&netns.host_ip).expect("SeaweedFS on the veth address");
    let s3 = weed.fresh_bucket();
    let store_addr = s3.endpoint.trim_start_matches("http://").to_owned();
    // Proxy variables name a second destination; the client must ignore them.
    let proxy = format!("http://{}:3128", netns.host_ip);
    let node = Node::new(Backend::S3(s3.clone()))
        .env("HEARTH__STORAGE__S3__JURISDICTION", "eu")
        .env("HEARTH__RESIDENCY__JURISDICTION", "eu")
        .env("HTTP_PROXY", &proxy)
        .env("HTTPS_PROXY", &proxy)
        .env("ALL_PROXY", &proxy);
    let logs = tempfile::tempdir().unwrap();

    let mut ingest = node.command();
    ingest
        .args(["ingest", "-c", "docs"])
        .arg(corpus("incident-runbook.md"));
    let ingest_log = logs.path().join("ingest.strace");
    let out = netns.traced(&ingest, &ingest_log).output().unwrap();
    assert!(
        out.status.success(),
        "ingest in the namespace: {}",
        stderr(&out)
    );

    let mut ask = node.command();
    ask.args([
        "ask",
        "How fast must a SEV1 page be answered?",
        "-c",
        "docs",
    ])
    .args(["--max-tokens", "24"]);
    let ask_log = logs.path().join("ask.strace");
    let out = netns.traced(&ask, &ask_log).output().unwrap();
    assert!(
        out.status.success(),
        "ask in the namespace: {}",
        stderr(&out)
    );
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("incident-runbook.md"), "{answer}");

    let store_target = format!("inet {store_addr}");
    for (what, log) in [("ingest", &ingest_log), ("ask", &ask_log)] {
        let all = connects(log);
        let to_store = all.iter().filter(|c| **c == store_target).count();
        assert!(
            to_store > 0,
            "{what}: no connection to the store recorded; strace saw nothing? {all:?}"
        );
        let elsewhere: Vec<_> = all
            .iter()
            .filter(|c| **c != store_target && !c.starts_with("unix "))
            .collect();
        assert!(
            elsewhere.is_empty(),
            "{what} connected elsewhere than {store_target}: {elsewhere:?}"
        );
        eprintln!(
            "{what}: {to_store} connects to the store, {} to local sockets",
            all.len() - to_store
        );
    }

    // What was acknowledged is in the store on the far side of the veth.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let keys = rt
        .block_on(BlobStore::s3(&s3).unwrap().list("raw/docs/"))
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
}
