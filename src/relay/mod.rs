//! One client connection's HTTP/2, relayed frame by frame to backend connections
//! of its own.
//!
//! `read` reads both sides (framing, CONTINUATION and its limits,
//! HPACK decoding with RFC 9113's field rules in `decode`); `write`
//! writes them, with an HPACK encoder of its own (`hpack`). h2's codec did
//! both, and its HPACK coding was over a third of the gateway's instructions
//! per call. The connection layer is here, because h2's — a stream store behind a mutex, a
//! waker, send queue and flow-control account per stream handle — was most of
//! the gateway's cost per call (docs/PERFORMANCE.md). A call is a table entry:
//! its request head is decided by the host (policy, route), its frames move
//! as they are, DATA as `Bytes` within the receiver's windows, and the sender
//! gets its credit back once the receiver has taken the data, so nothing here
//! buffers more than the windows it advertised.
//!
//! The client is held to the protocol (RFC 9113) as h2's server held it:
//! stream ids, stream states, receive windows, WINDOW_UPDATE and SETTINGS
//! values, the concurrent-stream limit, pseudo-headers, content-length.
//! Backends are trusted to speak HTTP/2 but still held to the windows the
//! relay advertised them, so a faulty one cannot make it buffer without bound.

mod decode;
pub(crate) mod frame;
pub(crate) mod hpack;
mod huffman;
mod read;
pub(crate) mod write;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::frame::{Data, GoAway, Ping, Pseudo, Reason, Reset, Settings, StreamId, WindowUpdate};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::grpc;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The stream window offered to clients: what one call may have queued here
/// on its way up (hyper's and the h2 data path's default).
pub const STREAM_WINDOW: u32 = 1 << 20;
/// The connection window offered to both sides: what one client connection
/// may have queued here in each direction, whatever its number of calls (the
/// h2 path offered its clients 1 MiB). A call whose receiver stops reading
/// can hold it up for the connection's other calls — all the same client's,
/// since every client connection has backend connections of its own.
const CONN_WINDOW: i64 = 2 * STREAM_WINDOW as i64;
/// The stream window offered to backends: the connection's whole window, so
/// a lone server stream has 2 MiB in flight (as hyper's client offers a
/// backend behind an L4 tunnel) while a client connection can still have no
/// more than `CONN_WINDOW` queued here per backend connection. Server
/// streaming against a 1 MiB stream window: 387 vs 371, 468 vs 464 and 494
/// vs 445 MiB/s (`scripts/ab`, 8 runs a side, both orders); doubling the
/// connection window as well gained nothing more (438 vs 449).
const BACKEND_STREAM_WINDOW: u32 = CONN_WINDOW as u32;
/// HTTP/2's largest window.
const MAX_WINDOW: i64 = (1 << 31) - 1;
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_STREAM_ID: u32 = (1 << 31) - 1;
/// Streams reset for the client's own errors before its connection goes (h2's
/// server default, kept from the h2 data path).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// A backend connection without calls for this long is closed. Each client
/// connection has its own, so an idle client must not hold one (and the
/// backend's memory for it); a client calling again pays a local connect.
const BACKEND_IDLE: Duration = Duration::from_millis(250);
/// A reset this soon after the call began, before any response data, is
/// premature (the rapid-reset rule).
const PREMATURE: Duration = Duration::from_secs(1);
/// Frames waiting for one side's codec before the relay stops reading.
const QUEUE: usize = 256;
/// Response DATA bytes waiting for the client's codec before the relay stops
/// reading its backends. The windows would let a stream queue a MiB here;
/// read that far ahead, a streamed message's buffers are cold again by the
/// time TLS copies them out. Four TLS records' worth keeps each buffer in
/// cache from the read to the write (and the allocator can hand it back for
/// the next read): streaming CPU per GiB 2.02 → 1.81 s, scripts/ab, 8
/// alternating runs. Requests have no such bound: reading the client stops
/// for all its calls at once, so one upload to a slow backend would stall the
/// connection's calls to the others.
const QUEUE_BYTES: usize = 64 << 10;
/// Backend connections one client connection keeps to one backend. Past a
/// backend's own stream limit calls go to another connection; at this many
/// they queue instead.
const MAX_BACKEND_CONNS: usize = 8;
/// Queued DATA frames are merged up to this (the smallest frame size a peer
/// may allow).
const MERGE_LIMIT: usize = 16 << 10;
/// Empty per-call queues kept for the next calls, and the most frames one
/// kept may hold. Each call has two; making them anew cost two allocations
/// and two grows, ~480 instructions a call. A unary call's hold 4 frames (192
/// bytes): an idle connection keeps 2 of those, at most 8 of 384 bytes.
const SPARE_QUEUES: usize = 8;
const SPARE_QUEUE_MAX: usize = 8;

/// Limits the relay holds its client to, and how it treats its backends.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    /// Calls one backend connection takes before another is opened.
    pub backend_streams_per_connection: usize,
    /// A ping this often; a client that has not answered the previous one by
    /// then is gone (it vanished without a FIN).
    pub keep_alive: Duration,
    /// How long calls in flight may run on once the connection was told to go
    /// away for a reset flood.
    pub drain: Duration,
    /// An unparseable `:authority` becomes `localhost` instead of failing the
    /// stream (see `request_head`).
    pub repair_authority: bool,
}

impl Options {
    /// The limits; `repair_authority` is off here and set per listener by
    /// its owner (the config's default is on).
    pub fn new(limits: &crate::config::Limits) -> Options {
        Options {
            max_concurrent_streams: limits.max_concurrent_streams,
            max_header_list_size: limits.max_header_list_size,
            backend_streams_per_connection: limits.backend_streams_per_connection,
            keep_alive: KEEP_ALIVE,
            drain: limits.drain_timeout,
            repair_authority: false,
        }
    }
}

const KEEP_ALIVE: Duration = Duration::from_secs(30);
const KEEP_ALIVE_PING: [u8; 8] = *b"ipcg-ka\0";
const SHUTDOWN_PING: [u8; 8] = *b"ipcg-go\0";

/// What becomes of a new call.
pub enum Decision<X> {
    /// Forwarded to backend `backend` (the host's index) with this head;
    /// `call` is the host's record of it, dropped when the call ends.
    Forward {
        backend: usize,
        head: http::request::Parts,
        /// Fields the host adds, written after the head's own (the gateway:
        /// the caller's identity, the same on every call of a connection, so
        /// shared rather than inserted into each head's map). The host makes
        /// sure the head holds none of these names.
        added: Added,
        call: X,
    },
    /// Answered here: a response without body (a trailers-only gRPC status).
    Answer(http::response::Parts),
}

/// Header fields a host adds to every request it forwards.
pub type Added = std::sync::Arc<[(HeaderName, HeaderValue)]>;

/// A dialed backend connection.
pub type Dial<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

/// What the relay asks of the gateway.
pub trait Host {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The host's record of a forwarded call.
    type Call: Unpin;
    /// Decides a new call from its request head.
    fn decide(&mut self, head: http::request::Parts) -> Decision<Self::Call>;
    /// Opens a connection to a backend.
    fn dial(&mut self, backend: usize) -> Dial<Self::Io>;
    /// The backend's name, for messages.
    fn backend_name(&self, backend: usize) -> String;
    /// The call's HEADERS went to its backend.
    fn opened(&mut self, _call: &mut Self::Call) {}
    /// The backend's response headers for `call` arrived.
    fn answered(&mut self, _call: &mut Self::Call) {}
    /// Whether this client flooded recently: it gets the strict budget of
    /// the rapid-reset rule (see `http2::FloodGuard`).
    fn strict(&self) -> bool {
        false
    }
    /// The connection is told to go away for a reset flood.
    fn flooded(&mut self, calls: u64, cancelled: u64) {
        tracing::warn!(
            calls,
            cancelled,
            "client cancels most calls as they start (rapid reset): closing the connection"
        );
    }
}

