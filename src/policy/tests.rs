use std::path::Path;

use http::HeaderMap;

use super::pattern::Pattern;
use super::*;
use crate::ca::{Ca, KeyType, LeafSpec};
use crate::identity::Peer;

fn peer(spiffe: &[&str], dns: &[&str], cn: Option<&str>) -> Peer {
    let ca = Ca::generate(
        "t",
        std::time::Duration::from_secs(3600),
        KeyType::EcdsaP256,
    )
    .unwrap();
    let issued = ca
        .issue(&LeafSpec {
            spiffe: spiffe.iter().map(|s| s.to_string()).collect(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            cn: cn.map(str::to_owned),
            client: true,
            ..Default::default()
        })
        .unwrap();
    Peer::new(&[issued.cert_der], None, None).unwrap()
}

/// (allowed, deciding rule) of a decision — checked to be the same by every
/// route to it: the plain scan, the per-connection source bits, and explain.
fn ev<'a>(p: &'a Policy, path: &str, h: &HeaderMap, peer: &Peer) -> (bool, Option<&'a str>) {
    let d = p.evaluate(path, h, peer);
    let mut src = p.source_match(peer);
    let fast = p.evaluate_for(path, h, peer, &mut src);
    assert_eq!(
        (d.allowed(), d.rule()),
        (fast.allowed(), fast.rule()),
        "{path}: indexed and memoized decisions differ"
    );
    // Asked again on the same connection: from its memo when headers played
    // no part, and the same answer either way.
    let again = p.evaluate_for(path, h, peer, &mut src);
    assert_eq!(
        (d.allowed(), d.rule()),
        (again.allowed(), again.rule()),
        "{path}: the connection's memo changed the decision"
    );
    let e = p.explain(path, h, peer);
    assert_eq!(
        (d.allowed(), d.rule()),
        (e.allowed, e.rule.as_deref()),
        "{path}: explain disagrees"
    );
    (d.allowed(), d.rule())
}

fn policy(json: &str) -> Policy {
    Policy::from_json(json, Path::new("p.json")).unwrap_or_else(|e| panic!("{e}"))
}

fn error(json: &str) -> String {
    Policy::from_json(json, Path::new("p.json"))
        .unwrap_err()
        .to_string()
}

#[test]
fn patterns() {
    let cases = [
        ("*", "x", true),
        ("*", "", false),
        ("abc*", "abc", true),
        ("abc*", "abcd", true),
        ("abc*", "xabc", false),
        ("*abc", "xabc", true),
        ("*abc", "abcx", false),
        ("abc", "abc", true),
        ("abc", "abcd", false),
        ("abc", "ABC", false),
    ];
    for (p, v, want) in cases {
        assert_eq!(
            Pattern::parse(p).matches(v.as_bytes()),
            want,
            "{p:?} vs {v:?}"
        );
    }
}

#[test]
fn deny_first_then_allow_then_deny_by_default() {
    let p = policy(
        r#"{"name":"p",
        "deny_rules":[{"name":"no-delete","request":{"paths":["*/Delete"]}}],
        "allow_rules":[{"name":"alice","source":{"principals":["spiffe://t/alice"]}}]}"#,
    );
    let alice = peer(&["spiffe://t/alice"], &[], None);
    let bob = peer(&["spiffe://t/bob"], &[], None);
    let h = HeaderMap::new();
    assert_eq!(ev(&p, "/a.B/Get", &h, &alice), (true, Some("alice")));
    assert_eq!(
        ev(&p, "/a.B/Delete", &h, &alice),
        (false, Some("no-delete"))
    );
    assert_eq!(ev(&p, "/a.B/Get", &h, &bob), (false, None));
}

#[test]
fn the_first_matching_rule_in_file_order_is_reported() {
    // Rules reach the decision through different indexes (any-path, suffix,
    // exact, prefix); the reported rule must still be the first in the file.
    let p = policy(
        r#"{"name":"p","allow_rules":[
          {"name":"r0-any-path-bob","source":{"principals":["spiffe://t/bob"]}},
          {"name":"r1-suffix","source":{"principals":["spiffe://t/alice"]},"request":{"paths":["*/Get"]}},
          {"name":"r2-exact","request":{"paths":["/a.B/Get"]}},
          {"name":"r3-prefix","request":{"paths":["/a.B/*"]}},
          {"name":"r4-any","request":{"paths":["*"]}}
        ]}"#,
    );
    let h = HeaderMap::new();
    let alice = peer(&["spiffe://t/alice"], &[], None);
    let carol = peer(&["spiffe://t/carol"], &[], None);
    let bob = peer(&["spiffe://t/bob"], &[], None);
    assert_eq!(ev(&p, "/a.B/Get", &h, &alice), (true, Some("r1-suffix")));
    assert_eq!(ev(&p, "/a.B/Get", &h, &carol), (true, Some("r2-exact")));
    assert_eq!(ev(&p, "/a.B/Put", &h, &carol), (true, Some("r3-prefix")));
    assert_eq!(ev(&p, "/x.Y/Put", &h, &carol), (true, Some("r4-any")));
    assert_eq!(
        ev(&p, "/x.Y/Put", &h, &bob),
        (true, Some("r0-any-path-bob"))
    );
}

