//! The relay's reading half: HTTP/2 frames (RFC 9113 §4, §6) off one peer's
//! connection, header blocks decoded by [`decode`](super::decode).
//!
//! It replaces h2's `Codec` for reading, whose length-delimited framing,
//! frame structs and HPACK decoder were a third of the gateway's
//! instructions per call. Frames are parsed in place in the read buffer;
//! only a DATA payload is split off it (as `Bytes`; one smaller than the
//! writer's `CHAIN` is copied, which frees the buffer for the next read), and
//! only a header block spread over CONTINUATION frames is copied, to join it.
//!
//! Error codes follow RFC 9113 where h2 used PROTOCOL_ERROR for most
//! (FRAME_SIZE_ERROR for a frame of the wrong length, COMPRESSION_ERROR for
//! HPACK), and a malformed field fails its stream, not the connection.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::frame::{
    GoAway, Head as FrameHead, Kind, Ping, Pseudo, Reason, Reset, Settings, StreamId, WindowUpdate,
};
use tokio::io::AsyncRead;

use super::frame::{
    ACK, BACKEND_MAX_FRAME, CONTINUATION, DATA, DEFAULT_MAX_FRAME, END_HEADERS, END_STREAM, GOAWAY,
    HEAD, HEADERS, PADDED, PING, PRIORITY, PRIORITY_FLAG, PUSH_PROMISE, RST_STREAM, SETTINGS,
    WINDOW_UPDATE,
};
use super::{decode, Head};

/// A read asks for at least this much room (h2's read size): a client
/// connection may sit idle holding its buffer, ten thousand of them.
const READ: usize = 8 << 10;
/// A backend's new buffer has this much room while its reads come back
/// full: a server stream's 16 KiB frames then come several per read instead
/// of one, which more than pays for copying the partial frame a read ends
/// in. Only while they do: every client connection has backend connections
/// of its own, and a unary call's reply fits in `READ`.
const BACKEND_READ: usize = 64 << 10;
/// Short reads in a row (less than `READ`) after which a backend's new
/// buffers are `READ` again. A stream has a short read now and then (2-3% of
/// them, strace): shrinking on the first cost 14-16% CPU per GiB.
const SHRINK_AFTER: u8 = 8;
/// An encoded header block larger than this many times the header list
/// limit fails the connection (ENHANCE_YOUR_CALM, as h2): up to it, a block
/// over the limit is decoded and answered with 431 / a reset.
const BLOCK_FACTOR: usize = 4;

/// A frame read.
#[derive(Debug)]
pub(crate) enum Frame {
    /// DATA, padding removed; `len` is the flow-controlled length (padding
    /// included).
    Data {
        id: u32,
        end_stream: bool,
        payload: Bytes,
        len: u32,
    },
    /// A whole header block.
    Headers(Box<Head>),
    Priority,
    Reset(Reset),
    Settings(Settings),
    Ping(Ping),
    GoAway(GoAway),
    WindowUpdate(WindowUpdate),
    PushPromise,
}

#[derive(Debug)]
pub(crate) enum Error {
    /// A connection error.
    GoAway(Reason),
    /// A stream error; `opens` if it came with the stream's first header
    /// block (the stream is then no longer idle).
    Reset {
        id: u32,
        reason: Reason,
        opens: bool,
    },
    Io(io::Error),
}

/// A header block awaiting its CONTINUATION frames.
struct Open {
    id: u32,
    end_stream: bool,
    self_dependent: bool,
    fragment: Vec<u8>,
    continuations: usize,
}

pub(crate) struct Reader {
    buf: BytesMut,
    /// What the frame at the head of `buf` needs in all.
    want: usize,
    /// The room a new buffer is made with: `READ`, or for a backend whose
    /// reads come back full, `BACKEND_READ`.
    size: usize,
    /// Capacity of `buf`'s allocation when it was made.
    made: usize,
    /// Short reads in a row, towards `size` going back to `READ`.
    short: u8,
    /// A backend's reader: `size` follows the reads.
    adapt: bool,
    /// The largest frame taken.
    max_frame: usize,
    max_list: usize,
    hpack: decode::Decoder,
    open: Option<Open>,
}

impl Reader {
    /// A reader of a client (`strict`: see [`decode::Decoder`]) or a backend.
    pub(crate) fn new(max_header_list_size: usize, strict: bool) -> Reader {
        Reader {
            buf: BytesMut::new(),
            want: 0,
            size: READ,
            made: 0,
            short: 0,
            adapt: !strict,
            max_frame: if strict {
                DEFAULT_MAX_FRAME
            } else {
                BACKEND_MAX_FRAME
            },
            max_list: max_header_list_size,
            hpack: decode::Decoder::new(strict),
            open: None,
        }
    }

