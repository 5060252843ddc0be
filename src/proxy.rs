//! Backends: where a call goes and how a backend is reached.
//!
//! The gateway's data path (`crate::relay`) asks [`Route`] where a call goes
//! (and lets it set the identity headers) and dials with [`Backend::connect`].
//! The client sidecar forwards through [`Backend::forward`]: pooled HTTP/2
//! connections on h2's client, bodies and trailers moved frame by frame, never
//! decoded; a call costs no task of its own (the request body is moved by a
//! [`Pump`] polled with the response), and a client's reset drops the response
//! future, which resets the backend stream with CANCEL. `grpc-timeout` is an
//! ordinary header and passes through unchanged either way.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use prometheus_client::metrics::histogram::Histogram;
use tower::Service;
use tracing::{debug, warn};

use crate::config;
use crate::grpc::{self, Code, InFlight};
use crate::identity::Peer;
use crate::route::Router;

/// The identity headers the gateway owns. Whatever a client sends under these
/// names is removed before the gateway's own values are set (Envoy's
/// SANITIZE_SET), so a backend can trust them.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub const PEER_CRED: HeaderName = HeaderName::from_static("x-ipcgate-peer");

/// Whether a client's header would pass for one of the identity headers:
/// the name itself, or it spelled with `_` for `-`, which CGI-style servers
/// (and frameworks behind them) read as the same header. (Names arrive in
/// lowercase: the relay refuses any other.)
pub fn is_identity_name(name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    [&XFCC, &PEER_CRED].iter().any(|id| {
        let id = id.as_str().as_bytes();
        n.len() == id.len()
            && n.iter()
                .zip(id)
                .all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
    })
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-stream receive window on backend connections: what one call may have
/// buffered in the gateway while its client is not reading.
const STREAM_WINDOW: u32 = 1 << 20;
/// Connections one backend pool may hold.
const MAX_CONNS_PER_BACKEND: usize = 64;
/// Largest response header block taken from a backend (hyper's default).
const MAX_HEADER_LIST: u32 = 16 << 10;
/// HTTP/2's largest window (2^31 - 1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// A pooled connection picked for one call: its sender, the call counted in
/// flight on it, and its closed flag.
type Picked = (SendRequest<Bytes>, InFlight, Arc<AtomicBool>);

struct Conn {
    tx: SendRequest<Bytes>,
    in_flight: Arc<AtomicUsize>,
    /// Set by the connection's task when it ends.
    closed: Arc<AtomicBool>,
}

/// Idle time before a backend TCP connection is probed, and between probes.
pub const BACKEND_KEEPALIVE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(10));

/// A TCP backend connection: Nagle off (gRPC writes whole frames and waits
/// for answers), and TCP keep-alive, so calls on a backend whose host
/// vanished without a FIN end (the kernel fails the socket after the probes)
/// instead of waiting for ever; the relay pings only its clients.
///
/// # Errors
/// The socket options cannot be set.
pub fn tcp_backend(s: &tokio::net::TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let (idle, interval) = BACKEND_KEEPALIVE;
    socket2::SockRef::from(s).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval),
    )
}

/// One backend and its connection pool.
pub struct Backend {
    addr: config::Backend,
    /// Dial with mutual TLS (the client sidecar's way to the gateway).
    tls: Option<crate::client::Target>,
    /// Time to the backend's response headers.
    latency: Histogram,
    authority: Authority,
    max_in_flight: usize,
    conns: Mutex<Vec<Conn>>,
    /// Serializes dialing so a burst of calls on a cold pool opens one connection,
    /// not one per call.
    dialing: tokio::sync::Mutex<()>,
}

impl Backend {
    pub fn new(addr: config::Backend, max_in_flight: usize, latency: Histogram) -> Backend {
        let authority = match &addr {
            config::Backend::Tcp(a) => a
                .parse()
                .unwrap_or_else(|_| Authority::from_static("localhost")),
            config::Backend::Unix(_) | config::Backend::Pipe(_) => {
                Authority::from_static("localhost")
            }
        };
        Backend {
            addr,
            tls: None,
            latency,
            authority,
            max_in_flight,
            conns: Mutex::new(Vec::new()),
            dialing: tokio::sync::Mutex::new(()),
        }
    }