#[test]
fn principals_match_uri_dns_and_subject_but_never_the_empty_principal() {
    let p = policy(
        r#"{"name":"p","allow_rules":[
          {"name":"uri","source":{"principals":["spiffe://t/ns/*"]},"request":{"paths":["/a.B/Uri"]}},
          {"name":"dns","source":{"principals":["*.svc"]},"request":{"paths":["/a.B/Dns"]}},
          {"name":"subject","source":{"principals":["CN=dave"]},"request":{"paths":["/a.B/Subj"]}},
          {"name":"nocert","source":{"principals":[""]},"request":{"paths":["/a.B/NoCert"]}}
        ]}"#,
    );
    let h = HeaderMap::new();
    let p1 = peer(&["spiffe://t/ns/x"], &["db.svc"], Some("dave"));
    for m in ["Uri", "Dns", "Subj"] {
        assert!(
            matches!(ev(&p, &format!("/a.B/{m}"), &h, &p1), (true, _)),
            "{m}"
        );
    }
    assert_eq!(ev(&p, "/a.B/NoCert", &h, &p1), (false, None));
    // Nor against an empty subject, which `""` would match as a pattern.
    let bare = peer(&["spiffe://t/x"], &[], None);
    assert_eq!(bare.subject, "");
    assert_eq!(ev(&p, "/a.B/NoCert", &h, &bare), (false, None));
    let p2 = peer(&["spiffe://t/other/x"], &["db.svc.evil"], Some("dave2"));
    for m in ["Uri", "Dns", "Subj"] {
        assert_eq!(ev(&p, &format!("/a.B/{m}"), &h, &p2), (false, None), "{m}");
    }
}

#[test]
fn header_keys_are_lowercased_and_values_joined() {
    let p = policy(
        r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[
           {"key":"X-Tenant","values":["a,b"]},{"key":"x-env","values":["*"]}]}}]}"#,
    );
    let who = peer(&["spiffe://t/x"], &[], None);
    let mut h = HeaderMap::new();
    h.append("x-tenant", "a".parse().unwrap());
    h.append("x-tenant", "b".parse().unwrap());
    assert_eq!(ev(&p, "/a.B/C", &h, &who), (false, None), "x-env missing");
    h.insert("x-env", "".parse().unwrap());
    assert_eq!(
        ev(&p, "/a.B/C", &h, &who),
        (false, None),
        "empty is not present"
    );
    h.insert("x-env", "prod".parse().unwrap());
    assert_eq!(ev(&p, "/a.B/C", &h, &who), (true, Some("r")));
}

#[test]
fn invalid_policies_name_the_field_and_the_fix() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"allow_rules":[]}"#,
            &["(top level)", "missing field `name`"],
        ),
        (r#"{"name":"p"}"#, &["missing field `allow_rules`"]),
        (
            r#"{"name":"","allow_rules":[]}"#,
            &["p.json: name: must not be empty"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"source":{}}]}"#,
            &["allow_rules[0]", "missing field `name`"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"name":""}]}"#,
            &["allow_rules[0].name"],
        ),
        (
            r#"{"name":"p","allow_rules":[],"deny_rule":[]}"#,
            &["unknown field `deny_rule`", "line 1"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"name":"r","request":{"path":["/a.B/C"]}}]}"#,
            &["allow_rules[0].request", "unknown field `path`"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[{"key":":authority","values":["x"]}]}}]}"#,
            &["allow_rules[0].request.headers[0].key", "pseudo-headers"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[{"key":"Grpc-Timeout","values":["x"]}]}}]}"#,
            &["grpc-*"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[{"key":"Host","values":["x"]}]}}]}"#,
            &["hop-by-hop"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[{"key":"te","values":["x"]}]}}]}"#,
            &["hop-by-hop"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[{"key":"x-a","values":[]}]}}]}"#,
            &["headers[0].values", "at least one"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[{"key":"x-a"}]}}]}"#,
            &["missing field `values`"],
        ),
        (
            r#"{"name":"p","deny_rules":[{"name":"r","request":{"paths":["/pkg.*/Get"]}}],"allow_rules":[]}"#,
            &["deny_rules[0].request.paths[0]", "'*' inside"],
        ),
        (
            r#"{"name":"p","deny_rules":[{"name":"r","request":{"paths":["*Admin*"]}}],"allow_rules":[]}"#,
            &["'*' inside"],
        ),
        (r#"{"name":"p","allow_rules":[] "#, &["line 1"]),
        (
            r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[{"key":"X-Forwarded-Client-Cert","values":["*"]}]}}]}"#,
            &["sets it after authorization"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[{"key":"x-ipcgate-peer","values":["uid=0;*"]}]}}]}"#,
            &["sets it after authorization"],
        ),
        (
            r#"{"name":"p","deny_rules":[{"name":"r","source":{"principals":["spiffe://td/*/admin"]}}],"allow_rules":[]}"#,
            &["deny_rules[0].source.principals[0]", "'*' inside"],
        ),
        (
            r#"{"name":"p","allow_rules":[{"name":"r","request":{"headers":[{"key":"x-a","values":["ok","a*b"]}]}}]}"#,
            &["headers[0].values[1]", "'*' inside"],
        ),
        (
            r#"{"name":"p","deny_rules":[{"name":"r","request":{"paths":["demo.v1.Echo/Admin"]}}],"allow_rules":[]}"#,
            &["paths[0]", "can never match"],
        ),
        (
            r#"{"name":"p","deny_rules":[{"name":"r","request":{"paths":["demo.v1.Echo/*"]}}],"allow_rules":[]}"#,
            &["can never match"],
        ),
        (
            r#"{"name":"p","deny_rules":[{"name":"r","request":{"paths":[""]}}],"allow_rules":[]}"#,
            &["can never match"],
        ),
        (
            r#"{"name":"p","deny_rules":[{"name":"r","request":{"paths":["/a.B/C/D"]}}],"allow_rules":[]}"#,
            &["can never match"],
        ),
    ];
    // Prefixes and suffixes that no canonical path can have: a third segment,
    // a trailing '/', '%', '?', '..', '//'. In a deny rule each failed open.
    for dead in [
        "/pkg/Svc/*",
        "*/Secret/",
        "/a%2F*",
        "*/M?x",
        "/a//*",
        "*/a/b/c",
        "/pkg..*",
        "pkg.Svc/*",
        "*Svc/Get/",
        "*a#b",
    ] {
        let e = error(&format!(
            r#"{{"name":"p","deny_rules":[{{"name":"r","request":{{"paths":["{dead}"]}}}}],"allow_rules":[]}}"#
        ));
        assert!(e.contains("can never match"), "{dead}: {e}");
    }
    for live in [
        "*",
        "/pkg.Svc/*",
        "/pkg.Svc/Get*",
        "/pkg.*",
        "/*",
        "*/Method",
        "*Method",
        "*.Get",
        "*/pkg.Svc/Get",
        "*Svc/Get",
        "/pkg.Svc/Get",
    ] {
        policy(&format!(
            r#"{{"name":"p","deny_rules":[{{"name":"r","request":{{"paths":["{live}"]}}}}],"allow_rules":[]}}"#
        ));
    }
    for (json, wants) in cases {
        let e = error(json);
        assert!(e.starts_with("p.json: "), "{e}");
        for w in *wants {
            assert!(e.contains(w), "{json}\n  -> {e}\n  missing {w:?}");
        }
    }
}

