//! A43 policies compiled for lookup: rules are indexed by their path patterns
//! (exact paths, whole services `/pkg.Svc/*` and methods `*/Method` in hash
//! maps; other prefixes and suffixes in one hash map per distinct length), so a
//! decision touches only the rules that can match the path, and allocates nothing.
//! Sources (principals, uids, gids) are deduplicated: a connection checks each
//! distinct source once, so neither it nor a decision grows with the number of
//! rules that repeat a caller.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use super::model::{self, AuditCondition, PolicyError};
use super::pattern::Pattern;
use super::rule::{self, Rule, RuleExplanation, SourceKey};
use crate::identity::{hex, Peer};
use crate::metrics::{MethodLabels, Metrics, RuleLabels};

/// Hash maps keyed by policy strings. foldhash is seeded per process; keys come
/// from the policy file, lookups from clients.
type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// Rule indexes by affix, grouped by affix length: a lookup slices the path once
/// per distinct length and does one hash probe.
type ByLen = Vec<(usize, Map<Vec<u32>>)>;

/// Rules of one kind (deny or allow) with their indexes.
#[derive(Debug, Default)]
struct RuleSet {
    rules: Vec<Rule>,
    exact: Map<Vec<u32>>,
    /// `/pkg.Service/*`: keyed by `/pkg.Service/`, one probe whatever the
    /// number of services.
    by_service: Map<Vec<u32>>,
    /// `*/Method`: keyed by `/Method`.
    by_method: Map<Vec<u32>>,
    /// Other prefixes and suffixes, by length.
    prefix: ByLen,
    suffix: ByLen,
    any_path: Vec<u32>,
    /// For each path the policy names exactly: every rule whose paths can match
    /// it (exact, prefix, suffix), in file order, with its source id — one
    /// probe per call, and a candidate whose source does not hold is passed
    /// over without reading anything else.
    candidates: Map<Box<[(u32, u32)]>>,
    /// Each rule's source (principals, uids, gids) as an id: rules sharing a
    /// source share its check, so a connection decides each distinct source
    /// once, however many rules repeat it (a policy grows by methods, not by
    /// callers).
    source_of: Vec<u32>,
    /// For each source id, the first rule that has it (to check it with).
    source_rule: Vec<u32>,
    /// Exact principal → the sources naming it.
    by_principal: Map<Vec<u32>>,
    /// Sources with a wildcard principal, checked one by one.
    wildcard_principal: Vec<u32>,
    /// Sources without principals.
    any_principal: Vec<u32>,
}

/// Which sources (principals, uids, gids; by source id) match one connection's
/// peer: fixed for the connection's lifetime under one policy, so computed
/// once; and the decisions the connection has had, by path.
///
/// A decision that no header condition took part in depends only on the path
/// for this peer, so the connection's next call to that method costs one probe
/// of a map the size of the methods it uses, however large the policy.
#[derive(Debug)]
pub struct SourceMatch {
    deny: Box<[u64]>,
    allow: Box<[u64]>,
    memo: Map<Memoized>,
}

/// Paths one connection remembers decisions for, and the longest path
/// remembered: a client calling more (or longer-named) methods is decided
/// through the indexes each time, and can make the memo hold at most ~4 KiB.
const MEMO_PATHS: usize = 32;
const MEMO_PATH_LEN: usize = 128;
const NONE: u32 = u32::MAX;

/// The deny and allow rule (`NONE` if none) that decided a path, and its
/// method counters.
#[derive(Debug)]
struct Memoized {
    deny: u32,
    allow: u32,
    counters: MethodCounters,
}

