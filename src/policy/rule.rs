//! One compiled rule: its source conditions (principals, and the ipcgate
//! uid/gid extension), its request conditions (paths, headers), and how it
//! explains itself.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use super::model::{self, RawRule};
use super::pattern::{check_path, check_stars, Pattern, Written};
use crate::identity::Peer;

/// A rule's source conditions, to share one source check among the rules
/// that have the same (see [`Rule::source_key`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct SourceKey {
    principals: Option<Vec<Box<str>>>,
    uids: Vec<u32>,
    gids: Vec<u32>,
}

#[derive(Debug)]
pub struct HeaderMatch {
    name: HeaderName,
    values: Vec<Written>,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    /// `None`: no `source.principals`, any client.
    principals: Option<Vec<Written>>,
    uids: Vec<u32>,
    gids: Vec<u32>,
    /// A deny rule: a uid/gid condition it cannot check (no peer credentials:
    /// TCP, named pipes) counts as met, so the rule fails closed.
    pub(super) deny: bool,
    /// Kept for explanations; matching goes through the policy's path index.
    pub(super) paths: Vec<Written>,
    headers: Vec<HeaderMatch>,
    /// Calls this rule decided (enforced policy only).
    pub(super) hits: Counter,
}

impl Rule {
    pub(super) fn matches(&self, headers: &HeaderMap, peer: &Peer) -> bool {
        self.source_matches(peer) && self.headers_match(headers)
    }

    /// Whether the rule looks at request headers, so that its verdict on a path
    /// can change from call to call.
    pub(super) fn has_headers(&self) -> bool {
        !self.headers.is_empty()
    }

    pub(super) fn headers_match(&self, headers: &HeaderMap) -> bool {
        self.headers.iter().all(|h| h.matches(headers))
    }

    /// The principal patterns, if the rule has any.
    pub(super) fn principals(&self) -> Option<&[Written]> {
        self.principals.as_deref()
    }

