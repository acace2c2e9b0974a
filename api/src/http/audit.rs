//! Records every API request in the audit log (see [`crate::audit`]): who (the key id, `open`
//! or `anonymous` for a refused request), what (an action named from the route), which
//! collection and document, and the outcome. Query text only with `server.audit_queries`.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
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
        ("POST", "/v1/chat/completions") => "chat",
        ("POST", "/v1/embeddings") => "embed",
        ("GET", _) => "read",
        _ => "admin",
    }
}

/// The values of `{c}` and `{id}` in `path` under the route template `route`.
fn params(route: &str, path: &str) -> (Option<String>, Option<String>) {
    let (mut c, mut id) = (None, None);
    for (t, v) in route.split('/').zip(path.split('/')) {
        match t {
            "{c}" => c = Some(v.to_owned()),
            "{id}" | "{name}" => id = Some(v.to_owned()),
            _ => {}
        }
    }
    (c, id)
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
    let actor = resp
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_owned(), |c| c.id().to_owned());
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
        assert_eq!(
            query_text(br#"{"question": "why?"}"#).as_deref(),
            Some("why?")
        );
    }
}