fn bit(bits: &[u64], i: u32) -> bool {
    bits.get(i as usize / 64)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn add(list: &mut Vec<u32>, i: u32) {
    if list.last() != Some(&i) {
        list.push(i);
    }
}

fn by_len(v: &mut ByLen, key: &str, i: u32) {
    let pos = match v.iter().position(|(l, _)| *l == key.len()) {
        Some(p) => p,
        None => {
            v.push((key.len(), Map::default()));
            v.len() - 1
        }
    };
    add(v[pos].1.entry(key.into()).or_default(), i);
}

/// `/pkg.Service/`: what a `/pkg.Service/*` prefix covers, a whole service.
fn is_service(prefix: &str) -> bool {
    prefix.len() > 2
        && prefix.starts_with('/')
        && prefix.ends_with('/')
        && !prefix[1..prefix.len() - 1].contains('/')
}

/// `/Method`: what a `*/Method` suffix covers, one method of every service.
fn is_method(suffix: &str) -> bool {
    suffix.len() > 1 && suffix.starts_with('/') && !suffix[1..].contains('/')
}

fn lookup<'m>(v: &'m ByLen, path: &str, prefix: bool) -> impl Iterator<Item = &'m Vec<u32>> + 'm {
    let path = path.to_owned();
    v.iter().filter_map(move |(len, map)| {
        let key = if prefix {
            path.get(..*len)
        } else {
            path.len().checked_sub(*len).and_then(|s| path.get(s..))
        };
        key.and_then(|k| map.get(k))
    })
}

impl RuleSet {
    fn push(&mut self, rule: Rule) {
        let i = self.rules.len() as u32;
        if rule.paths.is_empty() {
            add(&mut self.any_path, i);
        }
        for p in &rule.paths {
            let t = p.text.as_str();
            match p.pattern {
                Pattern::Present => add(&mut self.any_path, i),
                Pattern::Prefix(_) if is_service(&t[..t.len() - 1]) => add(
                    self.by_service.entry(t[..t.len() - 1].into()).or_default(),
                    i,
                ),
                Pattern::Suffix(_) if is_method(&t[1..]) => {
                    add(self.by_method.entry(t[1..].into()).or_default(), i)
                }
                Pattern::Prefix(_) => by_len(&mut self.prefix, &t[..t.len() - 1], i),
                Pattern::Suffix(_) => by_len(&mut self.suffix, &t[1..], i),
                Pattern::Exact(_) => add(self.exact.entry(t.into()).or_default(), i),
            }
        }
        self.rules.push(rule);
    }

