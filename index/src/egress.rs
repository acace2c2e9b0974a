//! The process's one outbound HTTP client: the object store's, limited to an allowlist.
//!
//! hearth sends no telemetry and downloads nothing at run time; the only connections it opens
//! are to the configured S3-compatible store. This module makes that a property of the code
//! rather than of the configuration: the `object_store` S3 client is given an HTTP service that
//! refuses any request whose origin (scheme, host, port) is not on the list, before a socket is
//! opened. The underlying `reqwest` client ignores `HTTP(S)_PROXY` (a proxy would be a second
//! destination) and never follows redirects (a redirect could name any host).

use std::sync::Arc;
use std::time::Duration;

use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpService,
};
use url::Url;

use crate::error::{IndexError, Result};

/// `scheme://host:port` as the WHATWG URL standard normalises it (lowercase scheme and host,
/// IDNA hosts in punycode, IPv4 and IPv6 addresses in canonical form), with the scheme's default
/// port filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin(String);

impl Origin {
    /// The origin of an `http://` or `https://` URL.
    pub(crate) fn of_url(url: &str) -> Result<Self> {
        let bad = |why: &str| IndexError::InvalidInput(format!("invalid endpoint {url:?}: {why}"));
        let parsed = Url::parse(url).map_err(|e| {
            if e == url::ParseError::RelativeUrlWithoutBase {
                bad("no scheme")
            } else {
                bad(&e.to_string())
            }
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("credentials in the URL are not supported"));
        }
        Self::of_parsed(&parsed).ok_or_else(|| bad("the scheme must be http or https"))
    }

    /// `None` unless `url` is an `http` or `https` URL with a host.
    fn of_parsed(url: &Url) -> Option<Self> {
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        // `Host` displays IPv6 addresses in brackets; `port_or_known_default` fills in 80/443.
        let host = url.host()?;
        let port = url.port_or_known_default()?;
        Some(Self(format!("{}://{host}:{port}", url.scheme())))
    }

    /// The origin a request is for, normalised exactly as configured origins are.
    fn of_request(req: &HttpRequest) -> Option<Self> {
        Self::of_parsed(&Url::parse(&req.uri().to_string()).ok()?)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Builds the allowlisted client for `object_store`.
#[derive(Debug)]
pub(crate) struct AllowlistConnector {
    allowed: Arc<[Origin]>,
}

impl AllowlistConnector {
    pub(crate) fn new(allowed: Vec<Origin>) -> Self {
        Self {
            allowed: allowed.into(),
        }
    }
}

impl HttpConnector for AllowlistConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(Allowlisted {
            allowed: self.allowed.clone(),
            client,
        }))
    }
}

