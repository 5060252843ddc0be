//! Reloading policies while the gateway runs: on SIGHUP, when a policy file
//! changes (watched with `notify`), and on `POST /reload` at the admin socket.
//!
//! A file that fails to load is refused with its error logged and counted; the
//! last good policy stays in force. Each kind (enforced, shadow) is judged on
//! its own, so a broken shadow file never blocks a good enforced one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config;
use crate::metrics::{Metrics, PolicyInfoLabels, ReloadLabels};
use crate::policy::{Authorizer, LoadContext, Policy, PolicyError};

/// Loads and reloads the configured policy files.
pub struct PolicySource {
    cfg: config::Policy,
    file_logger: bool,
    metrics: Arc<Metrics>,
    /// The `policy_info` series currently set, per kind, to retire on change.
    published: Mutex<Vec<PolicyInfoLabels>>,
    /// Held for a whole reload. The watcher, SIGHUP and `POST /reload` each
    /// start one; two at once could each read the file, and the one that read
    /// it first could swap its older policy in last.
    reloading: Mutex<()>,
    /// Tests: a hook inside a reload's window (see [`between`]).
    #[cfg(test)]
    between: Between,
}

/// What one reload did, per policy kind.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub policy: KindReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<KindReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    pub ok: bool,
    /// The version in force after the reload.
    pub version: String,
    pub changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ReloadReport {
    pub fn ok(&self) -> bool {
        self.policy.ok
            && self.shadow.as_ref().is_none_or(|s| s.ok)
            && self.tls.as_ref().is_none_or(|t| t.ok)
    }
}

impl PolicySource {
    pub fn new(cfg: config::Policy, file_logger: bool, metrics: Arc<Metrics>) -> PolicySource {
        PolicySource {
            reloading: Mutex::new(()),
            #[cfg(test)]
            between: Mutex::new(None),
            cfg,
            file_logger,
            metrics,
            published: Mutex::new(Vec::new()),
        }
    }

    /// The files to watch.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.cfg.file.clone()];
        v.extend(self.cfg.shadow_file.clone());
        v
    }

    /// Loads both policies for start-up, where any error is fatal.
    ///
    /// # Errors
    /// The first policy that does not load.
    pub fn load(&self) -> Result<(Policy, Option<Policy>), PolicyError> {
        let enforced = self.load_kind("enforced")?;
        let shadow = match &self.cfg.shadow_file {
            Some(_) => Some(self.load_kind("shadow")?),
            None => None,
        };
        self.publish("enforced", &enforced);
        if let Some(s) = &shadow {
            self.publish("shadow", s);
        }
        Ok((enforced, shadow))
    }

    fn load_kind(&self, kind: &'static str) -> Result<Policy, PolicyError> {
        let (file, metrics) = match kind {
            "enforced" => (&self.cfg.file, Some(&*self.metrics)),
            // The shadow policy's decisions are counted by the authorizer, not
            // per rule: its rules must not mix into the enforced rule counters.
            _ => (
                self.cfg.shadow_file.as_ref().unwrap_or(&self.cfg.file),
                None,
            ),
        };
        Policy::load_with(
            file,
            &LoadContext {
                metrics,
                file_logger: self.file_logger,
            },
        )
    }

    fn publish(&self, kind: &'static str, p: &Policy) {
        let labels = PolicyInfoLabels {
            kind,
            name: p.name.clone(),
            version: p.version.clone(),
        };
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        for old in published.iter().filter(|l| l.kind == kind) {
            self.metrics.policy_info.remove(old);
        }
        published.retain(|l| l.kind != kind);
        self.metrics.policy_info.get_or_create(&labels).set(1);
        published.push(labels);
    }

    /// Re-reads the files and swaps in whatever loads; keeps the rest.
    pub fn reload(&self, authz: &Authorizer) -> ReloadReport {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let policy = self.reload_kind("enforced", authz);
        let shadow = self
            .cfg
            .shadow_file
            .as_ref()
            .map(|_| self.reload_kind("shadow", authz));
        if let Some(a) = authz.auditor() {
            a.reopen();
        }
        ReloadReport {
            policy,
            shadow,
            tls: None,
        }
    }

    fn reload_kind(&self, kind: &'static str, authz: &Authorizer) -> KindReport {
        let current = match kind {
            "enforced" => Some(authz.enforced()),
            _ => authz.shadow(),
        };
        let old_version = current
            .as_ref()
            .map(|p| p.version.clone())
            .unwrap_or_default();
        match self.load_kind(kind) {
            Ok(p) => {
                #[cfg(test)]
                between(&self.between);
                self.count(kind, "ok");
                let version = p.version.clone();
                let changed = version != old_version;
                if changed {
                    info!(policy.kind = kind, policy.name = %p.name, policy.version = %version, previous = %old_version, "policy reloaded");
                } else {
                    debug!(policy.kind = kind, policy.version = %version, "policy unchanged");
                }
                self.publish(kind, &p);
                match kind {
                    "enforced" => authz.set_enforced(p),
                    _ => authz.set_shadow(Some(p)),
                }
                KindReport {
                    ok: true,
                    version,
                    changed,
                    error: None,
                }
            }
            Err(e) => {
                self.count(kind, "failed");
                error!(policy.kind = kind, policy.version = %old_version, error = %e, "policy reload refused; the previous policy stays in force");
                KindReport {
                    ok: false,
                    version: old_version,
                    changed: false,
                    error: Some(e.to_string()),
                }
            }
        }
    }

    fn count(&self, kind: &'static str, result: &'static str) {
        self.metrics
            .policy_reloads
            .get_or_create(&ReloadLabels { kind, result })
            .inc();
    }
}