    /// Gives each distinct source an id and indexes the sources by principal.
    fn index_sources(&mut self) {
        let mut ids: HashMap<SourceKey, u32> = HashMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let next = self.source_rule.len() as u32;
            let src = *ids.entry(rule.source_key()).or_insert(next);
            self.source_of.push(src);
            if src != next {
                continue;
            }
            self.source_rule.push(i as u32);
            match rule.principals() {
                None => self.any_principal.push(src),
                Some(ps) if ps.iter().all(|p| matches!(p.pattern, Pattern::Exact(_))) => {
                    for p in ps.iter().filter(|p| !p.text.is_empty()) {
                        add(
                            self.by_principal.entry(p.text.as_str().into()).or_default(),
                            src,
                        );
                    }
                }
                Some(_) => self.wildcard_principal.push(src),
            }
        }
    }

    /// Indexes the sources, then builds the per-path candidate lists, once all
    /// rules are in. Bounded: a
    /// policy whose lists would grow past the budget falls back to probing the
    /// affix indexes for the remaining paths.
    fn finish(&mut self) {
        self.index_sources();
        let budget = 4 * self.rules.len() + 65_536;
        let mut used = 0;
        let mut candidates = Map::default();
        let mut seen = std::collections::HashSet::new();
        for (path, exact) in &self.exact {
            let mut c = exact.clone();
            for l in lookup(&self.prefix, path, true)
                .chain(lookup(&self.suffix, path, false))
                .chain(self.segments(path))
            {
                c.extend_from_slice(l);
            }
            c.sort_unstable();
            c.dedup();
            // Every candidate matches this path, so a rule without header
            // conditions matches exactly when its source holds: a later rule
            // with the same source can never be the first match. Each source
            // then costs one test per path, however many methods repeat it.
            seen.clear();
            c.retain(|&i| {
                self.rules[i as usize].has_headers() || seen.insert(self.source_of[i as usize])
            });
            used += c.len();
            if used > budget {
                break;
            }
            let c = c.iter().map(|&i| (i, self.source_of[i as usize]));
            candidates.insert(path.clone(), c.collect());
        }
        self.candidates = candidates;
    }

    /// The `/Service/*` and `*/Method` rules for a canonical `/Service/Method`.
    fn segments<'s>(&'s self, path: &str) -> impl Iterator<Item = &'s Vec<u32>> + 's {
        let (service, method) = match path.rfind('/') {
            Some(i) if i > 0 => (
                self.by_service.get(&path[..=i]),
                self.by_method.get(&path[i..]),
            ),
            _ => (None, None),
        };
        service.into_iter().chain(method)
    }

    /// The sources (by id) that hold for `peer`.
    fn source_bits(&self, peer: &Peer) -> Box<[u64]> {
        let mut bits = vec![0u64; self.source_rule.len().div_ceil(64)];
        let mut set = |s: u32| bits[s as usize / 64] |= 1 << (s % 64);
        let rule = |s: u32| &self.rules[self.source_rule[s as usize] as usize];
        for &s in &self.any_principal {
            if rule(s).cred_matches(peer) {
                set(s);
            }
        }
        for &s in &self.wildcard_principal {
            if rule(s).source_matches(peer) {
                set(s);
            }
        }
        let ids = peer
            .uris
            .iter()
            .chain(&peer.dns)
            .chain(std::iter::once(&peer.subject));
        for id in ids {
            for &s in self.by_principal.get(id.as_str()).into_iter().flatten() {
                if rule(s).cred_matches(peer) {
                    set(s);
                }
            }
        }
        bits.into_boxed_slice()
    }

    /// The first rule, in file order, that matches (`NONE` if none), and
    /// whether a header condition took part in finding it. With `src`, the
    /// sources are already decided for this peer and only the request
    /// conditions remain.
    fn first_index<'s>(
        &'s self,
        path: &str,
        headers: &HeaderMap,
        peer: &Peer,
        src: Option<&[u64]>,
    ) -> (u32, bool) {
        let mut best = NONE;
        let mut by_headers = false;
        let mut scan = |list: &mut dyn Iterator<Item = (u32, u32)>| {
            for (i, source) in list {
                if i >= best {
                    break;
                }
                let rule = &self.rules[i as usize];
                let hit = match src {
                    Some(bits) => {
                        bit(bits, source) && {
                            by_headers |= rule.has_headers();
                            rule.headers_match(headers)
                        }
                    }
                    None => {
                        by_headers |= rule.has_headers();
                        rule.matches(headers, peer)
                    }
                };
                if hit {
                    best = i;
                    break;
                }
            }
        };
        let with_source = |l: &'s [u32]| l.iter().map(|&i| (i, self.source_of[i as usize]));
        if let Some(c) = self.candidates.get(path) {
            scan(&mut c.iter().copied());
            scan(&mut with_source(&self.any_path));
            return (best, by_headers);
        }
        if let Some(l) = self.exact.get(path) {
            scan(&mut with_source(l));
        }
        for l in self.segments(path) {
            scan(&mut with_source(l));
        }
        for (len, map) in &self.prefix {
            if let Some(l) = path.get(..*len).and_then(|k| map.get(k)) {
                scan(&mut with_source(l));
            }
        }
        for (len, map) in &self.suffix {
            if let Some(l) = path
                .len()
                .checked_sub(*len)
                .and_then(|s| path.get(s..))
                .and_then(|k| map.get(k))
            {
                scan(&mut with_source(l));
            }
        }
        scan(&mut with_source(&self.any_path));
        (best, by_headers)
    }
}

/// What the policy decided for one call.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'a> {
    Allow {
        rule: &'a Rule,
    },
    /// `rule` is the deny rule that matched, or `None` when no allow rule did.
    Deny {
        rule: Option<&'a Rule>,
    },
}

