//! What the backend learns about the caller, and that a client cannot forge it.

use ipcgate::ca::LeafSpec;
use ipcgate::identity::hex;
use tonic::Request;

use crate::common::*;

#[tokio::test]
async fn backend_receives_xfcc_and_peer_credentials() {
    let h = Harness::start().await;
    let issued = h
        .pki
        .ca
        .issue(&LeafSpec {
            spiffe: vec!["spiffe://test.local/alice".into()],
            dns: vec!["alice.svc.test".into(), "a2.svc.test".into()],
            cn: Some("alice".into()),
            client: true,
            ..Default::default()
        })
        .unwrap();
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, issued.cert_der.as_ref());
    let cfg = client_config(&issued.cert_pem, &issued.key_pem, h.pki.ca.cert_pem());
    let r = h.client(cfg).unary(req(b"x")).await.unwrap();
    let xfcc = seen(r.get_ref(), "x-forwarded-client-cert");
    assert_eq!(
        xfcc,
        vec![format!(
            "Hash={};Subject=\"CN=alice\";URI=spiffe://test.local/alice;DNS=alice.svc.test;DNS=a2.svc.test",
            hex(sha.as_ref())
        )]
    );
    let cred = seen(r.get_ref(), "x-ipcgate-peer");
    let uid = my_uid();
    assert_eq!(
        cred,
        vec![format!(
            "uid={uid};gid={};pid={}",
            my_gid(),
            std::process::id()
        )]
    );
}

/// uid/gid of this process, read from /proc (no libc calls needed in tests).
fn my_uid() -> u32 {
    proc_status_field("Uid:")
}

fn my_gid() -> u32 {
    proc_status_field("Gid:")
}

fn proc_status_field(name: &str) -> u32 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(name)).unwrap();
    // Effective id is the second column.
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn forged_identity_headers_are_replaced() {
    let h = Harness::start().await;
    let mut alice = h.alice();
    // Both forged, and each alone (the gateway looks for either before it
    // removes them).
    for (forge_xfcc, forge_cred) in [(true, true), (true, false), (false, true)] {
        let mut r = Request::new(req(b"x"));
        let md = r.metadata_mut();
        if forge_xfcc {
            md.append(
                "x-forwarded-client-cert",
                "Hash=00;URI=spiffe://test.local/admin".parse().unwrap(),
            );
            md.append(
                "x-forwarded-client-cert",
                "By=x;URI=spiffe://test.local/root".parse().unwrap(),
            );
        }
        if forge_cred {
            md.append("x-ipcgate-peer", "uid=0;gid=0;pid=1".parse().unwrap());
        }
        let reply = alice.unary(r).await.unwrap().into_inner();
        let case = format!("xfcc forged {forge_xfcc}, peer forged {forge_cred}");
        let xfcc = seen(&reply, "x-forwarded-client-cert");
        assert_eq!(xfcc.len(), 1, "{case}: {xfcc:?}");
        assert!(
            xfcc[0].contains("URI=spiffe://test.local/alice"),
            "{case}: {xfcc:?}"
        );
        assert!(
            !xfcc[0].contains("admin") && !xfcc[0].contains("root"),
            "{case}: {xfcc:?}"
        );
        let cred = seen(&reply, "x-ipcgate-peer");
        assert_eq!(cred.len(), 1, "{case}: {cred:?}");
        assert!(
            cred[0].ends_with(&format!("pid={}", std::process::id())),
            "{case}: {cred:?}"
        );
    }
}