/// Everything that can be reloaded while running.
pub struct Reloader {
    pub policy: Arc<PolicySource>,
    pub tls: Arc<TlsSource>,
    pub authz: Arc<Authorizer>,
}

impl Reloader {
    /// Reloads policies and TLS material (SIGHUP, `POST /reload`).
    pub fn reload_all(&self) -> ReloadReport {
        let mut report = self.policy.reload(&self.authz);
        report.tls = Some(self.tls.reload());
        report
    }
}

#[derive(Clone, Copy)]
enum Changed {
    Policy,
    Tls,
}

/// Runs the reload triggers (SIGHUP, the file watcher when enabled, and a
/// periodic CRL freshness check) until the task is dropped.
pub async fn run(reloader: Arc<Reloader>, watch: bool) {
    let (tx, mut rx) = mpsc::channel::<Changed>(8);
    let _watcher = if watch {
        let mut files: Vec<(PathBuf, Changed)> = reloader
            .policy
            .files()
            .into_iter()
            .map(|f| (f, Changed::Policy))
            .collect();
        files.extend(reloader.tls.files().into_iter().map(|f| (f, Changed::Tls)));
        start_watcher(files, tx)
    } else {
        None
    };
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; reload with the admin socket");
            None
        }
    };
    // No SIGHUP on Windows: the watcher and the admin pipe reload.
    #[cfg(not(unix))]
    let mut hup: Option<tokio::sync::mpsc::Receiver<()>> = None;
    let mut crl_check = tokio::time::interval(Duration::from_secs(60));
    crl_check.tick().await;
    loop {
        let (policy, tls) = tokio::select! {
            Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                info!("SIGHUP: reloading policies and TLS material");
                (true, true)
            }
            Some(first) = rx.recv() => {
                // Editors and tools write in several steps (truncate, write,
                // rename): let them finish, then read once.
                tokio::time::sleep(Duration::from_millis(150)).await;
                let (mut p, mut t) = (false, false);
                let mut mark = |c: Changed| match c {
                    Changed::Policy => p = true,
                    Changed::Tls => t = true,
                };
                mark(first);
                while let Ok(c) = rx.try_recv() {
                    mark(c);
                }
                debug!(policy = p, tls = t, "watched files changed: reloading");
                (p, t)
            }
            _ = crl_check.tick() => {
                // Off the worker: a CRL gone stale re-verifies every live chain.
                let tls = reloader.tls.clone();
                let _ = tokio::task::spawn_blocking(move || tls.check_crls()).await;
                continue;
            }
        };
        let r = reloader.clone();
        crate::systemd::notify("RELOADING=1");
        let _ = tokio::task::spawn_blocking(move || {
            if policy {
                r.policy.reload(&r.authz);
            }
            if tls {
                r.tls.reload();
            }
        })
        .await;
        crate::systemd::notify("READY=1");
    }
}

