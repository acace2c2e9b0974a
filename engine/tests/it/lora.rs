//! LoRA adapters through the generator: PEFT adapters (testdata/lora) register at run time,
//! one batch mixes them with the base model, each sequence gets the output it gets alone, the
//! prefix cache keeps adapters apart, and unloaded adapters come back on demand.

use std::path::PathBuf;

use hearth_engine::{EngineConfig, EngineError, Generator};

use crate::generate::{QUESTIONS, ask, assert_no_leak, gen_config, greedy};
use crate::workspace;

fn fixture(name: &str) -> PathBuf {
    workspace().join("testdata/lora").join(name)
}

fn generator(resident: usize) -> Generator {
    Generator::load(&EngineConfig {
        lora_resident: resident,
        ..gen_config()
    })
    .unwrap()
}

/// Greedy answer to `q` through `adapter`, alone, with the prompt tokens the cache supplied.
fn answer(g: &Generator, q: &str, adapter: Option<&str>) -> (String, usize) {
    let (text, done) = g
        .submit_with_adapter(&ask(q), greedy(24), adapter)
        .unwrap()
        .wait()
        .unwrap();
    (text, done.usage.cached_prompt_tokens)
}

#[test]
fn one_batch_mixes_adapters_and_each_gets_its_own_output() {
    let g = generator(4);
    let all = g.register_adapter("all", &fixture("all-r4")).unwrap();
    assert_eq!(
        (all.rank, all.alpha, all.modules.len(), all.resident),
        (4, 8.0, 7, true)
    );
    assert_eq!(
        all.base_model.as_deref(),
        Some("HuggingFaceTB/SmolLM2-135M-Instruct")
    );
    g.register_adapter("qv", &fixture("qv-r2-rslora")).unwrap();
    let names: Vec<String> = g.adapters().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["all", "qv"]);

    let choices = [None, Some("all"), Some("qv")];
    let q = QUESTIONS[0];
    // Alone, one after the other, same prompt: the adapters' runs must not pick up the base
    // model's cached keys and values (nor each other's).
    let alone: Vec<String> = choices
        .iter()
        .map(|&a| {
            let (text, cached) = answer(&g, q, a);
            assert_eq!(cached, 0, "{a:?} reused another model's KV blocks");
            text
        })
        .collect();
    assert_ne!(alone[0], alone[1], "the adapter changed nothing");
    assert_ne!(alone[0], alone[2], "the adapter changed nothing");
    // Its own blocks are reused.
    let (again, cached) = answer(&g, q, Some("all"));
    assert_eq!(again, alone[1]);
    assert!(cached > 0);

    // All together, plus other prompts in flight, in one running batch.
    let runs: Vec<_> = choices
        .iter()
        .chain(&choices)
        .enumerate()
        .map(|(i, &a)| {
            let q = if i < 3 { q } else { QUESTIONS[i] };
            g.submit_with_adapter(&ask(q), greedy(24), a).unwrap()
        })
        .collect();
    let together: Vec<String> = runs.into_iter().map(|r| r.wait().unwrap().0).collect();
    assert_eq!(&together[..3], &alone[..]);
    for (i, &a) in choices.iter().enumerate() {
        assert_eq!(together[3 + i], answer(&g, QUESTIONS[3 + i], a).0);
    }

    let e = g
        .submit_with_adapter(&ask(q), greedy(4), Some("nope"))
        .err()
        .unwrap();
    assert!(
        matches!(e, EngineError::UnknownAdapter(ref n) if n == "nope"),
        "{e}"
    );
    assert!(g.remove_adapter("qv"));
    assert!(!g.remove_adapter("qv"));
    let e = g
        .submit_with_adapter(&ask(q), greedy(4), Some("qv"))
        .err()
        .unwrap();
    assert!(matches!(e, EngineError::UnknownAdapter(_)), "{e}");
    assert_no_leak(&g);
}

