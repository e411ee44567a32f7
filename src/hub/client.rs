//! Applying client commands: permissions, subscriptions with recovery, publish, presence,
//! history. Each handler answers with exactly one reply (result or error) on the connection's
//! outbound queue; the connection task flushes after the read's commands ran.

use std::rc::Rc;

use bytes::Bytes;
use serde_json::json;

use super::connection::connected_body;
use super::node::Node;
use super::shard::{push_small, Shard};
use crate::auth::Identity;
use crate::broker::{
    BrokerError, ChannelOptions, HistoryItem, HistoryResult, PublishRequest, Published,
    StreamPosition,
};
use crate::config::NamespaceConfig;
use crate::metrics::{count_error, metrics};
use crate::protocol::{reply, ChannelName, ClientError, CloseCode, Command, CommandKind, Position};

type Reply = Result<(), ClientError>;

pub async fn handle(shard: &Rc<Shard>, key: usize, cmd: Command) {
    if let CommandKind::Pusher(msg) = cmd.kind {
        // A Pusher connection's message: its own protocol, limits and replies.
        return Box::pin(crate::pusher::conn::handle(shard, key, msg)).await;
    }
    metrics()
        .client_commands
        .with_label_values(&[cmd.kind.name()])
        .inc();
    let id = cmd.id;
    if let Err(e) = rate_limit(shard, key) {
        send_error(shard, key, id, &e);
        return;
    }
    let authenticated = shard.state.borrow().conns[key].identity.is_some();
    let outcome = match cmd.kind {
        CommandKind::Pusher(_) => Ok(()), // handled above
        CommandKind::Connect { token, subs } => connect(shard, key, id, token, subs).await,
        _ if !authenticated => Err(ClientError::Unauthorized),
        CommandKind::Refresh { token } => refresh(shard, key, id, &token),
        CommandKind::Subscribe { channel, recover } => {
            subscribe(shard, key, id, &channel, recover).await
        }
        CommandKind::Unsubscribe { channel } => unsubscribe(shard, key, id, &channel).await,
        CommandKind::Publish { channel, data } => publish(shard, key, id, &channel, data).await,
        CommandKind::Presence { channel } => presence(shard, key, id, &channel).await,
        CommandKind::PresenceStats { channel } => presence_stats(shard, key, id, &channel).await,
        CommandKind::History {
            channel,
            limit,
            since,
        } => history(shard, key, id, &channel, limit, since).await,
        CommandKind::Ping => {
            send(shard, key, &reply::result(id, &json!({})));
            Ok(())
        }
    };
    if let Err(e) = outcome {
        send_error(shard, key, id, &e);
    }
}

fn send(shard: &Shard, key: usize, json: &[u8]) {
    if let Some(conn) = shard.state.borrow_mut().conns.get_mut(key) {
        conn.queue_text(json);
    }
}

fn send_error(shard: &Shard, key: usize, id: Option<u64>, e: &ClientError) {
    count_error(e.code());
    send(shard, key, &reply::error(id, e));
}

fn close(shard: &Shard, key: usize, code: CloseCode) {
    if let Some(conn) = shard.state.borrow_mut().conns.get_mut(key) {
        conn.close(code);
    }
}

fn rate_limit(shard: &Shard, key: usize) -> Result<(), ClientError> {
    let limit = shard.node.config.limits.commands_per_second;
    shard.state.borrow_mut().conns[key].rate_limit(limit)
}

fn identity(shard: &Shard, key: usize) -> Result<Identity, ClientError> {
    shard.state.borrow().conns[key]
        .identity
        .as_deref()
        .cloned()
        .ok_or(ClientError::Unauthorized)
}

fn client_name(shard: &Shard, key: usize) -> String {
    shard
        .node
        .client_name(shard.state.borrow().conns[key].client)
}

/// Resolves a channel and its namespace, and checks that `identity` may subscribe to it.
fn channel_for<'n>(
    node: &'n Node,
    identity: &Identity,
    name: &str,
) -> Result<(ChannelName, &'n NamespaceConfig), ClientError> {
    let ch = ChannelName::parse(name)?;
    let ns = node.namespace(&ch).ok_or(ClientError::UnknownChannel)?;
    may_subscribe(identity, &ch, ns)?;
    Ok((ch, ns))
}

