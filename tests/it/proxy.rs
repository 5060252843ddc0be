//! Calls pass through unchanged: every call kind, metadata, trailers and status,
//! deadlines, cancellation, large messages, backend outages and pooling.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ipcgate::pb::EchoRequest;
use tokio_stream::StreamExt;
use tonic::{Code, Request};

use crate::common::*;

#[tokio::test]
async fn all_four_call_kinds_pass_through() {
    let h = Harness::start().await;
    let mut c = h.alice();

    let r = c.unary(req(b"one")).await.unwrap();
    assert_eq!(r.metadata().get("x-echo-header").unwrap(), "from-backend");
    assert_eq!(r.get_ref().payload, b"one");

    let mut s = c
        .server_stream(EchoRequest {
            count: 100,
            ..req(b"s")
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(m) = s.next().await {
        seqs.push(m.unwrap().seq);
    }
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());

    let msgs: Vec<_> = (0..50).map(|i| req(format!("m{i}").as_bytes())).collect();
    let r = c
        .client_stream(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.seq, r.payload.as_slice()), (50, &b"m49"[..]));

    // Bidi ping-pong: each reply arrives before the next message is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let resp = c
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap();
    assert_eq!(
        resp.metadata().get("x-echo-header").unwrap(),
        "from-backend"
    );
    let mut replies = resp.into_inner();
    for i in 0..20u32 {
        tx.send(req(format!("p{i}").as_bytes())).await.unwrap();
        let m = within("bidi reply", replies.next()).await.unwrap().unwrap();
        assert_eq!((m.seq, m.payload), (i + 1, format!("p{i}").into_bytes()));
    }
    drop(tx);
    assert!(replies.next().await.is_none());
}

