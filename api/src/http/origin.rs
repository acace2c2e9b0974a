//! Open mode's guard against other web pages in the user's browser.
//!
//! With API keys, a page of another site cannot act as the user: the key travels in the
//! `Authorization` header, which a cross-site page can only set after a CORS preflight that
//! hearth never approves. Open mode has no key, so without this guard any page the user visits
//! could upload and read documents as an admin with a simple request (a form, or a `no-cors`
//! `text/plain` fetch), and a DNS-rebinding page (its own name re-pointed at 127.0.0.1) could
//! even read the answers. So in open mode:
//! - the request must be addressed to a loopback name (`localhost`, `127.x.y.z`, `[::1]`): a
//!   rebinding page's requests carry its own name in `Host` (421);
//! - a browser request must come from hearth's own page: `Sec-Fetch-Site` other than
//!   `same-origin` or `none` (typed into the address bar), or an `Origin` other than the one
//!   the request is addressed to, is refused (403). Clients that are not browsers send
//!   neither header and are unaffected.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// The middleware: in open mode, refuses requests addressed to another name or sent by
/// another site's page; with keys, passes everything.
pub(crate) async fn guard(
    state: axum::extract::State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if state.config.open {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        if let Err(e) = check(authority.as_deref(), req.headers()) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// The open mode's rules, on the request's authority (`host[:port]`, absent for an HTTP/1.0
/// client that sends no `Host`) and headers.
fn check(authority: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(a) = authority
        && !is_loopback_authority(a)
    {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected",
            format!(
                "this server runs without API keys (server.open) and answers only requests addressed to localhost, 127.0.0.1 or [::1], not {:?}",
                truncate(a)
            ),
        ));
    }
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)"))
    };
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Err(cross_site(format!(
            "this server runs without API keys (server.open) and refuses requests from other web pages (Sec-Fetch-Site: {})",
            truncate(site)
        )));
    }
    if let Some(origin) = text(header::ORIGIN.as_str()) {
        let own = authority.map(|a| format!("http://{a}"));
        if own.is_none_or(|own| !origin.eq_ignore_ascii_case(&own)) {
            return Err(cross_site(format!(
                "this server runs without API keys (server.open) and refuses requests from other web pages (Origin {:?})",
                truncate(origin)
            )));
        }
    }
    Ok(())
}

fn cross_site(m: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "cross_site", m)
}

/// At most 200 bytes of a header value in a message.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `host[:port]` names this machine's loopback interface by a name no other site can
/// be given: `localhost` (browsers resolve it to loopback themselves), an IPv4 address in
/// 127.0.0.0/8, or `[::1]`.
fn is_loopback_authority(a: &str) -> bool {
    let host = if let Some(rest) = a.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, "")) => h,
            Some((h, port)) if port.strip_prefix(':').is_some_and(is_port) => h,
            _ => return false,
        }
    } else {
        match a.split_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return false,
            None => a,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_port(p: &str) -> bool {
    p.parse::<u16>().is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_loopback_names_are_this_server() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example:8080",
            "127.1",
            "2130706433",
            "10.0.0.1:8080",
            "0.0.0.0:8080",
            "[::ffff:127.0.0.1]:8080",
            "[::1]x",
            "localhost:0",
            "localhost:99999",
            "localhost:80:80",
            "localhost::80",
            "[::1]::80",
            "",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }

    #[test]
    fn pages_of_other_origins_and_other_names_are_refused() {
        let none = HeaderMap::new();
        // curl, the CLI, scripts: no browser headers.
        assert!(check(Some("127.0.0.1:8080"), &none).is_ok());
        assert!(check(None, &none).is_ok());
        // hearth's own page.
        let own = headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(check(Some("127.0.0.1:8080"), &own).is_ok());
        assert!(
            check(
                Some("localhost:8080"),
                &headers(&[("sec-fetch-site", "none")])
            )
            .is_ok()
        );
        // A DNS-rebinding page: its own name in Host.
        let e = check(Some("rebind.example:8080"), &own).unwrap_err();
        assert_eq!(e.status, StatusCode::MISDIRECTED_REQUEST);
        assert!(e.message.contains("rebind.example"), "{}", e.message);
        // Another site's page, with or without Fetch Metadata.
        for h in [
            headers(&[
                ("origin", "http://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ]),
            headers(&[("origin", "http://evil.example")]),
            headers(&[("origin", "null")]),
            headers(&[("origin", "http://127.0.0.1:9999")]),
            headers(&[("origin", "http://localhost:8080")]),
            headers(&[("sec-fetch-site", "same-site")]),
            headers(&[("sec-fetch-site", "cross-site")]),
        ] {
            let e = check(Some("127.0.0.1:8080"), &h).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{h:?}");
            assert_eq!(e.code, "cross_site");
        }
        // An Origin without a Host to compare it with is not trusted.
        assert!(check(None, &headers(&[("origin", "http://127.0.0.1:8080")])).is_err());
    }
}