/// The subscribe permission: the token's `channels` claim grants any channel; `user:<id>` is only
/// for user `<id>`; private namespaces need the claim; anonymous users need `anonymous = true`.
pub fn may_subscribe(
    identity: &Identity,
    ch: &ChannelName,
    ns: &NamespaceConfig,
) -> Result<(), ClientError> {
    if identity.channels.contains(ch) || identity.subs.contains(ch) {
        return Ok(());
    }
    if let Some(owner) = ch.personal_user() {
        return if !identity.is_anonymous() && owner == &*identity.user {
            Ok(())
        } else {
            Err(ClientError::PermissionDenied)
        };
    }
    if ns.private || (identity.is_anonymous() && !ns.anonymous) {
        return Err(ClientError::PermissionDenied);
    }
    Ok(())
}

async fn connect(
    shard: &Rc<Shard>,
    key: usize,
    id: Option<u64>,
    token: Option<String>,
    recover: Vec<(String, Position)>,
) -> Reply {
    if shard.state.borrow().conns[key].identity.is_some() {
        return Err(ClientError::BadRequest("already connected"));
    }
    let verified = match token {
        Some(t) => shard.node.verifier.verify(&t),
        None if shard.node.config.auth.allow_anonymous => Ok(Identity::anonymous()),
        None => Err(crate::auth::AuthError::Invalid),
    };
    match verified {
        Ok(identity) => {
            let server_side = !identity.subs.is_empty();
            if let Some(events) = &shard.node.events {
                events.user_connected(&identity.user);
            }
            {
                let mut st = shard.state.borrow_mut();
                let conn = &mut st.conns[key];
                conn.identity = Some(Box::new(identity));
                let body = connected_body(shard, conn);
                conn.queue_text(&reply::result(id, &body));
                conn.queue_text(&serde_json::to_vec(&json!({ "connected": body })).expect("json"));
            }
            if server_side || !recover.is_empty() {
                server_subscriptions(shard, key, Vec::new(), recover).await;
            }
            Ok(())
        }
        Err(e) => {
            metrics()
                .handshake_failures
                .with_label_values(&["auth"])
                .inc();
            send_error(shard, key, id, &e.client_error());
            close(shard, key, e.close_code());
            Ok(())
        }
    }
}

fn refresh(shard: &Shard, key: usize, id: Option<u64>, token: &str) -> Reply {
    let fresh = shard
        .node
        .verifier
        .verify(token)
        .map_err(|e| e.client_error())?;
    let mut st = shard.state.borrow_mut();
    let conn = &mut st.conns[key];
    let current = conn.identity.as_mut().ok_or(ClientError::Unauthorized)?;
    if current.user != fresh.user {
        return Err(ClientError::PermissionDenied);
    }
    **current = fresh;
    let exp = current.expires_at;
    conn.queue_text(&reply::result(id, &json!({ "expires_at": exp })));
    Ok(())
}

async fn subscribe(
    shard: &Rc<Shard>,
    key: usize,
    id: Option<u64>,
    name: &str,
    recover: Option<Position>,
) -> Reply {
    let me = identity(shard, key)?;
    let (ch, ns) = match channel_for(&shard.node, &me, name) {
        Ok(x) => x,
        Err(ClientError::PermissionDenied) => {
            // The subscribe proxy may allow what the token does not list.
            let ch = ChannelName::parse(name)?;
            let ns = shard
                .node
                .namespace(&ch)
                .ok_or(ClientError::UnknownChannel)?;
            ask_subscribe_proxy(shard, key, &me, &ch).await?;
            (ch, ns)
        }
        Err(e) => return Err(e),
    };
    let client = shard.state.borrow().conns[key].client;
    subscribe_to(shard, key, client, ch, ns, recover, Announce::Reply(id)).await
}

/// Asks `auth.subscribe_proxy_url` whether this client may subscribe to `ch` (which the static
/// rules refused). Personal channels of other users are never delegated.
async fn ask_subscribe_proxy(
    shard: &Rc<Shard>,
    key: usize,
    me: &Identity,
    ch: &ChannelName,
) -> Reply {
    let cfg = &shard.node.config.auth;
    if cfg.subscribe_proxy_url.is_empty() || ch.personal_user().is_some() {
        return Err(ClientError::PermissionDenied);
    }
    let client = client_name(shard, key);
    let outcome = crate::auth::proxy::subscribe(
        &cfg.subscribe_proxy_url,
        &client,
        me,
        ch,
        cfg.proxy_timeout.0,
    )
    .await;
    crate::metrics::count_proxy("subscribe", &outcome);
    outcome
}