/// Watches the directories holding the files (files are often replaced by
/// rename, which a watch on the file itself would miss).
fn start_watcher(
    files: Vec<(PathBuf, Changed)>,
    tx: mpsc::Sender<Changed>,
) -> Option<notify::RecommendedWatcher> {
    let names: Vec<(std::ffi::OsString, Changed)> = files
        .iter()
        .filter_map(|(f, c)| f.file_name().map(|n| (n.to_owned(), *c)))
        .collect();
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            for p in &ev.paths {
                for (n, c) in &names {
                    if p.file_name() == Some(n.as_os_str()) {
                        let _ = tx.try_send(*c);
                    }
                }
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch files; reload with SIGHUP or the admin socket");
                return None;
            }
        };
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|(f, _)| {
            f.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."))
                .to_owned()
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), error = %e, "cannot watch directory");
        }
    }
    Some(watcher)
}

/// The TLS material in force (server certificate and key, trust bundle, CRLs),
/// swapped whole on reload. New handshakes use the new material at once; live
/// connections are re-verified and those that no longer pass are closed.
pub struct TlsSource {
    cfg: config::Tls,
    current: arc_swap::ArcSwap<crate::tls::ServerTls>,
    conns: Arc<crate::conns::Conns>,
    metrics: Arc<Metrics>,
    /// Held for a whole reload or CRL check, as for [`PolicySource`]: a
    /// reload that read `ca.crl` before a revocation must not swap its
    /// material in after one that read it after. It holds what the last
    /// check found, so live connections are re-verified when one more CRL
    /// goes stale or a CA expires, not at every check.
    reloading: Mutex<Held>,
    /// Tests: a hook inside a reload's window (see [`between`]).
    #[cfg(test)]
    between: Between,
}

/// What [`TlsSource`]'s last check found.
#[derive(Default)]
struct Held {
    /// The CRLs (file, issuer) found stale.
    stale: Vec<(PathBuf, String)>,
    /// How many trusted CAs had expired.
    cas_expired: usize,
}

