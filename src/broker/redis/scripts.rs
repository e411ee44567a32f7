//! The Lua scripts (one file each under `scripts/`, compiled in) and their handles. Each script
//! touches keys of one hash tag only, so it runs atomically on whichever shard owns them; the
//! KEYS/ARGV contract of each is written at the top of its file.

use fred::types::scripts::Script;

const PUBLISH: &str = include_str!("scripts/publish.lua");
const HISTORY: &str = include_str!("scripts/history.lua");
const PRESENCE_ADD: &str = include_str!("scripts/presence_add.lua");
const PRESENCE_REMOVE: &str = include_str!("scripts/presence_remove.lua");
const PRESENCE_GET: &str = include_str!("scripts/presence_get.lua");
const SCHEDULE_ADD: &str = include_str!("scripts/schedule_add.lua");
const SCHEDULE_CLAIM: &str = include_str!("scripts/schedule_claim.lua");
const SCHEDULE_DONE: &str = include_str!("scripts/schedule_done.lua");
const SCHEDULE_CANCEL: &str = include_str!("scripts/schedule_cancel.lua");
const NODES: &str = include_str!("scripts/nodes.lua");
const POSITION: &str = include_str!("scripts/position.lua");
const TRACK_JOIN: &str = include_str!("scripts/track_join.lua");
const TRACK_LEAVE: &str = include_str!("scripts/track_leave.lua");
const TRACK_REFRESH: &str = include_str!("scripts/track_refresh.lua");
const TRACK_SWEEP: &str = include_str!("scripts/track_sweep.lua");
const TRACK_INDEX: &str = include_str!("scripts/track_index.lua");
const TRACK_CLAIM: &str = include_str!("scripts/track_claim.lua");
const TRACK_SETTLE: &str = include_str!("scripts/track_settle.lua");

/// Script handles (SHA-1 computed once; `EVALSHA`, loading the script on `NOSCRIPT`).
pub(super) struct Scripts {
    pub(super) publish: Script,
    pub(super) history: Script,
    pub(super) presence_add: Script,
    pub(super) presence_remove: Script,
    pub(super) presence_get: Script,
    pub(super) schedule_add: Script,
    pub(super) schedule_claim: Script,
    pub(super) schedule_done: Script,
    pub(super) schedule_cancel: Script,
    pub(super) nodes: Script,
    pub(super) position: Script,
    pub(super) track_join: Script,
    pub(super) track_leave: Script,
    pub(super) track_refresh: Script,
    pub(super) track_sweep: Script,
    pub(super) track_index: Script,
    pub(super) track_claim: Script,
    pub(super) track_settle: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            publish: Script::from_lua(PUBLISH),
            history: Script::from_lua(HISTORY),
            presence_add: Script::from_lua(PRESENCE_ADD),
            presence_remove: Script::from_lua(PRESENCE_REMOVE),
            presence_get: Script::from_lua(PRESENCE_GET),
            schedule_add: Script::from_lua(SCHEDULE_ADD),
            schedule_claim: Script::from_lua(SCHEDULE_CLAIM),
            schedule_done: Script::from_lua(SCHEDULE_DONE),
            schedule_cancel: Script::from_lua(SCHEDULE_CANCEL),
            nodes: Script::from_lua(NODES),
            position: Script::from_lua(POSITION),
            track_join: Script::from_lua(TRACK_JOIN),
            track_leave: Script::from_lua(TRACK_LEAVE),
            track_refresh: Script::from_lua(TRACK_REFRESH),
            track_sweep: Script::from_lua(TRACK_SWEEP),
            track_index: Script::from_lua(TRACK_INDEX),
            track_claim: Script::from_lua(TRACK_CLAIM),
            track_settle: Script::from_lua(TRACK_SETTLE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_its_own_file() {
        let s = Scripts::new();
        let all = [
            (&s.publish, "SPUBLISH"),
            (&s.history, "XRANGE"),
            (&s.presence_add, "ZADD"),
            (&s.presence_remove, "ZREM"),
            (&s.presence_get, "HVALS"),
            (&s.schedule_add, "HSET"),
            (&s.schedule_claim, "ZRANGEBYSCORE"),
            (&s.schedule_done, "HDEL"),
            (&s.schedule_cancel, "return 0"),
            (&s.nodes, "HVALS"),
            (&s.position, "HMGET"),
            (&s.track_join, "EXISTS"),
            (&s.track_leave, "'~v'"),
            (&s.track_refresh, "HEXISTS"),
            (&s.track_sweep, "DEL"),
            (&s.track_index, "ZSCORE"),
            (&s.track_claim, "ZRANGEBYSCORE"),
            (&s.track_settle, "ZREM"),
        ];
        let mut shas: Vec<&str> = all.iter().map(|(s, _)| &**s.sha1()).collect();
        shas.sort_unstable();
        shas.dedup();
        assert_eq!(shas.len(), all.len(), "two handles share one script");
        for (script, needle) in all {
            let lua = script.lua().expect("the script text is kept");
            assert!(lua.contains(needle), "{needle} missing from {lua}");
            assert!(lua.contains("KEYS"), "no KEYS in {lua}");
        }
    }
}
