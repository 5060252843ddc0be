//! Prototype for issue 6, not the gateway: an HTTP/2 relay that keeps h2's frame
//! layer (framing, HPACK, CONTINUATION and header-list limits: `h2::Codec`,
//! exposed by h2's `unstable` feature, enabled for examples only) and drops
//! its per-stream machinery. One task per client connection with a backend
//! connection of its own; stream ids are kept; request headers are decoded,
//! checked against the allowed methods, given the client's XFCC and re-encoded;
//! DATA moves as `Bytes` within both peers' flow-control windows, credit
//! returned to the sender as the receiver takes it.
//!
//! What it leaves out, so its numbers are a lower bound on a real one: header
//! validation beyond h2's codec, the full policy engine (a set of allowed
//! paths stands in for the per-connection decision memo), metrics, audit,
//! limits, GOAWAY handling beyond closing, padding in flow control.
//!
//! ```text
//! relay --listen /tmp/relay.sock --backend /tmp/echo.sock --cert s.pem --key s.key --client-ca ca.pem \
//!       --allow /demo.v1.Echo/Unary --allow /demo.v1.Echo/ServerStream
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use clap::Parser;
use futures_util::Stream as _;
use h2::frame::{Frame, Headers, Ping, Pseudo, Reason, Reset, Settings, StreamId, WindowUpdate};
use h2::Codec;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: PathBuf,
    #[arg(long)]
    backend: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    client_ca: PathBuf,
    /// A method path callers may use (repeat).
    #[arg(long)]
    allow: Vec<String>,
}

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Stream window advertised to both peers: what one stream may have queued here.
const WINDOW: u32 = 1 << 20;
/// Connection window advertised to both peers (stream windows bound memory).
const CONN_WINDOW: u32 = (1 << 31) - 1;
/// Frames waiting for one side's codec before reading the other side stops.
const QUEUE: usize = 512;

/// One worker thread, as the gateway runs on a 2-core machine.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = ipcgate::tls::server(&ipcgate::config::Tls::new(
        args.cert,
        args.key,
        args.client_ca,
    ))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let _ = std::fs::remove_file(&args.listen);
    let listener = tokio::net::UnixListener::bind(&args.listen)?;
    let allowed: Arc<HashSet<String>> = Arc::new(args.allow.into_iter().collect());
    let backend = Arc::new(args.backend);
    eprintln!("relay ready");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, backend, allowed) = (acceptor.clone(), backend.clone(), allowed.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(acceptor, stream, &backend, allowed).await {
                eprintln!("connection: {e}");
            }
        });
    }
}

async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::UnixStream,
    backend: &std::path::Path,
    allowed: Arc<HashSet<String>>,
) -> io::Result<()> {
    let mut tls = acceptor.accept(stream).await?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or_else(|| io::Error::other("no client certificate"))?
        .to_vec();
    let peer = ipcgate::identity::Peer::new(&chain, None, None).map_err(io::Error::other)?;
    let mut preface = [0u8; 24];
    tls.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(io::Error::other("not HTTP/2"));
    }
    let mut up = tokio::net::UnixStream::connect(backend).await?;
    up.write_all(PREFACE).await?;

    let mut client = Side::new(Codec::new(tls));
    client.codec.set_max_recv_header_list_size(16 << 10);
    let mut ours = Settings::default();
    ours.set_initial_window_size(Some(WINDOW));
    ours.set_max_concurrent_streams(Some(1024));
    ours.set_max_header_list_size(Some(16 << 10));
    client.out.push_back(ours.into());
    client
        .out
        .push_back(WindowUpdate::new(StreamId::zero(), CONN_WINDOW - 65_535).into());

    let mut back = Side::new(Codec::new(up));
    let mut ours = Settings::default();
    ours.set_initial_window_size(Some(WINDOW));
    ours.set_enable_push(false);
    back.out.push_back(ours.into());
    back.out
        .push_back(WindowUpdate::new(StreamId::zero(), CONN_WINDOW - 65_535).into());

    let mut relay = Relay {
        c: client,
        b: back,
        streams: HashMap::new(),
        allowed,
        xfcc: peer.xfcc().clone(),
    };
    std::future::poll_fn(|cx| relay.poll(cx)).await
}

