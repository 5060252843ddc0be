use super::*;
use futures_util::StreamExt as _;
use h2::frame::{Data, Frame as H2, Headers, Pseudo};
use h2::Codec;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncReadExt as _, ReadBuf};

use crate::relay::write::{self, Writer};
use crate::relay::Out;

use crate::test_rng::Rng;

/// Reads `data` at most `chunk` bytes at a time, never pending.
struct Chunks<'a> {
    data: &'a [u8],
    chunk: usize,
    /// Reads asked of it.
    reads: usize,
}

impl AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reads += 1;
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// What the reader makes of `bytes` read `chunk` at a time, up to the end or
/// a connection error.
fn ours(bytes: &[u8], chunk: usize, max_list: usize) -> Vec<Result<Frame, Error>> {
    let mut r = Reader::new(max_list, true);
    let mut io = Chunks {
        data: bytes,
        chunk,
        reads: 0,
    };
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::new();
    loop {
        match r.poll_next(&mut io, &mut cx) {
            Poll::Ready(None) => return out,
            Poll::Ready(Some(x)) => {
                let end = matches!(x, Err(Error::GoAway(_) | Error::Io(_)));
                out.push(x);
                if end {
                    return out;
                }
            }
            Poll::Pending => panic!("pending on a reader that never is"),
        }
    }
}

/// The one outcome of reading `bytes`, which must be an error.
fn error(bytes: &[u8]) -> String {
    let got = ours(bytes, usize::MAX, 16 << 10);
    match got.last() {
        Some(Err(e)) => format!("{e:?}"),
        other => panic!("no error: {other:?}"),
    }
}

fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = write::head_bytes(payload.len(), kind, flags, id).to_vec();
    v.extend_from_slice(payload);
    v
}

/// A request head block: POST http /s.S/M (static entries), one literal.
const BLOCK: &[u8] = &[
    0x83, 0x86, 0x44, 6, b'/', b's', b'.', b'S', b'/', b'M', 0x00, 1, b'x', 1, b'1',
];

/// The bytes h2's codec writes for `frames`: its HPACK encoder Huffman-codes
/// strings and indexes nearly every field, unlike the relay's own.
async fn h2_wire(frames: Vec<H2>) -> Vec<u8> {
    let (a, mut b) = tokio::io::duplex(1 << 24);
    let mut codec = Codec::<_, Bytes>::new(a);
    for f in frames {
        std::future::poll_fn(|cx| codec.poll_ready(cx))
            .await
            .unwrap();
        codec.buffer(f).unwrap();
    }
    std::future::poll_fn(|cx| codec.flush(cx)).await.unwrap();
    drop(codec);
    let mut out = Vec::new();
    b.read_to_end(&mut out).await.unwrap();
    out
}

/// A frame as both readers must see it.
fn canon_h2(f: H2) -> String {
    match f {
        H2::Data(d) => format!(
            "DATA {} {} {:?}",
            u32::from(d.stream_id()),
            d.is_end_stream(),
            d.payload()
        ),
        H2::Headers(h) => canon_headers(h),
        H2::Settings(s) => format!("{s:?}"),
        H2::Ping(p) => format!("{p:?}"),
        H2::WindowUpdate(w) => format!("{w:?}"),
        H2::Reset(r) => format!("{r:?}"),
        H2::GoAway(g) => format!("GOAWAY {:?} {:?}", g.last_stream_id(), g.reason()),
        other => format!("{other:?}"),
    }
}

/// A head's stream, END_STREAM, pseudo-headers and fields in order (h2's
/// `Debug` for `Headers` shows none of the fields, and flags that differ
/// between readers).
/// (h2's reader drops the sensitivity of never-indexed fields, so it is
/// compared only where the expected side has it.)
fn canon_headers(h: Headers) -> String {
    let id = u32::from(h.stream_id());
    let eos = h.is_end_stream();
    let (pseudo, fields) = h.into_parts();
    let fields: Vec<_> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes(), v.is_sensitive()))
        .collect();
    format!("HEADERS {id} {eos} {pseudo:?} {fields:?}")
}

fn insensitive(mut h: Headers) -> Headers {
    let (pseudo, mut fields) = h.clone_parts();
    for v in fields.values_mut() {
        v.set_sensitive(false);
    }
    let id = h.stream_id();
    let eos = h.is_end_stream();
    h = Headers::new(id, pseudo, fields);
    if eos {
        h.set_end_stream();
    }
    h
}

trait CloneParts {
    fn clone_parts(&mut self) -> (Pseudo, HeaderMap);
}

impl CloneParts for Headers {
    fn clone_parts(&mut self) -> (Pseudo, HeaderMap) {
        let fields = self.fields().clone();
        let p = std::mem::take(self.pseudo_mut());
        (p, fields)
    }
}

