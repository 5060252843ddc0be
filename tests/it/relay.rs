//! The relay engine (`src/relay`) on its own: a real tonic backend on a Unix
//! socket, the relay in front of it on another (h2c: TLS is the gateway's
//! business), real HTTP/2 clients — tonic, and hand-written frames for what a
//! well-behaved client never sends.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use ipcgate::demo::EchoService;
use ipcgate::grpc;
use ipcgate::pb::echo_client::EchoClient;
use ipcgate::relay::{Decision, Dial, Host, Options, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::common::{eventually, req, seen, within, Backend};

struct TestHost {
    backend: PathBuf,
    /// Dials never complete: every call waits, holding what it was sent.
    stall: bool,
}

impl Host for TestHost {
    type Io = UnixStream;
    type Call = ();

    fn decide(&mut self, mut head: http::request::Parts) -> Decision<()> {
        if head.uri.path() == "/demo.v1.Echo/ClientStream" {
            let (resp, _) = grpc::status(grpc::Code::PermissionDenied, "not this one").into_parts();
            return Decision::Answer(resp);
        }
        let mut uri = head.uri.clone().into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        head.uri = http::Uri::from_parts(uri).unwrap();
        head.headers.insert(
            "x-forwarded-client-cert",
            http::HeaderValue::from_static("By=relay-test"),
        );
        Decision::Forward {
            backend: 0,
            head,
            call: (),
        }
    }

    fn dial(&mut self, _: usize) -> Dial<UnixStream> {
        let path = self.backend.clone();
        if self.stall {
            return Box::pin(std::future::pending());
        }
        Box::pin(async move { UnixStream::connect(path).await })
    }

    fn backend_name(&self, _: usize) -> String {
        "echo".into()
    }
}

const OPTS: Options = Options {
    max_concurrent_streams: 8,
    max_header_list_size: 16 << 10,
    backend_streams_per_connection: 100,
    keep_alive: Duration::from_secs(30),
    drain: Duration::from_secs(15),
};

struct Rig {
    dir: tempfile::TempDir,
    sock: PathBuf,
    echo: EchoService,
    backend: Option<Backend>,
}

impl Rig {
    async fn start() -> Rig {
        Rig::start_with(false).await
    }

    async fn start_with(stall: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let echo = EchoService::default();
        let backend_sock = dir.path().join("echo.sock");
        let backend = Backend::start(&backend_sock, echo.clone(), None);
        let sock = dir.path().join("relay.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let host = TestHost {
                    backend: backend_sock.clone(),
                    stall,
                };
                tokio::spawn(async move {
                    if ipcgate::relay::read_preface(&mut s).await.is_ok() {
                        let _ = Relay::new(s, host, OPTS).await;
                    }
                });
            }
        });
        Rig {
            dir,
            sock,
            echo,
            backend: Some(backend),
        }
    }

    fn client(&self) -> EchoClient<Channel> {
        let sock = self.sock.clone();
        let ch =
            Endpoint::from_static("http://localhost").connect_with_connector_lazy(
                tower::service_fn(move |_: http::Uri| {
                    let sock = sock.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(sock).await?))
                    }
                }),
            );
        EchoClient::new(ch)
    }

    async fn raw(&self) -> Raw {
        let mut s = UnixStream::connect(&self.sock).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
        Raw { s, buf: Vec::new() }
    }
}

