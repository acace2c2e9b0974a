//! The store's conditional writes, checked before hearth relies on them: `hearth store check`
//! and `hearth serve`'s start-up, against SeaweedFS, against SeaweedFS behind a proxy that
//! drops If-None-Match and If-Match (a store that cheats), and against a local directory.

use std::time::{Duration, Instant};

use hearth_index::fixtures::{ConditionIgnoringProxy, SeaweedFs};

use crate::common::{Backend, Node, assert_ok, files_under, objects};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `hearth store check`'s table for `check`.
fn line<'a>(report: &'a str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split_whitespace().next() == Some(check))
        .unwrap_or_else(|| panic!("no line for {check}:\n{report}"))
}

#[tokio::test]
async fn a_store_that_loses_concurrent_writes_is_refused_by_the_name_of_the_check() {
    let weed = SeaweedFs::shared();
    let bucket = weed.fresh_bucket();

    // The real store keeps every promise, replicas' included.
    let direct = Node::new(Backend::S3(bucket.clone()));
    let out = direct.run(&["store", "check", "--replicas", "--json"]);
    assert_ok(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 5, "{report}");
    for c in checks {
        assert_eq!(c["outcome"], "passed", "{report}");
    }

    // The same bucket through a proxy that drops the conditions.
    let proxy = ConditionIgnoringProxy::start(&weed.endpoint).unwrap();
    let cheat = Node::new(Backend::S3(proxy.bucket(&bucket.bucket)));
    let out = cheat.run(&["store", "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(line(&text, "create-race").contains("FAILED"), "{text}");
    assert!(line(&text, "create-race").contains("8 succeeded"), "{text}");
    assert!(line(&text, "create-existing").contains("FAILED"), "{text}");
    assert!(line(&text, "update-stale").contains("FAILED"), "{text}");
    assert!(text.contains("verdict: unfit"), "{text}");

    // `hearth serve` refuses it at start-up, naming the check, and never listens.
    let started = Instant::now();
    let mut child = cheat
        .command()
        .args(["serve", "--bind", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("hearth serve neither started nor refused the store within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("failed the check create-race") && err.contains("8 succeeded"),
        "{err}"
    );
    assert!(!stdout(&out).contains("listening"), "{}", stdout(&out));

    // The check is what refused it: with the check off the same store serves (at the
    // operator's risk), so the proxy is otherwise a working store.
    let unchecked = Node::new(Backend::S3(proxy.bucket(&bucket.bucket)))
        .env("HEARTH__STORAGE__CHECK_WRITES", "false");
    let server = unchecked.serve(&[]).await;
    assert_eq!(server.get("/readyz").await.status, 200);
    drop(server);

    // No probe object is left behind by any of the runs.
    assert!(objects(&direct.store(), "_probe/").await.is_empty());
}

#[test]
fn a_local_store_is_fit_for_one_node_and_not_for_replicas() {
    let node = Node::new(Backend::Local);
    let out = node.run(&["store", "check"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(line(&text, "create-race").contains("passed"), "{text}");
    assert!(line(&text, "create-existing").contains("passed"), "{text}");
    assert!(
        line(&text, "update-stale").contains("unsupported"),
        "{text}"
    );
    assert!(text.contains("verdict: fit for one node"), "{text}");
    let out = node.run(&["store", "check", "--replicas"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    // The store holds the runs' audit entries and nothing of the probe.
    let store = node.dir.path().join("data/store");
    let audit = store.join("audit").display().to_string();
    let left: Vec<String> = files_under(&store)
        .into_keys()
        .filter(|p| !p.starts_with(&audit))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