    /// A backend reached over a Unix socket with mutual TLS, its server
    /// verified as the target says.
    pub fn tls(target: crate::client::Target, max_in_flight: usize, latency: Histogram) -> Backend {
        let mut b = Backend::new(
            config::Backend::Unix(target.socket.clone()),
            max_in_flight,
            latency,
        );
        b.tls = Some(target);
        b
    }

    pub fn addr(&self) -> &config::Backend {
        &self.addr
    }

    /// Time to the backend's response headers.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// A new connection to the backend, not yet speaking HTTP/2 (the relay's
    /// backend connections; see `crate::relay`).
    ///
    /// # Errors
    /// The backend could not be reached within the connect timeout.
    pub async fn connect(&self) -> io::Result<BoxIo> {
        let connect = async {
            let io: BoxIo = match &self.addr {
                _ if self.tls.is_some() => {
                    let t = self
                        .tls
                        .as_ref()
                        .ok_or_else(|| io::Error::other("no TLS target"))?;
                    Box::new(crate::client::connect_to(t).await?)
                }
                #[cfg(unix)]
                config::Backend::Unix(path) => {
                    Box::new(tokio::net::UnixStream::connect(path).await?)
                }
                #[cfg(windows)]
                config::Backend::Pipe(name) => Box::new(crate::listen::connect_pipe(name).await?),
                config::Backend::Tcp(a) => {
                    let s = tokio::net::TcpStream::connect(a.as_str()).await?;
                    tcp_backend(&s)?;
                    Box::new(s)
                }
                // Config::parse refuses the other platform's kind.
                #[allow(unreachable_patterns)]
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("{other}: not supported on this platform"),
                    ))
                }
            };
            Ok(io)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// The least busy live connection with room for another call, counted as busy
    /// with this call before the lock is released.
    fn pick_ready(&self) -> Option<Picked> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| !c.closed.load(Ordering::Relaxed));
        // At the connection cap, the least busy connection takes the call even
        // when full (HTTP/2 queues it) rather than the pool growing without bound.
        let at_cap = conns.len() >= MAX_CONNS_PER_BACKEND;
        conns
            .iter()
            .filter(|c| at_cap || c.in_flight.load(Ordering::Relaxed) < self.max_in_flight)
            .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))
            .map(|c| (c.tx.clone(), InFlight::new(&c.in_flight), c.closed.clone()))
    }

    async fn pick(&self) -> io::Result<Picked> {
        if let Some(c) = self.pick_ready() {
            return Ok(c);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(c) = self.pick_ready() {
            return Ok(c);
        }
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.dial())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let picked = (
            conn.tx.clone(),
            InFlight::new(&conn.in_flight),
            conn.closed.clone(),
        );
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        Ok(picked)
    }

    async fn dial(&self) -> io::Result<Conn> {
        let conn = match &self.addr {
            _ if self.tls.is_some() => {
                let t = self
                    .tls
                    .as_ref()
                    .ok_or_else(|| io::Error::other("no TLS target"))?;
                let s = crate::client::connect_to(t).await?;
                handshake(s, STREAM_WINDOW, self.max_in_flight).await?
            }
            #[cfg(unix)]
            config::Backend::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path).await?;
                handshake(s, STREAM_WINDOW, self.max_in_flight).await?
            }
            #[cfg(windows)]
            config::Backend::Pipe(name) => {
                let s = crate::listen::connect_pipe(name).await?;
                handshake(s, STREAM_WINDOW, self.max_in_flight).await?
            }
            config::Backend::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a.as_str()).await?;
                tcp_backend(&s)?;
                handshake(s, STREAM_WINDOW, self.max_in_flight).await?
            }
            // Config::parse refuses the other platform's kind.
            #[allow(unreachable_patterns)]
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{other}: not supported on this platform"),
                ))
            }
        };
        debug!(backend = %self.addr, "backend connection opened");
        Ok(conn)
    }

    /// Sends one call to the backend and returns its response, or the gRPC error
    /// that says why it could not be delivered.
    pub async fn forward(&self, req: Request<RecvStream>) -> Response<grpc::Body> {
        let (mut parts, body) = req.into_parts();
        let uri = {
            let p = std::mem::take(&mut parts.uri).into_parts();
            let mut u = http::uri::Parts::default();
            u.scheme = Some(Scheme::HTTP);
            u.authority = Some(p.authority.unwrap_or_else(|| self.authority.clone()));
            u.path_and_query = p.path_and_query;
            Uri::from_parts(u)
        };
        match uri {
            Ok(u) => parts.uri = u,
            Err(_) => return grpc::status(Code::Internal, "cannot build the backend URI"),
        }
        // A call is retried only on a pooled connection found closed before it
        // was sent; once sent, it belongs to the backend.
        for _ in 0..3 {
            let (tx, guard, closed) = match self.pick().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(backend = %self.addr, error = %e, "backend unavailable");
                    return grpc::status(
                        Code::Unavailable,
                        &format!("backend {} unavailable: {e}", self.addr),
                    );
                }
            };
            let Ok(mut tx) = tx.ready().await else {
                // Gone away (GOAWAY) or failed: its task may run on for a
                // while to finish its calls, but it takes no new ones, so the
                // retry must not pick it again.
                closed.store(true, Ordering::Relaxed);
                continue;
            };
            let start = std::time::Instant::now();
            let eos = body.is_end_stream();
            let (mut response, send) = match tx.send_request(Request::from_parts(parts, ()), eos) {
                Ok(r) => r,
                Err(e) => return upstream_error(&self.addr, &e),
            };
            let mut pump = (!eos).then(|| Pump {
                recv: body,
                send,
                overdraft: 0,
            });
            let resp = std::future::poll_fn(|cx| {
                if pump.as_mut().is_some_and(|p| p.poll(cx).is_ready()) {
                    pump = None;
                }
                Pin::new(&mut response).poll(cx)
            })
            .await;
            return match resp {
                Ok(resp) => {
                    self.latency.observe(start.elapsed().as_secs_f64());
                    resp.map(|body| grpc::Body::Upstream {
                        body,
                        request: pump,
                        _in_flight: Some(guard),
                    })
                }
                Err(e) => upstream_error(&self.addr, &e),
            };
        }
        grpc::status(
            Code::Unavailable,
            &format!("backend {} keeps closing connections", self.addr),
        )
    }
}

