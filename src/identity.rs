//! Who is calling: the verified client certificate and the socket peer's account,
//! parsed once per connection so that per-request work is only lookups.

use std::fmt::Write as _;

use http::HeaderValue;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The socket peer's credentials from `SO_PEERCRED` and `SO_PEERGROUPS`, taken
/// at accept time. A pid may be reused once that process exits: treat it as a
/// hint, uid/gid as facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCred {
    /// Unix only; a named pipe's client has no uid.
    pub uid: Option<u32>,
    /// The effective group.
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    /// The supplementary groups; `None` where the system cannot say (a named
    /// pipe, a Unix other than Linux). A process picks its effective group
    /// among them (`sg`, `newgrp`), so a `gids` rule is held against all of
    /// them, and a deny rule with `gids` applies when they are unknown.
    pub groups: Option<Vec<u32>>,
}

/// The identity of one client connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The first URI SAN with the `spiffe://` scheme.
    pub spiffe_id: Option<String>,
    /// All URI SANs, in certificate order.
    pub uris: Vec<String>,
    /// All DNS SANs, in certificate order.
    pub dns: Vec<String>,
    /// Subject in RFC 4514 form, most specific first (`CN=alice,O=Example`).
    pub subject: String,
    /// The subject's (first) common name.
    pub cn: Option<String>,
    /// SHA-256 of the leaf certificate's DER.
    pub sha256: [u8; 32],
    /// The leaf's notAfter (the server lowers it to an earlier intermediate's,
    /// `tls::chain_not_after`): the connection must not outlive it.
    pub not_after: std::time::SystemTime,
    pub cred: Option<PeerCred>,
    xfcc: HeaderValue,
    cred_header: Option<HeaderValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the client presented no certificate")]
    NoCertificate,
    #[error("the client certificate cannot be parsed: {0}")]
    Parse(String),
    /// An X509-SVID carries one SPIFFE ID. With two, a principal could match
    /// the second while the audit log and XFCC name the first.
    #[error("the client certificate carries {0} SPIFFE IDs (an X509-SVID has exactly one)")]
    SpiffeIds(usize),
}