fn canon(f: Frame) -> String {
    match f {
        Frame::Data {
            id,
            end_stream,
            payload,
            ..
        } => format!("DATA {id} {end_stream} {payload:?}"),
        Frame::Headers(h) => {
            assert!(!h.over_size);
            canon_headers(h.into_h2())
        }
        Frame::Settings(s) => format!("{s:?}"),
        Frame::Ping(p) => format!("{p:?}"),
        Frame::WindowUpdate(w) => format!("{w:?}"),
        Frame::Reset(r) => format!("{r:?}"),
        Frame::GoAway(g) => format!("GOAWAY {:?} {:?}", g.last_stream_id(), g.reason()),
        other => format!("{other:?}"),
    }
}

fn random_value(r: &mut Rng, max: usize) -> HeaderValue {
    let len = r.below(max + 1);
    let mut v: Vec<u8> = (0..len)
        .map(|_| match r.below(10) {
            0 => 0x80 + r.below(128) as u8,
            1 => b'\t',
            _ => 0x21 + r.below(94) as u8,
        })
        .collect();
    // No leading or trailing white space (RFC 9113 §8.2.1; h2 allows it).
    while v.first() == Some(&b'\t') || v.last() == Some(&b'\t') {
        v.retain(|&c| c != b'\t');
    }
    let mut v = HeaderValue::from_bytes(&v).unwrap();
    // Sensitive values go never-indexed, and must read back sensitive. (h2
    // sends one indexed if the same field is in its table already, from when
    // it was not sensitive: only long values, which never repeat here.)
    v.set_sensitive(v.len() >= 8 && r.below(10) == 0);
    v
}

fn random_fields(r: &mut Rng, names: &[HeaderName]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for _ in 0..r.below(8) {
        let name = names[r.below(names.len())].clone();
        let max = if r.below(20) == 0 { 6000 } else { 60 };
        m.append(name, random_value(r, max));
    }
    m
}

/// Random fields, their sensitivity noted in `sensitive`.
fn recorded(r: &mut Rng, names: &[HeaderName], sensitive: &mut Vec<Vec<bool>>) -> HeaderMap {
    let m = random_fields(r, names);
    sensitive.push(m.values().map(|v| v.is_sensitive()).collect());
    m
}

#[tokio::test]
async fn what_h2_writes_reads_back_exactly() {
    // 2,000 random frames of every kind h2 writes, header blocks Huffman-coded
    // and indexed by h2's encoder, some over 16 KiB (CONTINUATION), tables
    // turning over: read back whole, and in chunks of 1, 7 and 4,096 bytes.
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sensitive: Vec<Vec<bool>> = Vec::new();
    let frames = random_frames(&mut r, 2000, &mut sensitive);
    let wire = h2_wire(frames).await;
    check_h2_wire(&wire, &sensitive).await;
}

#[tokio::test]
async fn mutated_streams_never_panic_the_reader() {
    // The cargo-fuzz target (`fuzz/fuzz_targets/relay.rs`) reaches this
    // reader through the relay; this is its stand-in under `cargo test`:
    // h2's frames, then bytes changed, cut or repeated, read in random
    // chunks with a small header list limit. Whatever the reader makes of
    // them, a connection error is the last thing it says.
    let mut r = Rng(0x51_7cc1_b727_220a);
    let wire = h2_wire(random_frames(&mut r, 100, &mut Vec::new())).await;
    let mut ends = [0usize; 3];
    for _ in 0..2000 {
        let mut w = wire.clone();
        for _ in 0..1 + r.below(6) {
            let i = r.below(w.len());
            w[i] = match r.below(3) {
                0 => r.next() as u8,
                1 => w[i] ^ (1 << r.below(8)),
                _ => 0xff,
            };
        }
        if r.below(4) == 0 {
            let at = r.below(w.len());
            let piece = w[at..(at + r.below(64)).min(w.len())].to_vec();
            let to = r.below(w.len());
            w.splice(to..to, piece);
        }
        if r.below(4) == 0 {
            w.truncate(r.below(w.len()));
        }
        let out = ours(&w, 1 + r.below(300), 1 << 12);
        let last = out.len().saturating_sub(1);
        for x in &out[..last] {
            assert!(!matches!(x, Err(Error::GoAway(_) | Error::Io(_))));
        }
        match out.last() {
            Some(Err(Error::GoAway(_))) => ends[0] += 1,
            Some(Err(Error::Io(_))) => ends[1] += 1,
            _ => ends[2] += 1,
        }
    }
    // Many mutations are caught; the rest read to the end (a changed DATA
    // byte) or stop within a frame.
    assert!(ends.iter().all(|&n| n > 100), "{ends:?}");
}