impl<'a> Decision<'a> {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The deciding rule's name, if a rule decided.
    pub fn rule(&self) -> Option<&'a str> {
        match self {
            Decision::Allow { rule } => Some(&rule.name),
            Decision::Deny { rule } => rule.map(|r| &*r.name),
        }
    }

    pub fn rule_name(&self) -> Option<Arc<str>> {
        match self {
            Decision::Allow { rule } => Some(rule.name.clone()),
            Decision::Deny { rule } => rule.map(|r| r.name.clone()),
        }
    }

    pub fn label(&self) -> &'static str {
        if self.allowed() {
            "allow"
        } else {
            "deny"
        }
    }
}

/// The audit loggers a policy turns on (gRFC A59).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditSpec {
    pub condition: AuditCondition,
    pub stdout: bool,
    pub file: bool,
}

impl AuditSpec {
    pub fn any_logger(&self) -> bool {
        self.stdout || self.file
    }
}

/// The A59 logger names ipcgate knows.
pub const STDOUT_LOGGER: &str = "stdout_logger";
pub const FILE_LOGGER: &str = "ipcgate_file_logger";

/// What a policy is compiled against.
#[derive(Clone, Copy, Default)]
pub struct LoadContext<'a> {
    /// Register the rule and method counters here (the enforced policy).
    pub metrics: Option<&'a Metrics>,
    /// Whether `[audit] file` is configured, so `ipcgate_file_logger` can work.
    pub file_logger: bool,
}

#[derive(Debug, Default, Clone)]
struct MethodCounters {
    allow: Counter,
    deny: Counter,
}

/// A compiled, immutable policy.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    /// Short content hash of the file, to tell versions apart in logs.
    pub version: String,
    pub audit: AuditSpec,
    deny: RuleSet,
    allow: RuleSet,
    default_deny: Counter,
    methods: Map<MethodCounters>,
    other_methods: MethodCounters,
}

/// The whole explanation of one decision.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub policy: String,
    pub version: String,
    pub method: String,
    pub allowed: bool,
    /// The deciding rule, `None` for the default denial.
    pub rule: Option<String>,
    pub deny_rules: Vec<RuleExplanation>,
    pub allow_rules: Vec<RuleExplanation>,
}