/// One peer: its codec, frames cleared to go to it, and its windows.
struct Side<T> {
    codec: Codec<T, Bytes>,
    out: VecDeque<Frame<Bytes>>,
    /// What may still be sent to this peer on the connection.
    window: i64,
    /// This peer's SETTINGS_INITIAL_WINDOW_SIZE.
    init: i64,
    /// Connection credit owed to this peer for DATA passed on.
    credit: u32,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Side<T> {
    fn new(codec: Codec<T, Bytes>) -> Self {
        Side {
            codec,
            out: VecDeque::new(),
            window: 65_535,
            init: 65_535,
            credit: 0,
        }
    }

    /// Moves cleared frames into the codec while it has room.
    fn drain(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut any = false;
        while !self.out.is_empty() {
            match self.codec.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
            let Some(f) = self.out.pop_front() else { break };
            self.codec
                .buffer(f)
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
            any = true;
        }
        Ok(any)
    }

    /// A SETTINGS frame from this peer: applied to what is sent to it, acked.
    fn settings(&mut self, s: &Settings, streams: &mut HashMap<u32, Call>, to_client: bool) {
        if s.is_ack() {
            return;
        }
        if let Some(n) = s.max_frame_size() {
            self.codec.set_max_send_frame_size(n as usize);
        }
        if let Some(n) = s.header_table_size() {
            self.codec.set_send_header_table_size(n as usize);
        }
        if let Some(n) = s.initial_window_size() {
            let delta = i64::from(n) - self.init;
            self.init = i64::from(n);
            for c in streams.values_mut() {
                if to_client {
                    c.to_c.window += delta;
                } else {
                    c.to_b.window += delta;
                }
            }
        }
        self.out.push_back(Settings::ack().into());
    }
}

/// One direction of a call: frames waiting for the receiver's window.
struct Dir {
    window: i64,
    queue: VecDeque<Frame<Bytes>>,
    /// Stream credit owed to the sender for DATA passed on.
    credit: u32,
    /// The sender ended its side.
    ended: bool,
}

impl Dir {
    fn new(window: i64) -> Dir {
        Dir {
            window,
            queue: VecDeque::new(),
            credit: 0,
            ended: false,
        }
    }
}

struct Call {
    /// Client to backend.
    to_b: Dir,
    /// Backend to client.
    to_c: Dir,
}

struct Relay<C, B> {
    c: Side<C>,
    b: Side<B>,
    streams: HashMap<u32, Call>,
    allowed: Arc<HashSet<String>>,
    xfcc: HeaderValue,
}

/// Moves a stream's queued frames to the receiver's side within its windows,
/// splitting DATA at the window edge; owes the sender credit for what moved.
fn release<T>(id: u32, d: &mut Dir, to: &mut Side<T>, from_credit: &mut u32) {
    while let Some(front) = d.queue.front_mut() {
        let n = match front {
            Frame::Data(f) => f.payload().len(),
            _ => 0,
        };
        if n > 0 {
            let avail = d.window.min(to.window);
            if avail <= 0 {
                return;
            }
            if (n as i64) > avail {
                let Frame::Data(f) = front else { return };
                let head = f.payload_mut().split_to(avail as usize);
                let part = h2::frame::Data::new(StreamId::from(id), head);
                d.window -= avail;
                to.window -= avail;
                d.credit += avail as u32;
                *from_credit += avail as u32;
                to.out.push_back(part.into());
                continue;
            }
            d.window -= n as i64;
            to.window -= n as i64;
            d.credit += n as u32;
            *from_credit += n as u32;
        }
        if let Some(f) = d.queue.pop_front() {
            to.out.push_back(f);
        }
    }
}

impl<C, B> Relay<C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut progress = self.c.drain(cx)? | self.b.drain(cx)?;
            while self.c.out.len() < QUEUE && self.b.out.len() < QUEUE {
                match Pin::new(&mut self.c.codec).poll_next(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        progress = true;
                        if !self.on_client_frame(f) {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(io::Error::other(format!("{e:?}"))))
                    }
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            while self.c.out.len() < QUEUE && self.b.out.len() < QUEUE {
                match Pin::new(&mut self.b.codec).poll_next(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        progress = true;
                        if !self.on_backend_frame(f) {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(io::Error::other(format!("{e:?}"))))
                    }
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            self.credit();
            progress |= self.c.drain(cx)? | self.b.drain(cx)?;
            if !progress {
                break;
            }
        }
        if let Poll::Ready(Err(e)) = self.c.codec.flush(cx) {
            return Poll::Ready(Err(e));
        }
        if let Poll::Ready(Err(e)) = self.b.codec.flush(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Pending
    }

    /// WINDOW_UPDATEs for what was passed on: per stream once half a window
    /// is owed and the sender still sends, per connection once 1 MiB is.
    fn credit(&mut self) {
        for (id, call) in &mut self.streams {
            if call.to_b.credit >= WINDOW / 2 && !call.to_b.ended {
                let n = std::mem::take(&mut call.to_b.credit);
                self.c
                    .out
                    .push_back(WindowUpdate::new(StreamId::from(*id), n).into());
            }
            if call.to_c.credit >= WINDOW / 2 && !call.to_c.ended {
                let n = std::mem::take(&mut call.to_c.credit);
                self.b
                    .out
                    .push_back(WindowUpdate::new(StreamId::from(*id), n).into());
            }
        }
        if self.c.credit >= 1 << 20 {
            let n = std::mem::take(&mut self.c.credit);
            self.c
                .out
                .push_back(WindowUpdate::new(StreamId::zero(), n).into());
        }
        if self.b.credit >= 1 << 20 {
            let n = std::mem::take(&mut self.b.credit);
            self.b
                .out
                .push_back(WindowUpdate::new(StreamId::zero(), n).into());
        }
    }

    fn done(&mut self, id: u32) {
        if let Some(c) = self.streams.get(&id) {
            if c.to_b.ended && c.to_c.ended && c.to_b.queue.is_empty() && c.to_c.queue.is_empty() {
                self.streams.remove(&id);
            }
        }
    }

    /// False once the connection should end.
    fn on_client_frame(&mut self, f: Frame) -> bool {
        match f {
            Frame::Settings(s) => self.c.settings(&s, &mut self.streams, true),
            Frame::Ping(p) => {
                if !p.is_ack() {
                    self.c.out.push_back(Ping::pong(p.into_payload()).into());
                }
            }
            Frame::WindowUpdate(w) => {
                let inc = i64::from(w.size_increment());
                if w.stream_id().is_zero() {
                    self.c.window += inc;
                    let ids: Vec<u32> = self.streams.keys().copied().collect();
                    for id in ids {
                        if let Some(call) = self.streams.get_mut(&id) {
                            release(id, &mut call.to_c, &mut self.c, &mut self.b.credit);
                        }
                        self.done(id);
                    }
                } else {
                    let id = u32::from(w.stream_id());
                    if let Some(call) = self.streams.get_mut(&id) {
                        call.to_c.window += inc;
                        release(id, &mut call.to_c, &mut self.c, &mut self.b.credit);
                    }
                    self.done(id);
                }
            }
            Frame::Headers(h) => {
                let id = u32::from(h.stream_id());
                let eos = h.is_end_stream();
                if let Some(call) = self.streams.get_mut(&id) {
                    // Trailers.
                    call.to_b.ended |= eos;
                    call.to_b.queue.push_back(h.into());
                    release(id, &mut call.to_b, &mut self.b, &mut self.c.credit);
                    self.done(id);
                    return true;
                }
                let (mut pseudo, mut fields) = h.into_parts();
                let ok = pseudo
                    .path
                    .as_deref()
                    .is_some_and(|p| self.allowed.contains(p));
                if !ok {
                    let mut t = HeaderMap::new();
                    t.insert("content-type", HeaderValue::from_static("application/grpc"));
                    t.insert("grpc-status", HeaderValue::from_static("7"));
                    let mut r =
                        Headers::new(StreamId::from(id), Pseudo::response(StatusCode::OK), t);
                    r.set_end_stream();
                    self.c.out.push_back(r.into());
                    if !eos {
                        self.c
                            .out
                            .push_back(Reset::new(StreamId::from(id), Reason::NO_ERROR).into());
                    }
                    return true;
                }
                fields.remove(ipcgate::proxy::XFCC);
                fields.insert(ipcgate::proxy::XFCC, self.xfcc.clone());
                pseudo.set_scheme(http::uri::Scheme::HTTP);
                let mut out = Headers::new(StreamId::from(id), pseudo, fields);
                if eos {
                    out.set_end_stream();
                }
                let mut call = Call {
                    to_b: Dir::new(self.b.init),
                    to_c: Dir::new(self.c.init),
                };
                call.to_b.ended = eos;
                self.b.out.push_back(out.into());
                self.streams.insert(id, call);
            }
            Frame::Data(d) => {
                let id = u32::from(d.stream_id());
                let eos = d.is_end_stream();
                match self.streams.get_mut(&id) {
                    Some(call) => {
                        call.to_b.ended |= eos;
                        call.to_b.queue.push_back(d.into());
                        release(id, &mut call.to_b, &mut self.b, &mut self.c.credit);
                        self.done(id);
                    }
                    None => self.c.credit += d.payload().len() as u32,
                }
            }
            Frame::Reset(r) => {
                let id = u32::from(r.stream_id());
                if self.streams.remove(&id).is_some() {
                    self.b.out.push_back(r.into());
                }
            }
            Frame::GoAway(_) => return false,
            Frame::Priority(_) => {}
            Frame::PushPromise(_) => return false,
        }
        true
    }

    fn on_backend_frame(&mut self, f: Frame) -> bool {
        match f {
            Frame::Settings(s) => self.b.settings(&s, &mut self.streams, false),
            Frame::Ping(p) => {
                if !p.is_ack() {
                    self.b.out.push_back(Ping::pong(p.into_payload()).into());
                }
            }
            Frame::WindowUpdate(w) => {
                let inc = i64::from(w.size_increment());
                if w.stream_id().is_zero() {
                    self.b.window += inc;
                    let ids: Vec<u32> = self.streams.keys().copied().collect();
                    for id in ids {
                        if let Some(call) = self.streams.get_mut(&id) {
                            release(id, &mut call.to_b, &mut self.b, &mut self.c.credit);
                        }
                        self.done(id);
                    }
                } else {
                    let id = u32::from(w.stream_id());
                    if let Some(call) = self.streams.get_mut(&id) {
                        call.to_b.window += inc;
                        release(id, &mut call.to_b, &mut self.b, &mut self.c.credit);
                    }
                    self.done(id);
                }
            }
            Frame::Headers(h) => {
                let id = u32::from(h.stream_id());
                let eos = h.is_end_stream();
                if let Some(call) = self.streams.get_mut(&id) {
                    call.to_c.ended |= eos;
                    call.to_c.queue.push_back(h.into());
                    release(id, &mut call.to_c, &mut self.c, &mut self.b.credit);
                    self.done(id);
                }
            }
            Frame::Data(d) => {
                let id = u32::from(d.stream_id());
                let eos = d.is_end_stream();
                match self.streams.get_mut(&id) {
                    Some(call) => {
                        call.to_c.ended |= eos;
                        call.to_c.queue.push_back(d.into());
                        release(id, &mut call.to_c, &mut self.c, &mut self.b.credit);
                        self.done(id);
                    }
                    None => self.b.credit += d.payload().len() as u32,
                }
            }
            Frame::Reset(r) => {
                let id = u32::from(r.stream_id());
                if self.streams.remove(&id).is_some() {
                    self.c.out.push_back(r.into());
                }
            }
            Frame::GoAway(_) | Frame::PushPromise(_) => return false,
            Frame::Priority(_) => {}
        }
        true
    }
}
