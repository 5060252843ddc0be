//! The write half of one side: frames encoded into a buffer, sent with one
//! vectored write per flush.
//!
//! Header blocks go through the relay's own [`hpack::Encoder`]. Frame heads
//! and small payloads are copied into the buffer; a DATA payload of
//! [`CHAIN`] bytes or more is sent from where it is, between the buffered
//! bytes before and after it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

use super::frame::{
    ACK, CONTINUATION, DATA, DEFAULT_MAX_FRAME, END_HEADERS, END_STREAM, GOAWAY, HEAD, HEADERS,
    PING, RST_STREAM, SETTINGS, WINDOW_UPDATE,
};
use super::hpack;
use super::Out;

/// DATA payloads this large are not copied (h2's threshold with vectored I/O).
pub(super) const CHAIN: usize = 256;
/// Bytes copied into the buffer before the side takes no more frames without
/// writing first (h2's write buffer).
const ROOM: usize = 16 << 10;
/// The same bound for everything waiting, chained payloads included, past
/// `ROOM` while at most `CHAINED_MAX` payloads are chained. Larger than one
/// TLS record: a 16 KiB DATA frame is 9 bytes more than a record holds, so
/// written one at a time each made a full record and a 9-byte one; taken
/// four at a time they fill the records they span. A chained payload holds
/// the read buffer it was split from: the count keeps a peer sending small
/// frames one per read from pinning more buffers than `ROOM` alone allowed.
const CHAINED_ROOM: usize = 64 << 10;
const CHAINED_MAX: usize = 8;
// A full writer of relayed frames goes to TLS in one write: it takes a frame
// while under `CHAINED_ROOM`, and a client's frames are at most
// `DEFAULT_MAX_FRAME`. A backend's DATA may be larger (up to
// `BACKEND_MAX_FRAME`, split here to the client's frame size), and so may a
// re-encoded header block or GOAWAY: one more write then.
const _: () = assert!(crate::tls::SEND_BUFFER >= CHAINED_ROOM + HEAD + DEFAULT_MAX_FRAME);
/// Slices per vectored write.
const SLICES: usize = 64;

/// What a SETTINGS acknowledgement carries to the writer: the peer's values
/// that govern encoding, applied once the acknowledgement is encoded, so every
/// header block after it on the wire (and none before) uses them.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Ack {
    pub(super) max_frame_size: Option<u32>,
    pub(super) header_table_size: Option<u32>,
}

/// A request head for a backend, written from the decided parts as they are
/// (h2's `Headers` would copy the path and authority into new buffers first).
#[derive(Debug)]
pub(super) struct Request {
    pub(super) id: u32,
    pub(super) end_stream: bool,
    pub(super) head: http::request::Parts,
    pub(super) added: super::Added,
}

pub(super) struct Writer {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    done: usize,
    /// Payloads sent from their own buffers: each goes after `buf[..at]`.
    chained: VecDeque<(usize, Bytes)>,
    /// Bytes left in `chained`.
    chained_len: usize,
    hpack: hpack::Encoder,
    max_frame: usize,
}