/// `n` random frames of every kind h2 writes (and a RST_STREAM and GOAWAY).
fn random_frames(r: &mut Rng, n: u32, sensitive: &mut Vec<Vec<bool>>) -> Vec<H2> {
    let names: Vec<HeaderName> = [
        "content-type",
        "grpc-timeout",
        "x-role",
        "x-forwarded-client-cert",
        "user-agent",
        "grpc-status",
        "date",
        "a",
        "x-very-long-custom-metadata-name-bin",
    ]
    .iter()
    .map(|n| HeaderName::from_static(n))
    .collect();
    let methods = [
        Method::POST,
        Method::GET,
        Method::PUT,
        Method::from_bytes(b"BREW").unwrap(),
    ];
    let mut frames = Vec::new();
    for i in 0..n {
        let id = 1 + 2 * (i % 500);
        let f: H2 = match r.below(9) {
            0..=2 => {
                let path = format!("/pkg.S{}/M{}", r.below(5), r.below(50));
                let auth = ["localhost", "a.example:8443", "x"][r.below(3)];
                let uri = format!("http://{auth}{path}").parse().unwrap();
                let m = methods[r.below(methods.len())].clone();
                let mut h = Headers::new(
                    StreamId::from(id),
                    Pseudo::request(m, uri, None),
                    recorded(r, &names, sensitive),
                );
                if r.below(2) == 0 {
                    h.set_end_stream();
                }
                h.into()
            }
            3 => {
                let status = StatusCode::from_u16(200 + r.below(300) as u16).unwrap();
                Headers::new(
                    StreamId::from(id),
                    Pseudo::response(status),
                    recorded(r, &names, sensitive),
                )
                .into()
            }
            4 => Headers::trailers(StreamId::from(id), recorded(r, &names, sensitive)).into(),
            5 => {
                let len = r.below(16_385);
                let mut d = Data::new(StreamId::from(id), Bytes::from(vec![i as u8; len]));
                d.set_end_stream(r.below(2) == 0);
                d.into()
            }
            6 => WindowUpdate::new(
                StreamId::from(id * (r.below(2) as u32)),
                1 + r.below(1 << 20) as u32,
            )
            .into(),
            7 => Ping::new(r.next().to_be_bytes()).into(),
            _ => {
                let mut s = Settings::default();
                s.set_initial_window_size(Some(r.below(1 << 20) as u32));
                s.set_max_concurrent_streams(Some(r.below(1000) as u32));
                s.into()
            }
        };
        frames.push(f);
    }
    frames.push(Reset::new(StreamId::from(7), Reason::CANCEL).into());
    frames.push(GoAway::new(StreamId::from(99), Reason::NO_ERROR).into());
    frames
}

/// Reads `wire` with h2's reader and this one, at several chunk sizes.
async fn check_h2_wire(wire: &[u8], sensitive: &[Vec<bool>]) {
    let want: Vec<String> = {
        let (mut tx, rx) = tokio::io::duplex(wire.len() + 1);
        tokio::io::AsyncWriteExt::write_all(&mut tx, wire)
            .await
            .unwrap();
        drop(tx);
        let mut codec = Codec::<_, Bytes>::new(rx);
        codec.set_max_recv_header_list_size(1 << 20);
        let mut v = Vec::new();
        while let Some(f) = codec.next().await {
            v.push(canon_h2(f.unwrap()));
        }
        v
    };
    assert_eq!(want.len(), 2002);
    for chunk in [usize::MAX, 4096, 7, 1] {
        let mut flags: Vec<Vec<bool>> = Vec::new();
        let got: Vec<String> = ours(wire, chunk, 1 << 20)
            .into_iter()
            .map(|f| match f.unwrap() {
                Frame::Headers(h) => {
                    assert!(!h.over_size);
                    flags.push(h.fields.iter().map(|(_, v)| v.is_sensitive()).collect());
                    canon_headers(insensitive(h.into_h2()))
                }
                f => canon(f),
            })
            .collect();
        assert_eq!(flags.len(), sensitive.len());
        for (k, (g, w)) in flags.iter().zip(sensitive).enumerate() {
            assert_eq!(g, w, "chunk {chunk}, head {k}");
        }
        assert_eq!(got.len(), want.len(), "chunk {chunk}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "chunk {chunk}");
        }
    }
}

