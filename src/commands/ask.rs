//! `hearth ask`: a grounded answer streamed to the terminal, then its sources. Runs embedded
//! (loads the models itself) or, with `--server`, against a running `hearth serve`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures::StreamExt;
use hearth_api::{AnswerSource, AskRequest, cite};
use hearth_engine::GenerationEvent;
use hearth_index::{CollectionName, Hit, SearchMode};
use serde_json::Value;

use crate::config::AppConfig;

#[derive(clap::Args)]
pub struct AskArgs {
    /// The question.
    question: String,
    /// Collection to answer from.
    #[arg(long, short)]
    collection: String,
    /// A running server to ask (e.g. http://127.0.0.1:8080); without it the models are loaded
    /// here.
    #[arg(long, env = "HEARTH_SERVER")]
    server: Option<String>,
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
    /// Print the final result (answer, citations, usage, timings) as JSON instead of streaming.
    #[arg(long)]
    json: bool,
}

/// A source as printed after the answer.
struct Source {
    n: usize,
    source: String,
    title: Option<String>,
    page: Option<(u32, u32)>,
    heading: Vec<String>,
}

pub async fn run(cfg: AppConfig, args: AskArgs) -> anyhow::Result<ExitCode> {
    let collection = CollectionName::new(&args.collection)?;
    let mode: SearchMode = args.mode.parse().map_err(|_| {
        anyhow::anyhow!("--mode must be dense, bm25 or hybrid, got {:?}", args.mode)
    })?;
    match args.server.clone() {
        Some(url) => remote(&url, &collection, mode, &args).await,
        None => embedded(&cfg, &collection, mode, &args).await,
    }
}

fn sampling(args: &AskArgs) -> Option<hearth_engine::SamplingParams> {
    args.max_tokens.map(|m| hearth_engine::SamplingParams {
        max_tokens: m,
        ..Default::default()
    })
}

