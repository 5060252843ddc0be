//! Several listeners in one gateway, and the idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use ipcgate::config::ListenAt;
use ipcgate::pb::echo_client::EchoClient;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tonic::transport::{Channel, Endpoint};

use crate::common::{alice_h2, req, seen, within, Harness, Opts};

/// A tonic channel over TCP with mutual TLS (the gateway's TCP listener).
fn tcp_client(addr: SocketAddr, cfg: Arc<ClientConfig>) -> EchoClient<Channel> {
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let ch = Endpoint::from_static("http://localhost").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }),
    );
    EchoClient::new(ch)
}

fn tcp_addr(h: &Harness) -> SocketAddr {
    h.addrs
        .iter()
        .find_map(|a| match a {
            ListenAt::Tcp(a) => Some(*a),
            _ => None,
        })
        .expect("a TCP listener")
}

fn uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

#[tokio::test]
async fn uds_and_tcp_listeners_share_mtls_and_policy_but_only_uds_has_a_uid() {
    // Unary needs alice AND this uid; ServerStream needs alice only.
    let policy = format!(
        r#"{{ "name": "two-listeners", "allow_rules": [
          {{ "name": "alice-local-unary",
             "source": {{ "principals": ["spiffe://test.local/alice"], "uids": [{}] }},
             "request": {{ "paths": ["/demo.v1.Echo/Unary"] }} }},
          {{ "name": "alice-stream",
             "source": {{ "principals": ["spiffe://test.local/alice"] }},
             "request": {{ "paths": ["/demo.v1.Echo/ServerStream"] }} }} ] }}"#,
        uid()
    );
    let h = Harness::start_with(Opts {
        policy: Some(policy),
        listen: Some(
            "[[listen]]\nuds = \"gateway.sock\"\n\n[[listen]]\ntcp = \"127.0.0.1:0\"\n".into(),
        ),
        ..Opts::default()
    })
    .await;
    assert_eq!(h.addrs.len(), 2);
    let addr = tcp_addr(&h);
    let alice = h.pki.spiffe("spiffe://test.local/alice");

    // Over the Unix socket the uid rule matches and the backend learns the uid.
    let r = within("uds unary", h.alice().unary(req(b"u")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen(&r, "x-ipcgate-peer").len(), 1);
    assert!(seen(&r, "x-ipcgate-peer")[0].starts_with(&format!("uid={}", uid())));

    // Over TCP: same certificate, but there is no uid, so the uid rule cannot match.
    let mut tcp = tcp_client(addr, alice.clone());
    let e = within("tcp unary", tcp.unary(req(b"t"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // A rule without uids applies over TCP; XFCC carries the identity, and no
    // peer-credential header reaches the backend (none was verified), not even
    // one the client forged.
    let mut forged = tonic::Request::new(ipcgate::pb::EchoRequest {
        count: 2,
        ..Default::default()
    });
    forged
        .metadata_mut()
        .insert("x-ipcgate-peer", "uid=0;gid=0;pid=1".parse().unwrap());
    let mut s = within("tcp stream", tcp.server_stream(forged))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = within("tcp stream message", s.message()).await.unwrap() {
        if n == 0 {
            // The backend reports the request metadata on the first message.
            assert!(
                seen(&m, "x-forwarded-client-cert")
                    .first()
                    .is_some_and(|x| x.contains("URI=spiffe://test.local/alice")),
                "{m:?}"
            );
            assert!(seen(&m, "x-ipcgate-peer").is_empty(), "{m:?}");
        }
        n += 1;
    }
    assert_eq!(n, 2);

    // The TCP listener demands a client certificate like the Unix one.
    let before = h.echo.calls.load(std::sync::atomic::Ordering::SeqCst);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(h.pki.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut anon = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    anon.alpn_protocols = vec![b"h2".to_vec()];
    let e = within(
        "tcp without a client cert",
        tcp_client(addr, Arc::new(anon)).unary(req(b"x")),
    )
    .await
    .unwrap_err();
    // TLS 1.3: the client learns of the refusal from the alert after its Finished.
    assert!(format!("{e:?}").contains("CertificateRequired"), "{e:?}");
    assert_eq!(
        h.echo.calls.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "nothing reached the backend"
    );
    h.shutdown().await;
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn idle_connections_are_closed_busy_ones_are_not() {
    let h = Harness::start_with(Opts {
        extra: "[limits]\nidle_timeout = \"600ms\"\n".into(),
        ..Opts::default()
    })
    .await;

    // An idle connection is closed after the timeout (GOAWAY, then EOF).
    let (_tx, idle) = alice_h2::<http_body_util::Full<bytes::Bytes>>(&h).await;
    let t0 = Instant::now();
    within("idle close", idle).await.unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(600), "closed after {took:?}");

    // A connection with a stream open longer than the timeout stays up and the
    // stream completes; tonic's own connection, so its calls go on after it.
    let mut alice = h.alice();
    let mut s = alice
        .server_stream(ipcgate::pb::EchoRequest {
            count: 6,
            delay_ms: 250,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(_m) = within("slow stream", s.message()).await.unwrap() {
        n += 1;
    }
    assert_eq!(n, 6, "a 1.5 s stream outlived a 600 ms idle timeout");

    // Calls keep a connection alive: one every 150 ms for 1.8 s on one connection.
    let (mut tx, busy) = alice_h2::<http_body_util::Full<bytes::Bytes>>(&h).await;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = http::Request::post("http://localhost/demo.v1.Echo/Unary")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
                0, 0, 0, 0, 0,
            ])))
            .unwrap();
        let resp = within("busy call", tx.send_request(r)).await.unwrap();
        assert_eq!(resp.status(), 200);
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
    }
    assert!(
        !busy.is_finished(),
        "a connection with calls every 150 ms was closed as idle"
    );
    let idle_closed = h
        .metrics
        .connections_closed
        .get_or_create(&ipcgate::metrics::ReasonLabels { reason: "idle" })
        .get();
    assert!(idle_closed >= 1, "idle closes are counted");
    h.shutdown().await;
}

#[tokio::test]
async fn stalled_tcp_handshakes_cannot_take_the_unix_sockets_slots() {
    // Each listener has its own max_connections pool: remote peers that open
    // connections and never handshake fill the TCP pool, not the local one.
    let h = Harness::start_with(Opts {
        listen: Some(
            "[[listen]]\nuds = \"gateway.sock\"\n\n[[listen]]\ntcp = \"127.0.0.1:0\"\n".into(),
        ),
        extra: "[limits]\nmax_connections = 2\nhandshake_timeout = \"60s\"\n".into(),
        ..Opts::default()
    })
    .await;
    let addr = tcp_addr(&h);
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Two local clients, each on its own connection, both kept open.
    let mut first = h.alice();
    let mut second = h.alice();
    let r = within("a local call while TCP is full", first.unary(req(b"1"))).await;
    assert!(r.is_ok(), "{r:?}");
    let r = within("a second local connection", second.unary(req(b"2"))).await;
    assert!(r.is_ok(), "{r:?}");
    drop(stalled);
    h.shutdown().await;
}
