use rcgen::{CertificateParams, DnType, KeyPair};

use super::*;

fn cert_with_subject(attrs: &[(DnType, &str)]) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for (t, v) in attrs {
        params.distinguished_name.push(t.clone(), *v);
    }
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

#[test]
fn subject_is_rfc4514_most_specific_first() {
    let der = cert_with_subject(&[
        (DnType::CountryName, "DE"),
        (DnType::OrganizationName, "Example"),
        (DnType::CommonName, "carol"),
    ]);
    let p = Peer::new(&[der], None, None).unwrap();
    assert_eq!(p.subject, "CN=carol,O=Example,C=DE");
    assert_eq!(p.cn.as_deref(), Some("carol"));
    assert_eq!(p.dns, vec!["a.test"]);
    assert_eq!(p.principal(), "a.test");
}

/// A `\` in a SAN is quoted and escaped: a parser that reads `\` as an
/// escape outside quotes cannot read the value another way.
#[test]
fn a_backslash_in_a_san_is_quoted_in_xfcc() {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI("spiffe://td/a\\b".try_into().unwrap())];
    let key = KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().clone();
    let p = Peer::new(&[der], None, None).unwrap();
    let x = p.xfcc().to_str().unwrap().to_owned();
    assert!(x.contains(r#";URI="spiffe://td/a\\b""#), "{x}");
}

#[test]
fn special_characters_are_escaped_in_subject_and_xfcc() {
    let der = cert_with_subject(&[(DnType::CommonName, "#evil, \"x\"+y;z\\ \n")]);
    let p = Peer::new(&[der], None, Some("spiffe://t/gw")).unwrap();
    assert_eq!(p.subject, "CN=\\#evil\\, \\\"x\\\"\\+y\\;z\\\\ \\0A");
    let x = p.xfcc().to_str().unwrap();
    assert!(x.starts_with("By=spiffe://t/gw;Hash="), "{x}");
    // Inside the quoted Subject every quote and backslash is escaped, so the
    // value cannot end early or smuggle a `;URI=` pair.
    assert!(
        x.contains(r#";Subject="CN=\\#evil\\, \\\"x\\\"\\+y\\;z\\\\ \\0A";DNS=a.test"#),
        "{x}"
    );
    assert!(!x.contains('\n'));
}

#[test]
fn peer_credentials_become_a_header() {
    let der = cert_with_subject(&[(DnType::CommonName, "x")]);
    let p = Peer::new(
        &[der],
        Some(PeerCred {
            uid: Some(1000),
            gid: Some(100),
            pid: Some(42),
            groups: Some(vec![100, 27]),
        }),
        None,
    )
    .unwrap();
    assert_eq!(p.cred_header().unwrap(), "uid=1000;gid=100;pid=42");
    assert_eq!(p.sha256_hex().len(), 64);
}

#[test]
fn no_certificate_is_an_error() {
    assert!(matches!(
        Peer::new(&[], None, None),
        Err(IdentityError::NoCertificate)
    ));
    assert!(matches!(
        Peer::new(&[CertificateDer::from(vec![1, 2, 3])], None, None),
        Err(IdentityError::Parse(_))
    ));
}

/// One SPIFFE ID per certificate: two make the identity ambiguous; one
/// beside another kind of URI does not.
#[test]
fn two_spiffe_ids_are_refused() {
    let with = |uris: &[&str]| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        Peer::new(&[der], None, None)
    };
    assert!(matches!(
        with(&["spiffe://td/bob", "spiffe://td/admin"]),
        Err(IdentityError::SpiffeIds(2))
    ));
    assert!(matches!(
        with(&["spiffe://td/bob", "SPIFFE://td/admin"]),
        Err(IdentityError::SpiffeIds(2))
    ));
    let p = with(&["https://example.org/x", "spiffe://td/bob"]).unwrap();
    assert_eq!(p.spiffe_id.as_deref(), Some("spiffe://td/bob"));
}

/// DER: `tag`, a short length, `content`.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag, u8::try_from(content.len()).unwrap()];
    v.extend_from_slice(content);
    v
}

/// A SAN extension read only in part is refused, not taken as the names
/// before the break: a deny rule on a later name would not match.
#[test]
fn a_san_read_only_in_part_is_refused() {
    let spiffe = tlv(0x86, b"spiffe://t/a");
    for (what, san) in [
        (
            "an entry that is no GeneralName",
            tlv(0x30, &[spiffe.clone(), tlv(0x0c, b"x")].concat()),
        ),
        (
            "bytes after the names",
            [tlv(0x30, &spiffe), vec![0x05, 0x00]].concat(),
        ),
        (
            "a URI that is not UTF-8",
            tlv(0x30, &tlv(0x86, b"spiffe://t/\xff")),
        ),
    ] {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 17],
            san,
        )];
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        assert!(
            matches!(Peer::new(&[der], None, None), Err(IdentityError::Parse(_))),
            "{what}: read"
        );
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[2, 5, 29, 17],
        tlv(0x30, &spiffe),
    )];
    let key = KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().clone();
    let p = Peer::new(&[der], None, None).unwrap();
    assert_eq!(p.spiffe_id.as_deref(), Some("spiffe://t/a"));
}