#[tokio::test]
async fn what_the_relay_writes_reads_back_exactly() {
    // The relay's own encoder (raw strings, literals never indexed, table
    // size updates) into this reader: 1,000 random heads, the table size
    // acknowledged at random between them.
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let names: Vec<HeaderName> = [
        "content-type",
        "grpc-message",
        "x-a",
        "authorization",
        "date",
    ]
    .iter()
    .map(|n| HeaderName::from_static(n))
    .collect();
    let mut w = Writer::new();
    let mut want = Vec::new();
    let mut wire = Vec::new();
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for i in 0..1000u32 {
        if r.below(10) == 0 {
            w.frame(Out::SettingsAck(write::Ack {
                max_frame_size: None,
                header_table_size: Some(r.below(5000) as u32),
            }));
            // The ACK itself is not wanted here: skip its bytes.
            assert!(w.poll_write(&mut Vec::new(), &mut cx).is_ready());
        }
        let status = StatusCode::from_u16(200 + r.below(300) as u16).unwrap();
        let fields = random_fields(&mut r, &names);
        let eos = r.below(2) == 0;
        let head = || {
            let mut h = Headers::new(
                StreamId::from(1 + 2 * i),
                Pseudo::response(status),
                fields.clone(),
            );
            if eos {
                h.set_end_stream();
            }
            h
        };
        want.push(canon_headers(head()));
        w.frame(Out::head(head()));
        assert!(w.poll_write(&mut wire, &mut cx).is_ready());
    }
    let got: Vec<String> = ours(&wire, 1000, 1 << 20)
        .into_iter()
        .map(|f| canon(f.unwrap()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn streamed_frames_are_read_in_a_bounded_buffer() {
    // 200 full DATA frames, their payloads kept (a client that has not read
    // them yet) or let go, read whole and in odd chunks: the buffer never
    // holds more than a frame, the next frame's head and one read's room.
    // A client's reader, with the data all there, takes the rest of a frame
    // and the next head per read, so no frame is copied from one buffer to
    // the next; a backend's takes several frames per read.
    let mut wire = Vec::new();
    for i in 0..200u32 {
        wire.extend_from_slice(&(DEFAULT_MAX_FRAME as u32).to_be_bytes()[1..]);
        wire.extend_from_slice(&[DATA, 0]);
        wire.extend_from_slice(&1u32.to_be_bytes());
        wire.extend(std::iter::repeat_n(i as u8, DEFAULT_MAX_FRAME));
    }
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for client in [true, false] {
        let room = if client { READ } else { BACKEND_READ };
        for (chunk, keep) in [usize::MAX, 5000, 16_393]
            .into_iter()
            .flat_map(|c| [(c, true), (c, false)])
        {
            let mut r = Reader::new(16 << 10, client);
            let mut io = Chunks {
                data: &wire,
                chunk,
                reads: 0,
            };
            let mut kept = Vec::new();
            while let Poll::Ready(Some(f)) = r.poll_next(&mut io, &mut cx) {
                assert!(
                    r.buf.capacity() <= DEFAULT_MAX_FRAME + 2 * HEAD + room,
                    "client {client} chunk {chunk} keep {keep}: capacity {}",
                    r.buf.capacity()
                );
                match f {
                    Ok(Frame::Data { payload, .. }) => {
                        // Copied and dropped, the buffer is the reader's
                        // alone again.
                        kept.push(if keep {
                            payload
                        } else {
                            Bytes::copy_from_slice(&payload)
                        });
                    }
                    other => panic!("chunk {chunk}: {other:?}"),
                }
            }
            assert_eq!(kept.len(), 200, "chunk {chunk}");
            if chunk == usize::MAX && client {
                // A frame per read, each taking the next frame's head along:
                // one more for the first frame, whose head comes with the
                // first read, and one finding the end (reading 8 KiB and
                // then the rest made it 401).
                assert_eq!(io.reads, 202, "keep {keep}");
            } else if chunk == usize::MAX {
                // The first read fills `READ`; every later new buffer has
                // `BACKEND_READ` of room (with 8 KiB reads it was over 400).
                let most = wire.len() / BACKEND_READ + 3;
                assert!(io.reads <= most, "keep {keep}: {} reads", io.reads);
            }
            for (i, p) in kept.iter().enumerate() {
                assert!(
                    p.len() == DEFAULT_MAX_FRAME && p.iter().all(|&b| b == i as u8),
                    "client {client} chunk {chunk}: frame {i}"
                );
            }
        }
    }
}

#[test]
fn backends_may_send_larger_frames_than_clients() {
    // The relay tells its backends SETTINGS_MAX_FRAME_SIZE = BACKEND_MAX_FRAME
    // (a 64 KiB message and its prefix in one frame) and its clients nothing.
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let read = |client: bool, len: usize, cx: &mut Context<'_>| {
        let wire = frame(DATA, END_STREAM, 1, &vec![7; len]);
        let mut r = Reader::new(16 << 10, client);
        let mut io = Chunks {
            data: &wire,
            chunk: 5000,
            reads: 0,
        };
        let got = match r.poll_next(&mut io, cx) {
            Poll::Ready(Some(Ok(Frame::Data { payload, .. }))) => {
                assert!(payload.len() == len && payload.iter().all(|&b| b == 7));
                "data".to_string()
            }
            Poll::Ready(Some(Err(e))) => format!("{e:?}"),
            other => panic!("{other:?}"),
        };
        // The buffer holds the frame, its head and one read's room.
        assert!(r.buf.capacity() <= len + 2 * HEAD + BACKEND_READ);
        got
    };
    for (client, len, want) in [
        (true, DEFAULT_MAX_FRAME, "data"),
        (true, DEFAULT_MAX_FRAME + 1, "FRAME_SIZE_ERROR"),
        (false, DEFAULT_MAX_FRAME + 1, "data"),
        (false, (64 << 10) + 5, "data"),
        (false, BACKEND_MAX_FRAME, "data"),
        (false, BACKEND_MAX_FRAME + 1, "FRAME_SIZE_ERROR"),
    ] {
        let got = read(client, len, &mut cx);
        assert!(got.contains(want), "client {client}, {len} bytes: {got}");
    }
}

#[test]
fn small_payloads_leave_the_buffer_free_for_the_next_read() {
    // A payload the writer would copy anyway (under CHAIN) is copied here,
    // so holding it (queued, not yet written) does not hold the read buffer;
    // a larger one is split off, zero-copy, and does.
    // (data bytes, padded, buffer free while the payload is held)
    let cases = [
        (64, false, true),
        (255, false, true),
        (256, false, false),
        // 10 bytes of data behind 255 of padding: what is kept counts.
        (10, true, true),
    ];
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for (data, padded, free) in cases {
        let (flags, payload) = if padded {
            let mut p = vec![255u8];
            p.extend(std::iter::repeat_n(7u8, data));
            p.extend([0u8; 255]);
            (PADDED, p)
        } else {
            (0, vec![7u8; data])
        };
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend(frame(DATA, flags, 1, &payload));
        }
        let mut r = Reader::new(16 << 10, true);
        let mut io = Chunks {
            data: &wire,
            chunk: 9 + payload.len(),
            reads: 0,
        };
        let mut held = Vec::new();
        for _ in 0..3 {
            let Poll::Ready(Some(Ok(Frame::Data { payload, .. }))) = r.poll_next(&mut io, &mut cx)
            else {
                panic!("{data} bytes: no frame");
            };
            assert_eq!(&payload[..], &vec![7u8; data][..]);
            held.push(payload);
            assert_eq!(
                r.buf.try_reclaim(READ),
                free,
                "{data} bytes held: the read buffer free for the next read"
            );
        }
    }
}

#[test]
fn data_padding_is_removed_and_counted() {
    // 3 bytes of data, 4 of padding: 8 on the wire, all flow-controlled.
    let mut p = vec![4, b'a', b'b', b'c'];
    p.extend([0; 4]);
    let got = ours(&frame(DATA, PADDED | END_STREAM, 1, &p), 3, 1024);
    let Some(Ok(Frame::Data {
        id: 1,
        end_stream: true,
        payload,
        len: 8,
    })) = got.first()
    else {
        panic!("{got:?}")
    };
    assert_eq!(&payload[..], b"abc");
    // All padding (no data) is fine; padding as long as the frame is not.
    assert!(matches!(
        ours(&frame(DATA, PADDED, 1, &[3, 0, 0, 0]), 99, 1024)[..],
        [Ok(Frame::Data { len: 4, .. })]
    ));
    for bad in [&[4u8, 0, 0, 0][..], &[], &[200]] {
        assert_eq!(
            error(&frame(DATA, PADDED, 1, bad)),
            "GoAway(PROTOCOL_ERROR)"
        );
    }
    assert_eq!(error(&frame(DATA, 0, 0, b"x")), "GoAway(PROTOCOL_ERROR)");
}

#[test]
fn header_padding_priority_and_continuation() {
    // PADDED and PRIORITY, then the same block over three CONTINUATIONs.
    let mut p = vec![2, 0, 0, 0, 3, 7];
    p.extend_from_slice(BLOCK);
    p.extend([0, 0]);
    let mut wire = frame(HEADERS, PADDED | PRIORITY_FLAG | END_HEADERS, 1, &p);
    wire.extend(frame(HEADERS, END_STREAM, 3, &BLOCK[..4]));
    wire.extend(frame(CONTINUATION, 0, 3, &[]));
    wire.extend(frame(CONTINUATION, 0, 3, &BLOCK[4..9]));
    wire.extend(frame(CONTINUATION, END_HEADERS, 3, &BLOCK[9..]));
    let got = ours(&wire, 5, 1024);
    assert_eq!(got.len(), 2, "{got:?}");
    for (f, id) in got.into_iter().zip([1, 3]) {
        let Ok(Frame::Headers(h)) = f else {
            panic!("{f:?}")
        };
        assert!(!h.over_size);
        assert_eq!(h.id, id);
        assert_eq!(h.end_stream, id == 3);
        let (pseudo, fields) = h.into_h2().into_parts();
        assert_eq!(pseudo.path.as_deref(), Some("/s.S/M"));
        assert_eq!(fields["x"], "1");
    }
}

#[test]
fn a_block_can_come_whole_in_its_last_continuation() {
    let mut wire = frame(HEADERS, END_STREAM, 1, &[]);
    wire.extend(frame(CONTINUATION, 0, 1, &[]));
    wire.extend(frame(CONTINUATION, END_HEADERS, 1, BLOCK));
    let got = ours(&wire, 4, 1024);
    let [Ok(Frame::Headers(h))] = &got[..] else {
        panic!("{got:?}")
    };
    assert!(h.end_stream);
    assert_eq!(h.pseudo.path.as_deref(), Some("/s.S/M"));
    assert_eq!(h.fields[0].1, "1");
}

#[test]
fn a_self_dependent_head_fails_its_stream_and_keeps_the_table() {
    // The block adds an entry (x-a: 1, indexed); the stream fails, and the
    // next block's reference to the entry still reads.
    let mut block = vec![0x83, 0x86, 0x84, 0x40, 3, b'x', b'-', b'a', 1, b'1'];
    let mut p = vec![0, 0, 0, 1, 7];
    p.extend_from_slice(&block);
    let mut wire = frame(HEADERS, PRIORITY_FLAG | END_HEADERS, 1, &p);
    block.truncate(3);
    block.push(0x80 | 62);
    wire.extend(frame(HEADERS, END_HEADERS, 3, &block));
    let got = ours(&wire, 100, 1024);
    assert!(
        matches!(
            got[0],
            Err(Error::Reset {
                id: 1,
                reason: Reason::PROTOCOL_ERROR,
                opens: true
            })
        ),
        "{got:?}"
    );
    let Ok(Frame::Headers(h)) = &got[1] else {
        panic!("{got:?}")
    };
    assert_eq!(h.fields[0].0, "x-a");
    assert_eq!(h.fields[0].1, "1");
}

#[test]
fn malformed_and_over_size_blocks_fail_their_stream_only() {
    let mut block = BLOCK.to_vec();
    block.extend([0x00, 4, b'X', b'-', b'A', b'b', 1, b'1']);
    let mut wire = frame(HEADERS, END_HEADERS, 1, &block);
    // 40 fields of 40 bytes: over a 1,024-byte list.
    let mut big = BLOCK.to_vec();
    for _ in 0..40 {
        big.extend([0x00, 3, b'x', b'-', b'b', 5]);
        big.extend(b"vvvvv");
    }
    wire.extend(frame(HEADERS, END_HEADERS, 3, &big));
    wire.extend(frame(HEADERS, END_HEADERS, 5, BLOCK));
    let got = ours(&wire, 100, 1024);
    assert!(matches!(got[0], Err(Error::Reset { id: 1, .. })), "{got:?}");
    assert!(
        matches!(&got[1], Ok(Frame::Headers(h)) if h.over_size),
        "{got:?}"
    );
    assert!(
        matches!(&got[2], Ok(Frame::Headers(h)) if !h.over_size),
        "{got:?}"
    );
}

#[test]
fn connection_errors() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a frame over 16 KiB",
            frame(DATA, 0, 1, &vec![0; 16_385]),
            "FRAME_SIZE_ERROR",
        ),
        (
            "HEADERS on stream 0",
            frame(HEADERS, END_HEADERS, 0, BLOCK),
            "PROTOCOL_ERROR",
        ),
        (
            "HEADERS padded past its end",
            frame(HEADERS, END_HEADERS | PADDED, 1, &[20, 0x83]),
            "PROTOCOL_ERROR",
        ),
        (
            "HEADERS with a short priority",
            frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, &[0, 0]),
            "PROTOCOL_ERROR",
        ),
        (
            "a bad HPACK index",
            frame(HEADERS, END_HEADERS, 1, &[0x80 | 70]),
            "COMPRESSION_ERROR",
        ),
        (
            "CONTINUATION without HEADERS",
            frame(CONTINUATION, END_HEADERS, 1, BLOCK),
            "PROTOCOL_ERROR",
        ),
        (
            "a block interrupted",
            [frame(HEADERS, 0, 1, &BLOCK[..3]), frame(DATA, 0, 1, b"x")].concat(),
            "PROTOCOL_ERROR",
        ),
        (
            "a block interrupted by an unknown frame",
            [frame(HEADERS, 0, 1, &BLOCK[..3]), frame(0x42, 0, 0, b"x")].concat(),
            "PROTOCOL_ERROR",
        ),
        (
            "CONTINUATION of another stream",
            [
                frame(HEADERS, 0, 1, &BLOCK[..3]),
                frame(CONTINUATION, END_HEADERS, 3, &BLOCK[3..]),
            ]
            .concat(),
            "PROTOCOL_ERROR",
        ),
        (
            "RST_STREAM of 3 bytes",
            frame(RST_STREAM, 0, 1, &[0, 0, 8]),
            "FRAME_SIZE_ERROR",
        ),
        (
            "SETTINGS on a stream",
            frame(SETTINGS, 0, 1, &[]),
            "PROTOCOL_ERROR",
        ),
        (
            "a SETTINGS ACK with a payload",
            frame(SETTINGS, ACK, 0, &[0, 3, 0, 0, 0, 1]),
            "FRAME_SIZE_ERROR",
        ),
        (
            "SETTINGS of 5 bytes",
            frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0]),
            "FRAME_SIZE_ERROR",
        ),
        (
            "ENABLE_PUSH 2",
            frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 2]),
            "PROTOCOL_ERROR",
        ),
        (
            "MAX_FRAME_SIZE too small",
            frame(SETTINGS, 0, 0, &[0, 5, 0, 0, 0x10, 0]),
            "PROTOCOL_ERROR",
        ),
        (
            "an initial window past 2^31-1",
            frame(SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            "FLOW_CONTROL_ERROR",
        ),
        (
            "PING on a stream",
            frame(PING, 0, 1, &[0; 8]),
            "PROTOCOL_ERROR",
        ),
        (
            "PING of 7 bytes",
            frame(PING, 0, 0, &[0; 7]),
            "FRAME_SIZE_ERROR",
        ),
        (
            "GOAWAY on a stream",
            frame(GOAWAY, 0, 1, &[0; 8]),
            "PROTOCOL_ERROR",
        ),
        (
            "GOAWAY of 7 bytes",
            frame(GOAWAY, 0, 0, &[0; 7]),
            "FRAME_SIZE_ERROR",
        ),
        (
            "WINDOW_UPDATE of 5 bytes",
            frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1, 0]),
            "FRAME_SIZE_ERROR",
        ),
        (
            "PRIORITY on stream 0",
            frame(PRIORITY, 0, 0, &[0; 5]),
            "PROTOCOL_ERROR",
        ),
    ];
    for (what, wire, want) in cases {
        assert_eq!(error(&wire), format!("GoAway({want})"), "{what}");
    }
    // PRIORITY's own errors are the stream's, and do not open it.
    for (p, want) in [
        (&[0u8; 4][..], Reason::FRAME_SIZE_ERROR),
        (&[0, 0, 0, 5, 0][..], Reason::PROTOCOL_ERROR),
    ] {
        let got = ours(&frame(PRIORITY, 0, 5, p), 99, 1024);
        assert!(
            matches!(got[..], [Err(Error::Reset { id: 5, reason, opens: false })] if reason == want),
            "{got:?}"
        );
    }
}

