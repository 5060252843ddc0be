//! The A43 policy end to end: which identities reach which methods.

use ipcgate::ca::LeafSpec;
use tonic::{Code, Request};

use crate::common::*;

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn principals_match_uri_then_dns_then_subject() {
    let h = Harness::start().await;
    // URI SAN (alice-echo: all Echo methods).
    let mut alice = h.alice();
    assert_eq!(code(alice.unary(req(b"x")).await), Code::Ok);
    assert_eq!(code(alice.server_stream(req(b"x")).await), Code::Ok);
    // DNS SAN suffix (svc-dns-unary: Unary only).
    let mut svc = h.client(h.pki.client(LeafSpec {
        dns: vec!["bob.svc.test".into()],
        client: true,
        ..Default::default()
    }));
    assert_eq!(code(svc.unary(req(b"x")).await), Code::Ok);
    assert_eq!(
        code(svc.server_stream(req(b"x")).await),
        Code::PermissionDenied
    );
    // A suffix must match the whole tail: "bob.svc.test.evil" is not "*.svc.test".
    let mut evil = h.client(h.pki.client(LeafSpec {
        dns: vec!["bob.svc.test.evil".into()],
        client: true,
        ..Default::default()
    }));
    assert_eq!(code(evil.unary(req(b"x")).await), Code::PermissionDenied);
    // Someone with no matching name at all.
    let mut mallory = h.client(h.pki.spiffe("spiffe://test.local/mallory"));
    assert_eq!(code(mallory.unary(req(b"x")).await), Code::PermissionDenied);
    // A SPIFFE ID that only starts like alice's.
    let mut alice2 = h.client(h.pki.spiffe("spiffe://test.local/alice2"));
    assert_eq!(code(alice2.unary(req(b"x")).await), Code::PermissionDenied);
}

#[tokio::test]
async fn deny_rules_win_over_allow_rules() {
    let h = Harness::start().await;
    let mut alice = h.alice();
    // alice-echo allows /demo.v1.Echo/*, but a banned role header hits a deny rule.
    let mut r = Request::new(req(b"x"));
    r.metadata_mut()
        .insert("x-role", "banned-user".parse().unwrap());
    let e = alice.unary(r).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("deny-banned-role"), "{}", e.message());
    // Without the header the same call is allowed.
    assert_eq!(code(alice.unary(req(b"x")).await), Code::Ok);
}

#[tokio::test]
async fn header_rules_match_values_and_joined_multi_values() {
    let h = Harness::start().await;
    // admin-header: any client, ServerStream, x-role in {admin, *-ops}.
    let mut mallory = h.client(h.pki.spiffe("spiffe://test.local/mallory"));
    for (values, want) in [
        (vec!["admin"], Code::Ok),
        (vec!["db-ops"], Code::Ok),
        (vec!["Admin"], Code::PermissionDenied),
        (vec!["admin2"], Code::PermissionDenied),
        (vec![], Code::PermissionDenied),
        // Two values are matched as "user,db-ops", which ends in -ops.
        (vec!["user", "db-ops"], Code::Ok),
        // "admin,user" is neither "admin" nor "*-ops".
        (vec!["admin", "user"], Code::PermissionDenied),
    ] {
        let mut r = Request::new(ipcgate::pb::EchoRequest {
            count: 1,
            ..req(b"x")
        });
        for v in &values {
            r.metadata_mut().append("x-role", v.parse().unwrap());
        }
        assert_eq!(code(mallory.server_stream(r).await), want, "{values:?}");
    }
}

#[tokio::test]
async fn policy_swap_applies_to_live_connections() {
    let h = Harness::start().await;
    let mut alice = h.alice();
    assert_eq!(code(alice.unary(req(b"x")).await), Code::Ok);
    let deny_all = r#"{"name":"locked","allow_rules":[]}"#;
    let p = ipcgate::policy::Policy::from_json(deny_all, "x.json".as_ref()).unwrap();
    h.authz.set_enforced(p);
    // Same client, same connection: the next call sees the new policy.
    let e = alice.unary(req(b"x")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("locked"), "{}", e.message());
}

#[tokio::test]
async fn invalid_policy_stops_startup_naming_file_and_field() {
    let pki = Pki::new();
    let bad = r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[{"key":":path","values":["/x"]}]}}]}"#;
    std::fs::write(pki.path("policy.json"), bad).unwrap();
    std::fs::write(
        pki.path("gw.toml"),
        config_text(&pki, &pki.path("echo.sock"), ""),
    )
    .unwrap();
    let cfg = ipcgate::config::Config::load(&pki.path("gw.toml")).unwrap();
    let e = match ipcgate::Gateway::bind(cfg).await {
        Ok(_) => panic!("an invalid policy was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("policy.json"), "{e}");
    assert!(e.contains("allow_rules[0].request.headers[0].key"), "{e}");
    assert!(e.contains("use request.paths"), "{e}");
    assert!(
        !pki.path("gateway.sock").exists(),
        "socket bound despite the bad policy"
    );
}
