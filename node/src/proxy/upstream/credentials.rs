//! The credential joch presents to a streamable-HTTP upstream, from the server's `spec.auth`
//! and a replicated secret opened on this node: a static bearer token, a header, an API key,
//! or an OAuth 2.0 access token from the client-credentials grant. Access tokens are cached per
//! node and server, fetched once however many calls wait for one, and replaced once 80% of
//! their lifetime has passed (or at once when the upstream answers 401). The agent's own
//! credentials never reach an upstream: this is the only source of upstream `Authorization`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use joch_raft_store::model::resource::{Auth, AuthKind};
use parking_lot::Mutex;
use serde_json::Value;

use super::UpstreamError;
use crate::proxy::admission::Admitted;
use crate::secrets::Keyring;

/// Longest an access token is kept when its endpoint says nothing (`expires_in` absent).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// How long the token endpoint may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token endpoint answer read.
const TOKEN_BODY_LIMIT: usize = 64 << 10;

/// A cached access token.
#[derive(Clone)]
struct Token {
    /// What it was fetched with: a change (new secret version, other endpoint) refetches.
    source: String,
    value: HeaderValue,
    /// When to fetch a new one (80% of its lifetime).
    refresh_at: Instant,
    /// When it stops being used at all.
    expires_at: Instant,
}

/// Upstream credentials of this node.
pub struct Credentials {
    keyring: Arc<Keyring>,
    http: reqwest::Client,
    tokens: Mutex<HashMap<String, Token>>,
    /// One fetch per server at a time.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Credentials {
    /// Credentials opened with this node's key-encryption keys.
    pub fn new(keyring: Arc<Keyring>) -> anyhow::Result<Credentials> {
        let http =
            reqwest::Client::builder().timeout(TOKEN_TIMEOUT).redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(Credentials { keyring, http, tokens: Mutex::default(), fetching: Mutex::default() })
    }

