//! The per-channel sequencer, as a pure state machine: no I/O, no async, no Redis, no clock.
//!
//! Every publication of a channel this node subscribes to passes it. Per channel it holds the
//! epoch and the last offset delivered, and it decides what happens to each input; the driver
//! (`subscriptions.rs`) does what it says, in order, and feeds every result back before the next
//! input. Inputs and outputs:
//!
//! | input | outputs |
//! | --- | --- |
//! | [`Sequencer::baseline`]: the node just subscribed and read the stream's top | — |
//! | [`Sequencer::forget`]: the node unsubscribed | — |
//! | [`Sequencer::publication`]: a live publication (offset, epoch) | [`Received`]: deliver, drop a duplicate, or repair a gap first |
//! | [`Sequencer::check`]: a periodic read of the stream's top (epoch, offset, when issued) | [`Checked`]: nothing, reset the channel, or repair |
//! | [`Sequencer::repaired`]: the history read a [`Repair`] asked for, and the time now | [`RepairStep`]s: deliver history items, reset, deliver or drop the held publication, resubscribe |
//!
//! Races this guards against (`git log -- src/broker/redis.rs`):
//! - a second subscription during a failover, or a publication that history repair delivered
//!   already, arrives again: dropped as a duplicate;
//! - a lost or late pub/sub message leaves a gap: repaired from history before the next
//!   publication is delivered, so subscribers see every offset once, in order; a gap history
//!   can't fill tells local subscribers to resubscribe with recovery;
//! - a position read that was issued before the channel's state last changed may be older than
//!   the state: it can't prove the stream went backwards, so it never resets the channel
//!   ("generations": a global counter stamped on every state change; the driver records the
//!   counter before issuing reads);
//! - a channel whose publications only ever arrive through repair (its live subscription is
//!   broken) is re-subscribed after two position checks in a row found a gap.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::ChannelName;

/// One channel's delivery state.
#[derive(Debug)]
struct ChanState {
    epoch: Arc<str>,
    /// The last offset delivered (or deliberately skipped).
    last: u64,
    /// The generation when this state last changed: a position read issued before that may be
    /// older than the state, so it can't prove a regression.
    generation: u64,
    /// The last position check found a gap; a second one in a row re-subscribes the channel.
    suspect: bool,
}

/// Every subscribed channel's delivery state.
#[derive(Debug)]
pub(crate) struct Sequencer {
    channels: HashMap<ChannelName, ChanState>,
    /// Bumped on every change of a channel's state.
    generation: u64,
}

/// What to do with a live publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Received {
    /// It is the next one: deliver it.
    Deliver,
    /// Delivered already (from history, or through a second subscription): drop it.
    Duplicate,
    /// Publications before it are missing: hold it, read history as asked and hand the result
    /// to [`Sequencer::repaired`], which says what to do with it.
    Repair(Repair),
}

/// What a position check calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Checked {
    /// The channel is where the stream is (or the read can't tell).
    InStep,
    /// The stream we followed is gone (lost in a failover, or expired and restarted with
    /// publications we never saw): local subscribers must resubscribe with recovery. The
    /// channel now follows the position read.
    Reset,
    /// Publications no live message revealed: read history as asked and hand the result to
    /// [`Sequencer::repaired`].
    Repair(Repair),
}

/// A history read the sequencer needs: the publications of `channel` after `after` in `epoch`,
/// at least up to `upto`. Handed back to [`Sequencer::repaired`] with the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Repair {
    pub(crate) channel: ChannelName,
    pub(crate) epoch: Arc<str>,
    pub(crate) after: u64,
    pub(crate) upto: u64,
    cause: Cause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// A live publication at this offset revealed the gap and waits for the repair.
    Live { offset: u64 },
    /// A position check revealed it.
    Check,
}

/// One thing to do after a repair; [`Sequencer::repaired`] returns them in the order to do them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RepairStep {
    /// Deliver the `index`-th item of the history read (at `offset`) stamped `published_at_us`.
    DeliverHistory {
        index: usize,
        offset: u64,
        published_at_us: u64,
    },
    /// Publications up to the repair's `upto` are lost: local subscribers must resubscribe with
    /// recovery.
    Reset,
    /// Deliver the live publication that was held for the repair.
    DeliverHeld { offset: u64 },
    /// Drop the live publication that was held: the repair delivered it.
    DropHeld { offset: u64 },
    /// Subscribe the channel again: two checks in a row found publications that never came live.
    Resubscribe,
}

