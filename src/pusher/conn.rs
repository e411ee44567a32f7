//! Pusher connections (`/app/{key}?protocol=7`): the handshake, then each message —
//! `pusher:ping`, `pusher:subscribe` (public, `private-`, `private-encrypted-`, `presence-`,
//! `cache-`, `#server-to-user-<id>`), `pusher:unsubscribe`, `pusher:signin` and `client-*`
//! events. Subscriptions are ferrocast subscriptions (`client::subscribe_to`) of the mapped
//! channel; the fan-out sends their publications in Pusher's form.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::protocol::{self as p, codes, Kind};
use super::{ConnState, Presence, CLIENT_EVENTS_PER_SECOND};
use crate::auth::Identity;
use crate::broker::{PresenceEntry, PublishRequest};
use crate::config::PusherAppConfig;
use crate::hub::client::{self, Announce};
use crate::hub::node::Node;
use crate::hub::shard::{clock, Shard};
use crate::metrics::metrics;
use crate::protocol::{reply, ChannelName, ClientError, CloseCode};

/// The app a key belongs to.
pub fn app_by_key(node: &Node, key: &str) -> Option<usize> {
    node.config.pusher.apps.iter().position(|a| a.key == key)
}

fn app(shard: &Shard, key: usize) -> Option<(usize, u64, String)> {
    let map = shard.pusher.borrow();
    let st = map.get(&key)?;
    Some((st.app, st.client, st.socket_id.clone()))
}

/// Queues `json` on the connection (if it is still `client`).
fn send(shard: &Shard, key: usize, client: u64, json: &[u8]) {
    if let Some(conn) = shard.state.borrow_mut().conns.get_mut(key) {
        if conn.client == client {
            conn.queue_text(json);
        }
    }
}

/// Sends `pusher:error` and closes with `code` (Pusher sends both).
fn refuse(shard: &Shard, key: usize, code: u16, message: &str) {
    let mut st = shard.state.borrow_mut();
    if let Some(conn) = st.conns.get_mut(key) {
        conn.queue_text(&p::error(Some(code), message));
        conn.custom_close = Some(Box::new((code, message.to_string())));
        conn.close(CloseCode::ServerClose);
    }
}

/// A Pusher socket was registered on the shard (no identity yet): checks the app key, the
/// protocol version and the app's connection limit, then says `pusher:connection_established`.
pub fn opened(shard: &Rc<Shard>, key: usize, path: &str, query: &str) {
    let node = &shard.node;
    let app_key = path.strip_prefix("/app/").unwrap_or("");
    let Some(app_index) = app_by_key(node, app_key) else {
        refuse(
            shard,
            key,
            codes::APP_DOES_NOT_EXIST,
            &format!("App key {app_key} does not exist"),
        );
        shard.flush(key);
        return;
    };
    let app = &node.config.pusher.apps[app_index];
    match crate::server::upgrade::query_param(query, "protocol").map(|v| v.parse::<u32>()) {
        None => {
            refuse(
                shard,
                key,
                codes::NO_PROTOCOL,
                "No protocol version supplied",
            );
            shard.flush(key);
            return;
        }
        Some(Ok(5..=7)) => {}
        Some(_) => {
            refuse(
                shard,
                key,
                codes::UNSUPPORTED_PROTOCOL,
                "Unsupported protocol version",
            );
            shard.flush(key);
            return;
        }
    }
    let gauge = metrics()
        .pusher_connections
        .with_label_values(&[&app.app_id]);
    if app.max_connections > 0 && gauge.get() >= app.max_connections as i64 {
        refuse(shard, key, codes::OVER_CAPACITY, "Over capacity");
        shard.flush(key);
        return;
    }
    let node_number = shard.state.borrow().pusher_node;
    let mut st = shard.state.borrow_mut();
    let Some(conn) = st.conns.get_mut(key) else {
        return;
    };
    let socket_id = p::socket_id(node_number, conn.client);
    conn.identity = Some(Box::new(Identity::anonymous()));
    let established = p::event_str(
        "pusher:connection_established",
        None,
        &json!({"socket_id": socket_id, "activity_timeout": app.activity_timeout}),
    );
    conn.queue_text(&established);
    let client = conn.client;
    drop(st);
    gauge.inc();
    shard.pusher.borrow_mut().insert(
        key,
        ConnState {
            app: app_index,
            client,
            socket_id,
            user: None,
            presence: Vec::new(),
            events_window: 0,
            events_count: 0,
        },
    );
    shard.flush(key);
}