    /// What decides [`Rule::source_matches`], normalized: two rules with equal
    /// keys match exactly the same peers (principals are any-of, uids and gids
    /// are membership lists).
    pub(super) fn source_key(&self) -> SourceKey {
        let sorted = |v: &[u32]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.dedup();
            v
        };
        SourceKey {
            principals: self.principals.as_ref().map(|ps| {
                let mut t: Vec<Box<str>> = ps.iter().map(|p| p.text.as_str().into()).collect();
                t.sort_unstable();
                t.dedup();
                t
            }),
            uids: sorted(&self.uids),
            gids: sorted(&self.gids),
        }
    }

    /// A43: a principal matches a URI SAN, a DNS SAN or the subject (the empty
    /// principal means "no client certificate", which never holds here).
    /// Source fields are ANDed: principals, uids and gids must all hold.
    pub(super) fn source_matches(&self, peer: &Peer) -> bool {
        let principal_ok = match &self.principals {
            None => true,
            Some(ps) => ps.iter().any(|p| principal_hit(&p.pattern, peer).is_some()),
        };
        principal_ok && self.cred_matches(peer)
    }

    pub(super) fn cred_matches(&self, peer: &Peer) -> bool {
        let uid_ok = self.uids.is_empty()
            || peer
                .cred
                .as_ref()
                .and_then(|c| c.uid)
                .map_or(self.deny, |v| self.uids.contains(&v));
        uid_ok && (self.gids.is_empty() || self.gid_hit(peer).0)
    }

    /// Whether the peer is in one of `gids`, and the group that says so. The
    /// effective group or any supplementary one counts: a member of a denied
    /// group can make another group its effective one (`sg`) and keep the
    /// denied one. Unknown credentials or groups hold for a deny rule (fails
    /// closed) and not for an allow rule.
    fn gid_hit(&self, peer: &Peer) -> (bool, Option<u32>) {
        let Some(c) = peer.cred.as_ref() else {
            return (self.deny, None);
        };
        let Some(gid) = c.gid else {
            return (self.deny, None);
        };
        if self.gids.contains(&gid) {
            return (true, Some(gid));
        }
        match &c.groups {
            Some(groups) => match groups.iter().find(|g| self.gids.contains(g)) {
                Some(&g) => (true, Some(g)),
                None => (false, None),
            },
            None => (self.deny, None),
        }
    }

    /// Why this rule does or does not match one call, condition by condition.
    pub(super) fn explain(&self, path: &str, headers: &HeaderMap, peer: &Peer) -> RuleExplanation {
        let mut conditions = Vec::new();
        match &self.principals {
            None => conditions.push(Condition::met(
                "principals",
                "any client (no principals)".into(),
            )),
            Some(ps) => {
                let hit = ps
                    .iter()
                    .find_map(|p| principal_hit(&p.pattern, peer).map(|(what, v)| (p, what, v)));
                conditions.push(match hit {
                    Some((p, what, v)) => {
                        Condition::met("principals", format!("{:?} matches {what} {v:?}", p.text))
                    }
                    None => Condition::unmet(
                        "principals",
                        format!(
                            "none of {:?} matches URI SANs {:?}, DNS SANs {:?} or subject {:?}",
                            texts(ps),
                            peer.uris,
                            peer.dns,
                            peer.subject
                        ),
                    ),
                });
            }
        }
        if !self.uids.is_empty() {
            let list = &self.uids;
            conditions.push(match peer.cred.as_ref().and_then(|c| c.uid) {
                Some(v) if list.contains(&v) => {
                    Condition::met("uids", format!("peer {v} is in {list:?}"))
                }
                Some(v) => Condition::unmet("uids", format!("peer {v} is not in {list:?}")),
                None if self.deny => Condition::met(
                    "uids",
                    "no socket peer credentials: a deny rule applies (fails closed)".into(),
                ),
                None => Condition::unmet("uids", "no socket peer credentials".into()),
            });
        }
        if !self.gids.is_empty() {
            let list = &self.gids;
            let cred = peer.cred.as_ref();
            let gid = cred.and_then(|c| c.gid);
            let groups = cred.and_then(|c| c.groups.as_ref());
            conditions.push(match (self.gid_hit(peer), gid) {
                ((true, Some(g)), _) => {
                    Condition::met("gids", format!("peer group {g} is in {list:?}"))
                }
                ((true, None), _) => Condition::met(
                    "gids",
                    "the peer's groups are unknown: a deny rule applies (fails closed)".into(),
                ),
                ((false, _), None) => Condition::unmet("gids", "no socket peer credentials".into()),
                ((false, _), Some(g)) => Condition::unmet(
                    "gids",
                    match groups {
                        Some(gs) => format!(
                            "neither peer group {g} nor supplementary groups {gs:?} is in {list:?}"
                        ),
                        None => format!(
                            "peer group {g} is not in {list:?} (supplementary groups unknown)"
                        ),
                    },
                ),
            });
        }
        if self.paths.is_empty() {
            conditions.push(Condition::met("paths", "any method (no paths)".into()));
        } else {
            conditions.push(
                match self
                    .paths
                    .iter()
                    .find(|p| p.pattern.matches(path.as_bytes()))
                {
                    Some(p) => Condition::met("paths", format!("{path} matches {:?}", p.text)),
                    None => Condition::unmet(
                        "paths",
                        format!("{path} matches none of {:?}", texts(&self.paths)),
                    ),
                },
            );
        }
        for h in &self.headers {
            let field = format!("headers[{}]", h.name);
            let value = h.joined(headers);
            conditions.push(match value {
                None => Condition::unmet_owned(field, "header absent".into()),
                Some(v) => {
                    let shown = String::from_utf8_lossy(&v).into_owned();
                    match h.values.iter().find(|p| p.pattern.matches(&v)) {
                        Some(p) => {
                            Condition::met_owned(field, format!("{shown:?} matches {:?}", p.text))
                        }
                        None => Condition::unmet_owned(
                            field,
                            format!("{shown:?} matches none of {:?}", texts(&h.values)),
                        ),
                    }
                }
            });
        }
        RuleExplanation {
            name: self.name.to_string(),
            matched: conditions.iter().all(|c| c.met),
            conditions,
        }
    }

    /// One-line summary for `policy check`.
    pub fn summary(&self) -> String {
        let principals = match &self.principals {
            None => "any client".to_owned(),
            Some(ps) => format!("principals {:?}", texts(ps)),
        };
        let mut s = format!("{}: {principals}", self.name);
        if !self.uids.is_empty() {
            s += &format!(", uids {:?}", self.uids);
        }
        if !self.gids.is_empty() {
            s += &format!(", gids {:?}", self.gids);
        }
        if self.paths.is_empty() {
            s += ", any method";
        } else {
            s += &format!(", paths {:?}", texts(&self.paths));
        }
        for h in &self.headers {
            s += &format!(", header {} in {:?}", h.name, texts(&h.values));
        }
        s
    }
}

fn texts(ws: &[Written]) -> Vec<&str> {
    ws.iter().map(|w| w.text.as_str()).collect()
}

