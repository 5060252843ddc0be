//! Forwarding to backends: pooled HTTP/2 (h2c) connections over Unix sockets or
//! TCP, bodies and trailers moved frame by frame, never decoded.
//!
//! Cancellation needs no code here: when the client resets its stream, hyper drops
//! the response future and body, and dropping them resets the backend stream with
//! CANCEL. `grpc-timeout` is an ordinary header and passes through unchanged.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::histogram::Histogram;
use tower::Service;
use tracing::{debug, warn};

use crate::config;
use crate::conns::Activity;
use crate::grpc::{self, Code, InFlight};
use crate::identity::Peer;
use crate::route::Router;

/// The identity headers the gateway owns. Whatever a client sends under these
/// names is removed before the gateway's own values are set (Envoy's
/// SANITIZE_SET), so a backend can trust them.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub const PEER_CRED: HeaderName = HeaderName::from_static("x-ipcgate-peer");

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-stream receive window on backend connections: what one call may have
/// buffered in the gateway while its client is not reading.
const STREAM_WINDOW: u32 = 1 << 20;
/// Connections one backend pool may hold.
const MAX_CONNS_PER_BACKEND: usize = 64;
/// HTTP/2's largest window (2^31 - 1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

struct Conn {
    tx: SendRequest<RequestBody>,
    in_flight: Arc<AtomicUsize>,
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

    /// The least busy live connection with room for another call, counted as busy
    /// with this call before the lock is released.
    fn pick_ready(&self) -> Option<(SendRequest<RequestBody>, InFlight)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| !c.tx.is_closed());
        // At the connection cap, the least busy connection takes the call even
        // when full (HTTP/2 queues it) rather than the pool growing without bound.
        let at_cap = conns.len() >= MAX_CONNS_PER_BACKEND;
        conns
            .iter()
            .filter(|c| at_cap || c.in_flight.load(Ordering::Relaxed) < self.max_in_flight)
            .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))
            .map(|c| (c.tx.clone(), InFlight::new(&c.in_flight)))
    }

    async fn pick(&self) -> io::Result<(SendRequest<RequestBody>, InFlight)> {
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
        let picked = (conn.tx.clone(), InFlight::new(&conn.in_flight));
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        Ok(picked)
    }

    async fn dial(&self) -> io::Result<Conn> {
        let tx = match &self.addr {
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
                s.set_nodelay(true)?;
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
        Ok(Conn {
            tx,
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Sends one call to the backend and returns its response, or the gRPC error
    /// that says why it could not be delivered.
    pub async fn forward(&self, req: Request<Incoming>) -> Response<grpc::Body> {
        let mut req = req.map(RequestBody);
        let uri = {
            let parts = req.uri().clone().into_parts();
            let mut p = http::uri::Parts::default();
            p.scheme = Some(Scheme::HTTP);
            p.authority = Some(parts.authority.unwrap_or_else(|| self.authority.clone()));
            p.path_and_query = parts.path_and_query;
            Uri::from_parts(p)
        };
        match uri {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => return grpc::status(Code::Internal, "cannot build the backend URI"),
        }
        // A call is retried only when hyper hands it back unsent (the pooled
        // connection closed under us); once sent, it belongs to the backend.
        for _ in 0..3 {
            let (mut tx, guard) = match self.pick().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(backend = %self.addr, error = %e, "backend unavailable");
                    return grpc::status(
                        Code::Unavailable,
                        &format!("backend {} unavailable: {e}", self.addr),
                    );
                }
            };
            let start = std::time::Instant::now();
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.latency.observe(start.elapsed().as_secs_f64());
                    return resp.map(|body| grpc::Body::Upstream {
                        body,
                        _in_flight: Some(guard),
                        _call: None,
                    });
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => {
                        req = r;
                        continue;
                    }
                    None => return upstream_error(&self.addr, &e.into_error()),
                },
            }
        }
        grpc::status(
            Code::Unavailable,
            &format!("backend {} keeps closing connections", self.addr),
        )
    }
}

async fn handshake<T>(io: T, window: u32, streams: usize) -> io::Result<SendRequest<RequestBody>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    // The connection window covers every stream's window: a client that stops
    // reading its responses can only fill its own streams' windows, never stall
    // the other calls sharing this connection.
    let conn_window = window.saturating_mul(u32::try_from(streams).unwrap_or(u32::MAX));
    let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(window)
        .initial_connection_window_size(conn_window.min(MAX_WINDOW))
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "backend connection closed");
        }
    });
    Ok(tx)
}

/// gRPC's mapping of HTTP/2 reset codes (doc/PROTOCOL-HTTP2.md); a connection that
/// failed without a reset is UNAVAILABLE.
fn upstream_error(addr: &config::Backend, e: &hyper::Error) -> Response<grpc::Body> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut reason = None;
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            reason = h.reason();
            break;
        }
        src = s.source();
    }
    let code = match reason {
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::REFUSED_STREAM) | None => Code::Unavailable,
        Some(_) => Code::Internal,
    };
    debug!(backend = %addr, error = %e, "backend call failed");
    grpc::status(code, &format!("backend {addr}: {e}"))
}

/// The innermost service: identity headers, route, forward.
#[derive(Clone)]
pub struct Proxy {
    router: Arc<Router>,
    peer: Arc<Peer>,
    activity: Arc<Activity>,
}

impl Proxy {
    pub fn new(router: Arc<Router>, peer: Arc<Peer>, activity: Arc<Activity>) -> Proxy {
        Proxy {
            router,
            peer,
            activity,
        }
    }
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<grpc::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<grpc::Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let service = crate::path::split(req.uri().path())
            .map(|(s, _)| s)
            .unwrap_or("");
        let Some(backend) = self.router.route(service).cloned() else {
            let resp = grpc::status(
                Code::Unimplemented,
                &format!("no route for service {service:?}"),
            );
            return Box::pin(async move { Ok(resp) });
        };
        let h = req.headers_mut();
        h.remove(&XFCC);
        h.remove(&PEER_CRED);
        h.insert(XFCC, self.peer.xfcc().clone());
        if let Some(v) = self.peer.cred_header() {
            h.insert(PEER_CRED, v.clone());
        }
        let call = self.activity.call();
        Box::pin(async move {
            let mut resp = backend.forward(req).await;
            if let grpc::Body::Upstream { _call, .. } = resp.body_mut() {
                *_call = Some(call);
            }
            Ok(resp)
        })
    }
}

/// The client's request body on its way to the backend, minus any trailers.
///
/// gRPC clients never send request trailers, and some servers (grpc-go) answer a
/// second HEADERS frame on a stream by closing the whole connection with
/// PROTOCOL_ERROR, which would cut every other client's calls sharing it.
pub struct RequestBody(Incoming);

impl http_body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        loop {
            match Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) if f.is_trailers() => continue,
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}