#[test]
fn a_block_that_decodes_past_four_times_the_limit_fails_the_connection() {
    // A 1,000-byte field into the table, then 100 one-byte references to it:
    // 100 KiB decoded from a 1 KiB block, past 4 × 16 KiB.
    let mut block = vec![0x40, 3, b'x', b'-', b'a', 0x7f, 0xe9, 0x06];
    block.extend(std::iter::repeat_n(b'v', 1000));
    block.extend(std::iter::repeat_n(0x80 | 62, 100));
    let wire = frame(HEADERS, END_HEADERS, 1, &block);
    assert_eq!(error(&wire), "GoAway(ENHANCE_YOUR_CALM)");
}

#[test]
fn continuation_floods_and_huge_blocks_are_cut_off() {
    // Empty CONTINUATION frames: each costs a pass, none memory.
    let mut wire = frame(HEADERS, 0, 1, &BLOCK[..2]);
    for _ in 0..100 {
        wire.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    assert_eq!(error(&wire), "GoAway(ENHANCE_YOUR_CALM)");
    let got = ours(&wire, usize::MAX, 16 << 10);
    // 16 KiB list: 64 KiB blocks, 4 frames, 5 allowed.
    assert_eq!(got.len(), 1);
    // A block past four times the list limit, in full frames.
    let mut wire = frame(HEADERS, 0, 1, &[0; 16_384]);
    for _ in 0..4 {
        wire.extend(frame(CONTINUATION, 0, 1, &[0; 16_384]));
    }
    assert_eq!(error(&wire), "GoAway(ENHANCE_YOUR_CALM)");
    // Five CONTINUATIONs are fine.
    let mut wire = frame(HEADERS, 0, 1, &BLOCK[..2]);
    for _ in 0..5 {
        wire.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    wire.extend(frame(CONTINUATION, END_HEADERS, 1, &BLOCK[2..]));
    assert!(matches!(
        ours(&wire, 9, 16 << 10)[..],
        [Ok(Frame::Headers(..))]
    ));
    // A block past the bound in a single frame (a client's 16 KiB frame
    // over a 1,000-byte list limit, a backend's 128 KiB one over 16 KiB) is
    // refused for its size before any of it is decoded: its first byte, a
    // bad index, would be COMPRESSION_ERROR.
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for (client, list, len) in [(true, 1000, 4001), (false, 16 << 10, (64 << 10) + 1)] {
        let mut block = vec![0x80 | 70];
        block.resize(len, 0);
        let wire = frame(HEADERS, END_HEADERS, 1, &block);
        let mut r = Reader::new(list, client);
        let mut io = Chunks {
            data: &wire,
            chunk: usize::MAX,
            reads: 0,
        };
        let got = r.poll_next(&mut io, &mut cx);
        assert!(
            matches!(
                got,
                Poll::Ready(Some(Err(Error::GoAway(Reason::ENHANCE_YOUR_CALM))))
            ),
            "client {client}: {got:?}"
        );
    }
}

#[test]
fn unknown_frames_are_skipped_and_the_end_is_told_apart() {
    let mut wire = frame(0x42, 0xff, 3, b"whatever");
    wire.extend(frame(PING, ACK, 0, b"12345678"));
    wire.extend(frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 9]));
    wire.extend(frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x83]));
    let got = ours(&wire, 3, 1024);
    assert!(
        matches!(got[..], [Ok(Frame::Ping(ref p)), Ok(Frame::Priority), Ok(Frame::PushPromise)] if p.is_ack() && *p.payload() == *b"12345678"),
        "{got:?}"
    );
    // Cut within a frame: an error, not the end.
    let cut = &wire[..wire.len() - 1];
    assert!(matches!(ours(cut, 3, 1024).last(), Some(Err(Error::Io(_)))));
    // Cut within a header block, between its frames.
    let open = frame(HEADERS, 0, 1, &BLOCK[..3]);
    assert!(matches!(ours(&open, 3, 1024)[..], [Err(Error::Io(_))]));
}

