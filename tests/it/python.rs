//! A client from another gRPC implementation: Python grpcio (C-core).

use std::process::Command;

use ipcgate::ca::LeafSpec;

use crate::common::*;

#[tokio::test]
async fn grpcio_client_allowed_and_denied() {
    let h = Harness::start().await;
    let alice = h
        .pki
        .ca
        .issue(&LeafSpec {
            spiffe: vec!["spiffe://test.local/alice".into()],
            client: true,
            ..Default::default()
        })
        .unwrap();
    alice.save(&h.pki.path("alice"), false).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/grpcio_client.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let gw = h.gw_sock.clone();
    let (ca, cert, key) = (
        h.pki.path("ca.pem"),
        h.pki.path("alice.pem"),
        h.pki.path("alice.key"),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg("--socket")
            .arg(gw)
            .arg("--ca")
            .arg(ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'grpc'"),
        "grpcio is not installed: `python3 -m pip install grpcio` (.ci/run does this)"
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("allowed /demo.v1.Echo/Unary: OK payload=b'from-python'"),
        "{stdout}"
    );
    assert!(
        stdout.contains("denied /demo.v1.Echo/Secret: PERMISSION_DENIED"),
        "{stdout}"
    );
}
