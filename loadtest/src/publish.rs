//! The backend's side of the load: publications through the server API (`POST /api/publish`),
//! at a fixed rate or flooding with a bound on publications not yet delivered.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use tokio::sync::{watch, Semaphore};

use crate::plan::{Kind, Plan};
use crate::proto::{self, Marker};
use crate::stats;

/// Live counters for progress output.
#[derive(Default)]
pub struct PubProgress {
    pub attempted: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
}

/// What the publisher did.
#[derive(Debug, Clone)]
pub struct PublishOutcome {
    pub attempted: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// API round trip, µs.
    pub api_latency: Histogram<u64>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Publications attempted per channel (one source each): what every subscriber expects.
    pub counts: Vec<Vec<u64>>,
}

struct Acc {
    errors: BTreeMap<String, u64>,
    hist: Histogram<u64>,
}

/// A minimal API client: one keep-alive pool, one request per publication.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `POST /api/publish` of each API (`plan.api_authorities`); the first is the default.
    publish_uris: Vec<hyper::Uri>,
    auth: String,
    /// `--pusher`: sign each request for `POST /apps/ID/events` instead.
    pusher: Option<Arc<PusherApp>>,
}

/// The Pusher app the publisher signs for.
pub struct PusherApp {
    pub app_id: String,
    pub key: String,
    pub secret: String,
}

impl PusherApp {
    /// The path and signed query of `POST /apps/ID/events` with `body`, at `timestamp` (Unix
    /// seconds): auth_signature = hex HMAC-SHA256(secret, "POST\nPATH\nSORTED_QUERY").
    pub fn signed_path(&self, body: &[u8], timestamp: u64) -> String {
        use hmac::{Hmac, Mac};
        use md5::Digest;
        let path = format!("/apps/{}/events", self.app_id);
        let body_md5 = hex(&md5::Md5::digest(body));
        // Already in sorted order.
        let query = format!(
            "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={body_md5}",
            self.key
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(format!("POST\n{path}\n{query}").as_bytes());
        let sig = hex(&mac.finalize().into_bytes());
        format!("{path}?{query}&auth_signature={sig}")
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Api {
    pub fn new(plan: &Plan) -> Result<Api> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(plan.opts.inflight as usize)
            .build(connector);
        let publish_uris = plan
            .api_authorities
            .iter()
            .map(|a| {
                format!("http://{a}/api/publish")
                    .parse()
                    .with_context(|| format!("API URL http://{a}"))
            })
            .collect::<Result<_>>()?;
        let pusher = plan.opts.pusher.then(|| {
            Arc::new(PusherApp {
                app_id: plan.opts.pusher_app_id.clone(),
                key: plan.opts.pusher_key.clone(),
                secret: plan.opts.pusher_secret.clone(),
            })
        });
        Ok(Api {
            client,
            publish_uris,
            auth: format!("apikey {}", plan.opts.api_key),
            pusher,
        })
    }

    /// How many APIs there are to publish through.
    pub fn len(&self) -> usize {
        self.publish_uris.len()
    }

    /// One publication; `Err` carries the failure reason.
    pub async fn publish(&self, body: String) -> Result<(), String> {
        self.publish_via(0, body).await
    }

    /// One publication through API `k` (modulo the number of APIs).
    pub async fn publish_via(&self, k: usize, body: String) -> Result<(), String> {
        let mut uri = self.publish_uris[k % self.publish_uris.len()].clone();
        if let Some(app) = &self.pusher {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            uri = format!("http://{authority}{}", app.signed_path(body.as_bytes(), ts))
                .parse()
                .map_err(|_| "api_bad_request".to_string())?;
        }
        let req = hyper::Request::post(uri)
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "api_bad_request".to_string())?;
        let resp = self.client.request(req).await.map_err(|e| {
            if e.is_connect() {
                "api_connect_failed".to_string()
            } else {
                "api_io_error".to_string()
            }
        })?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("api_http_{}", status.as_u16()))
        }
    }
}

