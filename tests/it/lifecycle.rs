//! Certificate lifecycle: CSRs, revocation that reaches live connections,
//! rotation and expiry without restarts, CRLs from openssl.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipcgate::ca::LeafSpec;
use ipcgate::metrics::{FileLabels, ReasonLabels};
use time::OffsetDateTime;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_ipcgate");

fn sh(dir: &std::path::Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh and openssl are needed (.ci/run installs openssl)");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ipcgate(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `ipcgate cert issue` of a client certificate for `id` to `out`.pem/.key.
fn cli_issue(ca_dir: &str, out: &str, id: &str) {
    ipcgate_ok(&[
        "cert", "issue", "--ca-dir", ca_dir, "--out", out, "--spiffe", id, "--client",
    ]);
}

/// `ipcgate` that must succeed (its error output shown if not).
fn ipcgate_ok(args: &[&str]) -> std::process::Output {
    let out = ipcgate(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn with_crl() -> Opts {
    Opts {
        tls_keys: "crl = [\"ca.crl\"]".into(),
        ..Default::default()
    }
}

fn closed(h: &Harness, reason: &'static str) -> u64 {
    h.metrics
        .connections_closed
        .get_or_create(&ReasonLabels { reason })
        .get()
}

#[tokio::test]
async fn csr_signed_by_the_ca_works_end_to_end() {
    let h = Harness::start().await;
    let d = h.pki.dir.path();
    sh(
        d,
        "openssl ecparam -name prime256v1 -genkey -noout -out alice-req.key && \
           openssl req -new -key alice-req.key -out alice.csr -subj '/CN=alice' \
             -addext 'subjectAltName=URI:spiffe://test.local/alice'",
    );
    let dir = d.to_str().unwrap();
    let out = ipcgate_ok(&[
        "cert",
        "sign",
        "--ca-dir",
        dir,
        "--csr",
        &format!("{dir}/alice.csr"),
        "--out",
        &format!("{dir}/alice-signed"),
        "--client",
        "--cn",
        "alice",
    ]);
    // The operator sees what the requester asked for and got.
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("URI SAN:     spiffe://test.local/alice") && shown.contains("CN=alice"),
        "{shown}"
    );
    let cfg = ipcgate::client::config_from_files(
        &h.pki.path("alice-signed.pem"),
        &h.pki.path("alice-req.key"),
        &h.pki.path("ca.pem"),
    )
    .unwrap();
    let r = h.client(cfg).unary(req(b"via-csr")).await.unwrap();
    let xfcc = seen(r.get_ref(), "x-forwarded-client-cert");
    assert!(
        xfcc[0].contains("URI=spiffe://test.local/alice")
            && xfcc[0].contains("Subject=\"CN=alice\""),
        "{xfcc:?}"
    );
    let i: serde_json::Value = serde_json::from_slice(
        &ipcgate(&[
            "cert",
            "inspect",
            &format!("{dir}/alice-signed.pem"),
            "--ca-dir",
            dir,
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(i["chains_to_ca"], true);
    assert_eq!(i["revoked"], false);
    assert_eq!(i["is_ca"], false);
    assert_eq!(i["extended_key_usage"], serde_json::json!(["clientAuth"]));
    assert!(
        i["serial"].as_str().unwrap().len() >= 16,
        "serial of at least 64 bits"
    );
}

fn sign(dir: &str, csr: &str, extra: &[&str]) -> std::process::Output {
    let out = format!("{dir}/out");
    let mut args = vec![
        "cert", "sign", "--ca-dir", dir, "--csr", csr, "--out", &out, "--client",
    ];
    args.extend_from_slice(extra);
    ipcgate(&args)
}

/// `sign`, which must succeed: the certificate it wrote.
fn signed(dir: &str, csr: &str, extra: &[&str]) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    let out = sign(dir, csr, extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read(format!("{dir}/out.pem")).unwrap();
    rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap()
}

#[tokio::test]
async fn the_ca_refuses_what_a_csr_should_not_get() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    assert!(
        ipcgate(&["ca", "init", "--dir", dir, "--trust-domain", "example.org"])
            .status
            .success()
    );
    sh(d.path(), "openssl ecparam -name prime256v1 -genkey -noout -out k.key && \
        openssl req -new -key k.key -out ca.csr -subj '/CN=sub' -addext 'basicConstraints=critical,CA:TRUE' -addext 'subjectAltName=DNS:sub.example.org' && \
        openssl req -new -key k.key -out td.csr -subj '/O=x' -addext 'subjectAltName=URI:spiffe://evil.org/x' && \
        openssl req -new -key k.key -out cn.csr -subj '/CN=admin' -addext 'subjectAltName=URI:spiffe://example.org/x' && \
        openssl req -new -key k.key -out cndns.csr -subj '/CN=admin' -addext 'subjectAltName=DNS:admin' && \
        openssl req -new -key k.key -out two.csr -subj '/O=x' -addext 'subjectAltName=URI:spiffe://example.org/bob,URI:spiffe://example.org/admin' && \
        openssl req -new -key k.key -out dot.csr -subj '/O=x' -addext 'subjectAltName=DNS:*.org.' && \
        openssl req -new -key k.key -out mail.csr -subj '/CN=m' -addext 'subjectAltName=email:m@example.org'");
    for (csr, want) in [
        ("ca.csr", "asks for a CA certificate"),
        ("td.csr", "outside this CA's trust domain"),
        // A requester cannot name itself CN=admin, with or without a
        // matching DNS name: a subject principal `CN=admin` would take it.
        (
            "cn.csr",
            "CN=\"admin\"; the CA sets a CN only when you approve it",
        ),
        (
            "cndns.csr",
            "CN=\"admin\"; the CA sets a CN only when you approve it",
        ),
        ("two.csr", "one SPIFFE ID per certificate"),
        ("dot.csr", "is not a DNS name"),
        ("mail.csr", "does not issue"),
    ] {
        let out = sign(dir, &format!("{dir}/{csr}"), &[]);
        assert!(!out.status.success(), "{csr} was signed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{csr}: {err}");
    }
    assert!(!d.path().join("out.pem").exists());
}

/// A CSR altered after signing is refused by its signature, not by some other
/// rule: the same CSR unaltered is signed.
#[tokio::test]
async fn a_tampered_csr_fails_its_signature_check() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    ipcgate_ok(&["ca", "init", "--dir", dir, "--trust-domain", "example.org"]);
    sh(d.path(), "openssl ecparam -name prime256v1 -genkey -noout -out k.key && \
        openssl req -new -key k.key -out ok.csr -subj '/O=x' -addext 'subjectAltName=URI:spiffe://example.org/bob' && \
        openssl req -in ok.csr -outform DER -out ok.der");
    // bob -> bot: the DER stays well-formed, only the signed bytes change.
    let mut der = std::fs::read(d.path().join("ok.der")).unwrap();
    let at = der.windows(3).position(|w| w == b"bob").unwrap();
    der[at + 2] = b't';
    std::fs::write(d.path().join("bad.der"), &der).unwrap();
    sh(d.path(), "openssl req -inform DER -in bad.der -out bad.csr");
    let out = sign(dir, &format!("{dir}/bad.csr"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("signature does not verify"), "{err}");
    assert!(!d.path().join("out.pem").exists());
    signed(dir, &format!("{dir}/ok.csr"), &[]);
}

/// What a CSR asks for beyond its names is the CA's to decide: the purpose,
/// key usage, the subject. A requester asking for serverAuth, codeSigning,
/// keyCertSign and `O=Example` gets a client certificate with none of them;
/// a CSR with `DNS:admin` and no CN gets no `CN=admin` either.
#[tokio::test]
async fn a_csr_gets_only_what_the_ca_decides() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    ipcgate_ok(&["ca", "init", "--dir", dir, "--trust-domain", "example.org"]);
    sh(
        d.path(),
        "openssl ecparam -name prime256v1 -genkey -noout -out k.key && \
        openssl req -new -key k.key -out asks.csr -subj '/O=Example' \
          -addext 'subjectAltName=URI:spiffe://example.org/eve,DNS:admin' \
          -addext 'extendedKeyUsage=serverAuth,codeSigning' \
          -addext 'keyUsage=critical,digitalSignature,keyCertSign,cRLSign'",
    );
    let der = signed(dir, &format!("{dir}/asks.csr"), &[]);
    let (_, c) = X509Certificate::from_der(der.as_ref()).unwrap();
    assert_eq!(c.subject().iter().count(), 0, "subject {}", c.subject());
    let eku = c.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.code_signing && eku.other.is_empty());
    let ku = c.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
    assert!(!c.is_ca());
    // With no subject the names carry the identity, so the SAN is critical.
    let san = c.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    // Approved, the CN is the operator's.
    let der = signed(dir, &format!("{dir}/asks.csr"), &["--cn", "eve", "--force"]);
    let (_, c) = X509Certificate::from_der(der.as_ref()).unwrap();
    assert_eq!(c.subject().to_string(), "CN=eve");
}

#[tokio::test]
async fn revocation_refuses_new_handshakes_and_closes_live_connections() {
    let h = Harness::start_with(with_crl()).await;
    let alice_cfg = h.pki.saved_spiffe("spiffe://test.local/alice", "alice");
    let mut alice = h.client(alice_cfg.clone());
    let mut other = h.alice(); // another alice certificate, not revoked
    alice.unary(req(b"before")).await.unwrap();
    other.unary(req(b"before")).await.unwrap();
    // A call in flight when the revocation lands may finish.
    let mut slow = alice.clone();
    let in_flight = tokio::spawn(async move {
        slow.unary(ipcgate::pb::EchoRequest {
            delay_ms: 400,
            ..req(b"in-flight")
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let dir = h.pki.dir.path().to_str().unwrap().to_owned();
    ipcgate_ok(&[
        "cert",
        "revoke",
        "--ca-dir",
        &dir,
        "--cert",
        &format!("{dir}/alice.pem"),
        "--reason",
        "key-compromise",
    ]);

    // The file watcher reloads the CRL and closes alice's connection.
    let hh = &h;
    eventually("revoked connection closed", || {
        closed(hh, "no_longer_verifies") == 1
    })
    .await;
    assert_eq!(
        in_flight.await.unwrap().unwrap().get_ref().payload,
        b"in-flight"
    );
    // New handshakes with the revoked certificate fail...
    let e = ipcgate::client::probe(&h.gw_sock, "localhost", alice_cfg)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("CertificateRevoked"), "{e}");
    let calls = h.echo.calls.load(Ordering::SeqCst);
    alice.unary(req(b"after")).await.unwrap_err();
    assert_eq!(
        h.echo.calls.load(Ordering::SeqCst),
        calls,
        "a revoked call got through"
    );
    // ...and the other client never noticed.
    for _ in 0..5 {
        other.unary(req(b"after")).await.unwrap();
    }
    assert_eq!(closed(&h, "no_longer_verifies"), 1);
}

/// A CA taken out of `client_ca` at reload: the connections it vouched for
/// are closed, its clients refused from then on; the other CA's go on.
#[tokio::test]
async fn a_ca_taken_out_of_the_bundle_at_reload_closes_its_clients() {
    let pki = Pki::new();
    let second = new_ca("second CA", Duration::from_secs(3600));
    let bob = second
        .issue(&LeafSpec {
            spiffe: vec!["spiffe://test.local/alice".into()],
            client: true,
            ..Default::default()
        })
        .unwrap();
    let root_pem = pki.ca.cert_pem().to_owned();
    let bundle = format!("{root_pem}{}", second.cert_pem());
    let h = start_with_tls(pki, "", vec![("ca.pem", bundle.clone())]).await;
    let mut live = h.client(client_config(&bob.cert_pem, &bob.key_pem, &bundle));
    live.unary(req(b"before")).await.unwrap();
    let mut alice = h.alice();
    alice.unary(req(b"before")).await.unwrap();
    std::fs::write(h.pki.path("ca.pem"), &root_pem).unwrap();
    let tls = h.reloader.tls.clone();
    let r = tokio::task::spawn_blocking(move || tls.reload())
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    let hh = &h;
    eventually("its connection closed", || {
        closed(hh, "no_longer_verifies") == 1
    })
    .await;
    assert!(live.unary(req(b"after")).await.is_err());
    assert!(refused(&h, &bob.cert_pem, &bob.key_pem, &bundle).await);
    alice.unary(req(b"after")).await.unwrap();
    assert_eq!(closed(&h, "no_longer_verifies"), 1);
}

/// A CRL put back from before a revocation (a restored backup, a stale copy
/// pushed again), or a file that is not a CRL, is refused at reload: the
/// revocation stays in force, and the error names the file.
#[tokio::test]
async fn a_reload_never_brings_back_a_crl_from_before_a_revocation() {
    let h = Harness::start_with(with_crl()).await;
    let alice_cfg = h.pki.saved_spiffe("spiffe://test.local/alice", "alice");
    h.client(alice_cfg.clone())
        .unary(req(b"before"))
        .await
        .unwrap();
    let dir = h.pki.dir.path().to_str().unwrap().to_owned();
    std::fs::copy(h.pki.path("ca.crl"), h.pki.path("before.crl")).unwrap();
    ipcgate_ok(&[
        "cert",
        "revoke",
        "--ca-dir",
        &dir,
        "--cert",
        &format!("{dir}/alice.pem"),
    ]);
    let tls = h.reloader.tls.clone();
    let reload = || {
        let tls = tls.clone();
        async move {
            tokio::task::spawn_blocking(move || tls.reload())
                .await
                .unwrap()
        }
    };
    assert!(reload().await.ok);
    let revoked = || async {
        let e = ipcgate::client::probe(&h.gw_sock, "localhost", alice_cfg.clone())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("CertificateRevoked"), "{e}");
    };
    revoked().await;
    for (case, bytes) in [
        (
            "the CRL from before",
            std::fs::read(h.pki.path("before.crl")).unwrap(),
        ),
        ("not a CRL", b"not a CRL".to_vec()),
    ] {
        std::fs::write(h.pki.path("ca.crl"), bytes).unwrap();
        let r = reload().await;
        assert!(!r.ok, "{case}: reloaded");
        let e = r.error.unwrap_or_default();
        assert!(e.contains("ca.crl"), "{case}: {e}");
        if case == "the CRL from before" {
            assert!(e.contains("older than the one in force"), "{e}");
        }
        revoked().await;
    }
    // A replacement CA of the same name, whose CRL is older than the old
    // CA's: another CA's CRL, not the old one's brought back.
    let twin = new_ca("test CA", Duration::from_secs(3600));
    let twin_dir = tempfile::tempdir().unwrap();
    twin.save(twin_dir.path(), false).unwrap();
    let twin_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(twin_dir.path().join("ca.key")).unwrap())
            .unwrap();
    let twin_issuer = rcgen::Issuer::from_ca_cert_pem(twin.cert_pem(), twin_key).unwrap();
    std::fs::write(h.pki.path("ca.pem"), twin.cert_pem()).unwrap();
    std::fs::write(
        h.pki.path("ca.crl"),
        crl_of(&twin_issuer, &[], time::Duration::hours(3), 1),
    )
    .unwrap();
    let r = reload().await;
    assert!(r.ok, "the replacement CA's CRL was refused: {r:?}");
}

/// A client that holds back its half of the handshake until a revocation has
/// been reloaded finishes it against the verifier it began with; the reload's
/// re-check of live connections ran before it registered. It must still get
/// no call through.
#[tokio::test]
async fn a_certificate_revoked_mid_handshake_gets_no_call() {
    use prost::Message as _;
    use std::io::{Read, Write};
    let h = Harness::start_with(with_crl()).await;
    let cfg = h.pki.saved_spiffe("spiffe://test.local/alice", "alice");
    let dir = h.pki.dir.path().to_str().unwrap().to_owned();
    let sock = h.gw_sock.clone();
    let reloader = h.reloader.clone();
    let (read, saw_response) = tokio::task::spawn_blocking(move || {
        let mut io = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        io.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tls = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
        // ClientHello out; the server's flight in, up to its Finished. The
        // client's certificate and Finished then wait in `tls`.
        while tls.wants_write() {
            tls.write_tls(&mut io).unwrap();
        }
        while !tls.wants_write() {
            assert!(tls.read_tls(&mut io).unwrap() > 0, "server closed early");
            tls.process_new_packets().unwrap();
        }
        ipcgate_ok(&[
            "cert",
            "revoke",
            "--ca-dir",
            &dir,
            "--cert",
            &format!("{dir}/alice.pem"),
        ]);
        assert!(reloader.tls.reload().ok);
        // Now the rest of the handshake, and a unary call right behind it.
        let mut msg = vec![0u8];
        let body = req(b"late").encode_to_vec();
        msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        msg.extend_from_slice(&body);
        let mut stream = rustls::StreamOwned::new(tls, io);
        // The gateway may close before all of it is written: that is refusal.
        let sent = (|| {
            stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")?;
            stream.write_all(&frame(0x4, 0, 0, &[]))?;
            stream.write_all(&frame(0x1, 0x4, 1, &block(b"/demo.v1.Echo/Unary", &[])))?;
            stream.write_all(&frame(0x0, 0x1, 1, &msg))
        })();
        // Whatever comes back: a response HEADERS on stream 1 is a call let in.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if sent.is_err() {
                break "closed";
            }
            match stream.read(&mut buf) {
                Ok(0) => break "eof",
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break "timeout",
                Err(_) => break "closed",
            }
        };
        let mut at = 0;
        let mut response = false;
        while got.len() >= at + 9 {
            let len = usize::from(got[at]) << 16
                | usize::from(got[at + 1]) << 8
                | usize::from(got[at + 2]);
            let id = u32::from_be_bytes(got[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
            response |= got[at + 3] == 0x1 && id == 1;
            at += 9 + len;
        }
        (end, response)
    })
    .await
    .unwrap();
    assert!(!saw_response, "the revoked client got an answer");
    assert_ne!(read, "timeout", "the connection was left open");
    assert_eq!(h.echo.calls.load(Ordering::SeqCst), 0);
    assert_eq!(handshakes(&h, "failed", "no_longer_verifies"), 1);
}

#[tokio::test]
async fn server_certificate_rotates_under_load_without_a_failed_call() {
    let h = Harness::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    // Two kinds of clients: one long-lived connection, and a fresh connection
    // (full handshake) per call.
    let mut long_lived = h.alice();
    let cfg = h.pki.spiffe("spiffe://test.local/alice");
    let (s, sock, c2) = (stop.clone(), h.gw_sock.clone(), cfg.clone());
    let loop_task =
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !s.load(Ordering::SeqCst) {
                let mut fresh = ipcgate::pb::echo_client::EchoClient::new(
                    ipcgate::client::channel(sock.clone(), "localhost".into(), c2.clone()),
                );
                match fresh.unary(req(b"x")).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("{e:?}")),
                }
                match long_lived.unary(req(b"y")).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("long-lived: {e:?}")),
                }
            }
            (ok, failed)
        });
    let mut served = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let new = h
            .pki
            .ca
            .issue(&LeafSpec {
                dns: vec!["localhost".into()],
                server: true,
                ..Default::default()
            })
            .unwrap();
        // Key first, then certificate, each by atomic rename (as `cert renew` does).
        new.replace(&h.pki.path("gateway.pem"), Some(&h.pki.path("gateway.key")))
            .unwrap();
        let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, new.cert_der.as_ref());
        let want = ipcgate::identity::hex(want.as_ref());
        within("new connections get the new certificate", async {
            loop {
                let tls = ipcgate::client::connect(&h.gw_sock, "localhost", cfg.clone())
                    .await
                    .unwrap();
                let got = ipcgate::identity::hex(
                    aws_lc_rs::digest::digest(
                        &aws_lc_rs::digest::SHA256,
                        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
                    )
                    .as_ref(),
                );
                if got == want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        served.push(want);
    }
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = loop_task.await.unwrap();
    assert!(
        failed.is_empty(),
        "calls failed during rotation: {failed:?}"
    );
    assert!(ok > 10, "{ok}");
    assert_eq!(served.len(), 4);
}

#[tokio::test]
async fn a_bad_certificate_file_at_reload_keeps_the_old_material() {
    let h = Harness::start().await;
    let mut alice = h.alice();
    alice.unary(req(b"x")).await.unwrap();
    std::fs::write(h.pki.path("gateway.pem"), "not a certificate").unwrap();
    let report = h.reloader.tls.reload();
    assert!(!report.ok);
    assert!(report.error.unwrap().contains("gateway.pem"));
    // Old material still in force: existing and new connections work.
    alice.unary(req(b"x")).await.unwrap();
    h.client(h.pki.spiffe("spiffe://test.local/alice"))
        .unary(req(b"new"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_connection_does_not_outlive_its_certificate() {
    let h = Harness::start().await;
    let cfg = h.pki.short_lived("spiffe://test.local/alice", 2);
    let mut c = h.client(cfg.clone());
    c.unary(req(b"while-valid")).await.unwrap();
    let hh = &h;
    eventually("expired connection closed", || closed(hh, "expired") == 1).await;
    // Reconnecting with it is refused (X.509 times have whole seconds: step past
    // the last valid one).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = ipcgate::client::probe(&h.gw_sock, "localhost", cfg)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("CertificateExpired"), "{e}");
    let calls = h.echo.calls.load(Ordering::SeqCst);
    assert!(c.unary(req(b"after")).await.is_err());
    assert_eq!(h.echo.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn stale_crl_is_reported_and_enforced_by_default() {
    for (keys, refused) in [
        ("crl = [\"old.crl\"]", true),
        ("crl = [\"old.crl\"]\ncrl_expired = \"allow\"", false),
    ] {
        let pki_probe = Pki::new();
        // A CRL whose nextUpdate has passed, signed by the harness CA: written
        // after the harness starts is too late, so sign it with a CA we then use.
        let old = crl(
            &root_issuer(&pki_probe),
            CrlSpec {
                this_update: -time::Duration::days(10),
                next_update: -time::Duration::days(3),
                ..CrlSpec::default()
            },
        );
        let h = start_with_tls(pki_probe, keys, vec![("old.crl", old)]).await;
        let stale = h
            .metrics
            .crl_stale
            .get_or_create(&FileLabels {
                file: h.pki.path("old.crl").display().to_string(),
            })
            .get();
        assert_eq!(stale, 1, "{keys}");
        let r = ipcgate::client::probe(
            &h.gw_sock,
            "localhost",
            h.pki.spiffe("spiffe://test.local/alice"),
        )
        .await;
        assert_eq!(r.is_err(), refused, "{keys}: {r:?}");
    }
}

/// A CRL that goes stale while clients are connected: with `crl_expired =
/// "deny"` (the default) their connections close as new handshakes are
/// refused; with "allow" they stay.
#[tokio::test]
async fn a_crl_going_stale_closes_live_connections_unless_allowed() {
    for (keys, closes) in [
        ("crl = [\"soon.crl\"]", true),
        ("crl = [\"soon.crl\"]\ncrl_expired = \"allow\"", false),
    ] {
        let pki = Pki::new();
        let now = OffsetDateTime::now_utc();
        let soon = crl(
            &root_issuer(&pki),
            CrlSpec {
                // Room for the harness and the first call on a loaded machine.
                next_update: time::Duration::seconds(6),
                ..CrlSpec::default()
            },
        );
        let h = start_with_tls(pki, keys, vec![("soon.crl", soon)]).await;
        let mut alice = h.alice();
        alice.unary(req(b"fresh")).await.unwrap();
        // Past nextUpdate (whole seconds), however long the start took.
        let past = (now + time::Duration::seconds(7) - OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(past).await;
        // The periodic check, without waiting its minute; twice, as it runs.
        let tls = h.reloader.tls.clone();
        tokio::task::spawn_blocking(move || {
            tls.check_crls();
            tls.check_crls();
        })
        .await
        .unwrap();
        if closes {
            let hh = &h;
            eventually("connection closed", || {
                closed(hh, "no_longer_verifies") == 1
            })
            .await;
            assert!(alice.unary(req(b"stale")).await.is_err(), "{keys}");
        } else {
            alice.unary(req(b"stale")).await.unwrap();
        }
        assert_eq!(
            closed(&h, "no_longer_verifies"),
            u64::from(closes),
            "{keys}"
        );
    }
}

/// The first certificate of a PEM chain: a client that sends its leaf alone.
fn leaf_of(chain: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    let at = chain.find(end).unwrap() + end.len();
    format!("{}\n", &chain[..at])
}

/// webpki keeps no validity for a trust anchor, so a CA left in the bundle
/// past its notAfter went on vouching for its clients. It is dropped at load
/// (its clients refused, the others served); a bundle of nothing else is
/// refused at start-up, naming the file.
#[tokio::test]
async fn an_expired_ca_in_the_bundle_vouches_for_no_one() {
    let pki = Pki::new();
    let root = root_issuer(&pki);
    let (old_ca, _, chain, key) = intermediate_and_client(
        &root,
        &[0x77],
        "spiffe://test.local/alice",
        Some(-time::Duration::days(1)),
    );
    let bundle = format!("{}{old_ca}", pki.ca.cert_pem());
    let h = start_with_tls(pki, "", vec![("ca.pem", bundle.clone())]).await;
    assert!(
        refused(&h, &leaf_of(&chain), &key, &bundle).await,
        "a client of an expired CA in the bundle was served"
    );
    h.alice().unary(req(b"x")).await.unwrap();

    let alone = Pki::new();
    std::fs::write(alone.path("ca.pem"), &old_ca).unwrap();
    let e = startup_error(&alone, "")
        .await
        .expect("a bundle of an expired CA alone was accepted");
    assert!(
        e.contains("ca.pem") && e.contains("expired") && e.contains("certificate #1"),
        "{e}"
    );
}

/// Two CAs that expire while the gateway runs, three seconds apart: from
/// each one's notAfter the verifier refuses paths to it
/// (`reason="ca_expired"`), and the next periodic check closes the
/// connections it vouched for, the second CA's as well as the first's.
/// Clients of the root go on.
#[tokio::test]
async fn cas_expiring_while_the_gateway_runs_refuse_their_clients_from_then_on() {
    let pki = Pki::new();
    let root = root_issuer(&pki);
    let now = OffsetDateTime::now_utc();
    // Room for the harness and the first calls on a loaded machine.
    let cas: Vec<_> = [(0x78u8, 6i64), (0x79, 9)]
        .into_iter()
        .map(|(serial, secs)| {
            intermediate_and_client(
                &root,
                &[serial],
                "spiffe://test.local/alice",
                Some(time::Duration::seconds(secs)),
            )
        })
        .collect();
    let bundle = format!("{}{}{}", pki.ca.cert_pem(), cas[0].0, cas[1].0);
    let h = start_with_tls(pki, "", vec![("ca.pem", bundle.clone())]).await;
    let mut live = Vec::new();
    for (_, _, chain, key) in &cas {
        let mut c = h.client(client_config(&leaf_of(chain), key, &bundle));
        c.unary(req(b"fresh")).await.unwrap();
        live.push(c);
    }
    let tls = h.reloader.tls.clone();
    let hh = &h;
    for (i, secs) in [(0usize, 7i64), (1, 10)] {
        // Past this CA's notAfter (whole seconds), however long the start took.
        let past = (now + time::Duration::seconds(secs) - OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(past).await;
        let (_, _, chain, key) = &cas[i];
        for sent in [leaf_of(chain), chain.clone()] {
            assert!(
                refused(&h, &sent, key, &bundle).await,
                "a client of expired CA #{i} was served"
            );
        }
        let refusals = 2 * (i as u64 + 1);
        eventually("refusals counted", || {
            handshakes(hh, "failed", "ca_expired") >= refusals
        })
        .await;
        // The periodic check, without waiting its minute; twice, as it runs.
        let tls = tls.clone();
        tokio::task::spawn_blocking(move || {
            tls.check_crls();
            tls.check_crls();
        })
        .await
        .unwrap();
        eventually("its connection closed", || {
            closed(hh, "no_longer_verifies") == i as u64 + 1
        })
        .await;
        assert!(live[i].unary(req(b"late")).await.is_err());
        if i == 0 {
            live[1].unary(req(b"still valid")).await.unwrap();
        }
        h.alice().unary(req(b"x")).await.unwrap();
    }
    assert_eq!(closed(&h, "no_longer_verifies"), 2);
}

/// A harness over `pki` with `tls_keys` in its `[tls]` table and `files`
/// (CRLs, a bundle) written first.
async fn start_with_tls(
    pki: Pki,
    tls_keys: impl Into<String>,
    files: Vec<(&'static str, String)>,
) -> Harness {
    Harness::start_in(
        pki,
        Opts {
            tls_keys: tls_keys.into(),
            files,
            ..Default::default()
        },
    )
    .await
}

/// Whether the gateway refuses a handshake with this client chain and key.
async fn refused(h: &Harness, chain_pem: &str, key_pem: &str, ca_pem: &str) -> bool {
    ipcgate::client::probe(
        &h.gw_sock,
        "localhost",
        client_config(chain_pem, key_pem, ca_pem),
    )
    .await
    .is_err()
}

/// A CA in memory, ECDSA P-256.
fn new_ca(cn: &str, ttl: Duration) -> ipcgate::ca::Ca {
    ipcgate::ca::Ca::generate(cn, ttl, ipcgate::ca::KeyType::EcdsaP256).unwrap()
}

/// The harness CA as an rcgen issuer, to sign what `ipcgate ca` does not make.
fn root_issuer(pki: &Pki) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.path("ca.key")).unwrap()).unwrap();
    rcgen::Issuer::from_ca_cert_pem(pki.ca.cert_pem(), key).unwrap()
}

/// What a test CRL says besides its issuer: the serials it lists, its
/// number, its validity (offsets from now) and its partition.
struct CrlSpec<'a> {
    serials: &'a [&'a [u8]],
    n: u8,
    this_update: time::Duration,
    next_update: time::Duration,
    /// The issuing distribution point's URI, for a partitioned CRL.
    idp: Option<&'a str>,
}

impl Default for CrlSpec<'_> {
    fn default() -> Self {
        CrlSpec {
            serials: &[],
            n: 1,
            this_update: -time::Duration::hours(1),
            next_update: time::Duration::days(1),
            idp: None,
        }
    }
}

/// A CRL from `issuer` as `spec` says, PEM.
fn crl(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, spec: CrlSpec<'_>) -> String {
    let now = OffsetDateTime::now_utc();
    rcgen::CertificateRevocationListParams {
        this_update: now + spec.this_update,
        next_update: now + spec.next_update,
        crl_number: rcgen::SerialNumber::from_slice(&[spec.n]),
        issuing_distribution_point: spec.idp.map(|uri| rcgen::CrlIssuingDistributionPoint {
            distribution_point: rcgen::CrlDistributionPoint {
                uris: vec![uri.into()],
            },
            scope: None,
        }),
        revoked_certs: spec
            .serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(s),
                revocation_time: now - time::Duration::minutes(5),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// A CRL from `issuer` listing `serials`, issued `age` ago with number `n`.
fn crl_of(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    serials: &[&[u8]],
    age: time::Duration,
    n: u8,
) -> String {
    crl(
        issuer,
        CrlSpec {
            serials,
            n,
            this_update: -age,
            ..CrlSpec::default()
        },
    )
}

/// The harness CA re-certified, same name and key, with `limit` as its path
/// length constraint (`None`: none). Everything the harness CA issued chains
/// to it. `ipcgate ca init` writes `pathlen:0`, which rules out intermediate
/// CAs: a deployment with intermediates has a root like this instead.
fn root_with_limit(pki: &Pki, limit: Option<u8>) -> String {
    root_copy(pki, limit, None)
}

/// [`root_with_limit`], valid until `not_after` if given.
fn root_copy(pki: &Pki, limit: Option<u8>, not_after: Option<OffsetDateTime>) -> String {
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.path("ca.key")).unwrap()).unwrap();
    // The harness CA's name, as `Ca::generate` writes it.
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p.is_ca = rcgen::IsCa::Ca(match limit {
        None => rcgen::BasicConstraints::Unconstrained,
        Some(n) => rcgen::BasicConstraints::Constrained(n),
    });
    if let Some(t) = not_after {
        p.not_before = t - time::Duration::days(30);
        p.not_after = t;
    }
    p.self_signed(&key).unwrap().pem()
}

/// An intermediate CA with `serial` under `issuer`: its PEM and its issuer.
fn intermediate(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    serial: &[u8],
    expires_in: Option<time::Duration>,
) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("sub CA {serial:?}"));
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
    if let Some(d) = expires_in {
        p.not_after = OffsetDateTime::now_utc() + d;
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), rcgen::Issuer::new(p, key))
}