impl ChanState {
    fn new(epoch: Arc<str>, last: u64, generation: u64) -> Self {
        ChanState {
            epoch,
            last,
            generation,
            suspect: false,
        }
    }

    /// The stream is followed from (`epoch`, `last`) on.
    fn restart(&mut self, epoch: Arc<str>, last: u64, generation: u64) {
        self.epoch = epoch;
        self.last = last;
        self.suspect = false;
        self.generation = generation;
    }
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

/// The next generation (a free function so it can borrow the counter beside a channel's state).
fn bump(generation: &mut u64) -> u64 {
    *generation += 1;
    *generation
}

impl Sequencer {
    pub(crate) fn new() -> Self {
        Sequencer {
            channels: HashMap::new(),
            generation: 1,
        }
    }

    /// The generation now: record it before issuing position reads and pass it to
    /// [`Sequencer::check`] with what they return.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The channel's name as the sequencer keeps it (parsed once, shared by every delivery).
    pub(crate) fn channel(&self, name: &str) -> Option<&ChannelName> {
        self.channels.get_key_value(name).map(|(k, _)| k)
    }

    /// (epoch, last offset delivered) of a channel the sequencer follows.
    #[cfg(test)]
    pub(crate) fn position(&self, name: &str) -> Option<(&Arc<str>, u64)> {
        self.channels.get(name).map(|st| (&st.epoch, st.last))
    }

    /// The node just subscribed to `channel` and read its stream at (`epoch`, `top`):
    /// publications up to `top` are of no interest to anyone here.
    pub(crate) fn baseline(&mut self, channel: &ChannelName, epoch: Arc<str>, top: u64) {
        let Sequencer {
            channels,
            generation,
        } = self;
        match channels.get_mut(channel.as_str()) {
            Some(st) if st.epoch == epoch => {
                // A change like any other: a position read issued before it can't prove that
                // the stream went backwards.
                if top > st.last {
                    st.last = top;
                    st.generation = bump(generation);
                }
            }
            Some(st) => st.restart(epoch, top, bump(generation)),
            None => {
                channels.insert(
                    channel.clone(),
                    ChanState::new(epoch, top, bump(generation)),
                );
            }
        }
    }

    /// The node left `channel`.
    pub(crate) fn forget(&mut self, channel: &str) {
        self.channels.remove(channel);
    }

    /// A live publication of `channel` at (`epoch`, `offset`).
    pub(crate) fn publication(
        &mut self,
        channel: &ChannelName,
        epoch: &str,
        offset: u64,
    ) -> Received {
        let Sequencer {
            channels,
            generation,
        } = self;
        let st = match channels.get_mut(channel.as_str()) {
            Some(st) => st,
            None => channels.entry(channel.clone()).or_insert(ChanState::new(
                Arc::from(epoch),
                offset.saturating_sub(1),
                bump(generation),
            )),
        };
        if *st.epoch != *epoch {
            // The stream restarted under a new epoch (it expired, or was lost with a Redis
            // shard). Offsets start over; clients notice the lower offset and resubscribe
            // (protocol §11).
            st.restart(Arc::from(epoch), offset.saturating_sub(1), bump(generation));
        }
        if offset <= st.last {
            return Received::Duplicate;
        }
        if offset > st.last + 1 {
            return Received::Repair(Repair {
                channel: channel.clone(),
                epoch: st.epoch.clone(),
                after: st.last,
                upto: offset - 1,
                cause: Cause::Live { offset },
            });
        }
        st.suspect = false;
        st.last = offset;
        st.generation = bump(generation);
        Received::Deliver
    }