/// How a subscription is announced: as the reply to the client's `subscribe` command, or as a
/// `subscribe` push (server-side subscriptions: the identity's `subs`, `POST /api/subscribe`,
/// the channels of an SSE stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announce {
    Reply(Option<u64>),
    Push,
    /// A frame of another protocol (Pusher's `subscription_succeeded`), queued as it is.
    Frame(Bytes),
}

/// Whether the slot `key` still holds the connection `client` (a task that awaited may find its
/// connection gone and the slot reused).
fn still_there(shard: &Shard, key: usize, client: u64) -> bool {
    shard
        .state
        .borrow()
        .conns
        .get(key)
        .is_some_and(|c| c.client == client)
}

/// Subscribes connection `key` (`client`) to `ch`, permission already decided: joins the shard's
/// channel (publications held), subscribes the node at the broker if it is the first, reads the
/// position (and what the client missed, with `recover`), announces it, then lets held
/// publications follow.
pub async fn subscribe_to(
    shard: &Rc<Shard>,
    key: usize,
    client: u64,
    ch: ChannelName,
    ns: &NamespaceConfig,
    recover: Option<Position>,
    announce: Announce,
) -> Reply {
    if !still_there(shard, key, client) {
        return Ok(());
    }
    let me = identity(shard, key)?;
    let k = key as u32;
    let (ch, new_on_shard) = {
        let mut st = shard.state.borrow_mut();
        let conn = &mut st.conns[key];
        if conn.closing.is_some() {
            return Ok(());
        }
        if conn.subs.contains(&ch) {
            return Err(ClientError::AlreadySubscribed);
        }
        if conn.subs.len() >= shard.node.config.limits.max_subscriptions {
            return Err(ClientError::LimitExceeded);
        }
        // From here on the shard's copy of the name: the parsed one is dropped.
        let (ch, new_on_shard) = st.join(ch, k);
        push_small(&mut st.conns[key].subs, ch.clone());
        (ch, new_on_shard)
    };
    // While this task awaits, the connection may end: its removal takes the subscription (and
    // the node's interest) with it, so a task that finds it gone just stops.
    let abort = |e: ClientError| {
        let mut st = shard.state.borrow_mut();
        if let Some(conn) = st.conns.get_mut(key) {
            conn.subs.retain(|c| c != &ch);
        }
        let emptied = st.abort_subscribe(&ch, k);
        (e, emptied)
    };
    if new_on_shard {
        // Later subscribers on this shard wait for this broker subscribe (below).
        shard
            .state
            .borrow_mut()
            .pending
            .insert(ch.clone(), tokio::sync::watch::channel(None).0);
        let added = shard.node.add_interest(&ch).await;
        {
            let mut st = shard.state.borrow_mut();
            if added.is_ok() {
                if let Some(tx) = st.pending.remove(&ch) {
                    tx.send_replace(Some(true));
                }
            } else if let Some(tx) = st.pending.get(&ch) {
                // Kept until the channel's entry empties: a subscriber arriving meanwhile fails
                // too instead of joining a subscription the node does not have.
                tx.send_replace(Some(false));
            }
        }
        if !still_there(shard, key, client) {
            return Ok(());
        }
        if let Err(e) = added {
            let (e, _) = abort(e.client_error());
            return Err(e);
        }
    } else {
        // The shard's first subscriber may still be subscribing the node at the broker: its
        // outcome is this subscription's too.
        let waiting = shard
            .state
            .borrow()
            .pending
            .get(&ch)
            .map(|tx| tx.subscribe());
        if let Some(mut rx) = waiting {
            let ok = match rx.wait_for(|v| v.is_some()).await {
                Ok(v) => *v == Some(true),
                Err(_) => false, // the leader's subscription went away unresolved
            };
            if !still_there(shard, key, client) {
                return Ok(());
            }
            if !ok {
                // The interest was never this subscription's: nothing to give back to the node.
                let (e, _) = abort(ClientError::NotAvailable);
                return Err(e);
            }
        }
    }
    let options = Node::channel_options(ns);
    let read = match &recover {
        Some(pos) => recovery(&shard.node, &ch, options, pos).await,
        None => shard
            .node
            .broker
            .history(&ch, options, None, Some(0))
            .await
            .map(|h| Recovery {
                position: h.position,
                recovered: false,
                truncated: false,
                publications: Vec::new(),
            }),
    };
    if !still_there(shard, key, client) {
        return Ok(());
    }
    let Recovery {
        position,
        recovered,
        truncated,
        publications,
    } = match read {
        Ok(r) => r,
        Err(e) => {
            let (e, emptied) = abort(e.client_error());
            if emptied {
                shard.node.remove_interest(&ch).await;
            }
            return Err(e);
        }
    };
    let body = if recover.is_some() {
        let mut body = json!({
            "offset": position.offset,
            "epoch": &*position.epoch,
            "recovered": recovered,
            "publications": publications_json(&publications),
        });
        if truncated {
            body["truncated"] = json!(true);
        }
        body
    } else {
        json!({"offset": position.offset, "epoch": &*position.epoch})
    };
    {
        let mut st = shard.state.borrow_mut();
        let Some(conn) = st.conns.get_mut(key) else {
            return Ok(());
        };
        match announce {
            Announce::Reply(id) => conn.queue_text(&reply::result(id, &body)),
            Announce::Push => conn.queue_text(&reply::channel_push(&ch, "subscribe", &body)),
            Announce::Frame(frame) => {
                conn.send(frame);
            }
        }
        // Publications that arrived while we read history follow the reply, minus those the
        // history already held.
        let after = publications
            .last()
            .map_or(position.offset, |p| p.offset.max(position.offset));
        st.activate(&ch, k, after);
    }
    shard.after_join(&ch, &client_name(shard, key), &me).await;
    Ok(())
}