/// An [`intermediate`] CA, and a client certificate for `id` under it:
/// (intermediate PEM, its issuer, the client's chain PEM and key PEM).
fn intermediate_and_client(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    serial: &[u8],
    id: &str,
    expires_in: Option<time::Duration>,
) -> (
    String,
    rcgen::Issuer<'static, rcgen::KeyPair>,
    String,
    String,
) {
    let (cert, sub) = intermediate(issuer, serial, expires_in);
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &sub).unwrap();
    let chain = format!("{}{}", leaf_cert.pem(), cert);
    (cert, sub, chain, leaf_key.serialize_pem())
}

/// Revoking an intermediate CA refuses every client under it: whether the
/// intermediate is in the bundle itself (where webpki stops at it as an
/// anchor and never asks its issuer's CRL) or only sent by the client.
#[tokio::test]
async fn a_revoked_intermediate_ca_refuses_its_clients() {
    for in_bundle in [true, false] {
        let pki = Pki::new();
        let root = root_issuer(&pki);
        let (i1, i1_issuer, carol, carol_key) =
            intermediate_and_client(&root, &[0x71], "spiffe://test.local/alice", None);
        let (i2, i2_issuer, dave, dave_key) =
            intermediate_and_client(&root, &[0x72], "spiffe://test.local/alice", None);
        // And a CA the revoked one issued, with a client of its own.
        let (i3, i3_issuer, erin, erin_key) =
            intermediate_and_client(&i1_issuer, &[0x73], "spiffe://test.local/alice", None);
        let erin_chain = format!("{erin}{i1}");
        let mut files = vec![(
            "ca.crl",
            crl_of(&root, &[&[0x71]], time::Duration::hours(1), 9),
        )];
        // A root that allows the two levels below: the gateway's second,
        // path-length pass runs too, with the same CRLs and policies.
        let unlimited = root_with_limit(&pki, Some(2));
        let keys = if in_bundle {
            files.push(("ca.pem", format!("{unlimited}{i1}{i2}{i3}")));
            files.push((
                "i3.crl",
                crl_of(&i3_issuer, &[], time::Duration::hours(1), 1),
            ));
            files.push((
                "i1.crl",
                crl_of(&i1_issuer, &[], time::Duration::hours(1), 1),
            ));
            files.push((
                "i2.crl",
                crl_of(&i2_issuer, &[], time::Duration::hours(1), 1),
            ));
            "crl = [\"ca.crl\", \"i1.crl\", \"i2.crl\", \"i3.crl\"]"
        } else {
            // Only the root is trusted; nobody publishes the intermediates'
            // CRLs, so their clients' own status is unknown and allowed.
            files.push(("ca.pem", unlimited));
            "crl = [\"ca.crl\"]\nrevocation_unknown = \"allow\""
        };
        let ca_pem = pki.ca.cert_pem().to_owned();
        let h = start_with_tls(pki, keys, files).await;
        assert!(
            refused(&h, &carol, &carol_key, &ca_pem).await,
            "in bundle {in_bundle}: a client of the revoked CA got in"
        );
        // Its chain sent whole: the CA under the revoked one, then that one.
        assert!(
            refused(&h, &erin_chain, &erin_key, &ca_pem).await,
            "in bundle {in_bundle}: a client of a CA under the revoked one got in"
        );
        // The other intermediate's client, and the root's own, are served.
        let mut dave = h.client(client_config(&dave, &dave_key, &ca_pem));
        dave.unary(req(b"x")).await.unwrap();
        h.alice().unary(req(b"x")).await.unwrap();
    }
}