#[tokio::test]
async fn unary_metadata_and_every_streaming_kind_pass_through() {
    let rig = Rig::start().await;
    let mut c = rig.client();
    let mut r = tonic::Request::new(req(b"hello"));
    r.metadata_mut().insert("x-custom", "kept".parse().unwrap());
    let resp = within("unary", c.unary(r)).await.unwrap();
    assert_eq!(
        resp.metadata().get("x-echo-header").unwrap(),
        "from-backend"
    );
    let reply = resp.into_inner();
    assert_eq!(reply.payload, b"hello");
    assert_eq!(seen(&reply, "x-custom"), ["kept"]);
    assert_eq!(seen(&reply, "x-forwarded-client-cert"), ["By=relay-test"]);

    // 200 messages of 64 KiB against tonic's 64 KiB default windows: the
    // relay may only send what the client's windows allow, and must pass the
    // client's credit on to the backend to get the rest.
    let mut big = req(&vec![7u8; 64 << 10]);
    big.count = 200;
    let mut stream = within("server stream", c.server_stream(big))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = within("next message", stream.next()).await {
        let m = m.unwrap();
        assert_eq!((m.seq, m.payload.len()), (n, 64 << 10));
        n += 1;
    }
    assert_eq!(n, 200);

    // Bidi: each reply before the next request.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = within(
        "bidi",
        c.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .into_inner();
    for i in 0..20u8 {
        tx.send(req(&[i; 100])).await.unwrap();
        let m = within("bidi reply", replies.next()).await.unwrap().unwrap();
        assert_eq!(m.payload, [i; 100]);
    }
    drop(tx);
    assert!(within("bidi end", replies.next()).await.is_none());
}

#[tokio::test]
async fn an_answered_call_never_reaches_the_backend() {
    let rig = Rig::start().await;
    let mut c = rig.client();
    let calls = rig.echo.calls.load(Ordering::SeqCst);
    let e = within(
        "client stream",
        c.client_stream(futures_util::stream::iter(vec![req(b"a"), req(b"b")])),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, "not this one")
    );
    assert_eq!(rig.echo.calls.load(Ordering::SeqCst), calls);
    // The connection goes on.
    within("unary", c.unary(req(b"after"))).await.unwrap();
}

