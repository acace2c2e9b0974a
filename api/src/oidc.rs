//! Identities from the organisation's identity provider: OpenID Connect / OAuth 2 access
//! tokens (JWTs) verified against the provider's signing keys (JWKS), beside API keys.
//!
//! The keys come from a file (`jwks_file`), or from the issuer: its discovery document
//! (`{issuer}/.well-known/openid-configuration`) names `jwks_uri`. Fetching is an outbound
//! connection, so the issuer's origin (and the key URL's) must be listed in
//! `residency.egress_allow`, and the residency report shows it. Keys are fetched again every
//! `jwks_refresh_secs`, and at once (at most every 10 s) when a token names a key id the set
//! lacks: a provider that rotates its keys publishes the new one before it signs with it.
//!
//! A token is accepted when it is signed with an asymmetric algorithm (RS*, PS*, ES*, EdDSA:
//! never HS*, whose secret would be the public key, nor `none`) by a key of the set, its `iss`
//! is the issuer, its `aud` holds the audience, and `exp` (required) and `nbf` hold within
//! `leeway_secs` of the clock. Claims map to a caller: the user (`user_claim`), groups
//! (`groups_claim`, a list or a space-separated string), role and collections (claims, else
//! the configured defaults).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth_index::EgressClient;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use crate::error::{Result, ServiceError};
use crate::keys::Role;

/// How soon after one fetch an unknown key id may cause another.
const REFETCH_AFTER: Duration = Duration::from_secs(10);

/// `[server.oidc]`: accept access tokens from an identity provider.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL, exactly as its tokens' `iss` claim says it.
    pub issuer: String,
    /// The audience tokens must be issued for (`aud`).
    pub audience: String,
    /// A file holding the provider's JWKS; without it the keys are fetched from the issuer
    /// (which must then be in `residency.egress_allow`).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The claim naming the user (default `sub`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The claim listing the user's groups (default `groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The claim giving the role, `reader`, `writer` or `admin` (default `hearth_role`).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// The claim listing the collections, or `*` (default `hearth_collections`).
    #[serde(default = "default_collections_claim")]
    pub collections_claim: String,
    /// The claim naming the tenant whose quotas the user's requests count against (default
    /// `hearth_tenant`; absent: none).
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The role of a token without the role claim (default `reader`).
    #[serde(default = "default_role")]
    pub default_role: Role,
    /// The collections of a token without the collections claim (default: none).
    #[serde(default)]
    pub default_collections: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 60).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// How often fetched keys are fetched again, in seconds (default 300).
    #[serde(default = "default_refresh")]
    pub jwks_refresh_secs: u64,
}

fn default_user_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_role_claim() -> String {
    "hearth_role".into()
}
fn default_collections_claim() -> String {
    "hearth_collections".into()
}
fn default_tenant_claim() -> String {
    "hearth_tenant".into()
}
fn default_role() -> Role {
    Role::Reader
}
fn default_leeway() -> u64 {
    60
}
fn default_refresh() -> u64 {
    300
}