/// A connection ends when the intermediate CA its client sent expires, even
/// if the leaf has long to live.
#[tokio::test]
async fn a_connection_does_not_outlive_its_intermediate_ca() {
    let pki = Pki::new();
    let root = root_issuer(&pki);
    let (_, _, chain, key) = intermediate_and_client(
        &root,
        &[0x73],
        "spiffe://test.local/alice",
        // Room for the harness and the first call on a loaded machine.
        Some(time::Duration::seconds(6)),
    );
    let ca_pem = pki.ca.cert_pem().to_owned();
    let unlimited = root_with_limit(&pki, None);
    let h = Harness::start_in(
        pki,
        Opts {
            files: vec![("ca.pem", unlimited)],
            ..Default::default()
        },
    )
    .await;
    let mut c = h.client(client_config(&chain, &key, &ca_pem));
    c.unary(req(b"while-valid")).await.unwrap();
    let hh = &h;
    eventually("connection closed at the intermediate's expiry", || {
        closed(hh, "expired") == 1
    })
    .await;
}

/// Which sent certificates bound a connection: the intermediates on the way
/// from the leaf to an anchor, not a stray one, and not a (here expired)
/// cross-signed copy of the anchor that some clients send along.
#[test]
fn the_chain_deadline_follows_issuer_names_up_to_an_anchor() {
    let pki = Pki::new();
    let root = root_issuer(&pki);
    let (_, _, chain, _) = intermediate_and_client(
        &root,
        &[0x74],
        "spiffe://test.local/alice",
        Some(time::Duration::hours(5)),
    );
    let der = |pem: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.unwrap())
            .collect::<Vec<_>>()
    };
    let mut certs = der(&chain);
    let root_der = der(pki.ca.cert_pem());
    let (_, root_cert) = x509_parser::parse_x509_certificate(&root_der[0]).unwrap();
    let anchors = vec![root_cert.subject().as_raw().to_vec()];
    let five_hours = std::time::SystemTime::now() + Duration::from_secs(5 * 3600);
    let t = ipcgate::tls::chain_not_after(&certs, &anchors).unwrap();
    assert!(
        t <= five_hours && t + Duration::from_secs(60) > five_hours,
        "{t:?}"
    );
    // A cross-signed copy of the root (its subject, another issuer) that
    // expires within the hour, an unrelated expired CA, and an expired
    // predecessor of the intermediate (its subject): none counts.
    let now = OffsetDateTime::now_utc();
    for (subject, not_after) in [
        ("test CA", now + time::Duration::hours(1)),
        ("unrelated", now - time::Duration::days(1)),
        ("sub CA [116]", now - time::Duration::days(1)),
    ] {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, subject);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.not_before = now - time::Duration::days(30);
        p.not_after = not_after;
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::Issuer::new(
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap(),
            rcgen::KeyPair::generate().unwrap(),
        );
        certs.push(p.signed_by(&key, &other).unwrap().der().clone());
    }
    assert_eq!(ipcgate::tls::chain_not_after(&certs, &anchors), Some(t));
    // Past the anchor's name the walk would have reached the copy of it.
    let past = ipcgate::tls::chain_not_after(&certs, &[]).unwrap();
    assert!(past < t, "{past:?}");
    // A leaf straight under the anchor has no intermediate to bound it.
    assert_eq!(ipcgate::tls::chain_not_after(&certs[..1], &anchors), None);
}