/// Which identity value a principal pattern matches, in A43's order.
fn principal_hit<'p>(p: &Pattern, peer: &'p Peer) -> Option<(&'static str, &'p str)> {
    if matches!(p, Pattern::Exact(e) if e.is_empty()) {
        return None;
    }
    if let Some(u) = peer.uris.iter().find(|u| p.matches(u.as_bytes())) {
        return Some(("URI SAN", u));
    }
    if let Some(d) = peer.dns.iter().find(|d| p.matches(d.as_bytes())) {
        return Some(("DNS SAN", d));
    }
    p.matches(peer.subject.as_bytes())
        .then_some(("subject", peer.subject.as_str()))
}

impl HeaderMatch {
    /// A43: a multi-valued header is matched as its values joined with `,`.
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut all = headers.get_all(&self.name).iter();
        let Some(first) = all.next() else {
            return false;
        };
        match all.next() {
            None => self
                .values
                .iter()
                .any(|p| p.pattern.matches(first.as_bytes())),
            Some(_) => self
                .joined(headers)
                .is_some_and(|j| self.values.iter().any(|p| p.pattern.matches(&j))),
        }
    }

    fn joined(&self, headers: &HeaderMap) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for v in headers.get_all(&self.name) {
            match &mut out {
                None => out = Some(v.as_bytes().to_vec()),
                Some(o) => {
                    o.push(b',');
                    o.extend_from_slice(v.as_bytes());
                }
            }
        }
        out
    }
}

/// One condition of a rule and whether this call meets it.
#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    pub field: String,
    pub met: bool,
    pub why: String,
}

impl Condition {
    fn met(field: &str, why: String) -> Condition {
        Condition {
            field: field.into(),
            met: true,
            why,
        }
    }
    fn unmet(field: &str, why: String) -> Condition {
        Condition {
            field: field.into(),
            met: false,
            why,
        }
    }
    fn met_owned(field: String, why: String) -> Condition {
        Condition {
            field,
            met: true,
            why,
        }
    }
    fn unmet_owned(field: String, why: String) -> Condition {
        Condition {
            field,
            met: false,
            why,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleExplanation {
    pub name: String,
    pub matched: bool,
    pub conditions: Vec<Condition>,
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

/// Validates and compiles one rule; errors are (field path, message).
pub(super) fn compile(r: &RawRule, at: &str, hits: Counter) -> Result<Rule, (String, String)> {
    if r.name.is_empty() {
        return Err((
            format!("{at}.name"),
            "must not be empty (every rule needs a name; denials report it)".into(),
        ));
    }
    let (paths, raw_headers): (&[String], &[model::RawHeader]) = match &r.request {
        Some(q) => (&q.paths, &q.headers),
        None => (&[], &[]),
    };
    for (i, p) in paths.iter().enumerate() {
        let field = format!("{at}.request.paths[{i}]");
        check_stars(p).map_err(|m| (field.clone(), m))?;
        check_path(p).map_err(|m| (field, m))?;
    }
    let (mut principals, mut uids, mut gids) = (None, Vec::new(), Vec::new());
    if let Some(src) = &r.source {
        for (i, p) in src.principals.iter().enumerate() {
            check_stars(p).map_err(|m| (format!("{at}.source.principals[{i}]"), m))?;
        }
        if !src.principals.is_empty() {
            principals = Some(src.principals.iter().map(|p| Written::new(p)).collect());
        }
        uids.clone_from(&src.uids);
        gids.clone_from(&src.gids);
    }
    let mut headers = Vec::with_capacity(raw_headers.len());
    for (i, h) in raw_headers.iter().enumerate() {
        let field = format!("{at}.request.headers[{i}]");
        headers.push(compile_header(h, &field)?);
    }
    Ok(Rule {
        name: r.name.as_str().into(),
        principals,
        uids,
        gids,
        deny: false,
        paths: paths.iter().map(|p| Written::new(p)).collect(),
        headers,
        hits,
    })
}

fn compile_header(h: &model::RawHeader, field: &str) -> Result<HeaderMatch, (String, String)> {
    let key = h.key.to_ascii_lowercase();
    let refuse = |why: &str| {
        Err((
            format!("{field}.key"),
            format!("{:?} is not allowed ({why})", h.key),
        ))
    };
    if key.starts_with(':') {
        return refuse("pseudo-headers cannot be matched; use request.paths");
    }
    if key.starts_with("grpc-") {
        return refuse("grpc-* headers belong to the transport");
    }
    if key == crate::proxy::XFCC.as_str() || key == crate::proxy::PEER_CRED.as_str() {
        return refuse(
            "the gateway sets it after authorization; match the client with source.principals",
        );
    }
    if FORBIDDEN_HEADERS.contains(&key.as_str()) {
        return refuse("host and hop-by-hop headers do not reach the service");
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
    Ok(HeaderMatch {
        name,
        values: h.values.iter().map(|v| Written::new(v)).collect(),
    })
}
