//! Two reloads at once, in the order that loses an update unless they are
//! serialized from before their reads: the first reads the files, they
//! change, a second reload starts, they change again, and only then does the
//! first swap in what it read. The second must neither finish nor read while
//! the first is in its window, so the files' last content ends in force.

use super::*;
use crate::ca::{lifecycle::read_leaf, Ca, KeyType, Reason, CA_TTL, CRL_TTL};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// How long the first reload gives the second before the second edit.
/// Serialized, the second can neither finish nor read before the first
/// returns, so a slow machine never fails a correct lock; a broken one shows
/// if the second reload gets to its read within this (it takes milliseconds
/// here), and may pass unseen on a machine too loaded for that.
const GRACE: Duration = Duration::from_millis(300);

/// The second reload, started from inside the first one's window: whether it
/// finished within `GRACE` while the first was still there, and its result.
type Second<T> = Arc<Mutex<Option<(bool, JoinHandle<T>)>>>;

/// Arms `slot` so the next reload, between its read and its swap, runs
/// `edit` (a change to the files), then `second` on another thread, and
/// after `GRACE` (or once `second` is done) `edit_again`.
fn race<T: Send + 'static>(
    slot: &Between,
    edit: impl FnOnce() + Send + 'static,
    second: impl FnOnce() -> T + Send + 'static,
    edit_again: impl FnOnce() + Send + 'static,
) -> Second<T> {
    let out: Second<T> = Arc::new(Mutex::new(None));
    let o = out.clone();
    *slot.lock().unwrap() = Some(Box::new(move || {
        edit();
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let r = second();
            let _ = tx.send(());
            r
        });
        let finished = rx.recv_timeout(GRACE).is_ok();
        edit_again();
        *o.lock().unwrap() = Some((finished, handle));
    }));
    out
}

/// Whether the second reload finished inside the first one's window, and
/// its result.
fn taken<T>(second: &Second<T>) -> (bool, T) {
    let (finished, handle) = second
        .lock()
        .unwrap()
        .take()
        .expect("the first reload ran the hook");
    (finished, handle.join().unwrap())
}

fn policy_text(name: &str) -> String {
    format!(
        r#"{{"name":"{name}","allow_rules":[{{"name":"alice","source":{{"principals":["spiffe://t/alice"]}}}}]}}"#
    )
}

#[test]
fn a_policy_read_before_an_edit_is_never_swapped_in_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    std::fs::write(&file, policy_text("first")).unwrap();
    let metrics = Arc::new(Metrics::new());
    let source = Arc::new(PolicySource::new(
        config::Policy {
            file: file.clone(),
            shadow_file: None,
            watch: false,
        },
        false,
        metrics.clone(),
    ));
    let (enforced, _) = source.load().unwrap();
    let authz = Arc::new(Authorizer::new(enforced, None, None, &metrics));
    std::fs::write(&file, policy_text("second")).unwrap();

    let (s, a, again) = (source.clone(), authz.clone(), file.clone());
    let second = race(
        &source.between,
        move || std::fs::write(&file, policy_text("third")).unwrap(),
        move || s.reload(&a),
        move || std::fs::write(&again, policy_text("fourth")).unwrap(),
    );
    let first = source.reload(&authz);
    assert!(first.ok());
    let (finished, second) = taken(&second);
    assert!(
        !finished,
        "a second reload finished while the first held a policy it had read"
    );
    assert!(second.ok() && second.policy.changed);
    assert_eq!(
        authz.enforced().name,
        "fourth",
        "the policy in force is the file's last content"
    );
}

#[test]
fn crls_read_before_a_revocation_are_never_swapped_in_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let ca = Ca::generate("reload test CA", CA_TTL, KeyType::EcdsaP256).unwrap();
    ca.save(&d, true).unwrap();
    crate::demo::leaves(&ca, &d, "t", &["alice", "bob"]).unwrap();
    let crl = ca.reissue_crl(&d, CRL_TTL).unwrap();
    let cfg = config::Tls {
        crl: vec![crl],
        ..config::Tls::new(
            d.join("gateway.pem"),
            d.join("gateway.key"),
            d.join("ca.pem"),
        )
    };
    let tls = Arc::new(
        TlsSource::load(
            cfg,
            Arc::new(crate::conns::Conns::default()),
            Arc::new(Metrics::new()),
        )
        .unwrap(),
    );
    let revoked = |t: &TlsSource| t.current().crls[0].revoked;
    assert_eq!(revoked(&tls), 0);

    let ca = Arc::new(ca);
    let revoke = move |who: &str| {
        let ca = ca.clone();
        let d = d.clone();
        let who = who.to_owned();
        move || {
            let leaf = read_leaf(&d.join(format!("{who}.pem"))).unwrap();
            ca.revoke(&d, &leaf, Reason::KeyCompromise, CRL_TTL)
                .unwrap();
        }
    };
    let t = tls.clone();
    let second = race(
        &tls.between,
        revoke("alice"),
        move || t.reload(),
        revoke("bob"),
    );
    assert!(tls.reload().ok);
    let (finished, second) = taken(&second);
    assert!(
        !finished,
        "a second reload finished while the first held CRLs it had read"
    );
    assert!(second.ok);
    assert_eq!(revoked(&tls), 2, "both revocations are in force");
}