/// A decoy sent beside the chain, carrying an intermediate's name but
/// issued elsewhere, must not lead the deadline's walk away from the real
/// path: here root -> I0 (5 hours left) -> I1 -> leaf, the decoy named like
/// I1. webpki verifies through I1 and I0, so I0's notAfter bounds the
/// connection whichever order the certificates come in.
#[test]
fn a_decoy_beside_the_chain_cannot_hide_an_intermediates_expiry() {
    let pki = Pki::new();
    let root = root_issuer(&pki);
    let (i0, i0_issuer) = intermediate(&root, &[0x75], Some(time::Duration::hours(5)));
    let (_, _, chain, _) =
        intermediate_and_client(&i0_issuer, &[0x76], "spiffe://test.local/alice", None);
    let der = |pem: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.unwrap())
            .collect::<Vec<_>>()
    };
    let leaf_and_i1 = der(&chain);
    let i0 = der(&i0).remove(0);
    let now = OffsetDateTime::now_utc();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "sub CA [118]");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(300);
    let elsewhere = rcgen::Issuer::new(
        rcgen::CertificateParams::new(Vec::<String>::new()).unwrap(),
        rcgen::KeyPair::generate().unwrap(),
    );
    let decoy = p
        .signed_by(&rcgen::KeyPair::generate().unwrap(), &elsewhere)
        .unwrap()
        .der()
        .clone();
    let root_der = der(pki.ca.cert_pem());
    let (_, root_cert) = x509_parser::parse_x509_certificate(&root_der[0]).unwrap();
    let anchors = vec![root_cert.subject().as_raw().to_vec()];
    let five_hours = std::time::SystemTime::now() + Duration::from_secs(5 * 3600);
    let (leaf, i1) = (leaf_and_i1[0].clone(), leaf_and_i1[1].clone());
    for (case, certs) in [
        ("no decoy", vec![leaf.clone(), i1.clone(), i0.clone()]),
        (
            "the decoy first",
            vec![leaf.clone(), decoy.clone(), i1.clone(), i0.clone()],
        ),
        (
            "the decoy after I1",
            vec![leaf.clone(), i1.clone(), decoy.clone(), i0.clone()],
        ),
        ("the decoy last", vec![leaf.clone(), i1, i0, decoy.clone()]),
    ] {
        let t = ipcgate::tls::chain_not_after(&certs, &anchors).unwrap();
        assert!(t <= five_hours, "{case}: {t:?}");
    }
}

/// Two CRLs from one CA, in either order: the newer one counts (webpki reads
/// only the first whose issuer matches, so the older listed first hid the
/// newer's revocations).
#[tokio::test]
async fn of_two_crls_from_one_ca_the_newer_counts() {
    for order in [["old.crl", "new.crl"], ["new.crl", "old.crl"]] {
        let pki = Pki::new();
        let root = root_issuer(&pki);
        let alice = pki.issue_spiffe("spiffe://test.local/alice");
        let (_, cert) = x509_parser::parse_x509_certificate(alice.cert_der.as_ref()).unwrap();
        let serial = cert.raw_serial().to_vec();
        let files = vec![
            ("old.crl", crl_of(&root, &[], time::Duration::hours(2), 1)),
            (
                "new.crl",
                crl_of(&root, &[&serial], time::Duration::hours(1), 2),
            ),
        ];
        let ca_pem = pki.ca.cert_pem().to_owned();
        let h = start_with_tls(
            pki,
            format!("crl = [\"{}\", \"{}\"]", order[0], order[1]),
            files,
        )
        .await;
        assert!(
            refused(&h, &alice.cert_pem, &alice.key_pem, &ca_pem).await,
            "{order:?}: the newer CRL's revocation was ignored"
        );
        h.alice().unary(req(b"x")).await.unwrap();
    }
}