/// Server-side subscriptions of connection `key`, once it is authenticated: the identity's
/// `subs`, then `extra` (an SSE stream's channels), then any other channel in `recover` the
/// client may subscribe to (so channels added by `POST /api/subscribe` survive a reconnect).
/// Channels in `recover` are recovered from the position given. Each is announced with a
/// `subscribe` push, or a channel `error` push when it can't be subscribed. Flushes at the end.
pub async fn server_subscriptions(
    shard: &Rc<Shard>,
    key: usize,
    extra: Vec<String>,
    mut recover: Vec<(String, Position)>,
) {
    let Some((client, me)) = shard
        .state
        .borrow()
        .conns
        .get(key)
        .and_then(|c| Some((c.client, c.identity.as_deref()?.clone())))
    else {
        return;
    };
    let mut take_position = |name: &str| {
        recover
            .iter()
            .position(|(c, _)| c == name)
            .map(|i| recover.swap_remove(i).1)
    };
    let mut plan: Vec<(String, Option<Position>, bool)> = Vec::new();
    for ch in me.subs.iter() {
        let pos = take_position(ch.as_str());
        plan.push((ch.as_str().to_string(), pos, false));
    }
    for name in extra {
        if plan.iter().any(|(c, _, _)| *c == name) {
            continue;
        }
        let pos = take_position(&name);
        plan.push((name, pos, true));
    }
    // What is left in `recover`: subscribed before the reconnect, kept only where permitted.
    for (name, pos) in recover.drain(..) {
        if plan.iter().any(|(c, _, _)| *c == name) {
            continue;
        }
        if let Ok(ch) = ChannelName::parse(&name) {
            if shard
                .node
                .namespace(&ch)
                .is_some_and(|ns| may_subscribe(&me, &ch, ns).is_ok())
            {
                plan.push((name, Some(pos), false));
            }
        }
    }
    for (name, pos, report) in plan {
        let outcome = match channel_for(&shard.node, &me, &name) {
            Ok((ch, ns)) => subscribe_to(shard, key, client, ch, ns, pos, Announce::Push).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) | Err(ClientError::AlreadySubscribed) => {}
            // A channel the client asked for by name is answered; a leftover is dropped quietly.
            Err(e) if report || !matches!(e, ClientError::PermissionDenied) => {
                count_error(e.code());
                if let Some(conn) = shard.state.borrow_mut().conns.get_mut(key) {
                    if conn.client == client {
                        conn.queue_text(&channel_error(&name, &e));
                    }
                }
            }
            Err(_) => {}
        }
    }
    if still_there(shard, key, client) {
        shard.flush(key);
    }
}