impl OidcConfig {
    /// Checks the settings; `egress_allow` is `residency.egress_allow`.
    pub fn validate(&self, egress_allow: &[String]) -> Result<()> {
        let bad = |m: String| Err(ServiceError::InvalidInput(m));
        let url = url::Url::parse(&self.issuer).map_err(|e| {
            ServiceError::InvalidInput(format!(
                "server.oidc.issuer {:?} is not a URL: {e}",
                self.issuer
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return bad(format!(
                "server.oidc.issuer {:?} must be an http or https URL",
                self.issuer
            ));
        }
        if self.audience.trim().is_empty() {
            return bad("server.oidc.audience is empty".into());
        }
        if self.leeway_secs > 600 {
            return bad(format!(
                "server.oidc.leeway_secs must be at most 600, got {}",
                self.leeway_secs
            ));
        }
        if self.jwks_refresh_secs < 10 {
            return bad("server.oidc.jwks_refresh_secs must be at least 10".into());
        }
        for c in &self.default_collections {
            if c != "*" {
                hearth_index::CollectionName::new(c).map_err(|e| {
                    ServiceError::InvalidInput(format!("server.oidc.default_collections: {e}"))
                })?;
            }
        }
        if self.jwks_file.is_none() {
            let client = EgressClient::new(egress_allow)?;
            if !client.allows(&self.issuer) {
                return bad(format!(
                    "server.oidc fetches signing keys from {}, which is not in residency.egress_allow: add its origin there (or give server.oidc.jwks_file)",
                    self.issuer
                ));
            }
        }
        Ok(())
    }
}

/// Who a verified token says the caller is.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// The user (the configured claim).
    pub user: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The role.
    pub role: Role,
    /// The collections, or `*`.
    pub collections: Vec<String>,
    /// The tenant, when the token names one.
    pub tenant: Option<String>,
}

/// Where the keys come from.
enum Source {
    File(PathBuf),
    Issuer(EgressClient),
}

struct Keys {
    set: JwkSet,
    fetched: Option<Instant>,
}

/// Verifies tokens against the provider's keys.
pub struct OidcVerifier {
    config: OidcConfig,
    source: Source,
    keys: RwLock<Keys>,
    /// One fetch at a time.
    fetching: Mutex<()>,
}

/// Why a token was refused (the message of the 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl OidcVerifier {
    /// A verifier for `config` (already validated); `egress_allow` is
    /// `residency.egress_allow`. Reads the keys file, or tries a first fetch (a provider that
    /// is down now is tried again when a token comes).
    pub async fn new(config: OidcConfig, egress_allow: &[String]) -> Result<Self> {
        let source = match &config.jwks_file {
            Some(p) => Source::File(p.clone()),
            None => Source::Issuer(EgressClient::new(egress_allow)?),
        };
        let v = Self {
            config,
            source,
            keys: RwLock::new(Keys {
                set: JwkSet { keys: Vec::new() },
                fetched: None,
            }),
            fetching: Mutex::new(()),
        };
        match (&v.source, v.refresh().await) {
            (_, Ok(())) => {}
            (Source::File(p), Err(e)) => {
                return Err(ServiceError::InvalidInput(format!(
                    "server.oidc.jwks_file {}: {e}",
                    p.display()
                )));
            }
            (Source::Issuer(_), Err(e)) => {
                tracing::warn!(issuer = %v.config.issuer, "identity provider keys not fetched yet: {e}");
            }
        }
        Ok(v)
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Reads or fetches the key set.
    async fn refresh(&self) -> std::result::Result<(), String> {
        let _one = self.fetching.lock().await;
        let set: JwkSet = match &self.source {
            Source::File(p) => {
                let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
                serde_json::from_slice(&bytes).map_err(|e| format!("not a JWKS: {e}"))?
            }
            Source::Issuer(client) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let doc: Value = serde_json::from_slice(&client.get(&url).await?)
                    .map_err(|e| format!("{url}: not JSON: {e}"))?;
                let jwks_uri = doc["jwks_uri"]
                    .as_str()
                    .ok_or_else(|| format!("{url} names no jwks_uri"))?;
                serde_json::from_slice(&client.get(jwks_uri).await?)
                    .map_err(|e| format!("{jwks_uri}: not a JWKS: {e}"))?
            }
        };
        let mut keys = self.keys.write().await;
        keys.set = set;
        keys.fetched = Some(Instant::now());
        Ok(())
    }

    /// The key a token names, fetching the set again when it is stale or lacks the key.
    async fn key(&self, kid: Option<&str>) -> std::result::Result<Jwk, Refused> {
        let pick = |set: &JwkSet| -> Option<Jwk> {
            match kid {
                Some(k) => set.find(k).cloned(),
                // A token without a key id is accepted only from a provider with one key.
                None if set.keys.len() == 1 => set.keys.first().cloned(),
                None => None,
            }
        };
        let (found, fetched) = {
            let keys = self.keys.read().await;
            (pick(&keys.set), keys.fetched)
        };
        let stale = fetched
            .is_none_or(|t| t.elapsed() > Duration::from_secs(self.config.jwks_refresh_secs));
        let may_refetch = fetched.is_none_or(|t| t.elapsed() > REFETCH_AFTER);
        let found = if found.is_none() && may_refetch || stale {
            if let Err(e) = self.refresh().await {
                tracing::warn!(issuer = %self.config.issuer, "cannot fetch the identity provider's keys: {e}");
            }
            pick(&self.keys.read().await.set)
        } else {
            found
        };
        found.ok_or_else(|| {
            Refused(match kid {
                Some(k) => format!(
                    "the token is signed with key {k:?}, which the identity provider does not publish"
                ),
                None => "the token names no signing key (kid)".into(),
            })
        })
    }

    /// Verifies a token and maps its claims.
    pub async fn verify(&self, token: &str) -> std::result::Result<Identity, Refused> {
        let header =
            decode_header(token).map_err(|e| Refused(format!("not a readable token: {e}")))?;
        let alg = header.alg;
        if !ASYMMETRIC.contains(&alg) {
            return Err(Refused(format!(
                "tokens signed with {alg:?} are not accepted (only RS*, PS*, ES* and EdDSA)"
            )));
        }
        let jwk = self.key(header.kid.as_deref()).await?;
        if let Some(declared) = jwk.common.key_algorithm
            && format!("{declared:?}") != format!("{alg:?}")
        {
            return Err(Refused(format!(
                "the token says {alg:?} but its key is for {declared:?}"
            )));
        }
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| Refused(format!("the provider's key cannot be used: {e}")))?;
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = self.config.leeway_secs;
        v.validate_nbf = true;
        let claims = decode::<Value>(token, &key, &v)
            .map_err(|e| Refused(why(&e, &self.config)))?
            .claims;
        self.identity(&claims)
    }

