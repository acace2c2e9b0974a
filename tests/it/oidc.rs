//! Identities from a real OpenID Connect provider (panva's oidc-provider from npm, run on
//! loopback by `tests/oidc/provider.mjs`): its JWT access tokens are verified against the keys
//! it publishes, and their claims give the caller's user, groups, role and collections. Key
//! rotation, clock skew, another audience, a forged signature and the egress rule are checked
//! against the running provider.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::access::{BUDGET, CONTRACT, indexed, listing, put, search, set};
use crate::common::{Backend, Node, Server, root};

/// The provider process; killed when dropped.
struct Provider {
    child: Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clients() -> Value {
    json!([
        {"id": "lena", "secret": "lena-secret", "claims": {"groups": ["legal"], "hearth_collections": ["corp"]}},
        {"id": "finn", "secret": "finn-secret", "claims": {"groups": "finance staff", "hearth_collections": ["corp"]}},
        {"id": "ops", "secret": "ops-secret", "claims": {"hearth_role": "admin", "hearth_collections": ["*"]}},
        {"id": "outsider", "secret": "outsider-secret", "claims": {"groups": ["legal"], "hearth_collections": ["other"]}},
    ])
}

/// Starts the provider with signing keys `kids` (the first signs), on `port` (0: any).
fn start(dir: &Path, port: u16, kids: &[&str]) -> Provider {
    let config = dir.join("provider.json");
    std::fs::write(
        &config,
        json!({"port": port, "key_dir": dir, "kids": kids, "clients": clients()}).to_string(),
    )
    .unwrap();
    let script: PathBuf = root().join("tests/oidc/provider.mjs");
    let mut child = Command::new("node")
        .arg(script)
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs (scripts/oidc-deps.sh installs the provider)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let issuer = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the identity provider printed no issuer within 30 s");
        if let Some(i) = line.strip_prefix("issuer ") {
            break i.trim().to_owned();
        }
    };
    Provider { child, issuer }
}

/// An access token for `client` from the provider's token endpoint (client credentials).
async fn token(p: &Provider, client: &str, resource: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{}/token", p.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        // Every value here is URL-safe as it is.
        .body(format!(
            "grant_type=client_credentials&client_id={client}&client_secret={client}-secret&scope=api&resource={resource}"
        ))
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token for {client}: {v}"))
        .to_owned()
}

fn node_for(issuer: &str, egress: bool, leeway: u64) -> Node {
    let node = Node::new(Backend::Local).env("HEARTH__SERVER__RATE_PER_MINUTE", "100000");
    let allow = if egress {
        format!("egress_allow = [\"{issuer}\"]")
    } else {
        String::new()
    };
    std::fs::write(
        node.dir.path().join("hearth.toml"),
        format!(
            "[server.oidc]\nissuer = \"{issuer}\"\naudience = \"hearth\"\nleeway_secs = {leeway}\n\n[residency]\n{allow}\n"
        ),
    )
    .unwrap();
    node
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_a_real_identity_provider_decide_who_reads_what() {
    let keys = tempfile::tempdir().unwrap();
    let provider = start(keys.path(), 0, &["k1"]);

    // Fetching keys from the issuer is an outbound connection: refused at start-up unless the
    // operator lists the issuer in residency.egress_allow.
    let refused = node_for(&provider.issuer, false, 4);
    let out = refused.run(&["serve", "--bind", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("residency.egress_allow"), "{err}");

    let node = node_for(&provider.issuer, true, 4);
    let s: Server = node.serve(&[]).await;
    let started = Instant::now();
    let ops = token(&provider, "ops", "urn:hearth").await;
    let lena = token(&provider, "lena", "urn:hearth").await;
    let finn = token(&provider, "finn", "urn:hearth").await;
    let outsider = token(&provider, "outsider", "urn:hearth").await;

    let r = s
        .call(
            Some(&ops),
            "POST",
            "/v1/collections",
            Some(json!({"name": "corp"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let contract = put(&s, &ops, "contract.md", CONTRACT, Some("legal"))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let budget = put(&s, &ops, "budget.md", BUDGET, Some("finance"))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    indexed(&s, &ops, &contract).await;
    indexed(&s, &ops, &budget).await;

    // The token's groups decide what each user reads (finn's groups come as one string).
    assert_eq!(listing(&s, &lena).await, set(&["contract.md"]));
    assert_eq!(listing(&s, &finn).await, set(&["budget.md"]));
    let q = "When does the Acme supply contract end and what does it cost?";
    assert_eq!(search(&s, &lena, q).await, set(&["contract.md"]));
    assert_eq!(search(&s, &finn, q).await, set(&["budget.md"]));
    // Its role and collections decide what the user may do.
    s.call(
        Some(&lena),
        "DELETE",
        &format!("/v1/collections/corp/documents/{contract}"),
        None,
    )
    .await
    .error(403, "forbidden");
    s.call(
        Some(&outsider),
        "POST",
        "/v1/collections/corp/search",
        Some(json!({"query": q})),
    )
    .await
    .error(403, "forbidden");
    let rep = s
        .call(Some(&ops), "GET", "/v1/residency", None)
        .await
        .json();
    let allow = rep["egress_allowlist"].as_array().unwrap();
    assert!(
        allow.iter().any(|o| o == &json!(provider.issuer.clone())),
        "{rep}"
    );

    // Tokens for another audience, with a signature changed, or with no key are refused.
    let other = token(&provider, "ops", "urn:billing").await;
    let m = s
        .call(Some(&other), "GET", "/v1/collections", None)
        .await
        .error(401, "unauthorized");
    assert!(m.contains("audience"), "{m}");
    // One character in the middle of the signature changed.
    let mut forged = lena.clone().into_bytes();
    let i = forged.len() - 20;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let m = s
        .call(Some(&forged), "GET", "/v1/collections", None)
        .await
        .error(401, "unauthorized");
    assert!(m.contains("signature"), "{m}");
    s.call(Some("not-a-token"), "GET", "/v1/collections", None)
        .await
        .error(401, "unauthorized");

    // Clock skew: a token that expired a moment ago is still accepted within the leeway
    // (4 s here), and refused after it.
    let short = token(&provider, "lena", "urn:hearth-short").await;
    let issued = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(listing(&s, &short).await, set(&["contract.md"]));
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(issued.elapsed())).await;
    let m = s
        .call(Some(&short), "GET", "/v1/collections", None)
        .await
        .error(401, "unauthorized");
    assert!(m.contains("expired"), "{m}");

    // Key rotation: the provider restarts signing with a new key and still publishing the
    // old one. hearth fetches the keys again when a token names one it lacks (at most every
    // 10 s), so new tokens and the old ones both work.
    let port: u16 = provider.issuer.rsplit(':').next().unwrap().parse().unwrap();
    drop(provider);
    let provider = start(keys.path(), port, &["k2", "k1"]);
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(started.elapsed())).await;
    let rotated = token(&provider, "finn", "urn:hearth").await;
    assert_ne!(
        rotated.split('.').next(),
        finn.split('.').next(),
        "a new kid"
    );
    assert_eq!(listing(&s, &rotated).await, set(&["budget.md"]));
    assert_eq!(listing(&s, &lena).await, set(&["contract.md"]));
    // API keys keep working beside tokens.
    let key = crate::common::create_key(&node, "k", "reader", &["corp"], &["--groups", "finance"]);
    assert_eq!(listing(&s, &key).await, set(&["budget.md"]));
}