/// Subscribes connection `key` to `channel` on the backend's word (`POST /api/subscribe`): no
/// permission check, announced with a `subscribe` push.
pub async fn subscribe_by_server(shard: &Rc<Shard>, key: usize, client: u64, channel: ChannelName) {
    let Some(ns) = shard.node.namespace(&channel) else {
        return;
    };
    let name = channel.as_str().to_string();
    match subscribe_to(shard, key, client, channel, ns, None, Announce::Push).await {
        Ok(()) | Err(ClientError::AlreadySubscribed) => {}
        Err(e) => {
            count_error(e.code());
            if let Some(conn) = shard.state.borrow_mut().conns.get_mut(key) {
                if conn.client == client {
                    conn.queue_text(&channel_error(&name, &e));
                }
            }
        }
    }
    if still_there(shard, key, client) {
        shard.flush(key);
    }
}

/// `{"channel": name, "error": {"code", "message"}}`: a server-side subscription that failed.
fn channel_error(name: &str, e: &ClientError) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "channel": name,
        "error": {"code": e.code(), "message": e.to_string()},
    }))
    .expect("json")
}

async fn unsubscribe(shard: &Rc<Shard>, key: usize, id: Option<u64>, name: &str) -> Reply {
    let ch = ChannelName::parse(name)?;
    let (was, emptied, me) = {
        let mut st = shard.state.borrow_mut();
        let conn = &mut st.conns[key];
        let me = conn.identity.clone();
        match conn.subs.iter().position(|c| c == &ch) {
            Some(i) => {
                conn.subs.swap_remove(i);
                let emptied = st.abort_subscribe(&ch, key as u32);
                (true, emptied, me)
            }
            None => (false, false, me),
        }
    };
    // Unsubscribing from a channel one is not in is not an error: the goal state holds.
    send(shard, key, &reply::result(id, &json!({})));
    if was {
        shard
            .after_leave(&ch, &client_name(shard, key), me.as_deref())
            .await;
    }
    if emptied {
        shard.node.remove_interest(&ch).await;
    }
    Ok(())
}

async fn publish(shard: &Rc<Shard>, key: usize, id: Option<u64>, name: &str, data: Bytes) -> Reply {
    let me = identity(shard, key)?;
    let (ch, ns) = channel_for(&shard.node, &me, name)?;
    if !ns.publish {
        return Err(ClientError::PermissionDenied);
    }
    let proxy_url = &shard.node.config.auth.publish_proxy_url;
    let data = if proxy_url.is_empty() {
        data
    } else {
        let outcome = crate::auth::proxy::publish(
            proxy_url,
            &client_name(shard, key),
            &me,
            &ch,
            data,
            shard.node.config.auth.proxy_timeout.0,
        )
        .await;
        crate::metrics::count_proxy("publish", &outcome);
        outcome?
    };
    let info = serde_json::to_vec(&json!({ "user": &*me.user })).expect("json");
    reply::check_publication_size(
        &ch,
        data.len(),
        info.len(),
        shard.node.config.limits.outbound_queue_bytes,
    )?;
    let hook = (shard.node.events.as_ref()).filter(|e| e.wants_publish());
    let hooked = hook.map(|_| (ch.clone(), data.clone()));
    let req = PublishRequest {
        channel: ch,
        data,
        info: Some(Bytes::from(info)),
        options: Node::channel_options(ns),
        idempotency_key: None,
    };
    match shard
        .node
        .broker
        .publish(req)
        .await
        .map_err(|e| e.client_error())?
    {
        Published::Now(p) => {
            metrics().publications.with_label_values(&["client"]).inc();
            if let (Some(events), Some((ch, data))) = (hook, hooked) {
                let client = shard.state.borrow().conns.get(key).map(|c| c.client);
                let client = client
                    .map(|n| shard.node.client_name(n))
                    .unwrap_or_default();
                events.client_published(&ch, &me.user, &client, &data);
            }
            send(
                shard,
                key,
                &reply::result(id, &json!({"offset": p.offset, "epoch": &*p.epoch})),
            );
            Ok(())
        }
        Published::Scheduled(_) => Err(ClientError::Internal),
    }
}

async fn presence(shard: &Rc<Shard>, key: usize, id: Option<u64>, name: &str) -> Reply {
    let me = identity(shard, key)?;
    let (ch, ns) = channel_for(&shard.node, &me, name)?;
    if !ns.presence {
        return Err(ClientError::NotAvailable);
    }
    let entries = shard
        .node
        .broker
        .presence(&ch)
        .await
        .map_err(|e| e.client_error())?;
    send(
        shard,
        key,
        &reply::result(id, &json!({ "clients": presence_map(&entries) })),
    );
    Ok(())
}

