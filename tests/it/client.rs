//! Clients verify the gateway: CA + name or SPIFFE ID, a pinned fingerprint, the
//! socket owner's uid; and the client-side sidecar for legacy h2c clients.

use std::time::Duration;

use ipcgate::ca::LeafSpec;
use ipcgate::client::{ServerTrust, Target};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::*;

fn alice(pki: &Pki) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let i = pki.issue_spiffe("spiffe://test.local/alice");
    (
        vec![i.cert_der.clone()],
        PrivateKeyDer::from_pem_slice(i.key_pem.as_bytes()).unwrap(),
    )
}

fn roots(pki: &Pki) -> ipcgate::tls::Roots {
    ipcgate::tls::Roots::from_certs([pki.ca.cert_der().clone()]).unwrap()
}

fn gateway_sha256(h: &Harness) -> [u8; 32] {
    let der = CertificateDer::from_pem_file(h.pki.path("gateway.pem")).unwrap();
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    d.as_ref().try_into().unwrap()
}

async fn try_call(
    h: &Harness,
    trust: ServerTrust,
    name: &str,
    uid: Option<u32>,
) -> Result<(), String> {
    let (chain, key) = alice(&h.pki);
    let config = ipcgate::client::config_with(chain, key, trust).map_err(|e| e.to_string())?;
    let target = Target {
        socket: h.gw_sock.clone(),
        server_name: name.into(),
        config,
        server_uid: uid,
    };
    let mut c = ipcgate::pb::echo_client::EchoClient::new(ipcgate::client::channel_to(target));
    c.unary(req(b"x"))
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn the_client_verifies_the_gateway_every_configured_way() {
    // A gateway certificate with a SPIFFE ID too.
    let pki = Pki::new();
    pki.ca
        .issue(&LeafSpec {
            dns: vec!["localhost".into()],
            spiffe: vec!["spiffe://test.local/gateway".into()],
            server: true,
            ..Default::default()
        })
        .unwrap()
        .save(&pki.path("gateway"), true)
        .unwrap();
    let h = Harness::start_in(pki, Opts::default()).await;
    let pin = gateway_sha256(&h);
    let ca = || ServerTrust {
        ca: Some(roots(&h.pki)),
        ..Default::default()
    };

    // Accepted.
    try_call(&h, ca(), "localhost", None).await.unwrap();
    try_call(
        &h,
        ServerTrust {
            spiffe_id: Some("spiffe://test.local/gateway".into()),
            ..ca()
        },
        "localhost",
        None,
    )
    .await
    .unwrap();
    try_call(
        &h,
        ServerTrust {
            sha256: Some(pin),
            ..Default::default()
        },
        "localhost",
        None,
    )
    .await
    .unwrap();
    try_call(
        &h,
        ServerTrust {
            sha256: Some(pin),
            ..ca()
        },
        "localhost",
        None,
    )
    .await
    .unwrap();
    let me = std::fs::metadata(&h.gw_sock)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    try_call(&h, ca(), "localhost", Some(me)).await.unwrap();

    // Refused.
    let e = try_call(&h, ca(), "other.local", None).await.unwrap_err();
    assert!(e.contains("NotValidForName"), "{e}");
    let e = try_call(
        &h,
        ServerTrust {
            spiffe_id: Some("spiffe://test.local/impostor".into()),
            ..ca()
        },
        "localhost",
        None,
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("not \\\"spiffe://test.local/impostor\\\""),
        "{e}"
    );
    let mut wrong = pin;
    wrong[0] ^= 1;
    let e = try_call(
        &h,
        ServerTrust {
            sha256: Some(wrong),
            ..Default::default()
        },
        "localhost",
        None,
    )
    .await
    .unwrap_err();
    assert!(e.contains("not the pinned"), "{e}");
    let e = try_call(
        &h,
        ServerTrust {
            sha256: Some(wrong),
            ..ca()
        },
        "localhost",
        None,
    )
    .await
    .unwrap_err();
    assert!(e.contains("not the pinned"), "{e}");
    let other = ipcgate::ca::Ca::generate(
        "other CA",
        Duration::from_secs(3600),
        ipcgate::ca::KeyType::EcdsaP256,
    )
    .unwrap();
    let other_roots = ipcgate::tls::Roots::from_certs([other.cert_der().clone()]).unwrap();
    let e = try_call(
        &h,
        ServerTrust {
            ca: Some(other_roots),
            ..Default::default()
        },
        "localhost",
        None,
    )
    .await
    .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    // Nothing to trust: refused when building the config.
    let e = try_call(&h, ServerTrust::default(), "localhost", None)
        .await
        .unwrap_err();
    assert!(e.contains("nothing to trust"), "{e}");
}

#[test]
fn fingerprints_parse_in_every_usual_spelling() {
    let lower = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let want = ipcgate::client::parse_fingerprint(lower).unwrap();
    assert_eq!(
        ipcgate::client::parse_fingerprint(&lower.to_uppercase()).unwrap(),
        want
    );
    let colons: Vec<String> = lower
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    assert_eq!(
        ipcgate::client::parse_fingerprint(&colons.join(":")).unwrap(),
        want
    );
    assert!(ipcgate::client::parse_fingerprint(&lower[2..]).is_err());
    assert!(ipcgate::client::parse_fingerprint(&lower.replace('0', "g")).is_err());
    assert!(ipcgate::client::parse_fingerprint(&"é".repeat(32)).is_err());
}

/// A socket squatted by another account: refused before a byte is sent.
#[tokio::test]
async fn a_socket_owned_by_another_uid_gets_no_bytes() {
    use tokio::io::AsyncReadExt;
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("squat.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let received = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf.len()
    });
    let h = Harness::start().await;
    let (chain, key) = alice(&h.pki);
    let config = ipcgate::client::config_with(
        chain,
        key,
        ServerTrust {
            ca: Some(roots(&h.pki)),
            ..Default::default()
        },
    )
    .unwrap();
    let me = std::fs::metadata(d.path())
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let target = Target {
        socket: sock,
        server_name: "localhost".into(),
        config,
        server_uid: Some(me.wrapping_add(1)),
    };
    let e = ipcgate::client::connect_to(&target).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("not the expected uid"), "{e}");
    assert_eq!(
        within("squatter sees the close", received).await.unwrap(),
        0,
        "bytes reached the squatter"
    );
}

