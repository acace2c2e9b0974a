//! `hearth ask`: a grounded answer streamed to the terminal, then its sources. Runs embedded
//! (loads the models itself) or, with `--server`, against a running `hearth serve`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use hearth_api::{
    Answer, AnswerEvent, AnswerMode, AskRequest, CollectionName, Reader, SamplingParams, SearchMode,
};
use serde_json::Value;

use crate::config::AppConfig;

#[derive(clap::Args)]
pub struct AskArgs {
    /// The question.
    question: String,
    /// Collection to answer from.
    #[arg(long, short)]
    pub(crate) collection: String,
    /// A running server to ask (e.g. http://127.0.0.1:8080); without it the models are loaded
    /// here.
    #[arg(long, env = "HEARTH_SERVER")]
    pub(crate) server: Option<String>,
    /// API key for --server.
    #[arg(long, env = "HEARTH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Passages to retrieve (default: ask.top_k).
    #[arg(long)]
    top_k: Option<usize>,
    /// dense, bm25 or hybrid.
    #[arg(long, default_value = "hybrid")]
    mode: String,
    /// Answer with this registered LoRA adapter.
    #[arg(long)]
    adapter: Option<String>,
    /// Most tokens in the answer (default: ask.max_tokens).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Remove the sentences no passage supports (default: ask.strict); the answer is printed
    /// once checked.
    #[arg(long)]
    strict: bool,
    /// quote (the documents' own sentences that answer) or generate (the model writes the
    /// answer); default: ask.answer.
    #[arg(long)]
    answer: Option<AnswerMode>,
    /// Print the final result (answer, citations, usage, timings) as JSON instead of streaming.
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: AppConfig, args: AskArgs) -> anyhow::Result<ExitCode> {
    let collection = CollectionName::new(&args.collection)?;
    let mode: SearchMode = args.mode.parse().map_err(|_| {
        anyhow::anyhow!("--mode must be dense, bm25 or hybrid, got {:?}", args.mode)
    })?;
    match args.server.clone() {
        Some(url) => {
            let events = remote(&url, &collection, mode, &args).await?;
            render(events, args.json).await
        }
        None => {
            // Quotes need no generator: it is loaded only for a generated answer and the judge.
            let for_model = args.max_tokens.is_some() || args.adapter.is_some();
            let service = if cfg.ask.judge
                || cfg.ask.answer_mode(args.answer, for_model)? == AnswerMode::Generate
            {
                super::service_with_generator(&cfg).await?
            } else {
                super::service(&cfg).await?
            };
            let col = service.open_existing(&collection).await?;
            let answer = service
                .ask(
                    &col,
                    AskRequest {
                        question: args.question.clone(),
                        mode,
                        top_k: args.top_k,
                        adapter: args.adapter.clone(),
                        sampling: sampling(&args),
                        strict: args.strict.then_some(true),
                        answer: args.answer,
                        // The node's operator reads every document.
                        reader: Reader::Everything,
                        ..AskRequest::default()
                    },
                )
                .await
                .context("asking")?;
            render(answer.map(|ev| ev.context("generating")), args.json).await
        }
    }
}

fn sampling(args: &AskArgs) -> Option<SamplingParams> {
    args.max_tokens.map(|m| SamplingParams {
        max_tokens: m,
        ..Default::default()
    })
}

/// Prints an answer as it arrives (or, with `json`, the finished answer as JSON), then its
/// sources.
async fn render(
    events: impl Stream<Item = anyhow::Result<AnswerEvent>>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut events = std::pin::pin!(events);
    let mut out = std::io::stdout();
    while let Some(ev) = events.next().await {
        match ev? {
            AnswerEvent::Passages(_) => {}
            AnswerEvent::Token(t) => {
                if !json {
                    write!(out, "{}", t.text)?;
                    out.flush()?;
                }
            }
            AnswerEvent::Done(a) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&a)?);
                } else {
                    print_sources(&a);
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    bail!("the answer ended before it was complete")
}