    /// The header to send to the admitted call's upstream, if its spec asks for one.
    pub async fn header(&self, adm: &Admitted) -> Result<Option<(HeaderName, HeaderValue)>, UpstreamError> {
        let Some(auth) = adm.server().spec.auth.as_ref().filter(|a| a.kind != AuthKind::None) else {
            return Ok(None);
        };
        let Some(secret) = &auth.secret_ref else {
            return Err(UpstreamError::credentials("spec.auth has no secretRef"));
        };
        let access = adm.access();
        let value = |key: &str| {
            self.keyring
                .value(&access, secret, key)
                .map_err(|e| UpstreamError::credentials(format!("upstream credential: {e}")))
        };
        let header = |name: &str, v: String| -> Result<(HeaderName, HeaderValue), UpstreamError> {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| UpstreamError::credentials(format!("spec.auth.header {name:?} is not a header name")))?;
            let mut v = HeaderValue::from_str(&v).map_err(|_| {
                UpstreamError::credentials(format!("secret {:?}: the value cannot be sent in a header", secret.name))
            })?;
            v.set_sensitive(true);
            Ok((name, v))
        };
        match auth.kind {
            AuthKind::None => Ok(None),
            AuthKind::Bearer => {
                let (t, _) = value("token")?;
                header("authorization", format!("Bearer {t}")).map(Some)
            }
            AuthKind::Header | AuthKind::ApiKey => {
                let (t, _) = value("token")?;
                header(auth.header_name(), t).map(Some)
            }
            AuthKind::Oauth2 => {
                let (id, version) = value("client_id")?;
                let (secret_value, _) = value("client_secret")?;
                let url = match &auth.token_url {
                    Some(u) => u.clone(),
                    None => {
                        value("token_url")
                            .map_err(|e| {
                                UpstreamError::credentials(format!(
                                    "{}: no token endpoint (set spec.auth.tokenUrl, or key token_url in the secret)",
                                    e.message
                                ))
                            })?
                            .0
                    }
                };
                let source = format!("{}#{version}|{url}|{:?}|{:?}", secret.name, auth.scopes, auth.audience);
                let token = self.access_token(&adm.server().name, auth, &url, &source, &id, &secret_value).await?;
                Ok(Some((http::header::AUTHORIZATION, token)))
            }
        }
    }

    /// The upstream refused the credential (401): a cached access token is dropped, so the next
    /// call fetches a new one.
    pub fn refused(&self, server: &str) {
        self.tokens.lock().remove(server);
    }

    fn cached(&self, server: &str, source: &str, now: Instant) -> Option<Token> {
        self.tokens.lock().get(server).filter(|t| t.source == source && now < t.expires_at).cloned()
    }

    #[allow(clippy::too_many_arguments)]
    async fn access_token(
        &self,
        server: &str,
        auth: &Auth,
        url: &str,
        source: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Result<HeaderValue, UpstreamError> {
        if let Some(t) = self.cached(server, source, Instant::now()).filter(|t| Instant::now() < t.refresh_at) {
            return Ok(t.value);
        }
        let lock = self.fetching.lock().entry(server.to_string()).or_default().clone();
        let _one = lock.lock().await;
        let now = Instant::now();
        // Another call may have fetched it meanwhile.
        let held = self.cached(server, source, now);
        if let Some(t) = held.as_ref().filter(|t| now < t.refresh_at) {
            return Ok(t.value.clone());
        }
        match self.fetch(auth, url, client_id, client_secret).await {
            Ok((value, lifetime)) => {
                let t = Token {
                    source: source.to_string(),
                    value: value.clone(),
                    refresh_at: now + lifetime.mul_f64(0.8),
                    expires_at: now + lifetime,
                };
                self.tokens.lock().insert(server.to_string(), t);
                metrics::counter!("joch_upstream_oauth_tokens_total", "outcome" => "fetched").increment(1);
                Ok(value)
            }
            Err(e) => match held {
                // Refreshing early failed: the token held is still good until it expires.
                Some(t) => {
                    tracing::warn!(server, error = %e.message, "refreshing the upstream access token failed; the current one is still valid");
                    metrics::counter!("joch_upstream_oauth_tokens_total", "outcome" => "refresh-failed").increment(1);
                    Ok(t.value)
                }
                None => {
                    metrics::counter!("joch_upstream_oauth_tokens_total", "outcome" => "failed").increment(1);
                    Err(e)
                }
            },
        }
    }

    /// The client-credentials grant (RFC 6749 §4.4), the client authenticating with HTTP Basic.
    async fn fetch(
        &self,
        auth: &Auth,
        url: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Result<(HeaderValue, Duration), UpstreamError> {
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        if !auth.scopes.is_empty() {
            form.push(("scope", auth.scopes.join(" ")));
        }
        if let Some(a) = &auth.audience {
            form.push(("audience", a.clone()));
        }
        let failed = |what: String| UpstreamError::credentials(format!("the OAuth token endpoint {url}: {what}"));
        let resp = self
            .http
            .post(url)
            .basic_auth(form_encode(client_id), Some(form_encode(client_secret)))
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.iter().map(|(k, v)| format!("{k}={}", form_encode(v))).collect::<Vec<_>>().join("&"))
            .send()
            .await
            .map_err(|e| failed(format!("unreachable ({e})")))?;
        let status = resp.status();
        let body =
            read_limited(resp, TOKEN_BODY_LIMIT).await.map_err(|e| failed(format!("reading its answer: {e}")))?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            // RFC 6749 §5.2: `error` and `error_description`; never echo anything else.
            let err = v.get("error").and_then(Value::as_str).unwrap_or("no error code");
            let desc = v.get("error_description").and_then(Value::as_str).unwrap_or_default();
            return Err(failed(format!("refused the client credentials ({status}: {err} {desc})")));
        }
        let token = v.get("access_token").and_then(Value::as_str).filter(|t| !t.is_empty());
        let token = token.ok_or_else(|| failed("its answer has no access_token".into()))?;
        let kind = v.get("token_type").and_then(Value::as_str).unwrap_or("Bearer");
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(failed(format!("token_type {kind:?} is not supported (bearer only)")));
        }
        let lifetime = v
            .get("expires_in")
            .and_then(|e| e.as_u64().or_else(|| e.as_str()?.parse().ok()))
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| failed("the access_token is not a header value".into()))?;
        value.set_sensitive(true);
        Ok((value, lifetime))
    }
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1 also wants the
/// client id and secret encoded so before HTTP Basic).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn read_limited(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
