//! A43 policies compiled for lookup: rules are indexed by their path patterns
//! (exact paths, whole services `/pkg.Svc/*` and methods `*/Method` in hash
//! maps; other prefixes and suffixes in one hash map per distinct length), so a
//! decision touches only the rules that can match the path, and allocates nothing.
//! Sources (principals, uids, gids) are deduplicated: a connection checks each
//! distinct source once, so neither it nor a decision grows with the number of
//! rules that repeat a caller. Each index entry keeps, per source, its first
//! rule without header conditions, so a decision looks up the few sources its
//! caller holds rather than walking past other callers' rules: it does not
//! grow with the number of callers either.

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

/// Rule indexes by path pattern, over what an entry holds: rule numbers while
/// the policy is read, [`List`]s once it is compiled.
#[derive(Debug, Default)]
struct Paths<L> {
    exact: Map<L>,
    /// `/pkg.Service/*`: keyed by `/pkg.Service/`, one probe whatever the
    /// number of services.
    by_service: Map<L>,
    /// `*/Method`: keyed by `/Method`.
    by_method: Map<L>,
    /// Other prefixes and suffixes, grouped by length: a lookup slices the
    /// path once per distinct length and does one hash probe.
    prefix: Vec<(usize, Map<L>)>,
    suffix: Vec<(usize, Map<L>)>,
    any_path: L,
}

/// The rules of one index entry that can be a first match.
#[derive(Debug, Default)]
struct List {
    /// (source id, rule): each source's first rule without header conditions,
    /// by source id. No later rule with that source can be the first match,
    /// so a connection looks up the few sources it holds here instead of
    /// walking past every other caller's rules (a policy grows by callers).
    first: Box<[(u32, u32)]>,
    /// `first` as a hash map, when it is long (a service granted to many
    /// callers): one probe instead of a binary search's cache misses. Boxed
    /// because most lists are short and have none: a `List` stays 40 bytes.
    #[allow(clippy::box_collection)]
    first_map: Option<Box<HashMap<u32, u32, foldhash::fast::RandomState>>>,
    /// (rule, source id) of the rules with header conditions, in file order.
    headers: Box<[(u32, u32)]>,
}

/// Rules of one kind (deny or allow) with their indexes.
#[derive(Debug, Default)]
struct RuleSet {
    rules: Vec<Rule>,
    paths: Paths<List>,
    /// For each path the policy names exactly: every rule whose paths can match
    /// it (exact, prefix, suffix) — one probe per call instead of one per index.
    candidates: Map<List>,
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
    /// The source ids that hold, sorted: a caller holds a few, whatever the
    /// number of sources.
    deny: Vec<u32>,
    allow: Vec<u32>,
    memo: Map<Memoized>,
}

/// Paths one connection remembers decisions for, and the longest path
/// remembered: a client calling more (or longer-named) methods is decided
/// through the indexes each time, and can make the memo hold at most ~4 KiB.
const MEMO_PATHS: usize = 32;
const MEMO_PATH_LEN: usize = 128;
const NONE: u32 = u32::MAX;
/// Sources in a list past which a lookup goes through a hash map.
const LONG_LIST: usize = 32;

/// The deny and allow rule (`NONE` if none) that decided a path, and its
/// method counters.
#[derive(Debug)]
struct Memoized {
    deny: u32,
    allow: u32,
    counters: MethodCounters,
}

fn add(list: &mut Vec<u32>, i: u32) {
    if list.last() != Some(&i) {
        list.push(i);
    }
}

