//! The per-channel sequencer, as a pure state machine: no I/O, no async, no Redis, no clock.
//!
//! Every publication of a channel this node subscribes to passes it. Per channel it holds the
//! epoch and the last offset delivered, and it decides what happens to each input; the driver
//! (`subscriptions.rs`) does what it says, in order. Inputs and outputs:
//!
//! | input | outputs |
//! | --- | --- |
//! | [`Sequencer::subscribing`]: the node is about to `SSUBSCRIBE` a channel it doesn't follow | — (its publications are held) |
//! | [`Sequencer::baseline`]: the subscription is in effect and the stream's top was read after it | [`Step`]s: the held publications |
//! | [`Sequencer::forget`]: the node unsubscribed | — |
//! | [`Sequencer::publication`]: a live publication (offset, epoch, payload) | [`Step`]s: deliver, nothing (duplicate, held), or start a repair |
//! | [`Sequencer::check`]: a periodic read of the stream's top (epoch, offset, when issued) | [`Checked`]: nothing, reset the channel, or repair |
//! | [`Sequencer::repaired`]: the history read a [`Repair`] asked for, and the time now | [`Step`]s: deliver history items, reset, then the held publications, resubscribe |
//!
//! Races this guards against (`git log -- src/broker/redis.rs`):
//! - a second subscription during a failover, or a publication that history repair delivered
//!   already, arrives again: dropped as a duplicate;
//! - a lost or late pub/sub message leaves a gap: repaired from history before the next
//!   publication is delivered, so subscribers see every offset once, in order; a gap history
//!   can't fill tells local subscribers to resubscribe with recovery;
//! - a publication arriving before the subscribe-time position read is in: held until the
//!   baseline is known (it must never *become* the baseline: the offsets before it would be
//!   skipped silently);
//! - publications still in flight after an unsubscribe: dropped (only channels the node
//!   subscribes to have state, so none is recreated and leaked);
//! - a repair's history read takes a while: only that channel's publications wait (held here),
//!   the driver reads history in a task of its own and feeds the result back; other channels go
//!   on;
//! - a position read that was issued before the channel's state last changed may be older than
//!   the state: it can't prove the stream went backwards, so it never resets the channel
//!   ("generations": a global counter stamped on every state change; the driver records the
//!   counter before issuing reads);
//! - a channel whose publications only ever arrive through repair (its live subscription is
//!   broken) is re-subscribed after two position checks in a row found a gap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::protocol::ChannelName;

/// Why a channel's publications are held.
#[derive(Debug)]
enum Wait {
    /// The node is subscribing; the stream position read after the subscription is not in yet.
    Baseline,
    /// A history read is under way.
    Repair(Repair),
}

/// One channel's delivery state.
#[derive(Debug)]
struct ChanState<P> {
    /// The epoch followed; empty while unknown (no stream existed at subscribe time).
    epoch: Arc<str>,
    /// The last offset delivered (or deliberately skipped).
    last: u64,
    /// The generation when this state last changed: a position read issued before that may be
    /// older than the state, so it can't prove a regression.
    generation: u64,
    /// The last position check found a gap; a second one in a row re-subscribes the channel.
    suspect: bool,
    /// Set while publications wait (for the baseline or a repair), with them in arrival order.
    wait: Option<Wait>,
    held: VecDeque<Held<P>>,
}

#[derive(Debug)]
struct Held<P> {
    epoch: Arc<str>,
    offset: u64,
    payload: P,
}

/// Every subscribed channel's delivery state. `P` is the payload of a live publication, handed
/// back in [`Step::Deliver`] (the driver's raw message; tests use anything).
#[derive(Debug)]
pub(crate) struct Sequencer<P> {
    channels: HashMap<ChannelName, ChanState<P>>,
    /// Bumped on every change of a channel's state.
    generation: u64,
}

/// Where the stream stood when read right after the subscription took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// At (epoch, top): publications up to `top` are of no interest to anyone here.
    At(Arc<str>, u64),
    /// No stream existed: whatever epoch appears is followed from its first offset.
    Empty,
}

