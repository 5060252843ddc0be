//! Garbage, silence, HTTP/1 and half-open connections are dropped; honest clients
//! keep being served meanwhile.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::common::*;

/// Reads until the gateway closes the connection; true if it did.
async fn closed_by_gateway(mut s: UnixStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
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
        assert!(within(name, closed_by_gateway(s)).await, "{name}");
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
    let mut tls = ipcgate::client::connect(&h.gw_sock, "localhost", cfg)
        .await
        .unwrap();
    let start = std::time::Instant::now();
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
        start.elapsed() >= Duration::from_millis(400),
        "closed before the timeout: {:?}",
        start.elapsed()
    );
    // The one slot is free again.
    let mut alice = h.alice();
    within("call after the silent client", alice.unary(req(b"x")))
        .await
        .unwrap();
}

#[tokio::test]
async fn http1_over_tls_is_dropped() {
    let h = Harness::start().await;
    let mut cfg = (*h.pki.spiffe("spiffe://test.local/alice")).clone();
    cfg.alpn_protocols = vec![];
    let mut tls = ipcgate::client::connect(&h.gw_sock, "localhost", std::sync::Arc::new(cfg))
        .await
        .unwrap();
    let _ = tls
        .write_all(b"GET /demo.v1.Echo/Unary HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let r = within("http1 over tls", tls.read_to_end(&mut buf)).await;
    assert!(
        r.is_err() || buf.is_empty(),
        "got an answer: {:?}",
        String::from_utf8_lossy(&buf)
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
        extra: "[limits]\nmax_connections = 1\nhandshake_timeout = \"1s\"\n".into(),
        ..Default::default()
    })
    .await;
    // One silent connection takes the only slot until the handshake timeout.
    let silent = UnixStream::connect(&h.gw_sock).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut alice = h.alice();
    let call = tokio::spawn(async move { alice.unary(req(b"x")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !call.is_finished(),
        "a call was served beyond max_connections"
    );
    // After the silent client is dropped, the waiting one is served.
    within("call after a slot frees", call)
        .await
        .unwrap()
        .unwrap();
    drop(silent);
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

/// Opens `n` calls on one connection, 50 at a time. Call `i` is a long server
/// stream that the client resets as soon as its response headers arrive (so
/// the gateway has accepted it and the backend is running it) when
/// `cancel(i)`; otherwise a unary call read to its end. Returns the
/// connection's end: `None` if it is still open after the last call.
async fn open_and_cancel(
    h: &Harness,
    n: usize,
    cancel: impl Fn(usize) -> bool,
) -> Option<Result<(), h2::Error>> {
    let tls = ipcgate::client::connect(
        &h.gw_sock,
        "localhost",
        h.pki.spiffe("spiffe://test.local/alice"),
    )
    .await
    .unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let mut conn = tokio::spawn(conn);
    let long = grpc_frame(&ipcgate::pb::EchoRequest {
        count: 1000,
        delay_ms: 10,
        ..req(b"x")
    });
    let short = grpc_frame(&req(b"y"));
    for wave in (0..n).step_by(50) {
        let mut calls = Vec::new();
        for i in wave..(wave + 50).min(n) {
            let Ok(mut tx) = client.clone().ready().await else {
                return Some(conn.await.unwrap());
            };
            let (path, body) = if cancel(i) {
                ("ServerStream", long.clone())
            } else {
                ("Unary", short.clone())
            };
            let req = http::Request::post(format!("http://localhost/demo.v1.Echo/{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let Ok((resp, mut send)) = tx.send_request(req, false) else {
                return Some(conn.await.unwrap());
            };
            let _ = send.send_data(body, true);
            let cancel = cancel(i);
            calls.push(async move {
                let Ok(resp) = resp.await else { return };
                if cancel {
                    send.send_reset(h2::Reason::CANCEL);
                    return;
                }
                let mut body = resp.into_body();
                while let Some(Ok(d)) = body.data().await {
                    let _ = body.flow_control().release_capacity(d.len());
                }
                let _ = body.trailers().await;
            });
        }
        futures_util::future::join_all(calls).await;
    }
    // Give a GOAWAY in flight the time to land.
    match tokio::time::timeout(Duration::from_millis(500), &mut conn).await {
        Ok(end) => Some(end.unwrap()),
        Err(_) => None,
    }
}

const RESET_FLOOD: &str = "ipcgate_connections_closed_total{reason=\"reset_flood\"}";

async fn reset_floods(h: &Harness) -> f64 {
    let (status, body) = admin(&h.pki.path("admin.sock"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    metric(&body, RESET_FLOOD).unwrap_or(0.0)
}

#[tokio::test]
async fn rapid_reset_of_accepted_calls_closes_the_connection() {
    let h = Harness::start_with(Opts {
        admin: true,
        ..Default::default()
    })
    .await;
    // Every call cancelled the moment the backend has it: closed once 500 calls
    // are in, with a GOAWAY saying ENHANCE_YOUR_CALM (or, when the close beats
    // the client's next write, a broken connection).
    let end = within("the flood", open_and_cancel(&h, 700, |_| true)).await;
    let err = end
        .expect("the gateway closed the connection")
        .expect_err("with an error");
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
        "{err:?}"
    );
    assert_eq!(reset_floods(&h).await, 1.0);
    // Other clients are served as before.
    h.alice().unary(req(b"after")).await.unwrap();
}

#[tokio::test]
async fn occasional_cancels_keep_the_connection() {
    let h = Harness::start_with(Opts {
        admin: true,
        ..Default::default()
    })
    .await;
    // A quarter of 700 calls cancelled (a client whose deadlines often expire):
    // the connection stays.
    let end = within("the calls", open_and_cancel(&h, 700, |i| i % 4 == 0)).await;
    assert!(end.is_none(), "connection closed: {end:?}");
    assert_eq!(reset_floods(&h).await, 0.0);
}
