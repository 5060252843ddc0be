//! Repairing `:authority` before the HTTP/2 library sees it.
//!
//! gRPC C-core (Python, Ruby, PHP, C++) and grpc-java's Netty transport send the
//! Unix socket path as `:authority` by default (`/run/app.sock`, or
//! `%2Frun%2Fapp.sock`). That is not a valid authority, and the h2 crate resets
//! such a stream with PROTOCOL_ERROR before any application code runs, so these
//! clients fail against every hyper/tonic server on a Unix socket.
//!
//! The gateway's relay repairs `:authority` itself, after its codec has decoded
//! the block (`relay::request_head`). The client sidecar serves with h2's own
//! server, so there this filter sits between the socket and h2. It passes every
//! frame through untouched except header blocks: HEADERS (+ CONTINUATION) are
//! decoded with the client's HPACK state, an unparseable `:authority` is
//! replaced by `localhost`, and the block is re-encoded with literals only
//! (never indexed), so the server's HPACK table is never touched and stays in
//! step. Padding and priority fields are dropped (both optional).
//!
//! The decision is made once per connection, on its first header block: the
//! clients concerned send the same socket-path authority on every request. A
//! connection whose first block needs no repair is passed through untouched
//! from then on (h2 sees the client's own bytes, so its HPACK state is the
//! client's), which costs well-behaved clients nothing after one decode; a
//! later bad authority on such a connection meets h2's usual refusal.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::relay::frame::{CONTINUATION, END_HEADERS, END_STREAM, HEADERS};
use crate::relay::hpack;
use crate::relay::write::header_frames;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame we buffer (the server advertises 16 KiB; anything far larger is
/// an error h2 will report, so it is passed through unparsed).
const MAX_FRAME: usize = 1 << 20;
/// Largest header block we reassemble from CONTINUATION frames.
const MAX_BLOCK: usize = 256 << 10;
/// Frame payload size we emit (the HTTP/2 default maximum).
const OUT_FRAME: usize = 16_384;
/// The most a header block may decode to here (the sidecar refuses far less:
/// `limits.max_header_list_size`, 16 KiB by default).
const MAX_DECODED: usize = 256 << 10;
/// What replaces an invalid `:authority`.
const REPLACEMENT: &[u8] = b"localhost";

struct Pending {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
    /// The frames as received, kept while the first block is being judged.
    frames: Vec<Bytes>,
}

/// The filter. Reads are rewritten, writes pass straight through.
pub struct NormalizeAuthority<T> {
    inner: T,
    raw: BytesMut,
    /// Frames ready for the server, as zero-copy slices of what was read.
    out: std::collections::VecDeque<Bytes>,
    preface_seen: bool,
    /// Something we cannot follow (not HTTP/2, oversized frame): pass the rest
    /// through unchanged and let h2 judge it.
    passthrough: bool,
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<Pending>,
    /// The first header block has been judged: rewrite every block from here on.
    rewriting: bool,
    eof: bool,
}

impl<T> NormalizeAuthority<T> {
    pub fn new(inner: T) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        // The client's encoder may not exceed what the server advertised; the
        // sidecar (h2) keeps HPACK's default of 4096.
        decoder.set_max_allowed_table_size(4096);
        NormalizeAuthority {
            inner,
            raw: BytesMut::with_capacity(16 * 1024),
            out: std::collections::VecDeque::new(),
            preface_seen: false,
            passthrough: false,
            decoder,
            pending: None,
            rewriting: false,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Moves complete frames from `raw` to `out`, rewriting header blocks.
    fn process(&mut self) -> io::Result<()> {
        if self.passthrough {
            self.out.push_back(self.raw.split().freeze());
            return Ok(());
        }
        if !self.preface_seen {
            let n = self.raw.len().min(PREFACE.len());
            if self.raw[..n] != PREFACE[..n] {
                self.passthrough = true;
                return self.process();
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.out
                .push_back(self.raw.split_to(PREFACE.len()).freeze());
            self.preface_seen = true;
        }
        while self.raw.len() >= 9 {
            if self.passthrough {
                return self.process();
            }
            let len = (usize::from(self.raw[0]) << 16)
                | (usize::from(self.raw[1]) << 8)
                | usize::from(self.raw[2]);
            if len > MAX_FRAME {
                self.passthrough = true;
                return self.process();
            }
            if self.raw.len() < 9 + len {
                return Ok(());
            }
            let kind = self.raw[3];
            let flags = self.raw[4];
            let stream = u32::from_be_bytes([self.raw[5], self.raw[6], self.raw[7], self.raw[8]])
                & 0x7fff_ffff;
            let frame = self.raw.split_to(9 + len).freeze();
            let keep = |f: &Bytes| {
                if self.rewriting {
                    Vec::new()
                } else {
                    vec![f.clone()]
                }
            };
            match (kind, &mut self.pending) {
                (HEADERS, None) => {
                    let frames = keep(&frame);
                    let mut payload = &frame[9..];
                    let end_stream = flags & END_STREAM != 0;
                    if flags & PADDED != 0 {
                        let pad = usize::from(*payload.first().ok_or_else(bad)?);
                        payload = payload
                            .get(1..payload.len().checked_sub(pad).ok_or_else(bad)?)
                            .ok_or_else(bad)?;
                    }
                    if flags & PRIORITY != 0 {
                        payload = payload.get(5..).ok_or_else(bad)?;
                    }
                    let p = Pending {
                        stream,
                        end_stream,
                        block: payload.to_vec(),
                        frames,
                    };
                    if flags & END_HEADERS != 0 {
                        self.emit(p)?;
                    } else {
                        self.pending = Some(p);
                    }
                }
                (CONTINUATION, Some(p)) if p.stream == stream => {
                    p.block.extend_from_slice(&frame[9..]);
                    if !p.frames.is_empty() {
                        p.frames.push(frame.clone());
                    }
                    if p.block.len() > MAX_BLOCK {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "header block too large",
                        ));
                    }
                    if flags & END_HEADERS != 0 {
                        let p = self.pending.take().ok_or_else(bad)?;
                        self.emit(p)?;
                    }
                }
                // RFC 9113 §6.10: nothing may interleave with a header block.
                (_, Some(_)) => return Err(bad()),
                _ => self.out.push_back(frame),
            }
        }
        Ok(())
    }

    /// Decodes a complete header block, repairs `:authority`, re-encodes it.
    fn emit(&mut self, p: Pending) -> io::Result<()> {
        // Decoded straight into the new block: no per-header allocation.
        let mut block = Vec::with_capacity(p.block.len() * 2 + 16);
        let mut repaired = false;
        // HPACK lets one byte stand for a whole table entry: what a block
        // decodes to is bounded here, not by its size on the wire.
        let mut too_big = false;
        self.decoder
            .decode_with_cb(&p.block, |name, value| {
                if too_big || block.len() + name.len() + value.len() > MAX_DECODED {
                    too_big = true;
                    return;
                }
                let value: &[u8] = if &*name == b":authority" && !valid_authority(&value) {
                    tracing::debug!(authority = %String::from_utf8_lossy(&value), "replacing an invalid :authority");
                    repaired = true;
                    REPLACEMENT
                } else {
                    &value
                };
                literal(&mut block, &name, value);
            })
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("HPACK: {e:?}")))?;
        if too_big {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "header block decodes to more than 256 KiB",
            ));
        }
        if !self.rewriting {
            if !repaired {
                // The first block is fine as sent: so is this connection.
                self.out.extend(p.frames);
                self.passthrough = true;
                // Its table is never consulted again.
                self.decoder = loona_hpack::Decoder::new();
                return Ok(());
            }
            self.rewriting = true;
        }
        let mut out = Vec::with_capacity(block.len() + 9);
        header_frames(&mut out, &block, p.stream, p.end_stream, OUT_FRAME);
        self.out.push_back(Bytes::from(out));
        Ok(())
    }
}

/// What h2 accepts: a parseable URI authority (host, optional port).
fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP/2 header frame")
}

/// HPACK "literal header field without indexing — new name" (RFC 7541 §6.2.2),
/// no Huffman: the server's dynamic table is never used.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack::string(out, name);
    hpack::string(out, value);
}

impl<T: AsyncRead + Unpin> AsyncRead for NormalizeAuthority<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            // Nothing of ours left to hand over: read straight into the caller's
            // buffer, no copy.
            if this.passthrough && this.out.is_empty() && this.raw.is_empty() {
                if this.raw.capacity() > 0 {
                    // An idle connection should not keep a 16 KiB buffer it
                    // will never use again.
                    this.raw = BytesMut::new();
                }
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if let Some(front) = this.out.front_mut() {
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front.split_to(n));
                if front.is_empty() {
                    this.out.pop_front();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever incomplete frame is left goes through as is.
                if !this.raw.is_empty() {
                    this.out.push_back(this.raw.split().freeze());
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            this.raw.reserve(16 * 1024);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.raw
            ))?;
            if n == 0 {
                this.eof = true;
                continue;
            }
            this.process()?;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NormalizeAuthority<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
