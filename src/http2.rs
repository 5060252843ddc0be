//! Serving one client connection's HTTP/2: h2's connection and every call on it
//! polled by the connection's own task.
//!
//! hyper gives each stream a task and each request body another; for a proxy
//! whose calls are a header block and a frame or two, that scheduling was a good
//! share of the cost, and every task woke the connection to write its few bytes
//! alone. Here the streams wait in one `FuturesUnordered`, the connection writes
//! what they queued in one go when the task yields, and only the backend
//! connections run elsewhere.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use h2::server::{Connection, SendResponse};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use crate::coalesce::{self, Coalesce, Flusher};
use crate::config::Limits;
use crate::grpc;

/// The connection settings the gateway offers its clients.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    /// A ping this often; a connection that has not answered the previous one by
    /// then is closed (a peer that vanished without a FIN).
    pub keep_alive: Duration,
    /// How long calls in flight may run on once the connection was told to go
    /// away for a reset flood.
    pub drain: Duration,
}

impl Settings {
    pub fn new(limits: &Limits) -> Settings {
        Settings {
            max_concurrent_streams: limits.max_concurrent_streams,
            max_header_list_size: limits.max_header_list_size,
            keep_alive: KEEP_ALIVE,
            drain: limits.drain_timeout,
        }
    }
}

const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// hyper's server defaults, kept: 1 MiB windows, 16 KiB frames, 400 KiB send
/// buffer per stream, 1024 locally caused resets before the peer is cut off.
const WINDOW: u32 = 1 << 20;
const MAX_FRAME: u32 = 16 << 10;
const MAX_SEND_BUFFER: usize = 400 << 10;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Rapid reset (CVE-2023-44487) past h2's own guard, which only bounds streams
/// reset while waiting to be accepted: a client that opens calls and cancels
/// them as soon as they reach the backend makes the gateway, and the backend,
/// work for nothing. Envoy's premature-reset rule and defaults: a call cancelled
/// by the client within `PREMATURE` of its start and before any response data
/// is premature; a connection is told to go away once premature resets reach
/// half of `RESET_FLOOD_CALLS`, or, past that many ended calls, half of them.
/// Only calls that reached a backend count: calls the gateway answers itself
/// (denied, no route) cost nothing there and must not dilute the ratio.
pub const RESET_FLOOD_CALLS: u64 = 500;
const PREMATURE: Duration = Duration::from_secs(1);
/// The budget of a client that flooded recently (see `FloodGuard`).
pub const RESET_FLOOD_CALLS_STRICT: u64 = 20;

/// One connection's count for the rapid-reset rule (h2 path and relay).
#[derive(Debug, Default)]
pub struct ResetCount {
    /// Forwarded calls ended, and those the client cancelled prematurely.
    ended: u64,
    premature: u64,
}

impl ResetCount {
    /// Counts a forwarded call's end; `Some((calls, cancelled))` once the
    /// connection has flooded (`strict`: the client flooded recently).
    pub fn ended(&mut self, premature: bool, strict: bool) -> Option<(u64, u64)> {
        self.ended += 1;
        if !premature {
            return None;
        }
        self.premature += 1;
        let budget = if strict {
            RESET_FLOOD_CALLS_STRICT
        } else {
            RESET_FLOOD_CALLS
        };
        (self.premature * 2 >= self.ended.max(budget)).then_some((self.ended, self.premature))
    }
}

/// What the connection's owner knows of its client beyond this connection:
/// a client that just flooded must not get a fresh budget by reconnecting, or
/// on the other connections it holds.
pub trait FloodGuard: Send {
    /// Whether the client flooded recently: the strict budget applies.
    fn strict(&self) -> bool;
    /// This connection was just told to go away for a flood.
    fn flooded(&self, calls: u64, cancelled: u64);
}

