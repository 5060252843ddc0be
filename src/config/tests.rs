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
    assert_eq!(
        c.listen[0].at,
        ListenAt::Uds("/etc/ipcgate/run/gw.sock".into())
    );
    assert_eq!(c.listen[0].mode, 0o660);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(3600));
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

const MANY: &str = r#"
[[listen]]
uds = "run/gw.sock"
mode = "0660"

[[listen]]
tcp = "127.0.0.1:8443"
repair_authority = false

[tls]
cert = "c.pem"
key = "c.key"
client_ca = "ca.pem"

[policy]
file = "p.json"

[[route]]
service = "*"
backend = "unix:/run/app/echo.sock"
"#;

#[test]
fn several_listeners_each_with_its_options() {
    let c = Config::parse(MANY, Path::new("/etc/ipcgate/gateway.toml")).unwrap();
    assert_eq!(c.listen.len(), 2);
    assert_eq!(
        c.listen[0].at,
        ListenAt::Uds("/etc/ipcgate/run/gw.sock".into())
    );
    assert!(c.listen[0].repair_authority);
    assert_eq!(
        c.listen[1].at,
        ListenAt::Tcp("127.0.0.1:8443".parse().unwrap())
    );
    assert!(!c.listen[1].repair_authority);
}

#[test]
fn listener_mistakes_are_refused_with_line_and_fix() {
    // Two addresses in one table.
    let e = error_of(&MANY.replace("mode = \"0660\"", "tcp = \"127.0.0.1:1\""));
    assert!(
        e.starts_with("gw.toml:4:") && e.contains("one address per listener"),
        "{e}"
    );
    // Socket options on a TCP listener.
    let e = error_of(&MANY.replace("repair_authority = false", "mode = \"0600\""));
    assert!(
        e.starts_with("gw.toml:8:") && e.contains("listen[1].mode applies to uds"),
        "{e}"
    );
    // Not an address.
    let e = error_of(&MANY.replace("127.0.0.1:8443", "localhost:8443"));
    assert!(
        e.starts_with("gw.toml:7:") && e.contains("not an IP address and port"),
        "{e}"
    );
    // The same address twice.
    let e = error_of(&MANY.replace("tcp = \"127.0.0.1:8443\"", "uds = \"run/gw.sock\""));
    assert!(e.contains("listed twice"), "{e}");
    // A table with no address at all.
    let e = error_of(&MANY.replace("tcp = \"127.0.0.1:8443\"\n", ""));
    assert!(e.contains("listen[1] needs one address"), "{e}");
    // Unknown keys inside [[listen]] keep their line.
    let e = error_of(&MANY.replace("repair_authority = false", "bogus = 1"));
    assert!(e.starts_with("gw.toml:8:") && e.contains("bogus"), "{e}");
    // Named pipes are Windows'.
    #[cfg(unix)]
    {
        let e = error_of(&MANY.replace("tcp = \"127.0.0.1:8443\"", "pipe = '\\\\.\\pipe\\x'"));
        assert!(e.contains("Windows-only"), "{e}");
    }
}

#[test]
fn idle_timeout_is_configurable_and_zero_disables() {
    let c = Config::parse(
        &MANY.replace("[tls]", "[limits]\nidle_timeout = \"0s\"\n\n[tls]"),
        Path::new("gw.toml"),
    )
    .unwrap();
    assert_eq!(c.limits.idle_timeout, Duration::ZERO);
    let e = error_of(&MANY.replace("[tls]", "[limits]\nidle_timeout = \"soon\"\n\n[tls]"));
    assert!(e.contains("limits.idle_timeout"), "{e}");
}

#[test]
fn runtime_threads_default_to_half_the_cores_and_refuse_zero() {
    let c = Config::parse(MANY, Path::new("gw.toml")).unwrap();
    assert_eq!(c.threads, default_threads());
    assert!(c.threads >= 1);
    let c = Config::parse(
        &format!("{MANY}\n[runtime]\nthreads = 3\n"),
        Path::new("gw.toml"),
    )
    .unwrap();
    assert_eq!(c.threads, 3);
    let e = error_of(&format!("{MANY}\n[runtime]\nthreads = 0\n"));
    assert!(e.contains("runtime.threads must be at least 1"), "{e}");
}

#[test]
fn busy_poll_is_off_by_default_and_bounded() {
    let c = Config::parse(MANY, Path::new("gw.toml")).unwrap();
    assert_eq!(c.busy_poll, Duration::ZERO);
    let c = Config::parse(
        &format!("{MANY}\n[runtime]\nbusy_poll = \"200us\"\n"),
        Path::new("gw.toml"),
    )
    .unwrap();
    assert_eq!(c.busy_poll, Duration::from_micros(200));
    let text = format!("{MANY}\n[runtime]\nbusy_poll = \"5ms\"\n");
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("busy_poll"))
        .unwrap();
    let e = error_of(&text);
    assert!(e.starts_with(&format!("gw.toml:{line}:")), "{e}");
    assert!(
        e.contains("runtime.busy_poll must be between 10us and 1000us"),
        "{e}"
    );
    let e = error_of(&format!("{MANY}\n[runtime]\nbusy_poll = \"5us\"\n"));
    assert!(e.contains("between 10us and 1000us"), "{e}");
    let c = Config::parse(
        &format!("{MANY}\n[runtime]\nbusy_poll = \"0us\"\n"),
        Path::new("gw.toml"),
    )
    .unwrap();
    assert_eq!(c.busy_poll, Duration::ZERO);
    let e = error_of(&format!("{MANY}\n[runtime]\nbusy_poll = \"fast\"\n"));
    assert!(e.contains("runtime.busy_poll"), "{e}");
}

#[test]
fn admin_takes_a_socket_and_mode_only() {
    let with = |admin: &str| error_of(&format!("{MANY}\n[admin]\n{admin}\n"));
    for bad in [
        "tcp = \"127.0.0.1:9000\"",
        "uds = \"admin.sock\"\ngroup = 5",
        "uds = \"admin.sock\"\nrepair_authority = true",
    ] {
        let e = with(bad);
        assert!(e.contains("[admin] takes uds"), "{bad}: {e}");
    }
}

/// The revocation switches take exactly "deny" or "allow": a typo must not be
/// read as either, least of all as "allow".
#[test]
fn revocation_switches_refuse_anything_but_deny_or_allow() {
    let tls = "client_ca = \"certs/ca.pem\"";
    for key in ["crl_expired", "revocation_unknown"] {
        for typo in ["Deny", "alow", "", "true"] {
            let e = error_of(&GOOD.replace(tls, &format!("{tls}\n{key} = \"{typo}\"")));
            assert!(
                e.starts_with("gw.toml:10:") && e.contains(key) && e.contains("\"deny\""),
                "{key} = {typo:?}: {e}"
            );
        }
    }
    let c = |lines: &str| {
        Config::parse(
            &GOOD.replace(tls, &format!("{tls}\n{lines}")),
            Path::new("gw.toml"),
        )
        .unwrap()
    };
    let d = c("");
    assert!(d.tls.crl_expired_deny && d.tls.revocation_unknown_deny);
    let a = c("crl_expired = \"allow\"\nrevocation_unknown = \"allow\"");
    assert!(!a.tls.crl_expired_deny && !a.tls.revocation_unknown_deny);
}
