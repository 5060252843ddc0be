//! A43 policies compiled for lookup: rules are indexed by their path patterns
//! (exact paths in a hash map, prefixes and suffixes in one hash map per distinct
//! length), so a decision touches only the rules that can match the path, and
//! allocates nothing.

use std::collections::HashMap;
use std::path::Path;

use http::{HeaderMap, HeaderName};

use super::model::{self, PolicyError, RawRule};
use crate::identity::{hex, Peer};

/// One A43 string matcher: `*` (any non-empty value), `prefix*`, `*suffix`, exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Present,
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    Exact(Box<[u8]>),
}

impl Pattern {
    /// The A43 rule as gRPC's translators apply it: a leading or trailing `*` is the
    /// wildcard, a `*` anywhere else is a literal character.
    pub fn parse(s: &str) -> Pattern {
        if s == "*" {
            Pattern::Present
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.as_bytes().into())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.as_bytes().into())
        } else {
            Pattern::Exact(s.as_bytes().into())
        }
    }

    pub fn matches(&self, v: &[u8]) -> bool {
        match self {
            Pattern::Present => !v.is_empty(),
            Pattern::Prefix(p) => v.starts_with(p),
            Pattern::Suffix(p) => v.ends_with(p),
            Pattern::Exact(p) => v == &p[..],
        }
    }
}

#[derive(Debug)]
struct HeaderMatch {
    name: HeaderName,
    values: Vec<Pattern>,
}

#[derive(Debug)]
struct Rule {
    name: String,
    /// `None`: no `source.principals`, any client.
    principals: Option<Vec<Pattern>>,
    headers: Vec<HeaderMatch>,
}

impl Rule {
    fn matches(&self, headers: &HeaderMap, peer: &Peer) -> bool {
        self.source_matches(peer) && self.headers.iter().all(|h| h.matches(headers))
    }

    /// A43: a principal matches a URI SAN, a DNS SAN or the subject. The empty
    /// principal stands for "no client certificate", which never holds here.
    fn source_matches(&self, peer: &Peer) -> bool {
        let Some(principals) = &self.principals else {
            return true;
        };
        principals.iter().any(|p| {
            if matches!(p, Pattern::Exact(e) if e.is_empty()) {
                return false;
            }
            peer.uris.iter().any(|u| p.matches(u.as_bytes()))
                || peer.dns.iter().any(|d| p.matches(d.as_bytes()))
                || p.matches(peer.subject.as_bytes())
        })
    }
}

impl HeaderMatch {
    /// A43: a multi-valued header is matched as its values joined with `,`.
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut all = headers.get_all(&self.name).iter();
        let Some(first) = all.next() else {
            return false;
        };
        match all.next() {
            None => self.values.iter().any(|p| p.matches(first.as_bytes())),
            Some(second) => {
                let mut joined = first.as_bytes().to_vec();
                for v in std::iter::once(second).chain(all) {
                    joined.push(b',');
                    joined.extend_from_slice(v.as_bytes());
                }
                self.values.iter().any(|p| p.matches(&joined))
            }
        }
    }
}

/// Rule indexes by affix, grouped by affix length: a lookup slices the path once
/// per distinct length and does one hash probe.
type ByLen = Vec<(usize, HashMap<Box<str>, Vec<u32>>)>;

/// Rules of one kind (deny or allow) with their path index.
#[derive(Debug, Default)]
struct RuleSet {
    rules: Vec<Rule>,
    exact: HashMap<Box<str>, Vec<u32>>,
    prefix: ByLen,
    suffix: ByLen,
    any_path: Vec<u32>,
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
            v.push((key.len(), HashMap::new()));
            v.len() - 1
        }
    };
    add(v[pos].1.entry(key.into()).or_default(), i);
}