#[tokio::test]
async fn sidecar_carries_plaintext_clients_to_the_gateway() {
    let h = Harness::start().await;
    let (chain, key) = alice(&h.pki);
    let config = ipcgate::client::config_with(
        chain,
        key,
        ServerTrust {
            ca: Some(roots(&h.pki)),
            sha256: Some(gateway_sha256(&h)),
            ..Default::default()
        },
    )
    .unwrap();
    let local = h.pki.path("client.sock");
    let sidecar = ipcgate::sidecar::Sidecar::bind(ipcgate::sidecar::SidecarConfig {
        listen: local.clone(),
        mode: 0o600,
        gateway: Target {
            socket: h.gw_sock.clone(),
            server_name: "localhost".into(),
            config,
            server_uid: None,
        },
    })
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&local).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sidecar.run(async {
        let _ = rx.await;
    }));

    // A plain h2c client, as a legacy application would be.
    let ch = h2c_channel(local.clone());
    let mut c = ipcgate::pb::echo_client::EchoClient::new(ch.clone());
    let mut r = tonic::Request::new(req(b"legacy"));
    r.metadata_mut().insert(
        "x-forwarded-client-cert",
        "URI=spiffe://test.local/root".parse().unwrap(),
    );
    let reply = c.unary(r).await.unwrap().into_inner();
    assert_eq!(reply.payload, b"legacy");
    let xfcc = seen(&reply, "x-forwarded-client-cert");
    assert_eq!(xfcc.len(), 1);
    assert!(
        xfcc[0].contains("URI=spiffe://test.local/alice") && !xfcc[0].contains("root"),
        "{xfcc:?}"
    );
    // Streaming and trailers pass both hops.
    let mut s = c
        .server_stream(ipcgate::pb::EchoRequest {
            count: 50,
            ..req(b"s")
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.next().await {
        m.unwrap();
        n += 1;
    }
    assert_eq!(n, 50);
    let e = c
        .unary(ipcgate::pb::EchoRequest {
            fail_with: Code::NotFound as i32,
            ..req(b"x")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (
            e.code(),
            e.metadata().get("x-echo-detail").unwrap().to_str().unwrap()
        ),
        (Code::NotFound, "backend-trailer")
    );
    // The gateway's policy still decides.
    let grpc = tonic::client::Grpc::new(ch);
    assert_eq!(secret(grpc).await, Code::PermissionDenied);
    let _ = tx.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn sidecar_refuses_an_impostor_gateway() {
    let h = Harness::start().await;
    let (chain, key) = alice(&h.pki);
    let mut pin = gateway_sha256(&h);
    pin[31] ^= 0xff;
    let config = ipcgate::client::config_with(
        chain,
        key,
        ServerTrust {
            sha256: Some(pin),
            ..Default::default()
        },
    )
    .unwrap();
    let local = h.pki.path("client.sock");
    let sidecar = ipcgate::sidecar::Sidecar::bind(ipcgate::sidecar::SidecarConfig {
        listen: local.clone(),
        mode: 0o600,
        gateway: Target {
            socket: h.gw_sock.clone(),
            server_name: "localhost".into(),
            config,
            server_uid: None,
        },
    })
    .unwrap();
    let task = tokio::spawn(sidecar.run(std::future::pending()));
    let ch = h2c_channel(local.clone());
    let e = ipcgate::pb::echo_client::EchoClient::new(ch)
        .unary(req(b"x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("pinned"), "{}", e.message());
    assert_eq!(h.echo.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    task.abort();
}

async fn secret(mut grpc: tonic::client::Grpc<tonic::transport::Channel>) -> Code {
    grpc.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<ipcgate::pb::EchoRequest, ipcgate::pb::EchoReply>::default();
    match grpc
        .unary(
            tonic::Request::new(req(b"x")),
            http::uri::PathAndQuery::from_static("/demo.v1.Echo/Secret"),
            codec,
        )
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// A gateway connection that went away (GOAWAY) while a stream on it still
/// runs is still in the sidecar's pool: a new call must go to a new
/// connection, not fail with the one that refuses it three times over.
#[tokio::test]
async fn sidecar_calls_after_a_goaway_take_a_new_connection() {
    let pki = Pki::new();
    let (chain, key) = alice(&pki);
    let config = ipcgate::client::config_with(
        chain,
        key,
        ServerTrust {
            ca: Some(roots(&pki)),
            ..Default::default()
        },
    )
    .unwrap();
    // A stand-in gateway: its first connection answers one call with headers,
    // holds it open and goes away; later ones answer every call.
    let gw = pki.path("gw.sock");
    let listener = tokio::net::UnixListener::bind(&gw).unwrap();
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_file_iter(pki.path("gateway.pem"))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_file(pki.path("gateway.key")).unwrap(),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((s, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(s).await else {
                continue;
            };
            let goes_away = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tls).await.unwrap();
                let mut held = Vec::new();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let head = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let mut send = respond.send_response(head, false).unwrap();
                    if goes_away {
                        held.push(send);
                        conn.graceful_shutdown();
                        continue;
                    }
                    send.send_data(bytes::Bytes::from_static(&[0; 5]), false)
                        .unwrap();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    send.send_trailers(trailers).unwrap();
                }
            });
        }
    });
    let local = pki.path("client.sock");
    let sidecar = ipcgate::sidecar::Sidecar::bind(ipcgate::sidecar::SidecarConfig {
        listen: local.clone(),
        mode: 0o600,
        gateway: Target {
            socket: gw,
            server_name: "localhost".into(),
            config,
            server_uid: None,
        },
    })
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sidecar.run(async {
        let _ = rx.await;
    }));
    let ch = h2c_channel(local.clone());
    let mut c = ipcgate::pb::echo_client::EchoClient::new(ch);
    // A stream on the first connection, held open across its GOAWAY.
    let _held = within("the held stream's headers", c.server_stream(req(b"held")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    within("a call after the GOAWAY", c.unary(req(b"next")))
        .await
        .unwrap();
    let _ = tx.send(());
    drop(_held);
    let _ = within("the sidecar's end", task).await;
}
