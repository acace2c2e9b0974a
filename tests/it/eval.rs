//! `hearth eval` on the labelled set of `testdata/eval/questions.jsonl` over `testdata/corpus`,
//! with the default settings (quoted answers) and models: the figures a user gets are asserted
//! against floors at what hearth reaches today (BENCHMARKS.md, "Quoted answers"), so a
//! regression fails. Of the targets of issue 15, recall@5 0.95 and citation precision 0.90 are
//! met, and so is follow-ups within 0.05 of their standalone twins; correctness 0.80 (quoted:
//! 0.70) and abstention 0.90 (quoted: 0.36 with named terms; strict generated answers: 0.89, by
//! declining almost everything) are not yet. Then generated strict answers on
//! the not-covered questions, and `POST /v1/collections/{c}/eval`: admins only, JSON Lines only,
//! a broken line named, and the streamed report.

use serde_json::Value;

use crate::common::{Backend, Node, assert_ok, create_key, root};

/// Lowest acceptable figures of the default settings on the shipped set (measured: recall@5
/// 0.958, MRR 0.921, nDCG@10 0.929; quoted answers: correctness 0.70, follow-ups 0.737 against
/// 0.763 for their standalone twins, citation precision 0.916, abstention 0.36: 12 of 33).
/// Recall leaves one question of margin for the CPU kinds CI may run on, the answer floors a
/// few questions (a cosine near a threshold may fall the other way on another CPU).
const MIN_RECALL_AT_5: f64 = 0.95;
const MIN_NDCG_AT_10: f64 = 0.92;
const MIN_CORRECTNESS: f64 = 0.66;
const MIN_FOLLOW_UP_CORRECTNESS: f64 = 0.66;
/// Follow-ups' correctness below their standalone twins' (issue 15 asks at most 0.05; measured
/// 0.026, one question of 38; this leaves one more).
const MAX_FOLLOW_UP_GAP: f64 = 0.053;
const MIN_CITATION_PRECISION: f64 = 0.88;
/// Measured 0.36 (12 of 33: 2 by the quotes' cosine floor, 10 for a named term that no
/// passage has, `ask.named_terms`); 0.06 without named terms.
const MIN_ABSTENTION: f64 = 0.30;
/// Not-covered questions declined for a named term (measured 10 of 33).
const MIN_NAMED_DECLINES: usize = 9;
/// Follow-ups' recall@5 (measured 0.947 on the 38 covered ones; 0.816 before they were
/// searched with their history).
const MIN_FOLLOW_UP_RECALL_AT_5: f64 = 0.90;
/// Strict answers declining the not-covered questions (measured 0.89 on 9 of them with
/// SmolLM2-135M; 0.00 without strict).
const MIN_STRICT_ABSTENTION: f64 = 0.80;

