//! `hearth search`: ranked chunks for a question, with their document, page or heading, and
//! score; `--json` for scripts.

use std::process::ExitCode;

use anyhow::{Context, bail};
use hearth_api::{
    CollectionName, Condition, DocId, Filter, MetaValue, Reader, SearchHit, SearchMode, SearchQuery,
};

use crate::config::AppConfig;

#[derive(clap::Args)]
pub struct SearchArgs {
    /// What to look for, in your own words.
    query: String,
    /// Collection to search.
    #[arg(long, short)]
    pub(crate) collection: String,
    /// dense (meaning), bm25 (words) or hybrid (both, fused).
    #[arg(long, default_value = "hybrid")]
    mode: String,
    /// Keep only documents whose metadata matches: key=value, key=a|b|c (any of), key>=n,
    /// key<=n, key>n, key<n, or doc=DOC_ID. Repeatable; all must hold.
    #[arg(long = "filter", value_name = "CONDITION")]
    filters: Vec<String>,
    /// Number of chunks to return (1-1000).
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: AppConfig, args: SearchArgs) -> anyhow::Result<ExitCode> {
    let collection = CollectionName::new(&args.collection)?;
    let mode: SearchMode = args.mode.parse().map_err(|_| {
        anyhow::anyhow!("--mode must be dense, bm25 or hybrid, got {:?}", args.mode)
    })?;
    let filter = parse_filters(&args.filters)?;
    let service = super::service(&cfg).await?;
    let col = service.open(&collection).await?;
    let results = service
        .search(
            &col,
            SearchQuery {
                text: args.query.clone(),
                mode,
                top_k: args.top_k,
                filter,
                fusion: None,
                // The node's operator reads every document.
                reader: Reader::Everything,
            },
        )
        .await
        .context("searching")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(ExitCode::SUCCESS);
    }
    if results.hits.is_empty() {
        println!("no matching chunks in {collection:?}");
    }
    for h in &results.hits {
        println!(
            "{:>2}. {:.4}  {}{}",
            h.rank,
            h.score,
            h.file_name(),
            location(h)
        );
        println!("    {}", snippet(&h.text, 280));
    }
    let t = results.timings;
    println!(
        "{} hits in {:.1} ms (query embedding {:.1} ms, index {:.1} ms)",
        results.hits.len(),
        t.embed_ms + t.search_ms,
        t.embed_ms,
        t.search_ms
    );
    Ok(ExitCode::SUCCESS)
}

fn location(h: &SearchHit) -> String {
    match (h.page_start, h.page_end) {
        (Some(a), Some(b)) if a != b => return format!("  p. {a}-{b}"),
        (Some(a), _) => return format!("  p. {a}"),
        _ => {}
    }
    if h.heading.is_empty() {
        String::new()
    } else {
        format!("  § {}", h.heading.join(" › "))
    }
}

fn snippet(text: &str, max_chars: usize) -> String {
    let mut out: String = text.chars().take(max_chars).collect();
    if text.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

/// Parses `--filter` conditions (see [`SearchArgs::filters`]).
pub fn parse_filters(raw: &[String]) -> anyhow::Result<Option<Filter>> {
    let mut conditions = Vec::new();
    for f in raw {
        conditions.push(parse_condition(f).with_context(|| format!("--filter {f:?}"))?);
    }
    Ok((!conditions.is_empty()).then_some(Filter { conditions }))
}

fn parse_condition(f: &str) -> anyhow::Result<Condition> {
    // The first operator character ends the key (keys are [A-Za-z0-9_.-]), so a value may hold
    // `<` and `>` (an e-mail sender `Name <a@b>`).
    let op_at = f.find(['<', '>', '=']).unwrap_or(f.len());
    let (key, rest) = f.split_at(op_at);
    for op in [">=", "<=", ">", "<"] {
        if let Some(value) = rest.strip_prefix(op) {
            let key = key.trim().to_owned();
            let n: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite())
                .with_context(|| format!("{value:?} is not a number"))?;
            let (mut gt, mut gte, mut lt, mut lte) = (None, None, None, None);
            match op {
                ">=" => gte = Some(n),
                "<=" => lte = Some(n),
                ">" => gt = Some(n),
                _ => lt = Some(n),
            }
            return Ok(Condition::Range {
                key,
                gt,
                gte,
                lt,
                lte,
            });
        }
    }
    let Some((key, value)) = f.split_once('=') else {
        bail!("expected key=value, key=a|b, key>=n, key<=n, key>n or key<n");
    };
    let key = key.trim();
    if key.is_empty() {
        bail!("the key is empty");
    }
    let values: Vec<&str> = value.split('|').collect();
    if key == "doc" || key == "doc_id" {
        let ids = values
            .iter()
            .map(|v| v.trim().parse::<DocId>())
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Condition::DocIds(ids));
    }
    let parse = |v: &str| match v.parse::<f64>() {
        Ok(n) if n.is_finite() => MetaValue::Number(n),
        _ => MetaValue::Text(v.to_owned()),
    };
    Ok(if values.len() == 1 {
        Condition::Eq {
            key: key.to_owned(),
            value: parse(value),
        }
    } else {
        Condition::In {
            key: key.to_owned(),
            values: values.into_iter().map(parse).collect(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_syntax() {
        let f = parse_filters(&["team=ops".into(), "year>=2020".into(), "lang=en|de".into()])
            .unwrap()
            .unwrap();
        assert_eq!(
            f.conditions[0],
            Condition::Eq {
                key: "team".into(),
                value: MetaValue::Text("ops".into())
            }
        );
        assert!(
            matches!(&f.conditions[1], Condition::Range { key, gte: Some(n), .. } if key == "year" && *n == 2020.0)
        );
        assert!(matches!(&f.conditions[2], Condition::In { values, .. } if values.len() == 2));
        // A value may hold the operator characters (an e-mail sender).
        let f = parse_filters(&["from=Ravi <ravi@x.example>".into()])
            .unwrap()
            .unwrap();
        assert!(
            matches!(&f.conditions[0], Condition::Eq { key, value: MetaValue::Text(v) } if key == "from" && v == "Ravi <ravi@x.example>"),
            "{:?}",
            f.conditions
        );
        assert!(parse_filters(&["year>=soon".into()]).is_err());
        assert!(parse_filters(&["nokey".into()]).is_err());
        assert!(parse_filters(&["doc=xyz".into()]).is_err());
        assert!(parse_filters(&[]).unwrap().is_none());
    }
}