impl Writer {
    pub(super) fn new() -> Writer {
        Writer {
            buf: Vec::new(),
            done: 0,
            chained: VecDeque::new(),
            chained_len: 0,
            hpack: hpack::Encoder::default(),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// Whether a frame can be taken before what is buffered is written. The
    /// whole buffer counts, written part included: it is cleared only once
    /// all of it is out, so a peer that keeps reading slowly cannot make it
    /// grow (h2's writer did the same).
    pub(super) fn has_room(&self) -> bool {
        let held = self.buf.len() + self.chained_len;
        self.buf.len() < ROOM
            && (held < ROOM || (held < CHAINED_ROOM && self.chained.len() < CHAINED_MAX))
    }

    fn is_empty(&self) -> bool {
        self.done == self.buf.len() && self.chained.is_empty()
    }

    /// Encodes a frame.
    pub(super) fn frame(&mut self, f: Out) {
        match f {
            Out::Data(d) => {
                let id = d.stream_id().into();
                let end = if d.is_end_stream() { END_STREAM } else { 0 };
                let mut payload = d.into_payload();
                // A backend's frames may be larger than the client's.
                while payload.len() > self.max_frame {
                    let part = payload.split_to(self.max_frame);
                    head(&mut self.buf, part.len(), DATA, 0, id);
                    self.chained_len += part.len();
                    self.chained.push_back((self.buf.len(), part));
                }
                let len = payload.len();
                head(&mut self.buf, len, DATA, end, id);
                if len >= CHAIN {
                    self.chained.push_back((self.buf.len(), payload));
                    self.chained_len += len;
                } else {
                    self.buf.extend_from_slice(&payload);
                }
            }
            Out::Headers(h) => {
                let view = hpack::View::of(&h.pseudo);
                let fields = h.fields.iter().map(|(n, v)| (n, v));
                self.header_frames(h.id, h.end_stream, |hpack, buf| {
                    hpack.block(view, fields, buf)
                });
            }
            Out::Request(r) => {
                let view = hpack::View::request(&r.head);
                let added = r.added.iter().map(|(n, v)| (n, v));
                let fields = r.head.headers.iter().chain(added);
                self.header_frames(r.id, r.end_stream, |hpack, buf| {
                    hpack.block(view, fields, buf)
                });
            }
            Out::Reset(r) => {
                head(&mut self.buf, 4, RST_STREAM, 0, r.stream_id().into());
                self.buf
                    .extend_from_slice(&u32::from(r.reason()).to_be_bytes());
            }
            Out::WindowUpdate(w) => {
                head(&mut self.buf, 4, WINDOW_UPDATE, 0, w.stream_id().into());
                self.buf
                    .extend_from_slice(&w.size_increment().to_be_bytes());
            }
            Out::Ping(p) => {
                let flags = if p.is_ack() { ACK } else { 0 };
                head(&mut self.buf, 8, PING, flags, 0);
                self.buf.extend_from_slice(p.payload());
            }
            Out::GoAway(g) => {
                let debug = g.debug_data();
                head(&mut self.buf, 8 + debug.len(), GOAWAY, 0, 0);
                self.buf
                    .extend_from_slice(&u32::from(g.last_stream_id()).to_be_bytes());
                self.buf
                    .extend_from_slice(&u32::from(g.reason()).to_be_bytes());
                self.buf.extend_from_slice(debug);
            }
            Out::SettingsAck(a) => {
                head(&mut self.buf, 0, SETTINGS, ACK, 0);
                // (The codec that read them held them to RFC 9113's bounds.)
                if let Some(n) = a.max_frame_size {
                    self.max_frame = n as usize;
                }
                if let Some(n) = a.header_table_size {
                    self.hpack.set_max_size(n as usize);
                }
            }
            Out::Settings(s) => {
                let values = [
                    (1, s.header_table_size()),
                    (2, s.is_push_enabled().map(u32::from)),
                    (3, s.max_concurrent_streams()),
                    (4, s.initial_window_size()),
                    (5, s.max_frame_size()),
                    (6, s.max_header_list_size()),
                    (8, s.is_extended_connect_protocol_enabled().map(u32::from)),
                ];
                let n = values.iter().filter(|(_, v)| v.is_some()).count();
                let flags = if s.is_ack() { ACK } else { 0 };
                head(&mut self.buf, 6 * n, SETTINGS, flags, 0);
                for (id, v) in values {
                    if let Some(v) = v {
                        self.buf.extend_from_slice(&u16::to_be_bytes(id));
                        self.buf.extend_from_slice(&v.to_be_bytes());
                    }
                }
            }
        }
    }

    /// A header block as HEADERS, and CONTINUATION frames if it is larger
    /// than the peer's frame size.
    fn header_frames(
        &mut self,
        id: u32,
        end_stream: bool,
        encode: impl FnOnce(&mut hpack::Encoder, &mut Vec<u8>),
    ) {
        // Encoded in place behind a head filled in after; only a block too
        // large for one frame is moved out and framed again.
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; HEAD]);
        encode(&mut self.hpack, &mut self.buf);
        let len = self.buf.len() - start - HEAD;
        if len <= self.max_frame {
            let end = if end_stream { END_STREAM } else { 0 };
            self.buf[start..start + HEAD].copy_from_slice(&head_bytes(
                len,
                HEADERS,
                end | END_HEADERS,
                id,
            ));
            return;
        }
        let block = self.buf.split_off(start + HEAD);
        self.buf.truncate(start);
        header_frames(&mut self.buf, &block, id, end_stream, self.max_frame);
    }

    /// Writes out everything encoded, one vectored write at a time.
    pub(super) fn poll_write<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES];
            let mut n = 0;
            let mut pos = self.done;
            let mut all = true;
            for (at, payload) in &self.chained {
                if n + 2 > SLICES {
                    all = false;
                    break;
                }
                if *at > pos {
                    slices[n] = IoSlice::new(&self.buf[pos..*at]);
                    n += 1;
                    pos = *at;
                }
                slices[n] = IoSlice::new(payload);
                n += 1;
            }
            // (After 32 payloads each behind buffered bytes the slices are
            // full: the tail goes in the next write.)
            if all && pos < self.buf.len() && n < SLICES {
                slices[n] = IoSlice::new(&self.buf[pos..]);
                n += 1;
            }
            let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        self.buf.clear();
        self.done = 0;
        if self.buf.capacity() > 2 * ROOM {
            // One huge header block must not stay with the connection.
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let at = self.chained.front().map_or(self.buf.len(), |c| c.0);
            if self.done < at {
                let k = n.min(at - self.done);
                self.done += k;
                n -= k;
                continue;
            }
            let Some((_, payload)) = self.chained.front_mut() else {
                return;
            };
            let k = n.min(payload.len());
            payload.advance(k);
            self.chained_len -= k;
            n -= k;
            if payload.is_empty() {
                self.chained.pop_front();
            }
        }
    }
}

/// A header block as a HEADERS frame and, past `max_frame` bytes,
/// CONTINUATION frames (RFC 9113 §6.10); an empty block is one empty HEADERS.
pub(crate) fn header_frames(
    dst: &mut Vec<u8>,
    block: &[u8],
    id: u32,
    end_stream: bool,
    max_frame: usize,
) {
    let mut kind = HEADERS;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    let mut rest = block;
    loop {
        let (part, next) = rest.split_at(rest.len().min(max_frame));
        if next.is_empty() {
            flags |= END_HEADERS;
        }
        head(dst, part.len(), kind, flags, id);
        dst.extend_from_slice(part);
        if next.is_empty() {
            return;
        }
        (kind, flags, rest) = (CONTINUATION, 0, next);
    }
}