    /// A position check read `channel`'s stream at (`epoch`, `top`); `read_at` is
    /// [`Sequencer::generation`] from before the read was issued.
    pub(crate) fn check(
        &mut self,
        channel: &str,
        epoch: Arc<str>,
        top: u64,
        read_at: u64,
    ) -> Checked {
        let Sequencer {
            channels,
            generation,
        } = self;
        let Some((name, st)) = channels.get_key_value(channel) else {
            return Checked::InStep;
        };
        // The read is newer than our state only if the state didn't change after it was issued.
        let fresh = st.generation <= read_at;
        if fresh && (st.epoch != epoch || top < st.last) {
            if let Some(st) = channels.get_mut(channel) {
                st.restart(epoch, top, bump(generation));
            }
            return Checked::Reset;
        }
        if st.epoch == epoch && top > st.last {
            return Checked::Repair(Repair {
                channel: name.clone(),
                epoch,
                after: st.last,
                upto: top,
                cause: Cause::Check,
            });
        }
        Checked::InStep
    }

    /// The history read `repair` asked for: the offsets of the items it returned, in order, or
    /// None when history can't fill the gap (the read failed, or the position is gone). Repaired
    /// publications are stamped `now_us`. A repair whose channel was forgotten or moved on
    /// meanwhile is stale and ignored (the driver feeds each result back before any other input,
    /// so that doesn't happen there).
    pub(crate) fn repaired(
        &mut self,
        repair: Repair,
        history: Option<&[u64]>,
        now_us: u64,
    ) -> Vec<RepairStep> {
        let Sequencer {
            channels,
            generation,
        } = self;
        let mut steps = Vec::new();
        let Some(st) = channels.get_mut(repair.channel.as_str()) else {
            return steps;
        };
        if st.epoch != repair.epoch || st.last != repair.after {
            return steps;
        }
        if let Some(offsets) = history {
            for (index, &offset) in offsets.iter().enumerate() {
                if offset <= st.last {
                    continue;
                }
                st.last = offset;
                steps.push(RepairStep::DeliverHistory {
                    index,
                    offset,
                    published_at_us: now_us,
                });
            }
            if !steps.is_empty() {
                st.generation = bump(generation);
            }
        }
        if st.last < repair.upto {
            // Gone from history: move on past the gap; subscribers recover by themselves.
            st.last = repair.upto;
            st.generation = bump(generation);
            steps.push(RepairStep::Reset);
        }
        match repair.cause {
            Cause::Live { offset } if offset <= st.last => {
                steps.push(RepairStep::DropHeld { offset });
            }
            Cause::Live { offset } => {
                st.suspect = false;
                st.last = offset;
                st.generation = bump(generation);
                steps.push(RepairStep::DeliverHeld { offset });
            }
            Cause::Check if st.suspect => {
                st.suspect = false;
                steps.push(RepairStep::Resubscribe);
            }
            Cause::Check => st.suspect = true,
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    fn e(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    /// A sequencer following `room:1` in epoch "e" from offset `last`.
    fn following(last: u64) -> (Sequencer, ChannelName) {
        let mut seq = Sequencer::new();
        let ch = name("room:1");
        seq.baseline(&ch, e("e"), last);
        (seq, ch)
    }

    fn pos(seq: &Sequencer, ch: &ChannelName) -> (String, u64) {
        let (epoch, last) = seq.position(ch.as_str()).expect("followed");
        (epoch.to_string(), last)
    }

    fn repair_of(r: Received) -> Repair {
        match r {
            Received::Repair(r) => r,
            other => panic!("expected a repair, got {other:?}"),
        }
    }

    fn check_repair(c: Checked) -> Repair {
        match c {
            Checked::Repair(r) => r,
            other => panic!("expected a repair, got {other:?}"),
        }
    }

    fn history(index: usize, offset: u64) -> RepairStep {
        RepairStep::DeliverHistory {
            index,
            offset,
            published_at_us: 77,
        }
    }

    #[test]
    fn in_order_publications_are_delivered() {
        let (mut seq, ch) = following(0);
        for n in 1..=3 {
            assert_eq!(seq.publication(&ch, "e", n), Received::Deliver);
        }
        assert_eq!(pos(&seq, &ch), ("e".into(), 3));
        assert_eq!(seq.channel("room:1"), Some(&ch));
    }

    #[test]
    fn a_publication_on_an_unknown_channel_starts_it() {
        let mut seq = Sequencer::new();
        let ch = name("room:1");
        assert_eq!(seq.publication(&ch, "e", 5), Received::Deliver);
        assert_eq!(pos(&seq, &ch), ("e".into(), 5));
        assert_eq!(seq.publication(&ch, "e", 6), Received::Deliver);
    }

    #[test]
    fn duplicates_are_dropped() {
        let (mut seq, ch) = following(0);
        assert_eq!(seq.publication(&ch, "e", 1), Received::Deliver);
        assert_eq!(seq.publication(&ch, "e", 2), Received::Deliver);
        let g = seq.generation();
        assert_eq!(seq.publication(&ch, "e", 2), Received::Duplicate);
        assert_eq!(seq.publication(&ch, "e", 1), Received::Duplicate);
        assert_eq!(seq.generation(), g, "a duplicate changes nothing");
        assert_eq!(pos(&seq, &ch), ("e".into(), 2));
        // Publications up to the subscribe-time position are of no interest.
        let (mut seq, ch) = following(10);
        assert_eq!(seq.publication(&ch, "e", 7), Received::Duplicate);
        assert_eq!(seq.publication(&ch, "e", 11), Received::Deliver);
    }

    #[test]
    fn a_gap_asks_for_a_repair_from_the_last_offset() {
        let (mut seq, ch) = following(0);
        assert_eq!(seq.publication(&ch, "e", 1), Received::Deliver);
        let g = seq.generation();
        let r = repair_of(seq.publication(&ch, "e", 4));
        assert_eq!(
            (r.channel.as_str(), &*r.epoch, r.after, r.upto),
            ("room:1", "e", 1, 3)
        );
        assert_eq!(
            seq.generation(),
            g,
            "nothing changes until the repair is in"
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 1));
    }

    #[test]
    fn a_repair_filling_the_gap_delivers_in_order_then_the_held_publication() {
        let (mut seq, ch) = following(0);
        seq.publication(&ch, "e", 1);
        let r = repair_of(seq.publication(&ch, "e", 4));
        let g = seq.generation();
        let steps = seq.repaired(r, Some(&[2, 3]), 77);
        assert_eq!(
            steps,
            vec![
                history(0, 2),
                history(1, 3),
                RepairStep::DeliverHeld { offset: 4 }
            ]
        );
        assert!(seq.generation() > g);
        assert_eq!(pos(&seq, &ch), ("e".into(), 4));
        assert_eq!(seq.publication(&ch, "e", 3), Received::Duplicate);
        assert_eq!(seq.publication(&ch, "e", 5), Received::Deliver);
    }

    #[test]
    fn a_repair_skips_what_was_delivered_and_drops_the_held_publication_it_covered() {
        let (mut seq, ch) = following(0);
        seq.publication(&ch, "e", 1);
        let r = repair_of(seq.publication(&ch, "e", 4));
        // History answers from the position on, and may already hold the publication waiting.
        let steps = seq.repaired(r, Some(&[1, 2, 3, 4, 5]), 77);
        assert_eq!(
            steps,
            vec![
                history(1, 2),
                history(2, 3),
                history(3, 4),
                history(4, 5),
                RepairStep::DropHeld { offset: 4 }
            ]
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 5));
        assert_eq!(seq.publication(&ch, "e", 5), Received::Duplicate);
    }

    #[test]
    fn an_unrepairable_gap_resets_the_channel_and_moves_on() {
        let (mut seq, ch) = following(0);
        seq.publication(&ch, "e", 1);
        let r = repair_of(seq.publication(&ch, "e", 4));
        assert_eq!(
            seq.repaired(r, None, 77),
            vec![RepairStep::Reset, RepairStep::DeliverHeld { offset: 4 }]
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 4));
        assert_eq!(seq.publication(&ch, "e", 5), Received::Deliver);

        // History that holds only part of the gap: what it has goes out, then the reset.
        let (mut seq, ch) = following(0);
        seq.publication(&ch, "e", 1);
        let r = repair_of(seq.publication(&ch, "e", 5));
        assert_eq!(
            seq.repaired(r, Some(&[2]), 77),
            vec![
                history(0, 2),
                RepairStep::Reset,
                RepairStep::DeliverHeld { offset: 5 }
            ]
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 5));
    }

