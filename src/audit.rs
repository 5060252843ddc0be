//! The audit trail (gRFC A59): one JSON object per audited call, on one line, to
//! stdout and/or a file.
//!
//! Writing happens on its own thread behind a bounded queue: the request path
//! only enqueues (never blocks, never does I/O). When the queue is full or a
//! write fails, the event is counted in `ipcgate_audit_dropped_total` and the
//! log says so — never lost silently.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tracing::{error, warn};

use crate::identity::Peer;
use crate::policy::Policy;

/// The other policy's view of a call, for dry-run (shadow) policies.
pub struct ShadowOutcome {
    pub policy: Arc<Policy>,
    pub rule: Option<Arc<str>>,
    pub authorized: bool,
}

/// One audited call. Cheap to build: the identity and policy are shared, only
/// the method is copied; serialization happens on the writer thread.
pub struct AuditEvent {
    pub time: SystemTime,
    pub method: String,
    pub peer: Arc<Peer>,
    pub policy: Arc<Policy>,
    pub rule: Option<Arc<str>>,
    pub authorized: bool,
    pub shadow: Option<ShadowOutcome>,
    pub stdout: bool,
    pub file: bool,
}

/// The line written per event. Field names are stable (documented in
/// policy/README.md): A59's first, then ipcgate's.
#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    time: String,
    rpc_method: &'a str,
    principal: &'a str,
    policy_name: &'a str,
    matched_rule: &'a str,
    authorized: bool,
    policy_version: &'a str,
    spiffe_id: Option<&'a str>,
    uri_sans: &'a [String],
    dns_sans: &'a [String],
    subject: &'a str,
    cert_sha256: String,
    peer_uid: Option<u32>,
    peer_gid: Option<u32>,
    peer_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow_policy_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow_policy_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow_matched_rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow_authorized: Option<bool>,
}

impl AuditEvent {
    fn to_line(&self) -> Vec<u8> {
        let since = self
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(since.as_nanos() as i128)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let p = &self.peer;
        let line = Line {
            timestamp: since.as_secs().to_string(),
            time,
            rpc_method: &self.method,
            principal: p.principal(),
            policy_name: &self.policy.name,
            matched_rule: self.rule.as_deref().unwrap_or(""),
            authorized: self.authorized,
            policy_version: &self.policy.version,
            spiffe_id: p.spiffe_id.as_deref(),
            uri_sans: &p.uris,
            dns_sans: &p.dns,
            subject: &p.subject,
            cert_sha256: p.sha256_hex(),
            peer_uid: p.cred.as_ref().and_then(|c| c.uid),
            peer_gid: p.cred.as_ref().and_then(|c| c.gid),
            peer_pid: p.cred.as_ref().and_then(|c| c.pid),
            shadow_policy_name: self.shadow.as_ref().map(|s| s.policy.name.as_str()),
            shadow_policy_version: self.shadow.as_ref().map(|s| s.policy.version.as_str()),
            shadow_matched_rule: self
                .shadow
                .as_ref()
                .map(|s| s.rule.as_deref().unwrap_or("")),
            shadow_authorized: self.shadow.as_ref().map(|s| s.authorized),
        };
        let mut out = serde_json::to_vec(&line).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

enum Msg {
    Event(Box<AuditEvent>),
    /// Reopen the file (after logrotate moved it).
    Reopen,
    /// Write out everything queued before this, then answer.
    Flush(SyncSender<()>),
}

/// Handle to the audit writer.
pub struct Auditor {
    tx: SyncSender<Msg>,
    /// A reopen asked for: the writer checks it before every write, so one
    /// asked while the queue is full (the sink slow, which is when logrotate
    /// tends to find it) is not lost with the queued message.
    reopen: Arc<AtomicBool>,
    written: Counter,
    dropped: Counter,
    last_warning: Mutex<Option<Instant>>,
    file: Option<PathBuf>,
}

impl Auditor {
    /// Opens the file (if any, append, created 0600) and starts the writer.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn start(
        file: Option<&Path>,
        queue: usize,
        written: Counter,
        dropped: Counter,
    ) -> io::Result<Auditor> {
        let sink = match file {
            Some(p) => Some(open(p)?),
            None => None,
        };
        let (tx, rx) = sync_channel(queue.max(1));
        let (w, d, path) = (written.clone(), dropped.clone(), file.map(Path::to_owned));
        let reopen = Arc::new(AtomicBool::new(false));
        let asked = reopen.clone();
        std::thread::Builder::new()
            .name("ipcgate-audit".into())
            .spawn(move || writer(rx, sink, path, &asked, w, d))?;
        Ok(Auditor {
            tx,
            reopen,
            written,
            dropped,
            last_warning: Mutex::new(None),
            file: file.map(Path::to_owned),
        })
    }

    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }

