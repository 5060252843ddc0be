//! The A43 string matcher and the load-time checks that keep a pattern from
//! silently never matching.

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

/// A pattern as written in the file, kept for `policy explain` and summaries.
#[derive(Debug, Clone)]
pub struct Written {
    pub pattern: Pattern,
    pub text: String,
}

impl Written {
    pub fn new(text: &str) -> Written {
        Written {
            pattern: Pattern::parse(text),
            text: text.to_owned(),
        }
    }
}

/// A43 wildcards are one leading `*` (suffix match) or one trailing `*` (prefix
/// match). gRPC's translators read any other `*` as a literal character, so such
/// a pattern almost never matches — and in a deny rule that fails open.
pub fn check_stars(p: &str) -> Result<(), String> {
    let stars = p.matches('*').count();
    if stars > 1 || (stars == 1 && !p.starts_with('*') && !p.ends_with('*')) {
        return Err(format!(
            "{p:?} has '*' inside; A43 wildcards are only a leading '*' (suffix match) or a trailing '*' (prefix match), so this would match a literal '*' and almost certainly never match (write e.g. \"/pkg.Service/*\" or \"*.example.org\")"
        ));
    }
    Ok(())
}

/// A path pattern must be able to match a canonical `/Service/Method` path
/// (the only kind that reaches the policy): in a deny rule, one that cannot
/// fails open. A prefix or suffix can if the path made by filling its
/// wildcard with plain characters is canonical, since filling it any other
/// way only adds what a canonical path may not have.
pub fn check_path(p: &str) -> Result<(), String> {
    let canonical = |s: &str| crate::path::split(s).is_ok();
    let ok = match Pattern::parse(p) {
        Pattern::Present => true,
        Pattern::Exact(_) => canonical(p),
        Pattern::Prefix(pre) => {
            let pre = String::from_utf8_lossy(&pre);
            match pre.matches('/').count() {
                1 => canonical(&format!("{pre}x/x")),
                2 => canonical(&format!("{pre}x")),
                _ => false,
            }
        }
        Pattern::Suffix(suf) => {
            let suf = String::from_utf8_lossy(&suf);
            match suf.matches('/').count() {
                0 => canonical(&format!("/x/x{suf}")),
                1 => canonical(&format!("/x{suf}")),
                2 => canonical(&suf),
                _ => false,
            }
        }
    };
    if ok {
        return Ok(());
    }
    Err(format!(
        "{p:?} can never match: request paths are \"/package.Service/Method\", two segments of letters, digits, '_', '-' and '.' (no '..', '%', '?', '#' or other punctuation; write the full method, \"/package.Service/*\" for a service, or \"*/Method\")"
    ))
}