impl Policy {
    /// Reads, validates and compiles a policy file (no metrics; the file logger
    /// is taken as available).
    ///
    /// # Errors
    /// [`PolicyError`] naming the file, the field and the fix.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Self::load_with(
            path,
            &LoadContext {
                metrics: None,
                file_logger: true,
            },
        )
    }

    /// [`Policy::load`] against a gateway's context.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file, the field and the fix.
    pub fn load_with(path: &Path, ctx: &LoadContext<'_>) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: path.display().to_string(),
            field: "(file)".into(),
            location: None,
            message: format!("cannot read policy: {e}"),
        })?;
        Self::compile(&text, path, ctx)
    }

    /// Validates and compiles policy JSON as if read from `file`.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file, the field and the fix.
    pub fn from_json(text: &str, file: &Path) -> Result<Policy, PolicyError> {
        Self::compile(
            text,
            file,
            &LoadContext {
                metrics: None,
                file_logger: true,
            },
        )
    }

    /// Validates and compiles policy JSON against a gateway's context.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file, the field and the fix.
    pub fn compile(text: &str, file: &Path, ctx: &LoadContext<'_>) -> Result<Policy, PolicyError> {
        let raw = model::parse(text, file)?;
        let err = |field: String, message: String| PolicyError {
            file: file.display().to_string(),
            field,
            location: None,
            message,
        };
        if raw.name.is_empty() {
            return Err(err(
                "name".into(),
                "must not be empty (name the policy; logs and audit events carry it)".into(),
            ));
        }
        let rule_counter = |decision: &'static str, rule: &str| match ctx.metrics {
            Some(m) => m.authz_decisions.get_or_create_owned(&RuleLabels {
                decision,
                rule: rule.into(),
            }),
            None => Counter::default(),
        };
        let mut deny = RuleSet::default();
        let mut allow = RuleSet::default();
        for (kind, decision, rules, set) in [
            ("deny_rules", "deny", &raw.deny_rules, &mut deny),
            ("allow_rules", "allow", &raw.allow_rules, &mut allow),
        ] {
            for (i, r) in rules.iter().enumerate() {
                let mut rule =
                    rule::compile(r, &format!("{kind}[{i}]"), rule_counter(decision, &r.name))
                        .map_err(|(f, m)| err(f, m))?;
                rule.deny = decision == "deny";
                set.push(rule);
            }
        }
        deny.finish();
        allow.finish();
        let audit =
            compile_audit(raw.audit_logging_options.as_ref(), ctx).map_err(|(f, m)| err(f, m))?;

        // Per-method counters for the methods the policy names; all others share
        // "other", which keeps label cardinality bounded by the policy.
        let method_counter = |method: &str, decision: &'static str| match ctx.metrics {
            Some(m) => m.rpc_calls.get_or_create_owned(&MethodLabels {
                method: method.into(),
                decision,
            }),
            None => Counter::default(),
        };
        let mut methods = Map::default();
        for path in deny.exact.keys().chain(allow.exact.keys()) {
            methods
                .entry(path.clone())
                .or_insert_with(|| MethodCounters {
                    allow: method_counter(path, "allow"),
                    deny: method_counter(path, "deny"),
                });
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        Ok(Policy {
            name: raw.name,
            version: hex(&digest.as_ref()[..6]),
            audit,
            deny,
            allow,
            default_deny: rule_counter("deny", ""),
            methods,
            other_methods: MethodCounters {
                allow: method_counter("other", "allow"),
                deny: method_counter("other", "deny"),
            },
        })
    }

    /// Deny rules first, then allow rules; no match is a denial (gRFC A43).
    pub fn evaluate(&self, path: &str, headers: &HeaderMap, peer: &Peer) -> Decision<'_> {
        let (deny, allow, _) = self.indices(path, headers, peer, None);
        self.decision(deny, allow)
    }

    /// [`Policy::evaluate`] with the peer's sources decided up front by
    /// [`Policy::source_match`] — what a connection does for every call.
    pub fn evaluate_for(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: &Peer,
        src: &mut SourceMatch,
    ) -> Decision<'_> {
        self.decide_for(path, headers, peer, src, false)
    }

    /// Which rules' sources match this peer; valid for this policy only.
    pub fn source_match(&self, peer: &Peer) -> SourceMatch {
        SourceMatch {
            deny: self.deny.source_bits(peer),
            allow: self.allow.source_bits(peer),
            memo: Map::default(),
        }
    }

    /// Deny rules first, then allow rules: the deciding rule of each (`NONE`
    /// if none; allow is not looked at once a deny rule matched), and whether a
    /// header condition took part.
    fn indices(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: &Peer,
        src: Option<&SourceMatch>,
    ) -> (u32, u32, bool) {
        let (deny, deny_headers) =
            self.deny
                .first_index(path, headers, peer, src.map(|s| &*s.deny));
        if deny != NONE {
            return (deny, NONE, deny_headers);
        }
        let (allow, allow_headers) =
            self.allow
                .first_index(path, headers, peer, src.map(|s| &*s.allow));
        (NONE, allow, deny_headers || allow_headers)
    }

    fn decision(&self, deny: u32, allow: u32) -> Decision<'_> {
        if let Some(rule) = self.deny.rules.get(deny as usize) {
            return Decision::Deny { rule: Some(rule) };
        }
        match self.allow.rules.get(allow as usize) {
            Some(rule) => Decision::Allow { rule },
            None => Decision::Deny { rule: None },
        }
    }

    /// A decision from the connection's memo, or worked out and remembered
    /// when headers played no part; with `count`, counted in the rule and
    /// method metrics.
    fn decide_for<'p>(
        &'p self,
        path: &str,
        headers: &HeaderMap,
        peer: &Peer,
        src: &mut SourceMatch,
        count: bool,
    ) -> Decision<'p> {
        let (d, counters) = match src.memo.get(path) {
            Some(m) => (self.decision(m.deny, m.allow), &m.counters),
            None => {
                let (deny, allow, by_headers) = self.indices(path, headers, peer, Some(src));
                let counters = self.methods.get(path).unwrap_or(&self.other_methods);
                if !by_headers && src.memo.len() < MEMO_PATHS && path.len() <= MEMO_PATH_LEN {
                    src.memo.insert(
                        path.into(),
                        Memoized {
                            deny,
                            allow,
                            counters: counters.clone(),
                        },
                    );
                }
                (self.decision(deny, allow), counters)
            }
        };
        if count {
            match d {
                Decision::Allow { rule } => {
                    rule.hits.inc();
                    counters.allow.inc();
                }
                Decision::Deny { rule } => {
                    rule.map_or(&self.default_deny, |r| &r.hits).inc();
                    counters.deny.inc();
                }
            }
        }
        d
    }

    /// [`Policy::evaluate_for`], counted in the rule and method metrics.
    pub fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: &Peer,
        src: &mut SourceMatch,
    ) -> Decision<'_> {
        self.decide_for(path, headers, peer, src, true)
    }

    /// Every rule's verdict on one call, and the decision they add up to — the
    /// same one [`Policy::evaluate`] reaches through its indexes.
    pub fn explain(&self, path: &str, headers: &HeaderMap, peer: &Peer) -> Explanation {
        let deny_rules: Vec<_> = self
            .deny
            .rules
            .iter()
            .map(|r| r.explain(path, headers, peer))
            .collect();
        let allow_rules: Vec<_> = self
            .allow
            .rules
            .iter()
            .map(|r| r.explain(path, headers, peer))
            .collect();
        let (allowed, rule) = match deny_rules.iter().find(|r| r.matched) {
            Some(r) => (false, Some(r.name.clone())),
            None => match allow_rules.iter().find(|r| r.matched) {
                Some(r) => (true, Some(r.name.clone())),
                None => (false, None),
            },
        };
        Explanation {
            policy: self.name.clone(),
            version: self.version.clone(),
            method: path.to_owned(),
            allowed,
            rule,
            deny_rules,
            allow_rules,
        }
    }

    /// Number of (deny, allow) rules.
    pub fn rule_counts(&self) -> (usize, usize) {
        (self.deny.rules.len(), self.allow.rules.len())
    }

    /// One line per rule, deny rules first.
    pub fn summary(&self) -> Vec<String> {
        let d = self
            .deny
            .rules
            .iter()
            .map(|r| format!("deny  {}", r.summary()));
        let a = self
            .allow
            .rules
            .iter()
            .map(|r| format!("allow {}", r.summary()));
        d.chain(a).collect()
    }
}

