//! `OutboundQueue`: a connection's pending output as a queue of shared `Bytes`.
//!
//! Publications are queued by reference (one refcount increment, no copy), and everything queued
//! since the last flush leaves in one vectored write — uWebSockets calls this *cork*. A queue that
//! never held anything owns no heap memory. A drained queue keeps at most a small slot array
//! (≤ 8 slots) so a connection that gets one publication at a time does not allocate per
//! publication, and a burst's larger array is given back when the queue drains; the small one is
//! given back too once the queue took nothing for a whole tick of the shard's ticker
//! ([`OutboundQueue::release_if_idle`]), so an idle socket holds no queue memory.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};

/// Slices handed to one `writev` (Linux' IOV_MAX is 1024; 64 keeps the stack array small while a
/// single call still carries tens of kilobytes of small frames).
const MAX_IOV: usize = 64;

/// Slots a drained queue may keep (32 bytes each: a `Bytes`).
const IDLE_SLOTS: usize = 8;

#[derive(Default)]
pub struct OutboundQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// The front frame is partly written: it must be finished before anything else is sent.
    front_started: bool,
    /// Something was queued since the last `release_if_idle`.
    pushed: bool,
}

/// What a flush achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything written.
    All,
    /// The socket is full; the rest waits for writability.
    Blocked,
}

impl OutboundQueue {
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.pushed = true;
        self.frames.push_back(frame);
    }

    /// Called once a second (the shard's ticker): a drained queue that took nothing since the
    /// previous call gives its slot array back. A connection getting publications at least every
    /// second or so keeps it and queues them without allocating; an idle one stops paying for it
    /// (32 bytes a slot) one to two seconds after its last output.
    pub fn release_if_idle(&mut self) {
        if !std::mem::take(&mut self.pushed) && self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
    }

    /// Queued bytes not yet written.
    /// Takes every queued frame, whole (for a transport that re-frames the output, e.g. SSE,
    /// which never writes part of a frame).
    pub fn take_frames(&mut self) -> VecDeque<Bytes> {
        self.bytes = 0;
        self.front_started = false;
        std::mem::take(&mut self.frames)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops everything queued and frees the queue's memory (the peer is gone).
    pub fn clear(&mut self) {
        self.frames = VecDeque::new();
        self.bytes = 0;
        self.front_started = false;
    }

    /// Drops every frame not yet started (a slow consumer being closed), keeping a partly
    /// written front frame so that a close frame queued next still lands on a frame boundary.
    pub fn drop_unsent(&mut self) {
        let keep = if self.front_started {
            self.frames.pop_front()
        } else {
            None
        };
        self.clear();
        if let Some(front) = keep {
            self.front_started = true;
            self.push(front);
        }
    }

    /// Writes as much as the socket takes with `write` (a non-blocking vectored writer).
    /// Returns the bytes written and whether the queue drained.
    pub fn flush_with<W>(&mut self, mut write: W) -> io::Result<(usize, Flushed)>
    where
        W: FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    {
        let mut total = 0;
        while !self.frames.is_empty() {
            let n = {
                let mut slices: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
                let mut count = 0;
                for (slot, frame) in slices.iter_mut().zip(self.frames.iter()) {
                    *slot = IoSlice::new(frame);
                    count += 1;
                }
                match write(&slices[..count]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.shrink_if_idle();
                        return Ok((total, Flushed::Blocked));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            total += n;
            self.consume(n);
        }
        self.shrink_if_idle();
        Ok((total, Flushed::All))
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let front = self.frames.front_mut().expect("wrote more than queued");
            if front.len() <= n {
                n -= front.len();
                self.frames.pop_front();
                self.front_started = false;
            } else {
                front.advance(n);
                self.front_started = true;
                n = 0;
            }
        }
    }

    /// An idle connection should not keep a burst's worth of queue capacity.
    fn shrink_if_idle(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > IDLE_SLOTS {
            self.frames = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut q = OutboundQueue::default();
        q.push(Bytes::from_static(b"hello"));
        q.push(Bytes::from_static(b"world"));
        assert_eq!(q.bytes(), 10);
        let mut out = Vec::new();
        let mut budget = 3;
        let r = q
            .flush_with(|s| {
                if budget == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let all: Vec<u8> = s.iter().flat_map(|x| x.iter().copied()).collect();
                let n = budget.min(all.len());
                out.extend_from_slice(&all[..n]);
                budget = 0;
                Ok(n)
            })
            .unwrap();
        assert_eq!(r, (3, Flushed::Blocked));
        assert_eq!(q.bytes(), 7);
        let r = q
            .flush_with(|s| {
                let all: Vec<u8> = s.iter().flat_map(|x| x.iter().copied()).collect();
                out.extend_from_slice(&all);
                Ok(all.len())
            })
            .unwrap();
        assert_eq!(r, (7, Flushed::All));
        assert_eq!(out, b"helloworld");
        assert!(q.is_empty());
    }

    #[test]
    fn drop_unsent_keeps_a_started_frame() {
        let mut q = OutboundQueue::default();
        q.push(Bytes::from_static(b"hello"));
        q.push(Bytes::from_static(b"world"));
        let mut first = true;
        q.flush_with(|_| {
            if std::mem::take(&mut first) {
                Ok(2)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        })
        .unwrap();
        // 2 bytes of "hello" are out; the rest of it must still go before anything else.
        q.drop_unsent();
        assert_eq!(q.bytes(), 3);
        let mut q2 = OutboundQueue::default();
        q2.push(Bytes::from_static(b"hello"));
        q2.drop_unsent();
        assert!(q2.is_empty());
    }

    #[test]
    fn idle_queues_keep_at_most_a_small_slot_array() {
        let q = OutboundQueue::default();
        assert_eq!(
            q.frames.capacity(),
            0,
            "an unused queue owns no heap memory"
        );
        let mut q = OutboundQueue::default();
        for _ in 0..1000 {
            q.push(Bytes::from_static(b"abc"));
        }
        q.flush_with(|s| Ok(s.iter().map(|x| x.len()).sum()))
            .unwrap();
        assert!(q.is_empty());
        assert_eq!(q.frames.capacity(), 0, "a burst's capacity is given back");
        q.push(Bytes::from_static(b"abc"));
        q.flush_with(|s| Ok(s.iter().map(|x| x.len()).sum()))
            .unwrap();
        assert!(q.frames.capacity() <= IDLE_SLOTS);
        // The ticker: kept across a tick with output, given back after a tick without.
        q.release_if_idle();
        assert!(q.frames.capacity() > 0, "used in the last tick: kept");
        q.release_if_idle();
        assert_eq!(q.frames.capacity(), 0, "idle for a tick: given back");
        // Never while frames wait.
        q.push(Bytes::from_static(b"abc"));
        q.release_if_idle();
        q.release_if_idle();
        assert_eq!(q.bytes(), 3);
        assert!(q.frames.capacity() > 0);
    }

    #[test]
    fn one_write_carries_many_frames() {
        let mut q = OutboundQueue::default();
        for _ in 0..10 {
            q.push(Bytes::from_static(b"abc"));
        }
        let mut calls = 0;
        q.flush_with(|s| {
            calls += 1;
            Ok(s.iter().map(|x| x.len()).sum())
        })
        .unwrap();
        assert_eq!(calls, 1);
    }
}