    #[test]
    fn a_new_epoch_restarts_the_channel() {
        let (mut seq, ch) = following(0);
        for n in 1..=5 {
            seq.publication(&ch, "e", n);
        }
        // Offsets start over under the new epoch: not a duplicate.
        assert_eq!(seq.publication(&ch, "f", 1), Received::Deliver);
        assert_eq!(pos(&seq, &ch), ("f".into(), 1));
        // A gap in the new epoch is repaired in the new epoch.
        let r = repair_of(seq.publication(&ch, "f", 3));
        assert_eq!((&*r.epoch, r.after, r.upto), ("f", 1, 2));
        // The first publication seen of a new epoch is followed from there on: its earlier
        // offsets are the clients' to recover (they see the epoch change).
        let (mut seq, ch) = following(9);
        assert_eq!(seq.publication(&ch, "g", 3), Received::Deliver);
        assert_eq!(pos(&seq, &ch), ("g".into(), 3));
    }

    #[test]
    fn a_baseline_follows_the_stream_it_read() {
        let (mut seq, ch) = following(5);
        seq.baseline(&ch, e("e"), 3); // never backwards within an epoch
        assert_eq!(pos(&seq, &ch), ("e".into(), 5));
        seq.baseline(&ch, e("e"), 8);
        assert_eq!(pos(&seq, &ch), ("e".into(), 8));
        seq.baseline(&ch, e("f"), 2); // another epoch: from there
        assert_eq!(pos(&seq, &ch), ("f".into(), 2));
    }

