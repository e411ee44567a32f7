//! The connect proxy: for cookie sessions the backend vouches for a connection. The server POSTs
//! the upgrade request's `Cookie` header and the headers named in `auth.proxy_headers` to
//! `auth.proxy_url`; a 2xx answer `{"user": "17", "channels": [...], "info": {...}}` authenticates
//! the connection, anything else rejects it (close 4003).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::{identity_from, AuthError, Identity};

#[derive(Deserialize)]
struct ProxyAnswer {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    info: Option<serde_json::Value>,
    #[serde(default)]
    expire_at: Option<u64>,
}

/// The headers to forward, picked from the upgrade request.
pub fn pick_headers(req: &HeaderMap, names: &[String]) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(c) = req.get(hyper::header::COOKIE) {
        out.push((hyper::header::COOKIE, c.clone()));
    }
    for n in names {
        if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
            for v in req.get_all(&name) {
                out.push((name.clone(), v.clone()));
            }
        }
    }
    out
}

/// Asks the backend who this connection is.
pub async fn connect(
    url: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
    client_id: &str,
    timeout: Duration,
) -> Result<Identity, AuthError> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body =
        serde_json::to_vec(&serde_json::json!({"client": client_id, "transport": "websocket"}))
            .expect("json");
    let mut req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| AuthError::ProxyUnavailable)?;
    for (k, v) in headers {
        req.headers_mut().append(k, v);
    }
    let res = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| AuthError::ProxyUnavailable)?
        .map_err(|_| AuthError::ProxyUnavailable)?;
    let status = res.status();
    let body = tokio::time::timeout(timeout, res.into_body().collect())
        .await
        .map_err(|_| AuthError::ProxyUnavailable)?
        .map_err(|_| AuthError::ProxyUnavailable)?
        .to_bytes();
    if status.is_server_error() {
        return Err(AuthError::ProxyUnavailable);
    }
    if !status.is_success() {
        return Err(AuthError::ProxyRejected);
    }
    let a: ProxyAnswer = serde_json::from_slice(&body).map_err(|_| AuthError::ProxyRejected)?;
    identity_from(a.user, a.channels, a.info, a.expire_at).map_err(|_| AuthError::ProxyRejected)
}
