//! The server API for backends (`POST /api/*`, JSON, `Authorization: apikey <key>`), documented
//! in docs/openapi.yaml. Errors are `{"error": {"code", "message"}}` with a 4xx/5xx status.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::broker::{BrokerError, Control, PublishRequest, Published};
use crate::http::{error_response, json_response, Body};
use crate::hub::client::{history_page, presence_map};
use crate::hub::Node;
use crate::metrics::metrics;
use crate::protocol::{reply, ChannelName, ClientError, Position};

/// The routes, in the order docs/openapi.yaml lists them (their metric labels: metrics.rs).
pub use crate::metrics::API_ROUTES as ROUTES;

pub async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let route = ROUTES
        .iter()
        .find(|r| **r == path)
        .map(|r| &r[5..])
        .unwrap_or("unknown");
    let resp = match serve(node, route, req).await {
        Ok(v) => json_response(200, &v),
        Err(ApiError::Client(e)) => {
            crate::metrics::count_error(e.code());
            error_response(e.http_status(), e.code(), &e.to_string())
        }
        Err(ApiError::Status(status, code, msg)) => error_response(status, code, msg),
    };
    metrics()
        .api_requests
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    resp
}

enum ApiError {
    Client(ClientError),
    Status(u16, u16, &'static str),
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        ApiError::Client(e)
    }
}

type ApiResult = Result<Value, ApiError>;

