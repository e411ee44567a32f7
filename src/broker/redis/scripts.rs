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