fn print_sources(a: &Answer) {
    println!();
    if a.passages.is_empty() {
        return;
    }
    println!();
    let heading = if a.citations.is_empty() {
        "Passages given to the model (none cited):"
    } else {
        "Sources:"
    };
    println!("{heading}");
    for p in &a.passages {
        let cited = a.citations.iter().any(|c| c.n == p.rank);
        let mark = if cited { "*" } else { " " };
        let mut line = format!("{mark}[{}] {}", p.rank, p.file_name());
        if let Some(t) = &p.title {
            line.push_str(&format!(" — {t}"));
        }
        match (p.page_start, p.page_end) {
            (Some(a), Some(b)) if a != b => line.push_str(&format!(", pp. {a}-{b}")),
            (Some(a), _) => line.push_str(&format!(", p. {a}")),
            _ if !p.heading.is_empty() => {
                line.push_str(&format!(", § {}", p.heading.join(" › ")));
            }
            _ => {}
        }
        println!("{line}");
    }
    let chars: Vec<char> = a.answer.chars().collect();
    let unsupported: Vec<String> = a
        .sentences
        .iter()
        .filter(|s| s.supported == Some(false))
        .filter_map(|s| chars.get(s.span[0]..s.span[1]))
        .map(|c| c.iter().collect::<String>().trim().to_owned())
        .collect();
    if !unsupported.is_empty() {
        println!();
        println!("Not supported by the passages (check before acting on them):");
        for s in unsupported {
            println!("  ! {s}");
        }
    }
}

/// Asks a running server for a streamed answer; its Server-Sent Events read back as the
/// service's own answer events.
async fn remote(
    url: &str,
    c: &CollectionName,
    mode: SearchMode,
    args: &AskArgs,
) -> anyhow::Result<impl Stream<Item = anyhow::Result<AnswerEvent>>> {
    let mut body = serde_json::json!({
        "question": args.question,
        "mode": mode.as_str(),
        "stream": true,
    });
    if let Some(k) = args.top_k {
        body["top_k"] = k.into();
    }
    if let Some(a) = &args.adapter {
        body["adapter"] = a.clone().into();
    }
    if let Some(m) = args.max_tokens {
        body["sampling"] = serde_json::json!({"max_tokens": m});
    }
    if args.strict {
        body["strict"] = true.into();
    }
    if let Some(a) = args.answer {
        body["answer"] = a.as_str().into();
    }
    let endpoint = format!("{}/v1/collections/{c}/ask", url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let mut req = client
        .post(&endpoint)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = &args.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("the server answered {status}: {msg}");
    }
    Ok(answer_events(resp.bytes_stream()))
}

/// The answer events of a Server-Sent Events body. The event parser buffers bytes until whole
/// lines arrive, so a character split across network reads is decoded whole.
fn answer_events<B: AsRef<[u8]>, E: std::fmt::Display>(
    body: impl Stream<Item = Result<B, E>>,
) -> impl Stream<Item = anyhow::Result<AnswerEvent>> {
    body.eventsource().filter_map(|ev| async move {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return Some(Err(anyhow::anyhow!("reading the answer: {e}"))),
        };
        if ev.event == "error" {
            let v: Value = serde_json::from_str(&ev.data).unwrap_or_default();
            return Some(Err(anyhow::anyhow!(
                "the server failed while answering: {}",
                v["error"]["message"].as_str().unwrap_or("unknown error")
            )));
        }
        AnswerEvent::from_sse(&ev.event, &ev.data)
            .with_context(|| format!("reading the server's {:?} event", ev.event))
            .transpose()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A character cut in two by the network arrives whole (the hand-written reader this
    /// replaced turned each half into U+FFFD).
    #[tokio::test]
    async fn characters_split_across_reads_arrive_whole() {
        let body = "event: token\ndata: {\"text\":\"Grüße, 東京\"}\n\nevent: error\ndata: {\"error\":{\"code\":\"x\",\"message\":\"boom\"}}\n\n";
        let bytes = body.as_bytes();
        // Every cut point, including inside each multi-byte character.
        for cut in 1..bytes.len() {
            let parts: Vec<Result<Vec<u8>, std::io::Error>> =
                vec![Ok(bytes[..cut].to_vec()), Ok(bytes[cut..].to_vec())];
            let events: Vec<_> = answer_events(futures::stream::iter(parts)).collect().await;
            assert_eq!(events.len(), 2, "cut at {cut}");
            match &events[0] {
                Ok(AnswerEvent::Token(t)) => assert_eq!(t.text, "Grüße, 東京", "cut at {cut}"),
                other => panic!("cut at {cut}: {other:?}"),
            }
            let e = events[1].as_ref().unwrap_err().to_string();
            assert!(e.contains("boom"), "{e}");
        }
    }
}