/// A full CRL and a partition of the same CA stop start-up, in either
/// order. webpki consults only the first CRL that covers a certificate, and
/// lets a partition cover one that names no distribution point: the full
/// CRL listed first hid the partition's newer revocations, and the
/// partition listed first would hide the full CRL's.
#[tokio::test]
async fn a_full_crl_beside_a_partition_of_the_same_ca_stops_startup() {
    for order in [["full.crl", "part.crl"], ["part.crl", "full.crl"]] {
        let pki = Pki::new();
        let root = root_issuer(&pki);
        std::fs::write(
            pki.path("full.crl"),
            crl_of(&root, &[], time::Duration::hours(2), 1),
        )
        .unwrap();
        std::fs::write(
            pki.path("part.crl"),
            crl(
                &root,
                CrlSpec {
                    n: 2,
                    idp: Some("http://crl.test/a"),
                    ..CrlSpec::default()
                },
            ),
        )
        .unwrap();
        let e = startup_error(&pki, &format!("crl = [\"{}\", \"{}\"]", order[0], order[1]))
            .await
            .expect("a full CRL beside a partition was accepted");
        assert!(
            e.contains("part.crl") && e.contains("full.crl") && e.contains("partition"),
            "{order:?}: {e}"
        );
    }
}

/// Two CAs of one name, each with a CRL: webpki cannot tell the CRLs apart,
/// so start-up is refused, naming the file.
#[tokio::test]
async fn crls_from_two_cas_of_one_name_stop_startup() {
    let pki = Pki::new();
    let twin = new_ca("test CA", Duration::from_secs(3600));
    let d = tempfile::tempdir().unwrap();
    twin.save(d.path(), false).unwrap();
    twin.reissue_crl(d.path(), ipcgate::ca::CRL_TTL).unwrap();
    std::fs::copy(d.path().join("ca.crl"), pki.path("twin.crl")).unwrap();
    std::fs::write(
        pki.path("ca.pem"),
        format!("{}{}", pki.ca.cert_pem(), twin.cert_pem()),
    )
    .unwrap();
    let e = startup_error(&pki, "crl = [\"ca.crl\", \"twin.crl\"]")
        .await
        .expect("CRLs of two CAs of one name were accepted");
    assert!(e.contains("twin.crl") && e.contains("two CAs"), "{e}");
}