fn compile_audit(
    opts: Option<&model::RawAuditOptions>,
    ctx: &LoadContext<'_>,
) -> Result<AuditSpec, (String, String)> {
    let mut spec = AuditSpec::default();
    let Some(opts) = opts else { return Ok(spec) };
    spec.condition = opts.audit_condition;
    for (i, l) in opts.audit_loggers.iter().enumerate() {
        let at = format!("audit_logging_options.audit_loggers[{i}]");
        let problem = match l.name.as_str() {
            _ if l.config.as_ref().is_some_and(|c| !c.is_empty()) => Some((
                format!("{at}.config"),
                format!("{:?} takes no config (write \"config\": {{}}); the file logger's path is [audit] file in gateway.toml", l.name),
            )),
            STDOUT_LOGGER => {
                spec.stdout = true;
                None
            }
            FILE_LOGGER if ctx.file_logger => {
                spec.file = true;
                None
            }
            FILE_LOGGER => Some((
                format!("{at}.name"),
                format!("{FILE_LOGGER:?} needs [audit] file = \"/path/audit.jsonl\" in gateway.toml"),
            )),
            other => Some((
                format!("{at}.name"),
                format!("unknown audit logger {other:?} (ipcgate has {STDOUT_LOGGER:?} and {FILE_LOGGER:?}; add \"is_optional\": true to skip loggers this gateway does not have)"),
            )),
        };
        match problem {
            Some(p) if !l.is_optional => return Err(p),
            Some((field, msg)) => tracing::warn!(%field, "optional audit logger skipped: {msg}"),
            None => {}
        }
    }
    Ok(spec)
}
