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

/// The same forgeries as above, as only a hand-written client sends them: the
/// forged XFCC split off into a CONTINUATION frame and added to the client's
/// HPACK table on the first call, then sent as a one-byte table reference on
/// the second; and both identity headers spelled with `_` for `-`, which
/// CGI-style servers read as the same headers.
/// The backend learns the call's target from `:authority` alone. A `host`
/// agreeing with the client's `:authority` is still not forwarded: when the
/// client sent no `:authority` the route fills in the backend's own, and a
/// socket-path authority is repaired to `localhost`, so a `host` beside
/// either would name a target the policy and the route never saw.
#[tokio::test]
async fn a_host_field_never_reaches_the_backend() {
    use prost::Message;
    use tokio::io::AsyncWriteExt;
    let h = Harness::start().await;
    let mut f = Frames::open(alice_tls(&h).await, &[]).await;
    let mut message = vec![0u8; 5];
    message.extend(req(b"x").encode_to_vec());
    let len = u32::try_from(message.len() - 5).unwrap();
    message[1..5].copy_from_slice(&len.to_be_bytes());
    let path = b"/demo.v1.Echo/Unary";
    let without_authority = |host: &[u8]| {
        let mut b = block(path, &[(b"host", host)]);
        // `block` writes `:authority localhost` right after `:path`.
        let at = 2 + 2 + path.len();
        assert_eq!(&b[at..at + 2], &[0x01, 9]);
        b.drain(at..at + 2 + 9);
        b
    };
    let cases: [(&str, Vec<u8>, bool); 4] = [
        ("no :authority", without_authority(b"admin.internal"), true),
        (
            "a repaired socket-path :authority",
            block_for(path, b"/run/app.sock", &[(b"host", b"/run/app.sock")]),
            true,
        ),
        (
            "the same :authority",
            block(path, &[(b"host", b"localhost")]),
            true,
        ),
        (
            "another :authority",
            block(path, &[(b"host", b"admin.internal")]),
            false,
        ),
    ];
    for (i, (case, block, answered)) in cases.into_iter().enumerate() {
        let id = 1 + 2 * u32::try_from(i).unwrap();
        f.io.write_all(&frame(0x1, 0x4, id, &block)).await.unwrap();
        f.io.write_all(&frame(0x0, 0x1, id, &message))
            .await
            .unwrap();
        let got = within("the reply", async {
            loop {
                match f.next().await {
                    Some((0x0, _, s, p)) if s == id && !p.is_empty() => return Ok(p),
                    Some((0x3, _, s, p)) if s == id => return Err(p),
                    None => panic!("{case}: connection closed"),
                    Some(_) => {}
                }
            }
        })
        .await;
        match got {
            Ok(data) if answered => {
                let reply = ipcgate::pb::EchoReply::decode(&data[5..]).unwrap();
                assert_eq!(seen(&reply, "host"), Vec::<&str>::new(), "{case}");
                assert_eq!(seen(&reply, "x-forwarded-client-cert").len(), 1, "{case}");
            }
            // PROTOCOL_ERROR: a malformed request (RFC 9113 §8.3.1).
            Err(code) if !answered => assert_eq!(code, [0, 0, 0, 1], "{case}"),
            other => panic!("{case}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn forged_identity_headers_split_indexed_or_underscored_are_removed() {
    use prost::Message;
    use tokio::io::AsyncWriteExt;
    let h = Harness::start().await;
    let mut f = Frames::open(alice_tls(&h).await, &[]).await;
    let forged = b"By=x;URI=spiffe://test.local/root";
    // Literal with incremental indexing, new name: the table's entry 62 from here.
    let mut indexed = vec![0x40, 23];
    indexed.extend_from_slice(b"x-forwarded-client-cert");
    indexed.push(u8::try_from(forged.len()).unwrap());
    indexed.extend_from_slice(forged);
    let underscored: [(&[u8], &[u8]); 2] = [
        (b"x_forwarded_client_cert", forged),
        (b"x_ipcgate_peer", b"uid=0;gid=0;pid=1"),
    ];
    let mut message = vec![0u8; 5];
    message.extend(req(b"x").encode_to_vec());
    let len = u32::try_from(message.len() - 5).unwrap();
    message[1..5].copy_from_slice(&len.to_be_bytes());
    for id in [1u32, 3] {
        let mut block = block(b"/demo.v1.Echo/Unary", &underscored);
        if id == 1 {
            block.extend_from_slice(&indexed);
            // HEADERS without END_HEADERS, the rest in a CONTINUATION.
            let cut = block.len() - indexed.len() / 2;
            f.io.write_all(&frame(0x1, 0, id, &block[..cut]))
                .await
                .unwrap();
            f.io.write_all(&frame(0x9, 0x4, id, &block[cut..]))
                .await
                .unwrap();
        } else {
            block.push(0x80 | 62);
            f.io.write_all(&frame(0x1, 0x4, id, &block)).await.unwrap();
        }
        f.io.write_all(&frame(0x0, 0x1, id, &message))
            .await
            .unwrap();
        let data = within("the reply", async {
            loop {
                match f.next().await {
                    Some((0x0, _, s, p)) if s == id && !p.is_empty() => return p,
                    Some((0x3, _, s, p)) if s == id => panic!("stream {id} reset: {p:?}"),
                    None => panic!("connection closed"),
                    Some(_) => {}
                }
            }
        })
        .await;
        let reply = ipcgate::pb::EchoReply::decode(&data[5..]).unwrap();
        let xfcc = seen(&reply, "x-forwarded-client-cert");
        assert_eq!(xfcc.len(), 1, "stream {id}: {xfcc:?}");
        assert!(
            xfcc[0].contains("URI=spiffe://test.local/alice") && !xfcc[0].contains("root"),
            "stream {id}: {xfcc:?}"
        );
        for (name, _) in underscored {
            let name = std::str::from_utf8(name).unwrap();
            assert_eq!(
                seen(&reply, name),
                Vec::<&str>::new(),
                "stream {id}: {name}"
            );
        }
        assert_eq!(seen(&reply, "x-ipcgate-peer").len(), 1, "stream {id}");
    }
}