async fn embedded(
    cfg: &AppConfig,
    c: &CollectionName,
    mode: SearchMode,
    args: &AskArgs,
) -> anyhow::Result<ExitCode> {
    let service = super::service_with_generator(cfg).await?;
    let col = service.open_existing(c).await?;
    let a = service
        .ask(
            &col,
            AskRequest {
                question: args.question.clone(),
                mode,
                top_k: args.top_k,
                adapter: args.adapter.clone(),
                sampling: sampling(args),
                ..AskRequest::default()
            },
        )
        .await
        .context("asking")?;
    let mut answer = String::new();
    let mut out = std::io::stdout();
    let mut usage = None;
    match a.answer {
        AnswerSource::Fixed(t) => {
            answer.push_str(t);
            if !args.json {
                write!(out, "{t}")?;
            }
        }
        AnswerSource::Generated(mut g) => {
            while let Some(ev) = g.next().await {
                match ev {
                    GenerationEvent::Text(t) => {
                        if !args.json {
                            write!(out, "{t}")?;
                            out.flush()?;
                        }
                        answer.push_str(&t);
                    }
                    GenerationEvent::Done(c) => usage = Some(c),
                    GenerationEvent::Failed(e) => return Err(e).context("generating"),
                }
            }
        }
    }
    let (marked, citations) = cite(&answer, &a.passages);
    let cites: Vec<usize> = citations.iter().map(|c| c.n).collect();
    if args.json {
        let citations: Vec<Value> = citations
            .iter()
            .map(|c| {
                let mut v = hit_json(c.n, &a.passages[c.n - 1]);
                v["attributed"] = c.attributed.into();
                v
            })
            .collect();
        let v = serde_json::json!({
            "answer": marked,
            "grounded": usage.is_some(),
            "citations": citations,
            "passages": a.passages.iter().enumerate().map(|(i, h)| hit_json(i + 1, h)).collect::<Vec<_>>(),
            "usage": usage.map(|c| serde_json::json!({
                "prompt_tokens": c.usage.prompt_tokens,
                "completion_tokens": c.usage.completion_tokens,
            })),
            "timings": {
                "retrieval_ms": a.retrieval_ms,
                "ttft_ms": usage.map(|c| c.timings.ttft_ms),
                "tokens_per_s": usage.map(|c| c.timings.decode_tokens_per_s),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let sources: Vec<Source> = a
        .passages
        .iter()
        .enumerate()
        .map(|(i, h)| Source {
            n: i + 1,
            source: h.source.clone(),
            title: h.title.clone(),
            page: h.chunk.page_start.zip(h.chunk.page_end),
            heading: h.chunk.heading.clone(),
        })
        .collect();
    print_sources(&sources, &cites);
    Ok(ExitCode::SUCCESS)
}

fn hit_json(n: usize, h: &Hit) -> Value {
    serde_json::json!({
        "n": n,
        "doc_id": h.chunk.doc_id.to_hex(),
        "source": h.source,
        "title": h.title,
        "page_start": h.chunk.page_start,
        "page_end": h.chunk.page_end,
        "heading": h.chunk.heading,
        "span": [h.chunk.span_start, h.chunk.span_end],
        "text": h.chunk.text,
    })
}

fn print_sources(sources: &[Source], cites: &[usize]) {
    println!();
    if sources.is_empty() {
        return;
    }
    println!();
    let heading = if cites.is_empty() {
        "Passages given to the model (none cited):"
    } else {
        "Sources:"
    };
    println!("{heading}");
    for s in sources {
        let mark = if cites.contains(&s.n) { "*" } else { " " };
        let name = s.source.rsplit(['/', '\\']).next().unwrap_or(&s.source);
        let mut line = format!("{mark}[{}] {name}", s.n);
        if let Some(t) = &s.title {
            line.push_str(&format!(" — {t}"));
        }
        match s.page {
            Some((a, b)) if a != b => line.push_str(&format!(", pp. {a}-{b}")),
            Some((a, _)) => line.push_str(&format!(", p. {a}")),
            None if !s.heading.is_empty() => {
                line.push_str(&format!(", § {}", s.heading.join(" › ")));
            }
            None => {}
        }
        println!("{line}");
    }
}

async fn remote(
    url: &str,
    c: &CollectionName,
    mode: SearchMode,
    args: &AskArgs,
) -> anyhow::Result<ExitCode> {
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
    let endpoint = format!("{}/v1/collections/{c}/ask", url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let mut req = client
        .post(&endpoint)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = &args.api_key {
        req = req.bearer_auth(k);
    }
    let mut resp = req
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
    let mut buf = String::new();
    let mut out = std::io::stdout();
    let mut sources = Vec::new();
    while let Some(bytes) = resp.chunk().await.context("reading the answer")? {
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (name, data) = parse_event(&block);
            let v: Value = match serde_json::from_str(&data) {
                Ok(v) => v,
                Err(_) => continue,
            };
            match name.as_str() {
                "passages" => sources = v["passages"].as_array().cloned().unwrap_or_default(),
                "token" if !args.json => {
                    write!(out, "{}", v["text"].as_str().unwrap_or(""))?;
                    out.flush()?;
                }
                "done" => {
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&v)?);
                        return Ok(ExitCode::SUCCESS);
                    }
                    let cites: Vec<usize> = v["citations"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|c| c["n"].as_u64().map(|n| n as usize))
                                .collect()
                        })
                        .unwrap_or_default();
                    let list: Vec<Source> = sources
                        .iter()
                        .enumerate()
                        .map(|(i, p)| Source {
                            n: i + 1,
                            source: p["source"].as_str().unwrap_or("").to_owned(),
                            title: p["title"].as_str().map(str::to_owned),
                            page: p["page_start"]
                                .as_u64()
                                .zip(p["page_end"].as_u64())
                                .map(|(a, b)| (a as u32, b as u32)),
                            heading: p["heading"]
                                .as_array()
                                .map(|h| {
                                    h.iter()
                                        .filter_map(|x| x.as_str().map(str::to_owned))
                                        .collect()
                                })
                                .unwrap_or_default(),
                        })
                        .collect();
                    print_sources(&list, &cites);
                    return Ok(ExitCode::SUCCESS);
                }
                "error" => bail!(
                    "the server failed while answering: {}",
                    v["error"]["message"].as_str().unwrap_or("unknown error")
                ),
                _ => {}
            }
        }
    }
    bail!("the server closed the stream before the answer was complete")
}

/// The event name and data of one SSE block.
fn parse_event(block: &str) -> (String, String) {
    let mut name = String::from("message");
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (name, data.join("\n"))
}