/// SPIFFE IDs the spec forbids, which one backend would normalise and another
/// not (so two IDs could name one workload), are never issued.
#[test]
fn the_ca_refuses_spiffe_ids_the_spec_forbids() {
    let ca = new_ca("t", Duration::from_secs(3600));
    let issue = |id: &str| {
        ca.issue(&LeafSpec {
            spiffe: vec![id.into()],
            client: true,
            ..Default::default()
        })
    };
    for bad in [
        "spiffe://td/a/../admin",
        "spiffe://td/./admin",
        "spiffe://td/admin/",
        "spiffe://td/a\\b",
        "spiffe://td/a b",
        "spiffe://td/a\u{7f}",
        "spiffe://td//admin",
        "spiffe://TD/admin",
        "spiffe://td/a%2Fb",
        "spiffe://td/a?b",
    ] {
        assert!(issue(bad).is_err(), "{bad:?} was issued");
    }
    // One SPIFFE ID per certificate (X509-SVID).
    let two = ca.issue(&LeafSpec {
        spiffe: vec!["spiffe://t/bob".into(), "spiffe://t/admin".into()],
        client: true,
        ..Default::default()
    });
    assert!(
        two.as_ref()
            .is_err_and(|e| e.to_string().contains("one SPIFFE ID per certificate")),
        "{:?}",
        two.map(|_| ())
    );
    for good in [
        "spiffe://td",
        "spiffe://td/ns/prod/sa/web-1",
        "spiffe://t.d/A_b.c-D",
    ] {
        issue(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    // DNS names: a wildcard only as a whole leftmost label over two more.
    let dns = |name: &str| {
        ca.issue(&LeafSpec {
            dns: vec![name.into()],
            server: true,
            ..Default::default()
        })
    };
    let long = "a".repeat(64);
    let not_dns = |bad: &str| {
        dns(bad)
            .map(|_| ())
            .is_err_and(|e| e.to_string().contains("is not a DNS name"))
    };
    for bad in [
        "*",
        "*.org",
        "a*.example.org",
        "*.*.example.org",
        "",
        "a b",
        // Empty labels: absolute names would get past the wildcard's count.
        "*.org.",
        "*..org",
        ".",
        "a..example.org",
        "example.org.",
        &format!("{long}.example.org"),
    ] {
        assert!(not_dns(bad), "DNS {bad:?} was issued");
    }
    let longest = format!("{}.example.org", &long[..63]);
    for good in [
        "*.svc.example.org",
        "localhost",
        "gw-1.example.org",
        &longest,
    ] {
        dns(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    // Written in lowercase: DNS ignores case but policy compares names as
    // written, so `ADMIN.example.org` would dodge a deny rule on
    // `admin.example.org`.
    let issued = dns("GW-1.Example.ORG").unwrap();
    let peer = ipcgate::identity::Peer::new(&[issued.cert_der], None, None).unwrap();
    assert_eq!(peer.dns, ["gw-1.example.org"]);
}

/// Why a gateway over `pki` with `tls_keys` in its `[tls]` table does not
/// start; `None` if it does.
async fn startup_error(pki: &Pki, tls_keys: &str) -> Option<String> {
    std::fs::write(pki.path("policy.json"), POLICY).unwrap();
    std::fs::write(
        pki.path("gw.toml"),
        config_text_with(pki, &pki.path("echo.sock"), "", "", tls_keys),
    )
    .unwrap();
    let cfg = ipcgate::config::Config::load(&pki.path("gw.toml")).unwrap();
    ipcgate::Gateway::bind(cfg)
        .await
        .err()
        .map(|e| e.to_string())
}

#[tokio::test]
async fn crl_from_outside_the_bundle_stops_startup() {
    let pki = Pki::new();
    let other = Pki::new();
    std::fs::copy(other.path("ca.crl"), pki.path("foreign.crl")).unwrap();
    let e = startup_error(&pki, "crl = [\"foreign.crl\"]")
        .await
        .expect("a CRL from another CA was accepted");
    assert!(
        e.contains("foreign.crl") && e.contains("not signed by any CA in the client_ca bundle"),
        "{e}"
    );
}

/// A CRL made by `openssl ca -gencrl`, with certificates issued by `openssl ca`.
#[tokio::test]
async fn openssl_ca_crl_is_honoured() {
    let d = tempfile::tempdir().unwrap();
    sh(
        d.path(),
        r#"
mkdir -p db && : > db/index.txt && echo 1000 > db/serial && echo 1000 > db/crlnumber
cat > ca.cnf <<'CNF'
[ca]
default_ca = myca
[myca]
dir = .
database = db/index.txt
serial = db/serial
crlnumber = db/crlnumber
new_certs_dir = db
certificate = ca.pem
private_key = ca.key
default_md = sha256
default_days = 1
default_crl_days = 7
policy = any
copy_extensions = copy
[any]
commonName = supplied
[client]
extendedKeyUsage = clientAuth
subjectAltName = $ENV::SAN
CNF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=openssl test CA' \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
for who in alice bob; do
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $who.key -out $who.csr -subj "/CN=$who" 2>/dev/null
  SAN=URI:spiffe://test.local/$who openssl ca -batch -config ca.cnf -extensions client -in $who.csr -out $who.pem 2>/dev/null
done
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout gateway.key -out gw.csr -subj '/CN=localhost' 2>/dev/null
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > gw.ext
openssl x509 -req -in gw.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out gateway.pem -days 1 -extfile gw.ext 2>/dev/null
SAN=x openssl ca -batch -config ca.cnf -revoke bob.pem -crl_reason keyCompromise 2>/dev/null
SAN=x openssl ca -batch -config ca.cnf -gencrl -out ca.crl 2>/dev/null
"#,
    );
    let backend_sock = d.path().join("echo.sock");
    let _backend =
        ipcgate::demo::spawn_backend(&backend_sock, ipcgate::demo::EchoService::default(), None)
            .unwrap();
    let policy = r#"{"name":"p","allow_rules":[{"name":"anyone","source":{"principals":["spiffe://test.local/*"]}}]}"#;
    std::fs::write(d.path().join("policy.json"), policy).unwrap();
    std::fs::write(
        d.path().join("gw.toml"),
        format!(
            "[listen]\nuds = \"gw.sock\"\n[tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\ncrl = [\"ca.crl\"]\n[policy]\nfile = \"policy.json\"\n[[route]]\nservice = \"*\"\nbackend = \"unix:{}\"\n",
            backend_sock.display()
        ),
    )
    .unwrap();
    let gw = Running::start(&d.path().join("gw.toml")).await;
    let sock = gw.sock.clone();
    let cfg = |who: &str| {
        ipcgate::client::config_from_files(
            &d.path().join(format!("{who}.pem")),
            &d.path().join(format!("{who}.key")),
            &d.path().join("ca.pem"),
        )
        .unwrap()
    };
    ipcgate::client::probe(&sock, "localhost", cfg("alice"))
        .await
        .unwrap();
    let e = ipcgate::client::probe(&sock, "localhost", cfg("bob"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("CertificateRevoked"), "{e}");
    let mut alice = ipcgate::pb::echo_client::EchoClient::new(ipcgate::client::channel(
        sock,
        "localhost".into(),
        cfg("alice"),
    ));
    alice.unary(req(b"ok")).await.unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn a_ca_without_a_crl_is_refused_unless_allowed() {
    for (keys, refused) in [
        ("crl = [\"ca.crl\"]", true),
        ("crl = [\"ca.crl\"]\nrevocation_unknown = \"allow\"", false),
    ] {
        let pki = Pki::new();
        // A second CA in the bundle, with no CRL configured for it.
        let other = new_ca("second CA", Duration::from_secs(3600));
        let bundle = format!("{}{}", pki.ca.cert_pem(), other.cert_pem());
        let client = other
            .issue(&LeafSpec {
                spiffe: vec!["spiffe://test.local/alice".into()],
                client: true,
                ..Default::default()
            })
            .unwrap();
        let cfg = client_config(&client.cert_pem, &client.key_pem, pki.ca.cert_pem());
        let h = start_with_tls(pki, keys, vec![("ca.pem", bundle)]).await;
        let r = ipcgate::client::probe(&h.gw_sock, "localhost", cfg).await;
        assert_eq!(r.is_err(), refused, "{keys}: {r:?}");
        // The CA with a CRL is served either way.
        h.alice().unary(req(b"x")).await.unwrap();
    }
}

/// A hand-driven HTTP/2 client over mTLS that acknowledges SETTINGS but never
/// answers a PING — so h2 never completes a graceful GOAWAY on its own.
struct Mute {
    f: Frames<tokio_rustls::client::TlsStream<ipcgate::client::ClientIo>>,
}

/// What became of a call on a `Mute` connection.
#[derive(Debug, PartialEq)]
enum Outcome {
    Answered,
    Reset(u32),
    Closed,
}

impl Mute {
    async fn connect(h: &Harness, cfg: Arc<rustls::ClientConfig>) -> Mute {
        let tls = ipcgate::client::connect(&h.gw_sock, "localhost", cfg)
            .await
            .unwrap();
        Mute {
            f: Frames::open(tls, &[]).await,
        }
    }

    /// A unary Echo call on `stream`: HEADERS (static-table indices and
    /// literals never indexed) and one empty message ending the stream.
    async fn call(&mut self, stream: u32) {
        self.open(stream).await;
        self.finish(stream).await;
    }

    /// The request's empty message, ending the stream. The gateway may have
    /// closed the connection already: what becomes of the call says so.
    async fn finish(&mut self, stream: u32) {
        use tokio::io::AsyncWriteExt;
        let end = frame(0x0, 0x1, stream, &[0, 0, 0, 0, 0]);
        let _ = self.f.io.write_all(&end).await;
    }

    /// A unary call's HEADERS alone: in flight until `finish`.
    async fn open(&mut self, stream: u32) {
        use tokio::io::AsyncWriteExt;
        let out = frame(0x1, 0x4, stream, &block(b"/demo.v1.Echo/Unary", &[])); // END_HEADERS
        let _ = self.f.io.write_all(&out).await;
    }

    /// The next frame (kind, stream, payload); `None` once the connection
    /// is closed.
    async fn frame_in(&mut self) -> Option<(u8, u32, Vec<u8>)> {
        self.f.next().await.map(|(kind, _, id, p)| (kind, id, p))
    }

    /// Reads until `stream` is answered (HEADERS) or reset.
    async fn outcome(&mut self, stream: u32) -> Outcome {
        loop {
            match self.frame_in().await {
                None => return Outcome::Closed,
                Some((0x1, id, _)) if id == stream => return Outcome::Answered,
                Some((0x3, id, p)) if id == stream => {
                    return Outcome::Reset(u32::from_be_bytes(p[..4].try_into().unwrap()));
                }
                Some(_) => {}
            }
        }
    }

    /// Reads until a GOAWAY: (last stream id, error code).
    async fn goaway(&mut self) -> (u32, u32) {
        loop {
            match self.frame_in().await {
                None => panic!("closed before a GOAWAY"),
                Some((0x7, _, p)) => {
                    return (
                        u32::from_be_bytes(p[..4].try_into().unwrap()) & 0x7fff_ffff,
                        u32::from_be_bytes(p[4..8].try_into().unwrap()),
                    );
                }
                Some(_) => {}
            }
        }
    }
}

#[tokio::test]
async fn a_revoked_client_that_ignores_goaway_gets_no_new_call() {
    let h = Harness::start_with(with_crl()).await;
    let cfg = h.pki.saved_spiffe("spiffe://test.local/alice", "mute");
    let mut mute = Mute::connect(&h, cfg).await;
    // A call in flight keeps the connection open past the GOAWAY.
    mute.open(1).await;

    let dir = h.pki.dir.path().to_str().unwrap().to_owned();
    ipcgate_ok(&[
        "cert",
        "revoke",
        "--ca-dir",
        &dir,
        "--cert",
        &format!("{dir}/mute.pem"),
    ]);
    let hh = &h;
    eventually("revoked connection told to go away", || {
        closed(hh, "no_longer_verifies") == 1
    })
    .await;
    // No grace for a revoked client: the GOAWAY names the last call taken,
    // and a client that calls on regardless (it never answers the PING a
    // graceful GOAWAY would wait for) is refused.
    assert_eq!(within("the GOAWAY", mute.goaway()).await, (1, 0));
    let calls = h.echo.calls.load(Ordering::SeqCst);
    mute.call(3).await;
    assert_eq!(
        within("call 3", mute.outcome(3)).await,
        Outcome::Reset(0x7), // REFUSED_STREAM
    );
    assert_eq!(
        h.echo.calls.load(Ordering::SeqCst),
        calls,
        "the backend saw no new call"
    );
    // The call in flight before the revocation may finish.
    mute.finish(1).await;
    assert_eq!(within("call 1", mute.outcome(1)).await, Outcome::Answered);
}

#[tokio::test]
async fn an_expired_client_that_ignores_goaway_gets_no_new_call() {
    let h = Harness::start().await;
    let cfg = h.pki.short_lived("spiffe://test.local/alice", 2);
    let mut mute = Mute::connect(&h, cfg).await;
    mute.call(1).await;
    assert_eq!(within("call 1", mute.outcome(1)).await, Outcome::Answered);
    mute.open(3).await;
    // The certificate runs out while a call is open: GOAWAY naming the last
    // call taken, and the client's next call is refused without reaching the
    // backend.
    assert_eq!(within("the GOAWAY at expiry", mute.goaway()).await, (3, 0));
    let hh = &h;
    eventually("expired connection counted", || closed(hh, "expired") == 1).await;
    let calls = h.echo.calls.load(Ordering::SeqCst);
    mute.call(5).await;
    assert_eq!(
        within("call 5", mute.outcome(5)).await,
        Outcome::Reset(0x7), // REFUSED_STREAM
    );
    assert_eq!(
        h.echo.calls.load(Ordering::SeqCst),
        calls,
        "the backend saw no new call"
    );
}

#[tokio::test]
async fn at_shutdown_a_client_that_ignores_goaway_gets_calls_only_for_the_grace() {
    let h = Harness::start().await;
    let calls = h.echo.calls.clone();
    let mut mute = Mute::connect(&h, h.pki.spiffe("spiffe://test.local/alice")).await;
    mute.call(1).await;
    assert_eq!(within("call 1", mute.outcome(1)).await, Outcome::Answered);
    // A call in flight keeps the connection open through the grace.
    mute.open(3).await;

    let stopped = tokio::spawn(h.shutdown());
    assert_eq!(
        within("the GOAWAY at shutdown", mute.goaway()).await,
        (0x7fff_ffff, 0)
    );
    // A call sent before the client saw the GOAWAY would look like this one:
    // it is still served, not lost...
    mute.call(5).await;
    assert_eq!(within("call 5", mute.outcome(5)).await, Outcome::Answered);
    // ...but a client that never answers the GOAWAY's PING does not get to
    // keep calling through the drain: after the grace, calls are refused.
    tokio::time::sleep(ipcgate::http2::SHUTDOWN_GRACE + Duration::from_millis(300)).await;
    let before = calls.load(Ordering::SeqCst);
    mute.call(7).await;
    assert_eq!(
        within("call 7", mute.outcome(7)).await,
        Outcome::Reset(0x7), // REFUSED_STREAM
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "the backend saw no call after the grace"
    );
    // The call open since before the shutdown finishes, then the connection
    // closes and the gateway's drain is over.
    mute.finish(3).await;
    assert_eq!(within("call 3", mute.outcome(3)).await, Outcome::Answered);
    assert_eq!(within("the end", mute.outcome(9)).await, Outcome::Closed);
    within("the gateway drained", stopped).await.unwrap();
}

/// `cert revoke` and `ipcgate crl` (from cron) at the same moment, or two
/// revokes: each reads `revoked.json`, changes it and writes it back, so
/// without the CA directory's lock the one that read first dropped the other's
/// revocation from every later CRL. CRL numbers must rise with each write.
#[test]
fn concurrent_revocations_are_all_kept() {
    use ipcgate::ca::lifecycle::{load_state, read_leaf};
    let d = tempfile::tempdir().unwrap();
    let ca = new_ca("t", Duration::from_secs(3600));
    ca.save(d.path(), false).unwrap();
    let leaves: Vec<_> = (0..24)
        .map(|i| {
            let out = d.path().join(format!("c{i}"));
            ca.issue(&LeafSpec {
                spiffe: vec![format!("spiffe://t/c{i}")],
                client: true,
                ..Default::default()
            })
            .unwrap()
            .save(&out, false)
            .unwrap();
            d.path().join(format!("c{i}.pem"))
        })
        .collect();
    let ca = Arc::new(ca);
    let start = Arc::new(std::sync::Barrier::new(3));
    let mut threads = Vec::new();
    for half in [0usize, 1] {
        let (ca, start, dir) = (ca.clone(), start.clone(), d.path().to_owned());
        let mine: Vec<_> = leaves.iter().skip(half).step_by(2).cloned().collect();
        threads.push(std::thread::spawn(move || {
            start.wait();
            for path in mine {
                let leaf = read_leaf(&path).unwrap();
                ca.revoke(
                    &dir,
                    &leaf,
                    ipcgate::ca::Reason::KeyCompromise,
                    ipcgate::ca::CRL_TTL,
                )
                .unwrap();
            }
        }));
    }
    // And the cron job re-issuing the CRL meanwhile.
    let (ca2, dir) = (ca.clone(), d.path().to_owned());
    threads.push(std::thread::spawn(move || {
        start.wait();
        for _ in 0..12 {
            ca2.reissue_crl(&dir, ipcgate::ca::CRL_TTL).unwrap();
        }
    }));
    for t in threads {
        t.join().unwrap();
    }
    let state = load_state(d.path()).unwrap();
    assert_eq!(state.revoked.len(), 24, "revocations lost");
    assert_eq!(state.crl_number, 24 + 12, "CRL numbers reused");
    let crl = std::fs::read(d.path().join("ca.crl")).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&crl)
        .map(|c: rustls::pki_types::CertificateRevocationListDer<'_>| c.to_vec())
        .unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(&der).unwrap();
    assert_eq!(parsed.iter_revoked_certificates().count(), 24);
}

/// The CA's own files: a refused `ca init` leaves nothing behind, a key that
/// does not match `ca.pem` is refused on load, `--force` replaces a file by
/// rename (a symlink planted at the path is replaced, its target untouched),
/// and the CA cannot revoke itself.
#[test]
fn the_ca_directory_is_never_left_half_written() {
    let d = tempfile::tempdir().unwrap();
    let gen = || new_ca("t", Duration::from_secs(3600));
    // Only ca.pem there: init is refused and writes no key.
    std::fs::write(d.path().join("ca.pem"), gen().cert_pem()).unwrap();
    assert!(gen().save(d.path(), false).is_err());
    assert!(
        !d.path().join("ca.key").exists(),
        "a refused init left a key"
    );
    // A key beside another CA's certificate is refused.
    let (a, b) = (gen(), gen());
    let d2 = tempfile::tempdir().unwrap();
    a.save(d2.path(), false).unwrap();
    std::fs::copy(
        {
            let d3 = tempfile::tempdir().unwrap();
            b.save(d3.path(), false).unwrap();
            let p = d2.path().join("other.key");
            std::fs::copy(d3.path().join("ca.key"), &p).unwrap();
            p
        },
        d2.path().join("ca.key"),
    )
    .unwrap();
    let e = ipcgate::ca::Ca::load(d2.path())
        .err()
        .expect("a foreign key was loaded");
    assert!(e.to_string().contains("does not belong"), "{e}");
    // --force through a planted symlink: the link is replaced, not followed.
    let d4 = tempfile::tempdir().unwrap();
    let victim = d4.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, d4.path().join("ca.key")).unwrap();
    a.save(d4.path(), true).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(!std::fs::symlink_metadata(d4.path().join("ca.key"))
        .unwrap()
        .file_type()
        .is_symlink());
    // The CA's own certificate is not a leaf to revoke.
    let leaf = ipcgate::ca::lifecycle::read_leaf(&d4.path().join("ca.pem")).unwrap();
    let e = a
        .revoke(
            d4.path(),
            &leaf,
            ipcgate::ca::Reason::Unspecified,
            ipcgate::ca::CRL_TTL,
        )
        .expect_err("the CA revoked itself");
    assert!(e.to_string().contains("cannot revoke itself"), "{e}");
}

/// `issued.jsonl` planted as a symlink in the CA directory (say, to a file
/// the CA's account may write, such as its own key) is not followed: the
/// issue fails naming it, and the target is untouched.
#[test]
fn the_issued_record_is_never_written_through_a_symlink() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap().to_owned();
    ipcgate_ok(&["ca", "init", "--dir", &dir]);
    let victim = d.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, d.path().join("issued.jsonl")).unwrap();
    let out = ipcgate(&[
        "cert",
        "issue",
        "--ca-dir",
        &dir,
        "--out",
        &format!("{dir}/alice"),
        "--spiffe",
        "spiffe://t/alice",
        "--client",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "issued through a symlink: {err}");
    assert!(err.contains("issued.jsonl"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    // Without the link it is written.
    std::fs::remove_file(d.path().join("issued.jsonl")).unwrap();
    cli_issue(&dir, &format!("{dir}/bob"), "spiffe://t/bob");
    let record = std::fs::read_to_string(d.path().join("issued.jsonl")).unwrap();
    assert_eq!(record.lines().count(), 1, "{record}");
}

/// Lifetimes: one too long to represent is an error, not a panic; a leaf
/// never outlives its CA; a CRL that would go stale within the hour is
/// refused.
#[test]
fn lifetimes_are_bounded() {
    let huge = Duration::from_secs(u64::MAX);
    assert!(ipcgate::ca::Ca::generate("t", huge, ipcgate::ca::KeyType::EcdsaP256).is_err());
    let ca = new_ca("t", Duration::from_secs(3600));
    let issue = |ttl| {
        ca.issue(&LeafSpec {
            spiffe: vec!["spiffe://t/a".into()],
            client: true,
            ttl: Some(ttl),
            ..Default::default()
        })
    };
    assert!(issue(huge).is_err());
    let long = issue(Duration::from_secs(30 * 86_400)).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(long.cert_der.as_ref()).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(ca.cert_der().as_ref()).unwrap();
    assert!(leaf.validity().not_after <= root.validity().not_after);
    let d = tempfile::tempdir().unwrap();
    ca.save(d.path(), false).unwrap();
    let e = ca
        .reissue_crl(d.path(), Duration::from_secs(1))
        .expect_err("a CRL valid for a second was issued");
    assert!(e.to_string().contains("stale"), "{e}");
    assert!(ca.reissue_crl(d.path(), huge).is_err());
    ca.reissue_crl(d.path(), Duration::from_secs(3600)).unwrap();
    // An expired CA signs nothing.
    let brief = new_ca("brief", Duration::from_secs(2));
    std::thread::sleep(Duration::from_secs(3));
    let Err(e) = brief.issue(&LeafSpec {
        spiffe: vec!["spiffe://t/a".into()],
        client: true,
        ..Default::default()
    }) else {
        panic!("an expired CA signed");
    };
    assert!(e.to_string().contains("expired"), "{e}");
}

/// `sudo ipcgate cert renew --new-key` on a key the gateway's account reads
/// through its group: the new key keeps the old one's owner and group
/// permissions (needs root to hand a file to another account).
#[test]
fn a_renewed_key_keeps_its_owner_and_group_access() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = tempfile::tempdir().unwrap();
    let ca = new_ca("t", Duration::from_secs(86_400));
    ca.save(d.path(), false).unwrap();
    let out = d.path().join("gw");
    ca.issue(&LeafSpec {
        dns: vec!["localhost".into()],
        server: true,
        ..Default::default()
    })
    .unwrap()
    .save(&out, false)
    .unwrap();
    let key = d.path().join("gw.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let root = std::fs::metadata(d.path()).unwrap().uid() == 0;
    if root {
        std::os::unix::fs::chown(&key, Some(65534), Some(65534)).unwrap();
    }
    let leaf = ipcgate::ca::lifecycle::read_leaf(&d.path().join("gw.pem")).unwrap();
    let issued = ca
        .renew(d.path(), &leaf, Some(ipcgate::ca::KeyType::EcdsaP256), None)
        .unwrap();
    issued
        .replace(&d.path().join("gw.pem"), Some(&key))
        .unwrap();
    let m = std::fs::metadata(&key).unwrap();
    assert_eq!(m.mode() & 0o777, 0o640);
    if root {
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
    }
    ipcgate::tls::load_key(&key).unwrap();
}

/// `cert renew` keeps the key by default, so revoking the current certificate
/// for a key compromise must revoke its predecessors with that key too, and
/// the CA must never certify the key again.
#[test]
fn a_key_compromise_revokes_every_certificate_with_that_key() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        let out = ipcgate(args);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    assert!(run(&["ca", "init", "--dir", &dir]).0);
    let alice = format!("{dir}/alice");
    cli_issue(&dir, &alice, "spiffe://t/alice");
    let pem = format!("{alice}.pem");
    let first = ipcgate::ca::lifecycle::read_leaf(pem.as_ref())
        .unwrap()
        .serial_hex;
    let key = format!("{alice}.key");
    let renewed = run(&[
        "cert", "renew", "--ca-dir", &dir, "--cert", &pem, "--key", &key,
    ]);
    assert!(renewed.0, "{}", renewed.1);
    let second = ipcgate::ca::lifecycle::read_leaf(pem.as_ref())
        .unwrap()
        .serial_hex;
    assert_ne!(first, second);
    let revoked = run(&[
        "cert",
        "revoke",
        "--ca-dir",
        &dir,
        "--cert",
        &pem,
        "--reason",
        "key-compromise",
    ]);
    assert!(revoked.0, "{}", revoked.1);
    assert!(
        revoked
            .1
            .contains(&format!("revoked serial {first} (the same key)")),
        "{}",
        revoked.1
    );
    let state = ipcgate::ca::lifecycle::load_state(d.path()).unwrap();
    for s in [&first, &second] {
        assert!(
            state.revoked.iter().any(|r| &r.serial == s),
            "{s} not revoked"
        );
    }
    // A CSR with the compromised key is refused, and nothing is written.
    let refused_again = |name: &str| {
        sh(
            d.path(),
            &format!(
                "openssl req -new -key {name}.key -out {name}-again.csr -subj '/CN={name}' \
                   -addext 'subjectAltName=URI:spiffe://t/{name}'"
            ),
        );
        let signed = run(&[
            "cert",
            "sign",
            "--ca-dir",
            &dir,
            "--csr",
            &format!("{dir}/{name}-again.csr"),
            "--out",
            &format!("{dir}/{name}-again"),
            "--client",
            "--cn",
            name,
        ]);
        assert!(
            !signed.0 && signed.1.contains("compromised"),
            "{}",
            signed.1
        );
        assert!(!d.path().join(format!("{name}-again.pem")).exists());
    };
    refused_again("alice");
    // A certificate revoked first for another reason, then its key reported
    // compromised: the key is refused from then on too.
    let carol = format!("{dir}/carol");
    cli_issue(&dir, &carol, "spiffe://t/carol");
    let carol_pem = format!("{carol}.pem");
    for reason in ["superseded", "key-compromise"] {
        let r = run(&[
            "cert", "revoke", "--ca-dir", &dir, "--cert", &carol_pem, "--reason", reason,
        ]);
        assert!(r.0, "{}", r.1);
    }
    refused_again("carol");
}

/// A CA directory its own account owns, used by root now and then (`sudo
/// ipcgate cert revoke`): the account's cron `ipcgate crl` and `cert issue`
/// must go on working afterwards. Needs root to act as two accounts.
#[test]
fn a_ca_directory_stays_usable_by_its_owner_after_root_used_it() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let d = tempfile::tempdir().unwrap();
    if std::fs::metadata(d.path()).unwrap().uid() != 0 {
        eprintln!("not root: skipped");
        return;
    }
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ca = d.path().join("ca");
    let dir = ca.to_str().unwrap().to_owned();
    let as_nobody = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} as nobody: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::create_dir(&ca).unwrap();
    std::os::unix::fs::chown(&ca, Some(65534), Some(65534)).unwrap();
    as_nobody(&["ca", "init", "--dir", &dir]);
    // (A lock file an earlier version left would be the CA account's: root
    // must be the first to lock for the case that matters.)
    let _ = std::fs::remove_file(ca.join(".lock"));
    // Root issues and revokes in it...
    let alice = format!("{dir}/alice");
    cli_issue(&dir, &alice, "spiffe://t/alice");
    let pem = format!("{alice}.pem");
    ipcgate_ok(&["cert", "revoke", "--ca-dir", &dir, "--cert", &pem]);
    // ...and the CA's account carries on.
    as_nobody(&["crl", "--ca-dir", &dir]);
    as_nobody(&[
        "cert",
        "issue",
        "--ca-dir",
        &dir,
        "--out",
        &format!("{dir}/bob"),
        "--spiffe",
        "spiffe://t/bob",
        "--client",
    ]);
    for f in ["revoked.json", "ca.crl", "issued.jsonl"] {
        assert_eq!(std::fs::metadata(ca.join(f)).unwrap().uid(), 65534, "{f}");
    }
}

/// Two CRLs of one CA that cover different partitions (issuing distribution
/// points) are both kept: only same-scope CRLs supersede one another.
#[tokio::test]
async fn partitioned_crls_of_one_ca_are_both_kept() {
    let pki = Pki::new();
    let root = root_issuer(&pki);
    let leaf = |dp: &str| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://test.local/alice".try_into().unwrap(),
        )];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![dp.into()],
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &root).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        (cert.pem(), key.serialize_pem(), c.raw_serial().to_vec())
    };
    let (in_a, in_a_key, serial) = leaf("http://crl.test/a");
    let (in_b, in_b_key, _) = leaf("http://crl.test/b");
    let partition = |dp: &str, serials: &[&[u8]], age: time::Duration, n: u8| {
        crl(
            &root,
            CrlSpec {
                serials,
                n,
                this_update: -age,
                idp: Some(dp),
                ..CrlSpec::default()
            },
        )
    };
    // The older partition revokes the certificate; the newer one, another
    // partition, is empty.
    let files = vec![
        (
            "a.crl",
            partition("http://crl.test/a", &[&serial], time::Duration::hours(2), 1),
        ),
        (
            "b.crl",
            partition("http://crl.test/b", &[], time::Duration::hours(1), 2),
        ),
    ];
    let ca_pem = pki.ca.cert_pem().to_owned();
    let h = start_with_tls(
        pki,
        "crl = [\"a.crl\", \"b.crl\"]\nrevocation_unknown = \"allow\"",
        files,
    )
    .await;
    assert!(
        refused(&h, &in_a, &in_a_key, &ca_pem).await,
        "a certificate its partition revokes got in"
    );
    h.client(client_config(&in_b, &in_b_key, &ca_pem))
        .unary(req(b"x"))
        .await
        .unwrap();
}