/// How long after a GOAWAY for a shutdown or an idle close new streams are
/// still taken: the round trip in which a client may have sent calls before
/// it saw the GOAWAY (h2 waits for the answer to its ping for that).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A connection past its preface, its writes gathered per poll.
pub struct Handshaken<T> {
    conn: Connection<Coalesce<T>, Bytes>,
    flusher: Flusher<T>,
}

/// Completes the HTTP/2 preface and settings exchange.
///
/// # Errors
/// The client did not speak HTTP/2.
pub async fn handshake<T>(io: T, s: Settings) -> Result<Handshaken<T>, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (io, flusher) = coalesce::new(io);
    let handshake = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_concurrent_streams(s.max_concurrent_streams)
        .max_header_list_size(s.max_header_list_size)
        .handshake(io);
    tokio::pin!(handshake);
    // The server's SETTINGS are written during the handshake: flushed on every
    // poll of it like any other write.
    let conn = std::future::poll_fn(|cx| {
        let r = handshake.as_mut().poll(cx);
        let _ = flusher.poll_flush(cx);
        r
    })
    .await?;
    Ok(Handshaken { conn, flusher })
}

/// How a call ended, for the rapid-reset rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// Answered by the gateway itself: no backend work.
    Local,
    /// Forwarded, and not cancelled prematurely.
    Forwarded,
    /// Forwarded, and cancelled by the client prematurely (see `PREMATURE`).
    PrematureReset,
}

type Call = Pin<Box<dyn Future<Output = Ended> + Send>>;

/// One client connection: runs until the client goes, the connection fails, or
/// a graceful shutdown has let every call finish.
pub struct Serve<T, S> {
    conn: Connection<Coalesce<T>, Bytes>,
    flusher: Flusher<T>,
    svc: S,
    calls: FuturesUnordered<Call>,
    ping: Option<PingPong>,
    awaiting_pong: bool,
    keep_alive: tokio::time::Interval,
    resets: ResetCount,
    /// After a GOAWAY: streams h2 still hands over from this instant on are
    /// refused.
    refuse_from: Option<tokio::time::Instant>,
    /// Set when the connection was told to go away for a reset flood: it ends
    /// here even if the client never lets h2 finish the GOAWAY (it need not
    /// answer its ping).
    flood_drain: Option<Pin<Box<tokio::time::Sleep>>>,
    drain: Duration,
    flood_guard: Option<Box<dyn FloodGuard>>,
}

