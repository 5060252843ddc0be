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
}

/// What one reload did, per policy kind.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub policy: KindReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<KindReport>,
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
        self.policy.ok && self.shadow.as_ref().is_none_or(|s| s.ok)
    }
}

impl PolicySource {
    pub fn new(cfg: config::Policy, file_logger: bool, metrics: Arc<Metrics>) -> PolicySource {
        PolicySource {
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
        let policy = self.reload_kind("enforced", authz);
        let shadow = self
            .cfg
            .shadow_file
            .as_ref()
            .map(|_| self.reload_kind("shadow", authz));
        if let Some(a) = authz.auditor() {
            a.reopen();
        }
        ReloadReport { policy, shadow }
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

/// Runs the reload triggers (SIGHUP, and the file watcher when enabled) until
/// the task is dropped.
pub async fn run(source: Arc<PolicySource>, authz: Arc<Authorizer>, watch: bool) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let _watcher = if watch {
        start_watcher(&source, tx.clone())
    } else {
        None
    };
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; reload with the admin socket");
            None
        }
    };
    loop {
        tokio::select! {
            Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                info!("SIGHUP: reloading policy");
            }
            Some(()) = rx.recv() => {
                // Editors write in several steps (truncate, write, rename): let
                // them finish, then read once.
                tokio::time::sleep(Duration::from_millis(150)).await;
                while rx.try_recv().is_ok() {}
                debug!("policy file changed: reloading");
            }
        }
        let (s, a) = (source.clone(), authz.clone());
        let _ = tokio::task::spawn_blocking(move || s.reload(&a)).await;
    }
}

/// Watches the directories holding the policy files (files are often replaced
/// by rename, which a watch on the file itself would miss).
fn start_watcher(
    source: &PolicySource,
    tx: mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    let files = source.files();
    let names: Vec<_> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_owned()))
        .collect();
    let mut watcher = match notify::recommended_watcher(
        move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let ours = ev
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)));
                if ours && !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let _ = tx.try_send(());
                }
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch policy files; reload with SIGHUP or the admin socket");
            return None;
        }
    };
    for f in &files {
        let dir = f
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), error = %e, "cannot watch policy directory");
        }
    }
    Some(watcher)
}