#[test]
fn control_frames_read_as_written() {
    let mut wire = frame(RST_STREAM, 0, 3, &8u32.to_be_bytes());
    wire.extend(frame(
        WINDOW_UPDATE,
        0,
        5,
        &(0x8000_0000u32 | 77).to_be_bytes(),
    ));
    wire.extend(frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()));
    wire.extend(frame(
        GOAWAY,
        0,
        0,
        &[0x80, 0, 0, 9, 0, 0, 0, 2, b'd', b'e', b'b', b'u', b'g'],
    ));
    wire.extend(frame(
        SETTINGS,
        0,
        0,
        &[0, 4, 0, 1, 0, 0, 0, 3, 0, 0, 0, 7, 0x99, 0x99, 1, 2, 3, 4],
    ));
    wire.extend(frame(SETTINGS, ACK, 0, &[]));
    let got: Vec<String> = ours(&wire, 2, 1024)
        .into_iter()
        .map(|f| format!("{:?}", f.unwrap()))
        .collect();
    assert_eq!(got.len(), 6);
    assert!(
        got[0].contains("StreamId(3)") && got[0].contains("CANCEL"),
        "{}",
        got[0]
    );
    assert!(
        got[1].contains("StreamId(5)") && got[1].contains("77"),
        "{}",
        got[1]
    );
    assert!(
        got[2].contains("StreamId(0)") && got[2].contains("size_increment: 0"),
        "{}",
        got[2]
    );
    assert!(
        got[3].contains("StreamId(9)") && got[3].contains("INTERNAL_ERROR"),
        "{}",
        got[3]
    );
    assert!(
        got[4].contains("65536") && got[4].contains("max_concurrent_streams: 7"),
        "{}",
        got[4]
    );
    assert!(got[5].contains("ACK"), "{}", got[5]);
}