    /// The next frame; `None` at the end of the stream between frames.
    pub(crate) fn poll_next<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame, Error>>> {
        loop {
            match self.parse() {
                Ok(Some(f)) => return Poll::Ready(Some(Ok(f))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            // Room for the rest of a frame whose head is known, and for the
            // next frame's head: a client's stream of large DATA frames is
            // then read a frame per read, each ending where the next begins,
            // so a new buffer starts with only that head to copy. A new
            // buffer has `size` of room at least.
            let ahead = if self.want > HEAD { HEAD } else { 0 };
            let room = (self.want.saturating_sub(self.buf.len()) + ahead).max(READ);
            if self.adapt && self.buf.is_empty() && self.made > 2 * self.size {
                // A backend's stream is over: its large buffer goes (once
                // the payloads read into it have been sent).
                (self.buf, self.made) = (BytesMut::new(), 0);
            }
            if (self.buf.capacity() - self.buf.len() < room && !self.buf.try_reclaim(room))
                || self.made < self.size
            {
                // Not `reserve`: grown in place it copies the frames already
                // read too (and doubles), which for 16 KiB frames read 8 KiB
                // at a time was half of every streamed byte copied once more.
                let mut fresh = BytesMut::with_capacity(self.buf.len() + room.max(self.size));
                fresh.extend_from_slice(&self.buf);
                self.buf = fresh;
                self.made = self.buf.capacity();
            }
            let offered = self.buf.capacity() - self.buf.len();
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(io),
                cx,
                &mut self.buf
            )) {
                Ok(0) if self.buf.is_empty() && self.open.is_none() => return Poll::Ready(None),
                Ok(0) => {
                    return Poll::Ready(Some(Err(Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed within a frame",
                    )))))
                }
                // Filled, there is likely more waiting (hyper's adaptive
                // reads grow the same way); short reads are replies coming
                // one at a time.
                Ok(n) if self.adapt && n == offered => (self.size, self.short) = (BACKEND_READ, 0),
                Ok(n) if self.adapt && n < READ => {
                    self.short = self.short.saturating_add(1);
                    if self.short >= SHRINK_AFTER {
                        self.size = READ;
                    }
                }
                Ok(_) => self.short = 0,
                Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
            }
        }
    }

    /// The next whole frame in the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Frame>, Error> {
        loop {
            let Some(h) = self.buf.get(..9) else {
                self.want = 9;
                return Ok(None);
            };
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let (kind, flags) = (h[3], h[4]);
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if len > self.max_frame {
                return Err(Error::GoAway(Reason::FRAME_SIZE_ERROR));
            }
            if self.buf.len() < 9 + len {
                self.want = 9 + len;
                return Ok(None);
            }
            if self.open.is_some() && kind != CONTINUATION {
                // A header block is interrupted (RFC 9113 §6.10).
                return Err(Error::GoAway(Reason::PROTOCOL_ERROR));
            }
            if kind == DATA {
                return self.data(len, flags, id).map(Some);
            }
            let payload = &self.buf[9..9 + len];
            let result = match frame(&mut self.open, self.max_list, kind, flags, id, payload) {
                Ok(Parsed::Frame(f)) => Ok(Some(f)),
                Ok(Parsed::Skip) => {
                    self.buf.advance(9 + len);
                    continue;
                }
                Ok(Parsed::Block(here)) => match self.open.take() {
                    Some(o) => {
                        // A block all in this frame is decoded where it lies.
                        let src = here.map_or(&o.fragment[..], |r| &payload[r]);
                        block(&mut self.hpack, &o, src, self.max_list).map(Some)
                    }
                    None => Err(Error::GoAway(Reason::PROTOCOL_ERROR)),
                },
                Err(e) => Err(e),
            };
            self.buf.advance(9 + len);
            return result;
        }
    }

    fn data(&mut self, len: usize, flags: u8, id: u32) -> Result<Frame, Error> {
        if id == 0 {
            return Err(Error::GoAway(Reason::PROTOCOL_ERROR));
        }
        let body = &self.buf[9..9 + len];
        let (from, to) = if flags & PADDED != 0 {
            // The pad length, and at most the rest of the frame in padding.
            match body.first() {
                Some(&p) if usize::from(p) < len => (1, len - usize::from(p)),
                _ => return Err(Error::GoAway(Reason::PROTOCOL_ERROR)),
            }
        } else {
            (0, len)
        };
        let payload = if to - from < super::write::CHAIN {
            // Copied out, as the writer would copy it anyway: split off, it
            // would hold the whole read buffer until written, and the next
            // read (in the same round, before any write) would need a new
            // one — an 8 KiB block from the system allocator and back, per
            // message of a ping-pong or a small call.
            let p = Bytes::copy_from_slice(&body[from..to]);
            self.buf.advance(9 + len);
            p
        } else {
            let mut p = self.buf.split_to(9 + len);
            p.advance(9 + from);
            p.truncate(to - from);
            p.freeze()
        };
        Ok(Frame::Data {
            id,
            end_stream: flags & END_STREAM != 0,
            payload,
            len: len as u32,
        })
    }
}