fn by_len(v: &mut Vec<(usize, Map<Vec<u32>>)>, key: &str, i: u32) {
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

impl Paths<Vec<u32>> {
    fn push(&mut self, i: u32, rule: &Rule) {
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
    }
}

impl<L> Paths<L> {
    /// The entries whose pattern matches `path`, but for the any-path one.
    fn matching<'s>(&'s self, path: &'s str) -> impl Iterator<Item = &'s L> + 's {
        // The `/Service/*` and `*/Method` entries of a canonical
        // `/Service/Method`.
        let (service, method) = match path.rfind('/') {
            Some(i) if i > 0 => (
                self.by_service.get(&path[..=i]),
                self.by_method.get(&path[i..]),
            ),
            _ => (None, None),
        };
        let prefix = self
            .prefix
            .iter()
            .filter_map(move |(len, map)| path.get(..*len).and_then(|k| map.get(k)));
        let suffix = self.suffix.iter().filter_map(move |(len, map)| {
            let start = path.len().checked_sub(*len)?;
            path.get(start..).and_then(|k| map.get(k))
        });
        self.exact
            .get(path)
            .into_iter()
            .chain(service)
            .chain(method)
            .chain(prefix)
            .chain(suffix)
    }

    fn map<M>(self, mut f: impl FnMut(L) -> M) -> Paths<M> {
        let mut map = |m: Map<L>| m.into_iter().map(|(k, v)| (k, f(v))).collect::<Map<M>>();
        let exact = map(self.exact);
        let by_service = map(self.by_service);
        let by_method = map(self.by_method);
        let prefix = self.prefix.into_iter().map(|(l, m)| (l, map(m))).collect();
        let suffix = self.suffix.into_iter().map(|(l, m)| (l, map(m))).collect();
        Paths {
            exact,
            by_service,
            by_method,
            prefix,
            suffix,
            any_path: f(self.any_path),
        }
    }
}

impl List {
    /// `rules`: rule numbers in file order.
    fn new(rules: &[u32], set: &[Rule], source_of: &[u32]) -> List {
        let headed = |i: u32| set[i as usize].has_headers();
        let headers: Box<[(u32, u32)]> = rules
            .iter()
            .filter(|&&i| headed(i))
            .map(|&i| (i, source_of[i as usize]))
            .collect();
        // By source, then rule: the first of each source is its first rule.
        let mut first: Vec<(u32, u32)> = rules
            .iter()
            .filter(|&&i| !headed(i))
            .map(|&i| (source_of[i as usize], i))
            .collect();
        first.sort_unstable();
        first.dedup_by_key(|e| e.0);
        let first_map =
            (first.len() > LONG_LIST).then(|| Box::new(first.iter().copied().collect()));
        List {
            first: first.into(),
            first_map,
            headers,
        }
    }

    /// Lowers `best` to this list's first rule that matches, for a peer whose
    /// sources are decided (`held`, sorted). Costs a lookup per source the
    /// peer holds, whatever the number of other callers' rules, and a walk
    /// of the header rules ahead of the match.
    fn first_held(
        &self,
        rules: &[Rule],
        held: &[u32],
        headers: &HeaderMap,
        best: &mut u32,
        by_headers: &mut bool,
    ) {
        if held.len() <= self.first.len() {
            for s in held {
                let rule = match &self.first_map {
                    Some(map) => map.get(s).copied(),
                    None => (self.first.binary_search_by_key(s, |e| e.0))
                        .ok()
                        .map(|k| self.first[k].1),
                };
                if let Some(i) = rule {
                    *best = (*best).min(i);
                }
            }
        } else {
            for &(s, i) in self.first.iter() {
                if i < *best && held.binary_search(&s).is_ok() {
                    *best = i;
                }
            }
        }
        for &(i, s) in self.headers.iter() {
            if i >= *best {
                break;
            }
            if held.binary_search(&s).is_ok() {
                *by_headers = true;
                if rules[i as usize].headers_match(headers) {
                    *best = i;
                    break;
                }
            }
        }
    }

    /// [`List::first_held`] with each rule's source checked as it comes.
    fn first_plain(
        &self,
        rules: &[Rule],
        headers: &HeaderMap,
        peer: &Peer,
        best: &mut u32,
        by_headers: &mut bool,
    ) {
        for &(_, i) in self.first.iter() {
            if i < *best && rules[i as usize].matches(headers, peer) {
                *best = i;
            }
        }
        for &(i, _) in self.headers.iter() {
            if i >= *best {
                break;
            }
            *by_headers = true;
            if rules[i as usize].matches(headers, peer) {
                *best = i;
                break;
            }
        }
    }
}