/// `{client: {"user": …, "info": …}}`
pub fn presence_map(
    entries: &[crate::broker::PresenceEntry],
) -> serde_json::Map<String, serde_json::Value> {
    entries
        .iter()
        .map(|e| {
            let mut v = json!({ "user": e.user });
            if let Some(info) = &e.info {
                v["info"] = serde_json::from_slice(info).unwrap_or(serde_json::Value::Null);
            }
            (e.client.clone(), v)
        })
        .collect()
}

async fn presence_stats(shard: &Rc<Shard>, key: usize, id: Option<u64>, name: &str) -> Reply {
    let me = identity(shard, key)?;
    let (ch, ns) = channel_for(&shard.node, &me, name)?;
    if !ns.presence {
        return Err(ClientError::NotAvailable);
    }
    let (clients, users) = shard
        .node
        .broker
        .presence_stats(&ch)
        .await
        .map_err(|e| e.client_error())?;
    send(
        shard,
        key,
        &reply::result(id, &json!({"clients": clients, "users": users})),
    );
    Ok(())
}

async fn history(
    shard: &Rc<Shard>,
    key: usize,
    id: Option<u64>,
    name: &str,
    limit: Option<usize>,
    since: Option<Position>,
) -> Reply {
    let me = identity(shard, key)?;
    let (ch, ns) = channel_for(&shard.node, &me, name)?;
    if ns.history_size == 0 {
        return Err(ClientError::NotAvailable);
    }
    let page = history_page(
        &shard.node,
        &ch,
        Node::channel_options(ns),
        since.as_ref(),
        limit,
    )
    .await
    .map_err(|e| e.client_error())?;
    send(shard, key, &reply::result(id, &page.to_json()));
    Ok(())
}

/// The bytes one publication takes in a reply's `publications` list (its JSON and a comma).
fn reply_size(p: &HistoryItem) -> usize {
    reply::publication_body_len(p.offset, p.data.len(), p.info.as_ref().map(|i| i.len())) + 1
}

/// How many of `items` (in the order given) one reply carries: at most
/// `limits.max_history_reply` of them, in a `publications` list of at most
/// `limits.max_history_reply_bytes` (`[`, then each publication with its comma or `]`).
fn fitting<'a>(node: &Node, items: impl Iterator<Item = &'a HistoryItem>) -> usize {
    let limits = &node.config.limits;
    reply::fitting(
        items.map(reply_size),
        limits.max_history_reply,
        limits.max_history_reply_bytes.saturating_sub(1),
    )
}

/// The raw JSON list of `publications` for a reply.
pub fn publications_json(publications: &[HistoryItem]) -> Box<serde_json::value::RawValue> {
    reply::publications_array(
        publications
            .iter()
            .map(|p| (p.offset, &p.data[..], p.info.as_deref())),
    )
}

/// One `history` answer (client command and `POST /api/history`), capped by
/// `limits.max_history_reply` publications and `limits.max_history_reply_bytes` bytes of
/// publication JSON.
pub struct HistoryPage {
    pub result: HistoryResult,
    /// More publications matched than the reply carries: they follow the last one, so the caller
    /// pages on with `since` = the last offset.
    pub truncated: bool,
}

impl HistoryPage {
    /// `{"publications", "offset", "epoch", "truncated"?}` (`truncated` only when true).
    pub fn to_json(&self) -> serde_json::Value {
        let h = &self.result;
        let mut v = json!({
            "publications": publications_json(&h.publications),
            "offset": h.position.offset,
            "epoch": &*h.position.epoch,
        });
        if self.truncated {
            v["truncated"] = json!(true);
        }
        v
    }
}

/// Reads history for a `history` reply: what the uncapped answer would hold (see `Broker::history`
/// for `since` and `limit`), cut to its oldest publications that fit the reply caps.
pub async fn history_page(
    node: &Node,
    ch: &ChannelName,
    options: ChannelOptions,
    since: Option<&Position>,
    limit: Option<usize>,
) -> Result<HistoryPage, BrokerError> {
    let cap = node.config.limits.max_history_reply;
    // After `since` the broker reads forward, so one more than the cap tells whether more exist
    // without reading them all. Without `since` the window is the most recent `limit`, and its
    // oldest part is what fits.
    let ask = match since {
        Some(_) => {
            let ask = cap.saturating_add(1);
            Some(limit.map_or(ask, |n| n.min(ask)))
        }
        None => limit,
    };
    let mut result = node.broker.history(ch, options, since, ask).await?;
    let n = fitting(node, result.publications.iter());
    let truncated = n < result.publications.len();
    result.publications.truncate(n);
    Ok(HistoryPage { result, truncated })
}