/// What a TLS reload did.
#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    pub ok: bool,
    /// Live connections told to close because their certificate no longer verifies.
    pub closed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TlsSource {
    /// Loads the TLS files for start-up.
    ///
    /// # Errors
    /// The first file that does not load, with its path.
    pub fn load(
        cfg: config::Tls,
        conns: Arc<crate::conns::Conns>,
        metrics: Arc<Metrics>,
    ) -> Result<TlsSource, crate::tls::TlsError> {
        let tls = crate::tls::server(&cfg)?;
        let s = TlsSource {
            reloading: Mutex::new(Held::default()),
            #[cfg(test)]
            between: Mutex::new(None),
            cfg,
            current: arc_swap::ArcSwap::from_pointee(tls),
            conns,
            metrics,
        };
        s.check_crls();
        Ok(s)
    }

    pub fn current(&self) -> Arc<crate::tls::ServerTls> {
        self.current.load_full()
    }

    /// `crl_expired = "deny"`: a stale CRL refuses its CA's clients.
    pub fn crl_expired_deny(&self) -> bool {
        self.cfg.crl_expired_deny
    }

    pub fn files(&self) -> Vec<PathBuf> {
        self.cfg.files()
    }

    /// Re-reads every TLS file; on success swaps it in and re-verifies live
    /// connections, on failure keeps the old material.
    ///
    /// The swap comes before the re-check. A handshake that began under the
    /// old material registers its connection and then compares the material
    /// in force with its own (`server::serve_connection`): so either this
    /// re-check finds it registered, or it finds the new material swapped in
    /// and verifies itself against it.
    pub fn reload(&self) -> TlsReport {
        let mut stale = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = crate::tls::server(&self.cfg).and_then(|tls| {
            match crate::tls::older_crl(&self.current().crls, &tls.crls) {
                None => Ok(tls),
                Some((new, old)) => Err(crate::tls::TlsError::older_crl(new, old)),
            }
        });
        match loaded {
            Ok(tls) => {
                #[cfg(test)]
                between(&self.between);
                let tls = Arc::new(tls);
                self.current.store(tls.clone());
                let closed = self.conns.recheck(&*tls.verifier);
                self.metrics
                    .tls_reloads
                    .get_or_create(&crate::metrics::ResultLabels { result: "ok" })
                    .inc();
                self.count_closed(closed);
                info!(closed, "TLS material reloaded");
                self.check_crls_held(&mut stale, true);
                TlsReport {
                    ok: true,
                    closed,
                    error: None,
                }
            }
            Err(e) => {
                self.metrics
                    .tls_reloads
                    .get_or_create(&crate::metrics::ResultLabels { result: "failed" })
                    .inc();
                error!(error = %e, "TLS reload refused; the previous certificates and CRLs stay in force");
                TlsReport {
                    ok: false,
                    closed: 0,
                    error: Some(e.to_string()),
                }
            }
        }
    }

    /// Publishes each CRL's next-update and warns about stale ones; with
    /// `crl_expired = "deny"`, closes the live connections a stale CRL now
    /// refuses, as it refuses new handshakes. Closes those of a CA that has
    /// expired since the last check too.
    ///
    /// Blocking: a re-check verifies every live client chain again.
    pub fn check_crls(&self) {
        let mut stale = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        self.check_crls_held(&mut stale, false);
    }

    /// `rechecked`: the live connections were just re-verified against the
    /// material in force.
    fn check_crls_held(&self, held: &mut Held, rechecked: bool) {
        let now = std::time::SystemTime::now();
        let current = self.current();
        let mut stale_now = Vec::new();
        for crl in &current.crls {
            let file = crate::metrics::FileLabels {
                file: crl.path.display().to_string(),
            };
            if let Some(t) = crl.next_update {
                let secs = t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                self.metrics
                    .crl_next_update
                    .get_or_create(&file)
                    .set(secs as i64);
            }
            let stale = crl.is_stale(now);
            if stale {
                stale_now.push((crl.path.clone(), crl.issuer.clone()));
            }
            self.metrics
                .crl_stale
                .get_or_create(&file)
                .set(i64::from(stale));
            if stale {
                warn!(
                    crl = %crl.path.display(),
                    issuer = %crl.issuer,
                    enforced = self.cfg.crl_expired_deny,
                    "CRL is past its nextUpdate: re-issue it (`ipcgate crl --ca-dir ...`){}",
                    if self.cfg.crl_expired_deny { "; clients of this CA are refused until then" } else { "" }
                );
            }
        }
        // The verifier refuses new paths to an expired CA as soon as it
        // expires (`tls::pathlen`, in whole seconds as here); its live
        // connections go here, once for each CA that expires.
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cas_expired = current.anchors_expire.iter().filter(|&&t| secs > t).count();
        if cas_expired > 0 {
            warn!(
                file = %self.cfg.client_ca.display(),
                "a CA in the client_ca bundle has expired: its clients are refused; put its renewal in the bundle and reload"
            );
        }
        let newly = stale_now.iter().any(|c| !held.stale.contains(c));
        let newly_expired = cas_expired > held.cas_expired;
        if ((newly && self.cfg.crl_expired_deny) || newly_expired) && !rechecked {
            let closed = self.conns.recheck(&*current.verifier);
            if closed > 0 {
                warn!(
                    closed,
                    "closed connections whose CA has expired or whose CA's CRL is past its nextUpdate"
                );
            }
            self.count_closed(closed);
        }
        held.stale = stale_now;
        held.cas_expired = cas_expired;
    }

    fn count_closed(&self, closed: usize) {
        if closed > 0 {
            self.metrics
                .connections_closed
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: "no_longer_verifies",
                })
                .inc_by(closed as u64);
        }
    }
}

/// Tests: runs once, between a reload's reading its files and swapping them
/// in (the window the `reloading` locks close).
#[cfg(test)]
type Between = Mutex<Option<Box<dyn FnOnce() + Send>>>;

#[cfg(test)]
fn between(b: &Between) {
    // Taken out first: the hook may start a reload that comes here too.
    let hook = b.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(hook) = hook {
        hook();
    }
}

#[cfg(test)]
mod tests;