#[tokio::test]
async fn a_client_cancel_reaches_the_backend() {
    let rig = Rig::start().await;
    let mut c = rig.client();
    let mut slow = req(b"x");
    slow.count = 1000;
    slow.delay_ms = 50;
    let mut stream = within("server stream", c.server_stream(slow))
        .await
        .unwrap()
        .into_inner();
    within("first message", stream.next())
        .await
        .unwrap()
        .unwrap();
    drop(stream);
    let echo = &rig.echo;
    eventually("backend saw the cancel", || {
        echo.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    within("unary", c.unary(req(b"after"))).await.unwrap();
}

#[tokio::test]
async fn a_backend_that_is_down_is_unavailable_and_back_when_it_is() {
    let mut rig = Rig::start().await;
    rig.backend = None; // stopped: socket gone
    let mut c = rig.client();
    let e = within("unary", c.unary(req(b"x"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("backend echo unavailable"), "{e:?}");
    rig.backend = Some(Backend::start(
        &rig.dir.path().join("echo.sock"),
        rig.echo.clone(),
        None,
    ));
    within("unary", c.unary(req(b"y"))).await.unwrap();
}

#[tokio::test]
async fn backend_max_concurrent_streams_queues_calls_instead_of_failing_them() {
    let mut rig = Rig::start().await;
    // A backend that takes 2 calls at a time.
    rig.backend = None;
    rig.backend = Some(Backend::start(
        &rig.dir.path().join("echo.sock"),
        rig.echo.clone(),
        Some(2),
    ));
    let c = rig.client();
    let mut calls = Vec::new();
    for i in 0..6u8 {
        let mut c = c.clone();
        let mut r = req(&[i]);
        r.delay_ms = 100;
        calls.push(tokio::spawn(async move { c.unary(r).await }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let reply = within("queued call", call).await.unwrap().unwrap();
        assert_eq!(reply.into_inner().payload, [u8::try_from(i).unwrap()]);
    }
}

// --- Hand-written frames: what a well-behaved client never sends. ---

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A request header block (static-table indices, literals never indexed).
fn block(path: &[u8], extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    if !path.is_empty() {
        b.push(0x04); // :path, literal never indexed
        b.push(u8::try_from(path.len()).unwrap());
        b.extend_from_slice(path);
    }
    b.extend_from_slice(&[0x01, 9]); // :authority
    b.extend_from_slice(b"localhost");
    let mut fields: Vec<(&[u8], &[u8])> =
        vec![(b"content-type", b"application/grpc"), (b"te", b"trailers")];
    fields.extend_from_slice(extra);
    for (n, v) in fields {
        b.push(0x00);
        b.push(u8::try_from(n.len()).unwrap());
        b.extend_from_slice(n);
        b.push(u8::try_from(v.len()).unwrap());
        b.extend_from_slice(v);
    }
    b
}

const UNARY: &[u8] = b"/demo.v1.Echo/Unary";
/// An empty gRPC message.
const EMPTY: [u8; 5] = [0; 5];

struct Raw {
    s: UnixStream,
    buf: Vec<u8>,
}

#[derive(Debug, PartialEq)]
enum Seen {
    /// HEADERS on the stream (an answer).
    Answered,
    Reset(u32),
    /// GOAWAY: the error code.
    GoAway(u32),
    Closed,
}

impl Raw {
    async fn send(&mut self, f: Vec<u8>) {
        self.s.write_all(&f).await.unwrap();
    }

    /// The next frame: (kind, flags, stream, payload); SETTINGS acknowledged.
    async fn next(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let (kind, flags) = (self.buf[3], self.buf[4]);
                    let id = u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    let payload: Vec<u8> = self.buf.drain(..9 + len).skip(9).collect();
                    if kind == 0x4 && flags & 1 == 0 {
                        let _ = self.s.write_all(&frame(0x4, 1, 0, &[])).await;
                    }
                    return Some((kind, flags, id, payload));
                }
            }
            let mut chunk = [0u8; 16 << 10];
            match self.s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// What became of `stream`, or of the connection: `Answered` once its
    /// answer is complete (a header block ending the stream).
    async fn outcome(&mut self, stream: u32) -> Seen {
        loop {
            match self.next().await {
                None => return Seen::Closed,
                Some((0x1, flags, id, _)) if id == stream && flags & 0x1 != 0 => {
                    return Seen::Answered
                }
                Some((0x3, _, id, p)) if id == stream => {
                    return Seen::Reset(u32::from_be_bytes(p[..4].try_into().unwrap()))
                }
                Some((0x7, _, _, p)) => {
                    return Seen::GoAway(u32::from_be_bytes(p[4..8].try_into().unwrap()))
                }
                Some(_) => {}
            }
        }
    }
}

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

#[tokio::test]
async fn a_well_formed_raw_call_is_answered() {
    // The baseline for the hostile cases below: the same frames, correct.
    let rig = Rig::start().await;
    let mut raw = rig.raw().await;
    raw.send(frame(0x1, 0x4, 1, &block(UNARY, &[]))).await;
    raw.send(frame(0x0, 0x1, 1, &EMPTY)).await;
    assert_eq!(within("answer", raw.outcome(1)).await, Seen::Answered);
}

#[tokio::test]
async fn protocol_violations_are_refused() {
    let rig = Rig::start().await;
    let calls = rig.echo.calls.load(Ordering::SeqCst);

    // A client may only open odd stream ids.
    let mut raw = rig.raw().await;
    raw.send(frame(0x1, 0x5, 2, &block(UNARY, &[]))).await;
    assert_eq!(
        within("even id", raw.outcome(2)).await,
        Seen::GoAway(PROTOCOL_ERROR)
    );

    // DATA on a stream never opened.
    let mut raw = rig.raw().await;
    raw.send(frame(0x0, 0x1, 5, &EMPTY)).await;
    assert_eq!(
        within("idle stream", raw.outcome(5)).await,
        Seen::GoAway(PROTOCOL_ERROR)
    );

    // A zero WINDOW_UPDATE on the connection.
    let mut raw = rig.raw().await;
    raw.send(frame(0x8, 0, 0, &0u32.to_be_bytes())).await;
    assert_eq!(
        within("zero update", raw.outcome(0)).await,
        Seen::GoAway(PROTOCOL_ERROR)
    );

    // A request without :path is malformed: that stream is reset.
    let mut raw = rig.raw().await;
    raw.send(frame(0x1, 0x5, 1, &block(b"", &[]))).await;
    assert_eq!(
        within("no path", raw.outcome(1)).await,
        Seen::Reset(PROTOCOL_ERROR)
    );

    // Connection-specific headers are malformed in HTTP/2 (h2's codec).
    let mut raw = rig.raw().await;
    raw.send(frame(
        0x1,
        0x5,
        1,
        &block(UNARY, &[(b"connection", b"close")]),
    ))
    .await;
    assert_eq!(
        within("connection header", raw.outcome(1)).await,
        Seen::Reset(PROTOCOL_ERROR)
    );

    // DATA that disagrees with content-length.
    let mut raw = rig.raw().await;
    raw.send(frame(
        0x1,
        0x4,
        1,
        &block(UNARY, &[(b"content-length", b"9")]),
    ))
    .await;
    raw.send(frame(0x0, 0x1, 1, &EMPTY)).await;
    assert_eq!(
        within("content-length", raw.outcome(1)).await,
        Seen::Reset(PROTOCOL_ERROR)
    );

    assert_eq!(
        rig.echo.calls.load(Ordering::SeqCst),
        calls,
        "no malformed call reached the backend"
    );
}

#[tokio::test]
async fn a_client_that_overruns_its_windows_is_cut_off() {
    // The backend never answers the dial, so the relay holds every byte it
    // is sent: exactly what its windows must bound. 1 MiB per stream is
    // offered; 1 MiB + 1 byte on one stream is over it.
    let rig = Rig::start_with(true).await;
    let mut raw = rig.raw().await;
    raw.send(frame(0x1, 0x4, 1, &block(UNARY, &[]))).await;
    let chunk = vec![0u8; 16 << 10];
    for _ in 0..64 {
        raw.send(frame(0x0, 0, 1, &chunk)).await;
    }
    raw.send(frame(0x0, 0, 1, &[0])).await;
    assert_eq!(
        within("stream overrun", raw.outcome(1)).await,
        Seen::Reset(FLOW_CONTROL_ERROR)
    );
}

#[tokio::test]
async fn streams_past_the_concurrency_limit_are_refused() {
    let rig = Rig::start().await;
    let mut raw = rig.raw().await;
    // Eight calls held open (no END_STREAM), then a ninth.
    for i in 0..8u32 {
        raw.send(frame(0x1, 0x4, 1 + 2 * i, &block(UNARY, &[])))
            .await;
    }
    raw.send(frame(0x1, 0x4, 17, &block(UNARY, &[]))).await;
    assert_eq!(
        within("ninth", raw.outcome(17)).await,
        Seen::Reset(REFUSED_STREAM)
    );
    // Ending one frees a slot.
    raw.send(frame(0x0, 0x1, 1, &EMPTY)).await;
    assert_eq!(within("first", raw.outcome(1)).await, Seen::Answered);
    raw.send(frame(0x1, 0x4, 19, &block(UNARY, &[]))).await;
    raw.send(frame(0x0, 0x1, 19, &EMPTY)).await;
    assert_eq!(within("after", raw.outcome(19)).await, Seen::Answered);
}

#[tokio::test]
async fn a_backend_connection_is_reused_while_busy_and_closed_when_idle() {
    let rig = Rig::start().await;
    let mut c = rig.client();
    let conns = || rig.echo.connections.load(Ordering::SeqCst);
    for i in 0..50u8 {
        within("call", c.unary(req(&[i]))).await.unwrap();
    }
    assert_eq!(conns(), 1, "one backend connection for a busy client");
    // Idle past the relay's backend idle timeout (250 ms): the backend
    // connection is dropped, and the next call dials a new one.
    tokio::time::sleep(Duration::from_millis(800)).await;
    within("call after idle", c.unary(req(b"again")))
        .await
        .unwrap();
    assert_eq!(conns(), 2);
}