#[tokio::test]
async fn bidi_response_headers_arrive_before_the_first_message() {
    // A client that waits for response headers before sending must not hang
    // (nginx 1.22 holds them until the first request message).
    let h = Harness::start().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let resp = within(
        "bidi headers",
        h.alice()
            .bidi(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap();
    assert_eq!(
        resp.metadata().get("x-echo-header").unwrap(),
        "from-backend"
    );
    let mut replies = resp.into_inner();
    tx.send(req(b"after-headers")).await.unwrap();
    assert_eq!(
        replies.next().await.unwrap().unwrap().payload,
        b"after-headers"
    );
}

#[tokio::test]
async fn backend_status_message_details_and_trailers_pass_through() {
    let h = Harness::start().await;
    let mut c = h.alice();
    for code in [
        Code::NotFound,
        Code::ResourceExhausted,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
    ] {
        let e = c
            .unary(EchoRequest {
                fail_with: code as i32,
                ..req(b"x")
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code);
        assert_eq!(e.message(), "backend failed as asked");
        assert_eq!(e.details(), b"\x08\x01details");
        assert_eq!(
            e.metadata().get("x-echo-detail").unwrap(),
            "backend-trailer"
        );
    }
    // An error after streamed messages arrives in the trailers.
    let mut s = c
        .server_stream(EchoRequest {
            count: 3,
            fail_with: Code::Aborted as i32,
            ..req(b"x")
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    let err = loop {
        match s.next().await {
            Some(Ok(_)) => n += 1,
            Some(Err(e)) => break e,
            None => panic!("stream ended without the backend's status"),
        }
    };
    assert_eq!(
        (n, err.code(), err.message()),
        (3, Code::Aborted, "backend failed as asked")
    );
}

#[tokio::test]
async fn request_metadata_and_grpc_timeout_reach_the_backend() {
    let h = Harness::start().await;
    let mut r = Request::new(req(b"x"));
    r.metadata_mut()
        .insert("x-custom", "value-1".parse().unwrap());
    r.metadata_mut().insert_bin(
        "x-blob-bin",
        tonic::metadata::MetadataValue::from_bytes(b"\x00\xff"),
    );
    r.set_timeout(Duration::from_secs(30));
    let reply = h.alice().unary(r).await.unwrap().into_inner();
    assert_eq!(seen(&reply, "x-custom"), vec!["value-1"]);
    assert_eq!(seen(&reply, "x-blob-bin"), vec!["AP8"]);
    let t = seen(&reply, "grpc-timeout");
    assert_eq!(t.len(), 1, "{:?}", reply.metadata);
    assert!(
        t[0].ends_with('m') || t[0].ends_with('u') || t[0].ends_with('S'),
        "{t:?}"
    );
}

#[tokio::test]
async fn client_cancel_and_deadline_reset_the_backend_call() {
    let h = Harness::start().await;
    let mut c = h.alice();
    // Connections made first, so the calls below reach the backend at once
    // even on a loaded machine.
    c.unary(req(b"warm-up")).await.unwrap();
    let mut c2 = h.client(h.pki.spiffe("spiffe://test.local/alice"));
    c2.unary(req(b"warm-up")).await.unwrap();
    let calls = || h.echo.calls.load(Ordering::SeqCst);
    // Cancel: drop the call once the backend is working on it.
    let before = calls();
    let mut c1 = c.clone();
    let call = tokio::spawn(async move {
        c1.unary(EchoRequest {
            delay_ms: 10_000,
            ..req(b"x")
        })
        .await
    });
    wait_for(|| calls() > before, "the call reached the backend").await;
    call.abort();
    wait_for(
        || h.echo.cancelled.load(Ordering::SeqCst) == 1,
        "the backend saw the cancel",
    )
    .await;

    // Deadline: the client gives up; the reset reaches the backend.
    let mut r = Request::new(EchoRequest {
        delay_ms: 10_000,
        ..req(b"x")
    });
    r.set_timeout(Duration::from_millis(200));
    let e = tokio::time::timeout(Duration::from_millis(400), c2.unary(r)).await;
    // Either tonic's deadline error or our own timeout: both drop the call.
    if let Ok(res) = e {
        assert!(matches!(
            res.unwrap_err().code(),
            Code::DeadlineExceeded | Code::Cancelled
        ));
    }
    wait_for(
        || h.echo.cancelled.load(Ordering::SeqCst) == 2,
        "the backend saw the deadline",
    )
    .await;

    // Cancel of a server stream mid-flight.
    let mut s = c
        .server_stream(EchoRequest {
            count: 1000,
            delay_ms: 20,
            ..req(b"x")
        })
        .await
        .unwrap()
        .into_inner();
    s.next().await.unwrap().unwrap();
    drop(s);
    wait_for(
        || h.echo.cancelled.load(Ordering::SeqCst) == 3,
        "the backend saw the stream cancel",
    )
    .await;
    // The connection is still good.
    c.unary(req(b"still-ok")).await.unwrap();
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn sixteen_mib_messages_pass_both_ways() {
    let h = Harness::start().await;
    let big: Vec<u8> = (0..16 * 1024 * 1024 - 64)
        .map(|i| (i % 251) as u8)
        .collect();
    let r = h.alice().unary(req(&big)).await.unwrap().into_inner();
    assert!(r.payload == big, "payload changed in transit");
}

#[tokio::test]
async fn backend_outage_is_unavailable_and_recovers_without_restart() {
    let mut h = Harness::start().await;
    let mut c = h.alice();
    c.unary(req(b"before")).await.unwrap();
    h.stop_backend();
    for _ in 0..3 {
        let e = c.unary(req(b"down")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("unavailable"), "{}", e.message());
    }
    h.start_backend();
    let r = c.unary(req(b"after")).await.unwrap();
    assert_eq!(r.get_ref().payload, b"after");
}

#[tokio::test]
async fn concurrent_calls_share_pooled_backend_connections() {
    let h = Harness::start().await;
    let c = h.alice();
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.unary(EchoRequest {
                delay_ms: 50,
                ..req(&i.to_be_bytes())
            })
            .await
            .map(|r| r.into_inner().payload)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), (i as u32).to_be_bytes());
    }
    let conns = h.echo.connections.load(Ordering::SeqCst);
    // 300 calls at once with 100 per backend connection: a handful, not 300.
    assert!(
        (1..=6).contains(&conns),
        "{conns} backend connections for 300 calls"
    );
}

#[tokio::test]
async fn long_streams_do_not_starve_unary_calls() {
    // The backend allows 20 streams per connection, like many real servers; 40
    // long streams are open; a unary call must still get through.
    let h = Harness::start_with(Opts {
        backend_max_streams: Some(20),
        extra: "[limits]\nbackend_streams_per_connection = 20\n".into(),
        ..Default::default()
    })
    .await;
    let c = h.alice();
    let mut streams = Vec::new();
    for _ in 0..40 {
        let mut c = c.clone();
        let mut s = c
            .server_stream(EchoRequest {
                count: 2,
                delay_ms: 30_000,
                ..req(b"long")
            })
            .await
            .unwrap()
            .into_inner();
        streams.push(tokio::spawn(async move { s.next().await }));
    }
    let mut c2 = c.clone();
    let r = within("unary beside 40 long streams", c2.unary(req(b"quick")))
        .await
        .unwrap();
    assert_eq!(r.get_ref().payload, b"quick");
    for s in streams {
        s.abort();
    }
}

#[tokio::test]
async fn shutdown_lets_calls_in_flight_finish_and_removes_the_socket() {
    let h = Harness::start().await;
    let mut c = h.alice();
    c.unary(req(b"warm")).await.unwrap();
    let call = tokio::spawn(async move {
        c.unary(EchoRequest {
            delay_ms: 500,
            ..req(b"in-flight")
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sock = h.gw_sock.clone();
    within("drain", h.shutdown()).await;
    let r = call.await.unwrap().unwrap();
    assert_eq!(r.get_ref().payload, b"in-flight");
    assert!(!sock.exists());
}

#[tokio::test]
async fn a_client_that_stops_reading_cannot_stall_others_on_the_shared_backend_connection() {
    let h = Harness::start().await;
    let hog = h.client(h.pki.spiffe("spiffe://test.local/alice"));
    // Eight calls of 64 MiB each whose responses are never read: together far
    // more than a default connection window (hyper's is 5 MiB).
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = hog.clone();
        let resp = c
            .server_stream(EchoRequest {
                count: 64,
                ..req(&vec![7u8; 1 << 20])
            })
            .await
            .unwrap();
        held.push(resp); // headers received, body never polled
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.echo.connections.load(Ordering::SeqCst),
        1,
        "calls should share one backend connection"
    );
    // Another client on the same backend connection is still served, unary and streaming.
    let mut other = h.alice();
    within("unary beside a stalled reader", other.unary(req(b"ok")))
        .await
        .unwrap();
    let mut s = within(
        "stream beside a stalled reader",
        other.server_stream(EchoRequest {
            count: 8,
            ..req(&vec![1u8; 256 << 10])
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let mut n = 0;
    while let Some(m) = within("stream message", s.next()).await {
        m.unwrap();
        n += 1;
    }
    assert_eq!(n, 8);
    drop(held);
}

/// A raw HTTP/2 backend that records whether a request arrived with trailers.
#[tokio::test]
async fn request_trailers_from_clients_are_not_forwarded() {
    let mut h = Harness::start().await;
    let seen = recording_backend(&mut h);
    // A client sending a message followed by trailers.
    let (mut tx, _conn) = crate::common::alice_h2(&h).await;
    let (mut body_tx, body) =
        http_body_util::channel::Channel::<bytes::Bytes, hyper::Error>::new(4);
    let req = http::Request::builder()
        .method("POST")
        .uri("http://localhost/demo.v1.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let call = tokio::spawn(async move { tx.send_request(req).await });
    body_tx
        .send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))
        .await
        .unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-smuggled", "1".parse().unwrap());
    body_tx.send_trailers(trailers).await.unwrap();
    drop(body_tx);
    let resp = within("call with request trailers", call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.headers().get("grpc-status").unwrap(), "0");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].trailers, "request trailers reached the backend");
}

/// What [`recording_backend`] saw of one request.
struct Recorded {
    path: String,
    authority: String,
    /// Trailers followed the body.
    trailers: bool,
}

/// Puts a hyper HTTP/2 backend in place of the harness's tonic one: it
/// records each request and answers it with an empty OK.
fn recording_backend(h: &mut Harness) -> std::sync::Arc<std::sync::Mutex<Vec<Recorded>>> {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    h.stop_backend();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>> = Default::default();
    let listener = tokio::net::UnixListener::bind(&h.backend_sock).unwrap();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let authority = req
                                .uri()
                                .authority()
                                .map(ToString::to_string)
                                .unwrap_or_default();
                            let body = req.into_body().collect().await?;
                            record.lock().unwrap().push(Recorded {
                                path,
                                authority,
                                trailers: body.trailers().is_some(),
                            });
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .header("grpc-status", "0")
                                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    seen
}

/// The backend receives exactly the path the policy judged, call after call
/// on one connection: denied calls in between, a repaired authority, and
/// the relay's reuse of the last call's URI never hand it another one.
#[tokio::test]
async fn the_backend_receives_the_path_the_policy_judged() {
    use tokio::io::AsyncWriteExt;
    let mut h = Harness::start().await;
    let seen = recording_backend(&mut h);
    let mut f = Frames::open(alice_tls(&h).await, &[]).await;
    // Denied (Secret) and unrouted (other.v1.Svc) calls are answered by the
    // gateway and must not reach the backend.
    let calls: [(&[u8], &[u8]); 7] = [
        (b"/demo.v1.Echo/Unary", b"localhost"),
        (b"/demo.v1.Echo/Secret", b"localhost"),
        (b"/demo.v1.Echo/Unary", b"localhost"),
        (b"/demo.v1.Echo/ServerStream", b"localhost"),
        (b"/other.v1.Svc/Get", b"localhost"),
        (b"/demo.v1.Echo/Unary", b"/run/app.sock"),
        (b"/demo.v1.Echo/ClientStream", b"other.example"),
    ];
    for (i, (path, authority)) in calls.iter().enumerate() {
        let id = 1 + 2 * u32::try_from(i).unwrap();
        f.io.write_all(&frame(0x1, 0x4, id, &block_for(path, authority, &[])))
            .await
            .unwrap();
        f.io.write_all(&frame(0x0, 0x1, id, &[0, 0, 0, 0, 0]))
            .await
            .unwrap();
        within("the call's end", async {
            loop {
                match f.next().await {
                    Some((0x0 | 0x1, flags, s, _)) if s == id && flags & 0x1 != 0 => return,
                    Some((0x3, _, s, p)) if s == id => panic!("stream {id} reset: {p:?}"),
                    None => panic!("connection closed"),
                    Some(_) => {}
                }
            }
        })
        .await;
    }
    let want: Vec<(String, String)> = [
        ("/demo.v1.Echo/Unary", "localhost"),
        ("/demo.v1.Echo/Unary", "localhost"),
        ("/demo.v1.Echo/ServerStream", "localhost"),
        ("/demo.v1.Echo/Unary", "localhost"),
        ("/demo.v1.Echo/ClientStream", "other.example"),
    ]
    .iter()
    .map(|(p, a)| ((*p).to_owned(), (*a).to_owned()))
    .collect();
    let got: Vec<(String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.path.clone(), r.authority.clone()))
        .collect();
    assert_eq!(got, want);
}

/// Socket-path `:authority` values (what gRPC C-core and Netty send by
/// default) through the whole gateway, on a connection's first stream and
/// after it: answered by default, reset as malformed with
/// `repair_authority = false` on the listener.
#[tokio::test]
async fn socket_path_authorities_follow_the_listener_setting() {
    use tokio::io::AsyncWriteExt;
    for repair in [None, Some(false)] {
        let h = Harness::start_with(Opts {
            listen: repair.map(|r: bool| {
                format!("[listen]\nuds = \"gateway.sock\"\nrepair_authority = {r}\n")
            }),
            ..Opts::default()
        })
        .await;
        let mut f = Frames::open(alice_tls(&h).await, &[]).await;
        for (id, authority) in [
            (1u32, &b"localhost"[..]),
            (3, b"/run/app.sock"),
            (5, b"%2Frun%2Fapp.sock"),
        ] {
            let block = block_for(b"/demo.v1.Echo/Unary", authority, &[]);
            f.io.write_all(&frame(0x1, 0x4, id, &block)).await.unwrap();
            f.io.write_all(&frame(0x0, 0x1, id, &[0, 0, 0, 0, 0]))
                .await
                .unwrap();
            let outcome = within("the call's outcome", async {
                loop {
                    match f.next().await {
                        Some((0x1, _, s, _)) if s == id => return "answered",
                        Some((0x3, _, s, p)) if s == id => {
                            assert_eq!(p, 1u32.to_be_bytes(), "reset code");
                            return "reset";
                        }
                        None => return "closed",
                        Some(_) => {}
                    }
                }
            })
            .await;
            let want = if id == 1 || repair.is_none() {
                "answered"
            } else {
                "reset"
            };
            assert_eq!(outcome, want, "stream {id}, repair {repair:?}");
        }
    }
}

/// TCP backend connections probe an idle peer, so calls on a backend whose
/// host vanished without a FIN end instead of waiting for ever.
#[tokio::test]
async fn tcp_backend_connections_keep_alive() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    ipcgate::proxy::tcp_backend(&s).unwrap();
    let r = socket2::SockRef::from(&s);
    assert!(r.keepalive().unwrap());
    assert_eq!(
        r.tcp_keepalive_time().unwrap(),
        ipcgate::proxy::BACKEND_KEEPALIVE.0
    );
    assert_eq!(
        r.tcp_keepalive_interval().unwrap(),
        ipcgate::proxy::BACKEND_KEEPALIVE.1
    );
    assert!(r.tcp_nodelay().unwrap());
}