impl Peer {
    /// Builds the identity from the verified chain (leaf first). `by` is the
    /// gateway's own URI SAN, named as `By=` in the forwarded XFCC header.
    ///
    /// # Errors
    /// No certificate, or a leaf x509-parser cannot read (rustls accepted it, so
    /// this is rare and refused rather than guessed at), or one with more than
    /// one SPIFFE ID.
    pub fn new(
        chain: &[CertificateDer<'_>],
        cred: Option<PeerCred>,
        by: Option<&str>,
    ) -> Result<Peer, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let mut uris = Vec::new();
        let mut dns = Vec::new();
        // An unreadable SAN extension is refused, not skipped: skipping would
        // present a certificate with names as one without, and a deny rule on
        // those names would then not match.
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Parse(format!("subjectAltName: {e}")))?;
        if let Some(san) = san {
            // x509-parser stops at the first entry it cannot read and returns the
            // ones before it, so count the raw entries too.
            if Some(san.value.general_names.len()) != raw_san_entries(&cert) {
                return Err(IdentityError::Parse(
                    "subjectAltName has entries that cannot be read".into(),
                ));
            }
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                    GeneralName::Invalid(tag, _) => {
                        return Err(IdentityError::Parse(format!(
                            "subjectAltName entry with tag {tag} cannot be read"
                        )))
                    }
                    _ => {}
                }
            }
        }
        let subject = rfc4514(cert.subject());
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        // The scheme's case does not matter (RFC 3986): `SPIFFE://td/admin`
        // is a second SPIFFE ID too.
        let mut ids = uris.iter().filter(|u| {
            u.get(..9)
                .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
        });
        let spiffe_id = ids.next().cloned();
        let more = ids.count();
        if more > 0 {
            return Err(IdentityError::SpiffeIds(more + 1));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());

        let not_after = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        let mut peer = Peer {
            not_after,
            spiffe_id,
            uris,
            dns,
            subject,
            cn,
            sha256,
            cred,
            xfcc: HeaderValue::from_static(""),
            cred_header: None,
        };
        peer.xfcc = peer.build_xfcc(by);
        peer.cred_header = peer.cred.as_ref().and_then(|c| {
            let mut parts = Vec::with_capacity(3);
            if let Some(uid) = c.uid {
                parts.push(format!("uid={uid}"));
            }
            if let Some(gid) = c.gid {
                parts.push(format!("gid={gid}"));
            }
            if let Some(pid) = c.pid {
                parts.push(format!("pid={pid}"));
            }
            HeaderValue::from_str(&parts.join(";"))
                .ok()
                .filter(|_| !parts.is_empty())
        });
        Ok(peer)
    }

    /// Lowercase hex SHA-256 of the leaf certificate.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// The name used in logs: SPIFFE ID, else first URI, else first DNS name, else
    /// the subject.
    pub fn principal(&self) -> &str {
        self.spiffe_id
            .as_deref()
            .or(self.uris.first().map(String::as_str))
            .or(self.dns.first().map(String::as_str))
            .unwrap_or(&self.subject)
    }

    /// The `x-forwarded-client-cert` value for this connection (computed once).
    pub fn xfcc(&self) -> &HeaderValue {
        &self.xfcc
    }

    /// The `x-ipcgate-peer` value (`uid=..;gid=..;pid=..`) when the socket gave
    /// credentials.
    pub fn cred_header(&self) -> Option<&HeaderValue> {
        self.cred_header.as_ref()
    }

    /// Envoy's XFCC element: `By=..;Hash=..;Subject="..";URI=..;DNS=..`.
    fn build_xfcc(&self, by: Option<&str>) -> HeaderValue {
        let mut s = String::with_capacity(256);
        if let Some(by) = by {
            push_pair(&mut s, "By", by);
        }
        push_pair(&mut s, "Hash", &self.sha256_hex());
        s.push_str(";Subject=");
        push_quoted(&mut s, &self.subject);
        for u in &self.uris {
            push_pair(&mut s, "URI", u);
        }
        for d in &self.dns {
            push_pair(&mut s, "DNS", d);
        }
        // Every byte that could end a header was escaped above, so this holds; a
        // failure would drop the identity rather than forward a wrong one.
        HeaderValue::from_bytes(s.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The number of GeneralName entries in the SAN extension's DER.
fn raw_san_entries(cert: &X509Certificate<'_>) -> Option<usize> {
    use x509_parser::der_parser::ber::BerObjectContent;
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME)?;
    let (rest, obj) = x509_parser::der_parser::der::parse_der(ext.value).ok()?;
    match obj.content {
        BerObjectContent::Sequence(items) if rest.is_empty() => Some(items.len()),
        _ => None,
    }
}

fn push_pair(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(';');
    }
    out.push_str(key);
    out.push('=');
    // A `\` too: some XFCC parsers read it as an escape outside quotes, and
    // quoted it can only be read one way.
    if value.contains([',', ';', '=', '"', ' ', '\\']) || value.bytes().any(is_ctl) {
        push_quoted(out, value);
    } else {
        out.push_str(value);
    }
}

/// A quoted XFCC value: `"` and `\` escaped, control bytes as `\xHH` so the header
/// can never be split or ended early by certificate content.
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// RFC 4514 string form of a name as Go's `pkix.Name.String()` prints it (what
/// grpc-go matches A43 principals against): RDNs in reverse order, `+` within an
/// RDN, Go's attribute names, any other attribute as `OID=#<DER hex>`.
pub fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type().to_id_string();
            let short = match oid.as_str() {
                "2.5.4.3" => Some("CN"),
                "2.5.4.5" => Some("SERIALNUMBER"),
                "2.5.4.6" => Some("C"),
                "2.5.4.7" => Some("L"),
                "2.5.4.8" => Some("ST"),
                "2.5.4.9" => Some("STREET"),
                "2.5.4.10" => Some("O"),
                "2.5.4.11" => Some("OU"),
                "2.5.4.17" => Some("POSTALCODE"),
                _ => None,
            };
            match (short, atv.as_str()) {
                (Some(k), Ok(v)) => {
                    out.push_str(k);
                    out.push('=');
                    escape_value(&mut out, v);
                }
                _ => {
                    out.push_str(&oid);
                    out.push_str("=#");
                    out.push_str(&hex(&der_of(atv.attr_value())));
                }
            }
        }
    }
    out
}

/// The DER encoding (tag, length, content) of a primitive attribute value.
fn der_of(v: &x509_parser::der_parser::asn1_rs::Any<'_>) -> Vec<u8> {
    let data = v.data;
    let mut out = Vec::with_capacity(data.len() + 4);
    out.push(v.tag().0 as u8);
    match data.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n <= 0xff => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(data);
    out
}

fn escape_value(out: &mut String, v: &str) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if (c as u32) < 0x20 || c as u32 == 0x7f {
            let _ = write!(out, "\\{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests;
