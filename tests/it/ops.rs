//! Operating policy on a live gateway: reloads under load, refused reloads, the
//! audit trail, shadow (dry-run) policies, metrics and the admin socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipcgate::policy::{LoadContext, Policy};
use tonic::Code;

use crate::common::*;

const ALLOW_ALICE: &str = r#"{"name":"open","allow_rules":[{"name":"alice-all","source":{"principals":["spiffe://test.local/alice"]}}]}"#;
const DENY_UNARY: &str = r#"{"name":"closed","deny_rules":[{"name":"no-unary","request":{"paths":["/demo.v1.Echo/Unary"]}}],"allow_rules":[{"name":"alice-all","source":{"principals":["spiffe://test.local/alice"]}}]}"#;

async fn metrics_text(h: &Harness) -> String {
    let (status, body) = admin(&h.pki.path("admin.sock"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn reload_under_load_gives_every_call_one_of_the_two_decisions() {
    let h = Harness::start_with(Opts {
        admin: true,
        policy: Some(ALLOW_ALICE.into()),
        ..Default::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut alice = h.alice();
    let s = stop.clone();
    let client = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        while !s.load(Ordering::SeqCst) && outcomes.len() < 20_000 {
            match alice.unary(req(b"x")).await {
                Ok(_) => outcomes.push(Ok(())),
                Err(e) => outcomes.push(Err((e.code(), e.message().to_owned()))),
            }
        }
        outcomes
    });
    for i in 0..20 {
        let text = if i % 2 == 0 { DENY_UNARY } else { ALLOW_ALICE };
        std::fs::write(h.pki.path("policy.json"), text).unwrap();
        let (status, body) = admin(&h.pki.path("admin.sock"), "POST", "/reload").await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let outcomes = client.await.unwrap();
    let (mut ok, mut denied) = (0, 0);
    for o in &outcomes {
        match o {
            Ok(()) => ok += 1,
            Err((Code::PermissionDenied, m)) if m.contains("no-unary") => denied += 1,
            Err(e) => panic!("a call failed for another reason during reloads: {e:?}"),
        }
    }
    assert!(
        ok > 0 && denied > 0,
        "both versions should have decided calls: {ok} allowed, {denied} denied"
    );
    // No connection was dropped: one client, one handshake.
    let m = metrics_text(&h).await;
    assert_eq!(
        metric(&m, "ipcgate_handshakes_total{result=\"ok\",reason=\"\"}"),
        Some(1.0),
        "{m}"
    );
    // 20 from the admin socket, maybe more from the file watcher seeing the writes.
    assert!(
        metric(
            &m,
            "ipcgate_policy_reloads_total{kind=\"enforced\",result=\"ok\"}"
        )
        .unwrap()
            >= 20.0
    );
}

#[tokio::test]
async fn invalid_reload_keeps_the_last_good_policy() {
    let h = Harness::start_with(Opts {
        admin: true,
        policy: Some(ALLOW_ALICE.into()),
        ..Default::default()
    })
    .await;
    let mut alice = h.alice();
    alice.unary(req(b"x")).await.unwrap();
    let bad = r#"{"name":"broken","allow_rules":[{"name":"r","request":{"headers":[{"key":":path","values":["x"]}]}}]}"#;
    std::fs::write(h.pki.path("policy.json"), bad).unwrap();
    let (status, body) = admin(&h.pki.path("admin.sock"), "POST", "/reload").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("policy.json") && body.contains("allow_rules[0].request.headers[0].key"),
        "{body}"
    );
    // The old policy still decides.
    alice.unary(req(b"x")).await.unwrap();
    assert_eq!(h.authz.enforced().name, "open");
    let m = metrics_text(&h).await;
    assert!(
        metric(
            &m,
            "ipcgate_policy_reloads_total{kind=\"enforced\",result=\"failed\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        m.contains("ipcgate_policy_info{kind=\"enforced\",name=\"open\""),
        "{m}"
    );
}

#[tokio::test]
async fn the_file_watcher_reloads_on_change_and_refuses_bad_files() {
    let h = Harness::start_with(Opts {
        admin: true,
        policy: Some(ALLOW_ALICE.into()),
        ..Default::default()
    })
    .await;
    let mut alice = h.alice();
    alice.unary(req(b"x")).await.unwrap();
    // Replace the file the way editors and config tools do: write elsewhere, rename.
    let tmp = h.pki.path("policy.json.tmp");
    std::fs::write(&tmp, DENY_UNARY).unwrap();
    std::fs::rename(&tmp, h.pki.path("policy.json")).unwrap();
    let authz = h.authz.clone();
    eventually("watcher picks up the new policy", || {
        authz.enforced().name == "closed"
    })
    .await;
    assert_eq!(
        alice.unary(req(b"x")).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A broken write is refused; "closed" stays.
    std::fs::write(h.pki.path("policy.json"), "{ not json").unwrap();
    let sock = h.pki.path("admin.sock");
    within("refused reload is counted", async {
        loop {
            let m = metrics_text(&h).await;
            if metric(
                &m,
                "ipcgate_policy_reloads_total{kind=\"enforced\",result=\"failed\"}",
            )
            .unwrap_or(0.0)
                >= 1.0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _ = sock;
    assert_eq!(h.authz.enforced().name, "closed");
    assert_eq!(
        alice.unary(req(b"x")).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

fn audit_policy(condition: &str) -> Policy {
    let json = format!(
        r#"{{"name":"audited","deny_rules":[{{"name":"no-secret","request":{{"paths":["*/Secret"]}}}}],
            "allow_rules":[{{"name":"alice-all","source":{{"principals":["spiffe://test.local/alice"]}}}}],
            "audit_logging_options":{{"audit_condition":"{condition}","audit_loggers":[{{"name":"ipcgate_file_logger","config":{{}}}}]}}}}"#
    );
    Policy::compile(
        &json,
        "audited.json".as_ref(),
        &LoadContext {
            metrics: None,
            file_logger: true,
        },
    )
    .unwrap()
}

fn audit_lines(h: &Harness) -> Vec<serde_json::Value> {
    std::fs::read_to_string(h.pki.path("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn audit_events_follow_the_audit_condition() {
    let h = Harness::start_with(Opts {
        audit_file: true,
        ..Default::default()
    })
    .await;
    let mut alice = h.alice();
    let mut expected = 0;
    for (condition, allow_logged, deny_logged) in [
        ("NONE", false, false),
        ("ON_DENY", false, true),
        ("ON_ALLOW", true, false),
        ("ON_DENY_AND_ALLOW", true, true),
    ] {
        h.authz.set_enforced(audit_policy(condition));
        alice.unary(req(b"x")).await.unwrap();
        let secret = tonic::client::Grpc::new(ipcgate::client::channel(
            h.gw_sock.clone(),
            "localhost".into(),
            h.pki.spiffe("spiffe://test.local/alice"),
        ));
        assert_eq!(
            call_path(secret, "/demo.v1.Echo/Secret").await,
            Code::PermissionDenied
        );
        expected += usize::from(allow_logged) + usize::from(deny_logged);
        let want = expected;
        let hh = &h;
        eventually(&format!("{condition}: {want} audit lines"), || {
            audit_lines(hh).len() >= want
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let lines = audit_lines(&h);
        assert_eq!(lines.len(), want, "{condition}: {lines:#?}");
    }
    let lines = audit_lines(&h);
    let denied = lines.iter().find(|l| l["authorized"] == false).unwrap();
    assert_eq!(denied["rpc_method"], "/demo.v1.Echo/Secret");
    assert_eq!(denied["principal"], "spiffe://test.local/alice");
    assert_eq!(denied["spiffe_id"], "spiffe://test.local/alice");
    assert_eq!(denied["policy_name"], "audited");
    assert_eq!(denied["matched_rule"], "no-secret");
    assert_eq!(denied["policy_version"].as_str().unwrap().len(), 12);
    assert_eq!(denied["cert_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(denied["peer_pid"], std::process::id());
    assert!(
        denied["timestamp"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 1_700_000_000
    );
    assert!(denied["peer_uid"].is_u64() && denied["peer_gid"].is_u64());
    assert!(denied.get("shadow_authorized").is_none());
    let allowed = lines.iter().find(|l| l["authorized"] == true).unwrap();
    assert_eq!(allowed["matched_rule"], "alice-all");
    assert_eq!(allowed["rpc_method"], "/demo.v1.Echo/Unary");
}

async fn call_path(
    mut grpc: tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
) -> Code {
    grpc.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<ipcgate::pb::EchoRequest, ipcgate::pb::EchoReply>::default();
    match grpc
        .unary(
            tonic::Request::new(req(b"x")),
            http::uri::PathAndQuery::from_static(path),
            codec,
        )
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn a_failing_audit_sink_drops_and_counts_but_never_fails_calls() {
    let h = Harness::start_with(Opts {
        admin: true,
        extra: "\n[audit]\nfile = \"/dev/full\"\n".into(),
        ..Default::default()
    })
    .await;
    h.authz.set_enforced(audit_policy("ON_DENY_AND_ALLOW"));
    let mut alice = h.alice();
    for _ in 0..20 {
        alice.unary(req(b"x")).await.unwrap();
    }
    within("dropped events are counted", async {
        loop {
            let m = metrics_text(&h).await;
            if metric(&m, "ipcgate_audit_dropped_total").unwrap_or(0.0) >= 20.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A FIFO at `path` with a reader that never blocks (opened first, so a
/// writer's open does not wait): an audit sink that takes nothing until read.
fn fifo_with_reader(path: &std::path::Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    assert!(std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success());
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

#[tokio::test]
async fn a_slow_audit_sink_never_blocks_calls() {
    // A FIFO nobody reads: the writer blocks once the pipe buffer is full; the
    // queue (16) fills; further events are dropped and counted, calls go on.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.fifo");
    let _reader = fifo_with_reader(&fifo);
    let h = Harness::start_with(Opts {
        admin: true,
        extra: format!("\n[audit]\nfile = \"{}\"\nqueue = 16\n", fifo.display()),
        ..Default::default()
    })
    .await;
    h.authz.set_enforced(audit_policy("ON_DENY_AND_ALLOW"));
    let mut alice = h.alice();
    for _ in 0..600 {
        within("call beside a stuck audit sink", alice.unary(req(b"x")))
            .await
            .unwrap();
    }
    let m = metrics_text(&h).await;
    let dropped = metric(&m, "ipcgate_audit_dropped_total").unwrap();
    assert!(dropped > 0.0, "{m}");
}

#[tokio::test]
async fn shadow_policy_is_counted_and_audited_but_never_enforced() {
    let dry_run = r#"{"name":"dry-run","deny_rules":[{"name":"would-block-unary","request":{"paths":["/demo.v1.Echo/Unary"]}}],"allow_rules":[{"name":"alice-all","source":{"principals":["spiffe://test.local/alice"]}}]}"#;
    // The enforced policy audits nothing by condition, but has a logger: shadow
    // disagreements are still written.
    let enforced = r#"{"name":"open","allow_rules":[{"name":"alice-all","source":{"principals":["spiffe://test.local/alice"]}}],
        "audit_logging_options":{"audit_condition":"NONE","audit_loggers":[{"name":"ipcgate_file_logger"}]}}"#;
    let h = Harness::start_with(Opts {
        admin: true,
        audit_file: true,
        policy: Some(enforced.into()),
        policy_keys: "shadow_file = \"shadow.json\"".into(),
        files: vec![("shadow.json", dry_run.into())],
        ..Default::default()
    })
    .await;
    let mut alice = h.alice();
    for _ in 0..5 {
        alice.unary(req(b"x")).await.unwrap(); // enforced allows; shadow would deny
    }
    for _ in 0..3 {
        alice
            .server_stream(ipcgate::pb::EchoRequest {
                count: 1,
                ..req(b"x")
            })
            .await
            .unwrap();
    }
    let m = metrics_text(&h).await;
    assert_eq!(
        metric(&m, "ipcgate_shadow_calls_total{decision=\"deny\"}"),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "ipcgate_shadow_calls_total{decision=\"allow\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "ipcgate_shadow_mismatch_total{enforced=\"allow\",shadow=\"deny\"}"
        ),
        Some(5.0),
        "{m}"
    );
    assert!(
        m.contains("ipcgate_policy_info{kind=\"shadow\",name=\"dry-run\""),
        "{m}"
    );
    let hh = &h;
    eventually("mismatches audited", || audit_lines(hh).len() >= 5).await;
    let lines = audit_lines(&h);
    assert_eq!(
        lines.len(),
        5,
        "only the disagreements are written: {lines:#?}"
    );
    for l in &lines {
        assert_eq!(
            (l["authorized"].as_bool(), l["shadow_authorized"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(l["shadow_matched_rule"], "would-block-unary");
        assert_eq!(l["shadow_policy_name"], "dry-run");
    }
}

#[tokio::test]
async fn admin_socket_serves_health_metrics_and_reload() {
    let h = Harness::start_with(Opts {
        admin: true,
        ..Default::default()
    })
    .await;
    let sock = h.pki.path("admin.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(admin(&sock, "GET", "/healthz").await, (200, "ok\n".into()));
    let mut alice = h.alice();
    alice.unary(req(b"x")).await.unwrap();
    let mut mallory = h.client(h.pki.spiffe("spiffe://test.local/mallory"));
    assert_eq!(
        mallory.unary(req(b"x")).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A client that trusts the gateway but holds a certificate from another CA.
    let other = ipcgate::ca::Ca::generate(
        "stranger CA",
        Duration::from_secs(3600),
        ipcgate::ca::KeyType::EcdsaP256,
    )
    .unwrap();
    let stranger = other
        .issue(&ipcgate::ca::LeafSpec {
            spiffe: vec!["spiffe://x/y".into()],
            client: true,
            ..Default::default()
        })
        .unwrap();
    let cfg = client_config(&stranger.cert_pem, &stranger.key_pem, h.pki.ca.cert_pem());
    assert!(ipcgate::client::probe(&h.gw_sock, "localhost", cfg)
        .await
        .is_err());
    // The client sees the alert a moment before the gateway counts the failure.
    within("handshake failure counted", async {
        while !metrics_text(&h)
            .await
            .contains("ipcgate_handshakes_total{result=\"failed\"")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let m = metrics_text(&h).await;
    for (series, want) in [
        (
            "ipcgate_authz_decisions_total{decision=\"allow\",rule=\"alice-echo\"}",
            1.0,
        ),
        (
            "ipcgate_authz_decisions_total{decision=\"deny\",rule=\"\"}",
            1.0,
        ),
        // The policy names /demo.v1.Echo/Unary exactly (in a deny rule), so it
        // has its own series; methods it only matches by pattern count as "other".
        (
            "ipcgate_rpc_calls_total{method=\"/demo.v1.Echo/Unary\",decision=\"allow\"}",
            1.0,
        ),
        (
            "ipcgate_rpc_calls_total{method=\"/demo.v1.Echo/Unary\",decision=\"deny\"}",
            1.0,
        ),
        (
            "ipcgate_rpc_calls_total{method=\"other\",decision=\"allow\"}",
            0.0,
        ),
        (
            "ipcgate_handshakes_total{result=\"failed\",reason=\"unknown_issuer\"}",
            1.0,
        ),
        ("ipcgate_active_connections", 2.0),
        (
            "ipcgate_upstream_response_seconds_count{backend=\"unix:",
            -1.0,
        ),
    ] {
        if want < 0.0 {
            assert!(m.contains(series), "{series} missing:\n{m}");
        } else {
            assert_eq!(metric(&m, series), Some(want), "{series}:\n{m}");
        }
    }
    assert!(
        m.contains("ipcgate_policy_info{kind=\"enforced\",name=\"test-policy\",version=\""),
        "{m}"
    );
    let (status, body) = admin(&sock, "POST", "/reload").await;
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["policy"]["ok"], true);
    assert_eq!(report["policy"]["changed"], false);
    assert_eq!(admin(&sock, "GET", "/reload").await.0, 405);
    assert_eq!(admin(&sock, "GET", "/nope").await.0, 404);
}

/// `runtime.busy_poll`: back-to-back calls make the connection spin between
/// them, and the spinning ends once it is quiet (it must never become a busy
/// loop on an idle connection). Off by default: no turn at all.
#[tokio::test]
async fn busy_poll_spins_between_calls_and_stops_when_quiet() {
    let h = Harness::start_with(Opts {
        extra: "\n[runtime]\nbusy_poll = \"1ms\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut alice = h.alice();
    for _ in 0..200 {
        alice.unary(req(b"x")).await.unwrap();
    }
    let turns = h.metrics.busy_poll_turns.get();
    assert!(turns > 0, "200 back-to-back calls never spun");
    // The window is at most 1 ms: well within this, the turns stop.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let settled = h.metrics.busy_poll_turns.get();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        h.metrics.busy_poll_turns.get(),
        settled,
        "a quiet connection is still spinning"
    );
    // And a call after the quiet spell is still answered.
    alice.unary(req(b"x")).await.unwrap();

    let off = Harness::start().await;
    let mut alice = off.alice();
    for _ in 0..50 {
        alice.unary(req(b"x")).await.unwrap();
    }
    assert_eq!(off.metrics.busy_poll_turns.get(), 0, "spun while off");
}

/// logrotate moves the audit file while the sink is slow and the queue full:
/// the reopen it asks for must not be lost with the queued message, or every
/// later event goes on into the rotated file. The sink here is a FIFO nobody
/// reads at first.
#[test]
fn a_reopen_asked_while_the_audit_queue_is_full_is_kept() {
    use std::io::Read;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.jsonl");
    let mut reader = fifo_with_reader(&path);
    let (written, dropped) = (
        prometheus_client::metrics::counter::Counter::default(),
        prometheus_client::metrics::counter::Counter::default(),
    );
    let auditor =
        ipcgate::audit::Auditor::start(Some(&path), 4, written.clone(), dropped.clone()).unwrap();
    let pki = Pki::new();
    let issued = pki.issue_spiffe("spiffe://test.local/alice");
    let peer = Arc::new(ipcgate::identity::Peer::new(&[issued.cert_der], None, None).unwrap());
    let policy = Arc::new(audit_policy("ON_DENY_AND_ALLOW"));
    let event = |method: &str| ipcgate::audit::AuditEvent {
        time: std::time::SystemTime::now(),
        method: method.into(),
        peer: peer.clone(),
        policy: policy.clone(),
        rule: None,
        authorized: true,
        shadow: None,
        stdout: false,
        file: true,
    };
    // Fill the pipe until the writer blocks in a write, then the queue until
    // it drops: the queue stays full while nobody reads.
    while dropped.get() == 0 {
        auditor.submit(event("/a.B/Before"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = dropped.get();
    while dropped.get() == before {
        auditor.submit(event("/a.B/Before"));
    }
    // logrotate's order: move the file, then ask for the reopen. Asked
    // before the move, the reopen could be taken before it too (by a writer
    // that was only waiting for a core, not stuck in its write), and would
    // open the old file again.
    std::fs::rename(&path, d.path().join("audit.jsonl.1")).unwrap();
    auditor.reopen();
    // The reader catches up: the writer unblocks and drains the queue. A
    // flush answered means every event queued so far is written, however
    // long the writer waited for a core on a loaded machine.
    let mut buf = vec![0u8; 1 << 16];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !auditor.flush(Duration::from_millis(10)) {
        let _ = reader.read(&mut buf);
        assert!(
            std::time::Instant::now() < deadline,
            "the audit writer never drained its queue"
        );
    }
    let before = dropped.get();
    auditor.submit(event("/a.B/Marker"));
    assert_eq!(dropped.get(), before, "the queue is empty after a flush");
    assert!(
        auditor.flush(Duration::from_secs(30)),
        "the marker was not written"
    );
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        text.contains("/a.B/Marker"),
        "the event after the rotation did not reach the new audit file"
    );
}

/// The gateway's shutdown waits for its audit writer: the events of the last
/// calls are still queued behind a sink that is not reading (a FIFO), and a
/// gateway that returned at once would leave them to a detached thread its
/// process is about to take down. The wait is bounded (5 s), so while nobody
/// reads, the shutdown must still be waiting well inside that bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_until_the_last_calls_are_audited() {
    use std::io::Read;
    const CALLS: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.fifo");
    let mut reader = fifo_with_reader(&fifo);
    let h = Harness::start_with(Opts {
        extra: format!("\n[audit]\nfile = \"{}\"\nqueue = 4096\n", fifo.display()),
        ..Default::default()
    })
    .await;
    h.authz.set_enforced(audit_policy("ON_DENY_AND_ALLOW"));
    let metrics = h.metrics.clone();
    {
        let mut alice = h.alice();
        for _ in 0..CALLS {
            within("an audited call", alice.unary(req(b"x")))
                .await
                .unwrap();
        }
    }
    // The pipe (64 KiB) holds about a hundred lines: the rest wait in the
    // queue, behind a writer stuck in its write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let written = metrics.audit_events.get();
    assert!(
        written < CALLS,
        "precondition: the sink took all {written} events without being read"
    );
    assert_eq!(metrics.audit_dropped.get(), 0, "precondition: none dropped");
    let stopping = tokio::spawn(h.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the shutdown returned with {} of {CALLS} events unwritten",
        CALLS - metrics.audit_events.get()
    );
    // Someone reads: the writer drains the queue and the shutdown ends.
    let done = Arc::new(AtomicBool::new(false));
    let draining = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut text = Vec::new();
            loop {
                match reader.read(&mut buf) {
                    Ok(n) if n > 0 => text.extend_from_slice(&buf[..n]),
                    _ if done.load(Ordering::Acquire) => break,
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            text
        })
    };
    within("the shutdown, once the sink reads", stopping)
        .await
        .unwrap();
    assert_eq!(
        metrics.audit_events.get(),
        CALLS,
        "the shutdown ended before every call was audited"
    );
    done.store(true, Ordering::Release);
    let text = String::from_utf8(draining.join().unwrap()).unwrap();
    assert_eq!(
        text.lines().count() as u64,
        CALLS,
        "lines read from the sink"
    );
}

/// A shutdown flushes the audit writer, a detached thread: `flush` returns
/// only once every event queued before it is written, and says so honestly
/// when the sink will not take them (here a FIFO nobody reads yet).
#[test]
fn a_flush_waits_for_the_queued_audit_events() {
    use std::io::Read;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.jsonl");
    let mut reader = fifo_with_reader(&path);
    let c = prometheus_client::metrics::counter::Counter::default;
    let (written, dropped) = (c(), c());
    let auditor =
        ipcgate::audit::Auditor::start(Some(&path), 64, written.clone(), dropped.clone()).unwrap();
    let pki = Pki::new();
    let issued = pki.issue_spiffe("spiffe://test.local/alice");
    let peer = Arc::new(ipcgate::identity::Peer::new(&[issued.cert_der], None, None).unwrap());
    let policy = Arc::new(audit_policy("ON_DENY_AND_ALLOW"));
    let event = || ipcgate::audit::AuditEvent {
        time: std::time::SystemTime::now(),
        method: "/a.B/C".into(),
        peer: peer.clone(),
        policy: policy.clone(),
        rule: None,
        authorized: false,
        shadow: None,
        stdout: false,
        file: true,
    };
    // Until the pipe is full: the writer stuck in a write, the queue full
    // behind it and still full 100 ms later.
    let mut submitted = 0u64;
    let mut last = 0;
    loop {
        auditor.submit(event());
        submitted += 1;
        if dropped.get() > last {
            std::thread::sleep(Duration::from_millis(100));
            last = dropped.get();
            auditor.submit(event());
            submitted += 1;
            if dropped.get() > last {
                break;
            }
        }
    }
    assert!(
        !auditor.flush(Duration::from_millis(300)),
        "a flush claimed events were written that the sink never took"
    );
    // Someone reads: the writer drains the queue, and the flush says so once
    // all of them are written.
    let draining = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        let mut quiet = 0;
        while quiet < 100 {
            match reader.read(&mut buf) {
                Ok(n) if n > 0 => {
                    total += n;
                    quiet = 0;
                }
                _ => {
                    quiet += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        total
    });
    assert!(auditor.flush(Duration::from_secs(20)), "not flushed");
    assert_eq!(written.get() + dropped.get(), submitted);
    assert!(written.get() > 64, "only {} written", written.get());
    assert!(draining.join().unwrap() > 0);
}

/// A symbolic link planted at the audit file's path is not followed.
#[test]
fn the_audit_file_is_never_opened_through_a_symlink() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.jsonl");
    let target = d.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let c = prometheus_client::metrics::counter::Counter::default;
    assert!(ipcgate::audit::Auditor::start(Some(&path), 4, c(), c()).is_err());
    assert!(!target.exists());
}

/// An admin client that connects and stalls (a request head sent in part,
/// or nothing at all) is closed after the header timeout, and the socket
/// still answers others meanwhile.
#[tokio::test]
async fn a_stalled_admin_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start_with(Opts {
        admin: true,
        ..Default::default()
    })
    .await;
    let sock = h.pki.path("admin.sock");
    let mut silent = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let mut partial = tokio::net::UnixStream::connect(&sock).await.unwrap();
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(admin(&sock, "GET", "/healthz").await, (200, "ok\n".into()));
    for (what, s) in [("silent", &mut silent), ("partial", &mut partial)] {
        let mut buf = Vec::new();
        // Whatever comes (hyper may answer 408 first), the connection ends.
        within(what, s.read_to_end(&mut buf)).await.unwrap();
    }
}
