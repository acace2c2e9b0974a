//! `deploy/`: the container image definition and the Kubernetes manifests. The manifests pass
//! the Kubernetes schemas (kubernetes-validate, strict, installed by scripts/test-deps.sh);
//! they agree with each other and with the image (selectors, probe and service ports, the
//! config and KEK mounts, the user, the data directory); and what they hand hearth (the
//! ConfigMap's hearth.toml, the variables fed from the Secret, the KEK file, the container's
//! arguments) starts a node on a real S3 store whose probe paths answer. No container engine
//! runs here, so the image itself is not built: its instructions are checked against the
//! repository instead.

use std::path::PathBuf;

use serde_json::Value;

use crate::common::{Backend, Node, root, venv_bin};

/// The manifests `kustomization.yaml` applies, in its order.
const MANIFESTS: [&str; 4] = [
    "configmap.yaml",
    "deployment.yaml",
    "service.yaml",
    "poddisruptionbudget.yaml",
];
const KUBERNETES: &str = "1.32.0";

fn dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// Every document of a YAML file, as JSON (PyYAML's safe loader, from the test environment).
fn yaml(path: &std::path::Path) -> Vec<Value> {
    let out = std::process::Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The resources of the manifests, by kind.
fn resource(kind: &str) -> Value {
    MANIFESTS
        .iter()
        .flat_map(|f| yaml(&dir().join(f)))
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    std::process::Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "-k", KUBERNETES])
        .args(files)
        .output()
        .unwrap()
}

/// The ConfigMap's hearth.toml.
fn config() -> toml::Table {
    let text = resource("ConfigMap")["data"]["hearth.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    text.parse().unwrap()
}

/// The entry of a list of named things (volumes, mounts, variables) called `name`.
fn named(list: &Value, name: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("nothing named {name} in {list}"))
        .clone()
}

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap()
}

