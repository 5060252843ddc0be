//! The `ipcgate` binary: CA commands, `serve` as a real process (logs, SIGTERM),
//! `policy check` and `demo`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tonic::Code;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_ipcgate");

fn ipcgate(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = ipcgate(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn make_pki(d: &Path) {
    let s = |p: &str| d.join(p).display().to_string();
    ok(&["ca", "init", "--dir", &s("")]);
    ok(&[
        "cert",
        "issue",
        "--ca-dir",
        &s(""),
        "--out",
        &s("gateway"),
        "--dns",
        "localhost",
        "--server",
    ]);
    ok(&[
        "cert",
        "issue",
        "--ca-dir",
        &s(""),
        "--out",
        &s("alice"),
        "--spiffe",
        "spiffe://test.local/alice",
        "--client",
        "--ttl",
        "1h",
    ]);
}

#[test]
fn ca_and_cert_commands_write_keys_0600_and_never_overwrite() {
    let d = tempfile::tempdir().unwrap();
    make_pki(d.path());
    assert_eq!(mode(&d.path().join("ca.key")), 0o600);
    assert_eq!(mode(&d.path().join("alice.key")), 0o600);
    assert_eq!(mode(&d.path().join("gateway.key")), 0o600);
    let ca_key = std::fs::read(d.path().join("ca.key")).unwrap();

    // Existing files are refused without --force and left as they were.
    let out = ipcgate(&["ca", "init", "--dir", d.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read(d.path().join("ca.key")).unwrap(), ca_key);

    // The CA key never appears on the terminal.
    let out = ok(&[
        "ca",
        "init",
        "--dir",
        d.path().join("ca2").to_str().unwrap(),
    ]);
    assert!(!out.contains("PRIVATE KEY"), "{out}");

    // Purpose is required; a bad SPIFFE ID is explained.
    let dir = d.path().to_str().unwrap();
    let out = ipcgate(&[
        "cert", "issue", "--ca-dir", dir, "--out", "/tmp/x", "--dns", "a",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client"));
    let out = ipcgate(&[
        "cert", "issue", "--ca-dir", dir, "--out", "/tmp/x", "--spiffe", "http://x", "--client",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("SPIFFE"));
    // A missing CA names the command that makes one.
    let out = ipcgate(&[
        "cert",
        "issue",
        "--ca-dir",
        "/nonexistent",
        "--out",
        "/tmp/x",
        "--dns",
        "a",
        "--client",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ipcgate ca init"));
}

#[test]
fn policy_check_reports_errors_with_file_and_field() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.json");
    std::fs::write(&good, POLICY).unwrap();
    let bad = d.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\"name\":\"x\",\"allow_rules\":[{\"name\":\"r\",\"source\":{\"principal\":[\"a\"]}}]}",
    )
    .unwrap();
    let out = ok(&["policy", "check", good.to_str().unwrap()]);
    assert!(out.contains("4 allow rules"), "{out}");
    let out = ipcgate(&[
        "policy",
        "check",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json: allow_rules[0].source")
            && err.contains("unknown field `principal`"),
        "{err}"
    );
}

#[test]
fn demo_exits_zero() {
    let out = ipcgate(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("every call behaved as the policy says"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[tokio::test]
async fn serve_logs_denials_and_handshake_failures_and_stops_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    make_pki(d.path());
    let backend_sock = d.path().join("echo.sock");
    let echo = ipcgate::demo::EchoService::default();
    let _backend = ipcgate::demo::spawn_backend(&backend_sock, echo, None).unwrap();
    std::fs::write(d.path().join("policy.json"), POLICY).unwrap();
    let cfg = d.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nuds = \"gw.sock\"\nmode = \"0660\"\n[tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n[policy]\nfile = \"policy.json\"\n[[route]]\nservice = \"demo.v1.Echo\"\nbackend = \"unix:{}\"\n",
            backend_sock.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = d.path().join("gw.sock");
    within("gateway start", async {
        while !sock.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(mode(&sock), 0o660);

    let alice_cfg = ipcgate::client::config_from_files(
        &d.path().join("alice.pem"),
        &d.path().join("alice.key"),
        &d.path().join("ca.pem"),
    )
    .unwrap();
    let mut alice = ipcgate::pb::echo_client::EchoClient::new(ipcgate::client::channel(
        sock.clone(),
        "localhost".into(),
        alice_cfg,
    ));
    for _ in 0..3 {
        alice.unary(req(b"allowed")).await.unwrap();
    }
    let secret = tonic::client::Grpc::new(ipcgate::client::channel(
        sock.clone(),
        "localhost".into(),
        ipcgate::client::config_from_files(
            &d.path().join("alice.pem"),
            &d.path().join("alice.key"),
            &d.path().join("ca.pem"),
        )
        .unwrap(),
    ));
    let e = call_secret(secret).await;
    assert_eq!(e, Code::PermissionDenied);
    // A client from another CA fails the handshake. It trusts the gateway's
    // CA, so the refusal is the gateway's, not the client's.
    let other = Pki::new();
    let issued = other
        .ca
        .issue(&ipcgate::ca::LeafSpec {
            spiffe: vec!["spiffe://test.local/alice".into()],
            client: true,
            ..Default::default()
        })
        .unwrap();
    let bad = client_config(
        &issued.cert_pem,
        &issued.key_pem,
        &std::fs::read_to_string(d.path().join("ca.pem")).unwrap(),
    );
    assert!(ipcgate::client::probe(&sock, "localhost", bad)
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || {
        let _ = &mut child;
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "exit status {:?}", out.status);
    assert!(!sock.exists(), "socket left behind after SIGTERM");
    let log = String::from_utf8_lossy(&out.stderr);
    let denied: Vec<_> = log
        .lines()
        .filter(|l| l.contains("request denied"))
        .collect();
    assert_eq!(denied.len(), 1, "{log}");
    for field in [
        "method=\"/demo.v1.Echo/Secret\"",
        "client.id=\"spiffe://test.local/alice\"",
        "authz.rule=\"deny-secret\"",
        "policy.name=test-policy",
    ] {
        assert!(denied[0].contains(field), "missing {field}: {}", denied[0]);
    }
    let hs: Vec<_> = log
        .lines()
        .filter(|l| l.contains("handshake failed"))
        .collect();
    assert_eq!(hs.len(), 1, "{log}");
    assert!(hs[0].contains("UnknownIssuer"), "{}", hs[0]);
    // Allowed calls print nothing at the default level.
    assert!(!log.contains("/demo.v1.Echo/Unary"), "{log}");
}

async fn call_secret(mut grpc: tonic::client::Grpc<tonic::transport::Channel>) -> Code {
    grpc.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<ipcgate::pb::EchoRequest, ipcgate::pb::EchoReply>::default();
    let path = http::uri::PathAndQuery::from_static("/demo.v1.Echo/Secret");
    match grpc
        .unary(tonic::Request::new(req(b"x")), path, codec)
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[test]
fn policy_explain_shows_the_decision_and_each_rule() {
    let d = tempfile::tempdir().unwrap();
    make_pki(d.path());
    let policy = d.path().join("p.json");
    std::fs::write(&policy, POLICY).unwrap();
    let (p, alice) = (policy.to_str().unwrap(), d.path().join("alice.pem"));
    let alice = alice.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["policy", "explain", "--policy", p, "--cert", alice];
        args.extend_from_slice(extra);
        ok(&args)
    };
    // Allowed.
    let out = run(&["--method", "/demo.v1.Echo/Unary"]);
    assert!(
        out.contains("decision: ALLOW by allow rule \"alice-echo\""),
        "{out}"
    );
    assert!(
        out.contains("[x] principals: \"spiffe://test.local/alice\" matches URI SAN"),
        "{out}"
    );
    // Denied by a deny rule.
    let out = run(&["--method", "/demo.v1.Echo/Secret"]);
    assert!(
        out.contains("decision: DENY by deny rule \"deny-secret\""),
        "{out}"
    );
    // A header tips it.
    let out = run(&[
        "--method",
        "/demo.v1.Echo/Unary",
        "--header",
        "X-Role=banned-user",
    ]);
    assert!(
        out.contains("DENY by deny rule \"deny-banned-role\""),
        "{out}"
    );
    assert!(
        out.contains("[x] headers[x-role]: \"banned-user\" matches \"banned*\""),
        "{out}"
    );
    // No rule at all.
    let out = run(&["--method", "/other.v2.Thing/Get"]);
    assert!(
        out.contains("decision: DENY, no allow rule matched"),
        "{out}"
    );
    // JSON for machines.
    let out = run(&[
        "--method",
        "/demo.v1.Echo/ServerStream",
        "--header",
        "x-role=db-ops",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["allowed"], true);
    assert_eq!(v["rule"], "alice-echo");
    assert_eq!(v["allow_rules"].as_array().unwrap().len(), 4);
    assert_eq!(
        v["allow_rules"][3]["matched"], true,
        "admin-header matches too: {v:#}"
    );
    // A non-canonical method is explained, not evaluated.
    let out = ipcgate(&[
        "policy",
        "explain",
        "--policy",
        p,
        "--cert",
        alice,
        "--method",
        "/demo.v1.Echo//Unary",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNIMPLEMENTED"));
}

/// SIGHUP reloads the policy of a running `ipcgate serve` (file watching off),
/// and `stdout_logger` writes A59 lines to stdout.
#[tokio::test]
async fn sighup_reloads_and_stdout_logger_writes_audit_lines() {
    let d = tempfile::tempdir().unwrap();
    make_pki(d.path());
    let backend_sock = d.path().join("echo.sock");
    let _backend =
        ipcgate::demo::spawn_backend(&backend_sock, ipcgate::demo::EchoService::default(), None)
            .unwrap();
    let open = r#"{"name":"v1","allow_rules":[{"name":"alice","source":{"principals":["spiffe://test.local/alice"]}}],
        "audit_logging_options":{"audit_condition":"ON_DENY_AND_ALLOW","audit_loggers":[{"name":"stdout_logger"}]}}"#;
    let closed = r#"{"name":"v2","allow_rules":[],
        "audit_logging_options":{"audit_condition":"ON_DENY","audit_loggers":[{"name":"stdout_logger"}]}}"#;
    std::fs::write(d.path().join("policy.json"), open).unwrap();
    let cfg = d.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nuds = \"gw.sock\"\n[tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n[policy]\nfile = \"policy.json\"\nwatch = false\n[[route]]\nservice = \"*\"\nbackend = \"unix:{}\"\n",
            backend_sock.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = d.path().join("gw.sock");
    within("gateway start", async {
        while !sock.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let cfg = ipcgate::client::config_from_files(
        &d.path().join("alice.pem"),
        &d.path().join("alice.key"),
        &d.path().join("ca.pem"),
    )
    .unwrap();
    let mut alice = ipcgate::pb::echo_client::EchoClient::new(ipcgate::client::channel(
        sock.clone(),
        "localhost".into(),
        cfg,
    ));
    alice.unary(req(b"x")).await.unwrap();
    std::fs::write(d.path().join("policy.json"), closed).unwrap();
    // Watching is off: nothing changes until SIGHUP.
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.unary(req(b"x")).await.unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    within("SIGHUP applies v2 on the same connection", async {
        loop {
            match alice.unary(req(b"x")).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => {
                    assert_eq!(e.code(), Code::PermissionDenied);
                    assert!(e.message().contains("v2"), "{}", e.message());
                    break;
                }
            }
        }
    })
    .await;
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let out = tokio::task::spawn_blocking(move || {
        let _ = &mut child;
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 3, "{stdout}");
    assert_eq!(lines[0]["policy_name"], "v1");
    assert_eq!(lines[0]["authorized"], true);
    let last = lines.last().unwrap();
    assert_eq!(
        (last["policy_name"].as_str(), last["authorized"].as_bool()),
        (Some("v2"), Some(false))
    );
    assert_eq!(last["matched_rule"], "");
}

/// The uid/gid extension against real processes: the same certificate, used from
/// two accounts, gets two decisions. Needs root to run the client as another uid;
/// without root it checks the current account only.
#[tokio::test]
async fn same_certificate_two_uids_two_decisions() {
    let d = tempfile::tempdir().unwrap();
    make_pki(d.path());
    let me = proc_id("Uid:");
    let other: u32 = 65534;
    let backend_sock = d.path().join("echo.sock");
    let _backend =
        ipcgate::demo::spawn_backend(&backend_sock, ipcgate::demo::EchoService::default(), None)
            .unwrap();
    let policy = format!(
        r#"{{"name":"uids","allow_rules":[{{"name":"alice-as-me","source":{{"principals":["spiffe://test.local/alice"],"uids":[{me}]}}}}]}}"#
    );
    std::fs::write(d.path().join("policy.json"), policy).unwrap();
    // A directory the other account may traverse, the socket group-writable for
    // a group it is in.
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let gid = proc_id("Gid:");
    let cfg = gateway_toml(
        d.path(),
        &format!("uds = \"run/gw.sock\"\nmode = \"0660\"\ngroup = {gid}"),
        &backend_sock,
    );
    let gw = Running::start(&cfg).await;
    let sock = gw.sock.clone();
    let out = call_as(&sock, d.path(), None, gid).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("grpc-status: 0"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if me == 0 {
        // The other account must be able to read the client key to present it.
        std::os::unix::fs::chown(d.path().join("alice.key"), Some(other), None).unwrap();
        let out = call_as(&sock, d.path(), Some(other), gid).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("grpc-status: 7"),
            "uid {other} was not denied: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!(
            "not root: the second account's call is skipped; the unit tests cover the uid rule"
        );
    }
    gw.stop().await;
}

/// A member of a denied group who makes another group the effective one
/// (`sg other ipcgate call ...`) keeps the denied one among its supplementary
/// groups, and the deny rule still holds. Needs root to set a process's groups.
#[tokio::test]
async fn a_denied_group_held_as_a_supplementary_group_is_still_denied() {
    if proc_id("Uid:") != 0 {
        eprintln!("not root: cannot set a client's groups; the unit tests cover the gids rule");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    make_pki(d.path());
    let backend_sock = d.path().join("echo.sock");
    let echo = ipcgate::demo::EchoService::default();
    let calls = echo.calls.clone();
    let _backend = ipcgate::demo::spawn_backend(&backend_sock, echo, None).unwrap();
    std::fs::write(
        d.path().join("policy.json"),
        r#"{"name":"groups","deny_rules":[{"name":"no-4301","source":{"gids":[4301]}}],
           "allow_rules":[{"name":"alice","source":{"principals":["spiffe://test.local/alice"]}}]}"#,
    )
    .unwrap();
    let cfg = gateway_toml(d.path(), "uds = \"gw.sock\"", &backend_sock);
    let gw = Running::start(&cfg).await;
    let sock = gw.sock.clone();
    let call = |groups: Vec<libc::gid_t>| {
        let mut c = call_cmd(&sock, d.path());
        use std::os::unix::process::CommandExt;
        c.gid(4300);
        // SAFETY: between fork and exec only `setgroups`, which is
        // async-signal-safe, runs; `groups` lives in the closure, which the
        // child owns.
        unsafe {
            c.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        c
    };
    let run = |mut c: Command| async move {
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let out = run(call(vec![4302])).await;
    assert!(out.contains("grpc-status: 0"), "{out}");
    let out = run(call(vec![4302, 4301])).await;
    assert!(
        out.contains("grpc-status: 7"),
        "group 4301 was not denied: {out}"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    gw.stop().await;
}

/// `dir/gw.toml`: a gateway with `listen` as its `[listen]` table, the
/// certificates and `policy.json` of `dir`, every service routed to `backend`.
fn gateway_toml(dir: &Path, listen: &str, backend: &Path) -> PathBuf {
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\n{listen}\n[tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n[policy]\nfile = \"policy.json\"\n[[route]]\nservice = \"*\"\nbackend = \"unix:{}\"\n",
            backend.display()
        ),
    )
    .unwrap();
    cfg
}

/// `ipcgate call` of Echo/Unary on `sock` as alice, with `dir`'s files.
fn call_cmd(sock: &Path, dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "call",
        "--socket",
        sock.to_str().unwrap(),
        "--method",
        "/demo.v1.Echo/Unary",
    ])
    .arg("--cert")
    .arg(dir.join("alice.pem"))
    .arg("--key")
    .arg(dir.join("alice.key"))
    .arg("--ca")
    .arg(dir.join("ca.pem"));
    c
}

/// `ipcgate call` as a separate process, optionally as another account.
async fn call_as(sock: &Path, dir: &Path, uid: Option<u32>, gid: u32) -> std::process::Output {
    let mut c = call_cmd(sock, dir);
    if let Some(u) = uid {
        use std::os::unix::process::CommandExt;
        c.uid(u).gid(gid);
    }
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn proc_id(field: &str) -> u32 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

/// The README's "Certificate lifecycle" walk-through runs as written.
#[test]
fn readme_lifecycle_walkthrough_runs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Certificate lifecycle")
        .nth(1)
        .expect("section");
    let script = section
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(d.path())
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("revoked:     no"), "{stdout}");
    assert!(stdout.contains("Serial Number"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is revoked"));
}

/// SIGTERM: no new connections, GOAWAY, a stream in flight runs to its end,
/// then exit 0.
#[tokio::test]
async fn sigterm_lets_a_streaming_call_in_flight_finish() {
    use tokio_stream::StreamExt;
    let d = tempfile::tempdir().unwrap();
    make_pki(d.path());
    let backend_sock = d.path().join("echo.sock");
    let _backend =
        ipcgate::demo::spawn_backend(&backend_sock, ipcgate::demo::EchoService::default(), None)
            .unwrap();
    std::fs::write(d.path().join("policy.json"), POLICY).unwrap();
    let cfg = d.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nuds = \"gw.sock\"\n[tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n[policy]\nfile = \"policy.json\"\n[[route]]\nservice = \"*\"\nbackend = \"unix:{}\"\n[limits]\ndrain_timeout = \"20s\"\n",
            backend_sock.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = d.path().join("gw.sock");
    within("gateway start", async {
        while !sock.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let cfg = ipcgate::client::config_from_files(
        &d.path().join("alice.pem"),
        &d.path().join("alice.key"),
        &d.path().join("ca.pem"),
    )
    .unwrap();
    let mut alice = ipcgate::pb::echo_client::EchoClient::new(ipcgate::client::channel(
        sock.clone(),
        "localhost".into(),
        cfg,
    ));
    let mut s = alice
        .server_stream(ipcgate::pb::EchoRequest {
            count: 6,
            delay_ms: 250,
            ..req(b"drain")
        })
        .await
        .unwrap()
        .into_inner();
    s.next().await.unwrap().unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut n = 1;
    while let Some(m) = within("stream after SIGTERM", s.next()).await {
        m.unwrap();
        n += 1;
    }
    assert_eq!(n, 6, "the stream in flight was cut");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert!(!sock.exists());
}

/// systemd: the listening socket comes from socket activation, and READY=1,
/// RELOADING=1 and STOPPING=1 reach NOTIFY_SOCKET.
#[tokio::test]
async fn systemd_socket_activation_and_notify() {
    let d = tempfile::tempdir().unwrap();
    make_pki(d.path());
    let backend_sock = d.path().join("echo.sock");
    let _backend =
        ipcgate::demo::spawn_backend(&backend_sock, ipcgate::demo::EchoService::default(), None)
            .unwrap();
    std::fs::write(d.path().join("policy.json"), POLICY).unwrap();
    let cfg = d.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nsystemd = \"gateway\"\n[tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n[policy]\nfile = \"policy.json\"\nwatch = false\n[[route]]\nservice = \"*\"\nbackend = \"unix:{}\"\n",
            backend_sock.display()
        ),
    )
    .unwrap();
    let notify_path = d.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let sock = d.path().join("activated.sock");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/socket_activate.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .arg(&sock)
        .arg("gateway")
        .arg(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let gateway_pid = line.trim().to_owned();
    let recv = |notify: &std::os::unix::net::UnixDatagram| {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(&notify), "READY=1");
    let cfg = ipcgate::client::config_from_files(
        &d.path().join("alice.pem"),
        &d.path().join("alice.key"),
        &d.path().join("ca.pem"),
    )
    .unwrap();
    let mut alice = ipcgate::pb::echo_client::EchoClient::new(ipcgate::client::channel(
        sock.clone(),
        "localhost".into(),
        cfg,
    ));
    alice.unary(req(b"activated")).await.unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &gateway_pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(recv(&notify), "RELOADING=1");
    assert_eq!(recv(&notify), "READY=1");
    assert!(Command::new("kill")
        .args(["-TERM", &gateway_pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(recv(&notify), "STOPPING=1");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    // The socket is systemd's: the gateway leaves it.
    assert!(sock.exists());
}