    fn identity(&self, claims: &Value) -> std::result::Result<Identity, Refused> {
        let c = &self.config;
        let user = claims[&c.user_claim]
            .as_str()
            .ok_or_else(|| Refused(format!("the token has no {:?} claim", c.user_claim)))?
            .to_owned();
        hearth_index::check_name(&user)
            .map_err(|why| Refused(format!("the token's {:?} claim: {why}", c.user_claim)))?;
        let groups = strings(&claims[&c.groups_claim], &c.groups_claim)?.unwrap_or_default();
        for g in &groups {
            hearth_index::check_name(g)
                .map_err(|why| Refused(format!("the token's group {g:?}: {why}")))?;
        }
        let role = match claims.get(&c.role_claim) {
            None | Some(Value::Null) => c.default_role,
            Some(Value::String(r)) => r.parse().map_err(|_| {
                Refused(format!(
                    "the token's role {r:?} is not reader, writer or admin"
                ))
            })?,
            Some(other) => {
                return Err(Refused(format!(
                    "the token's {:?} claim is not a string: {other}",
                    c.role_claim
                )));
            }
        };
        let collections = strings(&claims[&c.collections_claim], &c.collections_claim)?
            .unwrap_or_else(|| c.default_collections.clone());
        let tenant = match claims.get(&c.tenant_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(other) => {
                return Err(Refused(format!(
                    "the token's {:?} claim is not a string: {other}",
                    c.tenant_claim
                )));
            }
        };
        Ok(Identity {
            user,
            groups,
            role,
            collections,
            tenant,
        })
    }
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A claim holding a list of strings, or one space-separated string (as `scope` is written).
fn strings(v: &Value, name: &str) -> std::result::Result<Option<Vec<String>>, Refused> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.split_whitespace().map(str::to_owned).collect())),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_owned).ok_or_else(|| {
                    Refused(format!(
                        "the token's {name:?} claim holds a non-string: {i}"
                    ))
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some),
        other @ (Value::Bool(_) | Value::Number(_) | Value::Object(_)) => Err(Refused(format!(
            "the token's {name:?} claim is not a list: {other}"
        ))),
    }
}

