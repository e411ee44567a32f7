//! The public listener's HTTP side: hyper http1 serves each accepted socket; `/ws` upgrades go
//! through fastwebsockets' handshake, and the upgraded socket is recovered as the plain
//! `TcpStream` (`Upgraded::downcast`, keeping hyper's read-ahead bytes) so a connection runs with
//! no boxed IO layer and no HTTP buffers left behind. `/api/*` goes to the server API.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::per_ip::IpSlot;
use super::sse::ServeBody;
use crate::auth::{proxy, Identity};
use crate::hub::connection::{connected_body, Route};
use crate::hub::shard::Shard;
use crate::metrics::metrics;
use crate::protocol::CloseCode;

use crate::http::{error_response, Body};

/// Serves one accepted socket until it upgrades or closes. The header-read timeout is the
/// handshake deadline: a slow or silent client can't hold a handshake slot for long.
pub async fn serve_http(
    shard: Rc<Shard>,
    stream: TcpStream,
    _peer: SocketAddr,
    slot: Option<IpSlot>,
) {
    let io = TokioIo::new(stream);
    let s = shard.clone();
    // The per-IP slot follows the socket: into the WebSocket connection on upgrade, else it is
    // given back when this HTTP connection ends.
    let slot = Rc::new(std::cell::Cell::new(slot));
    let upgrade_slot = slot.clone();
    // Requests served on this connection: a keep-alive connection (API clients, nginx's pool)
    // that goes idle and hits the header timeout after answering is not a failed handshake.
    let served = Rc::new(std::cell::Cell::new(0u32));
    let counter = served.clone();
    // Ends this HTTP connection from outside (an SSE stream whose client stopped reading).
    let kill = Rc::new(tokio::sync::Notify::new());
    let killer = kill.clone();
    let svc = service_fn(move |req| {
        counter.set(counter.get().saturating_add(1));
        route(s.clone(), req, upgrade_slot.clone(), killer.clone())
    });
    let limits = &shard.node.config.limits;
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Slowloris: the whole request head must arrive within the handshake timeout, and be
        // no larger than max_header_bytes (hyper answers 431 past it).
        .header_read_timeout(limits.handshake_timeout.0)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .serve_connection(io, svc)
        .with_upgrades();
    let outcome = tokio::select! {
        r = conn => r,
        _ = kill.notified() => return,
    };
    if let Err(e) = outcome {
        let reason = if e.is_timeout() {
            if served.get() > 0 {
                return; // an idle keep-alive connection timing out between requests
            }
            "timeout"
        } else if e.is_parse() || e.is_parse_too_large() {
            "bad_request"
        } else {
            return; // the client went away
        };
        metrics()
            .handshake_failures
            .with_label_values(&[reason])
            .inc();
    }
}

type SlotCell = Rc<std::cell::Cell<Option<IpSlot>>>;

async fn route(
    shard: Rc<Shard>,
    req: Request<Incoming>,
    slot: SlotCell,
    kill: Rc<tokio::sync::Notify>,
) -> Result<Response<ServeBody>, Infallible> {
    let path = req.uri().path();
    if path == "/ws" {
        return Ok(ws_upgrade(&shard, req, Route::Commands, slot).map(ServeBody::Left));
    }
    if path == "/sse" {
        return Ok(super::sse::open(&shard, req, slot.take(), kill).await);
    }
    let echo = &shard.node.config.conformance.echo_path;
    if !echo.is_empty() && path == echo {
        return Ok(ws_upgrade(&shard, req, Route::Echo, slot).map(ServeBody::Left));
    }
    if path.starts_with("/app/") && !shard.node.config.pusher.apps.is_empty() {
        return Ok(ws_upgrade(&shard, req, Route::Pusher, slot).map(ServeBody::Left));
    }
    if path.starts_with("/apps/") && !shard.node.config.pusher.apps.is_empty() {
        return Ok(crate::pusher::api::handle(&shard.node, req)
            .await
            .map(ServeBody::Left));
    }
    if path.starts_with("/api/") {
        return Ok(crate::api::handle(&shard.node, req)
            .await
            .map(ServeBody::Left));
    }
    Ok(error_response(404, 104, "not found").map(ServeBody::Left))
}

/// How a new connection will be authenticated.
enum AuthPlan {
    /// `?token=` verified during the handshake.
    Ready(Identity),
    /// `?token=` was bad: the socket is upgraded only to carry the close code (a browser can't
    /// read an HTTP error status on a failed upgrade).
    Reject(CloseCode),
    /// Ask the connect proxy with these headers.
    Proxy(Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>),
    /// Wait for a `connect` command.
    Later,
}

