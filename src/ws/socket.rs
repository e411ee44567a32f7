//! Socket I/O around the codec, with no knowledge of what the messages mean: reading what a
//! non-blocking socket has through a caller's scratch buffer, and the end of the close handshake
//! (half-close, then wait for the peer's close frame or EOF).

use std::io;
use std::time::Duration;

use ferrocast_codec::decoder::Limits;
use ferrocast_codec::{Decoder, Flow, Item, Role};
use tokio::net::TcpStream;

/// After the server's close frame, how long the peer has to answer it (or hang up) before TCP is
/// shut anyway.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Why [`read_available`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStop {
    /// Nothing more to read now.
    Drained,
    /// `budget` bytes were read; more may be waiting (the socket stays readable).
    Budget,
    /// The consumer asked to stop.
    Stopped,
    /// EOF or a socket error: the peer is gone.
    Gone,
}

/// Reads from a non-blocking socket into `scratch` until it would block, `budget` bytes were read,
/// or `on_bytes` returns false; each read's bytes are handed to `on_bytes` (mutable: the decoder
/// unmasks in place). One buffer serves every connection of a thread: nothing is kept per socket.
pub fn read_available(
    stream: &TcpStream,
    scratch: &mut [u8],
    budget: usize,
    mut on_bytes: impl FnMut(&mut [u8]) -> bool,
) -> ReadStop {
    let mut total = 0;
    loop {
        let n = match stream.try_read(scratch) {
            Ok(0) => return ReadStop::Gone,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadStop::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return ReadStop::Gone,
        };
        total += n;
        if !on_bytes(&mut scratch[..n]) {
            return ReadStop::Stopped;
        }
        if total >= budget {
            return ReadStop::Budget;
        }
    }
}

/// Half-closes the socket (FIN after the server's close frame), then waits up to
/// [`CLOSE_LINGER`] for the peer's close frame or EOF: closing a socket with unread input makes
/// the kernel send a reset, and the peer would see 1006 instead of the code.
pub async fn linger_for_close(stream: &TcpStream, decoder: Decoder, max_message: usize) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let _ =
        tokio::time::timeout(CLOSE_LINGER, await_peer_close(stream, decoder, max_message)).await;
}

/// Reads until the peer answers the server's close frame, or hangs up. Input is still decoded,
/// only to spot the close frame (data is discarded). After a protocol error the framing of what
/// follows can't be trusted: each later read is tried as the start of fresh frames (a client's
/// close answer is its own write), and anything undecodable just waits for EOF.
async fn await_peer_close(stream: &TcpStream, mut decoder: Decoder, max_message: usize) {
    let limits = Limits {
        role: Role::Server,
        max_message,
    };
    let mut input = vec![0u8; 4096];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut input) {
            Ok(0) => return,
            Ok(n) => {
                if decoder.is_done() {
                    decoder = Decoder::new();
                }
                let mut closed = false;
                let mut frames = u32::MAX;
                let _ = decoder.feed(&mut input[..n], &limits, &mut frames, |item| {
                    closed = matches!(item, Item::Close(_));
                    Flow::Continue
                });
                if closed {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