/// What a `subscribe` with `recover` answers.
pub struct Recovery {
    pub position: StreamPosition,
    /// Every publication after the client's position is in `publications`.
    pub recovered: bool,
    /// More publications were missed than one reply may carry (`limits.max_history_reply`,
    /// `limits.max_history_reply_bytes`): `publications` holds the newest ones that fit, and
    /// `recovered` is false.
    pub truncated: bool,
    pub publications: Vec<HistoryItem>,
}

/// Reads the publications a client missed since `since`, capped like `history_page`, but keeping
/// the newest ones: the client continues live from there and knows it lost the older ones.
pub async fn recovery(
    node: &Node,
    ch: &ChannelName,
    options: ChannelOptions,
    since: &Position,
) -> Result<Recovery, BrokerError> {
    let cap = node.config.limits.max_history_reply;
    let (position, mut publications, mut truncated) = match node
        .broker
        .history(ch, options, Some(since), Some(cap.saturating_add(1)))
        .await
    {
        Ok(h) if h.publications.len() <= cap => (h.position, h.publications, false),
        Ok(_) => {
            // Over the count cap: read the newest `cap` instead.
            let h = node.broker.history(ch, options, None, Some(cap)).await?;
            if *h.position.epoch != *since.epoch {
                // The stream restarted in between: nothing of it is the client's.
                return Ok(Recovery {
                    position: h.position,
                    recovered: false,
                    truncated: false,
                    publications: Vec::new(),
                });
            }
            let mut pubs = h.publications;
            pubs.retain(|p| p.offset > since.offset);
            (h.position, pubs, true)
        }
        Err(BrokerError::Unrecoverable { position }) => {
            return Ok(Recovery {
                position,
                recovered: false,
                truncated: false,
                publications: Vec::new(),
            })
        }
        Err(e) => return Err(e),
    };
    let n = fitting(node, publications.iter().rev());
    if n < publications.len() {
        publications.drain(..publications.len() - n);
        truncated = true;
    }
    Ok(Recovery {
        position,
        recovered: !truncated,
        truncated,
        publications,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ident(user: &str, channels: &[&str]) -> Identity {
        Identity {
            user: Arc::from(user),
            channels: channels
                .iter()
                .map(|c| ChannelName::parse(c).unwrap())
                .collect(),
            subs: Box::new([]),
            info: None,
            expires_at: None,
        }
    }

    #[test]
    fn personal_channels_belong_to_their_user() {
        let ns = NamespaceConfig::default();
        let ch = ChannelName::parse("user:17").unwrap();
        assert!(may_subscribe(&ident("17", &[]), &ch, &ns).is_ok());
        assert_eq!(
            may_subscribe(&ident("18", &[]), &ch, &ns),
            Err(ClientError::PermissionDenied)
        );
        assert_eq!(
            may_subscribe(&ident("", &[]), &ch, &ns),
            Err(ClientError::PermissionDenied)
        );
        // The claim can grant someone else's personal channel (a librarian's console).
        assert!(may_subscribe(&ident("1", &["user:17"]), &ch, &ns).is_ok());
    }

    #[test]
    fn anonymous_and_private() {
        let ch = ChannelName::parse("room:1").unwrap();
        let open = NamespaceConfig::default();
        assert!(may_subscribe(&ident("1", &[]), &ch, &open).is_ok());
        assert!(may_subscribe(&ident("", &[]), &ch, &open).is_err());
        let anon = NamespaceConfig {
            anonymous: true,
            ..Default::default()
        };
        assert!(may_subscribe(&ident("", &[]), &ch, &anon).is_ok());
        let private = NamespaceConfig {
            private: true,
            ..Default::default()
        };
        assert!(may_subscribe(&ident("1", &[]), &ch, &private).is_err());
        assert!(may_subscribe(&ident("1", &["room:1"]), &ch, &private).is_ok());
    }
}