impl RuleSet {
    fn new(rules: Vec<Rule>) -> RuleSet {
        let mut set = RuleSet {
            rules,
            ..RuleSet::default()
        };
        set.index_sources();
        let mut paths = Paths::<Vec<u32>>::default();
        for (i, rule) in set.rules.iter().enumerate() {
            paths.push(i as u32, rule);
        }
        let candidates = set.candidates(&paths);
        // A path with candidates is never looked up in `exact` again.
        paths.exact.retain(|path, _| !candidates.contains_key(path));
        let paths = paths.map(|l| List::new(&l, &set.rules, &set.source_of));
        set.candidates = candidates;
        set.paths = paths;
        set
    }

    /// The paths the rules name exactly.
    fn named_paths(&self) -> impl Iterator<Item = &Box<str>> {
        self.candidates.keys().chain(self.paths.exact.keys())
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

    /// The per-path candidate lists. Bounded: a
    /// policy whose lists would grow past the budget falls back to probing the
    /// path indexes for the remaining paths.
    fn candidates(&self, paths: &Paths<Vec<u32>>) -> Map<List> {
        let budget = 4 * self.rules.len() + 65_536;
        let mut used = 0;
        let mut candidates = Map::default();
        for path in paths.exact.keys() {
            let mut c: Vec<u32> = paths.matching(path).flatten().copied().collect();
            c.sort_unstable();
            c.dedup();
            // Every candidate matches this path, so the list keeps only what
            // can be a first match: the header rules and each source's first
            // plain rule.
            let list = List::new(&c, &self.rules, &self.source_of);
            used += list.first.len() + list.headers.len();
            if used > budget {
                break;
            }
            candidates.insert(path.clone(), list);
        }
        candidates
    }

    /// The sources (by id, sorted) that hold for `peer`.
    fn held_sources(&self, peer: &Peer) -> Vec<u32> {
        let mut held = Vec::new();
        let rule = |s: u32| &self.rules[self.source_rule[s as usize] as usize];
        for &s in &self.any_principal {
            if rule(s).cred_matches(peer) {
                held.push(s);
            }
        }
        for &s in &self.wildcard_principal {
            if rule(s).source_matches(peer) {
                held.push(s);
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
                    held.push(s);
                }
            }
        }
        held.sort_unstable();
        held.dedup();
        held
    }

    /// The first rule, in file order, that matches (`NONE` if none), and
    /// whether a header condition took part in finding it. With `held`, the
    /// sources are already decided for this peer and only the request
    /// conditions remain.
    fn first_index(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: &Peer,
        held: Option<&[u32]>,
    ) -> (u32, bool) {
        let mut best = NONE;
        let mut by_headers = false;
        let mut visit = |l: &List| match held {
            Some(held) => l.first_held(&self.rules, held, headers, &mut best, &mut by_headers),
            None => l.first_plain(&self.rules, headers, peer, &mut best, &mut by_headers),
        };
        match self.candidates.get(path) {
            Some(c) => visit(c),
            None => self.paths.matching(path).for_each(&mut visit),
        }
        visit(&self.paths.any_path);
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
        let mut deny = Vec::new();
        let mut allow = Vec::new();
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
        let deny = RuleSet::new(deny);
        let allow = RuleSet::new(allow);
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
        for path in deny.named_paths().chain(allow.named_paths()) {
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
            deny: self.deny.held_sources(peer),
            allow: self.allow.held_sources(peer),
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

    /// Paths with a candidate list, deny and allow.
    #[cfg(test)]
    pub(super) fn candidate_lists(&self) -> (usize, usize) {
        (self.deny.candidates.len(), self.allow.candidates.len())
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