fn ws_upgrade(
    shard: &Rc<Shard>,
    mut req: Request<Incoming>,
    route: Route,
    slot: SlotCell,
) -> Response<Body> {
    let m = metrics();
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        m.handshake_failures
            .with_label_values(&["bad_request"])
            .inc();
        return error_response(426, 107, "WebSocket upgrade required");
    }
    let node = &shard.node;
    if !origin_allowed(&node.config.auth.allowed_origins, &req) {
        m.handshake_failures.with_label_values(&["origin"]).inc();
        return error_response(403, 103, "origin not allowed");
    }
    if node.is_draining() || shard.draining.get() {
        m.handshake_failures.with_label_values(&["draining"]).inc();
        return error_response(503, 108, "node is draining");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((response, _)) => response,
        Err(_) => {
            m.handshake_failures
                .with_label_values(&["bad_request"])
                .inc();
            return error_response(400, 107, "bad WebSocket handshake");
        }
    };
    let cfg = &node.config;
    let token = match route {
        Route::Commands => query_param(req.uri().query().unwrap_or(""), "token"),
        Route::Echo | Route::Sse | Route::Pusher => None,
    };
    // A Pusher socket: its path (the app key) and query (the protocol version).
    let pusher = (route == Route::Pusher).then(|| {
        let q = req.uri().query().unwrap_or("").to_string();
        (req.uri().path().to_string(), q)
    });
    let plan = match token {
        _ if route == Route::Echo || route == Route::Pusher => AuthPlan::Later,
        Some(token) => match node.verifier.verify(&token) {
            Ok(identity) => AuthPlan::Ready(identity),
            Err(e) => {
                m.handshake_failures.with_label_values(&["auth"]).inc();
                crate::metrics::count_error(e.client_error().code());
                AuthPlan::Reject(e.close_code())
            }
        },
        None if !cfg.auth.proxy_url.is_empty() => {
            AuthPlan::Proxy(proxy::pick_headers(req.headers(), &cfg.auth.proxy_headers))
        }
        None => AuthPlan::Later,
    };
    let max = cfg.limits.max_connections;
    let over_limit = max > 0 && node.connections.load(std::sync::atomic::Ordering::Relaxed) >= max;
    if over_limit {
        m.handshake_failures.with_label_values(&["limit"]).inc();
    }
    let shard = shard.clone();
    let slot = slot.take();
    tokio::task::spawn_local(async move {
        let Ok(upgraded) = on_upgrade.await else {
            metrics()
                .handshake_failures
                .with_label_values(&["upgrade"])
                .inc();
            return;
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            metrics()
                .handshake_failures
                .with_label_values(&["upgrade"])
                .inc();
            return;
        };
        let stream = parts.io.into_inner();
        let read_ahead = parts.read_buf;
        let register = |shard: &Rc<Shard>, key: usize| {
            if let Some(slot) = slot {
                shard.attach(key, Box::new(slot));
            }
            key
        };
        match plan {
            _ if over_limit => {
                let code = Some(CloseCode::ConnectionLimit);
                register(
                    &shard,
                    shard.register(stream, read_ahead, route, None, code),
                );
            }
            AuthPlan::Ready(identity) => {
                let key = shard.register(stream, read_ahead, route, Some(identity), None);
                register(&shard, key);
            }
            AuthPlan::Reject(code) => {
                register(
                    &shard,
                    shard.register(stream, read_ahead, route, None, Some(code)),
                );
            }
            AuthPlan::Later => {
                let key = register(
                    &shard,
                    shard.register(stream, read_ahead, route, None, None),
                );
                if let Some((path, query)) = pusher {
                    crate::pusher::conn::opened(&shard, key, &path, &query);
                }
            }
            AuthPlan::Proxy(headers) => {
                let key = shard.register(stream, read_ahead, route, None, None);
                let key = register(&shard, key);
                let client_n = shard.state.borrow().conns[key].client;
                let client = shard.node.client_name(client_n);
                let cfg = &shard.node.config.auth;
                let verdict = proxy::connect(
                    &cfg.proxy_url,
                    headers,
                    &client,
                    "websocket",
                    cfg.proxy_timeout.0,
                )
                .await;
                let mut st = shard.state.borrow_mut();
                let Some(conn) = st.conns.get_mut(key) else {
                    return;
                };
                if conn.client != client_n {
                    return; // the slot was reused: that connection is gone
                }
                match verdict {
                    Ok(identity) if conn.identity.is_none() => {
                        if let Some(events) = &shard.node.events {
                            events.user_connected(&identity.user);
                        }
                        conn.identity = Some(Box::new(identity));
                        let body = serde_json::json!({"connected": connected_body(&shard, conn)});
                        conn.queue_text(&serde_json::to_vec(&body).expect("json"));
                        drop(st);
                        shard.flush(key);
                        shard.start_server_subscriptions(key);
                    }
                    Ok(_) => {}
                    // A client that authenticated with a token meanwhile keeps that identity.
                    Err(_) if conn.identity.is_some() => {}
                    Err(e) => {
                        metrics()
                            .handshake_failures
                            .with_label_values(&["auth"])
                            .inc();
                        conn.close(e.close_code());
                    }
                }
            }
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// `auth.allowed_origins`: empty allows any. A request without `Origin` is not from a browser
/// page (browsers always send it on WebSocket upgrades), so it can't be a cross-site hijack and
/// is allowed; a browser page from another site is refused.
pub(super) fn origin_allowed(allowed: &[String], req: &Request<Incoming>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match req.headers().get(hyper::header::ORIGIN) {
        None => true,
        Some(origin) => {
            let origin = origin.to_str().unwrap_or("");
            allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(origin.trim_end_matches('/')))
        }
    }
}

/// The value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("a=1&token=abc.def", "token").as_deref(),
            Some("abc.def")
        );
        assert_eq!(
            query_param("token=a%2Eb%3d", "token").as_deref(),
            Some("a.b=")
        );
        assert_eq!(query_param("x=1", "token"), None);
        assert_eq!(query_param("token=%", "token").as_deref(), Some("%"));
        assert_eq!(query_param("token=%4", "token").as_deref(), Some("%4"));
    }
}
