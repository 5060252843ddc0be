//! The listening socket: its mode, stale files, and paths it must never touch.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use ipcgate::listen::{ListenError, Uds};

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ipcgate-sock-")
        .tempdir()
        .unwrap()
}

#[tokio::test]
async fn socket_gets_the_configured_mode_and_is_removed_on_drop() {
    let d = tmp();
    for mode in [0o600, 0o660, 0o640] {
        let p = d.path().join(format!("gw{mode:o}.sock"));
        let uds = Uds::bind(&p, mode, None).unwrap();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, mode);
        drop(uds);
        assert!(!p.exists(), "socket left behind");
    }
    // No private bind directory is left behind either.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

/// `group` gives the socket that group (the tests run as root, so any gid
/// will do), with the mode's group bits.
#[tokio::test]
async fn socket_gets_the_configured_group() {
    use std::os::unix::fs::MetadataExt;
    let d = tmp();
    let p = d.path().join("gw.sock");
    let uds = Uds::bind(&p, 0o660, Some(4242)).unwrap();
    let meta = std::fs::symlink_metadata(&p).unwrap();
    assert_eq!(meta.gid(), 4242);
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    drop(uds);
}

/// A socket that another process has put at the path since (the gateway's
/// was moved away) is not the gateway's to remove when it stops.
#[tokio::test]
async fn a_socket_replaced_since_is_left_alone_at_shutdown() {
    let d = tmp();
    let p = d.path().join("gw.sock");
    let uds = Uds::bind(&p, 0o600, None).unwrap();
    std::fs::rename(&p, d.path().join("moved.sock")).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&p).unwrap();
    drop(uds);
    assert!(
        std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_socket(),
        "another process's socket was removed"
    );
    drop(other);
}

#[tokio::test]
async fn stale_socket_from_a_dead_gateway_is_replaced() {
    let d = tmp();
    let p = d.path().join("gw.sock");
    drop(std::os::unix::net::UnixListener::bind(&p).unwrap()); // leaves the file, nobody listening
    assert!(p.exists());
    let uds = Uds::bind(&p, 0o600, None).unwrap();
    tokio::net::UnixStream::connect(&p).await.unwrap();
    drop(uds);
}

#[tokio::test]
async fn live_socket_is_refused_and_left_alone() {
    let d = tmp();
    let p = d.path().join("gw.sock");
    let other = std::os::unix::net::UnixListener::bind(&p).unwrap();
    match Uds::bind(&p, 0o600, None) {
        Err(ListenError::InUse(_)) => {}
        other => panic!("expected InUse, got {:?}", other.map(|_| ())),
    }
    // The other listener still owns the path.
    let _c = std::os::unix::net::UnixStream::connect(&p).unwrap();
    other.accept().unwrap();
}