#[derive(Deserialize)]
struct Message<'a> {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// `data` as an object: Pusher clients send it as an object, some libraries as a JSON string.
fn data_object<T: for<'d> Deserialize<'d>>(data: Option<&RawValue>) -> Option<T> {
    let raw = data?.get();
    if raw.starts_with('"') {
        let s: String = serde_json::from_str(raw).ok()?;
        serde_json::from_str(&s).ok()
    } else {
        serde_json::from_str(raw).ok()
    }
}

/// One message of a Pusher connection.
pub async fn handle(shard: &Rc<Shard>, key: usize, msg: Bytes) {
    let Some((app_index, client, socket_id)) = app(shard, key) else {
        return; // a refused connection: it is closing
    };
    metrics()
        .client_commands
        .with_label_values(&["pusher"])
        .inc();
    let rate = shard.node.config.limits.commands_per_second;
    {
        let mut st = shard.state.borrow_mut();
        let Some(conn) = st.conns.get_mut(key) else {
            return;
        };
        if conn.rate_limit(rate).is_err() {
            return; // past twice the limit the connection closes (4100)
        }
    }
    let Ok(m) = serde_json::from_slice::<Message>(&msg) else {
        send(shard, key, client, &p::error(None, "Invalid JSON"));
        shard.flush(key);
        return;
    };
    let app = &shard.node.config.pusher.apps[app_index];
    match m.event.as_str() {
        "pusher:ping" => send(shard, key, client, br#"{"event":"pusher:pong","data":{}}"#),
        "pusher:subscribe" => match data_object::<SubscribeData>(m.data) {
            Some(d) => subscribe(shard, key, client, app_index, &socket_id, d).await,
            None => send(
                shard,
                key,
                client,
                &p::error(None, "Invalid subscribe data"),
            ),
        },
        "pusher:unsubscribe" => {
            if let Some(d) = data_object::<UnsubscribeData>(m.data) {
                if let Ok(ch) = p::to_ferrocast(&app.app_id, &d.channel) {
                    unsubscribe(shard, key, client, &ch).await;
                }
            }
        }
        "pusher:signin" => signin(shard, key, client, app, &socket_id, m.data),
        ev if ev.starts_with("client-") => {
            client_event(
                shard, key, client, app_index, &socket_id, ev, m.channel, m.data,
            )
            .await
        }
        _ => {} // unknown events are ignored, as Pusher does
    }
    shard.flush(key);
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

#[derive(Deserialize)]
struct ChannelData<'a> {
    user_id: Value,
    #[serde(borrow, default)]
    user_info: Option<&'a RawValue>,
}

/// `pusher:subscription_error` on the channel (pusher-js emits it on the channel object).
fn subscription_error(
    shard: &Shard,
    key: usize,
    client: u64,
    channel: &str,
    status: u16,
    msg: &str,
) {
    let body = json!({"type": "AuthError", "error": msg, "status": status});
    send(
        shard,
        key,
        client,
        &p::event(
            "pusher:subscription_error",
            Some(channel),
            &body.to_string(),
        ),
    );
}

async fn subscribe(
    shard: &Rc<Shard>,
    key: usize,
    client: u64,
    app_index: usize,
    socket_id: &str,
    d: SubscribeData,
) {
    let app = &shard.node.config.pusher.apps[app_index];
    let name = d.channel.as_str();
    let ch = match p::to_ferrocast(&app.app_id, name) {
        Ok(ch) => ch,
        Err(e) => {
            send(shard, key, client, &p::error(None, e.message()));
            return;
        }
    };
    let kind = Kind::of(name);
    if kind == Kind::User {
        let me = shard.pusher.borrow().get(&key).and_then(|s| s.user.clone());
        if me.as_deref() != name.strip_prefix(p::SERVER_TO_USER) {
            subscription_error(shard, key, client, name, 403, "Not signed in as this user");
            return;
        }
    }
    if kind.needs_auth() {
        let channel_data = if kind == Kind::Presence {
            d.channel_data.as_deref()
        } else {
            None
        };
        let auth = d.auth.as_deref().unwrap_or("");
        if !p::check_channel_auth(&app.key, &app.secret, socket_id, name, channel_data, auth) {
            subscription_error(
                shard,
                key,
                client,
                name,
                401,
                &format!(
                    "Invalid signature: expected HMAC SHA256 hex digest of {socket_id}:{name}{}",
                    channel_data.map(|c| format!(":{c}")).unwrap_or_default()
                ),
            );
            return;
        }
    }
    let Some(ns) = shard.node.namespace(&ch) else {
        return;
    };
    let presence = if kind == Kind::Presence {
        let parsed = d
            .channel_data
            .as_deref()
            .and_then(|c| serde_json::from_str::<ChannelData>(c).ok());
        let Some(cd) = parsed else {
            subscription_error(shard, key, client, name, 400, "Invalid channel_data");
            return;
        };
        let user_id = match &cd.user_id {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                subscription_error(
                    shard,
                    key,
                    client,
                    name,
                    400,
                    "channel_data.user_id missing",
                );
                return;
            }
        };
        Some(Presence {
            channel: ch.clone(),
            user_id,
            info: cd
                .user_info
                .map(|i| Bytes::copy_from_slice(i.get().as_bytes())),
        })
    } else {
        None
    };
    let node = &shard.node;
    let me = node.client_name(client);
    let succeeded = match &presence {
        Some(pr) => {
            let entry = PresenceEntry {
                client: me.clone(),
                user: pr.user_id.clone(),
                info: pr.info.clone(),
            };
            let ttl = node.config.client.presence_ttl.0;
            if node.broker.presence_add(&ch, entry, ttl).await.is_err() {
                subscription_error(shard, key, client, name, 503, "Presence unavailable");
                return;
            }
            let entries = node.broker.presence(&ch).await.unwrap_or_default();
            let mut ids: Vec<String> = Vec::new();
            let mut hash = serde_json::Map::new();
            for e in &entries {
                if !hash.contains_key(&e.user) {
                    ids.push(e.user.clone());
                    let info = e
                        .info
                        .as_ref()
                        .and_then(|i| serde_json::from_slice::<Value>(i).ok())
                        .unwrap_or(Value::Null);
                    hash.insert(e.user.clone(), info);
                }
            }
            let count = ids.len();
            let alone = !entries
                .iter()
                .any(|e| e.user == pr.user_id && e.client != me);
            let body = json!({"presence": {"ids": ids, "hash": hash, "count": count}});
            (
                p::event_str("pusher_internal:subscription_succeeded", Some(name), &body),
                alone,
            )
        }
        None => (
            p::event(
                "pusher_internal:subscription_succeeded",
                Some(name),
                "\"{}\"",
            ),
            false,
        ),
    };
    let (frame, announce_member) = succeeded;
    let outcome = client::subscribe_to(
        shard,
        key,
        client,
        ch.clone(),
        ns,
        None,
        Announce::Frame(crate::hub::connection::text_frame(&frame)),
    )
    .await;
    match outcome {
        Ok(()) => {}
        Err(ClientError::AlreadySubscribed) => return,
        Err(e) => {
            if presence.is_some() {
                let _ = node.broker.presence_remove(&ch, &me).await;
            }
            subscription_error(shard, key, client, name, 400, &e.to_string());
            return;
        }
    }
    if let Some(pr) = presence {
        let user_id = pr.user_id.clone();
        let info = pr.info.clone();
        match shard.pusher.borrow_mut().get_mut(&key) {
            Some(st) if st.client == client => st.presence.push(pr),
            _ => return, // gone meanwhile: its removal cleans the entry up
        }
        if announce_member {
            let info: Value = info
                .and_then(|i| serde_json::from_slice(&i).ok())
                .unwrap_or(Value::Null);
            let data = json!({"user_id": user_id, "user_info": info}).to_string();
            let data =
                RawValue::from_string(serde_json::to_string(&data).expect("json")).expect("json");
            let push = p::control_push(&ch, "pusher_internal:member_added", &data, Some(socket_id));
            let _ = node.broker.publish_control(&ch, push).await;
            if let Some(events) = &node.events {
                events.pusher_member(app_index, true, &ch, &user_id);
            }
        }
    }
    if p::is_cache(name) {
        let options = Node::channel_options(ns);
        let last = node.broker.history(&ch, options, None, Some(1)).await;
        let frame = last.ok().and_then(|h| {
            let item = h.publications.last()?;
            let payload = reply::publication(&ch, item.offset, &item.data, None);
            p::frame_for(&payload).map(|(f, _)| f)
        });
        let mut st = shard.state.borrow_mut();
        if let Some(conn) = st.conns.get_mut(key).filter(|c| c.client == client) {
            match frame {
                Some(f) => {
                    conn.send(f);
                }
                None => conn.queue_text(
                    format!("{{\"event\":\"pusher:cache_miss\",\"channel\":\"{name}\"}}")
                        .as_bytes(),
                ),
            }
        }
    }
}