impl<T, S> Serve<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<RecvStream>, Response = Response<grpc::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    pub fn new(h: Handshaken<T>, svc: S, s: Settings) -> Self {
        let Handshaken { mut conn, flusher } = h;
        let ping = conn.ping_pong();
        let mut keep_alive =
            tokio::time::interval_at(tokio::time::Instant::now() + s.keep_alive, s.keep_alive);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Serve {
            conn,
            flusher,
            svc,
            calls: FuturesUnordered::new(),
            ping,
            awaiting_pong: false,
            keep_alive,
            resets: ResetCount::default(),
            refuse_from: None,
            flood_drain: None,
            drain: s.drain,
            flood_guard: None,
        }
    }

    /// Tells the client's floods to `guard`, and asks it for the budget.
    #[must_use]
    pub fn with_flood_guard(mut self, guard: impl FloodGuard + 'static) -> Self {
        self.flood_guard = Some(Box::new(guard));
        self
    }

    /// Whether the connection was closed for cancelling most of its calls.
    pub fn reset_flood(&self) -> bool {
        self.flood_drain.is_some()
    }

    fn call_ended(&mut self, ended: Ended) {
        if ended == Ended::Local || self.reset_flood() {
            return;
        }
        let premature = ended == Ended::PrematureReset;
        // The guard is asked only when it matters: a premature reset.
        let strict = premature && self.flood_guard.as_ref().is_some_and(|g| g.strict());
        if let Some((calls, cancelled)) = self.resets.ended(premature, strict) {
            match &self.flood_guard {
                Some(g) => g.flooded(calls, cancelled),
                None => tracing::warn!(
                    calls,
                    cancelled,
                    "client cancels most calls as they start (rapid reset): closing the connection"
                ),
            }
            self.flood_drain = Some(Box::pin(tokio::time::sleep(self.drain)));
            // Graceful: no new calls, those in flight may finish. A client
            // whose short deadlines all expired in a backend stall loses no
            // healthy call to this, and an attacker can only wait out the
            // calls it already has, as any client can.
            self.graceful_shutdown(Duration::ZERO);
        }
    }

    /// GOAWAY: no new calls; those in flight may finish.
    ///
    /// h2 keeps taking new streams until the client answers the ping it sends
    /// with the GOAWAY (they may have crossed it in flight), so a client that
    /// never answers could go on opening calls until the drain bound — a
    /// revoked one included. Streams h2 hands out more than `grace` after this
    /// are refused with REFUSED_STREAM (never processed: safe to retry
    /// elsewhere).
    pub fn graceful_shutdown(&mut self, grace: Duration) {
        self.conn.graceful_shutdown();
        let at = tokio::time::Instant::now() + grace;
        self.refuse_from = Some(self.refuse_from.map_or(at, |t| t.min(at)));
    }

    fn refusing(&self) -> bool {
        self.refuse_from
            .is_some_and(|t| tokio::time::Instant::now() >= t)
    }

    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(ping) = self.ping.as_mut() else {
            return Poll::Pending;
        };
        if self.awaiting_pong {
            match ping.poll_pong(cx) {
                Poll::Ready(Ok(_)) => self.awaiting_pong = false,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {}
            }
        }
        while self.keep_alive.poll_tick(cx).is_ready() {
            if self.awaiting_pong {
                tracing::debug!("no answer to the keep-alive ping: closing the connection");
                return Poll::Ready(());
            }
            if ping.send_ping(Ping::opaque()).is_err() {
                return Poll::Ready(());
            }
            self.awaiting_pong = true;
        }
        Poll::Pending
    }

    fn poll_calls(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        if self.poll_keep_alive(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        // Calls, then the connection, until a round accepts no new call: the
        // first read usually brings a call's HEADERS and DATA together and h2
        // hands out the stream on its HEADERS; the next round lets the call take
        // its DATA on to the backend in this same wake-up (one write there, not
        // two) and writes what the calls answered into this poll's flush. A new
        // call has no waker registered until it is first polled, so none may be
        // left unpolled when this returns.
        for round in 0.. {
            while let Poll::Ready(Some(ended)) = self.calls.poll_next_unpin(cx) {
                self.call_ended(ended);
            }
            let mut accepted = false;
            loop {
                // Every service in the gateway is always ready; polling keeps
                // the tower contract.
                if self.svc.poll_ready(cx).is_pending() {
                    return Poll::Pending;
                }
                match self.conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, mut respond)))) => {
                        if self.refusing() {
                            respond.send_reset(Reason::REFUSED_STREAM);
                            continue;
                        }
                        let call = respond_with(self.svc.call(req), respond);
                        self.calls.push(Box::pin(call));
                        accepted = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            if !accepted {
                break;
            }
            if round == 8 {
                // A client opening streams faster than they are served: let
                // other tasks run, and come straight back.
                cx.waker().wake_by_ref();
                break;
            }
        }
        Poll::Pending
    }
}

impl<T, S> Future for Serve<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<RecvStream>, Response = Response<grpc::Body>, Error = Infallible> + Unpin,
    S::Future: Send + 'static,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        let mut r = me.poll_calls(cx);
        if let Some(d) = me.flood_drain.as_mut() {
            if r.is_pending() && d.as_mut().poll(cx).is_ready() {
                tracing::warn!(
                    "calls still in flight after the drain bound: closing the connection"
                );
                r = Poll::Ready(Ok(()));
            }
        }
        // Everything this poll wrote goes out together. A write that fails is
        // reported by the connection on its next poll; the socket is readable
        // then, so that comes at once.
        let _ = me.flusher.poll_flush(cx);
        r
    }
}

