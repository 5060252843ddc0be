//! `ipcgate cert inspect`: what a certificate says, and what this CA thinks of it.

use std::path::Path;

use serde::Serialize;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{Ca, CaError};
use crate::identity::hex;

/// Everything `inspect` reports.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub file: String,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub sha256: String,
    pub not_before: String,
    pub not_after: String,
    pub expired: bool,
    pub is_ca: bool,
    pub spiffe_id: Option<String>,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<String>,
    pub extended_key_usage: Vec<&'static str>,
    pub key: String,
    /// With `--ca-dir`: signed by that CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chains_to_ca: Option<bool>,
    /// With `--ca-dir`: listed in its revocations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
}

/// Inspects the first certificate in `file`.
///
/// # Errors
/// Unreadable or unparsable file, or a CA directory that cannot be loaded.
pub fn inspect(file: &Path, ca_dir: Option<&Path>) -> Result<Inspection, CaError> {
    let leaf = super::lifecycle::read_leaf(file)?;
    let (_, c) = X509Certificate::from_der(leaf.der.as_ref()).map_err(|e| CaError::BadFile {
        path: file.to_owned(),
        msg: e.to_string(),
    })?;
    let mut out = Inspection {
        file: file.display().to_string(),
        subject: leaf.subject.clone(),
        issuer: crate::identity::rfc4514(c.issuer()),
        serial: leaf.serial_hex.clone(),
        sha256: hex(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.der.as_ref()).as_ref(),
        ),
        not_before: c.validity().not_before.to_string(),
        not_after: c.validity().not_after.to_string(),
        expired: !c.validity().is_valid(),
        is_ca: c
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| b.value.ca),
        spiffe_id: leaf
            .names
            .spiffe
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .cloned(),
        uri_sans: Vec::new(),
        dns_sans: leaf.names.dns.clone(),
        ip_sans: leaf.names.ips.iter().map(|i| i.to_string()).collect(),
        extended_key_usage: Vec::new(),
        key: format!("{}", c.public_key().algorithm.algorithm),
        chains_to_ca: None,
        revoked: None,
    };
    if let Ok(Some(san)) = c.subject_alternative_name() {
        out.uri_sans = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect();
    }
    if let Ok(Some(eku)) = c.extended_key_usage() {
        let e = &eku.value;
        for (on, name) in [
            (e.client_auth, "clientAuth"),
            (e.server_auth, "serverAuth"),
            (e.any, "any"),
        ] {
            if on {
                out.extended_key_usage.push(name);
            }
        }
    }
    out.key = match out.key.as_str() {
        "1.2.840.10045.2.1" => "ECDSA".into(),
        "1.3.101.112" => "Ed25519".into(),
        "1.2.840.113549.1.1.1" => "RSA".into(),
        other => other.into(),
    };
    if let Some(dir) = ca_dir {
        let ca = Ca::load(dir)?;
        out.chains_to_ca = Some(ca.issued(&leaf.der));
        let state = super::lifecycle::load_state(dir)?;
        out.revoked = Some(state.revoked.iter().any(|r| r.serial == leaf.serial_hex));
    }
    Ok(out)
}