    #[test]
    fn a_position_check_in_step_does_nothing() {
        let (mut seq, ch) = following(0);
        seq.publication(&ch, "e", 1);
        let g = seq.generation();
        assert_eq!(seq.check("room:1", e("e"), 1, g), Checked::InStep);
        assert_eq!(
            seq.check("room:2", e("e"), 9, g),
            Checked::InStep,
            "unknown"
        );
        assert_eq!(seq.generation(), g);
    }

    #[test]
    fn a_position_check_repairs_what_no_publication_revealed_and_resubscribes_a_quiet_stream() {
        let (mut seq, ch) = following(0);
        seq.publication(&ch, "e", 1);
        let r = check_repair(seq.check("room:1", e("e"), 3, seq.generation()));
        assert_eq!((r.after, r.upto), (1, 3));
        assert_eq!(
            seq.repaired(r, Some(&[2, 3]), 77),
            vec![history(0, 2), history(1, 3)]
        );
        // A second check in a row finding publications that never came live: resubscribe.
        let r = check_repair(seq.check("room:1", e("e"), 4, seq.generation()));
        assert_eq!(
            seq.repaired(r, Some(&[4]), 77),
            vec![history(0, 4), RepairStep::Resubscribe]
        );
        // Then it starts counting again; a live publication in between clears the suspicion.
        let r = check_repair(seq.check("room:1", e("e"), 5, seq.generation()));
        assert_eq!(seq.repaired(r, Some(&[5]), 77), vec![history(0, 5)]);
        assert_eq!(seq.publication(&ch, "e", 6), Received::Deliver);
        let r = check_repair(seq.check("room:1", e("e"), 7, seq.generation()));
        assert_eq!(seq.repaired(r, Some(&[7]), 77), vec![history(0, 7)]);
        // A check gap history can't fill resets the channel.
        let r = check_repair(seq.check("room:1", e("e"), 9, seq.generation()));
        assert_eq!(
            seq.repaired(r, None, 77),
            vec![RepairStep::Reset, RepairStep::Resubscribe]
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 9));
    }

    #[test]
    fn a_fresh_read_showing_another_stream_resets_the_channel() {
        // The stream went backwards (lost in a failover).
        let (mut seq, ch) = following(0);
        for n in 1..=5 {
            seq.publication(&ch, "e", n);
        }
        assert_eq!(
            seq.check("room:1", e("e"), 2, seq.generation()),
            Checked::Reset
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 2));
        // It expired and restarted under another epoch.
        assert_eq!(
            seq.check("room:1", e("f"), 4, seq.generation()),
            Checked::Reset
        );
        assert_eq!(pos(&seq, &ch), ("f".into(), 4));
        assert_eq!(seq.publication(&ch, "f", 5), Received::Deliver);
    }

    #[test]
    fn a_position_read_older_than_the_channel_state_does_not_reset() {
        let (mut seq, ch) = following(0);
        seq.publication(&ch, "e", 1);
        // The check records the generation, issues its read (top 1), and publications 2 and 3
        // are delivered before its answer is in.
        let read_at = seq.generation();
        seq.publication(&ch, "e", 2);
        seq.publication(&ch, "e", 3);
        assert_eq!(seq.check("room:1", e("e"), 1, read_at), Checked::InStep);
        assert_eq!(pos(&seq, &ch), ("e".into(), 3));
        // Same when the state moved to a new epoch after the read was issued.
        let read_at = seq.generation();
        seq.publication(&ch, "e2", 1);
        assert_eq!(seq.check("room:1", e("e"), 3, read_at), Checked::InStep);
        assert_eq!(pos(&seq, &ch), ("e2".into(), 1));
        // And after a repair moved it.
        let read_at = seq.generation();
        let r = repair_of(seq.publication(&ch, "e2", 4));
        seq.repaired(r, Some(&[2, 3]), 77);
        assert_eq!(seq.check("room:1", e("e2"), 1, read_at), Checked::InStep);
        // And after a baseline moved it forward (the subscribe-time read may be the newer one).
        let read_at = seq.generation();
        seq.baseline(&ch, e("e2"), 9);
        assert_eq!(seq.check("room:1", e("e2"), 4, read_at), Checked::InStep);
        assert_eq!(pos(&seq, &ch), ("e2".into(), 9));
        // A read issued after the last change is fresh again.
        assert_eq!(
            seq.check("room:1", e("e2"), 4, seq.generation()),
            Checked::Reset
        );
    }

    #[test]
    fn forgotten_channels_start_over_and_stale_repairs_are_ignored() {
        let (mut seq, ch) = following(0);
        seq.publication(&ch, "e", 1);
        let r = check_repair(seq.check("room:1", e("e"), 3, seq.generation()));
        seq.forget("room:1");
        assert_eq!(seq.position("room:1"), None);
        assert_eq!(seq.repaired(r, Some(&[2, 3]), 77), vec![]);
        assert_eq!(
            seq.check("room:1", e("e"), 3, seq.generation()),
            Checked::InStep
        );
        assert_eq!(seq.publication(&ch, "e", 9), Received::Deliver);
        // A repair for a stream the channel no longer follows is stale too.
        let r = repair_of(seq.publication(&ch, "e", 12));
        seq.baseline(&ch, e("f"), 0);
        assert_eq!(seq.repaired(r, None, 77), vec![]);
        assert_eq!(pos(&seq, &ch), ("f".into(), 0));
    }

    #[test]
    fn every_change_moves_the_generation() {
        let mut seq = Sequencer::new();
        let ch = name("room:1");
        let mut g = seq.generation();
        let mut moved = |seq: &Sequencer| {
            let now = seq.generation();
            let m = now > g;
            g = now;
            m
        };
        seq.baseline(&ch, e("e"), 0);
        assert!(moved(&seq));
        seq.baseline(&ch, e("e"), 0);
        assert!(!moved(&seq));
        seq.publication(&ch, "e", 1);
        assert!(moved(&seq));
        seq.publication(&ch, "e", 1);
        assert!(!moved(&seq));
        let r = repair_of(seq.publication(&ch, "e", 3));
        assert!(!moved(&seq));
        seq.repaired(r, Some(&[2]), 0);
        assert!(moved(&seq));
        assert_eq!(seq.check("room:1", e("x"), 1, 0), Checked::InStep);
        assert!(!moved(&seq));
        assert_eq!(
            seq.check("room:1", e("x"), 1, seq.generation()),
            Checked::Reset
        );
        assert!(moved(&seq));
    }
}