/// A frame head (RFC 9113 §4.1); stream ids here are below 2^31.
fn head(dst: &mut Vec<u8>, len: usize, kind: u8, flags: u8, id: u32) {
    dst.extend_from_slice(&head_bytes(len, kind, flags, id));
}

pub(crate) fn head_bytes(len: usize, kind: u8, flags: u8, id: u32) -> [u8; HEAD] {
    let l = (len as u32).to_be_bytes();
    let i = id.to_be_bytes();
    [l[1], l[2], l[3], kind, flags, i[0], i[1], i[2], i[3]]
}

#[cfg(test)]
mod tests {
    use super::super::frame::BACKEND_MAX_FRAME;
    use super::*;
    use futures_util::StreamExt as _;
    use h2::frame::{
        Data, Frame, GoAway, Headers, Ping, Pseudo, Reason, Reset, Settings, StreamId, WindowUpdate,
    };
    use h2::Codec;
    use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
    use tokio::io::AsyncWriteExt as _;

    /// Everything the writer holds, as the bytes a peer would read.
    fn wire(w: &mut Writer) -> Vec<u8> {
        let mut out = Vec::new();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match w.poll_write(&mut out, &mut cx) {
            Poll::Ready(Ok(())) => out,
            other => panic!("write: {other:?}"),
        }
    }

    /// The frames h2's codec (the relay's reader, and hyper's, tonic's) reads
    /// from `bytes`.
    async fn read(bytes: &[u8]) -> Vec<Frame> {
        let (mut tx, rx) = tokio::io::duplex(bytes.len() + 1);
        tx.write_all(bytes).await.unwrap();
        drop(tx);
        // (Frames up to 32 KiB: tests acknowledge sizes up to that.)
        let mut codec = Codec::<_, Bytes>::with_max_recv_frame_size(rx, 32 << 10);
        codec.set_max_recv_header_list_size(1 << 20);
        let mut frames = Vec::new();
        while let Some(f) = codec.next().await {
            frames.push(f.unwrap());
        }
        frames
    }