#[tokio::test]
async fn regular_file_directory_and_symlink_are_never_deleted() {
    let d = tmp();
    let file = d.path().join("important.txt");
    std::fs::write(&file, "data").unwrap();
    let e = Uds::bind(&file, 0o600, None)
        .err()
        .expect("a regular file was replaced");
    assert!(e.to_string().contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");

    let dir = d.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    assert!(matches!(
        Uds::bind(&dir, 0o600, None),
        Err(ListenError::NotSocket(_))
    ));
    assert!(dir.is_dir());

    // A symlink to a stale socket elsewhere: refused, link and target kept.
    let target = d.path().join("elsewhere.sock");
    drop(std::os::unix::net::UnixListener::bind(&target).unwrap());
    let link = d.path().join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(matches!(
        Uds::bind(&link, 0o600, None),
        Err(ListenError::NotSocket(_))
    ));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(target.exists());
}

#[tokio::test]
async fn missing_directory_is_a_clear_error() {
    let d = tmp();
    let p = d.path().join("no/such/dir/gw.sock");
    let e = Uds::bind(&p, 0o600, None).err().unwrap().to_string();
    assert!(
        e.contains("does not exist") && e.contains("no/such/dir"),
        "{e}"
    );
}

#[tokio::test]
async fn peer_credentials_are_read_at_accept() {
    let d = tmp();
    let p = d.path().join("gw.sock");
    let uds = Uds::bind(&p, 0o600, None).unwrap();
    let _c = tokio::net::UnixStream::connect(&p).await.unwrap();
    let (_s, cred) = uds.accept().await.unwrap();
    let cred = cred.unwrap();
    assert_eq!(cred.pid, Some(std::process::id() as i32));
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid: u32 = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(cred.uid, Some(uid));
    // SO_PEERGROUPS: the supplementary groups, as /proc lists them.
    let groups: Vec<u32> = status
        .lines()
        .find(|l| l.starts_with("Groups:"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|g| g.parse().unwrap())
        .collect();
    assert_eq!(cred.groups, Some(groups));
}

#[tokio::test]
async fn directory_others_can_write_is_refused() {
    let d = tmp();
    let shared = d.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    for mode in [0o770, 0o777, 0o757] {
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = Uds::bind(&shared.join("gw.sock"), 0o600, None)
            .err()
            .expect("unsafe dir accepted");
        assert!(matches!(e, ListenError::UnsafeDir { .. }), "{mode:o}: {e}");
        assert!(e.to_string().contains("without the sticky bit"), "{e}");
    }
    // With the sticky bit (like /tmp) others cannot replace our files.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    drop(Uds::bind(&shared.join("gw.sock"), 0o600, None).unwrap());
}

/// In a shared sticky directory another account can plant `<socket>.lock`
/// before the gateway starts: a symlink (to make the gateway create or open a
/// file where it points) or a file of its own (to hold the lock). Both are
/// refused, and nothing is created through the link.
#[tokio::test]
async fn a_planted_lock_file_in_a_shared_directory_is_refused() {
    let d = tmp();
    let shared = d.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = d.path().join("victim");
    std::os::unix::fs::symlink(&victim, shared.join("gw.sock.lock")).unwrap();
    let e = Uds::bind(&shared.join("gw.sock"), 0o600, None)
        .err()
        .expect("a symlinked lock file was followed");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(
        !victim.exists(),
        "the gateway created a file through the link"
    );
    assert!(!shared.join("gw.sock").exists());
    // A FIFO there would block the open for ever (no reader): refused at once.
    let fifo = shared.join("fifo.sock.lock");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let at = shared.join("fifo.sock");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Uds::bind(&at, 0o600, None).map(|_| ()));
    });
    let r = match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(r) => r,
        Err(_) => {
            // Let the stuck open go, so the test can end.
            use std::os::unix::fs::OpenOptionsExt;
            let _reader = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
            std::thread::sleep(std::time::Duration::from_millis(200));
            panic!("binding beside a planted FIFO hung");
        }
    };
    assert!(r.is_err(), "a FIFO lock file was used");
    // A file of another account (only root can make one here).
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(d.path()).unwrap()) == 0 {
        std::fs::write(shared.join("other.sock.lock"), "").unwrap();
        std::os::unix::fs::chown(shared.join("other.sock.lock"), Some(65534), None).unwrap();
        let e = Uds::bind(&shared.join("other.sock"), 0o600, None)
            .err()
            .expect("another account's lock file was used");
        assert!(
            e.to_string().contains("not a file of the gateway's uid"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_second_gateway_on_the_same_path_is_refused() {
    let d = tmp();
    let p = d.path().join("gw.sock");
    let first = Uds::bind(&p, 0o600, None).unwrap();
    assert!(matches!(
        Uds::bind(&p, 0o600, None),
        Err(ListenError::InUse(_))
    ));
    // The first still owns a working socket.
    let _c = tokio::net::UnixStream::connect(&p).await.unwrap();
    first.accept().await.unwrap();
}

/// The lock, not the stale-socket probe, keeps a second gateway out while
/// the first is between its probe and its bind: with no socket yet, a held
/// lock alone makes the path in use, and nothing is created.
#[tokio::test]
async fn a_held_lock_makes_the_path_in_use() {
    let d = tmp();
    let p = d.path().join("gw.sock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(d.path().join("gw.sock.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    assert!(matches!(
        Uds::bind(&p, 0o600, None),
        Err(ListenError::InUse(_))
    ));
    assert!(std::fs::symlink_metadata(&p).is_err(), "a socket was made");
    drop(lock);
    let _uds = Uds::bind(&p, 0o600, None).unwrap();
}

/// A directory another account owns could have its socket swapped by that
/// account: refused (only root can make one here to test).
#[tokio::test]
async fn a_directory_of_another_account_is_refused() {
    let d = tmp();
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(d.path()).unwrap()) != 0 {
        eprintln!("skipped: needs root to make a directory of another account");
        return;
    }
    let theirs = d.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    let e = Uds::bind(&theirs.join("gw.sock"), 0o600, None)
        .err()
        .expect("a socket was bound in another account's directory");
    assert!(e.to_string().contains("owned by uid 65534"), "{e}");
}