/// One peer: its connection, reader and writer, the frames cleared to go to
/// it, its windows.
struct Side<T> {
    io: T,
    read: read::Reader,
    write: write::Writer,
    out: VecDeque<Out>,
    /// DATA bytes in `out`.
    out_data: usize,
    /// What may still be sent to this peer on the connection.
    send_window: i64,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE: each new stream's send window.
    peer_init: i64,
    /// What this peer may still send on the connection.
    recv_window: i64,
    /// Connection credit owed to this peer for data passed on.
    credit: i64,
    /// Its last read in this poll found nothing. Reading again before the
    /// task is polled anew would find nothing either (only the I/O driver
    /// re-arms readiness, and it wakes the task when it does): a wasted
    /// pass through the codec, TLS and tokio's readiness check per round.
    read_dry: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Side<T> {
    /// `client`: the reader holds it to RFC 9113's rules for field values in
    /// full (see `decode::Decoder`).
    fn new(io: T, recv_window: i64, max_header_list_size: u32, client: bool) -> Side<T> {
        Side {
            io,
            read: read::Reader::new(max_header_list_size as usize, client),
            write: write::Writer::new(),
            out: VecDeque::new(),
            out_data: 0,
            send_window: DEFAULT_WINDOW,
            peer_init: DEFAULT_WINDOW,
            recv_window,
            credit: 0,
            read_dry: false,
        }
    }

    /// Moves cleared frames into the writer while it has room, writing what
    /// it holds when it has none.
    fn drain(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut any = false;
        while !self.out.is_empty() {
            if !self.write.has_room() {
                if let Poll::Ready(Err(e)) = self.write.poll_write(&mut self.io, cx) {
                    return Err(e);
                }
                if !self.write.has_room() {
                    break;
                }
            }
            let Some(f) = self.out.pop_front() else { break };
            if let Out::Data(d) = &f {
                self.out_data -= d.payload().len();
            }
            self.write.frame(f);
            any = true;
        }
        debug_assert_eq!(self.out_data as i64, queued_data(&self.out));
        Ok(any)
    }

    /// Writes out what the writer holds and flushes the connection.
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.write.poll_write(&mut self.io, cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// For the client's side: whether the relay stops reading the backends.
    fn full(&self) -> bool {
        self.out.len() >= QUEUE || self.out_data >= QUEUE_BYTES
    }

    /// Applies the peer's SETTINGS to what is sent to it and acknowledges them.
    /// `Err` when a stream's window would overflow (FLOW_CONTROL_ERROR).
    fn settings<'a>(
        &mut self,
        s: &Settings,
        windows: impl Iterator<Item = &'a mut i64>,
    ) -> Result<(), Reason> {
        if s.is_ack() {
            return Ok(());
        }
        if let Some(n) = s.initial_window_size() {
            let delta = i64::from(n) - self.peer_init;
            self.peer_init = i64::from(n);
            for w in windows {
                *w += delta;
                if *w > MAX_WINDOW {
                    return Err(Reason::FLOW_CONTROL_ERROR);
                }
            }
        }
        // The frame size and table size apply from the acknowledgement on
        // (the writer takes them as it writes it): the peer's decoder allows
        // a larger table only once it knows its SETTINGS arrived.
        self.out.push_back(Out::SettingsAck(write::Ack {
            max_frame_size: s.max_frame_size(),
            header_table_size: s.header_table_size(),
        }));
        Ok(())
    }
}

/// A header block as the relay reads and writes it: the fields in a list,
/// in order (a request's become a `HeaderMap` for the host to decide on).
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) id: u32,
    pub(crate) end_stream: bool,
    pub(crate) pseudo: Pseudo,
    pub(crate) fields: Vec<(HeaderName, HeaderValue)>,
    /// As read: the fields went past the header list limit, and those past
    /// it were dropped.
    pub(crate) over_size: bool,
}

impl Head {
    /// A complete response of the relay's own (an answer, an error).
    fn answer(id: u32, status: StatusCode, headers: HeaderMap) -> Head {
        Head {
            id,
            end_stream: true,
            pseudo: Pseudo::response(status),
            fields: list(headers),
            over_size: false,
        }
    }
}

#[cfg(test)]
impl Head {
    /// h2's frame as a head (tests compare with h2's reader).
    pub(crate) fn from_h2(h: h2::frame::Headers) -> Head {
        let id = u32::from(h.stream_id());
        let end_stream = h.is_end_stream();
        let (pseudo, fields) = h.into_parts();
        Head {
            id,
            end_stream,
            pseudo,
            fields: list(fields),
            over_size: false,
        }
    }

    pub(crate) fn into_h2(self) -> h2::frame::Headers {
        let mut map = HeaderMap::new();
        for (n, v) in self.fields {
            map.append(n, v);
        }
        let mut h = h2::frame::Headers::new(StreamId::from(self.id), self.pseudo, map);
        if self.end_stream {
            h.set_end_stream();
        }
        h
    }
}

#[cfg(test)]
impl Out {
    pub(crate) fn head(h: h2::frame::Headers) -> Out {
        Out::Headers(Box::new(Head::from_h2(h)))
    }
}

/// A `HeaderMap`'s fields as a list, in its order.
fn list(headers: HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(headers.len());
    let mut name = None;
    for (n, v) in headers {
        if let Some(n) = n {
            name = Some(n);
        }
        if let Some(n) = &name {
            out.push((n.clone(), v));
        }
    }
    out
}

/// A frame waiting in a queue. h2's `Frame` is 296 bytes (HEADERS inline)
/// and a frame is moved several times on its way through the relay; with
/// HEADERS boxed, the rest move at 48 (memcpy was 13% of the gateway's
/// instructions per call).
enum Out {
    Data(Data<Bytes>),
    Headers(Box<Head>),
    Reset(Reset),
    WindowUpdate(WindowUpdate),
    Ping(Ping),
    GoAway(GoAway),
    Settings(Box<Settings>),
    /// The acknowledgement of the peer's SETTINGS, with what the writer
    /// applies from then on.
    SettingsAck(write::Ack),
    /// A request head for a backend.
    Request(Box<write::Request>),
}

const _: () = assert!(std::mem::size_of::<Out>() <= 48);

/// `From` for each frame kind a queue holds, so `.into()` queues any of them.
macro_rules! out_from {
    ($($kind:ident($ty:ty) => $wrap:expr),* $(,)?) => {$(
        impl From<$ty> for Out {
            fn from(f: $ty) -> Out {
                Out::$kind($wrap(f))
            }
        }
    )*};
}

out_from! {
    Data(Data<Bytes>) => std::convert::identity,
    Reset(Reset) => std::convert::identity,
    WindowUpdate(WindowUpdate) => std::convert::identity,
    Ping(Ping) => std::convert::identity,
    GoAway(GoAway) => std::convert::identity,
    Settings(Settings) => Box::new,
}

/// One direction of a call.
struct Dir {
    /// What may still be sent to the receiver on this stream.
    send_window: i64,
    /// What the sender may still send on this stream.
    recv_window: i64,
    /// Frames waiting for the receiver's window (or, upwards, for the stream
    /// to open on the backend).
    queue: VecDeque<Out>,
    /// Stream credit owed to the sender.
    credit: i64,
    /// The sender ended its side.
    ended: bool,
}

impl Dir {
    /// `recv_window`: the stream window offered to the sender.
    fn new(send_window: i64, recv_window: u32, queue: VecDeque<Out>) -> Dir {
        debug_assert!(queue.is_empty());
        Dir {
            send_window,
            recv_window: i64::from(recv_window),
            queue,
            credit: 0,
            ended: false,
        }
    }
}

struct Call<X> {
    /// The host's record.
    host: X,
    started: tokio::time::Instant,
    /// Response data came from the backend (a reset after it is not premature).
    down_data: bool,
    /// Index of its backend connection in `Relay::conns`.
    conn: usize,
    /// Client to backend.
    up: Dir,
    /// Backend to client.
    down: Dir,
    /// Its HEADERS went to the backend (it counts against the backend's limit).
    opened: bool,
    /// Response headers went to the client.
    answered: bool,
    /// The request's content-length, and the DATA received against it.
    content_length: Option<u64>,
    received: u64,
    /// The response was complete before the request (the backend answered
    /// and reset, or closed): what the client still sends until it sees the
    /// reset that follows the response is dropped, its window given back,
    /// not an error that would discard the response (RFC 9113 §8.1).
    cut: bool,
}

enum ConnState<T> {
    Dialing(Dial<T>),
    Up(Box<Side<T>>),
    /// Failed or closed; its calls were answered.
    Gone,
}

/// A backend connection of this client connection.
struct BackendConn<T> {
    backend: usize,
    state: ConnState<T>,
    /// No new calls: the backend sent GOAWAY.
    draining: bool,
    /// The backend's first SETTINGS arrived: until then its stream limit is
    /// unknown, and a call opened past it would be refused.
    settled: bool,
    /// Calls opened on it, and its limit (SETTINGS_MAX_CONCURRENT_STREAMS).
    open: usize,
    max_open: usize,
    /// Calls waiting to open, in stream-id order.
    waiting: VecDeque<u32>,
    /// Calls on it, for failing them together.
    calls: usize,
    /// Since when it has had no call.
    idle_since: Option<tokio::time::Instant>,
}