    fn request(id: u32, path: &str, fields: &[(&str, &str)]) -> Headers {
        let uri: Uri = format!("http://backend.local{path}").parse().unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in fields {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Headers::new(
            StreamId::from(id),
            Pseudo::request(Method::POST, uri, None),
            map,
        )
    }

    fn parts(f: Frame) -> (Pseudo, HeaderMap) {
        let Frame::Headers(h) = f else {
            panic!("not HEADERS: {f:?}")
        };
        h.into_parts()
    }

    fn table_size(n: usize) -> Out {
        Out::SettingsAck(Ack {
            header_table_size: Some(n as u32),
            ..Ack::default()
        })
    }

    const XFCC: &str = "By=spiffe://example.org/backend;Hash=5d3c0c7d2ad8e4a1d29b0a3f0c2b8e4f6a1d7e9c3b5a2f8d4e6c1b7a9f0e3d2c;Subject=\"CN=client\";URI=spiffe://example.org/client";

    fn grpc_fields(timeout: &str) -> Vec<(&'static str, String)> {
        vec![
            ("content-type", "application/grpc".into()),
            ("te", "trailers".into()),
            ("user-agent", "grpc-rust/0.14".into()),
            ("grpc-timeout", timeout.into()),
            ("x-forwarded-client-cert", XFCC.into()),
        ]
    }

    #[tokio::test]
    async fn header_blocks_decode_to_what_was_sent_and_repeats_are_indexed() {
        let mut w = Writer::new();
        let mut sent = Vec::new();
        let mut sizes = Vec::new();
        for (i, path) in ["/a.A/One", "/a.A/One", "/a.A/Two", "/a.A/One"]
            .iter()
            .enumerate()
        {
            let f = grpc_fields(&format!("{}m", 100 + i));
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let id = 1 + 2 * i as u32;
            sent.push(request(id, path, &f));
            w.frame(Out::head(request(id, path, &f)));
            sizes.push(wire(&mut w));
        }
        let mut all = Vec::new();
        for s in &sizes {
            all.extend_from_slice(s);
        }
        let got = read(&all).await;
        assert_eq!(got.len(), sent.len());
        for (g, s) in got.into_iter().zip(sent) {
            let (gp, gf) = parts(g);
            let (sp, sf) = s.into_parts();
            assert_eq!(gp.method, sp.method);
            assert_eq!(gp.scheme.as_deref(), sp.scheme.as_deref());
            assert_eq!(gp.authority.as_deref(), sp.authority.as_deref());
            assert_eq!(gp.path.as_deref(), sp.path.as_deref());
            assert_eq!(gf, sf);
        }
        // The first block carries every string; a repeat only the call's
        // path (if new) and grpc-timeout, the rest one byte each.
        assert!(sizes[0].len() > XFCC.len(), "{}", sizes[0].len());
        // (36 bytes: the frame head, eight indexed fields, grpc-timeout.)
        assert!(sizes[1].len() < 40, "repeat: {} bytes", sizes[1].len());
        assert!(sizes[2].len() < 50, "new path: {} bytes", sizes[2].len());
        assert!(sizes[3].len() < 40, "path again: {} bytes", sizes[3].len());
    }

    #[tokio::test]
    async fn responses_trailers_sensitive_and_unindexed_fields() {
        let mut w = Writer::new();
        let response = |status: u16| {
            let mut fields = HeaderMap::new();
            fields.insert("content-type", HeaderValue::from_static("application/grpc"));
            let mut secret = HeaderValue::from_static("Bearer s3cr3t");
            secret.set_sensitive(true);
            fields.insert("authorization", secret);
            // Larger than half the table: written, never indexed.
            fields.insert("x-big", HeaderValue::from_str(&"b".repeat(3000)).unwrap());
            Headers::new(
                StreamId::from(1),
                Pseudo::response(StatusCode::from_u16(status).unwrap()),
                fields,
            )
        };
        let statuses = [200, 404, 418, 200, 503];
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("fine"));
        let mut t = Headers::trailers(StreamId::from(1), trailers.clone());
        t.set_end_stream();
        for s in statuses {
            w.frame(Out::head(response(s)));
        }
        w.frame(Out::head(t));
        let bytes = wire(&mut w);
        // Neither the secret nor the big value entered the table: each block
        // carries both again.
        let count = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| *w == needle).count();
        // Never indexed (0x10), name index 23 (authorization), 13 bytes raw.
        assert_eq!(count(b"\x1f\x08\x0dBearer s3cr3t"), 5);
        assert_eq!(count("b".repeat(3000).as_bytes()), 5);
        let mut got = read(&bytes).await;
        assert_eq!(got.len(), 6);
        let last = got.pop().unwrap();
        for (g, s) in got.into_iter().zip(statuses) {
            let (gp, gf) = parts(g);
            let (sp, sf) = response(s).into_parts();
            assert_eq!(gp.status, sp.status);
            assert_eq!(gf, sf);
        }
        let Frame::Headers(last) = last else {
            panic!("trailers")
        };
        assert!(last.is_end_stream());
        assert_eq!(last.fields(), &trailers);
    }

    #[tokio::test]
    async fn the_table_follows_the_peers_size_and_evicts_as_its_decoder_does() {
        let mut w = Writer::new();
        let mut sent = Vec::new();
        let mut all = Vec::new();
        let mut firsts = Vec::new();
        // Values cycle through more entries than a small table holds, so
        // entries are evicted while others are still referenced. Changes:
        // 300; 0; 50 then 200 with no block between (both are announced).
        let changes: [&[usize]; 5] = [&[], &[300], &[], &[0], &[50, 200]];
        for (i, change) in changes.iter().enumerate() {
            for l in *change {
                w.frame(table_size(*l));
            }
            all.extend_from_slice(&wire(&mut w));
            for j in 0..40 {
                let v = format!("value-{}-{}", i, j % 7);
                let f = [("x-k", v.as_str()), ("x-fixed", "same")];
                sent.push(request(1, "/s.S/M", &f));
                w.frame(Out::head(request(1, "/s.S/M", &f)));
                let b = wire(&mut w);
                if j == 0 {
                    firsts.push(b[HEAD..HEAD + 3].to_vec());
                }
                all.extend_from_slice(&b);
            }
        }
        let got = read(&all).await;
        let got: Vec<Frame> = got
            .into_iter()
            .filter(|f| matches!(f, Frame::Headers(_)))
            .collect();
        assert_eq!(got.len(), sent.len());
        for (g, s) in got.into_iter().zip(sent) {
            assert_eq!(parts(g).1, s.into_parts().1);
        }
        // A size update opens the first block after each change (an integer
        // past the five-bit prefix takes more bytes), and the block after no
        // change opens with a field (0x83: :method POST).
        assert_eq!(firsts[0][0], 0x83);
        assert_eq!(firsts[1], [0x3f, 0x8d, 0x02]);
        assert_eq!(firsts[2][0], 0x83);
        assert_eq!(firsts[3][..2], [0x20, 0x83]);
        assert_eq!(firsts[4], [0x3f, 0x13, 0x3f]);
    }

    #[tokio::test]
    async fn a_block_larger_than_a_frame_goes_on_in_continuation_frames() {
        let mut w = Writer::new();
        let big = "v".repeat(1000);
        let fields: Vec<(String, &str)> = (0..40)
            .map(|i| (format!("x-big-{i}"), big.as_str()))
            .collect();
        let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let mut h = request(5, "/big.B/M", &f);
        h.set_end_stream();
        let want = h.fields().clone();
        w.frame(Out::head(h));
        let bytes = wire(&mut w);
        // HEADERS (END_STREAM, no END_HEADERS), then CONTINUATION frames, the
        // last with END_HEADERS; none larger than the peer's frame size.
        let mut at = 0;
        let mut heads = Vec::new();
        while at < bytes.len() {
            let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
            assert!(len <= DEFAULT_MAX_FRAME);
            heads.push((bytes[at + 3], bytes[at + 4]));
            at += HEAD + len;
        }
        assert_eq!(heads.len(), 3, "{heads:?}");
        assert_eq!(heads[0], (HEADERS, END_STREAM));
        assert_eq!(heads[1], (CONTINUATION, 0));
        assert_eq!(heads[2], (CONTINUATION, END_HEADERS));
        let got = read(&bytes).await;
        assert_eq!(got.len(), 1);
        let Frame::Headers(g) = &got[0] else {
            panic!("HEADERS")
        };
        assert!(g.is_end_stream());
        assert_eq!(g.stream_id(), StreamId::from(5));
        assert_eq!(g.fields(), &want);
    }

    #[tokio::test]
    async fn request_heads_read_back_as_h2s_own_request_pseudo_fields() {
        let heads = [
            (Method::POST, "http://backend.local/p.S/M"),
            (Method::POST, "/p.S/M?x=1"),
            (Method::GET, "http://backend.local"),
            (Method::OPTIONS, "http://backend.local"),
            (Method::CONNECT, "backend.local:443"),
            (Method::from_bytes(b"PURGE").unwrap(), "https://a.b/c"),
        ];
        let mut w = Writer::new();
        for (i, (m, uri)) in heads.iter().enumerate() {
            let (mut head, ()) = http::Request::new(()).into_parts();
            head.method = m.clone();
            head.uri = uri.parse().unwrap();
            head.headers.insert("x-n", HeaderValue::from(i));
            w.frame(Out::Request(Box::new(Request {
                id: 2 * i as u32 + 1,
                end_stream: i % 2 == 0,
                head,
                added: std::sync::Arc::new([]),
            })));
        }
        let got = read(&wire(&mut w)).await;
        assert_eq!(got.len(), heads.len());
        for (i, (g, (m, uri))) in got.into_iter().zip(heads).enumerate() {
            let Frame::Headers(g) = g else {
                panic!("HEADERS")
            };
            assert_eq!(u32::from(g.stream_id()), 2 * i as u32 + 1);
            assert_eq!(g.is_end_stream(), i % 2 == 0);
            let (gp, gf) = g.into_parts();
            let want = Pseudo::request(m, uri.parse().unwrap(), None);
            assert_eq!(gp, want, "{uri}");
            assert_eq!(gf["x-n"], HeaderValue::from(i));
        }
    }

    #[tokio::test]
    async fn a_relayed_head_keeps_none_of_the_flags_it_was_read_with() {
        // HEADERS on stream 1: END_STREAM, END_HEADERS, PADDED (3 bytes) and
        // PRIORITY; :status 200 and `a: b`.
        let block = [0x88, 0x00, 0x01, b'a', 0x01, b'b'];
        let mut payload = vec![3, 0, 0, 0, 0, 16];
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0; 3]);
        let mut raw = head_bytes(payload.len(), HEADERS, 0x2d, 1).to_vec();
        raw.extend_from_slice(&payload);
        let mut read_back = read(&raw).await;
        let Some(Frame::Headers(h)) = read_back.pop() else {
            panic!("HEADERS")
        };
        let mut w = Writer::new();
        w.frame(Out::head(h));
        let bytes = wire(&mut w);
        assert_eq!(bytes[3..5], [HEADERS, END_STREAM | END_HEADERS]);
        let mut again = read(&bytes).await;
        let Some(Frame::Headers(h)) = again.pop() else {
            panic!("HEADERS")
        };
        assert!(h.is_end_stream());
        let (p, f) = h.into_parts();
        assert_eq!(p.status, Some(StatusCode::OK));
        assert_eq!(f.len(), 1);
        assert_eq!(f["a"], "b");
    }

    /// Random blocks (names, values, sensitivity, repeats, big fields) with
    /// random table and frame sizes acknowledged between them: h2's decoder
    /// must read back every field of every block. A drift between this
    /// encoder's table and the decoder's would show as a wrong field (or a
    /// failed decode) here.
    #[tokio::test]
    async fn random_blocks_and_sizes_read_back_exactly() {
        let mut r = crate::test_rng::Rng(0x9e37_79b9_7f4a_7c15);
        let mut rand = move |n: u64| r.next() % n;
        let names = [
            "x-a",
            "x-b",
            "grpc-timeout",
            "user-agent",
            "content-type",
            "x-c",
        ];
        // Values made once and cloned into many blocks share their bytes,
        // as fields the relay's decoder read indexed do: the encoder finds
        // those by address (`Entry::held`), the rest by comparing bytes.
        let pool: Vec<HeaderValue> = (0..12)
            .map(|_| {
                let fill = (b'a' + rand(4) as u8) as char;
                HeaderValue::from_str(&fill.to_string().repeat(rand(40) as usize)).unwrap()
            })
            .collect();
        let mut w = Writer::new();
        let mut all = Vec::new();
        let mut sent = Vec::new();
        for i in 0..2_000u32 {
            if rand(20) == 0 {
                let ack = Ack {
                    header_table_size: Some(rand(5_000) as u32),
                    max_frame_size: Some((16 << 10) + rand(16 << 10) as u32),
                };
                w.frame(Out::SettingsAck(ack));
            }
            let mut fields = HeaderMap::new();
            for _ in 0..rand(8) {
                let name = names[rand(names.len() as u64) as usize];
                // Few distinct values, so entries repeat and get evicted.
                let len = if rand(50) == 0 {
                    3_000
                } else {
                    rand(40) as usize
                };
                let fill = (b'a' + rand(4) as u8) as char;
                let mut v = if rand(2) == 0 {
                    pool[rand(pool.len() as u64) as usize].clone()
                } else {
                    HeaderValue::from_str(&fill.to_string().repeat(len)).unwrap()
                };
                v.set_sensitive(rand(10) == 0);
                fields.append(http::HeaderName::from_static(name), v);
            }
            let h = Headers::new(
                StreamId::from(2 * i + 1),
                Pseudo::response(StatusCode::from_u16(200 + rand(3) as u16).unwrap()),
                fields.clone(),
            );
            sent.push(fields);
            w.frame(Out::head(h));
            all.extend_from_slice(&wire(&mut w));
        }
        let got: Vec<HeaderMap> = read(&all)
            .await
            .into_iter()
            .filter_map(|f| match f {
                Frame::Headers(h) => Some(h.into_parts().1),
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), sent.len());
        for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(g, s, "block {i}");
        }
    }

    #[test]
    fn an_empty_block_is_one_empty_headers_frame() {
        let mut out = Vec::new();
        header_frames(&mut out, &[], 3, true, DEFAULT_MAX_FRAME);
        assert_eq!(out, head_bytes(0, HEADERS, END_STREAM | END_HEADERS, 3));
    }

    fn every_kind() -> Vec<Out> {
        let mut s = Settings::default();
        s.set_initial_window_size(Some(1 << 20));
        s.set_max_concurrent_streams(Some(100));
        s.set_max_header_list_size(Some(16 << 10));
        s.set_enable_push(false);
        s.set_max_frame_size(Some(32 << 10));
        s.set_header_table_size(Some(0));
        let mut end = Data::new(StreamId::from(3), Bytes::from(vec![9u8; 300]));
        end.set_end_stream(true);
        vec![
            Out::Settings(Box::new(s)),
            Out::SettingsAck(Ack::default()),
            Out::WindowUpdate(WindowUpdate::new(StreamId::zero(), 1 << 20)),
            Out::Data(Data::new(StreamId::from(1), Bytes::from_static(b"tiny"))),
            Out::Data(Data::new(
                StreamId::from(1),
                Bytes::from(vec![7u8; 16 << 10]),
            )),
            Out::Data(end),
            Out::Reset(Reset::new(StreamId::from(7), Reason::CANCEL)),
            Out::Ping(Ping::new(*b"12345678")),
            Out::Ping(Ping::pong(*b"abcdefgh")),
            Out::WindowUpdate(WindowUpdate::new(StreamId::from(3), 77)),
            Out::GoAway(GoAway::with_debug_data(
                StreamId::from(9),
                Reason::ENHANCE_YOUR_CALM,
                Bytes::from_static(b"too many resets"),
            )),
        ]
    }

    #[tokio::test]
    async fn every_frame_kind_reads_back_as_written() {
        let mut w = Writer::new();
        for f in every_kind() {
            w.frame(f);
        }
        let got = read(&wire(&mut w)).await;
        let want = format!(
            "{:?}",
            every_kind()
                .into_iter()
                .map(|f| match f {
                    Out::Data(f) => Frame::from(f),
                    Out::Headers(f) => f.into_h2().into(),
                    Out::Reset(f) => f.into(),
                    Out::WindowUpdate(f) => f.into(),
                    Out::Ping(f) => f.into(),
                    Out::GoAway(f) => f.into(),
                    Out::Settings(f) => (*f).into(),
                    Out::SettingsAck(_) => Settings::ack().into(),
                    Out::Request(_) => unreachable!("not in every_kind"),
                })
                .collect::<Vec<Frame>>()
        );
        assert_eq!(format!("{got:?}"), want);
        // (Data's Debug leaves out the payload.)
        let payloads: Vec<&[u8]> = got
            .iter()
            .filter_map(|f| match f {
                Frame::Data(d) => Some(&d.payload()[..]),
                _ => None,
            })
            .collect();
        assert_eq!(payloads, [&b"tiny"[..], &[7u8; 16 << 10], &[9u8; 300]]);
    }

    /// Takes at most `max` bytes per write (across slices when `vectored`,
    /// else of the first one), and every other write is not ready.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
        vectored: bool,
        ready: bool,
    }

    impl Trickle {
        fn new(max: usize, vectored: bool) -> Trickle {
            Trickle {
                out: Vec::new(),
                max,
                vectored,
                ready: false,
            }
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let bufs = if self.vectored { bufs } else { &bufs[..1] };
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(self.max - n);
                self.out.extend_from_slice(&b[..k]);
                n += k;
                if n == self.max {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Enough chained payloads, each behind buffered bytes, to fill a
    /// vectored write's slices (`n` = 32 fills them exactly), and bytes after.
    fn many_payloads(n: u8) -> Vec<Out> {
        let mut v = Vec::new();
        for i in 0..n {
            v.push(Out::WindowUpdate(WindowUpdate::new(StreamId::from(1), 1)));
            v.push(Out::Data(Data::new(
                StreamId::from(1),
                Bytes::from(vec![i; 256 + usize::from(i)]),
            )));
        }
        v.push(Out::Ping(Ping::new(*b"trailing")));
        v
    }

    #[tokio::test]
    async fn payloads_past_one_writes_slices_go_in_the_next_write() {
        for n in [31, 32, 33, 40] {
            let mut w = Writer::new();
            for f in many_payloads(n) {
                w.frame(f);
            }
            let got = read(&wire(&mut w)).await;
            assert_eq!(got.len(), 2 * usize::from(n) + 1, "{n} payloads");
            for (i, f) in got.iter().skip(1).step_by(2).enumerate() {
                let Frame::Data(d) = f else { panic!("DATA") };
                assert_eq!(d.payload()[..], vec![i as u8; 256 + i][..]);
            }
            assert!(matches!(got.last(), Some(Frame::Ping(_))));
        }
    }

    #[test]
    fn partial_and_pending_writes_keep_every_byte_in_order() {
        let frames = || {
            let mut v = every_kind();
            v.extend(many_payloads(40));
            v.into_iter()
        };
        let mut whole = Writer::new();
        for f in frames() {
            whole.frame(f);
        }
        let want = wire(&mut whole);
        for vectored in [false, true] {
            for max in [1, 7, 300, 5000] {
                let mut w = Writer::new();
                let mut io = Trickle::new(max, vectored);
                let waker = futures_util::task::noop_waker();
                let mut cx = Context::from_waker(&waker);
                let mut kinds = frames();
                // Frames keep coming while earlier ones are half written.
                loop {
                    if let Some(f) = kinds.next() {
                        w.frame(f);
                    }
                    match w.poll_write(&mut io, &mut cx) {
                        Poll::Ready(Ok(())) if kinds.len() == 0 => break,
                        Poll::Ready(Err(e)) => panic!("{e}"),
                        _ => {}
                    }
                }
                assert!(w.is_empty() && w.buf.is_empty());
                assert_eq!(
                    io.out, want,
                    "at most {max} bytes a write, vectored {vectored}"
                );
            }
        }
    }

    /// As `Side::drain` does against a peer taking 100 bytes every other
    /// write: frames while there is room, then a write. Returns the bytes
    /// sent, the peak of buffered plus chained bytes, the peak of the buffer
    /// alone, and the peak count of chained payloads.
    fn drain_slowly(payload: usize) -> (usize, usize, usize, usize) {
        let mut w = Writer::new();
        let mut io = Trickle::new(100, true);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (mut sent, mut peak, mut peak_buf, mut peak_chained) = (0usize, 0, 0, 0);
        for _ in 0..40_000 {
            while w.has_room() {
                w.frame(Out::WindowUpdate(WindowUpdate::new(StreamId::from(1), 1)));
                w.frame(Out::Data(Data::new(
                    StreamId::from(1),
                    Bytes::from(vec![1; payload]),
                )));
                sent += 2 * HEAD + 4 + payload;
            }
            peak = peak.max(w.buf.len() + w.chained_len);
            peak_buf = peak_buf.max(w.buf.len());
            peak_chained = peak_chained.max(w.chained.len());
            let _ = w.poll_write(&mut io, &mut cx);
        }
        assert!(w.buf.capacity() <= 2 * ROOM, "{}", w.buf.capacity());
        (sent, peak, peak_buf, peak_chained)
    }

    #[test]
    fn a_peer_that_reads_slowly_cannot_make_the_buffer_grow() {
        let frame = |payload: usize| 2 * HEAD + 4 + payload;
        // Copied payloads: the buffer's own bound.
        let (sent, peak, _, _) = drain_slowly(CHAIN - 1);
        assert!(sent > 1 << 20, "{sent}");
        assert!(peak < ROOM + frame(CHAIN), "peak {peak}");
        // Small chained payloads: as many as fit in ROOM (each may hold a
        // read buffer, as before the chained allowance), and past it no more
        // than CHAINED_MAX.
        let (sent, peak, peak_buf, _) = drain_slowly(300);
        assert!(sent > 1 << 20, "{sent}");
        assert!(peak < ROOM + CHAINED_MAX * frame(300), "peak {peak}");
        assert!(peak_buf < ROOM + frame(0), "buffer peak {peak_buf}");
        // Larger ones: past ROOM, at most CHAINED_MAX of them.
        let (sent, peak, _, chained) = drain_slowly(4 << 10);
        assert!(sent > 1 << 20, "{sent}");
        assert!(peak > ROOM && peak < CHAINED_ROOM, "peak {peak}");
        assert!(chained <= CHAINED_MAX, "{chained} chained");
    }

    #[test]
    fn full_data_frames_are_written_several_at_a_time() {
        // A frame of 16 KiB is 9 bytes more than a TLS record holds: written
        // alone it makes a second, 9-byte record. Several in one write fill
        // the records they span.
        let mut w = Writer::new();
        let mut taken = 0;
        while w.has_room() {
            w.frame(Out::Data(Data::new(
                StreamId::from(1),
                Bytes::from(vec![taken as u8; DEFAULT_MAX_FRAME]),
            )));
            taken += 1;
        }
        assert_eq!(taken, CHAINED_ROOM / DEFAULT_MAX_FRAME);
        let mut io = Trickle::new(usize::MAX, true);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // One vectored write takes all of it (the Trickle alternates
        // readiness, so a second write would have returned Pending).
        assert!(w.poll_write(&mut io, &mut cx).is_ready());
        assert_eq!(io.out.len(), taken * (HEAD + DEFAULT_MAX_FRAME));
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn data_larger_than_the_peers_frame_size_is_split() {
        // A backend may send frames up to BACKEND_MAX_FRAME; the client gets
        // them in frames of its own size, END_STREAM on the last only.
        // (a remainder under CHAIN is copied, not chained).
        for (len, max, sizes) in [
            (BACKEND_MAX_FRAME, None, vec![16 << 10; 8]),
            (
                BACKEND_MAX_FRAME,
                Some(48 << 10),
                vec![48 << 10, 48 << 10, 32 << 10],
            ),
            (
                BACKEND_MAX_FRAME,
                Some(BACKEND_MAX_FRAME as u32),
                vec![BACKEND_MAX_FRAME],
            ),
            ((32 << 10) + 100, None, vec![16 << 10, 16 << 10, 100]),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut w = Writer::new();
            w.frame(Out::SettingsAck(Ack {
                max_frame_size: max,
                ..Ack::default()
            }));
            let mut d = Data::new(StreamId::from(3), Bytes::from(payload.clone()));
            d.set_end_stream(true);
            w.frame(Out::Data(d));
            let bytes = wire(&mut w);
            let mut at = 0;
            let (mut got, mut lens, mut ends) = (Vec::new(), Vec::new(), Vec::new());
            while at < bytes.len() {
                let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]);
                let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
                let body = &bytes[at + HEAD..at + HEAD + len as usize];
                at += HEAD + len as usize;
                if kind == SETTINGS {
                    continue;
                }
                assert_eq!(kind, DATA, "max {max:?}");
                let id = &bytes[at - len as usize - 4..at - len as usize];
                assert_eq!(id, 3u32.to_be_bytes(), "stream id");
                got.extend_from_slice(body);
                lens.push(len as usize);
                ends.push(flags & END_STREAM != 0);
            }
            assert_eq!(lens, sizes, "max {max:?}");
            assert_eq!(got, payload, "max {max:?}");
            let last = ends.len() - 1;
            assert!(ends.iter().enumerate().all(|(i, &e)| e == (i == last)));
        }
    }

    /// A socket counting the writes made on it, each taken whole (an
    /// in-memory pipe: a real socket's send buffer would vary by platform).
    struct Counted {
        io: tokio::io::DuplexStream,
        writes: usize,
    }

    impl tokio::io::AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let whole: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &whole))?;
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_full_writer_goes_through_tls_in_one_write() {
        use crate::ca::{Ca, KeyType, LeafSpec};
        use rustls::pki_types::{pem::PemObject as _, PrivateKeyDer, ServerName};
        use tokio::io::AsyncReadExt as _;

        let ca = Ca::generate(
            "t",
            std::time::Duration::from_secs(3600),
            KeyType::EcdsaP256,
        )
        .unwrap();
        let leaf = ca
            .issue(&LeafSpec {
                dns: vec!["localhost".into()],
                server: true,
                ..Default::default()
            })
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert_der], key)
            .unwrap();
        // No tickets: nothing of the handshake's is left to go out with the frames.
        server.send_tls13_tickets = 0;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let (a, b) = tokio::io::duplex(1 << 20);
        let reader = tokio::spawn(async move {
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
                .connect(name, b)
                .await
                .unwrap();
            let mut got = Vec::new();
            tls.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut tls = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server))
            .accept(Counted { io: a, writes: 0 })
            .await
            .unwrap();
        crate::tls::limit_send(tls.get_mut().1);

        // As a server stream leaves it: the writer full of 16 KiB frames.
        let mut w = Writer::new();
        let mut want = Vec::new();
        for i in 0u8.. {
            if !w.has_room() {
                break;
            }
            let payload = vec![i; DEFAULT_MAX_FRAME];
            head(&mut want, payload.len(), DATA, 0, 1);
            want.extend_from_slice(&payload);
            w.frame(Out::Data(Data::new(
                StreamId::from(1),
                Bytes::from(payload),
            )));
        }
        let before = tls.get_ref().0.writes;
        std::future::poll_fn(|cx| w.poll_write(&mut tls, cx))
            .await
            .unwrap();
        // One `writev` of its records; with rustls' default limit, two.
        assert_eq!(tls.get_ref().0.writes - before, 1);
        tls.shutdown().await.unwrap();
        drop(tls);
        assert!(
            reader.await.unwrap() == want,
            "the frames read back as written"
        );
    }

    #[test]
    fn the_peers_sizes_apply_from_the_acknowledgement_on() {
        let mut w = Writer::new();
        let f = [("x-k", "v")];
        // A block queued before the acknowledgement indexes (table 4096)...
        w.frame(Out::head(request(1, "/s.S/M", &f)));
        w.frame(table_size(0));
        w.frame(Out::head(request(3, "/s.S/M", &f)));
        w.frame(table_size(4096));
        w.frame(Out::head(request(5, "/s.S/M", &f)));
        let bytes = wire(&mut w);
        let mut frames = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
            frames.push((bytes[at + 3], &bytes[at + HEAD..at + HEAD + len]));
            at += HEAD + len;
        }
        let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(kinds, [HEADERS, SETTINGS, HEADERS, SETTINGS, HEADERS]);
        // ...with literals with incremental indexing (0x40) and no update.
        assert_eq!(frames[0].1[0], 0x83);
        assert!(frames[0].1.contains(&0x40));
        // After the first acknowledgement: the update to 0, then literals
        // only; after the second: the update back to 4096 (0x3f 0xe1 0x1f).
        assert_eq!(frames[2].1[..2], [0x20, 0x83]);
        assert!(!frames[2].1.contains(&0x40));
        assert_eq!(frames[4].1[..4], [0x3f, 0xe1, 0x1f, 0x83]);
        // The frame size, too: a 20 KB block is one frame only after a larger
        // size is acknowledged.
        let big = "v".repeat(20_000);
        for (max, frames) in [(None, 2), (Some(32 << 10), 1)] {
            let mut w = Writer::new();
            w.frame(Out::SettingsAck(Ack {
                max_frame_size: max,
                ..Ack::default()
            }));
            w.frame(Out::head(request(1, "/b.B/M", &[("x-big", &big)])));
            let bytes = wire(&mut w);
            let mut at = HEAD;
            let mut n = 0;
            while at < bytes.len() {
                let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
                at += HEAD + len;
                n += 1;
            }
            assert_eq!(n, frames, "max frame {max:?}");
        }
    }
}