fn why(e: &jsonwebtoken::errors::Error, c: &OidcConfig) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    // `ErrorKind` is non-exhaustive: the kinds a user can act on are named, the rest shown.
    let kind = e.kind();
    if matches!(kind, K::ExpiredSignature) {
        format!(
            "the token has expired (allowing {} s of clock skew)",
            c.leeway_secs
        )
    } else if matches!(kind, K::ImmatureSignature) {
        "the token is not valid yet (nbf)".into()
    } else if matches!(kind, K::InvalidAudience) {
        format!("the token is not issued for audience {:?}", c.audience)
    } else if matches!(kind, K::InvalidIssuer) {
        format!("the token is not issued by {}", c.issuer)
    } else if matches!(kind, K::InvalidSignature) {
        "the token's signature does not verify".into()
    } else if let K::MissingRequiredClaim(claim) = kind {
        format!("the token has no {claim:?} claim")
    } else {
        format!("the token is refused: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn config(dir: &std::path::Path) -> OidcConfig {
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
            "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
            "e": "AQAB"}]});
        let p = dir.join("jwks.json");
        std::fs::write(&p, jwks.to_string()).unwrap();
        OidcConfig {
            issuer: "https://idp.example".into(),
            audience: "hearth".into(),
            jwks_file: Some(p),
            user_claim: default_user_claim(),
            groups_claim: default_groups_claim(),
            role_claim: default_role_claim(),
            collections_claim: default_collections_claim(),
            tenant_claim: default_tenant_claim(),
            default_role: Role::Reader,
            default_collections: vec!["corp".into()],
            leeway_secs: 60,
            jwks_refresh_secs: 300,
        }
    }

    #[tokio::test]
    async fn forged_and_symmetric_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = OidcVerifier::new(config(dir.path()), &[]).await.unwrap();
        let claims = serde_json::json!({"sub": "eve", "iss": "https://idp.example", "aud": "hearth",
            "exp": 4_000_000_000u64, "hearth_role": "admin", "hearth_collections": ["*"]});
        // HS256 with the provider's public key as the secret (the classic confusion), `none`,
        // and an RS256 token with a made-up signature.
        for (header, sig) in [
            (serde_json::json!({"alg": "HS256", "kid": "k1"}), "c2ln"),
            (serde_json::json!({"alg": "none", "kid": "k1"}), ""),
            (serde_json::json!({"alg": "RS256", "kid": "k1"}), "c2ln"),
            (serde_json::json!({"alg": "RS256", "kid": "k9"}), "c2ln"),
        ] {
            let token = format!("{}.{}.{sig}", b64(&header), b64(&claims));
            let e = v.verify(&token).await.unwrap_err();
            assert!(
                [
                    "not accepted",
                    "not a readable",
                    "does not verify",
                    "does not publish"
                ]
                .iter()
                .any(|m| e.0.contains(m)),
                "{header}: {e}"
            );
        }
        assert!(v.verify("hth_not_a_jwt").await.is_err());
    }

    #[tokio::test]
    async fn claims_map_to_user_groups_role_and_collections() {
        let dir = tempfile::tempdir().unwrap();
        let v = OidcVerifier::new(config(dir.path()), &[]).await.unwrap();
        let id = v
            .identity(&serde_json::json!({"sub": "lena@example.com", "groups": ["legal", "staff"]}))
            .unwrap();
        assert_eq!(id.user, "lena@example.com");
        assert_eq!(id.groups, ["legal", "staff"]);
        assert_eq!(id.role, Role::Reader);
        assert_eq!(id.collections, ["corp"]);
        let id = v
            .identity(
                &serde_json::json!({"sub": "ops", "groups": "a b", "hearth_role": "admin",
                "hearth_collections": ["*"]}),
            )
            .unwrap();
        assert_eq!((id.groups.len(), id.role), (2, Role::Admin));
        assert_eq!(id.collections, ["*"]);
        for bad in [
            serde_json::json!({"groups": ["a"]}),
            serde_json::json!({"sub": "x", "groups": ["a b"]}),
            serde_json::json!({"sub": "x", "groups": [1]}),
            serde_json::json!({"sub": "x", "hearth_role": "root"}),
            serde_json::json!({"sub": "x y"}),
        ] {
            assert!(v.identity(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fetching_keys_needs_the_issuer_on_the_egress_list() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.jwks_file = None;
        let e = c.validate(&[]).unwrap_err().to_string();
        assert!(e.contains("residency.egress_allow"), "{e}");
        c.validate(&["https://idp.example:443".into()]).unwrap();
        c.issuer = "ftp://idp".into();
        assert!(c.validate(&[]).is_err());
    }
}
