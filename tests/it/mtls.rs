//! The handshake refuses every client that is not verified by the configured CA.

use std::sync::Arc;
use std::time::Duration;

use ipcgate::ca::{Ca, KeyType, LeafSpec};
use rustls::ClientConfig;
use time::OffsetDateTime;

use crate::common::*;

async fn probe(h: &Harness, cfg: Arc<ClientConfig>) -> Result<(), String> {
    ipcgate::client::probe(&h.gw_sock, "localhost", cfg)
        .await
        .map_err(|e| e.to_string())
}

/// Waits until the gateway has refused handshakes for each reason as often
/// as `want` says (the label of its own verdict; it counts after the client
/// has seen the alert), and checks that it refused none for any other
/// reason: a refusal for some other cause (a broken test certificate) must
/// not pass for the rule under test.
async fn refused(h: &Harness, want: &[(&'static str, u64)]) {
    let count = |reason: &'static str| handshakes(h, "failed", reason);
    eventually("the refusals counted", || {
        want.iter().all(|&(r, n)| count(r) >= n)
    })
    .await;
    let text = h.metrics.encode();
    let failed: u64 = text
        .lines()
        .filter(|l| l.starts_with("ipcgate_handshakes_total{") && l.contains("result=\"failed\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        failed,
        want.iter().map(|w| w.1).sum::<u64>(),
        "{want:?}:\n{text}"
    );
}

fn alice_spec() -> LeafSpec {
    LeafSpec {
        spiffe: vec!["spiffe://test.local/alice".into()],
        client: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn verified_client_is_served() {
    let h = Harness::start().await;
    probe(&h, h.pki.spiffe("spiffe://test.local/alice"))
        .await
        .unwrap();
    let r = h.alice().unary(req(b"hi")).await.unwrap();
    assert_eq!(r.get_ref().payload, b"hi");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let h = Harness::start().await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(h.pki.ca.cert_der().clone()).unwrap();
    let mut cfg = ClientConfig::builder_with_provider(ipcgate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let e = probe(&h, Arc::new(cfg)).await.unwrap_err();
    assert!(e.contains("CertificateRequired"), "{e}");
    refused(&h, &[("no_certificate", 1)]).await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let h = Harness::start().await;
    let other = Ca::generate("other CA", Duration::from_secs(3600), KeyType::EcdsaP256).unwrap();
    let issued = other.issue(&alice_spec()).unwrap();
    let cfg = client_config(&issued.cert_pem, &issued.key_pem, h.pki.ca.cert_pem());
    let e = probe(&h, cfg).await.unwrap_err();
    assert!(e.contains("UnknownCA"), "{e}");
    refused(&h, &[("unknown_issuer", 1)]).await;
}

/// The CA's own certificate and key, presented as a client's: a CA
/// certificate is no end entity (webpki's CaUsedAsEndEntity), whatever
/// names a policy might match in its subject.
#[tokio::test]
async fn the_cas_own_certificate_is_refused_as_a_client_certificate() {
    let h = Harness::start().await;
    let ca_pem = h.pki.ca.cert_pem().to_owned();
    let ca_key = std::fs::read_to_string(h.pki.path("ca.key")).unwrap();
    let e = probe(&h, client_config(&ca_pem, &ca_key, &ca_pem))
        .await
        .unwrap_err();
    assert!(e.contains("CertificateUnknown"), "{e}");
    refused(&h, &[("invalid_certificate", 1)]).await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let h = Harness::start().await;
    let now = OffsetDateTime::now_utc();
    for (nb, na, reason) in [
        (
            now - time::Duration::days(2),
            now - time::Duration::days(1),
            "expired",
        ),
        (
            now + time::Duration::days(1),
            now + time::Duration::days(2),
            "not_yet_valid",
        ),
    ] {
        let cfg = h.pki.client(LeafSpec {
            validity: Some((nb, na)),
            ..alice_spec()
        });
        let e = probe(&h, cfg).await.unwrap_err();
        assert!(e.contains("CertificateExpired"), "{e}");
        refused(&h, &[(reason, 1)]).await;
        h.metrics.handshakes.clear();
    }
}

#[tokio::test]
async fn certificate_for_servers_only_is_refused() {
    let h = Harness::start().await;
    let cfg = h.pki.client(LeafSpec {
        client: false,
        server: true,
        ..alice_spec()
    });
    let e = probe(&h, cfg).await.unwrap_err();
    assert!(e.contains("UnsupportedCertificate"), "{e}");
    refused(&h, &[("wrong_purpose", 1)]).await;
}

#[tokio::test]
async fn certificate_without_eku_is_accepted() {
    // RFC 5280: no EKU extension means no restriction on use. Our CA never
    // issues such certificates, so this one is made with rcgen directly.
    let h = Harness::start().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://test.local/alice".try_into().unwrap(),
    )];
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        h.pki.ca.cert_pem(),
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(h.pki.path("ca.key")).unwrap()).unwrap(),
    )
    .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let cfg = client_config(&cert.pem(), &key.serialize_pem(), h.pki.ca.cert_pem());
    probe(&h, cfg.clone()).await.unwrap();
    h.client(cfg).unary(req(b"x")).await.unwrap();
}

/// A client certificate from the harness CA whose subjectAltName extension
/// holds `san` as its raw value.
fn client_with_san(h: &Harness, san: Vec<u8>) -> Arc<ClientConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[2, 5, 29, 17],
        san,
    )];
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        h.pki.ca.cert_pem(),
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(h.pki.path("ca.key")).unwrap()).unwrap(),
    )
    .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    client_config(&cert.pem(), &key.serialize_pem(), h.pki.ca.cert_pem())
}