/// Publishes the plan's API publications. `delivered()` returns (deliveries so far, open sockets)
/// for the flood window; `stop` ends it early.
pub async fn run(
    plan: Arc<Plan>,
    progress: Arc<PubProgress>,
    delivered: impl Fn() -> (u64, u64),
    mut stop: watch::Receiver<bool>,
) -> Result<PublishOutcome> {
    let api = Api::new(&plan)?;
    let total = plan.api_publications;
    let nch = plan.publication_channels();
    let mut counts = vec![vec![0u64]; nch as usize];
    let rate = match plan.kind {
        Kind::Churn => Some(plan.opts.rate.unwrap_or(100.0)),
        _ => plan.opts.rate,
    };
    let window = plan.opts.inflight.max(1);
    let sem = Arc::new(Semaphore::new(window as usize));
    let acc = Arc::new(Mutex::new(Acc {
        errors: BTreeMap::new(),
        hist: stats::new_hist(),
    }));
    let first_ns = stats::now_ns();
    let start = Instant::now();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut stall = (0u64, Instant::now());

    for k in 0..total {
        if *stop.borrow_and_update() {
            break;
        }
        match rate {
            Some(r) => {
                let due = start + Duration::from_secs_f64(k as f64 / r);
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = stop.changed() => break,
                }
            }
            None => {
                // Flood: stay at most `window` publications ahead of what subscribers received.
                loop {
                    let (d, open) = delivered();
                    if open == 0 {
                        break;
                    }
                    let caught_up = d.saturating_mul(nch) / open;
                    if k.saturating_sub(caught_up) < window {
                        break;
                    }
                    if d != stall.0 {
                        stall = (d, Instant::now());
                    } else if stall.1.elapsed() > Duration::from_secs(1) {
                        // Deliveries stopped (lost, or sockets gone): do not wait forever.
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        }
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p.expect("semaphore open"),
            _ = stop.changed() => break,
        };
        // The seq is taken only once the request is sure to go: counts are what subscribers expect.
        let ch = match plan.kind {
            Kind::Notify => rng.gen_range(0..nch) as usize,
            _ => (k % nch) as usize,
        };
        let seq = counts[ch][0];
        counts[ch][0] += 1;
        progress.attempted.fetch_add(1, Relaxed);
        let (api, acc, progress, plan) = (api.clone(), acc.clone(), progress.clone(), plan.clone());
        tokio::spawn(async move {
            let marker = Marker {
                run: plan.run_id,
                src: 0,
                seq,
                ts: stats::now_ns(),
            };
            let body =
                plan.publish_body(&plan.channels[ch], &proto::marker_data(&marker, plan.pad));
            let t0 = Instant::now();
            let r = api.publish(body).await;
            let us = t0.elapsed().as_micros() as u64;
            let mut a = acc.lock().expect("publisher lock");
            stats::record(&mut a.hist, us);
            match r {
                Ok(()) => {
                    progress.ok.fetch_add(1, Relaxed);
                }
                Err(reason) => {
                    progress.errors.fetch_add(1, Relaxed);
                    *a.errors.entry(reason).or_default() += 1;
                }
            }
            drop(permit);
        });
    }
    // Wait for requests still in flight (bounded: a dead node answers quickly).
    let _ = tokio::time::timeout(Duration::from_secs(30), sem.acquire_many(window as u32)).await;
    let a = acc.lock().expect("publisher lock");
    Ok(PublishOutcome {
        attempted: progress.attempted.load(Relaxed),
        ok: progress.ok.load(Relaxed),
        errors: a.errors.clone(),
        api_latency: a.hist.clone(),
        first_ns,
        last_ns: stats::now_ns(),
        counts,
    })
}

/// million, step 1: one publication to the shared channel (source 0, seq 0), through every
/// node's API with --api-fanout (no shared broker: each node reaches its own sockets), else
/// through the first API (the broker carries it to every node).
pub async fn million_broadcast(plan: &Plan, progress: &PubProgress) -> Result<PublishOutcome> {
    let api = Api::new(plan)?;
    let targets = if plan.opts.api_fanout { api.len() } else { 1 };
    let marker = Marker {
        run: plan.run_id,
        src: 0,
        seq: 0,
        ts: stats::now_ns(),
    };
    let body = plan.publish_body(&plan.channels[0], &proto::marker_data(&marker, plan.pad));
    let first_ns = marker.ts;
    let mut set = tokio::task::JoinSet::new();
    for k in 0..targets {
        let (api, body) = (api.clone(), body.clone());
        set.spawn(async move {
            let t0 = Instant::now();
            (
                api.publish_via(k, body).await,
                t0.elapsed().as_micros() as u64,
            )
        });
    }
    progress.attempted.fetch_add(1, Relaxed);
    let mut errors = BTreeMap::new();
    let mut hist = stats::new_hist();
    while let Some(r) = set.join_next().await {
        let (r, us) = r.context("publisher task")?;
        stats::record(&mut hist, us);
        if let Err(reason) = r {
            *errors.entry(reason).or_default() += 1;
        }
    }
    // Counted published once sent: a failed request still leaves its subscribers expecting it.
    if errors.is_empty() {
        progress.ok.fetch_add(1, Relaxed);
    } else {
        progress.errors.fetch_add(1, Relaxed);
    }
    Ok(PublishOutcome {
        attempted: 1,
        ok: errors.is_empty() as u64,
        errors,
        api_latency: hist,
        first_ns,
        last_ns: stats::now_ns(),
        counts: vec![vec![1]],
    })
}

/// million, step 2: -n notifications to users drawn at random, each on `user:<id>` with source
/// `NOTIFY_SRC` and a per-user seq, at --rate (else at most --inflight requests at a time);
/// through the user's own node with --api-fanout, else round-robin over the APIs. Returns what
/// was published and, per socket, how many notifications its user was sent.
pub async fn million_notify(
    plan: &Plan,
    progress: &Arc<PubProgress>,
) -> Result<(PublishOutcome, HashMap<u64, u64>)> {
    let api = Api::new(plan)?;
    let total = plan.opts.messages;
    let window = plan.opts.inflight.max(1);
    let sem = Arc::new(Semaphore::new(window as usize));
    let acc = Arc::new(Mutex::new(Acc {
        errors: BTreeMap::new(),
        hist: stats::new_hist(),
    }));
    let mut per_user: HashMap<u64, u64> = HashMap::new();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let first_ns = stats::now_ns();
    let start = Instant::now();
    let ok_before = progress.ok.load(Relaxed);
    let mut attempted = 0u64;
    for k in 0..total {
        if let Some(r) = plan.opts.rate {
            tokio::time::sleep_until((start + Duration::from_secs_f64(k as f64 / r)).into()).await;
        }
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let s = rng.gen_range(0..plan.sockets);
        let seq = per_user.entry(s).or_default();
        let marker = Marker {
            run: plan.run_id,
            src: crate::worker::NOTIFY_SRC,
            seq: *seq,
            ts: 0,
        };
        *seq += 1;
        attempted += 1;
        progress.attempted.fetch_add(1, Relaxed);
        let via = if plan.opts.api_fanout {
            plan.node_of(s)
        } else {
            k as usize
        };
        let channel = plan.user_channel_of(s);
        let (api, acc, pad, counters) = (api.clone(), acc.clone(), plan.pad, progress.clone());
        tokio::spawn(async move {
            let marker = Marker {
                ts: stats::now_ns(),
                ..marker
            };
            let body = proto::api_publish_body(&channel, &proto::marker_data(&marker, pad));
            let t0 = Instant::now();
            let r = api.publish_via(via, body).await;
            let us = t0.elapsed().as_micros() as u64;
            let mut a = acc.lock().expect("publisher lock");
            stats::record(&mut a.hist, us);
            match r {
                Ok(()) => {
                    counters.ok.fetch_add(1, Relaxed);
                }
                Err(reason) => {
                    counters.errors.fetch_add(1, Relaxed);
                    *a.errors.entry(reason).or_default() += 1;
                }
            }
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), sem.acquire_many(window as u32)).await;
    let a = acc.lock().expect("publisher lock");
    Ok((
        PublishOutcome {
            attempted,
            ok: progress.ok.load(Relaxed) - ok_before,
            errors: a.errors.clone(),
            api_latency: a.hist.clone(),
            first_ns,
            last_ns: stats::now_ns(),
            counts: Vec::new(),
        },
        per_user,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_signature_matches_the_documented_example() {
        // Pusher's HTTP API reference, "Worked authentication example".
        let app = PusherApp {
            app_id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        };
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let p = app.signed_path(body, 1353088179);
        assert_eq!(
            p,
            "/apps/3/events?auth_key=278d425bdf160c739803&auth_timestamp=1353088179\
             &auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