/// Compares in constant time so the key can't be guessed byte by byte from response timings.
fn key_matches(given: &[u8], key: &[u8]) -> bool {
    given.len() == key.len() && given.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn authorized(node: &Node, req: &Request<Incoming>) -> bool {
    let Some(h) = req.headers().get(hyper::header::AUTHORIZATION) else {
        return false;
    };
    let Ok(h) = h.to_str() else { return false };
    let Some((scheme, key)) = h.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("apikey")
        && key_matches(key.trim().as_bytes(), node.config.api.key.as_bytes())
}

async fn serve(node: &Arc<Node>, route: &str, req: Request<Incoming>) -> ApiResult {
    if route == "unknown" {
        return Err(ApiError::Status(404, 104, "no such API method"));
    }
    if req.method() != Method::POST {
        return Err(ApiError::Status(405, 104, "use POST"));
    }
    if !authorized(node, &req) {
        return Err(ApiError::Status(
            401,
            101,
            "missing or wrong API key (Authorization: apikey <key>)",
        ));
    }
    let body = Limited::new(req.into_body(), node.config.api.max_body_size)
        .collect()
        .await
        .map_err(|_| ApiError::Status(413, 106, "request body too large"))?
        .to_bytes();
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    match route {
        "publish" => publish(node, parse(body)?).await,
        "broadcast" => broadcast(node, parse(body)?).await,
        "disconnect" => disconnect(node, parse(body)?).await,
        "unsubscribe" => unsubscribe(node, parse(body)?).await,
        "subscribe" => subscribe(node, parse(body)?).await,
        "presence" => presence(node, parse(body)?).await,
        "presence_stats" => presence_stats(node, parse(body)?).await,
        "history" => history(node, parse(body)?).await,
        "info" => info(node).await,
        "cancel" => cancel(node, parse(body)?).await,
        _ => Err(ApiError::Status(404, 104, "no such API method")),
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|_| ApiError::Client(ClientError::BadRequest("malformed JSON body")))
}

fn channel(
    node: &Node,
    name: &str,
) -> Result<(ChannelName, crate::config::NamespaceConfig), ClientError> {
    let ch = ChannelName::parse(name)?;
    let ns = node
        .namespace(&ch)
        .ok_or(ClientError::UnknownChannel)?
        .clone();
    Ok((ch, ns))
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    deliver_at: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn published(p: Published) -> Value {
    match p {
        Published::Now(pos) => json!({"offset": pos.offset, "epoch": &*pos.epoch}),
        Published::Scheduled(id) => json!({ "scheduled": id }),
    }
}

async fn publish_one(
    node: &Node,
    name: &str,
    data: &RawValue,
    deliver_at: Option<&str>,
    idempotency_key: Option<String>,
) -> Result<Value, ClientError> {
    let (ch, ns) = channel(node, name)?;
    // Scheduled ones too: refused now rather than closing every subscriber at delivery time.
    reply::check_publication_size(
        &ch,
        data.get().len(),
        0,
        node.config.limits.outbound_queue_bytes,
    )?;
    let req = PublishRequest {
        channel: ch,
        data: Bytes::copy_from_slice(data.get().as_bytes()),
        info: None,
        options: Node::channel_options(&ns),
        // An empty key is no key (else every later "" would be deduplicated away).
        idempotency_key: idempotency_key.filter(|k| !k.is_empty()),
    };
    let outcome = match deliver_at {
        Some(at) => {
            let at =
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| ClientError::BadRequest("deliver_at must be an RFC 3339 time"))?;
            node.broker
                .schedule(SystemTime::from(at), req)
                .await
                .map_err(|e| e.client_error())?
        }
        None => {
            let p = node
                .broker
                .publish(req)
                .await
                .map_err(|e| e.client_error())?;
            metrics().publications.with_label_values(&["api"]).inc();
            p
        }
    };
    Ok(published(outcome))
}

async fn publish(node: &Node, b: PublishBody<'_>) -> ApiResult {
    Ok(publish_one(
        node,
        &b.channel,
        b.data,
        b.deliver_at.as_deref(),
        b.idempotency_key,
    )
    .await?)
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    channels: Vec<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn broadcast(node: &Node, b: BroadcastBody<'_>) -> ApiResult {
    if b.channels.is_empty() {
        return Err(ClientError::BadRequest("channels must not be empty").into());
    }
    let mut responses = Vec::with_capacity(b.channels.len());
    for ch in &b.channels {
        responses.push(match publish_one(node, ch, b.data, None, None).await {
            Ok(r) => json!({ "result": r }),
            Err(e) => {
                crate::metrics::count_error(e.code());
                json!({"error": {"code": e.code(), "message": e.to_string()}})
            }
        });
    }
    Ok(json!({ "responses": responses }))
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: String,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

async fn disconnect(node: &Node, b: DisconnectBody) -> ApiResult {
    let code = b.code.unwrap_or(4000);
    if !(4000..=4999).contains(&code) {
        return Err(ClientError::BadRequest("code must be in 4000..=4999").into());
    }
    // A close reason must fit in a control frame (125 bytes, 2 of them the code).
    let reason = match b.reason {
        Some(r) if r.len() > 123 => {
            return Err(ClientError::BadRequest("reason longer than 123 bytes").into())
        }
        Some(r) if !r.is_empty() => r,
        _ => crate::protocol::CloseCode::from_u16(code)
            .unwrap_or(crate::protocol::CloseCode::ServerClose)
            .reason()
            .to_string(),
    };
    node.broker
        .control(Control::DisconnectUser {
            user: b.user,
            code,
            reason,
        })
        .await
        .map_err(|e| e.client_error())?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct CancelBody {
    id: String,
}

/// [ext] Cancels a scheduled publication that is still waiting.
async fn cancel(node: &Node, b: CancelBody) -> ApiResult {
    match node.broker.cancel(&b.id).await {
        Ok(()) => Ok(json!({})),
        Err(BrokerError::NotFound) => Err(ApiError::Status(
            404,
            107,
            "no waiting scheduled publication with this id (unknown, delivered or cancelled)",
        )),
        Err(e) => Err(e.client_error().into()),
    }
}

#[derive(Deserialize)]
struct UserChannelBody {
    user: String,
    channel: String,
}

async fn unsubscribe(node: &Node, b: UserChannelBody) -> ApiResult {
    let ch = ChannelName::parse(&b.channel)?;
    node.broker
        .control(Control::UnsubscribeUser {
            user: b.user,
            channel: ch,
        })
        .await
        .map_err(|e| e.client_error())?;
    Ok(json!({}))
}

/// Subscribes every live connection of a user, on every node, to a channel (server-side
/// subscription: the backend decides, the token's permissions don't apply).
async fn subscribe(node: &Node, b: UserChannelBody) -> ApiResult {
    let (ch, _) = channel(node, &b.channel)?;
    if b.user.is_empty() {
        return Err(ApiError::Client(ClientError::BadRequest(
            "user must not be empty",
        )));
    }
    node.broker
        .control(Control::SubscribeUser {
            user: b.user,
            channel: ch,
        })
        .await
        .map_err(|e| e.client_error())?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ChannelBody {
    channel: String,
}

async fn presence(node: &Node, b: ChannelBody) -> ApiResult {
    let (ch, ns) = channel(node, &b.channel)?;
    if !ns.presence {
        return Err(ClientError::NotAvailable.into());
    }
    let entries = node
        .broker
        .presence(&ch)
        .await
        .map_err(|e| e.client_error())?;
    Ok(json!({ "clients": presence_map(&entries) }))
}

async fn presence_stats(node: &Node, b: ChannelBody) -> ApiResult {
    let (ch, ns) = channel(node, &b.channel)?;
    if !ns.presence {
        return Err(ClientError::NotAvailable.into());
    }
    let (clients, users) = node
        .broker
        .presence_stats(&ch)
        .await
        .map_err(|e| e.client_error())?;
    Ok(json!({"clients": clients, "users": users}))
}

#[derive(Deserialize)]
struct HistoryBody {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<Position>,
}

async fn history(node: &Node, b: HistoryBody) -> ApiResult {
    let (ch, ns) = channel(node, &b.channel)?;
    if ns.history_size == 0 {
        return Err(ClientError::NotAvailable.into());
    }
    let page = history_page(
        node,
        &ch,
        Node::channel_options(&ns),
        b.since.as_ref(),
        b.limit,
    )
    .await
    .map_err(|e| e.client_error())?;
    Ok(page.to_json())
}

async fn info(node: &Node) -> ApiResult {
    let nodes = node
        .broker
        .nodes(node.info())
        .await
        .map_err(|e| e.client_error())?;
    Ok(json!({ "nodes": nodes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_key_compare() {
        assert!(key_matches(b"abc", b"abc"));
        assert!(!key_matches(b"abd", b"abc"));
        assert!(!key_matches(b"ab", b"abc"));
    }
}
