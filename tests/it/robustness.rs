//! Garbage, silence, HTTP/1 and half-open connections are dropped; honest clients
//! keep being served meanwhile.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::common::*;

/// Reads until the gateway closes the connection (run it under `within`:
/// a connection left open hangs here).
async fn closed_by_gateway(mut s: UnixStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue, // e.g. a TLS alert before the close
        }
    }
}

#[tokio::test]
async fn bad_clients_are_dropped_and_others_unaffected() {
    let h = Harness::start_with(Opts {
        extra: "[limits]\nhandshake_timeout = \"500ms\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut alice = h.alice();
    alice.unary(req(b"warm-up")).await.unwrap();

    // Garbage bytes.
    let mut garbage = UnixStream::connect(&h.gw_sock).await.unwrap();
    garbage
        .write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(1000))
        .await
        .unwrap();
    // A plaintext HTTP/1 request.
    let mut http1 = UnixStream::connect(&h.gw_sock).await.unwrap();
    http1
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // An h2c preface without TLS.
    let mut h2c = UnixStream::connect(&h.gw_sock).await.unwrap();
    h2c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // A client that connects and says nothing (stalled handshake).
    let silent = UnixStream::connect(&h.gw_sock).await.unwrap();
    // Half a ClientHello, then the write side closed (half-open).
    let mut half = UnixStream::connect(&h.gw_sock).await.unwrap();
    half.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .unwrap();
    half.shutdown().await.unwrap();
    // Half a ClientHello, then silence.
    let mut stalled = UnixStream::connect(&h.gw_sock).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();

    // While all of them hang around, an honest client is served.
    for i in 0..20u8 {
        alice.unary(req(&[i])).await.unwrap();
    }

    for (name, s) in [
        ("garbage", garbage),
        ("http1", http1),
        ("h2c", h2c),
        ("silent", silent),
        ("half-open", half),
        ("stalled", stalled),
    ] {
        within(name, closed_by_gateway(s)).await;
    }
    alice.unary(req(b"after")).await.unwrap();
}

/// A client that finishes TLS and then never sends the HTTP/2 preface holds a
/// connection slot: it is dropped when the handshake timeout runs out, like one
/// that never finished TLS, and the slot is free again.
#[tokio::test]
async fn silence_after_tls_is_dropped_after_the_handshake_timeout() {
    let h = Harness::start_with(Opts {
        extra: "[limits]\nmax_connections = 1\nhandshake_timeout = \"500ms\"\n".into(),
        ..Default::default()
    })
    .await;
    let cfg = h.pki.spiffe("spiffe://test.local/alice");
    // Before the connect: the gateway's deadline runs from its accept.
    let start = std::time::Instant::now();
    let mut tls = ipcgate::client::connect(&h.gw_sock, "localhost", cfg)
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    // The server's SETTINGS may come first; then the close.
    within("silent TLS client dropped", async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "closed before the timeout: {:?}",
        start.elapsed()
    );
    // The one slot is free again.
    let mut alice = h.alice();
    within("call after the silent client", alice.unary(req(b"x")))
        .await
        .unwrap();
}

/// A verified client that negotiated h2 and then speaks HTTP/1 gets no
/// answer and reaches no backend: the connection is closed at its preface.
/// (A client without ALPN h2 is refused earlier: `mtls.rs`.)
#[tokio::test]
async fn http1_over_tls_is_dropped() {
    let h = Harness::start().await;
    let cfg = h.pki.spiffe("spiffe://test.local/alice");
    let mut tls = ipcgate::client::connect(&h.gw_sock, "localhost", cfg)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let _ = tls
        .write_all(b"GET /demo.v1.Echo/Unary HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    // Closed (or reset), not left open.
    let _ = within("http1 over tls", tls.read_to_end(&mut buf)).await;
    // At most the server's own preface (SETTINGS, frame type 4) came back;
    // never an HTTP/1 answer.
    assert!(
        buf.is_empty() || (buf.len() >= 9 && buf[3] == 4),
        "got an answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(!buf.starts_with(b"HTTP/"));
    assert_eq!(h.echo.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        handshakes(&h, "ok", ""),
        1,
        "the handshake itself succeeded"
    );
}

#[tokio::test]
async fn many_failed_handshakes_do_not_block_the_accept_loop() {
    let h = Harness::start().await;
    let mut socks = Vec::new();
    for _ in 0..200 {
        socks.push(UnixStream::connect(&h.gw_sock).await.unwrap());
    }
    let mut alice = h.alice();
    within("call beside 200 idle sockets", alice.unary(req(b"x")))
        .await
        .unwrap();
    drop(socks);
    tokio::time::sleep(Duration::from_millis(50)).await;
    alice.unary(req(b"y")).await.unwrap();
}

#[tokio::test]
async fn connection_limit_holds_new_clients_until_a_slot_frees() {
    let h = Harness::start_with(Opts {
        extra: "[limits]\nmax_connections = 1\nhandshake_timeout = \"60s\"\n".into(),
        ..Default::default()
    })
    .await;
    // One silent connection takes the only slot (for the whole test: the
    // handshake timeout is far off).
    let silent = UnixStream::connect(&h.gw_sock).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut alice = h.alice();
    let call = tokio::spawn(async move { alice.unary(req(b"x")).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !call.is_finished(),
        "a call was served beyond max_connections"
    );
    // Once the silent client goes, its slot frees and the waiting one is served.
    drop(silent);
    within("call after a slot frees", call)
        .await
        .unwrap()
        .unwrap();
}

/// One length-prefixed gRPC message.
fn grpc_frame(m: &ipcgate::pb::EchoRequest) -> bytes::Bytes {
    let msg = prost::Message::encode_to_vec(m);
    let mut b = Vec::with_capacity(5 + msg.len());
    b.push(0);
    b.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    b.extend_from_slice(&msg);
    b.into()
}

/// What a call in `open_and_cancel` does.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A long server stream reset as soon as its response headers arrive (the
    /// gateway accepted it and the backend is running it).
    ResetAtHeaders,
    /// A slow unary call reset 20 ms in, before the backend answers.
    ResetBeforeAnswer,
    /// A server stream reset once its first message has arrived (a watch read
    /// once): not a flood.
    ResetAfterData,
    /// A unary call read to its end.
    Complete,
    /// A call the gateway answers itself (no route): costs the backend nothing.
    Refused,
}

/// An mTLS HTTP/2 connection as alice, driven by h2's client: its task ends
/// with the connection.
async fn alice_conn(
    h: &Harness,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let (client, conn) = h2::client::handshake(alice_tls(h).await).await.unwrap();
    (client, tokio::spawn(conn))
}

/// A gRPC request head for `path` (`pkg.Service/Method`).
fn grpc_call(path: &str) -> http::Request<()> {
    http::Request::post(format!("http://localhost/{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Opens up to `n` calls on `client`, 50 at a time, call `i` doing `kind(i)`.
/// Returns how many were opened, and whether the gateway refused a new one.
async fn run_calls(
    client: &h2::client::SendRequest<bytes::Bytes>,
    n: usize,
    kind: impl Fn(usize) -> Kind,
) -> (usize, bool) {
    let stream = grpc_frame(&ipcgate::pb::EchoRequest {
        count: 1000,
        delay_ms: 10,
        ..req(b"x")
    });
    // Reset as the headers arrive: the first message must not beat the reset
    // to the gateway (that would make the cancel not premature), even when
    // the machine is busy, so it comes late.
    let late = grpc_frame(&ipcgate::pb::EchoRequest {
        count: 1000,
        delay_ms: 500,
        ..req(b"x")
    });
    let slow = grpc_frame(&ipcgate::pb::EchoRequest {
        delay_ms: 2000,
        ..req(b"x")
    });
    let short = grpc_frame(&req(b"y"));
    let mut opened = 0;
    for wave in (0..n).step_by(50) {
        let mut calls = Vec::new();
        let mut refused = false;
        for i in wave..(wave + 50).min(n) {
            let k = kind(i);
            let (path, body) = match k {
                Kind::ResetAtHeaders => ("demo.v1.Echo/ServerStream", &late),
                Kind::ResetAfterData => ("demo.v1.Echo/ServerStream", &stream),
                Kind::ResetBeforeAnswer => ("demo.v1.Echo/Unary", &slow),
                Kind::Complete => ("demo.v1.Echo/Unary", &short),
                Kind::Refused => ("nope.v1.Nothing/Here", &short),
            };
            let sent = match client.clone().ready().await {
                Ok(mut tx) => tx.send_request(grpc_call(path), false).ok(),
                Err(_) => None,
            };
            let Some((resp, mut send)) = sent else {
                refused = true;
                break;
            };
            opened += 1;
            let _ = send.send_data(body.clone(), true);
            calls.push(async move {
                if k == Kind::ResetBeforeAnswer {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    send.send_reset(h2::Reason::CANCEL);
                    return;
                }
                let Ok(resp) = resp.await else { return };
                if k == Kind::ResetAtHeaders {
                    send.send_reset(h2::Reason::CANCEL);
                    return;
                }
                let mut body = resp.into_body();
                while let Some(Ok(d)) = body.data().await {
                    let _ = body.flow_control().release_capacity(d.len());
                    if k == Kind::ResetAfterData {
                        send.send_reset(h2::Reason::CANCEL);
                        return;
                    }
                }
                let _ = body.trailers().await;
            });
        }
        futures_util::future::join_all(calls).await;
        if refused {
            return (opened, true);
        }
    }
    (opened, false)
}

/// Opens `n` calls on a new connection (see `run_calls`). Returns how many
/// were opened before the gateway refused more, and the connection's end:
/// `None` if it is still open after the last call.
async fn open_and_cancel(
    h: &Harness,
    n: usize,
    kind: impl Fn(usize) -> Kind,
) -> (usize, Option<Result<(), h2::Error>>) {
    let (client, mut conn) = alice_conn(h).await;
    let (opened, refused) = run_calls(&client, n, kind).await;
    if refused {
        return (opened, Some(conn.await.unwrap()));
    }
    // Give a GOAWAY in flight the time to land.
    match tokio::time::timeout(Duration::from_millis(500), &mut conn).await {
        Ok(end) => (opened, Some(end.unwrap())),
        Err(_) => (opened, None),
    }
}

const RESET_FLOOD: &str = "ipcgate_connections_closed_total{reason=\"reset_flood\"}";

async fn reset_floods(h: &Harness) -> f64 {
    let (status, body) = admin(&h.pki.path("admin.sock"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    metric(&body, RESET_FLOOD).unwrap_or(0.0)
}

async fn admin_harness() -> Harness {
    Harness::start_with(Opts {
        admin: true,
        ..Default::default()
    })
    .await
}

/// A flood is refused: the connection is told to go away once 250 calls were
/// cancelled as they started, long before the client's `n`, and the backend
/// saw no more than that, the rest of their wave and at most the next wave
/// (when it came in the same read as the resets that tripped the rule).
async fn refused_flood(n: usize, kind: impl Fn(usize) -> Kind) {
    let h = admin_harness().await;
    let (opened, end) = within("the flood", open_and_cancel(&h, n, kind)).await;
    assert!(end.is_some(), "the gateway closed the connection");
    assert!(
        opened < n,
        "the gateway refused new calls ({opened} opened)"
    );
    assert_eq!(reset_floods(&h).await, 1.0);
    let backend_calls = h.echo.calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        backend_calls <= 250 + 2 * 50,
        "{backend_calls} calls reached the backend"
    );
    // Other clients are served as before.
    h.alice().unary(req(b"after")).await.unwrap();
}

#[tokio::test]
async fn rapid_reset_at_response_headers_is_refused() {
    refused_flood(700, |_| Kind::ResetAtHeaders).await;
}

#[tokio::test]
async fn rapid_reset_before_the_answer_is_refused() {
    refused_flood(700, |_| Kind::ResetBeforeAnswer).await;
}

#[tokio::test]
async fn rapid_reset_diluted_with_refused_calls_is_refused() {
    // Two calls the gateway answers itself for every reset one: they cost the
    // backend nothing, so they do not hide the resets.
    refused_flood(1200, |i| {
        if i % 3 == 0 {
            Kind::ResetAtHeaders
        } else {
            Kind::Refused
        }
    })
    .await;
}

#[tokio::test]
async fn honest_cancels_keep_the_connection() {
    let h = admin_harness().await;
    // 40% of 700 calls cancelled as they start (a client whose deadlines often
    // expire), the rest completed: under half, the connection stays.
    let (_, end) = within(
        "the calls",
        open_and_cancel(&h, 700, |i| {
            if i % 5 < 2 {
                Kind::ResetAtHeaders
            } else {
                Kind::Complete
            }
        }),
    )
    .await;
    assert!(end.is_none(), "connection closed: {end:?}");
    // Streams stopped once their first message arrived (a watch read once):
    // not premature, however many.
    let (_, end) = within(
        "the watches",
        open_and_cancel(&h, 700, |_| Kind::ResetAfterData),
    )
    .await;
    assert!(end.is_none(), "connection closed: {end:?}");
    assert_eq!(reset_floods(&h).await, 0.0);
}

/// One connection holding a server stream that would run for 20 s (read as
/// it comes), then flooding until the gateway refuses new calls. Returns the
/// held stream's task (ends when the stream does, with the instant) and the
/// instant the calls were refused.
async fn flood_holding_a_stream(
    h: &Harness,
) -> (
    tokio::task::JoinHandle<tokio::time::Instant>,
    tokio::time::Instant,
) {
    let (client, _conn) = alice_conn(h).await;
    let long = grpc_frame(&ipcgate::pb::EchoRequest {
        count: 2000,
        delay_ms: 10,
        ..req(b"x")
    });
    let mut tx = client.clone().ready().await.unwrap();
    let (resp, mut send) = tx
        .send_request(grpc_call("demo.v1.Echo/ServerStream"), false)
        .unwrap();
    send.send_data(long, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    let held = tokio::spawn(async move {
        while let Some(Ok(d)) = body.data().await {
            let _ = body.flow_control().release_capacity(d.len());
        }
        tokio::time::Instant::now()
    });
    let (_, refused) = run_calls(&client, 500, |_| Kind::ResetAtHeaders).await;
    assert!(refused, "the gateway never refused the flood");
    (held, tokio::time::Instant::now())
}

#[tokio::test]
async fn a_flooding_connection_is_closed_after_the_drain_bound() {
    let h = Harness::start_with(Opts {
        admin: true,
        extra: "[limits]\ndrain_timeout = \"300ms\"\n".into(),
        ..Default::default()
    })
    .await;
    let (held, flooded) = within("the flood", flood_holding_a_stream(&h)).await;
    assert_eq!(reset_floods(&h).await, 1.0, "counted when found");
    // The held stream's client answers every ping, so h2 finishes its GOAWAY,
    // yet the call in flight would hold the connection for its 20 s: the
    // drain bound ends it.
    let ended = within("the drain bound", held).await.unwrap();
    assert!(
        ended.duration_since(flooded) < Duration::from_secs(5),
        "the held stream ran {:?} past the flood",
        ended.duration_since(flooded)
    );
    assert_eq!(reset_floods(&h).await, 1.0, "counted once");
}

#[tokio::test]
async fn a_client_that_flooded_gets_a_strict_budget_when_it_reconnects() {
    let h = admin_harness().await;
    // The first connection floods; it is told to go away but drains its held
    // stream for up to 15 s. The client reconnects at once, as gRPC clients
    // do on a GOAWAY.
    let (held, _) = within("the flood", flood_holding_a_stream(&h)).await;
    assert_eq!(reset_floods(&h).await, 1.0);
    let before = h.echo.calls.load(std::sync::atomic::Ordering::SeqCst);
    // No new budget of 250 cancelled backend calls: ten, plus the rest of the
    // wave they came in and, at most, the next wave if it arrived in the same
    // read as their resets (refused from then on, however late the client
    // reads the GOAWAY).
    let (_, end) = within("again", open_and_cancel(&h, 200, |_| Kind::ResetAtHeaders)).await;
    assert!(end.is_some(), "the second connection was closed too");
    let again = h.echo.calls.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(again <= 10 + 2 * 50, "{again} calls reached the backend");
    assert!(
        !held.is_finished(),
        "the first connection was still draining"
    );
    assert_eq!(reset_floods(&h).await, 2.0);
}