/// A CA directory made by `ipcgate ca init`, loaded.
fn ca_dir(d: &std::path::Path) -> ipcgate::ca::Ca {
    let dir = d.to_str().unwrap();
    ipcgate_ok(&["ca", "init", "--dir", dir, "--trust-domain", "example.org"]);
    ipcgate::ca::Ca::load(d).unwrap()
}

/// `renew` and `revoke` act only on what this CA signed. Renewing takes the
/// old CN as approved, so without the check a self-made certificate naming
/// itself `CN=admin` would come back signed; a certificate that only claims
/// the CA's name as issuer is no better.
#[test]
fn renew_and_revoke_refuse_a_certificate_this_ca_did_not_issue() {
    use ipcgate::ca::lifecycle::{leaf_info, Reason};
    let d = tempfile::tempdir().unwrap();
    let ca = ca_dir(d.path());
    let key = rcgen::KeyPair::generate().unwrap();
    let params = || {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "admin");
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org/admin".try_into().unwrap(),
        )];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p
    };
    let self_made = params().self_signed(&key).unwrap().der().clone();
    // Issuer name copied from the CA, signed with another key.
    let other = rcgen::KeyPair::generate().unwrap();
    let claims = rcgen::Issuer::from_ca_cert_der(ca.cert_der(), &other).unwrap();
    let claimed = params().signed_by(&key, &claims).unwrap().der().clone();
    for der in [self_made, claimed] {
        let leaf = leaf_info(der).unwrap();
        let e = ca
            .renew(d.path(), &leaf, None, None)
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("not issued by this CA"), "{e}");
        let e = ca
            .revoke(
                d.path(),
                &leaf,
                Reason::KeyCompromise,
                Duration::from_secs(86_400),
            )
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("not issued by this CA"), "{e}");
    }
    let state = ipcgate::ca::lifecycle::load_state(d.path()).unwrap();
    assert!(state.revoked.is_empty());
}