/// The relay of one client connection; a future that ends with the connection.
pub struct Relay<C, H: Host> {
    host: H,
    opts: Options,
    c: Side<C>,
    conns: Vec<BackendConn<H::Io>>,
    /// Keyed by stream id, looked up several times per frame: foldhash
    /// (seeded per process) instead of SipHash, which cost 4% of the
    /// instructions per call.
    calls: HashMap<u32, Call<H::Call>, foldhash::fast::RandomState>,
    /// Highest stream id the client opened.
    last_id: u32,
    /// No new calls (the client said GOAWAY, or the relay's final GOAWAY went).
    refusing: bool,
    /// A GOAWAY for a graceful close went; new calls are refused once this
    /// passes (or the client answers the GOAWAY's PING).
    refuse_at: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A connection error was sent: write what is queued, then end.
    closing: bool,
    keep_alive: tokio::time::Interval,
    awaiting_pong: bool,
    /// Streams reset for the client's errors (see `client_reset`).
    local_error_resets: usize,
    resets: crate::http2::ResetCount,
    /// Set when the connection was told to go away for a reset flood: it ends
    /// then, whatever is still in flight.
    flood_drain: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Closes backend connections idle for `BACKEND_IDLE`; armed only while
    /// one is idle, so an idle client connection is never woken for it.
    sweep: Pin<Box<tokio::time::Sleep>>,
    sweep_armed: bool,
    /// A timer was armed or reset since the timers were last polled: it
    /// must be polled (registered) before this poll of the relay ends.
    timers_dirty: bool,
    /// The timers above are polled behind it: only once one fired or was
    /// armed. Polling the keep-alive `Interval` alone cost ~140 instructions
    /// per wake of the task, twice per bidi message.
    timer_gate: crate::gate::Gate,
    /// Reading was held back (an out queue full) since the last keep-alive
    /// tick: an unread PING answer is then no sign of a dead client.
    read_held: bool,
    /// Call ids, reused between frames that visit many calls.
    scratch: Vec<u32>,
    /// A poll did work since `take_moved` last looked (busy polling's cue).
    moved: bool,
    last_uri: Option<LastUri>,
    /// Emptied queues of ended calls, for the next ones (`SPARE_QUEUES`).
    spare: Vec<VecDeque<Out>>,
}

/// Reads the client's preface (24 bytes) from an established TLS stream.
///
/// # Errors
/// The stream ended or did not start with the HTTP/2 preface.
pub async fn read_preface<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut p = [0u8; 24];
    io.read_exact(&mut p).await?;
    if &p == PREFACE {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP/2 preface",
        ))
    }
}