async fn handshake<T>(io: T, window: u32, streams: usize) -> io::Result<Conn>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    // The connection window covers every stream's window: a client that stops
    // reading its responses can only fill its own streams' windows, never stall
    // the other calls sharing this connection.
    let conn_window = window.saturating_mul(u32::try_from(streams).unwrap_or(u32::MAX));
    // Requests queued in one wake-up of this connection's task go out in one
    // write (see `coalesce`).
    let (io, flusher) = crate::coalesce::new(io);
    let handshake = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(conn_window.min(MAX_WINDOW))
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(1 << 20)
        .enable_push(false)
        .handshake::<_, Bytes>(io);
    tokio::pin!(handshake);
    let (tx, mut conn) = std::future::poll_fn(|cx| {
        let r = handshake.as_mut().poll(cx);
        let _ = flusher.poll_flush(cx);
        r
    })
    .await
    .map_err(io::Error::other)?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    tokio::spawn(async move {
        let r = std::future::poll_fn(|cx| {
            let r = Pin::new(&mut conn).poll(cx);
            let _ = flusher.poll_flush(cx);
            r
        })
        .await;
        if let Err(e) = r {
            debug!(error = %e, "backend connection closed");
        }
        ended.store(true, Ordering::Relaxed);
    });
    Ok(Conn {
        tx,
        in_flight: Arc::new(AtomicUsize::new(0)),
        closed,
    })
}

/// gRPC's mapping of HTTP/2 reset codes (doc/PROTOCOL-HTTP2.md); a connection that
/// failed without a reset is UNAVAILABLE.
fn upstream_error(addr: &config::Backend, e: &h2::Error) -> Response<grpc::Body> {
    let code = match e.reason() {
        _ if e.is_go_away() || e.is_io() => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::REFUSED_STREAM) | None => Code::Unavailable,
        Some(_) => Code::Internal,
    };
    debug!(backend = %addr, error = %e, "backend call failed");
    grpc::status(code, &format!("backend {addr}: {e}"))
}

/// A byte stream to a backend, whatever carries it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// The innermost service of the relay's data path: the route, and the
/// identity headers. It forwards nothing itself: its answer hands the call
/// back to the relay (`grpc::Body::Forward`), or refuses it (no route).
#[derive(Clone)]
pub struct Route {
    router: Arc<Router>,
    /// The identity headers: the connection's XFCC, and the socket peer's
    /// credentials when it gave any.
    identity: crate::relay::Added,
}