/// What a position check calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Checked {
    /// The channel is where the stream is (or the read can't tell, or a repair is under way).
    InStep,
    /// The stream we followed is gone (lost in a failover, or expired and restarted with
    /// publications we never saw): local subscribers must resubscribe with recovery. The
    /// channel now follows the position read.
    Reset,
    /// Publications no live message revealed: read history as asked and hand the result to
    /// [`Sequencer::repaired`]; the channel's publications are held meanwhile.
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
    /// A live publication revealed the gap (it is held first in line).
    Live,
    /// A position check revealed it.
    Check,
}

/// One thing to do; the sequencer returns them in the order to do them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step<P> {
    /// Deliver a live publication.
    Deliver {
        channel: ChannelName,
        offset: u64,
        payload: P,
    },
    /// Read history as asked (without holding up other channels) and hand the result to
    /// [`Sequencer::repaired`]; the channel's publications are held until then.
    Repair(Repair),
    /// Deliver the `index`-th item of the history read (at `offset`) stamped `published_at_us`.
    DeliverHistory {
        index: usize,
        offset: u64,
        published_at_us: u64,
    },
    /// Publications are lost (a gap history can't fill, or the stream restarted under a new
    /// epoch): local subscribers must resubscribe with recovery.
    Reset(ChannelName),
    /// Subscribe the channel again: two checks in a row found publications that never came live.
    Resubscribe(ChannelName),
}

/// The next generation (a free function so it can borrow the counter beside a channel's state).
fn bump(generation: &mut u64) -> u64 {
    *generation += 1;
    *generation
}

impl<P> ChanState<P> {
    /// The stream is followed from (`epoch`, `last`) on.
    fn restart(&mut self, epoch: Arc<str>, last: u64, generation: u64) {
        self.epoch = epoch;
        self.last = last;
        self.suspect = false;
        self.generation = generation;
    }

    /// A live publication while nothing is held: deliver, drop, or start a repair (then it is
    /// held first in line).
    fn live(
        &mut self,
        channel: &ChannelName,
        generation: &mut u64,
        held: Held<P>,
        out: &mut Vec<Step<P>>,
    ) {
        debug_assert!(self.wait.is_none());
        if *self.epoch != *held.epoch {
            if self.epoch.is_empty() {
                // No stream existed when the node subscribed: every offset of the one that
                // appeared is news.
                self.restart(held.epoch.clone(), 0, bump(generation));
            } else if held.offset <= self.last {
                // The stream restarted under a new epoch (it expired, or was lost with a Redis
                // shard, or its master changed). Offsets start over; clients notice the lower
                // offset (or the epoch when recovering) and resubscribe (protocol §11.3, §11.4).
                self.restart(
                    held.epoch.clone(),
                    held.offset.saturating_sub(1),
                    bump(generation),
                );
            } else {
                // Another epoch, but an offset a client would take for the next one (live
                // publications carry no epoch): a stale master that ran a publish queued before
                // it was demoted, or a restart that reached past our position. Delivered, it
                // would stand in for the publication the followed stream has at that offset, a
                // silent gap. Subscribers recover from the stream instead (found by the chaos
                // suite: a master SIGSTOPped, then continued).
                self.restart(held.epoch.clone(), held.offset, bump(generation));
                out.push(Step::Reset(channel.clone()));
                return;
            }
        }
        if held.offset <= self.last {
            return; // a duplicate
        }
        if held.offset > self.last + 1 {
            let r = Repair {
                channel: channel.clone(),
                epoch: self.epoch.clone(),
                after: self.last,
                upto: held.offset - 1,
                cause: Cause::Live,
            };
            self.wait = Some(Wait::Repair(r.clone()));
            // First in line (anything held already came after it).
            self.held.push_front(held);
            out.push(Step::Repair(r));
            return;
        }
        self.suspect = false;
        self.last = held.offset;
        self.generation = bump(generation);
        out.push(Step::Deliver {
            channel: channel.clone(),
            offset: held.offset,
            payload: held.payload,
        });
    }

    /// Passes held publications on until they are all out or one starts a repair.
    fn release(&mut self, channel: &ChannelName, generation: &mut u64, out: &mut Vec<Step<P>>) {
        while self.wait.is_none() {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.live(channel, generation, h, out);
        }
    }
}