async fn unsubscribe(shard: &Rc<Shard>, key: usize, client: u64, ch: &ChannelName) {
    let emptied = {
        let mut st = shard.state.borrow_mut();
        let Some(conn) = st.conns.get_mut(key).filter(|c| c.client == client) else {
            return;
        };
        let Some(i) = conn.subs.iter().position(|c| c == ch) else {
            return;
        };
        conn.subs.swap_remove(i);
        st.abort_subscribe(ch, key as u32)
    };
    let left = {
        let mut map = shard.pusher.borrow_mut();
        map.get_mut(&key).and_then(|st| {
            let i = st.presence.iter().position(|p| &p.channel == ch)?;
            Some((st.app, st.presence.swap_remove(i)))
        })
    };
    if let Some((app, pr)) = left {
        leave_presence(&shard.node, app, &shard.node.client_name(client), pr).await;
    }
    if emptied {
        shard.node.remove_interest(ch).await;
    }
}

/// Removes a presence entry; `member_removed` when it was the user's last.
async fn leave_presence(node: &Node, app: usize, client: &str, pr: Presence) {
    let _ = node.broker.presence_remove(&pr.channel, client).await;
    let still = node
        .broker
        .presence(&pr.channel)
        .await
        .map(|entries| entries.iter().any(|e| e.user == pr.user_id))
        .unwrap_or(false);
    if !still {
        let data = json!({"user_id": pr.user_id}).to_string();
        let data =
            RawValue::from_string(serde_json::to_string(&data).expect("json")).expect("json");
        let push = p::control_push(&pr.channel, "pusher_internal:member_removed", &data, None);
        let _ = node.broker.publish_control(&pr.channel, push).await;
        if let Some(events) = &node.events {
            events.pusher_member(app, false, &pr.channel, &pr.user_id);
        }
    }
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

#[derive(Deserialize)]
struct UserData {
    id: Value,
}

fn signin(
    shard: &Rc<Shard>,
    key: usize,
    client: u64,
    app: &PusherAppConfig,
    socket_id: &str,
    data: Option<&RawValue>,
) {
    let Some(d) = data_object::<SigninData>(data) else {
        refuse(shard, key, codes::UNAUTHORIZED, "Invalid signin data");
        return;
    };
    if !p::check_signin(&app.key, &app.secret, socket_id, &d.user_data, &d.auth) {
        refuse(shard, key, codes::UNAUTHORIZED, "Invalid signature");
        return;
    }
    let id = match serde_json::from_str::<UserData>(&d.user_data).map(|u| u.id) {
        Ok(Value::String(s)) if !s.is_empty() => s,
        _ => {
            refuse(
                shard,
                key,
                codes::UNAUTHORIZED,
                "user_data.id must be a non-empty string",
            );
            return;
        }
    };
    {
        let mut st = shard.state.borrow_mut();
        let Some(conn) = st.conns.get_mut(key).filter(|c| c.client == client) else {
            return;
        };
        let mut identity = Identity::anonymous();
        identity.user = super::ferrocast_user(app, &id).into();
        conn.identity = Some(Box::new(identity));
        conn.queue_text(&p::event_str(
            "pusher:signin_success",
            None,
            &json!({"user_data": d.user_data}),
        ));
    }
    if let Some(st) = shard.pusher.borrow_mut().get_mut(&key) {
        st.user = Some(id);
    }
}

#[allow(clippy::too_many_arguments)]
async fn client_event(
    shard: &Rc<Shard>,
    key: usize,
    client: u64,
    app_index: usize,
    socket_id: &str,
    event: &str,
    channel: Option<String>,
    data: Option<&RawValue>,
) {
    let app = &shard.node.config.pusher.apps[app_index];
    let err = |msg: &str| send(shard, key, client, &p::error(None, msg));
    if !app.enable_client_messages {
        return err("To send client events, you must enable this feature in the app's config (enable_client_messages)");
    }
    let Some(name) = channel else {
        return err("Client event without a channel");
    };
    if !matches!(
        Kind::of(&name),
        Kind::Private | Kind::Encrypted | Kind::Presence
    ) {
        return err("Client events are only allowed on private and presence channels");
    }
    if event.len() > 200 {
        return err("Event name too long");
    }
    let Ok(ch) = p::to_ferrocast(&app.app_id, &name) else {
        return err("Invalid channel name");
    };
    let subscribed = shard
        .state
        .borrow()
        .conns
        .get(key)
        .is_some_and(|c| c.client == client && c.subs.contains(&ch));
    if !subscribed {
        return err("Client events need a subscription to the channel");
    }
    let (limited, user_id) = {
        let mut map = shard.pusher.borrow_mut();
        let Some(st) = map.get_mut(&key) else { return };
        let now = clock();
        if st.events_window != now {
            st.events_window = now;
            st.events_count = 0;
        }
        st.events_count += 1;
        let user = st
            .presence
            .iter()
            .find(|p| p.channel == ch)
            .map(|p| p.user_id.clone());
        (st.events_count > CLIENT_EVENTS_PER_SECOND, user)
    };
    if limited {
        send(
            shard,
            key,
            client,
            &p::error(
                Some(codes::CLIENT_EVENT_RATE_LIMIT),
                "Client event rejected due to rate limit",
            ),
        );
        return;
    }
    let empty = RawValue::from_string("{}".into()).expect("json");
    let data = data.unwrap_or(&empty);
    let body = p::publication_data(event, data, user_id.as_deref(), Some(socket_id));
    let node = &shard.node;
    if reply::check_publication_size(&ch, body.len(), 0, node.config.limits.outbound_queue_bytes)
        .is_err()
    {
        return err("Client event too large");
    }
    let Some(ns) = node.namespace(&ch) else {
        return;
    };
    let hook = node
        .events
        .as_ref()
        .filter(|e| e.wants_pusher_client_events(app_index))
        .map(|e| {
            (
                e.clone(),
                ch.clone(),
                data.get().to_string(),
                user_id.clone(),
            )
        });
    let req = PublishRequest {
        channel: ch,
        data: Bytes::from(body),
        info: None,
        options: Node::channel_options(ns),
        idempotency_key: None,
    };
    if node.broker.publish(req).await.is_err() {
        return err("Client event not delivered: broker unavailable");
    }
    metrics()
        .pusher_events
        .with_label_values(&[&app.app_id, "client"])
        .inc();
    if let Some((events, ch, data, user_id)) = hook {
        events.pusher_client_event(app_index, &ch, event, &data, socket_id, user_id.as_deref());
    }
}

/// A Pusher connection left its shard (`Shard::remove_connection`; its subscriptions are gone
/// already): its presence entries go, with `member_removed` where it was a user's last.
pub async fn removed(shard: &Rc<Shard>, key: usize, client: u64) {
    let st = {
        let mut map = shard.pusher.borrow_mut();
        match map.get(&key) {
            Some(s) if s.client == client => map.remove(&key),
            _ => None,
        }
    };
    let Some(st) = st else { return };
    let app = &shard.node.config.pusher.apps[st.app];
    metrics()
        .pusher_connections
        .with_label_values(&[&app.app_id])
        .dec();
    let me = shard.node.client_name(client);
    for pr in st.presence {
        leave_presence(&shard.node, st.app, &me, pr).await;
    }
}

/// Refreshes the shard's Pusher presence entries every third of `client.presence_ttl`, so the
/// members of a node that died expire by themselves (as ferrocast presence does).
pub async fn run_ticker(shard: Rc<Shard>) {
    let ttl = shard.node.config.client.presence_ttl.0;
    let every = Duration::from_secs((ttl.as_secs() / 3).max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let entries: Vec<(ChannelName, PresenceEntry)> = shard
            .pusher
            .borrow()
            .values()
            .flat_map(|st| {
                let client = shard.node.client_name(st.client);
                st.presence.iter().map(move |p| {
                    (
                        p.channel.clone(),
                        PresenceEntry {
                            client: client.clone(),
                            user: p.user_id.clone(),
                            info: p.info.clone(),
                        },
                    )
                })
            })
            .collect();
        for (ch, entry) in entries {
            let _ = shard.node.broker.presence_add(&ch, entry, ttl).await;
        }
    }
}