impl RuleSet {
    fn push(&mut self, rule: Rule, paths: &[String]) {
        let i = self.rules.len() as u32;
        self.rules.push(rule);
        if paths.is_empty() {
            add(&mut self.any_path, i);
        }
        for p in paths {
            match Pattern::parse(p) {
                Pattern::Present => add(&mut self.any_path, i),
                Pattern::Prefix(_) => by_len(&mut self.prefix, &p[..p.len() - 1], i),
                Pattern::Suffix(_) => by_len(&mut self.suffix, &p[1..], i),
                Pattern::Exact(_) => add(self.exact.entry(p.as_str().into()).or_default(), i),
            }
        }
    }

    /// The first rule, in file order, that matches.
    fn first_match(&self, path: &str, headers: &HeaderMap, peer: &Peer) -> Option<&Rule> {
        let mut best = u32::MAX;
        let mut scan = |list: &[u32]| {
            for &i in list {
                if i >= best {
                    break;
                }
                if self.rules[i as usize].matches(headers, peer) {
                    best = i;
                    break;
                }
            }
        };
        if let Some(l) = self.exact.get(path) {
            scan(l);
        }
        for (len, map) in &self.prefix {
            if let Some(l) = path.get(..*len).and_then(|k| map.get(k)) {
                scan(l);
            }
        }
        for (len, map) in &self.suffix {
            if let Some(l) = path
                .len()
                .checked_sub(*len)
                .and_then(|s| path.get(s..))
                .and_then(|k| map.get(k))
            {
                scan(l);
            }
        }
        scan(&self.any_path);
        self.rules.get(best as usize)
    }
}

/// What the policy decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    Allow {
        rule: &'a str,
    },
    /// `rule` is the deny rule that matched, or `None` when no allow rule did.
    Deny {
        rule: Option<&'a str>,
    },
}

/// A compiled, immutable policy.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    /// Short content hash of the file, to tell versions apart in logs.
    pub version: String,
    deny: RuleSet,
    allow: RuleSet,
}

impl Policy {
    /// Reads, validates and compiles a policy file.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file, the field and the fix.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: path.display().to_string(),
            field: "(file)".into(),
            location: None,
            message: format!("cannot read policy: {e}"),
        })?;
        Self::from_json(&text, path)
    }

    /// Validates and compiles policy JSON as if read from `file`.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file, the field and the fix.
    pub fn from_json(text: &str, file: &Path) -> Result<Policy, PolicyError> {
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
        let mut deny = RuleSet::default();
        let mut allow = RuleSet::default();
        for (kind, rules, set) in [
            ("deny_rules", &raw.deny_rules, &mut deny),
            ("allow_rules", &raw.allow_rules, &mut allow),
        ] {
            for (i, r) in rules.iter().enumerate() {
                let (rule, paths) =
                    compile_rule(r, &format!("{kind}[{i}]")).map_err(|(f, m)| err(f, m))?;
                set.push(rule, paths);
            }
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        Ok(Policy {
            name: raw.name,
            version: hex(&digest.as_ref()[..6]),
            deny,
            allow,
        })
    }

    /// Deny rules first, then allow rules; no match is a denial (gRFC A43).
    pub fn evaluate(&self, path: &str, headers: &HeaderMap, peer: &Peer) -> Decision<'_> {
        if let Some(r) = self.deny.first_match(path, headers, peer) {
            return Decision::Deny {
                rule: Some(&r.name),
            };
        }
        match self.allow.first_match(path, headers, peer) {
            Some(r) => Decision::Allow { rule: &r.name },
            None => Decision::Deny { rule: None },
        }
    }

    /// Number of (deny, allow) rules.
    pub fn rule_counts(&self) -> (usize, usize) {
        (self.deny.rules.len(), self.allow.rules.len())
    }
}