impl<P> Default for Sequencer<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> Sequencer<P> {
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

    /// Channels with state (subscribed or subscribing).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.channels.len()
    }

    /// (epoch, last offset delivered) of a channel the sequencer follows.
    #[cfg(test)]
    pub(crate) fn position(&self, name: &str) -> Option<(&Arc<str>, u64)> {
        self.channels.get(name).map(|st| (&st.epoch, st.last))
    }

    /// The node is about to subscribe to `channel`: until [`Sequencer::baseline`] its
    /// publications are held. A channel followed already (a re-subscription) goes on as it is.
    pub(crate) fn subscribing(&mut self, channel: &ChannelName) {
        let Sequencer {
            channels,
            generation,
        } = self;
        if channels.contains_key(channel.as_str()) {
            return;
        }
        channels.insert(
            channel.clone(),
            ChanState {
                epoch: Arc::from(""),
                last: 0,
                generation: bump(generation),
                suspect: false,
                wait: Some(Wait::Baseline),
                held: VecDeque::new(),
            },
        );
    }

    /// The subscription to `channel` is in effect and its stream was read after that: the
    /// channel is followed from there, and what was held meanwhile goes out (or waits for a
    /// repair of what came in between). A channel followed already keeps its position: its
    /// publications up to the read may still be in flight, and skipping them would be a silent
    /// gap.
    pub(crate) fn baseline(&mut self, channel: &str, start: Start) -> Vec<Step<P>> {
        let Sequencer {
            channels,
            generation,
        } = self;
        let mut out = Vec::new();
        let Some(name) = channels.get_key_value(channel).map(|(k, _)| k.clone()) else {
            return out;
        };
        let Some(st) = channels.get_mut(channel) else {
            return out;
        };
        if !matches!(st.wait, Some(Wait::Baseline)) {
            return out;
        }
        st.wait = None;
        match start {
            Start::At(epoch, top) => st.restart(epoch, top, bump(generation)),
            Start::Empty => st.restart(Arc::from(""), 0, bump(generation)),
        }
        st.release(&name, generation, &mut out);
        out
    }

    /// The node left `channel` (what was held is dropped).
    pub(crate) fn forget(&mut self, channel: &str) {
        self.channels.remove(channel);
    }

    /// A live publication of `channel` at (`epoch`, `offset`), carrying `payload`. A channel the
    /// node doesn't subscribe to (any more) is ignored.
    pub(crate) fn publication(
        &mut self,
        channel: &str,
        epoch: &str,
        offset: u64,
        payload: P,
    ) -> Vec<Step<P>> {
        let Sequencer {
            channels,
            generation,
        } = self;
        let mut out = Vec::new();
        let Some((name, _)) = channels.get_key_value(channel) else {
            return out;
        };
        let name = name.clone();
        let Some(st) = channels.get_mut(channel) else {
            return out;
        };
        let held = Held {
            epoch: Arc::from(epoch),
            offset,
            payload,
        };
        if st.wait.is_some() {
            st.held.push_back(held);
            return out;
        }
        st.live(&name, generation, held, &mut out);
        out
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
        if st.wait.is_some() {
            return Checked::InStep;
        }
        let name = name.clone();
        let Some(st) = channels.get_mut(channel) else {
            return Checked::InStep;
        };
        if st.epoch.is_empty() {
            // No stream existed at subscribe time: the one that exists now is followed from its
            // start.
            st.restart(epoch.clone(), 0, bump(generation));
        }
        // The read is newer than our state only if the state didn't change after it was issued.
        let fresh = st.generation <= read_at;
        if fresh && (st.epoch != epoch || top < st.last) {
            st.restart(epoch, top, bump(generation));
            return Checked::Reset;
        }
        if st.epoch == epoch && top > st.last {
            let r = Repair {
                channel: name,
                epoch,
                after: st.last,
                upto: top,
                cause: Cause::Check,
            };
            st.wait = Some(Wait::Repair(r.clone()));
            return Checked::Repair(r);
        }
        Checked::InStep
    }

    /// The history read `repair` asked for: the offsets of the items it returned, in order, or
    /// None when history can't fill the gap (the read failed, or the position is gone). Repaired
    /// publications are stamped `now_us`. Then the publications held meanwhile go out (or wait
    /// for the next repair). A repair whose channel was forgotten or moved on meanwhile is stale
    /// and ignored.
    pub(crate) fn repaired(
        &mut self,
        repair: Repair,
        history: Option<&[u64]>,
        now_us: u64,
    ) -> Vec<Step<P>> {
        let Sequencer {
            channels,
            generation,
        } = self;
        let mut steps = Vec::new();
        let Some((name, st)) = channels.get_key_value(repair.channel.as_str()) else {
            return steps;
        };
        match &st.wait {
            Some(Wait::Repair(r)) if *r == repair => {}
            _ => return steps,
        }
        let name = name.clone();
        let Some(st) = channels.get_mut(repair.channel.as_str()) else {
            return steps;
        };
        st.wait = None;
        if let Some(offsets) = history {
            let mut any = false;
            for (index, &offset) in offsets.iter().enumerate() {
                if offset <= st.last {
                    continue;
                }
                st.last = offset;
                any = true;
                steps.push(Step::DeliverHistory {
                    index,
                    offset,
                    published_at_us: now_us,
                });
            }
            if any {
                st.generation = bump(generation);
            }
        }
        if st.last < repair.upto {
            // Gone from history: move on past the gap; subscribers recover by themselves.
            st.last = repair.upto;
            st.generation = bump(generation);
            steps.push(Step::Reset(name.clone()));
        }
        match repair.cause {
            Cause::Live => {}
            Cause::Check if st.suspect => {
                st.suspect = false;
                steps.push(Step::Resubscribe(name.clone()));
            }
            Cause::Check => st.suspect = true,
        }
        st.release(&name, generation, &mut steps);
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seq = Sequencer<u64>;

    fn name(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    fn e(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    /// A sequencer following `room:1` in epoch "e" from offset `last`.
    fn following(last: u64) -> (Seq, ChannelName) {
        let mut seq = Seq::new();
        let ch = name("room:1");
        seq.subscribing(&ch);
        assert_eq!(seq.baseline("room:1", Start::At(e("e"), last)), vec![]);
        (seq, ch)
    }

    /// A publication in epoch "e" whose payload is its offset.
    fn publ(seq: &mut Seq, epoch: &str, offset: u64) -> Vec<Step<u64>> {
        seq.publication("room:1", epoch, offset, offset)
    }

    fn deliver(offset: u64) -> Step<u64> {
        Step::Deliver {
            channel: name("room:1"),
            offset,
            payload: offset,
        }
    }

    fn pos(seq: &Seq, ch: &ChannelName) -> (String, u64) {
        let (epoch, last) = seq.position(ch.as_str()).expect("followed");
        (epoch.to_string(), last)
    }

    fn repair_of(steps: Vec<Step<u64>>) -> Repair {
        match &steps[..] {
            [Step::Repair(r)] => r.clone(),
            other => panic!("expected a repair, got {other:?}"),
        }
    }

    fn check_repair(c: Checked) -> Repair {
        match c {
            Checked::Repair(r) => r,
            other => panic!("expected a repair, got {other:?}"),
        }
    }

    fn history(index: usize, offset: u64) -> Step<u64> {
        Step::DeliverHistory {
            index,
            offset,
            published_at_us: 77,
        }
    }

    #[test]
    fn in_order_publications_are_delivered() {
        let (mut seq, ch) = following(0);
        for n in 1..=3 {
            assert_eq!(publ(&mut seq, "e", n), vec![deliver(n)]);
        }
        assert_eq!(pos(&seq, &ch), ("e".into(), 3));
        assert_eq!(seq.channel("room:1"), Some(&ch));
    }

    /// Issue "Redis broker under chaos" 1.2: publications in flight after an unsubscribe must
    /// not recreate the channel's state (it would never be removed again).
    #[test]
    fn a_publication_on_an_unknown_or_forgotten_channel_is_dropped_and_creates_no_state() {
        let mut seq = Seq::new();
        assert_eq!(publ(&mut seq, "e", 5), vec![]);
        assert_eq!(seq.len(), 0);
        let (mut seq, _) = following(0);
        assert_eq!(publ(&mut seq, "e", 1), vec![deliver(1)]);
        seq.forget("room:1");
        assert_eq!(publ(&mut seq, "e", 2), vec![]);
        assert_eq!(publ(&mut seq, "e", 4), vec![]);
        assert_eq!(seq.len(), 0, "no state leaks");
        assert_eq!(seq.position("room:1"), None);
    }

    /// Issue 1.1: a publication arriving before the subscribe-time read must not become the
    /// baseline (the offsets before it would be skipped silently): it is held, and the gap
    /// between the read and it is repaired.
    #[test]
    fn publications_before_the_baseline_are_held_and_a_gap_before_them_is_repaired() {
        let mut seq = Seq::new();
        let ch = name("room:1");
        seq.subscribing(&ch);
        // The live stream starts flowing at 8 before the read (top 5) is in.
        assert_eq!(publ(&mut seq, "e", 8), vec![]);
        assert_eq!(publ(&mut seq, "e", 9), vec![]);
        let r = repair_of(seq.baseline("room:1", Start::At(e("e"), 5)));
        assert_eq!((r.after, r.upto), (5, 7));
        assert_eq!(publ(&mut seq, "e", 10), vec![], "held behind the repair");
        assert_eq!(
            seq.repaired(r, Some(&[6, 7]), 77),
            vec![
                history(0, 6),
                history(1, 7),
                deliver(8),
                deliver(9),
                deliver(10)
            ]
        );
        // Held publications the read covers are dropped.
        let mut seq = Seq::new();
        seq.subscribing(&ch);
        publ(&mut seq, "e", 4);
        publ(&mut seq, "e", 6);
        assert_eq!(
            seq.baseline("room:1", Start::At(e("e"), 5)),
            vec![deliver(6)]
        );
        // No stream existed at the read: the epoch that appears is followed from offset 1.
        let mut seq = Seq::new();
        seq.subscribing(&ch);
        assert_eq!(seq.baseline("room:1", Start::Empty), vec![]);
        let r = repair_of(publ(&mut seq, "f", 3));
        assert_eq!((&*r.epoch, r.after, r.upto), ("f", 0, 2));
    }

    /// Issue 1.1: a second subscribe-time read (re-subscribing a followed channel) must not
    /// move the channel past publications still in flight.
    #[test]
    fn a_baseline_never_skips_what_a_followed_channel_has_in_flight() {
        let (mut seq, ch) = following(5);
        seq.subscribing(&ch);
        assert_eq!(seq.baseline("room:1", Start::At(e("e"), 8)), vec![]);
        assert_eq!(pos(&seq, &ch), ("e".into(), 5));
        assert_eq!(publ(&mut seq, "e", 6), vec![deliver(6)]);
    }

    /// Issue 1.3: a repair holds only its own channel.
    #[test]
    fn a_repair_holds_only_its_channel() {
        let (mut seq, _) = following(0);
        let other = name("room:2");
        seq.subscribing(&other);
        seq.baseline("room:2", Start::At(e("x"), 0));
        publ(&mut seq, "e", 1);
        let r = repair_of(publ(&mut seq, "e", 4));
        assert_eq!(publ(&mut seq, "e", 5), vec![], "room:1 waits");
        assert_eq!(
            seq.publication("room:2", "x", 1, 100),
            vec![Step::Deliver {
                channel: other.clone(),
                offset: 1,
                payload: 100
            }],
            "room:2 goes on"
        );
        // A check of the repairing channel waits for the repair too.
        assert_eq!(
            seq.check("room:1", e("e"), 9, seq.generation()),
            Checked::InStep
        );
        assert_eq!(
            seq.repaired(r, Some(&[2, 3]), 77),
            vec![history(0, 2), history(1, 3), deliver(4), deliver(5)]
        );
    }

    #[test]
    fn duplicates_are_dropped() {
        let (mut seq, ch) = following(0);
        publ(&mut seq, "e", 1);
        publ(&mut seq, "e", 2);
        let g = seq.generation();
        assert_eq!(publ(&mut seq, "e", 2), vec![]);
        assert_eq!(publ(&mut seq, "e", 1), vec![]);
        assert_eq!(seq.generation(), g, "a duplicate changes nothing");
        assert_eq!(pos(&seq, &ch), ("e".into(), 2));
        let (mut seq, _) = following(10);
        assert_eq!(publ(&mut seq, "e", 7), vec![]);
        assert_eq!(publ(&mut seq, "e", 11), vec![deliver(11)]);
    }

    #[test]
    fn a_repair_skips_what_was_delivered_and_drops_the_held_publication_it_covered() {
        let (mut seq, ch) = following(0);
        publ(&mut seq, "e", 1);
        let g = seq.generation();
        let r = repair_of(publ(&mut seq, "e", 4));
        assert_eq!(
            (r.channel.as_str(), &*r.epoch, r.after, r.upto),
            ("room:1", "e", 1, 3)
        );
        assert_eq!(
            seq.generation(),
            g,
            "nothing changes until the repair is in"
        );
        let steps = seq.repaired(r, Some(&[1, 2, 3, 4, 5]), 77);
        assert_eq!(
            steps,
            vec![history(1, 2), history(2, 3), history(3, 4), history(4, 5)]
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 5));
        assert_eq!(publ(&mut seq, "e", 5), vec![]);
    }

    #[test]
    fn an_unrepairable_gap_resets_the_channel_and_moves_on() {
        let (mut seq, ch) = following(0);
        publ(&mut seq, "e", 1);
        let r = repair_of(publ(&mut seq, "e", 4));
        assert_eq!(
            seq.repaired(r, None, 77),
            vec![Step::Reset(name("room:1")), deliver(4)]
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 4));
        assert_eq!(publ(&mut seq, "e", 5), vec![deliver(5)]);

        let (mut seq, ch) = following(0);
        publ(&mut seq, "e", 1);
        let r = repair_of(publ(&mut seq, "e", 5));
        assert_eq!(
            seq.repaired(r, Some(&[2]), 77),
            vec![history(0, 2), Step::Reset(name("room:1")), deliver(5)]
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 5));
    }

    #[test]
    fn a_new_epoch_restarts_the_channel() {
        let (mut seq, ch) = following(0);
        for n in 1..=5 {
            publ(&mut seq, "e", n);
        }
        assert_eq!(publ(&mut seq, "f", 1), vec![deliver(1)]);
        assert_eq!(pos(&seq, &ch), ("f".into(), 1));
        let r = repair_of(publ(&mut seq, "f", 3));
        assert_eq!((&*r.epoch, r.after, r.upto), ("f", 1, 2));
        let (mut seq, ch) = following(9);
        assert_eq!(publ(&mut seq, "g", 3), vec![deliver(3)]);
        assert_eq!(pos(&seq, &ch), ("g".into(), 3));
    }

    /// Issue 11 item 3: a publication of another epoch whose offset a client would take for the
    /// next one is not delivered: the subscribers are told to resubscribe (and recover).
    #[test]
    fn another_epoch_ahead_of_the_position_resets_instead_of_delivering() {
        let (mut seq, ch) = following(21);
        // The old master, continued after its replica took over, runs a queued publish.
        assert_eq!(
            publ(&mut seq, "stale", 22),
            vec![Step::Reset(name("room:1"))]
        );
        assert_eq!(pos(&seq, &ch), ("stale".into(), 22));
        // Back on the real stream: again not deliverable as the next offset.
        assert_eq!(publ(&mut seq, "e", 23), vec![Step::Reset(name("room:1"))]);
        assert_eq!(pos(&seq, &ch), ("e".into(), 23));
        assert_eq!(publ(&mut seq, "e", 24), vec![deliver(24)]);
        // A restart at offset 1 after offset 0 (nothing a client could notice) resets too.
        let (mut seq, _) = following(0);
        assert_eq!(publ(&mut seq, "f", 1), vec![Step::Reset(name("room:1"))]);
    }

    #[test]
    fn a_position_check_in_step_does_nothing() {
        let (mut seq, _) = following(0);
        publ(&mut seq, "e", 1);
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
        publ(&mut seq, "e", 1);
        let r = check_repair(seq.check("room:1", e("e"), 3, seq.generation()));
        assert_eq!((r.after, r.upto), (1, 3));
        assert_eq!(
            seq.repaired(r, Some(&[2, 3]), 77),
            vec![history(0, 2), history(1, 3)]
        );
        let r = check_repair(seq.check("room:1", e("e"), 4, seq.generation()));
        assert_eq!(
            seq.repaired(r, Some(&[4]), 77),
            vec![history(0, 4), Step::Resubscribe(name("room:1"))]
        );
        let r = check_repair(seq.check("room:1", e("e"), 5, seq.generation()));
        assert_eq!(seq.repaired(r, Some(&[5]), 77), vec![history(0, 5)]);
        assert_eq!(publ(&mut seq, "e", 6), vec![deliver(6)]);
        let r = check_repair(seq.check("room:1", e("e"), 7, seq.generation()));
        assert_eq!(seq.repaired(r, Some(&[7]), 77), vec![history(0, 7)]);
        let r = check_repair(seq.check("room:1", e("e"), 9, seq.generation()));
        assert_eq!(
            seq.repaired(r, None, 77),
            vec![
                Step::Reset(name("room:1")),
                Step::Resubscribe(name("room:1"))
            ]
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 9));
    }

    #[test]
    fn a_fresh_read_showing_another_stream_resets_the_channel() {
        let (mut seq, ch) = following(0);
        for n in 1..=5 {
            publ(&mut seq, "e", n);
        }
        assert_eq!(
            seq.check("room:1", e("e"), 2, seq.generation()),
            Checked::Reset
        );
        assert_eq!(pos(&seq, &ch), ("e".into(), 2));
        assert_eq!(
            seq.check("room:1", e("f"), 4, seq.generation()),
            Checked::Reset
        );
        assert_eq!(pos(&seq, &ch), ("f".into(), 4));
        assert_eq!(publ(&mut seq, "f", 5), vec![deliver(5)]);
    }

    #[test]
    fn a_position_read_older_than_the_channel_state_does_not_reset() {
        let (mut seq, ch) = following(0);
        publ(&mut seq, "e", 1);
        let read_at = seq.generation();
        publ(&mut seq, "e", 2);
        publ(&mut seq, "e", 3);
        assert_eq!(seq.check("room:1", e("e"), 1, read_at), Checked::InStep);
        assert_eq!(pos(&seq, &ch), ("e".into(), 3));
        let read_at = seq.generation();
        publ(&mut seq, "e2", 1);
        assert_eq!(seq.check("room:1", e("e"), 3, read_at), Checked::InStep);
        assert_eq!(pos(&seq, &ch), ("e2".into(), 1));
        let read_at = seq.generation();
        let r = repair_of(publ(&mut seq, "e2", 4));
        seq.repaired(r, Some(&[2, 3]), 77);
        assert_eq!(seq.check("room:1", e("e2"), 1, read_at), Checked::InStep);
        assert_eq!(
            seq.check("room:1", e("e2"), 1, seq.generation()),
            Checked::Reset
        );
    }

    #[test]
    fn forgotten_channels_drop_stale_repairs() {
        let (mut seq, ch) = following(0);
        publ(&mut seq, "e", 1);
        let r = check_repair(seq.check("room:1", e("e"), 3, seq.generation()));
        seq.forget("room:1");
        assert_eq!(seq.position("room:1"), None);
        assert_eq!(seq.repaired(r.clone(), Some(&[2, 3]), 77), vec![]);
        // Subscribed again: the old repair is stale there too.
        seq.subscribing(&ch);
        seq.baseline("room:1", Start::At(e("e"), 1));
        assert_eq!(seq.repaired(r, Some(&[2, 3]), 77), vec![]);
        assert_eq!(pos(&seq, &ch), ("e".into(), 1));
    }

    #[test]
    fn every_change_moves_the_generation() {
        let (mut seq, _) = following(0);
        let mut g = seq.generation();
        let mut moved = |seq: &Seq| {
            let now = seq.generation();
            let m = now > g;
            g = now;
            m
        };
        publ(&mut seq, "e", 1);
        assert!(moved(&seq));
        publ(&mut seq, "e", 1);
        assert!(!moved(&seq));
        let r = repair_of(publ(&mut seq, "e", 3));
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