/// Waits for the response while watching for the client's reset, then sends it.
async fn respond_with<F>(fut: F, mut respond: SendResponse<Bytes>) -> Ended
where
    F: Future<Output = Result<Response<grpc::Body>, Infallible>>,
{
    let start = tokio::time::Instant::now();
    let reset = move || {
        if start.elapsed() < PREMATURE {
            Ended::PrematureReset
        } else {
            Ended::Forwarded
        }
    };
    let mut fut = std::pin::pin!(fut);
    let resp = std::future::poll_fn(|cx| {
        match respond.poll_reset(cx) {
            // Dropping the call resets the backend stream. The gateway answers
            // its own refusals at once, so a call still waiting here is one
            // the backend has (or is being dialed for) — or one reset before
            // its first poll (h2 hands out streams reset while waiting to be
            // accepted): a HEADERS+RST pair, the classic flood, counts too.
            Poll::Ready(Ok(_)) => return Poll::Ready(Err(reset())),
            Poll::Ready(Err(_)) => return Poll::Ready(Err(Ended::Forwarded)),
            Poll::Pending => {}
        }
        fut.as_mut().poll(cx).map(Ok)
    })
    .await;
    let resp = match resp {
        Ok(Ok(resp)) => resp,
        Err(ended) => return ended,
    };
    let (head, mut body) = resp.into_parts();
    let forwarded = matches!(body, grpc::Body::Upstream { .. });
    let done = if forwarded {
        Ended::Forwarded
    } else {
        Ended::Local
    };
    let eos = body.is_end_stream();
    let Ok(mut send) = respond.send_response(Response::from_parts(head, ()), eos) else {
        return done;
    };
    if eos {
        return done;
    }
    let mut sent_data = false;
    let reset_by_client =
        std::future::poll_fn(|cx| send_body(&mut body, &mut send, &mut sent_data, cx)).await;
    // A client that stops a stream once it has had some of it (a watch read
    // once, a long answer cut short) is not flooding.
    if reset_by_client && !sent_data && forwarded {
        reset()
    } else {
        done
    }
}

/// The backend's response body to the client, frame by frame, as the client's
/// window allows; a backend failure mid-body resets the client's stream.
/// Ready(true) when the client reset the stream.
fn send_body(
    body: &mut grpc::Body,
    send: &mut SendStream<Bytes>,
    sent_data: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<bool> {
    // A client's reset is seen before any more of its request body moves on.
    if let Poll::Ready(r) = send.poll_reset(cx) {
        return Poll::Ready(r.is_ok());
    }
    body.poll_request(cx);
    loop {
        // A reset from here on shows as an error from poll_capacity or send_data.
        send.reserve_capacity(1);
        if send.capacity() == 0 {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                // h2 reports a reset here only as "stream gone": ask why.
                Some(Err(_)) | None => return Poll::Ready(reset_by_client(send, cx)),
            }
        }
        match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let eos = body.is_end_stream();
                    match send.send_data(data, eos) {
                        Err(_) => return Poll::Ready(reset_by_client(send, cx)),
                        Ok(()) if eos => return Poll::Ready(false),
                        Ok(()) => *sent_data = true,
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = send.send_trailers(trailers);
                    }
                    return Poll::Ready(false);
                }
            },
            Some(Err(e)) => {
                // NO_ERROR would read as a clean end; the body did not end.
                let reason = e
                    .reason()
                    .filter(|r| *r != Reason::NO_ERROR)
                    .unwrap_or(Reason::INTERNAL_ERROR);
                send.send_reset(reason);
                return Poll::Ready(false);
            }
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return Poll::Ready(false);
            }
        }
    }
}

/// Whether a stream h2 no longer lets us send on was reset by the client.
fn reset_by_client(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> bool {
    matches!(send.poll_reset(cx), Poll::Ready(Ok(_)))
}