#[derive(Debug)]
struct Allowlisted {
    allowed: Arc<[Origin]>,
    client: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
#[error("outbound connection to {0} refused: not the configured object store (residency policy)")]
struct Refused(String);

#[async_trait::async_trait]
impl HttpService for Allowlisted {
    async fn call(&self, req: HttpRequest) -> std::result::Result<HttpResponse, HttpError> {
        match Origin::of_request(&req) {
            Some(o) if self.allowed.contains(&o) => HttpService::call(&self.client, req).await,
            other => {
                let target = other.map_or_else(|| req.uri().to_string(), |o| o.0);
                tracing::error!(target = %target, "outbound connection refused by the allowlist");
                // `Unknown` is not retried by object_store.
                Err(HttpError::new(HttpErrorKind::Unknown, Refused(target)))
            }
        }
    }
}

/// The one other outbound client: GET requests for small documents (an identity provider's
/// discovery document and signing keys) to origins the operator listed explicitly, with the
/// object store client's policy: no proxy, no redirects, the origin checked before a socket is
/// opened. Bodies are capped at 1 MiB.
#[derive(Clone, Debug)]
pub struct EgressClient {
    allowed: Arc<[Origin]>,
    client: reqwest::Client,
}

/// Largest body an [`EgressClient`] reads.
const MAX_FETCH_BYTES: usize = 1 << 20;

impl EgressClient {
    /// A client that may reach these origins (`scheme://host:port`, or URLs whose origin is
    /// taken) and no other.
    pub fn new<S: AsRef<str>>(allowed: &[S]) -> Result<Self> {
        let allowed = allowed
            .iter()
            .map(|u| Origin::of_url(u.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| IndexError::InvalidInput(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            allowed: allowed.into(),
            client,
        })
    }

    /// Whether a URL's origin is on the list.
    pub fn allows(&self, url: &str) -> bool {
        Origin::of_url(url).is_ok_and(|o| self.allowed.contains(&o))
    }

    /// GETs `url` (refused before any connection when its origin is not on the list); the
    /// body of a 200 answer, at most 1 MiB.
    pub async fn get(&self, url: &str) -> std::result::Result<Vec<u8>, String> {
        let origin = Origin::of_url(url).map_err(|e| e.to_string())?;
        if !self.allowed.contains(&origin) {
            tracing::error!(target = %origin.0, "outbound connection refused by the allowlist");
            return Err(format!(
                "outbound connection to {} refused: not on the egress allowlist (residency policy)",
                origin.0
            ));
        }
        let mut resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > MAX_FETCH_BYTES {
                return Err(format!("GET {url}: the answer is larger than 1 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised() {
        let o = |u: &str| Origin::of_url(u).map(|o| o.0);
        assert_eq!(o("http://127.0.0.1:8333").unwrap(), "http://127.0.0.1:8333");
        assert_eq!(
            o("HTTPS://S3.EU.Example.com/bucket").unwrap(),
            "https://s3.eu.example.com:443"
        );
        assert_eq!(
            o("http://[FD00::1]:9000/").unwrap(),
            "http://[fd00::1]:9000"
        );
        assert_eq!(o("http://store").unwrap(), "http://store:80");
        for bad in [
            "ftp://x",
            "127.0.0.1:8333",
            "http://",
            "http://h:99999",
            "http://u:p@h",
        ] {
            assert!(o(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_of_tricky_urls() {
        let o = |u: &str| Origin::of_url(u).map(|o| o.0);
        // The default port, written out or not, and a host in capitals.
        assert_eq!(
            o("https://S3.Example.COM:443").unwrap(),
            "https://s3.example.com:443"
        );
        assert_eq!(o("HTTP://Store:80/").unwrap(), "http://store:80");
        assert_eq!(o("http://store:443").unwrap(), "http://store:443");
        // IPv6 literals in any spelling come out in one canonical form.
        assert_eq!(
            o("http://[0:0:0:0:0:0:0:1]:9000").unwrap(),
            o("http://[::1]:9000").unwrap()
        );
        assert_eq!(o("https://[FD00:0::AB]").unwrap(), "https://[fd00::ab]:443");
        // Userinfo, even empty or user-only, is refused, not silently dropped; an `@` past the
        // authority is only part of the path.
        for bad in [
            "http://user@store",
            "http://:secret@store",
            "https://u:p@[::1]:9000",
        ] {
            let e = o(bad).unwrap_err().to_string();
            assert!(e.contains("credentials"), "{bad}: {e}");
        }
        assert_eq!(o("http://store/a@b").unwrap(), "http://store:80");
        // Not a host hearth could be allowed to reach.
        for bad in [
            "http://[::1",
            "http://[fd00::1]x:9000",
            "https://:443",
            "file:///etc",
        ] {
            assert!(o(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_origins_match_configured_ones() {
        for (configured, requested) in [
            ("http://[fd00::1]:9000", "http://[fd00::1]:9000/b/k"),
            ("https://s3.example.com", "https://S3.example.com/b/k?x=1"),
            ("http://10.0.0.1:8333", "http://10.0.0.1:8333/"),
            ("http://[::1]:80", "http://[0::1]/b/k"),
            ("https://store.example:443", "https://STORE.example/b/k"),
        ] {
            let req = http::Request::builder()
                .uri(requested)
                .body(object_store::client::HttpRequestBody::empty())
                .unwrap();
            assert_eq!(
                Origin::of_request(&req),
                Some(Origin::of_url(configured).unwrap())
            );
        }
    }

    #[tokio::test]
    async fn a_request_off_the_list_opens_no_connection() {
        use std::io::ErrorKind;
        // Two listeners on loopback: one allowed, one not.
        let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        other.set_nonblocking(true).unwrap();
        let ok = Origin::of_url(&format!("http://{}", allowed.local_addr().unwrap())).unwrap();
        let client = AllowlistConnector::new(vec![ok])
            .connect(&ClientOptions::default())
            .unwrap();
        let url = format!("http://{}/bucket/key", other.local_addr().unwrap());
        let req = http::Request::builder()
            .uri(&url)
            .body(object_store::client::HttpRequestBody::empty())
            .unwrap();
        let err = client.execute(req).await.unwrap_err();
        assert_eq!(err.kind(), HttpErrorKind::Unknown);
        let msg = err.to_string();
        let port = other.local_addr().unwrap().port().to_string();
        assert!(msg.contains("refused") && msg.contains(&port), "{msg}");
        match other.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            r => panic!("the refused origin saw a connection: {r:?}"),
        }
    }

    #[tokio::test]
    async fn the_fetch_client_reaches_only_listed_origins() {
        use std::io::ErrorKind;
        let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        other.set_nonblocking(true).unwrap();
        let client =
            EgressClient::new(&[format!("http://{}", allowed.local_addr().unwrap())]).unwrap();
        let url = format!("http://{}/jwks", other.local_addr().unwrap());
        assert!(!client.allows(&url));
        let err = client.get(&url).await.unwrap_err();
        assert!(err.contains("refused"), "{err}");
        match other.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            r => panic!("the refused origin saw a connection: {r:?}"),
        }
        assert!(client.allows(&format!("http://{}/x", allowed.local_addr().unwrap())));
    }
}