impl Route {
    pub fn new(router: Arc<Router>, peer: &Peer) -> Route {
        let mut identity = vec![(XFCC, peer.xfcc().clone())];
        if let Some(v) = peer.cred_header() {
            identity.push((PEER_CRED, v.clone()));
        }
        Route {
            router,
            identity: identity.into(),
        }
    }
}

impl<B> Service<Request<B>> for Route {
    type Response = Response<grpc::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<grpc::Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let service = crate::path::split(req.uri().path())
            .map(|(s, _)| s)
            .unwrap_or("");
        let Some(backend) = self.router.route_index(service) else {
            return std::future::ready(Ok(grpc::status(
                Code::Unimplemented,
                &format!("no route for service {service:?}"),
            )));
        };
        let (mut head, _) = req.into_parts();
        // The backend is reached over h2c (or its own TLS, not the client's).
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        if uri.authority.is_none() {
            if let Some(b) = self.router.backend(backend) {
                uri.authority = Some(b.authority.clone());
            }
        }
        match Uri::from_parts(uri) {
            Ok(u) => head.uri = u,
            Err(_) => {
                return std::future::ready(Ok(grpc::status(
                    Code::Internal,
                    "cannot build the backend URI",
                )))
            }
        }
        // Written after the head's own fields. Whatever the client sent under
        // these names is gone already: the gateway strips them before the
        // policy reads any header.
        std::future::ready(Ok(Response::new(grpc::Body::Forward(Box::new(
            grpc::Forward {
                backend,
                head,
                added: self.identity.clone(),
            },
        )))))
    }
}

/// The client's request body on its way to the backend, minus any trailers.
///
/// gRPC clients never send request trailers, and some servers (grpc-go) answer a
/// second HEADERS frame on a stream by closing the whole connection with
/// PROTOCOL_ERROR, which would cut every other client's calls sharing it.
///
/// Flow control is end to end: a frame's window is released to the client only
/// once it is handed to the backend stream, and the next frame is taken only
/// when that stream has room, so the gateway holds little beyond what the
/// backend accepted: one frame, or up to `OVERDRAFT` (at most 16 frames)
/// while a new stream waits for its first window.
pub struct Pump {
    recv: RecvStream,
    send: SendStream<Bytes>,
    /// Bytes handed to h2 beyond the capacity it had granted.
    overdraft: usize,
}

/// What a request may queue before the backend grants the stream any window:
/// h2 grants none until the stream's HEADERS are written, and without this the
/// first DATA frame would wait for that, costing a second write and a second
/// wake-up of the backend on every call.
const OVERDRAFT: usize = 16 << 10;

impl Pump {
    /// Ready when the body is through, or the stream is over on either side.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.send.poll_reset(cx).is_ready() {
                // The backend reset its stream: the response says why.
                return Poll::Ready(());
            }
            // One byte asks h2 for room; it queues the whole next frame and sends
            // it as the backend's window allows.
            self.send.reserve_capacity(1);
            let capacity = self.send.capacity();
            if capacity > 0 {
                self.overdraft = 0;
            } else if self.overdraft >= OVERDRAFT {
                match self.send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let n = data.len();
                    // Each frame counts at least 1 KiB: h2 keeps an entry per
                    // queued frame, so many tiny frames must not slip under.
                    self.overdraft += n.max(1 << 10).saturating_sub(capacity);
                    let eos = self.recv.is_end_stream();
                    if self.send.send_data(data, eos).is_err() {
                        return Poll::Ready(());
                    }
                    let _ = self.recv.flow_control().release_capacity(n);
                    if eos {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let reason = e
                        .reason()
                        .filter(|r| *r != h2::Reason::NO_ERROR)
                        .unwrap_or(h2::Reason::CANCEL);
                    self.send.send_reset(reason);
                    return Poll::Ready(());
                }
                // The end, perhaps with trailers, which are dropped.
                Poll::Ready(None) => {
                    let _ = self.send.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names_are_found_in_either_spelling() {
        for (name, is) in [
            ("x-forwarded-client-cert", true),
            ("x_forwarded_client_cert", true),
            ("x-forwarded_client-cert", true),
            ("x-ipcgate-peer", true),
            ("x_ipcgate_peer", true),
            ("x-forwarded-client-certs", false),
            ("x-forwarded-client-cer", false),
            ("x-ipcgate_peers", false),
            ("content-type", false),
            ("te", false),
        ] {
            let n = HeaderName::from_static(name);
            assert_eq!(is_identity_name(&n), is, "{name}");
        }
    }
}