fn summary_figure(report: &Value, name: &str) -> f64 {
    report["summary"][name]["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("no {name} in {}", report["summary"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_labelled_set_scores_as_expected_from_the_cli_and_over_http() {
    let node = Node::new(Backend::Local);
    node.ingest("corpus", &[&root().join("testdata/corpus")]);
    let set = root().join("testdata/eval/questions.jsonl");
    let set_text = std::fs::read_to_string(&set).unwrap();
    let total = set_text.lines().filter(|l| !l.trim().is_empty()).count();

    let out = node.run(&["eval", "--json", "-c", "corpus", set.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "hearth eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &report["summary"];
    println!("{}", serde_json::to_string_pretty(s).unwrap());
    assert_eq!(s["questions"], total);
    assert_eq!(s["errors"], 0, "{s}");
    let misses: Vec<&str> = report["questions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| {
            q["retrieval"]["recall_at_k"]
                .as_f64()
                .is_some_and(|r| r < 1.0)
        })
        .map(|q| q["id"].as_str().unwrap())
        .collect();
    let recall = summary_figure(&report, "recall_at_k");
    assert!(
        recall >= MIN_RECALL_AT_5,
        "recall@5 {recall:.3}; missed: {misses:?}"
    );
    let ndcg = summary_figure(&report, "ndcg_at_10");
    assert!(
        ndcg >= MIN_NDCG_AT_10,
        "nDCG@10 {ndcg:.3}; missed: {misses:?}"
    );
    let precision = summary_figure(&report, "citation_precision");
    assert!(
        precision >= MIN_CITATION_PRECISION,
        "citation precision {precision:.3}"
    );
    let wrong: Vec<(&Value, &Value)> = report["questions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["correct"] == false)
        .map(|q| (&q["id"], &q["missing_facts"]))
        .collect();
    let correctness = summary_figure(&report, "correctness");
    assert!(
        correctness >= MIN_CORRECTNESS,
        "correctness {correctness:.3}; wrong: {wrong:?}"
    );
    let follow_ups = summary_figure(&report, "correctness_follow_up");
    let twins = summary_figure(&report, "correctness_of_named_standalone");
    assert!(
        follow_ups >= MIN_FOLLOW_UP_CORRECTNESS && follow_ups >= twins - MAX_FOLLOW_UP_GAP,
        "follow-up correctness {follow_ups:.3}, their standalone twins {twins:.3}"
    );
    let abstention = summary_figure(&report, "abstention_accuracy");
    assert!(abstention >= MIN_ABSTENTION, "abstention {abstention:.3}");
    // Named terms (`ask.named_terms`): a question about an option, path, identifier or name
    // that no passage has is declined naming it, in the question's language, and a covered
    // question is not (a term the passages lack is looked for by BM25 before it is declined).
    let named_declines: Vec<(&str, bool, &str)> = report["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["id"].as_str().unwrap(),
                q["not_covered"] == true,
                q["answer"].as_str().unwrap_or_default(),
            )
        })
        .filter(|(_, _, a)| {
            a.contains("no passage found mentions") || a.contains("keine gefundene Passage erwähnt")
        })
        .collect();
    assert!(
        named_declines
            .iter()
            .all(|(_, not_covered, _)| *not_covered),
        "covered questions declined for a named term: {named_declines:?}"
    );
    assert!(
        named_declines.len() >= MIN_NAMED_DECLINES,
        "{named_declines:?}"
    );
    let answer_to = |id: &str| {
        report["questions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["id"] == id)
            .and_then(|q| q["answer"].as_str())
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        answer_to("e163"),
        "The documents do not say: no passage found mentions “--defrag”."
    );
    assert_eq!(
        answer_to("e188"),
        "Die Dokumente sagen dazu nichts: keine gefundene Passage erwähnt “BahnCard”."
    );
    // Follow-ups and their standalone twins are both scored.
    assert_eq!(
        s["correctness_follow_up"]["of"],
        s["correctness_of_named_standalone"]["of"]
    );
    assert!(s["correctness_follow_up"]["of"].as_u64().unwrap() >= 25);
    assert!(s["abstention_accuracy"]["of"].as_u64().unwrap() >= 25);
    // Every question has its line in the report, in order.
    let ids: Vec<&str> = report["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), total);
    assert_eq!(ids[0], "e001");
    // Follow-ups are retrieved with their history: as well as the questions that stand alone.
    let recall_of = |follow_up: bool| {
        let r: Vec<f64> = report["questions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| q["follow_up"] == follow_up)
            .filter_map(|q| q["retrieval"]["recall_at_k"].as_f64())
            .collect();
        r.iter().sum::<f64>() / r.len() as f64
    };
    let (alone, follow_ups) = (recall_of(false), recall_of(true));
    assert!(
        follow_ups >= MIN_FOLLOW_UP_RECALL_AT_5 && follow_ups >= alone - 0.05,
        "follow-up recall@5 {follow_ups:.3}, standalone {alone:.3}"
    );

    // The judge (`ask.judge`): the generator reads the chosen quote with the question and a
    // quote below `ask.judge_min` is declined. At 0 nothing changes; at 1 the answer follows
    // the probability the judge logged.
    // (A question that names no exact term: one that does, such as /dev/kvm, is declined
    // before any quote is chosen, see below.)
    let question = "how do I make bzip2 use all my CPU cores when compressing?";
    let ask = |env: &[(&str, &str)]| {
        let mut cmd = node.command();
        cmd.args(["ask", question, "-c", "corpus", "--json"]);
        cmd.envs(env.iter().copied());
        let out = cmd.output().unwrap();
        assert_ok(&out);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let p_yes = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| l.contains("judged"))
            .and_then(|l| l.rsplit("p_yes=").next())
            .map(|p| p.trim().parse::<f32>().unwrap());
        (v["answer"].as_str().unwrap().to_owned(), p_yes)
    };
    let (plain, none) = ask(&[]);
    assert!(none.is_none(), "the judge ran without being asked");
    let judged = |min: &'static str| {
        ask(&[
            ("HEARTH__ASK__JUDGE", "true"),
            ("HEARTH__ASK__JUDGE_MIN", min),
            ("HEARTH_LOG", "hearth_api::service::ask=debug"),
        ])
    };
    let (same, p) = judged("0");
    let p = p.expect("the judge logged no probability");
    assert!((0.0..=1.0).contains(&p), "{p}");
    assert_eq!(same, plain);
    let (strictest, p1) = judged("1");
    assert_eq!(p1, Some(p), "the judge is not deterministic");
    if p < 1.0 {
        assert!(
            strictest.starts_with("The documents do not say"),
            "{strictest}"
        );
    } else {
        assert_eq!(strictest, plain);
    }
    let bad = node
        .command()
        .args(["ask", question, "-c", "corpus"])
        .env("HEARTH__ASK__JUDGE_MIN", "1.5")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("ask.judge_min must be between 0 and 1"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Strict generated answers to what the documents do not cover: the model's own inventions
    // are removed, and the answer says the documents do not say.
    let uncovered: String = set_text
        .lines()
        .filter(|l| l.contains("\"not_covered\": true") && !l.contains("\"standalone\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let uncovered_path = node.dir.path().join("uncovered.jsonl");
    std::fs::write(&uncovered_path, &uncovered).unwrap();
    let out = node.run(&[
        "eval",
        "--json",
        "--strict",
        "--answer",
        "generate",
        "-c",
        "corpus",
        "--max-tokens",
        "64",
        uncovered_path.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let strict: Value = serde_json::from_slice(&out.stdout).unwrap();
    let abstention = summary_figure(&strict, "abstention_accuracy");
    let declined: Vec<(&Value, &Value)> = strict["questions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["abstained"] != true)
        .map(|q| (&q["id"], &q["answer"]))
        .collect();
    assert!(
        strict["summary"]["abstention_accuracy"]["of"]
            .as_u64()
            .unwrap()
            >= 25
    );
    assert!(
        abstention >= MIN_STRICT_ABSTENTION,
        "strict abstention {abstention:.3}; answered: {declined:?}"
    );

    // A broken line is named, and nothing is run.
    let broken = node.dir.path().join("broken.jsonl");
    let first = set_text.lines().next().unwrap();
    std::fs::write(
        &broken,
        format!("{first}\n{{\"question\": \"x\", \"facts\": [1]}}\n"),
    )
    .unwrap();
    let out = node.run(&["eval", "-c", "corpus", broken.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");

    // Over HTTP: admins of the collection only.
    let server = node.serve(&[]).await;
    let admin = create_key(&node, "eval-admin", "admin", &[], &[]);
    let admin_elsewhere = create_key(&node, "eval-admin-other", "admin", &["other"], &[]);
    let reader = create_key(&node, "eval-reader", "reader", &["corpus"], &[]);
    let post = |key: &str, ctype: &str, query: &str, body: String| {
        server
            .client
            .post(format!("{}/v1/collections/corpus/eval{query}", server.url))
            .bearer_auth(key)
            .header("content-type", ctype)
            .body(body)
    };
    let ndjson = "application/x-ndjson";
    for key in [reader.as_str(), admin_elsewhere.as_str()] {
        server
            .send(post(key, ndjson, "", first.to_owned()))
            .await
            .error(403, "forbidden");
    }
    server
        .send(post(&admin, "application/json", "", first.to_owned()))
        .await
        .error(415, "unsupported_media_type");
    let m = server
        .send(post(
            &admin,
            ndjson,
            "",
            std::fs::read_to_string(&broken).unwrap(),
        ))
        .await
        .error(400, "invalid_request");
    assert!(m.contains("line 2"), "{m}");

    // Three questions streamed: a progress event each, then the report, whose answers are the
    // CLI's (the same quotes of the same passages).
    let picked: Vec<&str> = set_text.lines().take(3).collect();
    let reply = server
        .send(post(&admin, ndjson, "?stream=true", picked.join("\n")))
        .await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.body).unwrap();
    let events: Vec<(&str, &str)> = text
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name, data))
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        names,
        ["progress", "progress", "progress", "done"],
        "{text}"
    );
    let streamed: Value = serde_json::from_str(events[3].1).unwrap();
    for (i, q) in streamed["questions"].as_array().unwrap().iter().enumerate() {
        let cli = &report["questions"][i];
        assert_eq!(q["id"], cli["id"]);
        assert_eq!(q["answer"], cli["answer"], "question {}", q["id"]);
        assert_eq!(q["correct"], cli["correct"]);
    }
}

/// Who may run an evaluation, refused before anything is read or generated: no key 401;
/// reader, writer and an admin of another collection 403 (even for a collection that does not
/// exist, so a key learns nothing about collections outside its scope); a body a cross-site
/// form can send (`text/plain`) 415; an admin of the collection gets to the collection lookup.
#[tokio::test(flavor = "multi_thread")]
async fn only_admins_of_the_collection_may_run_an_evaluation() {
    let node = Node::new(Backend::Local);
    let server = node.serve(&[]).await;
    let admin = create_key(&node, "ev-admin", "admin", &["private"], &[]);
    let other = create_key(&node, "ev-other", "admin", &["public"], &[]);
    let writer = create_key(&node, "ev-writer", "writer", &["private"], &[]);
    let reader = create_key(&node, "ev-reader", "reader", &["private"], &[]);
    let body = r#"{"question": "what is kept?", "facts": ["x"]}"#;
    let post = |key: Option<&str>, ctype: &str| {
        let mut req = server
            .client
            .post(format!(
                "{}/v1/collections/private/eval?strict=true&answer=quote",
                server.url
            ))
            .header("content-type", ctype)
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req
    };
    let ndjson = "application/x-ndjson";
    server
        .send(post(None, ndjson))
        .await
        .error(401, "unauthorized");
    for key in [&reader, &writer, &other] {
        server
            .send(post(Some(key), ndjson))
            .await
            .error(403, "forbidden");
    }
    for ctype in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json",
    ] {
        server
            .send(post(Some(&admin), ctype))
            .await
            .error(415, "unsupported_media_type");
    }
    server
        .send(post(Some(&admin), ndjson))
        .await
        .error(404, "not_found");
    // A strict or a quoted answer is refused as any answer is: no key, or a key of another
    // collection (before the collection is looked up, so nothing of it is revealed).
    let ask = |key: Option<&str>, body: &'static str| {
        let mut req = server
            .client
            .post(format!("{}/v1/collections/private/ask", server.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req
    };
    for body in [
        r#"{"question": "what is kept?", "strict": true, "stream": true}"#,
        r#"{"question": "what is kept?", "answer": "quote"}"#,
        r#"{"question": "what is kept?", "answer": "quote", "stream": true}"#,
    ] {
        server
            .send(ask(None, body))
            .await
            .error(401, "unauthorized");
        server
            .send(ask(Some(&other), body))
            .await
            .error(403, "forbidden");
    }
}

/// Lowest retrieval figures on every other question of the shipped set (the first, third, ...;
/// the reranker quotes with its own model too, which costs seconds a question in a debug
/// build) with EmbeddingGemma reranking MiniLM's first 20 hybrid candidates (`ask.rerank`;
/// measured on that half: recall@5 0.96, MRR 0.955, nDCG@10 0.959 against 0.94, 0.905 and 0.914
/// without it; on the whole set 0.970, 0.960, 0.963 against 0.9525, 0.920, 0.927, BENCHMARKS.md
/// "Reranking"). Above the figures without a reranker, so a reranker that changes nothing
/// fails.
const MIN_RERANKED_MRR: f64 = 0.945;
const MIN_RERANKED_NDCG_AT_10: f64 = 0.945;

/// Least citation precision and abstention of the reranked answers on that half, whose quotes
/// EmbeddingGemma scores with its own floor (measured here: 0.993 of 147 cited sentences, 3 of
/// 17 not-covered questions declined; in release runs of the same half, quotes scored by
/// MiniLM as before: 0.956 and 1 of 17; by EmbeddingGemma under MiniLM's floor: 0.952 and 1).
const MIN_RERANKED_CITATION_PRECISION: f64 = 0.97;
const MIN_RERANKED_ABSTENTION: f64 = 0.1;

/// `ask.rerank`: a second embedding model re-scores the first stage's candidates, and the
/// labelled set's retrieval figures rise above what the first stage reaches alone; the quotes
/// it scores keep fewer unsupported sentences and decline more not-covered questions; a reranker
/// the node does not load is refused by name before anything runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_reranker_lifts_retrieval_on_the_labelled_set() {
    let node = Node::new(Backend::Local).env(
        "HEARTH__ENGINE__EMBEDDERS",
        "{ embeddinggemma-300m = \"embeddinggemma-300m\" }",
    );
    let all = std::fs::read_to_string(root().join("testdata/eval/questions.jsonl")).unwrap();
    // A follow-up's standalone twin may be in the other half: the pairing is not measured here.
    let half: String = all
        .lines()
        .step_by(2)
        .map(|l| {
            let mut q: Value = serde_json::from_str(l).unwrap();
            q.as_object_mut().unwrap().remove("standalone");
            format!("{q}\n")
        })
        .collect();
    let set = node.dir.path().join("half.jsonl");
    std::fs::write(&set, half).unwrap();
    let eval = |rerank: &str| {
        node.command()
            .env("HEARTH__ASK__RERANK", rerank)
            .args(["eval", "--json", "-c", "corpus", set.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = eval("no-such-model");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ask.rerank") && err.contains("no-such-model"),
        "an unknown reranker must be refused by name: {err}"
    );

    node.ingest("corpus", &[&root().join("testdata/corpus")]);
    let out = eval("embeddinggemma-300m");
    assert_ok(&out);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &report["summary"];
    println!("reranked: {}", serde_json::to_string_pretty(s).unwrap());
    assert_eq!(s["errors"], 0, "{s}");
    let mrr = summary_figure(&report, "mrr");
    let ndcg = summary_figure(&report, "ndcg_at_10");
    assert!(
        mrr >= MIN_RERANKED_MRR && ndcg >= MIN_RERANKED_NDCG_AT_10,
        "reranked MRR {mrr:.3}, nDCG@10 {ndcg:.3}"
    );
    assert!(
        summary_figure(&report, "recall_at_k") >= MIN_RECALL_AT_5,
        "{s}"
    );
    let cited = summary_figure(&report, "citation_precision");
    let declined = summary_figure(&report, "abstention_accuracy");
    assert!(
        cited >= MIN_RERANKED_CITATION_PRECISION && declined >= MIN_RERANKED_ABSTENTION,
        "reranked citation precision {cited:.3}, abstention {declined:.3}"
    );
}
