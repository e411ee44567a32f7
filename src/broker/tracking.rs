//! Membership with expiry, the state machine behind webhooks' fleet-wide transitions (user
//! online/offline, channel occupied/vacated), as plain data with an explicit clock. The memory
//! broker runs it under a lock; the Redis broker runs the same rules as Lua scripts
//! (`redis/tracking.rs`), one atomic script per key.
//!
//! Per key (a user id or a channel): the members holding it (node ids), each with an expiry, and
//! maybe a *vacating* deadline.
//!
//! | event | state | outcome |
//! | --- | --- | --- |
//! | join | key absent | key created: **went held** (online / occupied) |
//! | join | held or vacating | member added, vacating cancelled: no transition |
//! | leave | last live member gone | vacating until now + delay |
//! | sweep | vacating deadline passed, or every member expired | key removed: **went empty** |
//!
//! A key is held from the first join anywhere until the sweep that removes it; each transition
//! is decided by one state change, so exactly one caller sees it.

use std::collections::HashMap;

use super::TrackKind;

#[derive(Default)]
struct Held {
    /// member → expiry (ms on the caller's clock).
    members: HashMap<String, u64>,
    /// Set while nobody holds the key: the transition to empty becomes final at this time.
    vacating: Option<u64>,
}

impl Held {
    fn drop_expired(&mut self, now: u64) {
        self.members.retain(|_, exp| *exp > now);
    }
}

/// Every tracked key of one broker.
#[derive(Default)]
pub struct Memberships {
    keys: HashMap<(TrackKind, String), Held>,
}

impl Memberships {
    /// `member` holds `key` until `expires_at`. True when the key went from empty to held.
    pub fn join(&mut self, kind: TrackKind, key: &str, member: &str, expires_at: u64) -> bool {
        let k = (kind, key.to_string());
        let created = !self.keys.contains_key(&k);
        let held = self.keys.entry(k).or_default();
        held.members.insert(member.to_string(), expires_at);
        held.vacating = None;
        created
    }

    /// `member` let go of `key`; with nobody left the key vacates until `now + delay_ms`.
    pub fn leave(&mut self, kind: TrackKind, key: &str, member: &str, now: u64, delay_ms: u64) {
        let Some(held) = self.keys.get_mut(&(kind, key.to_string())) else {
            return;
        };
        held.members.remove(member);
        held.drop_expired(now);
        if held.members.is_empty() && held.vacating.is_none() {
            held.vacating = Some(now + delay_ms);
        }
    }

    /// Extends `member`'s hold; false when it holds `key` no longer (swept meanwhile).
    pub fn refresh(&mut self, kind: TrackKind, key: &str, member: &str, expires_at: u64) -> bool {
        match self
            .keys
            .get_mut(&(kind, key.to_string()))
            .and_then(|h| h.members.get_mut(member))
        {
            Some(exp) => {
                *exp = expires_at;
                true
            }
            None => false,
        }
    }

    /// Removes and returns the keys of `kind` whose transition to empty is final at `now`.
    pub fn sweep(&mut self, kind: TrackKind, now: u64) -> Vec<String> {
        let mut gone = Vec::new();
        self.keys.retain(|(k, key), held| {
            if *k != kind {
                return true;
            }
            held.drop_expired(now);
            let keep = !held.members.is_empty() || held.vacating.is_some_and(|d| d > now);
            if !keep {
                gone.push(key.clone());
            }
            keep
        });
        gone.sort_unstable();
        gone
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: TrackKind = TrackKind::User;
    const C: TrackKind = TrackKind::Channel;
    const TTL: u64 = 10_000;

    #[test]
    fn first_join_and_final_leave_are_the_transitions() {
        let mut m = Memberships::default();
        assert!(m.join(U, "17", "a", TTL), "first holder anywhere: online");
        assert!(!m.join(U, "17", "b", TTL), "a second node: no transition");
        assert!(!m.join(U, "17", "a", TTL), "joining again: idempotent");
        m.leave(U, "17", "a", 100, 3000);
        assert!(m.sweep(U, 5000).is_empty(), "b still holds it");
        m.leave(U, "17", "b", 200, 3000);
        assert!(m.sweep(U, 3199).is_empty(), "vacating, not yet final");
        assert_eq!(m.sweep(U, 3200), vec!["17".to_string()]);
        assert!(m.sweep(U, 9999).is_empty(), "reported once");
        assert!(m.is_empty());
        assert!(
            m.join(U, "17", "a", 20_000),
            "a new transition after the final one"
        );
    }

    #[test]
    fn a_join_while_vacating_cancels_it() {
        let mut m = Memberships::default();
        assert!(m.join(C, "room:1", "a", TTL));
        m.leave(C, "room:1", "a", 0, 3000);
        assert!(
            !m.join(C, "room:1", "b", TTL),
            "came back: not a new occupied"
        );
        assert!(m.sweep(C, 5000).is_empty(), "vacating was cancelled");
        m.leave(C, "room:1", "b", 6000, 3000);
        assert!(m.sweep(C, 8999).is_empty());
        assert_eq!(m.sweep(C, 9000), vec!["room:1".to_string()]);
    }

    #[test]
    fn expired_members_are_a_crashed_node() {
        let mut m = Memberships::default();
        assert!(m.join(U, "17", "dead", 1000));
        assert!(!m.join(U, "17", "live", 1000));
        assert!(m.refresh(U, "17", "live", 5000));
        assert!(m.sweep(U, 2000).is_empty(), "live still refreshes");
        assert_eq!(m.sweep(U, 5000), vec!["17".to_string()], "nobody refreshed");
        assert!(!m.refresh(U, "17", "live", 9000), "swept: join again");
    }

    #[test]
    fn kinds_are_separate() {
        let mut m = Memberships::default();
        assert!(m.join(U, "x", "a", TTL));
        assert!(m.join(C, "x", "a", TTL));
        m.leave(U, "x", "a", 0, 0);
        assert!(m.sweep(C, 1).is_empty());
        assert_eq!(m.sweep(U, 1), vec!["x".to_string()]);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_leave_of_an_unknown_key_or_member_is_harmless() {
        let mut m = Memberships::default();
        m.leave(U, "nobody", "a", 0, 1000);
        assert!(m.is_empty());
        assert!(m.join(U, "17", "a", TTL));
        m.leave(U, "17", "stranger", 0, 1000);
        assert!(m.sweep(U, 5000).is_empty(), "a still holds it");
        m.leave(U, "17", "a", 5000, 1000);
        m.leave(U, "17", "a", 5500, 1000); // twice: the first deadline stands
        assert_eq!(m.sweep(U, 6000), vec!["17".to_string()]);
    }
}