#[test]
fn a_backend_reader_grows_while_reads_fill_and_shrinks_after() {
    // A backend streams full frames (reads come back full), then answers
    // small replies one at a time: the reader's buffer grows to
    // `BACKEND_READ` for the stream and is small again after it; a
    // client's reader never grows.
    let frame = |len: usize, fill: u8| {
        let mut f = (len as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[DATA, 0]);
        f.extend_from_slice(&1u32.to_be_bytes());
        f.extend(std::iter::repeat_n(fill, len));
        f
    };
    let stream: Vec<u8> = (0..50u8)
        .flat_map(|i| frame(DEFAULT_MAX_FRAME, i))
        .collect();
    let replies: Vec<u8> = (0..100u8).flat_map(|i| frame(100, i)).collect();
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for client in [false, true] {
        let mut r = Reader::new(16 << 10, client);
        let mut most = 0;
        for (wire, chunk, frames) in [(&stream, usize::MAX, 50), (&replies, 109, 100)] {
            let mut io = Chunks {
                data: wire,
                chunk,
                reads: 0,
            };
            let mut n = 0;
            while let Poll::Ready(Some(f)) = r.poll_next(&mut io, &mut cx) {
                assert!(
                    matches!(f, Ok(Frame::Data { .. })),
                    "client {client}: {f:?}"
                );
                most = most.max(r.made);
                n += 1;
            }
            assert_eq!(n, frames, "client {client}");
        }
        if client {
            assert!(
                most <= DEFAULT_MAX_FRAME + 2 * HEAD + READ,
                "client: {most}"
            );
        } else {
            assert!(most >= BACKEND_READ, "backend never grew: {most}");
            assert!(r.made <= 2 * READ, "{} kept after the stream", r.made);
        }
        assert_eq!(r.size, READ, "client {client}");
    }
}
