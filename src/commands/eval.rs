//! `hearth eval`: runs a labelled question set (JSON Lines) against a collection and reports
//! retrieval, answer correctness, citation precision, abstention and timings; a table on the
//! terminal, `--json` for scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hearth_api::{
    AnswerMode, CollectionName, EvalOptions, EvalReport, Mean, QuestionResult, Reader, SearchMode,
};

use crate::config::AppConfig;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The questions: one JSON object per line, `{"question", "relevant": [file...], "facts":
    /// [...]}` or `{"question", "not_covered": true}`, optionally with `"history"`.
    questions: PathBuf,
    /// Collection to evaluate.
    #[arg(long, short)]
    pub(crate) collection: String,
    /// The cut-off of recall@k (1-10).
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Passages per answer (default: ask.top_k).
    #[arg(long)]
    top_k: Option<usize>,
    /// dense, bm25 or hybrid.
    #[arg(long, default_value = "hybrid")]
    mode: String,
    /// Most tokens per answer (default: ask.max_tokens).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Answer strictly: unsupported sentences removed (default: ask.strict).
    #[arg(long)]
    strict: bool,
    /// quote or generate (default: ask.answer).
    #[arg(long)]
    answer: Option<AnswerMode>,
    /// Print the whole report (every question and the totals) as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: AppConfig, args: EvalArgs) -> anyhow::Result<ExitCode> {
    let collection = CollectionName::new(&args.collection)?;
    let mode: SearchMode = args.mode.parse().map_err(|_| {
        anyhow::anyhow!("--mode must be dense, bm25 or hybrid, got {:?}", args.mode)
    })?;
    let text = std::fs::read_to_string(&args.questions)
        .with_context(|| format!("reading {}", args.questions.display()))?;
    let questions = hearth_api::parse_questions(&text)
        .with_context(|| format!("in {}", args.questions.display()))?;
    // Quotes need no generator: it is loaded only for generated answers and the judge.
    // --max-tokens asks for generation unless --answer says otherwise (quotes ignore it).
    let for_model = args.answer.is_none() && args.max_tokens.is_some();
    let service =
        if cfg.ask.judge || cfg.ask.answer_mode(args.answer, for_model)? == AnswerMode::Generate {
            super::service_with_generator(&cfg).await?
        } else {
            super::service(&cfg).await?
        };
    let col = service.open_existing(&collection).await?;
    let bar = super::progress_bar(questions.len() as u64, "questions");
    let opts = EvalOptions {
        k: args.k,
        top_k: args.top_k,
        mode,
        max_tokens: args.max_tokens,
        strict: args.strict.then_some(true),
        answer: args.answer,
        // The node's operator reads every document.
        reader: Reader::Everything,
        ..EvalOptions::default()
    };
    let report = service
        .eval(&col, &questions, &opts, |r| {
            bar.set_message(r.id.clone());
            bar.inc(1);
        })
        .await
        .context("evaluating")?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// yes / NO / - for a yes, a no and a question it does not apply to.
fn mark(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    }
}

fn row(r: &QuestionResult) -> String {
    let recall = r
        .retrieval
        .as_ref()
        .map_or("-".into(), |s| format!("{:.2}", s.recall_at_k));
    let outcome = if r.error.is_some() {
        "error"
    } else if r.not_covered {
        if r.abstained { "abstained" } else { "ANSWERED" }
    } else if r.abstained && r.correct == Some(false) {
        "ABSTAINED"
    } else {
        mark(r.correct)
    };
    let cited = r.citations.len();
    let supported = r.citations.iter().filter(|c| c.supported).count();
    let mut q: String = r.question.chars().take(48).collect();
    if r.question.chars().count() > 48 {
        q.push('…');
    }
    format!(
        "{:<10} {:>6} {:<9} {:>5} {:>8} {:>8}  {}{}",
        r.id,
        recall,
        outcome,
        format!("{supported}/{cited}"),
        r.ttft_ms.map_or("-".into(), |t| format!("{t:.0}")),
        format!("{:.0}", r.latency_ms),
        if r.follow_up { "↳ " } else { "" },
        q
    )
}

fn mean(m: &Mean) -> String {
    if m.of == 0 {
        "-".into()
    } else {
        format!("{:.3} (of {})", m.value, m.of)
    }
}

fn print_report(report: &EvalReport) {
    let s = &report.summary;
    println!(
        "{:<10} {:>6} {:<9} {:>5} {:>8} {:>8}  question",
        "id",
        format!("R@{}", s.k),
        "correct",
        "cites",
        "ttft ms",
        "total ms"
    );
    for r in &report.questions {
        println!("{}", row(r));
    }
    let wrong: Vec<&QuestionResult> = report
        .questions
        .iter()
        .filter(|r| r.error.is_some() || !r.missing_facts.is_empty())
        .collect();
    if !wrong.is_empty() {
        println!("\nwhat was missing:");
        for r in wrong {
            match &r.error {
                Some(e) => println!("  {}: error: {e}", r.id),
                None => println!("  {}: {}", r.id, r.missing_facts.join("; ")),
            }
        }
    }
    println!(
        "\n{} questions ({} failed with an error)",
        s.questions, s.errors
    );
    println!(
        "retrieval     recall@{} {}   MRR {}   nDCG@10 {}",
        s.k,
        mean(&s.recall_at_k),
        mean(&s.mrr),
        mean(&s.ndcg_at_10)
    );
    println!(
        "answers       correct {}   standalone {}   follow-ups {} (their standalone twins {})",
        mean(&s.correctness),
        mean(&s.correctness_standalone),
        mean(&s.correctness_follow_up),
        mean(&s.correctness_of_named_standalone)
    );
    println!("citations     precision {}", mean(&s.citation_precision));
    println!(
        "abstention    accuracy {} on questions the documents do not cover; {} covered questions declined",
        mean(&s.abstention_accuracy),
        s.false_abstentions
    );
    println!(
        "timing        TTFT p50 {:.0} ms, p95 {:.0} ms   latency p50 {:.0} ms, p95 {:.0} ms",
        s.ttft_ms.p50, s.ttft_ms.p95, s.latency_ms.p50, s.latency_ms.p95
    );
    println!(
        "tokens        prompt {:.0}, answer {:.0} on average",
        s.prompt_tokens.value, s.completion_tokens.value
    );
}
