//! The Pusher HTTP API on the public listener, `/apps/{app_id}/…`, signed as Pusher signs it
//! (`auth_key`, `auth_timestamp` within 600 s, `auth_version=1.0`, `body_md5`, `auth_signature`
//! = hex HMAC-SHA256 of `METHOD\nPATH\nsorted query`):
//!
//! - `POST events`, `POST batch_events`: publish through the broker like `/api/publish`.
//! - `GET channels` (`filter_by_prefix`, `info=user_count` for presence), `GET channels/{name}`
//!   (`occupied`, `user_count` and `subscription_count` for presence channels),
//!   `GET channels/{name}/users`.
//! - `POST users/{id}/terminate_connections`.
//!
//! Presence counts are fleet-wide (the broker's presence); `occupied` and the channel list of
//! non-presence channels are what this node sees (docs/pusher.md).

// Errors here are the HTTP response itself, built once on the error path.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::protocol::{self as p, Kind};
use crate::broker::{Control, PublishRequest};
use crate::config::PusherAppConfig;
use crate::http::Body;
use crate::hub::Node;
use crate::metrics::metrics;
use crate::protocol::reply;

/// How far `auth_timestamp` may be from the server's clock.
const TIMESTAMP_WINDOW: u64 = 600;
/// Pusher's limits: channels per event, events per batch, event name length.
const MAX_CHANNELS: usize = 100;
const MAX_BATCH: usize = 10;
const MAX_NAME: usize = 200;

fn text(status: u16, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn ok(v: &Value) -> Response<Body> {
    crate::http::json_response(200, v)
}

pub async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let resp = serve(node, req).await;
    metrics()
        .api_requests
        .with_label_values(&["pusher", resp.status().as_str()])
        .inc();
    resp
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                crate::server::upgrade::query_param(&format!("k={k}"), "k").unwrap_or_default(),
                crate::server::upgrade::query_param(&format!("k={v}"), "k").unwrap_or_default(),
            )
        })
        .collect()
}

/// Checks the request's signature; `Err` is the 401 (or 400) Pusher would answer.
fn authenticate(
    app: &PusherAppConfig,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
) -> Result<(), Response<Body>> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("auth_key") != Some(app.key.as_str()) {
        return Err(text(401, "Unknown auth_key"));
    }
    let ts: u64 = get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| text(401, "Missing or invalid auth_timestamp"))?;
    let now = crate::auth::now_unix();
    if ts.abs_diff(now) > TIMESTAMP_WINDOW {
        return Err(text(
            401,
            &format!(
                "Timestamp expired: Given timestamp ({ts}) not within {TIMESTAMP_WINDOW}s of server time ({now})"
            ),
        ));
    }
    if get("auth_version").is_some_and(|v| v != "1.0") {
        return Err(text(401, "Unsupported auth_version"));
    }
    if !body.is_empty() {
        let md5 = p::hex(&p::md5(body));
        if get("body_md5") != Some(md5.as_str()) {
            return Err(text(
                401,
                "Invalid body_md5: the MD5 of the request body does not match",
            ));
        }
    }
    let to_sign = p::api_string_to_sign(method, path, params);
    let expected = p::hmac_hex(&app.secret, &to_sign);
    let given = get("auth_signature").unwrap_or("");
    if !p::same(given, &expected) {
        return Err(text(
            401,
            &format!(
                "Invalid signature: you should have sent HmacSHA256Hex({to_sign:?}, your_secret_key), but you sent {given:?}"
            ),
        ));
    }
    Ok(())
}

async fn serve(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let Some(rest) = path.strip_prefix("/apps/") else {
        return text(404, "Not found");
    };
    let (app_id, route) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(app) = node.config.pusher.apps.iter().find(|a| a.app_id == app_id) else {
        return text(404, "Unknown app");
    };
    let body = match Limited::new(req.into_body(), node.config.api.max_body_size)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(413, "Request body too large"),
    };
    let params = query_pairs(&query);
    if let Err(resp) = authenticate(app, method.as_str(), &path, &params, &body) {
        return resp;
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let segments: Vec<&str> = route.split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["events"]) => events(node, app, &body).await,
        (&Method::POST, ["batch_events"]) => batch(node, app, &body).await,
        (&Method::GET, ["channels"]) => {
            channels(node, app, get("filter_by_prefix"), get("info")).await
        }
        (&Method::GET, ["channels", name]) => channel(node, app, name, get("info")).await,
        (&Method::GET, ["channels", name, "users"]) => users(node, app, name).await,
        (&Method::POST, ["users", id, "terminate_connections"]) => {
            let msg = Control::DisconnectUser {
                user: super::ferrocast_user(app, id),
                code: p::codes::UNAUTHORIZED,
                reason: "Connection terminated by the server".into(),
            };
            match node.broker.control(msg).await {
                Ok(()) => ok(&json!({})),
                Err(_) => text(503, "Broker unavailable"),
            }
        }
        _ => text(404, "Not found"),
    }
}

#[derive(Deserialize)]
struct Event<'a> {
    name: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
}