/// DER: `tag`, a short length, `content`.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag, u8::try_from(content.len()).unwrap()];
    v.extend_from_slice(content);
    v
}

/// A SAN extension the gateway cannot read in full must not be taken as
/// "no names": a deny rule on those names would not match. A URI that is not
/// UTF-8 gets past webpki (it reads no client SANs), so the gateway's own
/// parse refuses it. (SANs webpki cannot even frame are refused by webpki
/// itself; `identity`'s unit tests cover the gateway's parse of those.)
#[tokio::test]
async fn unreadable_subject_alt_names_are_refused() {
    let h = Harness::start().await;
    let mut bad_uri = b"spiffe://test.local/".to_vec();
    bad_uri.push(0xff);
    assert!(
        probe(&h, client_with_san(&h, tlv(0x30, &tlv(0x86, &bad_uri))))
            .await
            .is_err(),
        "a URI that is not UTF-8: served"
    );
    refused(&h, &[("unreadable_certificate", 1)]).await;
    assert_eq!(h.echo.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The same construction with a readable SAN is served.
    probe(
        &h,
        client_with_san(&h, tlv(0x30, &tlv(0x86, b"spiffe://test.local/alice"))),
    )
    .await
    .unwrap();
}

/// An X509-SVID has one SPIFFE ID. A certificate with two, from the trusted
/// CA, is refused: policy would match either, while the audit log and XFCC
/// name the first.
#[tokio::test]
async fn a_certificate_with_two_spiffe_ids_is_refused() {
    let h = Harness::start().await;
    let bob = tlv(0x86, b"spiffe://test.local/bob");
    let alice = tlv(0x86, b"spiffe://test.local/alice");
    let e = probe(
        &h,
        client_with_san(&h, tlv(0x30, &[bob.clone(), alice.clone()].concat())),
    )
    .await
    .unwrap_err();
    assert!(!e.is_empty());
    refused(&h, &[("spiffe_ids", 1)]).await;
    // One SPIFFE ID beside another kind of URI is an SVID like any other.
    let web = tlv(0x86, b"https://example.org/alice");
    probe(&h, client_with_san(&h, tlv(0x30, &[alice, web].concat())))
        .await
        .unwrap();
}

#[tokio::test]
async fn sessions_are_never_resumed() {
    // A resumed TLS 1.3 session skips certificate verification; every
    // connection must be a full handshake even for a client that caches tickets.
    let h = Harness::start().await;
    let cfg = h.pki.spiffe("spiffe://test.local/alice");
    for _ in 0..3 {
        let tls = ipcgate::client::connect(&h.gw_sock, "localhost", cfg.clone())
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        // The probe's exchange is what delivers the server's tickets (if it
        // sent any) to the client's cache before the next round.
        ipcgate::client::probe(&h.gw_sock, "localhost", cfg.clone())
            .await
            .unwrap();
    }
}

/// Why the gateway does not start with the harness CA and `extra` (PEM) as
/// its client CA bundle.
async fn bundle_error(pki: &Pki, extra: &str) -> String {
    std::fs::write(
        pki.path("bundle.pem"),
        format!("{}{extra}", pki.ca.cert_pem()),
    )
    .unwrap();
    std::fs::write(pki.path("policy.json"), POLICY).unwrap();
    let text = config_text(pki, &pki.path("echo.sock"), "")
        .replace("client_ca = \"ca.pem\"", "client_ca = \"bundle.pem\"");
    std::fs::write(pki.path("gw.toml"), text).unwrap();
    let cfg = ipcgate::config::Config::load(&pki.path("gw.toml")).unwrap();
    match ipcgate::Gateway::bind(cfg).await {
        Ok(_) => panic!("the bundle was accepted"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn leaf_certificate_in_the_client_ca_bundle_is_refused() {
    // `cat ca.pem alice.pem > bundle.pem` would make alice's key a CA.
    let pki = Pki::new();
    let alice = pki.ca.issue(&alice_spec()).unwrap();
    let e = bundle_error(&pki, &alice.cert_pem).await;
    assert!(
        e.contains("bundle.pem") && e.contains("certificate #2") && e.contains("not a CA"),
        "{e}"
    );
}

/// A CA certificate without the keyCertSign key usage is refused in the
/// bundle: webpki reads no key usage of an anchor, so this is the only check
/// that a CA limited to other uses cannot vouch for clients.
#[tokio::test]
async fn a_ca_without_key_cert_sign_in_the_bundle_is_refused() {
    let pki = Pki::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "signing-only CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let limited = params.self_signed(&key).unwrap();
    let e = bundle_error(&pki, &limited.pem()).await;
    assert!(
        e.contains("bundle.pem") && e.contains("certificate #2") && e.contains("keyCertSign"),
        "{e}"
    );
}

/// A CA whose key usage extension cannot be parsed is refused, not taken as
/// having none (which would skip the keyCertSign check).
#[tokio::test]
async fn a_ca_with_an_unreadable_key_usage_in_the_bundle_is_refused() {
    let pki = Pki::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "garbled CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // keyUsage (2.5.29.15) whose content is an INTEGER, not a BIT STRING.
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 15],
            vec![0x02, 0x01, 0x05],
        ));
    let garbled = params.self_signed(&key).unwrap();
    let e = bundle_error(&pki, &garbled.pem()).await;
    assert!(
        e.contains("bundle.pem") && e.contains("certificate #2") && e.contains("key usage"),
        "{e}"
    );
}

#[tokio::test]
async fn tls12_client_is_refused() {
    let h = Harness::start().await;
    let issued = h.pki.ca.issue(&alice_spec()).unwrap();
    use rustls::pki_types::pem::PemObject;
    let chain = vec![issued.cert_der.clone()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(h.pki.ca.cert_der().clone()).unwrap();
    let mut cfg = ClientConfig::builder_with_provider(ipcgate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let e = probe(&h, Arc::new(cfg)).await.unwrap_err();
    assert!(e.contains("ProtocolVersion"), "{e}");
    refused(&h, &[("incompatible", 1)]).await;
}

#[tokio::test]
async fn client_without_h2_alpn_is_refused() {
    let h = Harness::start().await;
    for alpn in [vec![], vec![b"http/1.1".to_vec()]] {
        let mut cfg = (*h.pki.spiffe("spiffe://test.local/alice")).clone();
        cfg.alpn_protocols = alpn.clone();
        let r = probe(&h, Arc::new(cfg)).await;
        assert!(r.is_err(), "ALPN {alpn:?} was served");
    }
    refused(&h, &[("no_alpn", 2)]).await;
}

#[tokio::test]
async fn gateway_presents_a_certificate_the_client_can_verify() {
    // A client trusting another CA must refuse the gateway: the server side is
    // verified too.
    let h = Harness::start().await;
    let other = Ca::generate("other CA", Duration::from_secs(3600), KeyType::EcdsaP256).unwrap();
    let issued = h.pki.ca.issue(&alice_spec()).unwrap();
    let cfg = client_config(&issued.cert_pem, &issued.key_pem, other.cert_pem());
    let e = probe(&h, cfg).await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
}

/// Certificates from openssl (RSA CA, SEC1 EC server key, PKCS#8 client key, a
/// subject with several attributes) work, and the subject is matched in RFC 4514
/// form.
#[tokio::test]
async fn openssl_made_certificates_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(d)
            .output()
            .expect("openssl is needed for this test (.ci/run installs it)");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/O=Example/CN=openssl CA' \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null");
    sh("openssl ecparam -name prime256v1 -genkey -noout -out gateway.key");
    sh("openssl req -new -key gateway.key -out gw.csr -subj '/CN=localhost'");
    sh("printf 'subjectAltName=DNS:localhost\\nextendedKeyUsage=serverAuth\\n' > gw.ext && \
        openssl x509 -req -in gw.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out gateway.pem -days 1 -extfile gw.ext 2>/dev/null");
    sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out carol.key");
    sh("openssl req -new -key carol.key -out carol.csr -subj '/O=Example/CN=carol'");
    sh("printf 'extendedKeyUsage=clientAuth\\n' > c.ext && \
        openssl x509 -req -in carol.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out carol.pem -days 1 -extfile c.ext 2>/dev/null");
    assert!(std::fs::read_to_string(d.join("gateway.key"))
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));

    let backend_sock = d.join("echo.sock");
    let echo = ipcgate::demo::EchoService::default();
    let _backend = ipcgate::demo::spawn_backend(&backend_sock, echo, None).unwrap();
    std::fs::write(d.join("policy.json"), POLICY).unwrap();
    let cfg = format!(
        "[listen]\nuds = \"gw.sock\"\n[tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n[policy]\nfile = \"policy.json\"\n[[route]]\nservice = \"*\"\nbackend = \"unix:{}\"\n",
        backend_sock.display()
    );
    std::fs::write(d.join("gw.toml"), cfg).unwrap();
    let gw = Running::start(&d.join("gw.toml")).await;
    let sock = gw.sock.clone();

    let cfg = ipcgate::client::config_from_files(
        &d.join("carol.pem"),
        &d.join("carol.key"),
        &d.join("ca.pem"),
    )
    .unwrap();
    let mut client = ipcgate::pb::echo_client::EchoClient::new(ipcgate::client::channel(
        sock,
        "localhost".into(),
        cfg,
    ));
    // Allowed by principal "CN=carol,O=Example" (subject fall-through).
    let r = client.unary(req(b"rsa")).await.unwrap();
    let xfcc = seen(r.get_ref(), "x-forwarded-client-cert");
    assert!(
        xfcc[0].contains("Subject=\"CN=carol,O=Example\""),
        "{xfcc:?}"
    );
    // ServerStream is not allowed for carol.
    let e = client.server_stream(req(b"x")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    gw.stop().await;
}
