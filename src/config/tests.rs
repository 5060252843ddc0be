use super::*;

const GOOD: &str = r#"
[listen]
uds = "run/gw.sock"
mode = "0660"

[tls]
cert = "certs/gateway.pem"
key = "certs/gateway.key"
client_ca = "certs/ca.pem"

[policy]
file = "policy/app.json"

[[route]]
service = "demo.v1.Echo"
backend = "unix:/run/app/echo.sock"

[[route]]
service = "*"
backend = "http://127.0.0.1:50051"
"#;

#[test]
fn good_config_resolves_relative_paths() {
    let c = Config::parse(GOOD, Path::new("/etc/ipcgate/gateway.toml")).unwrap();
    assert_eq!(c.listen.uds, Path::new("/etc/ipcgate/run/gw.sock"));
    assert_eq!(c.listen.mode, 0o660);
    assert_eq!(c.tls.client_ca, Path::new("/etc/ipcgate/certs/ca.pem"));
    assert_eq!(
        c.routes[0].backend,
        Backend::Unix("/run/app/echo.sock".into())
    );
    assert_eq!(c.routes[1].backend, Backend::Tcp("127.0.0.1:50051".into()));
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
}

fn error_of(text: &str) -> String {
    Config::parse(text, Path::new("gw.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn unknown_key_is_refused_with_line() {
    let e = error_of(&GOOD.replace("mode = \"0660\"", "mode = \"0660\"\nmoed = \"0600\""));
    assert!(e.starts_with("gw.toml:5:"), "{e}");
    assert!(e.contains("moed"), "{e}");
}

#[test]
fn world_writable_mode_is_refused() {
    let e = error_of(&GOOD.replace("0660", "0666"));
    assert!(
        e.contains("listen.mode") && e.contains("world-writable"),
        "{e}"
    );
    assert!(e.starts_with("gw.toml:4:"), "{e}");
}

#[test]
fn bad_backend_and_service() {
    let e = error_of(&GOOD.replace("unix:/run/app/echo.sock", "tcp://x"));
    assert!(
        e.contains("route[0].backend") && e.contains("unix:/run/app/echo.sock"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("demo.v1.Echo", "demo/Echo"));
    assert!(e.contains("route[0].service"), "{e}");
    let e = error_of(&GOOD.replace("\"*\"", "\"demo.v1.Echo\""));
    assert!(e.contains("has a route already"), "{e}");
    let e = error_of(&GOOD.replace("http://127.0.0.1:50051", "http://127.0.0.1"));
    assert!(e.contains("host:port"), "{e}");
}

#[test]
fn limits_are_checked() {
    let e = error_of(&format!("{GOOD}\n[limits]\nhandshake_timeout = \"10\"\n"));
    assert!(
        e.contains("limits.handshake_timeout") && e.contains("unit"),
        "{e}"
    );
    let c = Config::parse(
        &format!("{GOOD}\n[limits]\nhandshake_timeout = \"2s\"\nmax_concurrent_streams = 50\n"),
        Path::new("gw.toml"),
    )
    .unwrap();
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(2));
    assert_eq!(c.limits.max_concurrent_streams, 50);
}