#[test]
fn a_large_policy_indexes_by_path() {
    // 10,000 rules, one per method; each method is allowed for its own caller.
    let mut rules = Vec::new();
    for i in 0..10_000 {
        rules.push(format!(
            r#"{{"name":"r{i}","source":{{"principals":["spiffe://t/c{}"]}},"request":{{"paths":["/svc.S{}/M{i}"]}}}}"#,
            i % 7,
            i % 13
        ));
    }
    let json = format!(r#"{{"name":"big","allow_rules":[{}]}}"#, rules.join(","));
    let p = policy(&json);
    assert_eq!(p.rule_counts(), (0, 10_000));
    let h = HeaderMap::new();
    let i = 9998;
    let caller = peer(&[&format!("spiffe://t/c{}", i % 7)], &[], None);
    let path = format!("/svc.S{}/M{i}", i % 13);
    assert_eq!(ev(&p, &path, &h, &caller), (true, Some("r9998")));
    // Same method, another caller; and the caller on a neighbour's method.
    let other = peer(&[&format!("spiffe://t/c{}", (i + 1) % 7)], &[], None);
    assert_eq!(ev(&p, &path, &h, &other), (false, None));
    let same_caller = format!("/svc.S{}/M{}", (i - 7) % 13, i - 7);
    assert_eq!(ev(&p, &same_caller, &h, &caller), (true, Some("r9991")));
    let next = format!("/svc.S{}/M{}", (i + 1) % 13, i + 1);
    assert_eq!(ev(&p, &next, &h, &caller), (false, None));
}

fn peer_cred(uid: u32, gid: u32) -> Peer {
    peer_groups(uid, gid, Some(Vec::new()))
}

fn peer_groups(uid: u32, gid: u32, groups: Option<Vec<u32>>) -> Peer {
    let ca = Ca::generate(
        "t",
        std::time::Duration::from_secs(3600),
        KeyType::EcdsaP256,
    )
    .unwrap();
    let issued = ca
        .issue(&LeafSpec {
            spiffe: vec!["spiffe://t/svc".into()],
            client: true,
            ..Default::default()
        })
        .unwrap();
    Peer::new(
        &[issued.cert_der],
        Some(crate::identity::PeerCred {
            uid: Some(uid),
            gid: Some(gid),
            pid: Some(1),
            groups,
        }),
        None,
    )
    .unwrap()
}

#[test]
fn uid_and_gid_extension_is_anded_with_principals() {
    let p = policy(
        r#"{"name":"p","allow_rules":[
          {"name":"svc-as-1000","source":{"principals":["spiffe://t/svc"],"uids":[1000]}},
          {"name":"ops-group","source":{"gids":[50,51]},"request":{"paths":["/a.B/Ops"]}}
        ]}"#,
    );
    let h = HeaderMap::new();
    // Same certificate, two accounts: different decisions.
    assert_eq!(
        ev(&p, "/a.B/C", &h, &peer_cred(1000, 1)),
        (true, Some("svc-as-1000"))
    );
    assert_eq!(ev(&p, "/a.B/C", &h, &peer_cred(1001, 1)), (false, None));
    assert_eq!(
        ev(&p, "/a.B/Ops", &h, &peer_cred(7, 51)),
        (true, Some("ops-group"))
    );
    assert_eq!(ev(&p, "/a.B/Ops", &h, &peer_cred(7, 52)), (false, None));
    // No socket credentials: a uid/gid condition cannot hold.
    let no_cred = peer(&["spiffe://t/svc"], &[], None);
    assert_eq!(ev(&p, "/a.B/C", &h, &no_cred), (false, None));
}