#[test]
fn unloaded_adapters_are_loaded_again_while_others_decode() {
    let g = generator(1);
    g.register_adapter("all", &fixture("all-r4")).unwrap();
    let q = QUESTIONS[2];
    let want = answer(&g, q, Some("all")).0;

    // Only one adapter stays loaded: registering a second unloads the first.
    g.register_adapter("qv", &fixture("qv-r2-rslora")).unwrap();
    let resident = |g: &Generator| -> Vec<(String, bool)> {
        g.adapters()
            .into_iter()
            .map(|a| (a.name, a.resident))
            .collect()
    };
    assert_eq!(resident(&g), [("all".into(), false), ("qv".into(), true)]);

    // A long base-model answer is decoding while "all" is read from disk again.
    let long = g.submit(&ask(QUESTIONS[5]), greedy(64)).unwrap();
    let back = g
        .submit_with_adapter(&ask(q), greedy(24), Some("all"))
        .unwrap();
    assert_eq!(back.wait().unwrap().0, want);
    long.wait().unwrap();
    assert_eq!(resident(&g), [("all".into(), true), ("qv".into(), false)]);

    // Replacing an adapter takes effect for new requests.
    let info = g.register_adapter("all", &fixture("qv-r2-rslora")).unwrap();
    assert_eq!(info.rank, 2);
    assert_eq!(answer(&g, q, Some("all")).0, answer(&g, q, Some("qv")).0);
    assert_no_leak(&g);
}

#[test]
fn bad_registrations_change_nothing() {
    let g = generator(2);
    g.register_adapter("ok", &fixture("qv-r2-rslora")).unwrap();
    let missing = g
        .register_adapter("gone", &fixture("no-such-adapter"))
        .unwrap_err();
    assert!(
        matches!(missing, EngineError::InvalidAdapter { .. }),
        "{missing}"
    );
    assert!(
        missing
            .to_string()
            .contains("adapter_config.json is missing")
    );
    for bad in ["", "a/b", "base:x", "../up"] {
        let e = g.register_adapter(bad, &fixture("all-r4")).unwrap_err();
        assert!(matches!(e, EngineError::InvalidInput(_)), "{bad:?}: {e}");
    }
    let names: Vec<String> = g.adapters().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["ok"]);
    answer(&g, QUESTIONS[1], Some("ok"));
}

#[test]
fn a_slow_adapter_load_holds_up_no_running_decode() {
    // The adapter's weights file becomes a named pipe: reading it blocks until the test writes
    // the bytes. Meanwhile a base-model request must run to the end.
    let dir = std::env::temp_dir().join(format!("hearth-lora-slow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture("all-r4").join(f), dir.join(f)).unwrap();
    }
    let g = generator(1);
    g.register_adapter("slow", &dir).unwrap();
    let q = QUESTIONS[4];
    let want = answer(&g, q, Some("slow")).0;
    g.register_adapter("qv", &fixture("qv-r2-rslora")).unwrap(); // unloads "slow"

    let weights = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::remove_file(&weights).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&weights)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");

    let mut slow = g
        .submit_with_adapter(&ask(q), greedy(24), Some("slow"))
        .unwrap();
    // A base request runs start to finish while the loader waits on the pipe (bounded: a
    // blocked scheduler fails the test instead of hanging it).
    let (tx, rx) = std::sync::mpsc::channel();
    let g2 = g.clone();
    std::thread::spawn(move || {
        let _ = tx.send(g2.submit(&ask(QUESTIONS[1]), greedy(16)).unwrap().wait());
    });
    let base = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("a base-model request stalled while an adapter was loading");
    assert!(!base.unwrap().0.is_empty());
    assert!(
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut slow)).is_none(),
        "the adapter request produced output before its adapter was read"
    );

    let feeder = std::thread::spawn(move || std::fs::write(&weights, bytes).unwrap());
    assert_eq!(slow.wait().unwrap().0, want);
    feeder.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_no_leak(&g);
}