/// Headers a rule may not match on (A43): pseudo-headers and `grpc-*` are the
/// transport's, `host` and hop-by-hop headers are not end-to-end.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn compile_rule<'a>(r: &'a RawRule, at: &str) -> Result<(Rule, &'a [String]), (String, String)> {
    if r.name.is_empty() {
        return Err((
            format!("{at}.name"),
            "must not be empty (every rule needs a name; denials report it)".into(),
        ));
    }
    let principals = r
        .source
        .as_ref()
        .filter(|s| !s.principals.is_empty())
        .map(|s| s.principals.iter().map(|p| Pattern::parse(p)).collect());
    let (paths, raw_headers): (&[String], &[model::RawHeader]) = match &r.request {
        Some(q) => (&q.paths, &q.headers),
        None => (&[], &[]),
    };
    for (i, p) in paths.iter().enumerate() {
        let field = format!("{at}.request.paths[{i}]");
        check_stars(p).map_err(|m| (field.clone(), m))?;
        check_path(p).map_err(|m| (field, m))?;
    }
    if let Some(src) = &r.source {
        for (i, p) in src.principals.iter().enumerate() {
            check_stars(p).map_err(|m| (format!("{at}.source.principals[{i}]"), m))?;
        }
    }
    let mut headers = Vec::with_capacity(raw_headers.len());
    for (i, h) in raw_headers.iter().enumerate() {
        let field = format!("{at}.request.headers[{i}]");
        let key = h.key.to_ascii_lowercase();
        if key.starts_with(':') {
            return Err((
                format!("{field}.key"),
                format!(
                    "{:?} is not allowed (pseudo-headers cannot be matched; use request.paths)",
                    h.key
                ),
            ));
        }
        if key.starts_with("grpc-") {
            return Err((
                format!("{field}.key"),
                format!(
                    "{:?} is not allowed (grpc-* headers belong to the transport)",
                    h.key
                ),
            ));
        }
        if key == crate::proxy::XFCC.as_str() || key == crate::proxy::PEER_CRED.as_str() {
            return Err((format!("{field}.key"), format!("{:?} is not allowed (the gateway sets it after authorization; match the client with source.principals)", h.key)));
        }
        if FORBIDDEN_HEADERS.contains(&key.as_str()) {
            return Err((
                format!("{field}.key"),
                format!(
                    "{:?} is not allowed (host and hop-by-hop headers do not reach the service)",
                    h.key
                ),
            ));
        }
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
            (
                format!("{field}.key"),
                format!("{:?} is not a valid header name", h.key),
            )
        })?;
        if h.values.is_empty() {
            return Err((
                format!("{field}.values"),
                "must list at least one value (use [\"*\"] to require the header with any value)"
                    .into(),
            ));
        }
        for (j, v) in h.values.iter().enumerate() {
            check_stars(v).map_err(|m| (format!("{field}.values[{j}]"), m))?;
        }
        headers.push(HeaderMatch {
            name,
            values: h.values.iter().map(|v| Pattern::parse(v)).collect(),
        });
    }
    Ok((
        Rule {
            name: r.name.clone(),
            principals,
            headers,
        },
        paths,
    ))
}

/// A43 wildcards are one leading `*` (suffix match) or one trailing `*` (prefix
/// match). gRPC's translators read any other `*` as a literal character, so such
/// a pattern almost never matches — and in a deny rule that fails open.
fn check_stars(p: &str) -> Result<(), String> {
    let stars = p.matches('*').count();
    if stars > 1 || (stars == 1 && !p.starts_with('*') && !p.ends_with('*')) {
        return Err(format!(
            "{p:?} has '*' inside; A43 wildcards are only a leading '*' (suffix match) or a trailing '*' (prefix match), so this would match a literal '*' and almost certainly never match (write e.g. \"/pkg.Service/*\" or \"*.example.org\")"
        ));
    }
    Ok(())
}

/// A path pattern must be able to match a canonical `/Service/Method` path.
fn check_path(p: &str) -> Result<(), String> {
    match Pattern::parse(p) {
        Pattern::Present | Pattern::Suffix(_) => Ok(()),
        Pattern::Prefix(_) if p.starts_with('/') => Ok(()),
        Pattern::Exact(_) if crate::path::split(p).is_ok() => Ok(()),
        _ => Err(format!(
            "{p:?} can never match: request paths are \"/package.Service/Method\" (write the full method, \"/package.Service/*\" for a service, or \"*/Method\")"
        )),
    }
}
