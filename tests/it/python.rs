//! A client from another gRPC implementation: Python grpcio (C-core).

use std::process::Command;

use crate::common::*;

#[tokio::test]
async fn grpcio_client_allowed_and_denied() {
    let h = Harness::start().await;
    let alice = h.pki.issue_spiffe("spiffe://test.local/alice");
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
        "grpcio is not installed: `python3 -m pip install grpcio` (scripts/test does this)"
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

fn python_defaults(args: Vec<std::ffi::OsString>) -> std::process::Output {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/grpcio_defaults.py"
    );
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("python3 is needed for this test")
}

/// grpcio with default options (socket path as :authority) through the client
/// sidecar, and over TLS straight to the gateway.
#[tokio::test]
async fn grpcio_default_options_work_through_sidecar_and_gateway() {
    let h = Harness::start().await;
    let alice = h.pki.issue_spiffe("spiffe://test.local/alice");
    alice.save(&h.pki.path("alice"), false).unwrap();
    let config = ipcgate::client::config_from_files(
        &h.pki.path("alice.pem"),
        &h.pki.path("alice.key"),
        &h.pki.path("ca.pem"),
    )
    .unwrap();
    let local = h.pki.path("client.sock");
    let sidecar = ipcgate::sidecar::Sidecar::bind(ipcgate::sidecar::SidecarConfig {
        listen: local.clone(),
        mode: 0o600,
        gateway: ipcgate::client::Target {
            socket: h.gw_sock.clone(),
            server_name: "localhost".into(),
            config,
            server_uid: None,
        },
    })
    .unwrap();
    let task = tokio::spawn(sidecar.run(std::future::pending()));
    let out =
        tokio::task::spawn_blocking(move || python_defaults(vec!["insecure".into(), local.into()]))
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "via sidecar: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let args = vec![
        "tls".into(),
        h.gw_sock.clone().into(),
        h.pki.path("ca.pem").into(),
        h.pki.path("alice.pem").into(),
        h.pki.path("alice.key").into(),
    ];
    let out = tokio::task::spawn_blocking(move || python_defaults(args))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "to the gateway: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    task.abort();
}
