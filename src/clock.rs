//! Time, as the rest of the server reads it. Belongs to no broker and no shard: the hub, the
//! brokers, auth and the per-IP table all take their time from here.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the process started: a coarse monotonic clock for timeouts and rate windows
/// (a u32 keeps per-connection fields small; it lasts 136 years).
pub fn uptime_secs() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() as u32
}

/// Wall-clock microseconds since the Unix epoch (publication timestamps, delivery latency).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Wall-clock seconds since the Unix epoch (token expiry).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