/// The arguments of the Dockerfile's instructions named `op` in the final stage (continued
/// lines joined).
fn instructions(op: &str) -> Vec<String> {
    let text = dockerfile().replace("\\\n", " ");
    let last = text.rfind("\nFROM ").unwrap();
    text[last..]
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{op} ")))
        .map(|a| a.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn the_manifests_pass_the_kubernetes_schemas() {
    let kustomization = yaml(&dir().join("kustomization.yaml"));
    let listed: Vec<&str> = kustomization[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(listed, MANIFESTS);
    let files: Vec<PathBuf> = MANIFESTS.iter().map(|f| dir().join(f)).collect();
    let out = validate(&files);
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert_eq!(
        report.matches(" passed for resource ").count(),
        4,
        "{report}"
    );
    // The check is live: a misspelt field is refused.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("deployment.yaml");
    let text = std::fs::read_to_string(dir().join("deployment.yaml")).unwrap();
    std::fs::write(&bad, text.replacen("periodSeconds:", "periodSecond:", 1)).unwrap();
    let out = validate(&[bad]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("periodSecond"));
}

#[test]
fn the_manifests_agree_with_each_other_and_with_the_image() {
    let deployment = resource("Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    // One set of labels selects the pods everywhere.
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&resource("Service")["spec"]["selector"], labels);
    assert_eq!(
        &resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        labels
    );
    // Several pods share the store only as replicas.
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas >= 2, "{replicas}");
    assert_eq!(
        config()["cluster"]["enabled"].as_bool(),
        Some(true),
        "several pods without [cluster] enabled"
    );
    // Probes and the Service reach the container's named port, which the image exposes.
    let port = &container["ports"][0];
    assert_eq!(port["name"], "http");
    assert_eq!(
        instructions("EXPOSE"),
        vec![port["containerPort"].to_string()]
    );
    assert_eq!(
        resource("Service")["spec"]["ports"][0]["targetPort"],
        "http"
    );
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }
    // The pod runs as the image's user, not root.
    assert_eq!(instructions("USER"), vec!["10001".to_owned()]);
    assert_eq!(spec["securityContext"]["runAsUser"], 10001);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    let mount = |volume: &str| -> String {
        named(&container["volumeMounts"], volume)["mountPath"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let volume = |name: &str| named(&spec["volumes"], name);
    let env = |name: &str| named(&container["env"], name);
    // HEARTH_CONFIG names the ConfigMap's file where it is mounted.
    assert_eq!(volume("config")["configMap"]["name"], "hearth");
    assert_eq!(
        env("HEARTH_CONFIG")["value"],
        format!("{}/hearth.toml", mount("config"))
    );
    let cfg = config();
    // The KEK file the config names is the Secret's `kek` item where it is mounted.
    let kek = volume("kek");
    let kek_file = cfg["storage"]["encryption"]["kek_file"].as_str().unwrap();
    assert_eq!(
        kek_file,
        format!(
            "{}/{}",
            mount("kek"),
            kek["secret"]["items"][0]["path"].as_str().unwrap()
        )
    );
    assert_eq!(kek["secret"]["items"][0]["key"], "kek");
    // Credentials come from the same Secret.
    for var in [
        "HEARTH__STORAGE__S3__ACCESS_KEY_ID",
        "HEARTH__STORAGE__S3__SECRET_ACCESS_KEY",
    ] {
        assert_eq!(
            env(var)["valueFrom"]["secretKeyRef"]["name"],
            kek["secret"]["secretName"]
        );
    }
    // The data directory is the writable volume, and the image's own default.
    let data_dir = cfg["storage"]["data_dir"].as_str().unwrap();
    assert_eq!(data_dir, mount("data"));
    assert!(
        instructions("ENV")
            .concat()
            .contains(&format!("HEARTH_DATA_DIR={data_dir}")),
        "{:?}",
        instructions("ENV")
    );
    // Requests in flight finish before the kubelet's SIGKILL.
    assert!(
        spec["terminationGracePeriodSeconds"].as_i64().unwrap()
            > cfg["server"]["shutdown_grace_secs"].as_integer().unwrap()
    );
    // Residency: the store declares the node's jurisdiction.
    assert_eq!(
        cfg["storage"]["s3"]["jurisdiction"],
        cfg["residency"]["jurisdiction"]
    );
    // The build's inputs are in the repository.
    let text = dockerfile();
    for needed in ["scripts/fetch-models.sh", "Cargo.lock", "src/main.rs"] {
        assert!(root().join(needed).is_file(), "{needed}");
    }
    assert!(text.contains("scripts/fetch-models.sh"));
    assert!(text.contains("cargo build --release --locked --bin hearth"));
    assert_eq!(
        instructions("ENTRYPOINT"),
        vec![r#"["/usr/local/bin/hearth"]"#.to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_deployment_hands_hearth_starts_a_node_on_a_real_store() {
    let deployment = resource("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["serve"]));
    // The ConfigMap's configuration, pointed at a SeaweedFS bucket and a KEK file here; the
    // rest as shipped (S3, encryption, jurisdiction and residency, the grace).
    let s3 = hearth_index::fixtures::SeaweedFs::shared().fresh_bucket();
    let tmp = tempfile::tempdir().unwrap();
    let kek = tmp.path().join("kek");
    std::fs::write(&kek, "33".repeat(32)).unwrap();
    let mut cfg = config();
    let storage = cfg["storage"].as_table_mut().unwrap();
    storage["s3"]["endpoint"] = s3.endpoint.clone().into();
    storage["s3"]["bucket"] = s3.bucket.clone().into();
    storage["encryption"]["kek_file"] = kek.display().to_string().into();
    let path = tmp.path().join("hearth.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    // The variables the Secret feeds (SeaweedFS here takes unsigned requests).
    let mut node = Node::new(Backend::Local).env("HEARTH_CONFIG", path.to_str().unwrap());
    for var in container["env"].as_array().unwrap() {
        if var["valueFrom"]["secretKeyRef"].is_object() {
            node = node.env(var["name"].as_str().unwrap(), "");
        }
    }
    // `serve` as the container runs it (bound to loopback here); ready means /readyz said 200.
    let server = node.serve(&[]).await;
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(server.get(path).await.status, 200, "{probe} {path}");
    }
    // It runs on the configured store, encrypted with the mounted KEK.
    let store = hearth_index::BlobStore::s3(&s3).unwrap();
    assert!(store.exists("crypto/keyring.json").await.unwrap());
    let out = node.run(&["residency", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.to_string().contains("\"eu\""), "{report}");
}
