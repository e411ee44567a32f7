//! The connect proxy: for cookie sessions the backend vouches for a connection. The server POSTs
//! the upgrade request's `Cookie` header and the headers named in `auth.proxy_headers` to
//! `auth.proxy_url`; a 2xx answer `{"user": "17", "channels": [...], "subs": [...], "info": {...}}` authenticates
//! the connection, anything else rejects it (close 4003).
//!
//! Beside it, two optional proxies that run per command of an authenticated connection:
//! - the **subscribe proxy** (`auth.subscribe_proxy_url`) is asked about a channel the static rules
//!   refuse (not listed in the token, private namespace); 2xx allows it, 403 or any other 4xx
//!   refuses it (103), a 5xx, timeout or unreachable backend answers 108 (fail closed);
//! - the **publish proxy** (`auth.publish_proxy_url`) sees every client publication that passed
//!   the namespace's rules: 2xx `{}` approves it unchanged, 2xx `{"data": …}` replaces the data,
//!   4xx refuses it (103, or the `{"error": {"code", "message"}}` the backend answered with, when
//!   the code is one of the protocol's), 5xx/timeout answers 108 and nothing is published.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::{identity_from, AuthError, Identity};
use crate::protocol::{ChannelName, ClientError};

#[derive(Deserialize)]
struct ProxyAnswer {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    subs: Vec<String>,
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

/// Asks the backend who this connection is (`transport`: `websocket` or `sse`).
pub async fn connect(
    url: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
    client_id: &str,
    transport: &str,
    timeout: Duration,
) -> Result<Identity, AuthError> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body =
        serde_json::to_vec(&serde_json::json!({"client": client_id, "transport": transport}))
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
    identity_from(a.user, a.channels, a.subs, a.info, a.expire_at)
        .map_err(|_| AuthError::ProxyRejected)
}

/// POSTs `body` as JSON to `url` within `timeout`: the status and the answer's bytes, or `None`
/// when the backend could not be reached or answered too late.
async fn post_json(url: &str, body: &serde_json::Value, timeout: Duration) -> Option<(u16, Bytes)> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("json"),
        )))
        .ok()?;
    let res = tokio::time::timeout(timeout, client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = res.status().as_u16();
    let bytes = tokio::time::timeout(timeout, res.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some((status, bytes))
}

/// The part of an identity a backend sees in the subscribe and publish proxies.
fn who(client: &str, me: &Identity) -> serde_json::Value {
    let info = me
        .info
        .as_ref()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({"client": client, "user": &*me.user, "info": info})
}

/// A refusal the backend explained with one of the protocol's error codes, else 103.
fn refusal(body: &[u8]) -> ClientError {
    #[derive(Deserialize)]
    struct Answer {
        error: Option<ErrorBody>,
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        code: u16,
    }
    match serde_json::from_slice::<Answer>(body)
        .ok()
        .and_then(|a| a.error)
        .map(|e| e.code)
    {
        Some(101) => ClientError::Unauthorized,
        Some(102) => ClientError::UnknownChannel,
        Some(106) => ClientError::LimitExceeded,
        Some(107) => ClientError::BadRequest("refused by the backend"),
        Some(110) => ClientError::TooManyRequests,
        _ => ClientError::PermissionDenied,
    }
}

/// Asks the subscribe proxy whether `me` may subscribe to `channel`.
pub async fn subscribe(
    url: &str,
    client: &str,
    me: &Identity,
    channel: &ChannelName,
    timeout: Duration,
) -> Result<(), ClientError> {
    let mut body = who(client, me);
    body["channel"] = serde_json::json!(channel.as_str());
    match post_json(url, &body, timeout).await {
        Some((status, _)) if (200..300).contains(&status) => Ok(()),
        Some((status, body)) if (400..500).contains(&status) => Err(refusal(&body)),
        _ => Err(ClientError::NotAvailable),
    }
}

/// Asks the publish proxy about a client publication; returns the data to publish (the
/// client's, or the backend's replacement).
pub async fn publish(
    url: &str,
    client: &str,
    me: &Identity,
    channel: &ChannelName,
    data: Bytes,
    timeout: Duration,
) -> Result<Bytes, ClientError> {
    let parsed: serde_json::Value =
        serde_json::from_slice(&data).map_err(|_| ClientError::BadRequest("malformed data"))?;
    let mut body = who(client, me);
    body["channel"] = serde_json::json!(channel.as_str());
    body["data"] = parsed;
    #[derive(Deserialize)]
    struct Approved<'a> {
        #[serde(borrow, default)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    match post_json(url, &body, timeout).await {
        Some((status, answer)) if (200..300).contains(&status) => {
            if answer.iter().all(u8::is_ascii_whitespace) {
                return Ok(data);
            }
            match serde_json::from_slice::<Approved>(&answer) {
                Ok(Approved { data: Some(new) }) => {
                    Ok(Bytes::copy_from_slice(new.get().as_bytes()))
                }
                Ok(Approved { data: None }) => Ok(data),
                // An answer we can't read is not an approval.
                Err(_) => Err(ClientError::NotAvailable),
            }
        }
        Some((status, body)) if (400..500).contains(&status) => Err(refusal(&body)),
        _ => Err(ClientError::NotAvailable),
    }
}
