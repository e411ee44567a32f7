//! Counters and histograms: what a worker accumulates, what it sends its parent, and the merge.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Histograms hold microseconds, 1 µs .. 1 h, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Base64 of the HDR V2 serialization: how histograms cross process boundaries.
pub fn encode_hist(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serializing into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

pub fn decode_hist(s: &str) -> anyhow::Result<Histogram<u64>> {
    if s.is_empty() {
        return Ok(new_hist());
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
    Ok(h)
}

/// Adds `from` into `into`, widening as needed.
pub fn merge_into(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from)
        .expect("auto-resizing histogram accepts any value");
}

pub fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.max(1));
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Summary {
        count: h.len(),
        min_ms: ms(h.min()),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// A histogram behind several locks, so thousands of socket tasks on a few threads rarely contend.
pub struct ShardedHist {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl ShardedHist {
    pub fn new(shards: usize) -> Self {
        ShardedHist {
            shards: (0..shards.max(1)).map(|_| Mutex::new(new_hist())).collect(),
        }
    }

    pub fn record(&self, key: u64, micros: u64) {
        let i = (key % self.shards.len() as u64) as usize;
        record(&mut self.shards[i].lock().expect("histogram lock"), micros);
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut out = new_hist();
        for s in &self.shards {
            merge_into(&mut out, &s.lock().expect("histogram lock"));
        }
        out
    }
}

/// Counts by reason (failure reasons, close codes).
#[derive(Default)]
pub struct Reasons(Mutex<BTreeMap<String, u64>>);

impl Reasons {
    pub fn add(&self, reason: impl Into<String>) {
        *self
            .0
            .lock()
            .expect("reasons lock")
            .entry(reason.into())
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("reasons lock").clone()
    }
}

pub fn merge_reasons(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Counters the parent watches while the run is going (progress, time series, flood window).
#[derive(Default)]
pub struct Live {
    /// Sockets open right now.
    pub open: AtomicU64,
    /// Initial sockets that finished their attempt (connected or failed).
    pub settled: AtomicU64,
    pub failed: AtomicU64,
    pub deliveries: AtomicU64,
    /// Frames sent by sockets themselves (chat publishes, raw frames).
    pub sent: AtomicU64,
    pub reconnects: AtomicU64,
    /// Upgrades answered 503 + Retry-After and tried again (not failures).
    pub retries: AtomicU64,
    /// million: sockets the draining node closed (4010), back on another node, or given up.
    pub drained: AtomicU64,
    pub failovers: AtomicU64,
    pub failover_failed: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveSnapshot {
    pub open: u64,
    pub settled: u64,
    pub failed: u64,
    pub deliveries: u64,
    pub sent: u64,
    pub reconnects: u64,
    pub retries: u64,
    pub drained: u64,
    pub failovers: u64,
    pub failover_failed: u64,
}

impl Live {
    pub fn snapshot(&self) -> LiveSnapshot {
        LiveSnapshot {
            open: self.open.load(Relaxed),
            settled: self.settled.load(Relaxed),
            failed: self.failed.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            sent: self.sent.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            retries: self.retries.load(Relaxed),
            drained: self.drained.load(Relaxed),
            failovers: self.failovers.load(Relaxed),
            failover_failed: self.failover_failed.load(Relaxed),
        }
    }

    pub fn store(&self, s: &LiveSnapshot) {
        self.open.store(s.open, Relaxed);
        self.settled.store(s.settled, Relaxed);
        self.failed.store(s.failed, Relaxed);
        self.deliveries.store(s.deliveries, Relaxed);
        self.sent.store(s.sent, Relaxed);
        self.reconnects.store(s.reconnects, Relaxed);
        self.retries.store(s.retries, Relaxed);
        self.drained.store(s.drained, Relaxed);
        self.failovers.store(s.failovers, Relaxed);
        self.failover_failed.store(s.failover_failed, Relaxed);
    }
}

/// Everything one worker measured, as it travels to the parent (histograms base64 V2).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerReport {
    pub sockets: u64,
    pub connected: u64,
    pub failures: BTreeMap<String, u64>,
    pub disconnects: BTreeMap<String, u64>,
    pub hist_upgrade: String,
    pub hist_ready: String,
    pub hist_latency: String,
    pub hist_reconnect: String,
    /// Unix nanos of the first attempt and the last initial connection.
    pub first_attempt_ns: u64,
    pub last_connected_ns: u64,
    pub last_delivery_ns: u64,
    pub subscribers: u64,
    pub deliveries: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub foreign: u64,
    pub expected: u64,
    pub lost: u64,
    pub subscribers_with_loss: u64,
    /// Frames the sockets sent themselves (chat publishes, raw frames) and their replies.
    pub sent: u64,
    pub sent_ok: u64,
    pub send_errors: BTreeMap<String, u64>,
    pub received_raw: u64,
    pub bytes_in: u64,
    pub reconnects: u64,
    pub recovered: u64,
    pub recover_failed: u64,
    pub cpu_s: f64,
    /// Upgrades answered 503 + Retry-After that were tried again.
    pub retries: u64,
    /// million: the notifications (source 1 on `user:<id>`) apart from the broadcast.
    pub hist_latency_notify: String,
    pub expected_notify: u64,
    pub deliveries_notify: u64,
    pub lost_notify: u64,
    /// million: sockets closed by the draining node, back on another node, given up; the
    /// close → subscribed-elsewhere time, and when the last one came back.
    pub drained: u64,
    pub failovers: u64,
    pub failover_failed: u64,
    pub hist_failover: String,
    pub last_failover_ns: u64,
}

/// CPU seconds (user + system) this process has used.
pub fn self_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn fetch_max(a: &AtomicU64, v: u64) {
    a.fetch_max(v, Relaxed);
}

pub fn fetch_min(a: &AtomicU64, v: u64) {
    a.fetch_min(v, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_serialization_and_merge() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=1000 {
            record(&mut a, v);
            record(&mut b, v * 1000);
        }
        let a2 = decode_hist(&encode_hist(&a)).unwrap();
        assert_eq!(a2.len(), 1000);
        let mut m = a2;
        merge_into(&mut m, &decode_hist(&encode_hist(&b)).unwrap());
        assert_eq!(m.len(), 2000);
        let s = summarize(&m);
        assert!(s.max_ms >= 999.0 && s.max_ms <= 1001.0, "{s:?}");
        assert!(decode_hist("").unwrap().is_empty());
    }

    #[test]
    fn sharded_hist_merges_all_shards() {
        let h = ShardedHist::new(4);
        for i in 0..100 {
            h.record(i, 10);
        }
        assert_eq!(h.merged().len(), 100);
    }
}