/// Parses a frame other than DATA from its payload `p`; `open` is the header
/// block awaiting CONTINUATION, if any.
fn frame(
    open: &mut Option<Open>,
    max_list: usize,
    kind: u8,
    flags: u8,
    id: u32,
    p: &[u8],
) -> Result<Parsed, Error> {
    let conn = |r| Err(Error::GoAway(r));
    Ok(Parsed::Frame(match kind {
        HEADERS => {
            if id == 0 {
                return conn(Reason::PROTOCOL_ERROR);
            }
            let whole = p;
            let mut p = p;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let Some((&n, rest)) = p.split_first() else {
                    return conn(Reason::PROTOCOL_ERROR);
                };
                pad = usize::from(n);
                p = rest;
            }
            let mut self_dependent = false;
            if flags & PRIORITY_FLAG != 0 {
                let Some((dep, rest)) = p.split_first_chunk::<5>() else {
                    return conn(Reason::PROTOCOL_ERROR);
                };
                let dep = u32::from_be_bytes([dep[0], dep[1], dep[2], dep[3]]) & 0x7fff_ffff;
                self_dependent = dep == id;
                p = rest;
            }
            if pad > p.len() {
                return conn(Reason::PROTOCOL_ERROR);
            }
            *open = Some(Open {
                id,
                end_stream: flags & END_STREAM != 0,
                self_dependent,
                fragment: Vec::new(),
                continuations: 0,
            });
            let start = p.as_ptr() as usize - whole.as_ptr() as usize;
            return fragment(
                open,
                max_list,
                start..start + p.len() - pad,
                whole,
                flags,
                true,
            );
        }
        CONTINUATION => match open {
            Some(o) if o.id == id => return fragment(open, max_list, 0..p.len(), p, flags, false),
            _ => return conn(Reason::PROTOCOL_ERROR),
        },
        PRIORITY => {
            if id == 0 {
                return conn(Reason::PROTOCOL_ERROR);
            }
            let reason = if p.len() != 5 {
                Reason::FRAME_SIZE_ERROR
            } else if u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff == id {
                Reason::PROTOCOL_ERROR
            } else {
                return Ok(Parsed::Frame(Frame::Priority));
            };
            return Err(Error::Reset {
                id,
                reason,
                opens: false,
            });
        }
        RST_STREAM => {
            let Ok(code) = <[u8; 4]>::try_from(p) else {
                return conn(Reason::FRAME_SIZE_ERROR);
            };
            Frame::Reset(Reset::new(
                StreamId::from(id),
                Reason::from(u32::from_be_bytes(code)),
            ))
        }
        SETTINGS => {
            if id != 0 {
                return conn(Reason::PROTOCOL_ERROR);
            }
            if (flags & ACK != 0 && !p.is_empty()) || !p.len().is_multiple_of(6) {
                return conn(Reason::FRAME_SIZE_ERROR);
            }
            match Settings::load(FrameHead::new(Kind::Settings, flags, StreamId::zero()), p) {
                Ok(s) => Frame::Settings(s),
                // An initial window past 2^31-1 is a flow-control
                // error (RFC 9113 §6.5.2); other bad values are not.
                Err(_) if window_too_large(p) => return conn(Reason::FLOW_CONTROL_ERROR),
                Err(_) => return conn(Reason::PROTOCOL_ERROR),
            }
        }
        PING => {
            if id != 0 {
                return conn(Reason::PROTOCOL_ERROR);
            }
            let Ok(payload) = <[u8; 8]>::try_from(p) else {
                return conn(Reason::FRAME_SIZE_ERROR);
            };
            Frame::Ping(if flags & ACK != 0 {
                Ping::pong(payload)
            } else {
                Ping::new(payload)
            })
        }
        GOAWAY => {
            if id != 0 {
                return conn(Reason::PROTOCOL_ERROR);
            }
            let Some((head, _debug)) = p.split_first_chunk::<8>() else {
                return conn(Reason::FRAME_SIZE_ERROR);
            };
            let last = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            Frame::GoAway(GoAway::new(StreamId::from(last), Reason::from(code)))
        }
        WINDOW_UPDATE => {
            let Ok(inc) = <[u8; 4]>::try_from(p) else {
                return conn(Reason::FRAME_SIZE_ERROR);
            };
            // A zero increment is the relay's to judge: a stream error
            // on a stream, a connection error on the connection.
            let inc = u32::from_be_bytes(inc) & 0x7fff_ffff;
            Frame::WindowUpdate(WindowUpdate::new(StreamId::from(id), inc))
        }
        PUSH_PROMISE => Frame::PushPromise,
        // Unknown frame types are ignored (RFC 9113 §5.5).
        _ => return Ok(Parsed::Skip),
    }))
}

