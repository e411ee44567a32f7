//! Criterion benchmarks of ferrocast's hot path. Run: `make bench` (= cargo bench --bench hotpath).
//! Results and the machine they ran on: docs/benchmarks.md.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use ferrocast::hub::connection::{Connection, Route};
use ferrocast::hub::shard::ShardState;
use ferrocast::hub::{Delivery, Hub, ShardMsg};
use ferrocast::protocol::{command, reply, ChannelName};
use ferrocast::ws::frame;
use ferrocast_codec::decoder::Limits;
use ferrocast_codec::{Decoder, Flow, Item, Role};

fn masked(payload: &[u8]) -> Vec<u8> {
    ferrocast_codec::frame::encode_masked(true, frame::OP_TEXT, payload, [0x12, 0x34, 0x56, 0x78])
}

/// Feeds `input` to the decoder; the bytes of the text messages it completed.
fn decode_text(d: &mut Decoder, input: &mut [u8], limits: &Limits) -> usize {
    let mut frames = u32::MAX;
    let mut n = 0;
    d.feed(input, limits, &mut frames, |item| {
        if let Item::Text(t) = item {
            n += t.len();
        }
        Flow::Continue
    })
    .unwrap();
    n
}

/// Frame codec: encoding a 64-byte publication frame, decoding + unmasking client frames.
fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let payload = [b'x'; 64];
    g.throughput(Throughput::Bytes(64));
    // encode: one server text frame (header + 64-byte payload) into a fresh Bytes.
    g.bench_function("encode_64B", |b| {
        b.iter(|| frame::text(black_box(&payload)))
    });
    for size in [64usize, 1024, 16 * 1024] {
        let f = masked(&vec![b'a'; size]);
        g.throughput(Throughput::Bytes(size as u64));
        // decode: the read path's streaming decoder: header, unmask in place, UTF-8 check.
        g.bench_function(format!("decode_unmask_{size}B"), |b| {
            let limits = Limits {
                role: Role::Server,
                max_message: 1 << 20,
            };
            b.iter_batched_ref(
                || f.clone(),
                |buf| black_box(decode_text(&mut Decoder::new(), buf, &limits)),
                BatchSize::SmallInput,
            )
        });
    }
    // The same 16 KiB frame arriving in 64-byte reads: the decoder's work stays linear.
    let f = masked(&vec![b'a'; 16 * 1024]);
    g.throughput(Throughput::Bytes(f.len() as u64));
    g.bench_function("decode_16KiB_in_64B_reads", |b| {
        let limits = Limits {
            role: Role::Server,
            max_message: 1 << 20,
        };
        b.iter_batched_ref(
            || f.clone(),
            |buf| {
                let mut d = Decoder::new();
                let n: usize = buf
                    .chunks_mut(64)
                    .map(|chunk| decode_text(&mut d, chunk, &limits))
                    .sum();
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Command parsing: serde_json (what the server uses, borrowing `data` as RawValue) against
/// simd-json (which needs a mutable copy and parses `data` into a tree), small and 1 KiB commands.
fn parse(c: &mut Criterion) {
    let small = br#"{"id":4,"publish":{"channel":"room:42","data":{"text":"hi"}}}"#.to_vec();
    let text = "x".repeat(1000);
    let big = format!(
        r#"{{"id":4,"publish":{{"channel":"room:42","data":{{"text":"{text}","n":[1,2,3]}}}}}}"#
    )
    .into_bytes();
    let mut g = c.benchmark_group("parse");
    for (name, input) in [("small", &small), ("1KiB", &big)] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(format!("serde_json_{name}"), |b| {
            b.iter(|| command::parse(black_box(input)).unwrap())
        });
        g.bench_function(format!("simd_json_{name}"), |b| {
            b.iter_batched_ref(
                || input.clone(),
                |buf| {
                    let v: simd_json::OwnedValue = simd_json::to_owned_value(buf).unwrap();
                    black_box(v);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Fan-out inside one shard: one 64-byte publication queued on 10,000 subscribers' outbound
/// queues (framing once, refcount clone + queue push + dirty mark); only that is timed, the
/// queues are drained outside the timing.
fn fan_out(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(std_listener.local_addr().unwrap()).unwrap();
    client.set_nonblocking(true).unwrap();
    // All connections share one socket: the benchmark never writes, it measures queueing.
    let stream = Rc::new(tokio::net::TcpStream::from_std(client).unwrap());
    let ch = ChannelName::parse("room:bench").unwrap();
    let mut st = ShardState::new();
    const SUBS: usize = 10_000;
    for i in 0..SUBS {
        let key = st.conns.insert(Connection::new(
            Some(stream.clone()),
            i as u64,
            0,
            Route::Commands,
            1 << 20,
        )) as u32;
        st.add_joining(&ch, key);
        st.activate(&ch, key, 0);
    }
    let payload = Bytes::from(reply::publication(&ch, 1, &[b'1'; 64], None));
    let d = Delivery {
        channel: ch.clone(),
        offset: 1,
        payload,
        published_at_us: 0,
    };
    let mut g = c.benchmark_group("fan_out");
    g.throughput(Throughput::Elements(SUBS as u64));
    g.bench_function("one_pub_to_10k_subscribers", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                st.fan_out(black_box(&d), usize::MAX);
                timed += t.elapsed();
                // Drain as a flush does, keeping each queue's capacity (clear() would free it
                // and turn every push of the next iteration into an allocation).
                for k in st.take_dirty() {
                    st.conns[k as usize]
                        .out
                        .flush_with(|s| Ok(s.iter().map(|b| b.len()).sum()))
                        .unwrap();
                }
            }
            timed
        })
    });
    g.finish();
}

/// Cross-shard hand-off: one publication handed to 2 shard inboxes and taken out again.
fn hand_off(c: &mut Criterion) {
    let (hub, mut rxs) = Hub::new(2);
    let ch = ChannelName::parse("room:bench").unwrap();
    let payload = Bytes::from_static(b"{}");
    let mut g = c.benchmark_group("hand_off");
    g.throughput(Throughput::Elements(1));
    g.bench_function("deliver_to_2_shards", |b| {
        b.iter(|| {
            hub.deliver(&ch, 1, payload.clone(), 0);
            for rx in rxs.iter_mut() {
                match rx.try_recv() {
                    Ok(ShardMsg::Deliver(d)) => {
                        black_box(Arc::strong_count(&d));
                    }
                    _ => unreachable!(),
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, codec, parse, fan_out, hand_off);
criterion_main!(benches);