/// A key reported compromised is never certified again, not even by
/// renewing an expired certificate with it: a key-compromise revocation
/// revokes only the unexpired certificates with that key, so the expired one
/// is not revoked, and only the key check stops its renewal.
#[test]
fn renewing_an_expired_certificate_with_a_compromised_key_is_refused() {
    use ipcgate::ca::lifecycle::{leaf_info, Reason};
    let d = tempfile::tempdir().unwrap();
    let ca = ca_dir(d.path());
    let now = OffsetDateTime::now_utc();
    let a = ca
        .issue(&LeafSpec {
            spiffe: vec!["spiffe://example.org/alice".into()],
            client: true,
            validity: Some((now - time::Duration::days(2), now - time::Duration::days(1))),
            ..Default::default()
        })
        .unwrap();
    ca.record(d.path(), &a.cert_der).unwrap();
    let a = leaf_info(a.cert_der).unwrap();
    let b = ca.renew(d.path(), &a, None, None).unwrap();
    ca.record(d.path(), &b.cert_der).unwrap();
    let b = leaf_info(b.cert_der).unwrap();
    assert_eq!(a.spki, b.spki, "renewed with the same key");
    let r = ca
        .revoke(
            d.path(),
            &b,
            Reason::KeyCompromise,
            Duration::from_secs(86_400),
        )
        .unwrap();
    assert!(
        r.also.is_empty(),
        "the expired one is not revoked: {:?}",
        r.also
    );
    let e = ca.renew(d.path(), &a, None, None).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("compromised"), "{e}");
    // With a new key the renewal goes through.
    ca.renew(d.path(), &a, Some(ipcgate::ca::KeyType::EcdsaP256), None)
        .unwrap();
}

/// A root's own path length constraint holds, though webpki keeps none of an
/// anchor's: under `ipcgate ca init`'s `pathlen:0` no intermediate CA may
/// vouch for a client; under `pathlen:1` one may, two may not; with no limit
/// both are served. Counted by the gateway as `reason="path_len"`.
#[tokio::test]
async fn a_root_path_length_limit_refuses_longer_chains() {
    let pki = Pki::new();
    let root = root_issuer(&pki);
    let (i1, i1_issuer, one, one_key) =
        intermediate_and_client(&root, &[0x81], "spiffe://test.local/alice", None);
    let (_, _, two, two_key) =
        intermediate_and_client(&i1_issuer, &[0x82], "spiffe://test.local/alice", None);
    let two = format!("{two}{i1}");
    let ca_pem = pki.ca.cert_pem().to_owned();
    let bundles = [
        ("pathlen:0", pki.ca.cert_pem().to_owned(), [false, false]),
        ("pathlen:1", root_with_limit(&pki, Some(1)), [true, false]),
        ("no limit", root_with_limit(&pki, None), [true, true]),
        // A migration: the old root and its copy without a limit, side by
        // side. Each anchor keeps its own limit.
        (
            "pathlen:0 beside no limit",
            format!("{}{}", pki.ca.cert_pem(), root_with_limit(&pki, None)),
            [true, true],
        ),
    ];
    let dir = pki.dir.path().to_owned();
    let h = Harness::start_in(pki, Opts::default()).await;
    for (name, bundle, served) in bundles {
        std::fs::write(dir.join("ca.pem"), &bundle).unwrap();
        assert!(h.reloader.tls.reload().ok, "{name}: reload");
        let before = path_len_refusals(&h);
        for ((chain, key), want) in [(&one, &one_key), (&two, &two_key)].into_iter().zip(served) {
            let got = !refused(&h, chain, key, &ca_pem).await;
            assert_eq!(
                got,
                want,
                "{name}: chain of {} served",
                chain.matches("BEGIN").count()
            );
        }
        let refusals = served.iter().filter(|s| !**s).count() as u64;
        let hh = &h;
        eventually("refusals counted", || {
            path_len_refusals(hh) == before + refusals
        })
        .await;
        // A client straight under the root is served under every limit.
        h.alice().unary(req(name.as_bytes())).await.unwrap();
    }
}

/// The gateway's clients (`ipcgate call`, `ipcgate connect`, the library)
/// hold a root's limit too: a gateway certificate under an intermediate CA
/// is refused under `pathlen:0`, and served under `pathlen:1` or none.
#[tokio::test]
async fn clients_hold_a_root_path_length_limit_on_the_gateway() {
    let pki = Pki::new();
    let (sub_cert, sub) = intermediate(&root_issuer(&pki), &[0x91], None);
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &sub).unwrap();
    std::fs::write(
        pki.path("gateway.pem"),
        format!("{}{sub_cert}", leaf_cert.pem()),
    )
    .unwrap();
    std::fs::write(pki.path("gateway.key"), leaf_key.serialize_pem()).unwrap();
    let other = new_ca("other root", Duration::from_secs(3600));
    let bundles = [
        ("pathlen:0", pki.ca.cert_pem().to_owned(), false),
        ("pathlen:1", root_with_limit(&pki, Some(1)), true),
        ("no limit", root_with_limit(&pki, None), true),
        // A migration: each anchor keeps its own limit.
        (
            "pathlen:0 beside its copy without a limit",
            format!("{}{}", pki.ca.cert_pem(), root_with_limit(&pki, None)),
            true,
        ),
        // An unrelated root without a limit lends none to the limited one.
        (
            "another root without a limit, then pathlen:0",
            format!("{}{}", other.cert_pem(), pki.ca.cert_pem()),
            false,
        ),
    ];
    let h = Harness::start_in(pki, Opts::default()).await;
    let alice = h.pki.issue_spiffe("spiffe://test.local/alice");
    for (name, bundle, served) in bundles {
        let config = client_config(&alice.cert_pem, &alice.key_pem, &bundle);
        let got = ipcgate::client::probe(&h.gw_sock, "localhost", config).await;
        if served {
            got.unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            let e = got.expect_err(name).to_string();
            assert!(e.contains("pathLenConstraint allows"), "{name}: {e}");
        }
    }
}

/// `ipcgate call` and the library hold the gateway's CA to its notAfter
/// too: a bundle whose only copy of the gateway's root has expired refuses
/// the gateway; its renewal beside it (same name and key) is taken.
#[tokio::test]
async fn clients_refuse_a_gateway_whose_ca_has_expired() {
    let h = Harness::start().await;
    let expired = root_copy(
        &h.pki,
        Some(0),
        Some(OffsetDateTime::now_utc() - time::Duration::days(1)),
    );
    let alice = h.pki.issue_spiffe("spiffe://test.local/alice");
    for (name, bundle, served) in [
        ("the expired copy alone", expired.clone(), false),
        (
            "the expired copy, then its renewal",
            format!("{expired}{}", h.pki.ca.cert_pem()),
            true,
        ),
    ] {
        let config = client_config(&alice.cert_pem, &alice.key_pem, &bundle);
        let got = ipcgate::client::probe(&h.gw_sock, "localhost", config).await;
        if served {
            got.unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            let e = got.expect_err(name).to_string();
            assert!(e.contains("vouches for no one"), "{name}: {e}");
        }
    }
}

fn path_len_refusals(h: &Harness) -> u64 {
    handshakes(h, "failed", "path_len")
}