/// `sg other-group client` makes another group the effective one and keeps
/// the denied one among the supplementary groups: a deny rule on a group must
/// still hold, and one whose groups cannot be read must hold too.
#[test]
fn gids_hold_against_supplementary_groups() {
    let p = policy(
        r#"{"name":"p","deny_rules":[{"name":"no-50","source":{"gids":[50]}}],"allow_rules":[
          {"name":"svc","source":{"principals":["spiffe://t/svc"]},"request":{"paths":["/a.B/C"]}},
          {"name":"g60","source":{"gids":[60]},"request":{"paths":["/a.B/G"]}}
        ]}"#,
    );
    let h = HeaderMap::new();
    assert_eq!(
        ev(&p, "/a.B/C", &h, &peer_groups(7, 8, Some(vec![9]))),
        (true, Some("svc"))
    );
    // 50 as the effective group or a supplementary one: denied.
    for who in [
        peer_groups(7, 50, Some(vec![9])),
        peer_groups(7, 8, Some(vec![9, 50])),
        peer_groups(7, 8, None),
    ] {
        assert_eq!(ev(&p, "/a.B/C", &h, &who), (false, Some("no-50")));
        let e = p.explain("/a.B/C", &h, &who);
        assert!(!e.allowed && e.rule.as_deref() == Some("no-50"), "{e:?}");
    }
    // An allow rule takes a supplementary group, and not unknown ones.
    assert_eq!(
        ev(&p, "/a.B/G", &h, &peer_groups(7, 8, Some(vec![60]))),
        (true, Some("g60"))
    );
    assert_eq!(
        ev(&p, "/a.B/G", &h, &peer_groups(7, 8, Some(vec![61]))),
        (false, None)
    );
}

