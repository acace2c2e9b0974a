//! Records every API request in the audit log (see [`crate::audit`]): who (the key id, `open`
//! or `anonymous` for a refused request), what (an action named from the route), which
//! collection and document, and the outcome. Query text only with `server.audit_queries`.
//!
//! Requests refused for want of a valid key (401) cost the caller nothing, so they are not
//! written one by one: the first of each minute is, and the rest of that minute become one
//! `refused` entry with their count, written with the next entry after the minute ends. A
//! flood of keyless requests writes about two entries a minute, whatever its rate. Path
//! parameters are cut to [`MAX_PARAM`] bytes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::auth::Caller;
use crate::audit::AuditEvent;

fn action(method: &Method, route: &str) -> &'static str {
    match (method.as_str(), route) {
        ("POST", "/v1/collections/{c}/documents") => "upload",
        ("DELETE", "/v1/collections/{c}/documents/{id}") => "delete",
        ("POST", "/v1/collections/{c}/search") => "search",
        ("POST", "/v1/collections/{c}/ask") => "ask",
        ("POST", "/v1/collections/{c}/eval") => "eval",
        ("DELETE", "/v1/collections/{c}/conversations/{id}") => "delete_conversation",
        ("POST", "/v1/chat/completions") => "chat",
        ("POST", "/v1/embeddings") => "embed",
        ("GET", _) => "read",
        _ => "admin",
    }
}

/// Longest path parameter recorded, in bytes (valid collection names and ids are far shorter).
const MAX_PARAM: usize = 128;

/// How long refused keyless requests are counted before their count is written.
const TALLY_WINDOW: Duration = Duration::from_secs(60);

/// The values of `{c}` and `{id}` in `path` under the route template `route`, each cut to
/// [`MAX_PARAM`] bytes.
fn params(route: &str, path: &str) -> (Option<String>, Option<String>) {
    let (mut c, mut id) = (None, None);
    let cut = |v: &str| {
        let mut end = v.len().min(MAX_PARAM);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        v[..end].to_owned()
    };
    for (t, v) in route.split('/').zip(path.split('/')) {
        match t {
            "{c}" => c = Some(cut(v)),
            "{id}" | "{name}" => id = Some(cut(v)),
            _ => {}
        }
    }
    (c, id)
}

/// Keyless requests refused in the current window.
#[derive(Default)]
pub(crate) struct RefusedTally {
    inner: Mutex<Option<Window>>,
}

struct Window {
    opened: Instant,
    /// Refused requests after the window's first (which was written on its own).
    more: u64,
}

impl RefusedTally {
    /// Counts one refused keyless request: `true` when it opens a window and is to be written
    /// on its own.
    fn count(&self) -> bool {
        let mut w = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match w.as_mut() {
            Some(w) if w.opened.elapsed() < TALLY_WINDOW => {
                w.more += 1;
                false
            }
            _ => {
                *w = Some(Window {
                    opened: Instant::now(),
                    more: 0,
                });
                true
            }
        }
    }

    /// The count of a window that has ended with requests past its first, taken out.
    fn closed(&self, now: Instant) -> Option<u64> {
        let mut w = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match w.as_mut() {
            Some(win) if now.duration_since(win.opened) >= TALLY_WINDOW && win.more > 0 => {
                let n = win.more;
                win.more = 0;
                Some(n)
            }
            _ => None,
        }
    }
}

/// The question or query of a search or ask body.
fn query_text(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("query")
        .or_else(|| v.get("question"))
        .and_then(|q| q.as_str())
        .map(|q| q.chars().take(2000).collect())
}

pub(crate) async fn record(
    state: axum::extract::State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    if route == "/metrics" || route == "/v1/models" {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let act = action(&method, &route);
    let (collection, mut document) = params(&route, req.uri().path());
    let (req, query) = if state.config.audit_queries && matches!(act, "search" | "ask") {
        let (parts, body) = req.into_parts();
        match axum::body::to_bytes(body, state.config.max_json_bytes).await {
            Ok(bytes) => {
                let q = query_text(&bytes);
                (Request::from_parts(parts, axum::body::Body::from(bytes)), q)
            }
            Err(_) => (Request::from_parts(parts, axum::body::Body::empty()), None),
        }
    } else {
        (req, None)
    };
    let resp = next.run(req).await;
    let caller = resp.extensions().get::<Caller>();
    let keyless_refusal = caller.is_none() && resp.status() == StatusCode::UNAUTHORIZED;
    let actor = caller.map_or_else(|| "anonymous".to_owned(), |c| c.id().to_owned());
    if let Some(n) = state.refused.closed(Instant::now()) {
        let summary = AuditEvent {
            actor: "anonymous".into(),
            action: "refused".into(),
            target: format!(
                "{n} more requests without a valid key in the minute after the last anonymous entry"
            ),
            outcome: StatusCode::UNAUTHORIZED.as_u16(),
            ..AuditEvent::default()
        };
        if let Err(e) = state.audit.append(summary).await {
            tracing::error!(error = %e, "writing the audit log failed");
        }
    }
    if keyless_refusal && !state.refused.count() {
        return resp;
    }
    if document.is_none() && act == "upload" {
        document = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.rsplit('/').next())
            .map(str::to_owned);
    }
    let ev = AuditEvent {
        actor,
        action: act.to_owned(),
        target: format!("{method} {route}"),
        collection,
        document,
        outcome: resp.status().as_u16(),
        query,
    };
    if let Err(e) = state.audit.append(ev).await {
        tracing::error!(error = %e, "writing the audit log failed");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_of_refusals_is_one_entry_and_a_count() {
        let t = RefusedTally::default();
        assert!(t.count(), "the first is written on its own");
        assert!((0..999).all(|_| !t.count()));
        let now = Instant::now();
        assert_eq!(t.closed(now), None, "the window is still open");
        let later = now + TALLY_WINDOW + Duration::from_secs(1);
        assert_eq!(t.closed(later), Some(999));
        assert_eq!(t.closed(later), None, "taken out once");
        // A window with nothing past its first leaves no summary.
        let t = RefusedTally::default();
        assert!(t.count());
        assert_eq!(t.closed(later), None);
    }

    #[test]
    fn routes_name_actions_and_parameters() {
        assert_eq!(action(&Method::POST, "/v1/collections/{c}/ask"), "ask");
        assert_eq!(action(&Method::POST, "/v1/collections/{c}/eval"), "eval");
        assert_eq!(action(&Method::DELETE, "/v1/collections/{c}"), "admin");
        assert_eq!(
            action(&Method::GET, "/v1/collections/{c}/documents/{id}/raw"),
            "read"
        );
        assert_eq!(
            params(
                "/v1/collections/{c}/documents/{id}",
                "/v1/collections/hr/documents/ab12"
            ),
            (Some("hr".into()), Some("ab12".into()))
        );
        assert_eq!(params("/v1/embeddings", "/v1/embeddings"), (None, None));
        let long = format!(
            "/v1/collections/{}/documents/d{}",
            "c".repeat(5000),
            "é".repeat(3000)
        );
        let (c, id) = params("/v1/collections/{c}/documents/{id}", &long);
        assert_eq!(c.unwrap().len(), MAX_PARAM);
        assert_eq!(id.unwrap().len(), MAX_PARAM - 1);
        assert_eq!(
            query_text(br#"{"question": "why?"}"#).as_deref(),
            Some("why?")
        );
    }
}
