//! Per-source-IP admission: open connections and new connections per second per address
//! (`limits.max_connections_per_ip`, `limits.handshakes_per_ip_per_second`; 0 = off). One table
//! for the node, touched once when a socket is accepted and once when it closes — never on the
//! message path — so a mutex is enough.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::uptime_secs as clock;

#[derive(Default)]
struct Entry {
    open: u32,
    window: u32,
    started: u32,
}

pub struct PerIp {
    max_open: u32,
    max_per_second: u32,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

/// Why a new connection from an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooManyOpen,
    TooFast,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::TooManyOpen => "too many connections from this address",
            Refused::TooFast => "too many new connections from this address",
        }
    }
}

/// One admitted connection; dropping it gives the address its slot back.
pub struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut t = self.table.table.lock();
        if let Some(e) = t.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && e.window != clock() {
                t.remove(&self.ip);
            }
        }
    }
}

impl PerIp {
    /// `None` when both limits are off.
    pub fn new(max_open: usize, max_per_second: u32) -> Option<Arc<PerIp>> {
        (max_open > 0 || max_per_second > 0).then(|| {
            Arc::new(PerIp {
                max_open: u32::try_from(max_open).unwrap_or(u32::MAX),
                max_per_second,
                table: Mutex::new(HashMap::new()),
            })
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, Refused> {
        let now = clock();
        let mut t = self.table.lock();
        let e = t.entry(ip).or_default();
        if e.window != now {
            e.window = now;
            e.started = 0;
        }
        if self.max_open > 0 && e.open >= self.max_open {
            return Err(Refused::TooManyOpen);
        }
        if self.max_per_second > 0 && e.started >= self.max_per_second {
            return Err(Refused::TooFast);
        }
        e.open += 1;
        e.started += 1;
        Ok(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_open_connections_and_gives_slots_back() {
        let t = PerIp::new(2, 0).unwrap();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let a = t.admit(ip).unwrap();
        let _b = t.admit(ip).unwrap();
        assert_eq!(t.admit(ip).err(), Some(Refused::TooManyOpen));
        assert!(t.admit("127.0.0.10".parse().unwrap()).is_ok());
        drop(a);
        assert!(t.admit(ip).is_ok());
        assert!(PerIp::new(0, 0).is_none());
    }

    #[test]
    fn limits_the_rate_per_second() {
        let t = PerIp::new(0, 3).unwrap();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let now = clock();
        let mut ok = 0;
        while t.admit(ip).is_ok() {
            ok += 1;
        }
        // All within one clock second unless the second turned meanwhile.
        if clock() == now {
            assert_eq!(ok, 3);
        }
    }
}
