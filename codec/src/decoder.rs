//! [`Decoder`]: a streaming RFC 6455 decoder. Bytes go in as they come off the socket, cut
//! anywhere; complete messages, control frames and the close reason come out, in order, or the
//! first protocol violation with the close code it calls for.
//!
//! Cost: every input byte is looked at a constant number of times however the input is cut — a
//! frame arriving in a thousand reads costs what it costs in one. A frame that lies whole inside
//! one input buffer is unmasked in place and handed out without a copy; only a message that spans
//! buffers or fragments is gathered in a buffer of its own, and that buffer is freed as soon as
//! the message is out. A decoder between messages owns no heap memory (one null pointer), which
//! is what keeps an idle connection small.

use crate::close::{self, ClosePayloadError};
use crate::frame::{
    self, Header, HeaderError, MAX_HEADER, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};
use crate::mask;
use crate::utf8::Utf8State;

/// Which side's frames are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server decodes client frames: each must be masked.
    Server,
    /// A client decodes server frames: none may be masked.
    Client,
}

/// What the decoder hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A complete text message, valid UTF-8.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping with its payload (to be echoed in a pong).
    Ping(&'a [u8]),
    /// A pong (solicited or not; an endpoint may ignore it).
    Pong(&'a [u8]),
    /// The peer's close: its code and reason, or `None` for an empty close frame. Nothing after
    /// it is decoded.
    Close(Option<(u16, &'a str)>),
}

/// The receiver's answer to an item: go on, or stop decoding (the connection is being closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Why decoding stopped for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A violation of RFC 6455 framing: close 1002.
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8: close 1007.
    InvalidUtf8,
    /// A message larger than the configured maximum: close 1009 (an application may use its
    /// own code for its own limit).
    TooBig,
    /// The frame allowance given to [`Decoder::feed`] ran out (a rate limit, the caller's policy).
    FrameBudget,
}

impl DecodeError {
    /// The RFC 6455 close code for this error (`FrameBudget` is the caller's: 1008).
    pub fn close_code(self) -> u16 {
        match self {
            DecodeError::Protocol(_) => 1002,
            DecodeError::InvalidUtf8 => 1007,
            DecodeError::TooBig => 1009,
            DecodeError::FrameBudget => 1008,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Protocol(r) => r,
            DecodeError::InvalidUtf8 => "invalid UTF-8",
            DecodeError::TooBig => "message too big",
            DecodeError::FrameBudget => "too many frames",
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for DecodeError {}

impl From<HeaderError> for DecodeError {
    fn from(e: HeaderError) -> Self {
        DecodeError::Protocol(e.reason())
    }
}

/// Limits a decoder works under (passed on each call, so a connection stores none of them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub role: Role,
    /// Largest message (all fragments together), in bytes.
    pub max_message: usize,
}

/// The streaming decoder; see the module docs.
#[derive(Debug, Default)]
pub struct Decoder {
    /// State that outlives one input buffer; `None` between messages.
    split: Option<Box<Split>>,
    /// A close was decoded or an error returned: nothing more is decoded.
    done: bool,
}

/// Everything that can be cut between two input buffers.
#[derive(Debug, Default)]
struct Split {
    /// The first bytes of a header cut short.
    head: [u8; MAX_HEADER],
    head_len: u8,
    /// A frame whose header is parsed and whose payload is still arriving.
    frame: Option<Partial>,
    /// A data message being gathered (fragmented, or one frame spanning buffers).
    message: Option<Message>,
    /// The payload of a control frame spanning buffers (at most 125 bytes).
    control: Vec<u8>,
}

#[derive(Debug)]
struct Partial {
    opcode: u8,
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes still to come.
    remaining: u64,
    /// Payload bytes already taken (the mask phase).
    taken: u64,
}

#[derive(Debug)]
struct Message {
    text: bool,
    data: Vec<u8>,
    utf8: Utf8State,
}

impl Split {
    fn is_idle(&self) -> bool {
        self.head_len == 0 && self.frame.is_none() && self.message.is_none()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Whether a close was decoded or decoding failed: further input is ignored.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the decoder holds a partial frame or message (and so heap memory).
    pub fn is_mid_message(&self) -> bool {
        self.split.is_some()
    }

    /// Bytes held for an unfinished message.
    pub fn buffered(&self) -> usize {
        self.split.as_ref().map_or(0, |s| {
            s.message.as_ref().map_or(0, |m| m.data.len()) + s.control.len()
        })
    }

    /// Decodes `input` (unmasked in place), calling `on_item` for each complete message and
    /// control frame in order. Each frame header costs one from `frames` (a rate limit's
    /// allowance); at zero decoding stops with [`DecodeError::FrameBudget`] before that frame.
    /// After an error or a close the decoder is done and ignores further input.
    pub fn feed<F>(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        frames: &mut u32,
        mut on_item: F,
    ) -> Result<(), DecodeError>
    where
        F: FnMut(Item<'_>) -> Flow,
    {
        if self.done {
            return Ok(());
        }
        let r = self.feed_inner(input, limits, frames, &mut on_item);
        match r {
            Ok(Flow::Continue) => {
                if self.split.as_ref().is_some_and(|s| s.is_idle()) {
                    self.split = None;
                }
                Ok(())
            }
            Ok(Flow::Stop) => {
                self.finish();
                Ok(())
            }
            Err(e) => {
                self.finish();
                Err(e)
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.split = None;
    }

    fn feed_inner<F>(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        frames: &mut u32,
        on_item: &mut F,
    ) -> Result<Flow, DecodeError>
    where
        F: FnMut(Item<'_>) -> Flow,
    {
        let masked = limits.role == Role::Server;
        let mut pos = 0;
        loop {
            // 1. The payload of a frame begun in an earlier buffer.
            if let Some(split) = self.split.as_deref_mut() {
                if split.frame.is_some() {
                    let flow = continue_payload(split, &mut input[pos..], &mut pos, on_item)?;
                    if flow == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                    if split.frame.is_some() {
                        return Ok(Flow::Continue); // input exhausted mid-payload
                    }
                    continue;
                }
            }
            if pos == input.len() {
                return Ok(Flow::Continue);
            }
            // 2. A header: finish a cut one, or parse one from the input.
            let header = match self.split.as_deref_mut() {
                Some(split) if split.head_len > 0 => {
                    let had = split.head_len as usize;
                    let take = (MAX_HEADER - had).min(input.len() - pos);
                    split.head[had..had + take].copy_from_slice(&input[pos..pos + take]);
                    match frame::parse_header(&split.head[..had + take], masked)? {
                        None => {
                            split.head_len = (had + take) as u8;
                            return Ok(Flow::Continue);
                        }
                        Some(h) => {
                            split.head_len = 0;
                            pos += h.header_len - had;
                            h
                        }
                    }
                }
                _ => match frame::parse_header(&input[pos..], masked)? {
                    None => {
                        let split = self.split.get_or_insert_with(Box::default);
                        let rest = &input[pos..];
                        split.head[..rest.len()].copy_from_slice(rest);
                        split.head_len = rest.len() as u8;
                        return Ok(Flow::Continue);
                    }
                    Some(h) => {
                        pos += h.header_len;
                        h
                    }
                },
            };
            if *frames == 0 {
                return Err(DecodeError::FrameBudget);
            }
            *frames -= 1;
            self.check_sequence(&header, limits)?;
            let available = (input.len() - pos) as u64;
            let alone = header.is_control()
                || (header.fin && self.split.as_ref().is_none_or(|s| s.message.is_none()));
            if header.payload_len <= available && alone {
                // The whole frame is here and stands alone: no copy.
                let end = pos + header.payload_len as usize;
                let payload = &mut input[pos..end];
                pos = end;
                if let Some(m) = header.mask {
                    mask::apply(payload, m, 0);
                }
                if whole_frame(header.opcode, payload, on_item)? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
                continue;
            }
            // The frame spans buffers or belongs to a fragmented message: gather it.
            let split = self.split.get_or_insert_with(Box::default);
            if !header.is_control() && header.opcode != OP_CONT {
                let reserve = header.payload_len.min(64 * 1024) as usize;
                split.message = Some(Message {
                    text: header.opcode == OP_TEXT,
                    data: Vec::with_capacity(reserve),
                    utf8: Utf8State::default(),
                });
            }
            split.frame = Some(Partial {
                opcode: header.opcode,
                fin: header.fin,
                mask: header.mask,
                remaining: header.payload_len,
                taken: 0,
            });
        }
    }

    /// Frame-order rules (§5.4) and the message size limit, checked from the header alone.
    fn check_sequence(&self, h: &Header, limits: &Limits) -> Result<(), DecodeError> {
        if h.is_control() {
            return Ok(());
        }
        let gathered = self
            .split
            .as_ref()
            .and_then(|s| s.message.as_ref())
            .map(|m| m.data.len());
        match (h.opcode, gathered) {
            (OP_CONT, None) => Err(DecodeError::Protocol(
                "continuation frame without a message",
            )),
            (OP_TEXT | OP_BINARY, Some(_)) => Err(DecodeError::Protocol(
                "new message inside a fragmented message",
            )),
            (_, so_far) => {
                let total = (so_far.unwrap_or(0) as u64).saturating_add(h.payload_len);
                if total > limits.max_message as u64 {
                    Err(DecodeError::TooBig)
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A complete, unfragmented frame that lies whole in the input.
fn whole_frame<F>(opcode: u8, payload: &[u8], on_item: &mut F) -> Result<Flow, DecodeError>
where
    F: FnMut(Item<'_>) -> Flow,
{
    let item = match opcode {
        OP_TEXT => Item::Text(std::str::from_utf8(payload).map_err(|_| DecodeError::InvalidUtf8)?),
        OP_BINARY => Item::Binary(payload),
        _ => return control_frame(opcode, payload, on_item),
    };
    Ok(on_item(item))
}

fn control_frame<F>(opcode: u8, payload: &[u8], on_item: &mut F) -> Result<Flow, DecodeError>
where
    F: FnMut(Item<'_>) -> Flow,
{
    match opcode {
        OP_PING => Ok(on_item(Item::Ping(payload))),
        OP_PONG => Ok(on_item(Item::Pong(payload))),
        OP_CLOSE => {
            let parsed = close::parse(payload).map_err(|e| match e {
                ClosePayloadError::Protocol => DecodeError::Protocol("invalid close frame"),
                ClosePayloadError::InvalidUtf8 => DecodeError::InvalidUtf8,
            })?;
            on_item(Item::Close(parsed));
            // Nothing after a close is decoded (§5.5.1).
            Ok(Flow::Stop)
        }
        _ => unreachable!("data opcodes are handled by the caller"),
    }
}

/// Takes payload bytes of the frame in progress from `input`; completes the frame (and maybe its
/// message) when its last byte arrives.
fn continue_payload<F>(
    split: &mut Split,
    input: &mut [u8],
    pos: &mut usize,
    on_item: &mut F,
) -> Result<Flow, DecodeError>
where
    F: FnMut(Item<'_>) -> Flow,
{
    let frame = split.frame.as_mut().expect("a frame in progress");
    let n = frame.remaining.min(input.len() as u64) as usize;
    let chunk = &mut input[..n];
    if let Some(m) = frame.mask {
        mask::apply(chunk, m, (frame.taken % 4) as usize);
    }
    frame.remaining -= n as u64;
    frame.taken += n as u64;
    *pos += n;
    let (opcode, fin, complete) = (frame.opcode, frame.fin, frame.remaining == 0);
    if opcode & 0x8 != 0 {
        split.control.extend_from_slice(chunk);
        if !complete {
            return Ok(Flow::Continue);
        }
        split.frame = None;
        let payload = std::mem::take(&mut split.control);
        return control_frame(opcode, &payload, on_item);
    }
    let message = split.message.as_mut().expect("a message in progress");
    if message.text {
        // Fail fast: the first invalid byte ends the connection, whatever is still to come.
        message
            .utf8
            .feed(chunk)
            .map_err(|_| DecodeError::InvalidUtf8)?;
    }
    message.data.extend_from_slice(chunk);
    if !complete {
        return Ok(Flow::Continue);
    }
    split.frame = None;
    if !fin {
        return Ok(Flow::Continue);
    }
    let mut message = split.message.take().expect("a message in progress");
    let item = if message.text {
        message
            .utf8
            .finish()
            .map_err(|_| DecodeError::InvalidUtf8)?;
        // Validated piece by piece above.
        Item::Text(std::str::from_utf8(&message.data).map_err(|_| DecodeError::InvalidUtf8)?)
    } else {
        Item::Binary(&message.data)
    };
    Ok(on_item(item))
}