impl<C, H> Relay<C, H>
where
    C: AsyncRead + AsyncWrite + Unpin,
    H: Host,
{
    /// A relay for a client whose preface was read (see [`read_preface`]).
    pub fn new(client: C, host: H, opts: Options) -> Relay<C, H> {
        let mut c = Side::new(client, CONN_WINDOW, opts.max_header_list_size, true);
        let mut ours = Settings::default();
        ours.set_initial_window_size(Some(STREAM_WINDOW));
        ours.set_max_concurrent_streams(Some(opts.max_concurrent_streams));
        ours.set_max_header_list_size(Some(opts.max_header_list_size));
        c.out.push_back(ours.into());
        push_window_update(&mut c.out, 0, CONN_WINDOW - DEFAULT_WINDOW);
        let mut keep_alive = tokio::time::interval_at(
            tokio::time::Instant::now() + opts.keep_alive,
            opts.keep_alive,
        );
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Relay {
            host,
            opts,
            c,
            conns: Vec::new(),
            calls: HashMap::default(),
            last_id: 0,
            refusing: false,
            refuse_at: None,
            closing: false,
            keep_alive,
            awaiting_pong: false,
            local_error_resets: 0,
            resets: crate::http2::ResetCount::default(),
            flood_drain: None,
            sweep: Box::pin(tokio::time::sleep(BACKEND_IDLE)),
            sweep_armed: false,
            timers_dirty: false,
            timer_gate: crate::gate::Gate::default(),
            read_held: false,
            scratch: Vec::new(),
            moved: false,
            last_uri: None,
            spare: Vec::new(),
        }
    }

    /// Calls in flight.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// Whether the connection was told to go away for cancelling most of its
    /// calls.
    pub fn reset_flood(&self) -> bool {
        self.flood_drain.is_some()
    }

    /// GOAWAY: no new calls; those in flight finish, then the connection ends.
    ///
    /// With a `grace`, the first GOAWAY names the highest stream id (RFC 9113
    /// §6.8) and carries a PING: calls that crossed it in flight are still
    /// taken until the client answers the PING or `grace` passes, then the
    /// final GOAWAY names the last call taken and later ones are refused with
    /// REFUSED_STREAM (never processed: safe to retry elsewhere). Without one
    /// (revoked, expired, flooding) the final GOAWAY goes at once.
    pub fn graceful_shutdown(&mut self, grace: Duration) {
        if self.refusing || self.closing {
            // A final GOAWAY went already (an error's, perhaps): a later one
            // may not raise its last stream id or hide its code.
            return;
        }
        if grace.is_zero() {
            self.refuse();
            return;
        }
        let at = tokio::time::Instant::now() + grace;
        match &mut self.refuse_at {
            Some(t) => {
                if at < t.deadline() {
                    t.as_mut().reset(at);
                    // Polled again: a timer that keeps its waker across a
                    // reset is tokio's default, not a promise.
                    self.timers_dirty = true;
                }
            }
            None => {
                self.c
                    .out
                    .push_back(GoAway::new(StreamId::from(MAX_STREAM_ID), Reason::NO_ERROR).into());
                self.c.out.push_back(Ping::new(SHUTDOWN_PING).into());
                self.refuse_at = Some(Box::pin(tokio::time::sleep_until(at)));
                self.timers_dirty = true;
            }
        }
    }

    /// The final GOAWAY: calls above the last one taken are refused.
    fn refuse(&mut self) {
        if self.refusing {
            return;
        }
        self.refusing = true;
        self.refuse_at = None;
        self.c
            .out
            .push_back(GoAway::new(StreamId::from(self.last_id), Reason::NO_ERROR).into());
    }

    /// Timers: the end of a graceful close's grace, the keep-alive, the
    /// drain bound of a flooding client. `Ready` ends the connection.
    /// A backend connection went idle at `now`: the sweep closes it after
    /// `BACKEND_IDLE`, unless the sweep is already due sooner.
    fn arm_sweep(&mut self, now: tokio::time::Instant) {
        if !self.sweep_armed {
            self.sweep_armed = true;
            self.timers_dirty = true;
            self.sweep.as_mut().reset(now + BACKEND_IDLE);
        }
    }

    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.sweep_armed && self.sweep.as_mut().poll(cx).is_ready() {
            let now = tokio::time::Instant::now();
            let mut next = None;
            for b in &mut self.conns {
                let Some(since) = b.idle_since else { continue };
                if !matches!(b.state, ConnState::Up(_)) {
                    continue;
                }
                if now >= since + BACKEND_IDLE {
                    // Dropped: the backend sees the connection end.
                    b.state = ConnState::Gone;
                    b.idle_since = None;
                } else {
                    let at = since + BACKEND_IDLE;
                    next = Some(next.map_or(at, |n: tokio::time::Instant| n.min(at)));
                }
            }
            match next {
                Some(at) => self.sweep.as_mut().reset(at),
                None => self.sweep_armed = false,
            }
        }
        if let Some(t) = self.refuse_at.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                self.refuse();
            }
        }
        if let Some(d) = self.flood_drain.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                tracing::warn!(
                    "calls still in flight after the drain bound: closing the connection"
                );
                return Poll::Ready(());
            }
        }
        while self.keep_alive.poll_tick(cx).is_ready() {
            if std::mem::take(&mut self.read_held) {
                // The answer may be sitting unread: this tick proves nothing.
                continue;
            }
            if self.awaiting_pong {
                tracing::debug!("no answer to the keep-alive ping: closing the connection");
                return Poll::Ready(());
            }
            self.c.out.push_back(Ping::new(KEEP_ALIVE_PING).into());
            self.awaiting_pong = true;
        }
        Poll::Pending
    }

    /// A forwarded call is over: the rapid-reset rule's count (Envoy's
    /// premature-reset rule; see `http2::RESET_FLOOD_CALLS`).
    fn call_ended(&mut self, premature: bool) {
        if self.reset_flood() {
            return;
        }
        let strict = premature && self.host.strict();
        if let Some((calls, cancelled)) = self.resets.ended(premature, strict) {
            self.host.flooded(calls, cancelled);
            self.flood_drain = Some(Box::pin(tokio::time::sleep(self.opts.drain)));
            self.timers_dirty = true;
            // Graceful: calls in flight may finish; a client whose short
            // deadlines all expired in a backend stall loses no healthy call.
            self.graceful_shutdown(Duration::ZERO);
        }
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.c.read_dry = false;
        for b in &mut self.conns {
            if let ConnState::Up(side) = &mut b.state {
                side.read_dry = false;
            }
        }
        loop {
            // When one fired, and in any round after one that armed a timer
            // (a backend going idle, a flood found), so every timer is
            // registered before this poll ends.
            if std::mem::take(&mut self.timers_dirty) {
                self.timer_gate.open();
            }
            if let Some(waker) = self.timer_gate.enter(cx) {
                if self
                    .poll_timers(&mut Context::from_waker(&waker))
                    .is_ready()
                {
                    let _ = self.c.drain(cx);
                    let _ = self.c.flush(cx);
                    return Poll::Ready(Ok(()));
                }
            }
            let mut progress = self.poll_dials(cx);
            progress |= self.c.drain(cx)?;
            progress |= self.drain_backends(cx);
            if self.closing {
                if self.c.out.is_empty() {
                    return self.finish(cx);
                }
                if !progress && !self.timers_dirty {
                    break;
                }
                continue;
            }
            // Backends first: a connection that closed meanwhile must not
            // be given the client's next call.
            if !self.closing {
                progress |= self.poll_backends(cx);
            }
            // The client, while both directions have room.
            if self.backends_full() {
                // Held back for a backend, not by the client: its PING answer
                // may be unread. (A client that does not read is not helped:
                // it would not see the PING either.)
                self.read_held = true;
            }
            while !self.c.read_dry && self.c.out.len() < QUEUE && !self.backends_full() {
                match self.c.read.poll_next(&mut self.c.io, cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        progress = true;
                        if let Err(reason) = self.client_frame(f) {
                            self.go_away(reason);
                        }
                        if self.closing {
                            // A connection error (here, or too many stream
                            // errors): nothing more is read.
                            break;
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // The reader's verdict: a connection error, or a
                        // stream it could not parse.
                        match e {
                            read::Error::Reset { id, reason, opens } => {
                                progress = true;
                                if opens && id.is_multiple_of(2) {
                                    // A client opens odd streams only,
                                    // whatever its head.
                                    self.go_away(Reason::PROTOCOL_ERROR);
                                    break;
                                }
                                if !opens && !self.calls.contains_key(&id) {
                                    // A bad PRIORITY frame for a stream not
                                    // open: there is none to reset (RST_STREAM
                                    // on an idle stream is an error itself).
                                    continue;
                                }
                                if opens && id > self.last_id {
                                    // A new stream, refused at its first frame.
                                    self.last_id = id;
                                }
                                self.client_reset(id, reason);
                                if self.closing {
                                    break;
                                }
                            }
                            read::Error::GoAway(reason) => {
                                self.go_away(reason);
                                break;
                            }
                            read::Error::Io(e) => return Poll::Ready(Err(e)),
                        }
                    }
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => {
                        self.c.read_dry = true;
                        break;
                    }
                }
            }
            self.credit();
            progress |= self.c.drain(cx)?;
            progress |= self.drain_backends(cx);
            if self.refusing && self.calls.is_empty() && self.c.out.is_empty() {
                // Closed gracefully: every call is over.
                self.closing = true;
                return self.finish(cx);
            }
            if !progress && !self.timers_dirty {
                break;
            }
            self.moved = true;
        }
        if let Poll::Ready(Err(e)) = self.c.flush(cx) {
            return Poll::Ready(Err(e));
        }
        for i in 0..self.conns.len() {
            if let ConnState::Up(side) = &mut self.conns[i].state {
                if let Poll::Ready(Err(e)) = side.flush(cx) {
                    self.conn_failed(i, &format!("write failed: {e}"));
                }
            }
        }
        Poll::Pending
    }

    /// Whether a poll did work (read, wrote or dialled) since the last call:
    /// the cue for [`crate::busy_poll`].
    pub fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// The end: what is queued for the client written out, then the TLS
    /// close. A client that stops reading cannot hold this open for long: the
    /// keep-alive ping goes unanswered (and the owner's drain bound applies).
    fn finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.c.flush(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        Pin::new(&mut self.c.io)
            .poll_shutdown(cx)
            .map(|r| r.or(Ok(())))
    }

    fn backends_full(&self) -> bool {
        self.conns.iter().any(|b| match &b.state {
            ConnState::Up(s) => s.out.len() >= QUEUE,
            _ => false,
        })
    }

    /// A connection error: GOAWAY with the reason, then the connection ends.
    fn go_away(&mut self, reason: Reason) {
        self.c
            .out
            .push_back(GoAway::new(StreamId::from(self.last_id), reason).into());
        self.closing = true;
    }

    /// Sends `reason` to the client for stream `id` and forgets the call; a
    /// call the backend has is cancelled there.
    fn reset_call(&mut self, id: u32, reason: Reason) {
        self.c
            .out
            .push_back(Reset::new(StreamId::from(id), reason).into());
        self.forget(id, Some(Reason::CANCEL));
    }

    /// A stream error the client caused: reset, and counted. Resets cost a
    /// frame each and the client nothing, so past `MAX_LOCAL_ERROR_RESETS` the
    /// connection goes (h2's guard against making a server reset floods).
    fn client_reset(&mut self, id: u32, reason: Reason) {
        // A forwarded call ended this way cost the backend as much as one the
        // client cancelled: it counts for the rapid-reset rule the same.
        let premature = self
            .calls
            .get(&id)
            .map(|c| !c.down_data && c.started.elapsed() < PREMATURE);
        self.reset_call(id, reason);
        if let Some(p) = premature {
            self.call_ended(p);
        }
        self.local_error();
    }

    /// Counts a stream the client's own error ended.
    fn local_error(&mut self) {
        self.local_error_resets += 1;
        if self.local_error_resets > MAX_LOCAL_ERROR_RESETS {
            tracing::debug!("client keeps causing stream errors: closing the connection");
            self.go_away(Reason::ENHANCE_YOUR_CALM);
        }
    }

    /// Removes a call; `cancel` resets it on the backend if it was opened there.
    fn forget(&mut self, id: u32, cancel: Option<Reason>) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        // Data it still held counts for its connections: given back.
        self.c.credit += queued_data(&call.up.queue);
        let b = &mut self.conns[call.conn];
        if let ConnState::Up(side) = &mut b.state {
            side.credit += queued_data(&call.down.queue);
        }
        b.calls -= 1;
        let idle = (b.calls == 0).then(tokio::time::Instant::now);
        if idle.is_some() {
            b.idle_since = idle;
        }
        if call.opened {
            b.open -= 1;
            if let (Some(reason), ConnState::Up(side)) = (cancel, &mut b.state) {
                side.out
                    .push_back(Reset::new(StreamId::from(id), reason).into());
            }
        } else {
            b.waiting.retain(|w| *w != id);
        }
        if b.draining && b.calls == 0 {
            // Its backend said GOAWAY and its last call is over.
            b.state = ConnState::Gone;
        }
        if let Some(now) = idle {
            self.arm_sweep(now);
        }
        self.open_waiting(call.conn);
        for mut q in [call.up.queue, call.down.queue] {
            if self.spare.len() < SPARE_QUEUES && (1..=SPARE_QUEUE_MAX).contains(&q.capacity()) {
                q.clear();
                self.spare.push(q);
            }
        }
    }

    /// Ends calls that are over in both directions.
    fn settle(&mut self, id: u32) {
        let done = self.calls.get(&id).is_some_and(|c| {
            c.up.ended && c.down.ended && c.up.queue.is_empty() && c.down.queue.is_empty()
        });
        if done {
            self.forget(id, None);
            self.call_ended(false);
        }
    }

    /// Releases the response data of every call that has some waiting (the
    /// client's connection window or initial window grew). Only calls with
    /// queued frames are visited; the id list is reused, not reallocated.
    fn release_all_down(&mut self) {
        let mut ids = std::mem::take(&mut self.scratch);
        ids.clear();
        ids.extend(
            self.calls
                .iter()
                .filter(|(_, c)| !c.down.queue.is_empty())
                .map(|(id, _)| *id),
        );
        for &id in &ids {
            self.release_down(id);
        }
        self.scratch = ids;
    }

    /// The same towards backend connection `i` (its windows grew).
    fn release_all_up(&mut self, i: usize) {
        let mut ids = std::mem::take(&mut self.scratch);
        ids.clear();
        ids.extend(
            self.calls
                .iter()
                .filter(|(_, c)| c.conn == i && !c.up.queue.is_empty())
                .map(|(id, _)| *id),
        );
        for &id in &ids {
            self.release_up(id);
            self.settle(id);
        }
        self.scratch = ids;
    }

    fn client_frame(&mut self, f: read::Frame) -> Result<(), Reason> {
        use read::Frame;
        match f {
            Frame::Settings(s) => {
                let windows = self.calls.values_mut().map(|c| &mut c.down.send_window);
                self.c.settings(&s, windows)?;
                if s.initial_window_size().is_some() {
                    self.release_all_down();
                }
            }
            Frame::Ping(p) => {
                if !p.is_ack() {
                    self.c.out.push_back(Ping::pong(p.into_payload()).into());
                } else if *p.payload() == KEEP_ALIVE_PING {
                    self.awaiting_pong = false;
                } else if *p.payload() == SHUTDOWN_PING {
                    // Everything the client sent before the GOAWAY is in.
                    self.refuse();
                }
            }
            Frame::WindowUpdate(w) => {
                let inc = i64::from(w.size_increment());
                let id = u32::from(w.stream_id());
                if id == 0 {
                    if inc == 0 {
                        return Err(Reason::PROTOCOL_ERROR);
                    }
                    self.c.send_window += inc;
                    if self.c.send_window > MAX_WINDOW {
                        return Err(Reason::FLOW_CONTROL_ERROR);
                    }
                    self.release_all_down();
                } else if let Some(call) = self.calls.get_mut(&id) {
                    if inc == 0 {
                        self.client_reset(id, Reason::PROTOCOL_ERROR);
                        return Ok(());
                    }
                    call.down.send_window += inc;
                    if call.down.send_window > MAX_WINDOW {
                        self.client_reset(id, Reason::FLOW_CONTROL_ERROR);
                        return Ok(());
                    }
                    self.release_down(id);
                } else if id > self.last_id {
                    return Err(Reason::PROTOCOL_ERROR);
                }
            }
            Frame::Headers(h) => return self.client_headers(*h),
            Frame::Data {
                id,
                end_stream,
                payload,
                len,
            } => return self.client_data(id, end_stream, payload, len),
            Frame::Reset(r) => {
                let id = u32::from(r.stream_id());
                if id == 0 || id > self.last_id {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                let reason = match r.reason() {
                    Reason::NO_ERROR => Reason::CANCEL,
                    other => other,
                };
                let premature = self
                    .calls
                    .get(&id)
                    .is_some_and(|c| !c.down_data && c.started.elapsed() < PREMATURE);
                if self.calls.contains_key(&id) {
                    self.forget(id, Some(reason));
                    self.call_ended(premature);
                }
            }
            Frame::GoAway(_) => {
                // No new calls; those in flight finish.
                self.refusing = true;
            }
            Frame::Priority => {}
            Frame::PushPromise => return Err(Reason::PROTOCOL_ERROR),
        }
        Ok(())
    }

    fn client_headers(&mut self, h: Head) -> Result<(), Reason> {
        let id = h.id;
        let eos = h.end_stream;
        if id.is_multiple_of(2) {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if let Some(call) = self.calls.get_mut(&id) {
            // A second header block: request trailers. gRPC clients send none,
            // and some servers answer one by closing the whole connection, so
            // they end the request instead of being forwarded.
            if call.cut {
                return Ok(());
            }
            let short = call.content_length.is_some_and(|n| call.received != n);
            if call.up.ended || !eos || short {
                self.client_reset(id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
            call.up.ended = true;
            let mut end = Data::new(StreamId::from(id), Bytes::new());
            end.set_end_stream(true);
            enqueue(&mut call.up, end.into());
            self.release_up(id);
            self.settle(id);
            return Ok(());
        }
        if id <= self.last_id {
            // A header block on a stream that is over (decoded for the
            // connection's HPACK state by the reader): a stream error, so a
            // client reusing an id learns at once.
            self.client_reset(id, Reason::STREAM_CLOSED);
            return Ok(());
        }
        self.last_id = id;
        if self.refusing || self.calls.len() >= self.opts.max_concurrent_streams as usize {
            self.client_reset(id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        if h.over_size {
            // h2's answer: 431, and the stream is over.
            let r = Head::answer(
                id,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                HeaderMap::new(),
            );
            self.c.out.push_back(Out::Headers(Box::new(r)));
            if !eos {
                self.c
                    .out
                    .push_back(Reset::new(StreamId::from(id), Reason::NO_ERROR).into());
            }
            // It cost a whole header block's decoding: it counts as the
            // client's error.
            self.local_error();
            return Ok(());
        }
        let Head { pseudo, fields, .. } = h;
        if !hosts_agree(pseudo.authority.as_deref(), &fields) {
            self.client_reset(id, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        let mut map = HeaderMap::with_capacity(fields.len());
        for (n, v) in fields {
            // `host` agreed with `:authority` (above), but the backend gets
            // the URI's authority: the route's when the client sent none, or
            // `localhost` for a repaired one. Forwarded beside that, a `host`
            // would name another target to a backend that routes by it.
            if n != http::header::HOST {
                map.append(n, v);
            }
        }
        let Some(head) = request_head(pseudo, map, self.opts.repair_authority, &mut self.last_uri)
        else {
            self.client_reset(id, Reason::PROTOCOL_ERROR);
            return Ok(());
        };
        let mut lengths = head.headers.get_all(http::header::CONTENT_LENGTH).iter();
        let content_length = match (lengths.next(), lengths.next()) {
            (None, _) => None,
            // One field, digits only: `parse` would take a sign (`+5`), and
            // of two fields only the first would be checked here, while
            // both would reach the backend.
            (Some(v), None) => match Some(v.as_bytes())
                .filter(|b| !b.is_empty() && b.iter().all(u8::is_ascii_digit))
                .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
            {
                Some(n) if !eos || n == 0 => Some(n),
                _ => {
                    self.client_reset(id, Reason::PROTOCOL_ERROR);
                    return Ok(());
                }
            },
            (Some(_), Some(_)) => {
                self.client_reset(id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        match self.host.decide(head) {
            Decision::Answer(resp) => {
                let r = Head::answer(id, resp.status, resp.headers);
                self.c.out.push_back(Out::Headers(Box::new(r)));
                if !eos {
                    // The answer is complete: the rest of the request is not wanted.
                    self.c
                        .out
                        .push_back(Reset::new(StreamId::from(id), Reason::NO_ERROR).into());
                }
            }
            Decision::Forward {
                backend,
                head,
                added,
                call: host_call,
            } => {
                debug_assert!(
                    added.iter().all(|(n, _)| !head.headers.contains_key(n)),
                    "the host added a field the head already has"
                );
                let conn = self.conn_for(backend);
                let out = Out::Request(Box::new(write::Request {
                    id,
                    end_stream: eos,
                    head,
                    added,
                }));
                let send = match &self.conns[conn].state {
                    ConnState::Up(side) => side.peer_init,
                    _ => DEFAULT_WINDOW,
                };
                let mut call = Call {
                    host: host_call,
                    started: tokio::time::Instant::now(),
                    down_data: false,
                    conn,
                    up: Dir::new(send, STREAM_WINDOW, self.spare.pop().unwrap_or_default()),
                    down: Dir::new(
                        self.c.peer_init,
                        BACKEND_STREAM_WINDOW,
                        self.spare.pop().unwrap_or_default(),
                    ),
                    opened: false,
                    answered: false,
                    content_length,
                    received: 0,
                    cut: false,
                };
                call.up.ended = eos;
                call.up.queue.push_back(out);
                self.calls.insert(id, call);
                let b = &mut self.conns[conn];
                b.calls += 1;
                b.idle_since = None;
                b.waiting.push_back(id);
                self.open_waiting(conn);
            }
        }
        Ok(())
    }

    fn client_data(&mut self, id: u32, eos: bool, payload: Bytes, len: u32) -> Result<(), Reason> {
        let len = i64::from(len);
        if len > self.c.recv_window {
            return Err(Reason::FLOW_CONTROL_ERROR);
        }
        self.c.recv_window -= len;
        if id > self.last_id {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let Some(call) = self.calls.get_mut(&id) else {
            // A stream that is over (answered, reset): its data is dropped,
            // and the connection window it took given back.
            self.c.credit += len;
            return Ok(());
        };
        if call.up.ended {
            self.c.credit += len;
            if !call.cut {
                self.client_reset(id, Reason::STREAM_CLOSED);
            }
            return Ok(());
        }
        if len > call.up.recv_window {
            self.c.credit += len;
            self.client_reset(id, Reason::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        call.up.recv_window -= len;
        call.received += payload.len() as u64;
        if let Some(n) = call.content_length {
            if call.received > n || (eos && call.received != n) {
                self.c.credit += len;
                self.client_reset(id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
        }
        // Padding is not forwarded; its share of the window is owed back now.
        let n = payload.len() as i64;
        self.c.credit += len - n;
        call.up.credit += len - n;
        call.up.ended = eos;
        if n > 0 || eos {
            let mut fwd = Data::new(StreamId::from(id), payload);
            fwd.set_end_stream(eos);
            enqueue(&mut call.up, fwd.into());
        }
        self.release_up(id);
        self.settle(id);
        Ok(())
    }

    /// The connection taking new calls for `backend`, dialed if need be.
    ///
    /// A connection at the backend's own stream limit takes no more: a call
    /// queued there would hold its request data in the client's connection
    /// window until one of the open calls ended, and two such uploads could
    /// fill that window so the open calls could not send the rest of theirs.
    ///
    /// At [`MAX_BACKEND_CONNS`] for the backend the least busy one takes the
    /// call anyway (it queues there): a backend that takes one stream at a
    /// time must not draw a connection per call without bound.
    fn conn_for(&mut self, backend: usize) -> usize {
        let cap = self.opts.backend_streams_per_connection.max(1);
        if let Some(i) = self.conns.iter().position(|b| {
            b.backend == backend
                && !b.draining
                && b.calls < cap
                && (!b.settled || b.calls < b.max_open)
                && !matches!(b.state, ConnState::Gone)
        }) {
            return i;
        }
        if self.live_conns(backend) >= MAX_BACKEND_CONNS {
            if let Some(i) = (0..self.conns.len())
                .filter(|&i| {
                    let b = &self.conns[i];
                    b.backend == backend && !b.draining && !matches!(b.state, ConnState::Gone)
                })
                .min_by_key(|&i| self.conns[i].calls)
            {
                return i;
            }
        }
        self.dial(backend)
    }

    /// Backend connections to `backend` that take calls or still carry some.
    fn live_conns(&self, backend: usize) -> usize {
        self.conns
            .iter()
            .filter(|b| b.backend == backend && !matches!(b.state, ConnState::Gone))
            .count()
    }

    /// Moves the calls waiting on connection `i` past its limit (its
    /// SETTINGS just set it, lower than the calls it was given before it
    /// was known) to a new connection: queued behind the open ones they
    /// would hold their request data in the client's connection window.
    /// Only a new connection: a connection's HEADERS go out in stream-id
    /// order, and it has none yet. Done before the SETTINGS' windows apply,
    /// so the moved calls keep the default window a new connection assumes.
    fn move_surplus(&mut self, i: usize) {
        let b = &self.conns[i];
        let room = b.max_open.saturating_sub(b.open);
        if b.max_open == 0 || b.waiting.len() <= room {
            return;
        }
        let backend = b.backend;
        if self.live_conns(backend) >= MAX_BACKEND_CONNS {
            return;
        }
        let j = self.dial(backend);
        let surplus: Vec<u32> = self.conns[i].waiting.drain(room..).collect();
        for id in surplus {
            if let Some(call) = self.calls.get_mut(&id) {
                call.conn = j;
            }
            self.conns[i].calls -= 1;
            self.conns[j].calls += 1;
            self.conns[j].waiting.push_back(id);
        }
    }

    /// A new connection to `backend`, dialing; its index.
    fn dial(&mut self, backend: usize) -> usize {
        let dial = self.host.dial(backend);
        let conn = BackendConn {
            backend,
            state: ConnState::Dialing(Box::pin(async move {
                let mut io = dial.await?;
                io.write_all(PREFACE).await?;
                Ok(io)
            })),
            draining: false,
            settled: false,
            open: 0,
            max_open: usize::MAX,
            waiting: VecDeque::new(),
            calls: 0,
            idle_since: None,
        };
        // Reuse a slot no call refers to any more.
        let i = match self
            .conns
            .iter()
            .position(|b| b.calls == 0 && matches!(b.state, ConnState::Gone))
        {
            Some(i) => {
                self.conns[i] = conn;
                i
            }
            None => {
                self.conns.push(conn);
                self.conns.len() - 1
            }
        };
        i
    }

    /// Opens waiting calls on connection `i` while its limit allows.
    fn open_waiting(&mut self, i: usize) {
        loop {
            let b = &mut self.conns[i];
            // Before the backend's SETTINGS its stream limit is unknown: one
            // call goes at once (any server takes one), the rest wait.
            let limit = if b.settled { b.max_open } else { 1 };
            if !matches!(b.state, ConnState::Up(_)) || b.open >= limit {
                return;
            }
            let Some(id) = b.waiting.pop_front() else {
                return;
            };
            b.open += 1;
            if let Some(call) = self.calls.get_mut(&id) {
                call.opened = true;
                self.host.opened(&mut call.host);
            }
            self.release_up(id);
            self.settle(id);
        }
    }

    /// Moves a call's request frames to its backend within the windows.
    fn release_up(&mut self, id: u32) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if !call.opened {
            return;
        }
        let ConnState::Up(side) = &mut self.conns[call.conn].state else {
            return;
        };
        let moved = release(id, &mut call.up, side);
        self.c.credit += moved;
    }

    /// Moves a call's response frames to the client within the windows.
    fn release_down(&mut self, id: u32) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let moved = release(id, &mut call.down, &mut self.c);
        if let ConnState::Up(side) = &mut self.conns[call.conn].state {
            side.credit += moved;
        }
        self.settle(id);
    }

    /// WINDOW_UPDATEs for data passed on: per stream once half a window is
    /// owed and the sender is still sending, per connection once a quarter.
    fn credit(&mut self) {
        let threshold = i64::from(STREAM_WINDOW / 2);
        let backend_threshold = i64::from(BACKEND_STREAM_WINDOW / 2);
        for (id, call) in &mut self.calls {
            if call.up.credit >= threshold && !call.up.ended {
                let n = std::mem::take(&mut call.up.credit);
                call.up.recv_window += n;
                push_window_update(&mut self.c.out, *id, n);
            }
            if call.down.credit >= backend_threshold && !call.down.ended {
                if let ConnState::Up(side) = &mut self.conns[call.conn].state {
                    let n = std::mem::take(&mut call.down.credit);
                    call.down.recv_window += n;
                    push_window_update(&mut side.out, *id, n);
                }
            }
        }
        if self.c.credit >= CONN_WINDOW / 4 {
            let n = std::mem::take(&mut self.c.credit);
            self.c.recv_window += n;
            push_window_update(&mut self.c.out, 0, n);
        }
        for b in &mut self.conns {
            if let ConnState::Up(side) = &mut b.state {
                if side.credit >= CONN_WINDOW / 4 {
                    let n = std::mem::take(&mut side.credit);
                    side.recv_window += n;
                    push_window_update(&mut side.out, 0, n);
                }
            }
        }
    }

    fn poll_dials(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        for i in 0..self.conns.len() {
            let ConnState::Dialing(dial) = &mut self.conns[i].state else {
                continue;
            };
            match dial.as_mut().poll(cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(io)) => {
                    progress = true;
                    let mut side =
                        Side::new(io, CONN_WINDOW, self.opts.max_header_list_size, false);
                    let mut ours = Settings::default();
                    ours.set_initial_window_size(Some(BACKEND_STREAM_WINDOW));
                    ours.set_max_frame_size(Some(frame::BACKEND_MAX_FRAME as u32));
                    ours.set_enable_push(false);
                    ours.set_max_header_list_size(Some(self.opts.max_header_list_size));
                    side.out.push_back(ours.into());
                    push_window_update(&mut side.out, 0, CONN_WINDOW - DEFAULT_WINDOW);
                    self.conns[i].state = ConnState::Up(Box::new(side));
                    if self.conns[i].calls == 0 {
                        // Its calls ended while it was dialed: idle from now.
                        let now = tokio::time::Instant::now();
                        self.conns[i].idle_since = Some(now);
                        self.arm_sweep(now);
                    }
                    self.open_waiting(i);
                }
                Poll::Ready(Err(e)) => {
                    progress = true;
                    self.conn_failed(i, &e.to_string());
                }
            }
        }
        progress
    }

    fn drain_backends(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        for i in 0..self.conns.len() {
            let ConnState::Up(side) = &mut self.conns[i].state else {
                continue;
            };
            match side.drain(cx) {
                Ok(p) => progress |= p,
                Err(e) => {
                    self.conn_failed(i, &format!("write failed: {e}"));
                    progress = true;
                }
            }
        }
        progress
    }

    fn poll_backends(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        for i in 0..self.conns.len() {
            while !self.c.full() {
                let ConnState::Up(side) = &mut self.conns[i].state else {
                    break;
                };
                if side.read_dry || side.out.len() >= QUEUE {
                    break;
                }
                match side.read.poll_next(&mut side.io, cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        progress = true;
                        if let Err(why) = self.backend_frame(i, f) {
                            self.conn_failed(i, &why);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        progress = true;
                        match e {
                            read::Error::Reset { id, reason, .. } => {
                                // The backend does not know: it is told.
                                self.backend_reset(i, id, reason, true);
                            }
                            other => self.conn_failed(i, &format!("{other:?}")),
                        }
                    }
                    Poll::Ready(None) => {
                        progress = true;
                        self.conn_failed(i, "connection closed");
                    }
                    Poll::Pending => {
                        side.read_dry = true;
                        break;
                    }
                }
            }
        }
        progress
    }

    /// A backend connection failed: its calls are answered UNAVAILABLE, or
    /// reset if their response had begun.
    fn conn_failed(&mut self, i: usize, why: &str) {
        let name = self.host.backend_name(self.conns[i].backend);
        let why = format!("backend {name} unavailable: {why}");
        tracing::debug!(backend = %name, error = %why, "backend connection failed");
        self.conns[i].state = ConnState::Gone;
        self.conns[i].waiting.clear();
        let ids: Vec<u32> = self
            .calls
            .iter()
            .filter(|(_, c)| c.conn == i)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if self.calls.get(&id).is_some_and(|c| c.down.ended) {
                // Answered in full before the connection went: delivered.
                self.response_complete(id, Some(Reason::NO_ERROR));
            } else {
                self.fail_call(id, grpc::Code::Unavailable, &why, Reason::INTERNAL_ERROR);
            }
        }
    }

    /// The backend is done with a call whose response it sent in full: the
    /// request goes no further (its queued data is given back), the response
    /// drains to the client, followed by `reset` if the client is still
    /// sending.
    fn response_complete(&mut self, id: u32, reset: Option<Reason>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        self.c.credit += queued_data(&call.up.queue);
        call.up.queue.clear();
        if !call.up.ended {
            call.up.ended = true;
            call.cut = true;
            if let Some(r) = reset {
                call.down
                    .queue
                    .push_back(Reset::new(StreamId::from(id), r).into());
            }
        }
        self.release_down(id);
    }

    /// Ends a call the backend cannot finish: a gRPC status if the client has
    /// had no response headers yet, else a reset.
    fn fail_call(&mut self, id: u32, code: grpc::Code, why: &str, reset: Reason) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.answered {
            self.reset_call(id, reset);
            return;
        }
        let (head, _) = grpc::status(code, why).into_parts();
        let r = Head::answer(id, head.status, head.headers);
        self.c.out.push_back(Out::Headers(Box::new(r)));
        let up_ended = call.up.ended;
        if !up_ended {
            self.c
                .out
                .push_back(Reset::new(StreamId::from(id), Reason::NO_ERROR).into());
        }
        self.forget(id, Some(Reason::CANCEL));
    }

    /// The backend reset a call: gRPC's mapping of HTTP/2 reset codes when the
    /// client has no response yet, else the reset passed on.
    /// A backend's stream failed: reset by the backend, or (`tell`) found
    /// malformed here, when the backend is reset too.
    fn backend_reset(&mut self, i: usize, id: u32, reason: Reason, tell: bool) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.conn != i {
            return;
        }
        if call.down.ended {
            // The whole response is in (an h2 server resets a stream whose
            // request is still open once it has answered): it is delivered,
            // then the client is told to stop sending.
            self.response_complete(id, Some(reason));
            return;
        }
        if call.answered {
            // Cut off mid-response: never NO_ERROR, which would read as a
            // clean end.
            let reason = if reason == Reason::NO_ERROR {
                Reason::INTERNAL_ERROR
            } else {
                reason
            };
            self.c
                .out
                .push_back(Reset::new(StreamId::from(id), reason).into());
            self.forget(id, tell.then_some(reason));
            return;
        }
        let code = match reason {
            Reason::CANCEL => grpc::Code::Cancelled,
            Reason::REFUSED_STREAM => grpc::Code::Unavailable,
            _ => grpc::Code::Internal,
        };
        let name = self.host.backend_name(self.conns[i].backend);
        self.fail_call(
            id,
            code,
            &format!("backend {name}: stream reset: {reason:?}"),
            reason,
        );
    }

    /// `Err` fails the backend connection.
    fn backend_frame(&mut self, i: usize, f: read::Frame) -> Result<(), String> {
        use read::Frame;
        match f {
            Frame::Settings(s) => {
                if !s.is_ack() {
                    self.conns[i].settled = true;
                }
                if let Some(n) = s.max_concurrent_streams() {
                    self.conns[i].max_open = n as usize;
                }
                if !s.is_ack() {
                    self.move_surplus(i);
                }
                if self.conns[i].settled && self.conns[i].max_open == 0 {
                    // It takes no calls at all: those waiting fail now
                    // rather than wait for a limit that may never rise.
                    let name = self.host.backend_name(self.conns[i].backend);
                    let waiting = std::mem::take(&mut self.conns[i].waiting);
                    for id in waiting {
                        self.fail_call(
                            id,
                            grpc::Code::Unavailable,
                            &format!(
                                "backend {name} takes no calls (SETTINGS_MAX_CONCURRENT_STREAMS 0)"
                            ),
                            Reason::REFUSED_STREAM,
                        );
                    }
                }
                let ConnState::Up(side) = &mut self.conns[i].state else {
                    return Ok(());
                };
                let windows = self
                    .calls
                    .values_mut()
                    .filter(|c| c.conn == i)
                    .map(|c| &mut c.up.send_window);
                side.settings(&s, windows)
                    .map_err(|r| format!("SETTINGS: {r:?}"))?;
                self.release_all_up(i);
                self.open_waiting(i);
            }
            Frame::Ping(p) => {
                if let ConnState::Up(side) = &mut self.conns[i].state {
                    if !p.is_ack() {
                        side.out.push_back(Ping::pong(p.into_payload()).into());
                    }
                }
            }
            Frame::WindowUpdate(w) => {
                let inc = i64::from(w.size_increment());
                let id = u32::from(w.stream_id());
                if id == 0 {
                    if let ConnState::Up(side) = &mut self.conns[i].state {
                        side.send_window += inc;
                        if side.send_window > MAX_WINDOW {
                            return Err("connection window overflow".into());
                        }
                    }
                    self.release_all_up(i);
                } else if let Some(call) = self.calls.get_mut(&id).filter(|c| c.conn == i) {
                    call.up.send_window += inc;
                    self.release_up(id);
                    self.settle(id);
                }
            }
            Frame::Headers(h) => {
                let id = h.id;
                let Some(call) = self.calls.get_mut(&id).filter(|c| c.conn == i) else {
                    return Ok(());
                };
                if call.down.ended {
                    return Err(format!("HEADERS on stream {id} after its end"));
                }
                let eos = h.end_stream;
                if h.over_size {
                    // Fields past the limit were dropped by the reader: passing
                    // on the rest could lose grpc-status itself.
                    self.backend_reset(i, id, Reason::INTERNAL_ERROR, true);
                    return Ok(());
                }
                if !call.answered {
                    call.answered = true;
                    self.host.answered(&mut call.host);
                }
                call.down.ended = eos;
                // Passed on as read: the writer takes only the stream id,
                // END_STREAM and the fields from it (none of the flags it was
                // received with, such as PADDED or PRIORITY).
                call.down.queue.push_back(Out::Headers(h));
                self.release_down(id);
            }
            Frame::Data {
                id,
                end_stream: eos,
                payload,
                len,
            } => {
                let ConnState::Up(side) = &mut self.conns[i].state else {
                    return Ok(());
                };
                let len = i64::from(len);
                if len > side.recv_window {
                    return Err("backend overran the connection window".into());
                }
                side.recv_window -= len;
                let Some(call) = self.calls.get_mut(&id).filter(|c| c.conn == i) else {
                    side.credit += len;
                    return Ok(());
                };
                if len > call.down.recv_window || call.down.ended || !call.answered {
                    side.credit += len;
                    self.backend_reset(i, id, Reason::PROTOCOL_ERROR, true);
                    return Ok(());
                }
                call.down.recv_window -= len;
                call.down_data = true;
                let n = payload.len() as i64;
                side.credit += len - n;
                call.down.credit += len - n;
                call.down.ended = eos;
                if n > 0 || eos {
                    let mut fwd = Data::new(StreamId::from(id), payload);
                    fwd.set_end_stream(eos);
                    enqueue(&mut call.down, fwd.into());
                }
                self.release_down(id);
            }
            Frame::Reset(r) => {
                self.backend_reset(i, u32::from(r.stream_id()), r.reason(), false);
            }
            Frame::GoAway(g) => {
                // Calls above its last id were not processed: the client may
                // retry them (REFUSED_STREAM); the others finish.
                let last = u32::from(g.last_stream_id());
                self.conns[i].draining = true;
                let ids: Vec<u32> = self
                    .calls
                    .iter()
                    .filter(|(id, c)| c.conn == i && **id > last && !c.answered)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.reset_call(id, Reason::REFUSED_STREAM);
                }
                if g.reason() != Reason::NO_ERROR {
                    return Err(format!("GOAWAY {:?}", g.reason()));
                }
            }
            Frame::Priority => {}
            Frame::PushPromise => return Err("PUSH_PROMISE".into()),
        }
        Ok(())
    }
}

impl<C, H> Future for Relay<C, H>
where
    C: AsyncRead + AsyncWrite + Unpin,
    H: Host + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_relay(cx)
    }
}

/// DATA bytes in a queue.
fn queued_data(q: &VecDeque<Out>) -> i64 {
    q.iter()
        .map(|f| match f {
            Out::Data(d) => d.payload().len() as i64,
            _ => 0,
        })
        .sum()
}

/// Queues a frame for a direction. DATA arriving while earlier DATA still
/// waits is appended to it (up to a frame's size): a frame held here costs
/// far more than one byte of window, so a peer sending 1-byte frames into a
/// stalled call must not get a queue entry per byte.
fn enqueue(d: &mut Dir, f: Out) {
    if let Out::Data(new) = &f {
        if let Some(Out::Data(back)) = d.queue.back_mut() {
            let (a, b) = (back.payload().len(), new.payload().len());
            if !back.is_end_stream() && a + b <= MERGE_LIMIT {
                let tail = std::mem::take(back.payload_mut());
                let mut merged = tail.try_into_mut().unwrap_or_else(|shared| {
                    let mut m = bytes::BytesMut::with_capacity(MERGE_LIMIT);
                    m.extend_from_slice(&shared);
                    m
                });
                merged.extend_from_slice(new.payload());
                *back.payload_mut() = merged.freeze();
                back.set_end_stream(new.is_end_stream());
                return;
            }
        }
    }
    d.queue.push_back(f);
}

fn push_window_update(out: &mut VecDeque<Out>, id: u32, n: i64) {
    if let Ok(n) = u32::try_from(n) {
        if n > 0 {
            out.push_back(WindowUpdate::new(StreamId::from(id), n).into());
        }
    }
}

/// Moves a direction's queued frames into the receiver's side while both
/// windows allow, splitting DATA at the window's edge. Returns the bytes
/// moved, which the sender is owed on its connection; its stream credit is
/// added to `d`.
fn release<T>(id: u32, d: &mut Dir, to: &mut Side<T>) -> i64 {
    let mut moved = 0;
    while let Some(front) = d.queue.front_mut() {
        let n = match front {
            Out::Data(f) => f.payload().len() as i64,
            _ => 0,
        };
        if n > 0 {
            let room = d.send_window.min(to.send_window);
            if room <= 0 {
                break;
            }
            if n > room {
                let Out::Data(f) = front else { break };
                let head = f.payload_mut().split_to(room as usize);
                d.send_window -= room;
                to.send_window -= room;
                d.credit += room;
                moved += room;
                to.out.push_back(Data::new(StreamId::from(id), head).into());
                to.out_data += room as usize;
                continue;
            }
            d.send_window -= n;
            to.send_window -= n;
            d.credit += n;
            moved += n;
            to.out_data += n as usize;
        }
        if let Some(f) = d.queue.pop_front() {
            to.out.push_back(f);
        }
    }
    moved
}

/// The request head from a HEADERS frame's pseudo-headers and fields, or
/// `None` if it is malformed (a stream error, as h2 treats it).
///
/// gRPC C-core (Python, Ruby, PHP, C++) and grpc-java's Netty transport send
/// the Unix socket path as `:authority` (`/run/app.sock`, `%2Frun%2Fapp.sock`)
/// by default. With `repair` such an authority becomes `localhost` rather than
/// failing every call those clients make; it routes nothing (routes go by
/// path) and the backend sees a well-formed one. The reader has decoded the
/// block already, so this costs nothing for a valid authority. (An authority
/// that is not UTF-8 never gets here: the reader fails the stream.)
fn request_head(
    pseudo: Pseudo,
    fields: HeaderMap,
    repair: bool,
    last: &mut Option<LastUri>,
) -> Option<http::request::Parts> {
    if pseudo.status.is_some() || pseudo.protocol.is_some() {
        return None;
    }
    let method = pseudo.method?;
    if method == Method::CONNECT {
        return None;
    }
    let scheme = pseudo.scheme?;
    let path = pseudo.path.filter(|p| !p.is_empty())?;
    let authority = pseudo.authority;
    let uri = match last {
        Some(l) if l.path == path && l.authority == authority && l.scheme == scheme => {
            l.uri.clone()
        }
        _ => {
            // A fragment has no place in a request target (RFC 9113 §8.3.1),
            // and `Uri` would drop it unseen: refused, not cut.
            if path.as_bytes().contains(&b'#') {
                return None;
            }
            let mut uri = http::Uri::builder().path_and_query(path.as_bytes());
            // `:authority` is optional (RFC 9113 §8.3.1): without it the
            // URI is origin-form, as h2 builds it, and the route fills in
            // the backend's.
            if let Some(a) = &authority {
                let a = match http::uri::Authority::try_from(a.as_bytes()) {
                    Ok(a) => a,
                    Err(_) if repair => {
                        tracing::debug!(authority = ?&**a, "replacing an invalid :authority");
                        http::uri::Authority::from_static("localhost")
                    }
                    Err(_) => return None,
                };
                uri = uri.scheme(scheme.as_bytes()).authority(a);
            }
            let uri = uri.build().ok()?;
            *last = Some(LastUri {
                scheme,
                authority,
                path,
                uri: uri.clone(),
            });
            uri
        }
    };
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = fields;
    Some(req.into_parts().0)
}

/// Whether a request's `host` fields agree with its `:authority`: a `host`
/// naming another entity makes the request malformed (RFC 9113 §8.3.1), and
/// so do two. (A `host` is not forwarded either way: the backend gets
/// `:authority` alone.) A compare per field, before the fields become a map
/// (a lookup there cost ~140 instructions a call).
fn hosts_agree(authority: Option<&str>, fields: &[(HeaderName, HeaderValue)]) -> bool {
    let mut hosts = fields.iter().filter(|(n, _)| n == http::header::HOST);
    match hosts.next() {
        None => true,
        Some((_, host)) => {
            hosts.next().is_none()
                && authority.is_none_or(|a| host.as_bytes().eq_ignore_ascii_case(a.as_bytes()))
        }
    }
}

/// The last request's URI, by the pseudo-header values it was made of: a
/// connection's calls to one method share it, and checking a path and an
/// authority byte by byte into a new `Uri` cost ~1.4k instructions a call.
struct LastUri {
    scheme: h2::frame::BytesStr,
    authority: Option<h2::frame::BytesStr>,
    path: h2::frame::BytesStr,
    uri: http::Uri,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(byte: u8, eos: bool) -> Out {
        let mut d = Data::new(StreamId::from(1), Bytes::from(vec![byte]));
        d.set_end_stream(eos);
        d.into()
    }

    #[test]
    fn the_kept_uri_is_used_only_for_the_same_pseudo_headers() {
        let mut last = None;
        let mut head = |scheme: &str, authority: Option<&str>, path: &str, repair| {
            let text = |s: &str| h2::frame::BytesStr::try_from(Bytes::from(s.to_string())).unwrap();
            let p = Pseudo {
                method: Some(Method::POST),
                scheme: Some(text(scheme)),
                authority: authority.map(text),
                path: Some(text(path)),
                ..Pseudo::default()
            };
            request_head(p, HeaderMap::new(), repair, &mut last).map(|h| h.uri.to_string())
        };
        let a = Some("a.example");
        for (scheme, authority, path, repair, want) in [
            ("http", a, "/s.S/M", false, Some("http://a.example/s.S/M")),
            ("http", a, "/s.S/M", false, Some("http://a.example/s.S/M")),
            ("http", a, "/s.S/N", false, Some("http://a.example/s.S/N")),
            ("https", a, "/s.S/N", false, Some("https://a.example/s.S/N")),
            (
                "https",
                Some("b.example"),
                "/s.S/N",
                false,
                Some("https://b.example/s.S/N"),
            ),
            ("https", None, "/s.S/N", false, Some("/s.S/N")),
            ("https", Some("/run/x.sock"), "/s.S/N", false, None),
            (
                "https",
                Some("/run/x.sock"),
                "/s.S/N",
                true,
                Some("https://localhost/s.S/N"),
            ),
            // Kept from a repairing listener's call; the same relay never
            // changes `repair`, so the kept URI stands for it.
            (
                "https",
                Some("/run/x.sock"),
                "/s.S/N",
                true,
                Some("https://localhost/s.S/N"),
            ),
            ("https", a, "/s.S/N", false, Some("https://a.example/s.S/N")),
        ] {
            assert_eq!(
                head(scheme, authority, path, repair).as_deref(),
                want,
                "{scheme} {authority:?} {path}"
            );
        }
    }

    #[test]
    fn request_heads_without_what_a_request_needs_are_refused() {
        fn text(s: &str) -> h2::frame::BytesStr {
            h2::frame::BytesStr::try_from(Bytes::from(s.to_string())).unwrap()
        }
        let good = || Pseudo {
            method: Some(Method::POST),
            scheme: Some(text("http")),
            authority: Some(text("a.example")),
            path: Some(text("/s.S/M")),
            ..Pseudo::default()
        };
        let head = |p| request_head(p, HeaderMap::new(), false, &mut None);
        assert!(head(good()).is_some());
        type Change = fn(&mut Pseudo);
        let cases: [(&str, Change); 8] = [
            (":status", |p| p.status = Some(StatusCode::OK)),
            ("a fragment", |p| p.path = Some(text("/s.S/M#x"))),
            ("an empty fragment", |p| p.path = Some(text("/s.S/M#"))),
            ("CONNECT", |p| p.method = Some(Method::CONNECT)),
            ("no :method", |p| p.method = None),
            ("no :scheme", |p| p.scheme = None),
            ("no :path", |p| p.path = None),
            ("an empty :path", |p| {
                p.path = Some(h2::frame::BytesStr::try_from(Bytes::new()).unwrap())
            }),
        ];
        for (what, change) in cases {
            let mut p = good();
            change(&mut p);
            assert!(head(p).is_none(), "{what}");
        }
        // `host`: the same entity as `:authority` (in any case), or none.
        let agree = |authority: Option<&str>, hosts: &[&'static str]| {
            let mut f = vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            )];
            for h in hosts {
                f.push((http::header::HOST, HeaderValue::from_static(h)));
            }
            hosts_agree(authority, &f)
        };
        assert!(agree(Some("a.example"), &[]));
        assert!(agree(Some("a.example"), &["A.example"]));
        assert!(agree(None, &["b.example"]));
        assert!(!agree(Some("a.example"), &["b.example"]));
        assert!(!agree(Some("a.example"), &["a.example", "a.example"]));
    }

    #[test]
    fn waiting_data_frames_merge_so_a_byte_costs_a_byte() {
        let mut d = Dir::new(0, STREAM_WINDOW, VecDeque::new());
        for i in 0..20_000u32 {
            enqueue(&mut d, data(u8::try_from(i % 251).unwrap(), false));
        }
        enqueue(&mut d, data(7, true));
        // 20,001 bytes in two frames of at most 16 KiB, in order, the end
        // of the stream kept.
        assert_eq!(d.queue.len(), 2);
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for f in &d.queue {
            let Out::Data(f) = f else { panic!("not DATA") };
            assert!(f.payload().len() <= MERGE_LIMIT);
            bytes.extend_from_slice(f.payload());
            ends.push(f.is_end_stream());
        }
        let want: Vec<u8> = (0..20_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .chain([7])
            .collect();
        assert_eq!(bytes, want);
        assert_eq!(ends, [false, true]);
        assert_eq!(queued_data(&d.queue), 20_001);
    }
}
