//! The gRFC A43 policy document, parsed strictly.

use std::path::Path;

use serde::Deserialize;

/// A policy problem: the file, the field path inside it, what is wrong and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}{}: {message}", location.map(|(l, c)| format!(" (line {l}, column {c})")).unwrap_or_default())]
pub struct PolicyError {
    pub file: String,
    /// e.g. `allow_rules[2].request.headers[0].key`
    pub field: String,
    pub location: Option<(usize, usize)>,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub name: String,
    #[serde(default)]
    pub deny_rules: Vec<RawRule>,
    pub allow_rules: Vec<RawRule>,
    #[serde(default)]
    pub audit_logging_options: Option<RawAuditOptions>,
}

/// gRFC A59 audit options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuditOptions {
    #[serde(default)]
    pub audit_condition: AuditCondition,
    #[serde(default)]
    pub audit_loggers: Vec<RawAuditLogger>,
}

/// When to audit (A59); DENY and ALLOW are the final decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditCondition {
    #[default]
    None,
    OnDeny,
    OnAllow,
    OnDenyAndAllow,
}

impl AuditCondition {
    pub fn applies(self, allowed: bool) -> bool {
        match self {
            AuditCondition::None => false,
            AuditCondition::OnDeny => !allowed,
            AuditCondition::OnAllow => allowed,
            AuditCondition::OnDenyAndAllow => true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuditLogger {
    pub name: String,
    #[serde(default)]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub is_optional: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    #[serde(default)]
    pub source: Option<RawSource>,
    #[serde(default)]
    pub request: Option<RawRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    #[serde(default)]
    pub principals: Vec<String>,
    /// ipcgate extension: the socket peer's uid (SO_PEERCRED) must be one of these.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// ipcgate extension: the socket peer's gid must be one of these.
    #[serde(default)]
    pub gids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub headers: Vec<RawHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeader {
    pub key: String,
    pub values: Vec<String>,
}

/// Parses policy JSON; `file` names it in errors.
///
/// # Errors
/// [`PolicyError`] with the JSON path of the offending field and its line.
pub fn parse(text: &str, file: &Path) -> Result<RawPolicy, PolicyError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        // serde_json appends " at line L column C"; we report it separately.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        if message.starts_with("unknown field") {
            message.push_str(" (gRFC A43 policies have: name, deny_rules, allow_rules, audit_logging_options; a rule has name, source.principals, source.uids, source.gids, request.paths, request.headers[].key/values)");
        }
        PolicyError {
            file: file.display().to_string(),
            field: if field == "." { "(top level)".into() } else { field },
            location: Some((inner.line(), inner.column())),
            message,
        }
    })
}