    /// Queues an event; never blocks.
    pub fn submit(&self, ev: AuditEvent) {
        match self.tx.try_send(Msg::Event(Box::new(ev))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
                self.warn_dropped();
            }
        }
    }

    /// Waits, at most `within`, until every event submitted before this call
    /// is written. The writer is a detached thread: without this, a process
    /// that exits after a shutdown would lose the events still queued, the
    /// last calls' denials among them. False if the time ran out.
    pub fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (ack, done) = sync_channel(1);
        let mut msg = Msg::Flush(ack);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Asks the writer to reopen the audit file.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // Wakes an idle writer; when the queue is full the flag is enough.
        let _ = self.tx.try_send(Msg::Reopen);
    }

    pub fn written(&self) -> u64 {
        self.written.get()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// At most one warning every ten seconds, with the running total.
    fn warn_dropped(&self) {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            warn!(target: "ipcgate::audit", dropped_total = self.dropped.get(), "audit queue full: events dropped (the sink is too slow)");
        }
    }
}

/// The audit file, appended to; never through a symbolic link (a link
/// planted at the path would have the gateway append wherever it points).
fn open(p: &Path) -> io::Result<std::fs::File> {
    let mut o = OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    o.open(p)
}

fn reopen(file: &mut Option<std::fs::File>, path: Option<&Path>) {
    if let Some(p) = path {
        match open(p) {
            Ok(f) => *file = Some(f),
            Err(e) => {
                error!(target: "ipcgate::audit", path = %p.display(), error = %e, "cannot reopen audit file")
            }
        }
    }
}

fn writer(
    rx: Receiver<Msg>,
    mut file: Option<std::fs::File>,
    path: Option<PathBuf>,
    asked: &AtomicBool,
    written: Counter,
    dropped: Counter,
) {
    let stdout = io::stdout();
    let mut file_buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut out_buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut pending = 0u64;
    let mut torn = false;
    let mut last_error: Option<Instant> = None;
    let mut flushed: Option<SyncSender<()>> = None;
    loop {
        // Batch: take what is queued, then write and flush once.
        let msg = if pending == 0 {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(Duration::ZERO) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => None,
            }
        };
        match msg {
            Some(Msg::Event(ev)) => {
                let line = ev.to_line();
                if ev.file && file.is_some() {
                    file_buf.extend_from_slice(&line);
                }
                if ev.stdout {
                    out_buf.extend_from_slice(&line);
                }
                pending += 1;
                if pending < 256 {
                    continue;
                }
            }
            Some(Msg::Reopen) => {
                if asked.swap(false, Ordering::Acquire) {
                    reopen(&mut file, path.as_deref());
                }
                if pending == 0 {
                    continue;
                }
            }
            Some(Msg::Flush(ack)) => flushed = Some(ack),
            None => {}
        }
        if asked.swap(false, Ordering::Acquire) {
            reopen(&mut file, path.as_deref());
            // A line left half written in the old file stays there.
            torn = false;
        }
        let mut failed = None;
        if !file_buf.is_empty() {
            if let Some(f) = &mut file {
                // After a write that failed part way (a full disk), the next
                // batch starts on a line of its own: one broken line, not two
                // events run together.
                let res = if torn {
                    f.write_all(b"\n").and_then(|()| f.write_all(&file_buf))
                } else {
                    f.write_all(&file_buf)
                };
                torn = res.is_err();
                if let Err(e) = res {
                    failed = Some(e);
                }
            }
        }
        if !out_buf.is_empty() {
            let mut lock = stdout.lock();
            if let Err(e) = lock.write_all(&out_buf).and_then(|()| lock.flush()) {
                failed = Some(e);
            }
        }
        match failed {
            None => {
                written.inc_by(pending);
            }
            Some(e) => {
                dropped.inc_by(pending);
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    last_error = Some(Instant::now());
                    error!(target: "ipcgate::audit", error = %e, dropped_total = dropped.get(), "audit write failed: events dropped");
                }
            }
        }
        file_buf.clear();
        out_buf.clear();
        pending = 0;
        if let Some(ack) = flushed.take() {
            let _ = ack.try_send(());
        }
    }
}