/// Publishes one event on its channels; `Err` is the HTTP error.
async fn publish(node: &Node, app: &PusherAppConfig, ev: &Event<'_>) -> Result<(), Response<Body>> {
    if ev.name.is_empty() || ev.name.len() > MAX_NAME {
        return Err(text(400, "Event name must be 1 to 200 characters"));
    }
    let channels: Vec<&str> = match (&ev.channel, &ev.channels) {
        (Some(c), None) => vec![c.as_str()],
        (None, Some(cs)) => cs.iter().map(String::as_str).collect(),
        _ => return Err(text(400, "Give either channel or channels")),
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS {
        return Err(text(400, "1 to 100 channels per event"));
    }
    if let Some(s) = &ev.socket_id {
        if p::parse_socket_id(s).is_none() {
            return Err(text(400, "Invalid socket_id"));
        }
    }
    let data = p::publication_data(&ev.name, ev.data, None, ev.socket_id.as_deref());
    let mut mapped = Vec::with_capacity(channels.len());
    for name in channels {
        let ch = p::to_ferrocast(&app.app_id, name)
            .map_err(|e| text(400, &format!("{name}: {}", e.message())))?;
        reply::check_publication_size(&ch, data.len(), 0, node.config.limits.outbound_queue_bytes)
            .map_err(|_| text(413, "Event data too large"))?;
        mapped.push(ch);
    }
    let data = Bytes::from(data);
    for ch in mapped {
        let Some(ns) = node.namespace(&ch) else {
            return Err(text(500, "No namespace for the app"));
        };
        let req = PublishRequest {
            channel: ch,
            data: data.clone(),
            info: None,
            options: Node::channel_options(ns),
            idempotency_key: None,
        };
        node.broker
            .publish(req)
            .await
            .map_err(|_| text(503, "Broker unavailable"))?;
        metrics()
            .pusher_events
            .with_label_values(&[&app.app_id, "api"])
            .inc();
    }
    Ok(())
}

async fn events(node: &Node, app: &PusherAppConfig, body: &[u8]) -> Response<Body> {
    let Ok(ev) = serde_json::from_slice::<Event>(body) else {
        return text(400, "Invalid JSON body");
    };
    match publish(node, app, &ev).await {
        Ok(()) => ok(&json!({})),
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    batch: Vec<Event<'a>>,
}

async fn batch(node: &Node, app: &PusherAppConfig, body: &[u8]) -> Response<Body> {
    let Ok(b) = serde_json::from_slice::<Batch>(body) else {
        return text(400, "Invalid JSON body");
    };
    if b.batch.len() > MAX_BATCH {
        return text(400, "At most 10 events per batch");
    }
    for ev in &b.batch {
        if ev.channels.is_some() {
            return text(400, "Batch events take one channel each");
        }
    }
    for ev in &b.batch {
        if let Err(resp) = publish(node, app, ev).await {
            return resp;
        }
    }
    ok(&json!({"batch": b.batch.iter().map(|_| json!({})).collect::<Vec<_>>()}))
}

fn wants(info: Option<&str>, attr: &str) -> bool {
    info.is_some_and(|i| i.split(',').any(|a| a.trim() == attr))
}

async fn channels(
    node: &Node,
    app: &PusherAppConfig,
    prefix: Option<&str>,
    info: Option<&str>,
) -> Response<Body> {
    let prefix = prefix.unwrap_or("");
    let user_count = wants(info, "user_count");
    if user_count && !prefix.starts_with("presence-") {
        return text(400, "info=user_count needs filter_by_prefix=presence-");
    }
    let mut out = serde_json::Map::new();
    for ns in [p::namespace(&app.app_id), p::cache_namespace(&app.app_id)] {
        for ch in node.local_channels(&format!("{ns}:{prefix}")) {
            let Some(name) = p::from_ferrocast(ch.as_str()) else {
                continue;
            };
            let mut attrs = json!({});
            if user_count {
                let users = node
                    .broker
                    .presence_stats(&ch)
                    .await
                    .map(|s| s.1)
                    .unwrap_or(0);
                if users == 0 {
                    continue;
                }
                attrs["user_count"] = json!(users);
            }
            out.insert(name.into_owned(), attrs);
        }
    }
    ok(&json!({ "channels": out }))
}

async fn channel(
    node: &Node,
    app: &PusherAppConfig,
    name: &str,
    info: Option<&str>,
) -> Response<Body> {
    let ch = match p::to_ferrocast(&app.app_id, name) {
        Ok(ch) => ch,
        Err(e) => return text(400, e.message()),
    };
    let presence = Kind::of(name) == Kind::Presence;
    if !presence && wants(info, "user_count") {
        return text(400, "user_count is only available for presence channels");
    }
    let mut out = json!({});
    if presence {
        let (clients, users) = match node.broker.presence_stats(&ch).await {
            Ok(s) => s,
            Err(_) => return text(503, "Broker unavailable"),
        };
        out["occupied"] = json!(users > 0);
        if wants(info, "user_count") {
            out["user_count"] = json!(users);
        }
        if wants(info, "subscription_count") {
            out["subscription_count"] = json!(clients);
        }
    } else {
        out["occupied"] = json!(node.local_channels(ch.as_str()).contains(&ch));
    }
    ok(&out)
}

async fn users(node: &Node, app: &PusherAppConfig, name: &str) -> Response<Body> {
    if Kind::of(name) != Kind::Presence {
        return text(400, "Users are only available for presence channels");
    }
    let ch = match p::to_ferrocast(&app.app_id, name) {
        Ok(ch) => ch,
        Err(e) => return text(400, e.message()),
    };
    let Ok(entries) = node.broker.presence(&ch).await else {
        return text(503, "Broker unavailable");
    };
    let mut ids: Vec<&str> = entries.iter().map(|e| e.user.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ok(&json!({"users": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()}))
}