#[test]
fn audit_options_are_validated() {
    let base =
        |opts: &str| format!(r#"{{"name":"p","allow_rules":[],"audit_logging_options":{opts}}}"#);
    let p = policy(&base(
        r#"{"audit_condition":"ON_DENY","audit_loggers":[{"name":"stdout_logger","config":{},"is_optional":false}]}"#,
    ));
    assert_eq!(p.audit.condition, super::model::AuditCondition::OnDeny);
    assert!(p.audit.stdout && !p.audit.file);
    // An optional unknown logger is skipped; a required one makes the policy invalid.
    let p = policy(&base(
        r#"{"audit_condition":"ON_ALLOW","audit_loggers":[{"name":"cloud_logger","is_optional":true},{"name":"ipcgate_file_logger"}]}"#,
    ));
    assert!(p.audit.file && !p.audit.stdout);
    let e = error(&base(r#"{"audit_loggers":[{"name":"cloud_logger"}]}"#));
    assert!(
        e.contains("audit_logging_options.audit_loggers[0].name")
            && e.contains("unknown audit logger")
            && e.contains("is_optional"),
        "{e}"
    );
    let e = error(&base(r#"{"audit_condition":"SOMETIMES"}"#));
    assert!(
        e.contains("audit_logging_options.audit_condition") && e.contains("ON_DENY"),
        "{e}"
    );
    let e = error(&base(
        r#"{"audit_loggers":[{"name":"stdout_logger","config":{"verbose":true}}]}"#,
    ));
    assert!(e.contains("takes no config"), "{e}");
    // The file logger needs [audit] file in gateway.toml.
    let ctx = LoadContext {
        metrics: None,
        file_logger: false,
    };
    let e = Policy::compile(
        &base(r#"{"audit_loggers":[{"name":"ipcgate_file_logger"}]}"#),
        Path::new("p.json"),
        &ctx,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("[audit] file"), "{e}");
    // Absent options: audit nothing.
    assert!(!policy(r#"{"name":"p","allow_rules":[]}"#)
        .audit
        .any_logger());
}

#[test]
fn explain_agrees_with_evaluate_and_says_why() {
    let p = policy(
        r#"{"name":"p",
        "deny_rules":[{"name":"no-delete","request":{"paths":["*/Delete"]}},
                      {"name":"banned","request":{"headers":[{"key":"x-role","values":["banned"]}]}}],
        "allow_rules":[{"name":"alice","source":{"principals":["spiffe://t/alice"]},"request":{"paths":["/a.B/*"]}},
                       {"name":"ops","source":{"uids":[1000]},"request":{"headers":[{"key":"x-role","values":["*-ops"]}]}}]}"#,
    );
    let alice = peer(&["spiffe://t/alice"], &["alice.svc"], Some("alice"));
    let bob = peer_cred(1000, 1);
    let mut cases = Vec::new();
    for path in ["/a.B/Get", "/a.B/Delete", "/x.Y/Get"] {
        for role in [None, Some("banned"), Some("db-ops"), Some("dev")] {
            for who in [&alice, &bob] {
                let mut h = HeaderMap::new();
                if let Some(r) = role {
                    h.insert("x-role", r.parse().unwrap());
                }
                cases.push((path, h, who));
            }
        }
    }
    for (path, h, who) in &cases {
        let (allowed, rule) = ev(&p, path, h, who);
        let e = p.explain(path, h, who);
        assert_eq!(
            (e.allowed, e.rule.as_deref()),
            (allowed, rule),
            "{path} {h:?}"
        );
    }
    let mut h = HeaderMap::new();
    h.insert("x-role", "dev".parse().unwrap());
    let e = p.explain("/x.Y/Get", &h, &alice);
    assert!(!e.allowed && e.rule.is_none());
    let alice_rule = &e.allow_rules[0];
    assert!(!alice_rule.matched);
    assert!(
        alice_rule.conditions[0].met && alice_rule.conditions[0].why.contains("URI SAN"),
        "{alice_rule:?}"
    );
    assert!(
        !alice_rule.conditions[1].met && alice_rule.conditions[1].why.contains("matches none of"),
        "{alice_rule:?}"
    );
    let ops = &e.allow_rules[1];
    assert!(
        ops.conditions
            .iter()
            .any(|c| c.field == "uids" && !c.met && c.why.contains("no socket peer credentials")),
        "{ops:?}"
    );
    assert!(
        ops.conditions
            .iter()
            .any(|c| c.field == "headers[x-role]" && !c.met && c.why.contains("\"dev\"")),
        "{ops:?}"
    );
}

#[test]
fn service_and_method_indexes_agree_with_a_plain_scan() {
    // Every kind of path pattern, so each index is used both through the
    // per-path candidate lists (paths named exactly) and through the fallback
    // probes (paths not named); `ev` checks both against explain's rule-by-rule scan.
    let p = policy(
        r#"{"name":"affixes",
        "deny_rules":[{"name":"d-secret","request":{"paths":["*/Secret"]}},
                      {"name":"d-sec-prefix","request":{"paths":["/a.B/Sec*"]}}],
        "allow_rules":[
          {"name":"a-get-prefix","request":{"paths":["/a.B/Get*"]}},
          {"name":"a-service","source":{"principals":["spiffe://t/alice"]},"request":{"paths":["/a.B/*"]}},
          {"name":"a-method","request":{"paths":["*/Ping"]}},
          {"name":"a-thing","request":{"paths":["*Thing"]}},
          {"name":"a-exact","source":{"principals":["spiffe://t/bob"]},"request":{"paths":["/c.D/List", "/a.B/Put"]}},
          {"name":"a-other-service","source":{"principals":["spiffe://t/bob"]},"request":{"paths":["/a.Bc/*"]}}
        ]}"#,
    );
    let alice = peer(&["spiffe://t/alice"], &[], None);
    let bob = peer(&["spiffe://t/bob"], &[], None);
    let h = HeaderMap::new();
    let expect = [
        ("/a.B/Get", &alice, (true, Some("a-get-prefix"))),
        ("/a.B/GetAll", &bob, (true, Some("a-get-prefix"))),
        ("/a.B/Put", &alice, (true, Some("a-service"))),
        ("/a.B/Put", &bob, (true, Some("a-exact"))),
        ("/a.B/Other", &bob, (false, None)),
        ("/a.B/Secret", &alice, (false, Some("d-secret"))),
        ("/x.Y/Secret", &bob, (false, Some("d-secret"))),
        ("/a.B/Secure", &alice, (false, Some("d-sec-prefix"))),
        ("/x.Y/Ping", &bob, (true, Some("a-method"))),
        ("/x.Y/PingPong", &bob, (false, None)),
        ("/x.Y/AThing", &bob, (true, Some("a-thing"))),
        ("/c.D/List", &bob, (true, Some("a-exact"))),
        ("/c.D/List", &alice, (false, None)),
        // `/a.B/*` covers the service a.B only, not a.Bc.
        ("/a.Bc/Get", &alice, (false, None)),
        ("/a.Bc/Get", &bob, (true, Some("a-other-service"))),
    ];
    for (path, who, want) in expect {
        assert_eq!(ev(&p, path, &h, who), want, "{path}");
    }
}

#[test]
fn uid_conditions_fail_closed_without_peer_credentials() {
    // Over TCP or a named pipe there is no uid: an allow rule that needs one
    // never matches, and a deny rule that names one applies.
    let p = policy(
        r#"{"name":"creds",
        "deny_rules":[{"name":"no-www-admin","source":{"uids":[33]},"request":{"paths":["/a.B/Admin"]}}],
        "allow_rules":[{"name":"alice-any","source":{"principals":["spiffe://t/alice"]}},
                       {"name":"root-only","source":{"uids":[0]},"request":{"paths":["/a.B/Root"]}}]}"#,
    );
    let h = HeaderMap::new();
    let no_cred = peer(&["spiffe://t/alice"], &[], None);
    assert_eq!(
        ev(&p, "/a.B/Admin", &h, &no_cred),
        (false, Some("no-www-admin"))
    );
    assert_eq!(ev(&p, "/a.B/Get", &h, &no_cred), (true, Some("alice-any")));
    let bob = peer(&["spiffe://t/bob"], &[], None);
    assert_eq!(ev(&p, "/a.B/Root", &h, &bob), (false, None));
    // With credentials the uid decides.
    let uid_1000 = peer_cred(1000, 1);
    assert_eq!(ev(&p, "/a.B/Admin", &h, &uid_1000), (false, None));
    let uid_0 = peer_cred(0, 0);
    assert_eq!(ev(&p, "/a.B/Root", &h, &uid_0), (true, Some("root-only")));
    let uid_33 = peer_cred(33, 33);
    assert_eq!(
        ev(&p, "/a.B/Admin", &h, &uid_33),
        (false, Some("no-www-admin"))
    );
}

/// A connection's memo keeps only decisions no header condition took part in:
/// the same method is denied with one header value and allowed without it on
/// one connection, in either order.
#[test]
fn memo_never_keeps_a_decision_that_headers_made() {
    let p = policy(
        r#"{"name":"p",
        "deny_rules":[{"name":"banned","request":{"paths":["/a.B/Get"],"headers":[{"key":"x-role","values":["banned"]}]}}],
        "allow_rules":[{"name":"alice","source":{"principals":["spiffe://t/alice"]},"request":{"paths":["/a.B/*"]}}]}"#,
    );
    let alice = peer(&["spiffe://t/alice"], &[], None);
    let mut banned = HeaderMap::new();
    banned.insert("x-role", "banned".parse().unwrap());
    let plain = HeaderMap::new();
    for order in [[&banned, &plain], [&plain, &banned]] {
        let mut src = p.source_match(&alice);
        for _ in 0..2 {
            for h in order {
                let d = p.evaluate_for("/a.B/Get", h, &alice, &mut src);
                assert_eq!(d.allowed(), h.is_empty(), "{h:?}");
            }
        }
    }
    // A path no header rule covers is remembered and stays right.
    let mut src = p.source_match(&alice);
    for h in [&banned, &plain, &banned] {
        assert_eq!(
            p.evaluate_for("/a.B/List", h, &alice, &mut src).rule(),
            Some("alice")
        );
    }
}

/// Rules that repeat a source share one check per connection; rules whose
/// sources differ in any part (uids, gids, one principal more) never do.
#[test]
fn rules_share_a_source_check_only_when_their_sources_are_equal() {
    let p = policy(
        r#"{"name":"shared",
        "deny_rules":[{"name":"d-uid-7","source":{"principals":["spiffe://t/svc"],"uids":[7]},"request":{"paths":["/a.B/D"]}},
                      {"name":"d-svc","source":{"principals":["spiffe://t/svc"]},"request":{"paths":["/a.B/E"]}}],
        "allow_rules":[
          {"name":"uid-1000","source":{"principals":["spiffe://t/svc"],"uids":[1000, 5]},"request":{"paths":["/a.B/A"]}},
          {"name":"uid-5","source":{"principals":["spiffe://t/svc"],"uids":[5]},"request":{"paths":["/a.B/B"]}},
          {"name":"uid-1000-again","source":{"principals":["spiffe://t/svc"],"uids":[5, 1000, 5]},"request":{"paths":["/a.B/C"]}},
          {"name":"gid-2","source":{"principals":["spiffe://t/svc"],"gids":[2]},"request":{"paths":["/a.B/G"]}},
          {"name":"svc-or-bob","source":{"principals":["spiffe://t/bob","spiffe://t/svc"]},"request":{"paths":["/a.B/P"]}},
          {"name":"bob-or-svc","source":{"principals":["spiffe://t/svc","spiffe://t/bob"]},"request":{"paths":["/a.B/Q"]}},
          {"name":"r-svc","source":{"principals":["spiffe://t/svc"]},"request":{"paths":["/a.B/R"]}},
          {"name":"bob","source":{"principals":["spiffe://t/bob"]},"request":{"paths":["/a.B/R"]}},
          {"name":"anyone","request":{"paths":["/a.B/Z"]}},
          {"name":"h-fast","source":{"principals":["spiffe://t/svc"]},"request":{"paths":["/a.B/H"],"headers":[{"key":"x-mode","values":["fast"]}]}},
          {"name":"h-plain","source":{"principals":["spiffe://t/svc"]},"request":{"paths":["/a.B/H"]}},
          {"name":"h-later","source":{"principals":["spiffe://t/svc"]},"request":{"paths":["*/H"]}}
        ]}"#,
    );
    let h = HeaderMap::new();
    let uid_1000 = peer_cred(1000, 1);
    let uid_7 = peer_cred(7, 2);
    let bob = peer(&["spiffe://t/bob"], &[], None);
    let expect = [
        ("/a.B/A", &uid_1000, (true, Some("uid-1000"))),
        ("/a.B/B", &uid_1000, (false, None)),
        ("/a.B/C", &uid_1000, (true, Some("uid-1000-again"))),
        ("/a.B/G", &uid_1000, (false, None)),
        ("/a.B/G", &uid_7, (true, Some("gid-2"))),
        ("/a.B/D", &uid_1000, (false, None)),
        ("/a.B/D", &uid_7, (false, Some("d-uid-7"))),
        ("/a.B/E", &uid_1000, (false, Some("d-svc"))),
        ("/a.B/P", &uid_1000, (true, Some("svc-or-bob"))),
        ("/a.B/Q", &bob, (true, Some("bob-or-svc"))),
        ("/a.B/R", &bob, (true, Some("bob"))),
        ("/a.B/R", &uid_1000, (true, Some("r-svc"))),
        ("/a.B/Z", &bob, (true, Some("anyone"))),
        ("/a.B/A", &bob, (false, None)),
    ];
    for (path, who, want) in expect {
        assert_eq!(ev(&p, path, &h, who), want, "{path}");
    }
    // A header rule before a plain one with the same source: each decides
    // in turn, and the plain one hides the later method-wide rule.
    let mut fast = HeaderMap::new();
    fast.insert("x-mode", "fast".parse().unwrap());
    assert_eq!(ev(&p, "/a.B/H", &fast, &uid_1000), (true, Some("h-fast")));
    assert_eq!(ev(&p, "/a.B/H", &h, &uid_1000), (true, Some("h-plain")));
    assert_eq!(ev(&p, "/x.Y/H", &h, &uid_1000), (true, Some("h-later")));
}

#[test]
fn indexes_agree_with_a_rule_by_rule_scan_on_generated_policies() {
    // Policies drawn from a small space of sources, paths and header
    // conditions, so callers share lists, hold several sources at once, and
    // meet header rules ahead of and behind their first match: every call
    // is decided by `ev` four ways (the plain scan, the connection's held
    // sources, its memo and explain's rule-by-rule walk), which must agree.
    const SOURCES: [&str; 7] = [
        "",
        r#""source":{"principals":["spiffe://t/a"]},"#,
        r#""source":{"principals":["spiffe://t/b"]},"#,
        r#""source":{"principals":["spiffe://t/a","a.example"]},"#,
        r#""source":{"principals":["*"]},"#,
        r#""source":{"principals":["spiffe://t/*"]},"#,
        r#""source":{"principals":["a.example"]},"#,
    ];
    const PATHS: [&str; 8] = [
        "",
        r#""paths":["/s.A/M1"]"#,
        r#""paths":["/s.A/*"]"#,
        r#""paths":["*/M1"]"#,
        r#""paths":["/s.A/M*"]"#,
        r#""paths":["*1"]"#,
        r#""paths":["/s.B/M2","/s.A/M1"]"#,
        r#""paths":["*"]"#,
    ];
    const HEADERS: [&str; 3] = [
        "",
        r#""headers":[{"key":"x-t","values":["1"]}]"#,
        r#""headers":[{"key":"x-t","values":["*"]}]"#,
    ];
    let peers = [
        peer(&["spiffe://t/a"], &[], None),
        peer(&["spiffe://t/b"], &["a.example"], None),
        peer(&["spiffe://t/c"], &[], None),
        peer(&[], &["a.example"], Some("cn")),
    ];
    let calls = ["/s.A/M1", "/s.A/M2", "/s.B/M2", "/s.C/M1", "/s.B/X"];
    let mut header_sets = vec![HeaderMap::new(); 3];
    header_sets[1].insert("x-t", "1".parse().unwrap());
    header_sets[2].insert("x-t", "2".parse().unwrap());
    // xorshift: the same policies on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut decided = [0usize; 2];
    for round in 0..300 {
        let (deny_n, allow_n) = (next(3), 1 + next(9));
        let mut rule = |kind: &str, i: usize| {
            let request = [PATHS[next(PATHS.len())], HEADERS[next(HEADERS.len())]]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(",");
            format!(
                r#"{{"name":"{kind}{i}",{}"request":{{{request}}}}}"#,
                SOURCES[next(SOURCES.len())]
            )
        };
        let deny: Vec<String> = (0..deny_n).map(|i| rule("d", i)).collect();
        let allow: Vec<String> = (0..allow_n).map(|i| rule("a", i)).collect();
        let json = format!(
            r#"{{"name":"g{round}","deny_rules":[{}],"allow_rules":[{}]}}"#,
            deny.join(","),
            allow.join(",")
        );
        let p =
            Policy::from_json(&json, Path::new("g.json")).unwrap_or_else(|e| panic!("{json}: {e}"));
        for who in &peers {
            for path in calls {
                for h in &header_sets {
                    let (allowed, _) = ev(&p, path, h, who);
                    decided[usize::from(allowed)] += 1;
                }
                // One connection calling with each header set in turn: a
                // decision that headers took part in is never remembered.
                let mut src = p.source_match(who);
                for h in header_sets.iter().chain(header_sets.iter().rev()) {
                    let want = p.evaluate(path, h, who);
                    let got = p.evaluate_for(path, h, who, &mut src);
                    assert_eq!(
                        (want.allowed(), want.rule()),
                        (got.allowed(), got.rule()),
                        "{json}: {path} {h:?} on a connection"
                    );
                }
            }
        }
    }
    // The space is wide enough that both answers come up often.
    assert!(decided.iter().all(|&n| n > 2_000), "{decided:?}");
}

#[test]
fn a_service_granted_to_many_callers_finds_each_callers_first_rule() {
    // 100 callers on one service (past the length where a list's sources are
    // looked up in a hash map), two rules per caller, a header rule among them.
    // Caller 7 is also known by a DNS name.
    let who = |i: usize| match i {
        7 => r#""spiffe://t/c7","c7.example""#.to_string(),
        _ => format!(r#""spiffe://t/c{i}""#),
    };
    let mut rules = Vec::new();
    for i in 0..100 {
        rules.push(format!(
            r#"{{"name":"r{i}","source":{{"principals":[{}]}},"request":{{"paths":["/s.A/*"]}}}}"#,
            who(i)
        ));
        if i == 50 {
            rules.push(
                r#"{"name":"h","source":{"principals":["spiffe://t/c99"]},"request":{"headers":[{"key":"x-t","values":["1"]}]}}"#
                    .into(),
            );
        }
    }
    for i in 0..100 {
        rules.push(format!(
            r#"{{"name":"again{i}","source":{{"principals":[{}]}},"request":{{"paths":["/s.A/*","/s.B/*"]}}}}"#,
            who(i)
        ));
    }
    let json = format!(r#"{{"name":"wide","allow_rules":[{}]}}"#, rules.join(","));
    let p = policy(&json);
    let mut h = HeaderMap::new();
    let first = peer(&["spiffe://t/c0"], &[], None);
    let last = peer(&["spiffe://t/c99"], &[], None);
    let both = peer(&["spiffe://t/c70"], &["c7.example"], None);
    let stranger = peer(&["spiffe://t/c100"], &[], None);
    assert_eq!(ev(&p, "/s.A/M", &h, &first), (true, Some("r0")));
    assert_eq!(ev(&p, "/s.A/M", &h, &last), (true, Some("r99")));
    assert_eq!(ev(&p, "/s.B/M", &h, &last), (true, Some("again99")));
    assert_eq!(ev(&p, "/s.A/M", &h, &both), (true, Some("r7")));
    assert_eq!(ev(&p, "/s.B/M", &h, &both), (true, Some("again7")));
    assert_eq!(ev(&p, "/s.A/M", &h, &stranger), (false, None));
    h.insert("x-t", "1".parse().unwrap());
    assert_eq!(ev(&p, "/s.A/M", &h, &last), (true, Some("h")));
    assert_eq!(ev(&p, "/s.C/M", &h, &last), (true, Some("h")));
    assert_eq!(ev(&p, "/s.C/M", &h, &first), (false, None));
}

#[test]
fn paths_past_the_candidate_budget_are_decided_through_the_pattern_indexes() {
    // 400 callers on a whole service and 300 methods named exactly: each
    // method's candidate list would hold 401 rules, past the budget, so
    // some paths get no list and fall back to the exact and pattern indexes.
    let mut rules = Vec::new();
    for i in 0..400 {
        rules.push(format!(
            r#"{{"name":"s{i}","source":{{"principals":["spiffe://t/c{i}"]}},"request":{{"paths":["/s.A/*"]}}}}"#
        ));
    }
    for k in 0..300 {
        rules.push(format!(
            r#"{{"name":"x{k}","source":{{"principals":["spiffe://t/e"]}},"request":{{"paths":["/s.A/M{k}"]}}}}"#
        ));
    }
    let json = format!(r#"{{"name":"over","allow_rules":[{}]}}"#, rules.join(","));
    let p = policy(&json);
    let (_, lists) = p.candidate_lists();
    assert!(
        (1..300).contains(&lists),
        "some paths fall back ({lists} candidate lists)"
    );
    let h = HeaderMap::new();
    let e = peer(&["spiffe://t/e"], &[], None);
    let last = peer(&["spiffe://t/c399"], &[], None);
    let stranger = peer(&["spiffe://t/z"], &[], None);
    for k in 0..300 {
        let path = format!("/s.A/M{k}");
        let want = format!("x{k}");
        assert_eq!(ev(&p, &path, &h, &e), (true, Some(want.as_str())));
        assert_eq!(ev(&p, &path, &h, &last), (true, Some("s399")));
        assert_eq!(ev(&p, &path, &h, &stranger), (false, None));
    }
}

#[test]
fn long_deny_lists_keep_each_sources_first_rule() {
    // 40 callers, three deny rules each, interleaved, on one service (past
    // the length where a list is looked up in a hash map), then an allow for
    // everyone: each caller is denied by its own first rule.
    let mut deny = Vec::new();
    for round in 0..3 {
        for i in 0..40 {
            deny.push(format!(
                r#"{{"name":"d{i}-{round}","source":{{"principals":["spiffe://t/c{i}"]}},"request":{{"paths":["/s.A/*"]}}}}"#
            ));
        }
    }
    let json = format!(
        r#"{{"name":"deny-many","deny_rules":[{}],"allow_rules":[{{"name":"all","request":{{"paths":["*"]}}}}]}}"#,
        deny.join(",")
    );
    let p = policy(&json);
    let h = HeaderMap::new();
    for i in [0, 17, 39] {
        let who = peer(&[&format!("spiffe://t/c{i}")], &[], None);
        let want = format!("d{i}-0");
        assert_eq!(ev(&p, "/s.A/M", &h, &who), (false, Some(want.as_str())));
        assert_eq!(ev(&p, "/s.B/M", &h, &who), (true, Some("all")));
    }
    let other = peer(&["spiffe://t/c40"], &[], None);
    assert_eq!(ev(&p, "/s.A/M", &h, &other), (true, Some("all")));
}