/// Adds the fragment at `range` of payload `p` (the HEADERS frame's if
/// `first`) to the open block: `Block` once it is whole.
fn fragment(
    open: &mut Option<Open>,
    max_list: usize,
    range: std::ops::Range<usize>,
    p: &[u8],
    flags: u8,
    first: bool,
) -> Result<Parsed, Error> {
    let limit = max_list.saturating_mul(BLOCK_FACTOR);
    let Some(o) = open else {
        return Err(Error::GoAway(Reason::PROTOCOL_ERROR));
    };
    if o.fragment.len() + range.len() > limit {
        // Also a block whole in one frame: a backend's may be 128 KiB, and
        // a client's 16 KiB frame is over a small list limit's.
        return Err(Error::GoAway(Reason::ENHANCE_YOUR_CALM));
    }
    if flags & END_HEADERS != 0 && o.fragment.is_empty() {
        return Ok(Parsed::Block(Some(range)));
    }
    let p = &p[range];
    o.fragment.extend_from_slice(p);
    if flags & END_HEADERS != 0 {
        return Ok(Parsed::Block(None));
    }
    // Empty or tiny CONTINUATION frames cost no memory but a pass each:
    // bounded as h2 bounds them (a fifth more than a full block needs in
    // frames of the smallest size, at least 5).
    if first {
        return Ok(Parsed::Skip);
    }
    o.continuations += 1;
    let frames = (limit / DEFAULT_MAX_FRAME).max(1);
    if o.continuations > (frames + frames / 4).max(5) {
        return Err(Error::GoAway(Reason::ENHANCE_YOUR_CALM));
    }
    Ok(Parsed::Skip)
}

/// Decodes a whole header block `src` for the block `o` began.
fn block(
    hpack: &mut decode::Decoder,
    o: &Open,
    src: &[u8],
    max_list: usize,
) -> Result<Frame, Error> {
    let mut head = Box::new(Head {
        id: o.id,
        end_stream: o.end_stream,
        pseudo: Pseudo::default(),
        fields: Vec::new(),
        over_size: false,
    });
    let decoded = hpack.block_into(src, max_list, &mut head.pseudo, &mut head.fields);
    let reset = |reason| Error::Reset {
        id: o.id,
        reason,
        opens: true,
    };
    head.over_size = match decoded {
        Ok(over) => over,
        Err(decode::Error::Compression) => return Err(Error::GoAway(Reason::COMPRESSION_ERROR)),
        Err(decode::Error::TooLarge) => return Err(Error::GoAway(Reason::ENHANCE_YOUR_CALM)),
        Err(decode::Error::Malformed) => return Err(reset(Reason::PROTOCOL_ERROR)),
    };
    if o.self_dependent {
        // Decoded all the same: the table must follow the peer's.
        return Err(reset(Reason::PROTOCOL_ERROR));
    }
    Ok(Frame::Headers(head))
}

enum Parsed {
    Frame(Frame),
    /// The open header block is whole: in this payload's range if it is all
    /// in this frame, else in its fragment.
    Block(Option<std::ops::Range<usize>>),
    /// Nothing to hand on (an unknown frame, a CONTINUATION not the last).
    Skip,
}

/// Whether a SETTINGS payload sets SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1.
fn window_too_large(p: &[u8]) -> bool {
    p.chunks_exact(6).any(|s| {
        u16::from_be_bytes([s[0], s[1]]) == 4
            && u32::from_be_bytes([s[2], s[3], s[4], s[5]]) > 0x7fff_ffff
    })
}

#[cfg(test)]
mod tests;
