//! Certificate mode of `alipay`: loading Alipay's public-key certificate
//! (`alipayCertPublicKey_RSA2.crt`), the root certificate file
//! (`alipayRootCert.crt`) and the app certificate
//! (`appCertPublicKey_<appid>.crt`) at rule load, and the certificate SNs the
//! official SDK computes from them.
//!
//! What the official SDKs do, and what callgate does:
//! * Notifications: the Java SDK's `rsaCertCheckV1` takes the public key of
//!   the (first) certificate in `alipayCertPublicKey_RSA2.crt` and runs the
//!   ordinary `rsaCheckV1`; EasySDK's `verifyNotify` does the same. Neither
//!   checks the chain or the expiry at notify time (PROVIDERS.md §1.3). So
//!   the key of the first certificate is the key notifications are verified
//!   with, and an expired certificate still verifies: the sandbox
//!   certificate in the public test vectors expired on 2024-06-06.
//! * Chain: the SDK checks a certificate against the root file
//!   (`AntCertificationUtil.isTrusted`: issuer looked up by subject name,
//!   signature checked, and expiry) only when it downloads a rotated Alipay
//!   certificate, not for the configured file. callgate checks the chain
//!   at load instead, by signature, through the other certificates of its
//!   own file to a certificate of the root file. A chain that fails (a
//!   certificate with the issuer's name whose key does not verify, a
//!   self-issued certificate the root file lacks, an intermediate whose root
//!   is missing) and the route does not load. But Alipay ships
//!   `alipayCertPublicKey_RSA2.crt` and `appCertPublicKey_<appid>.crt` as
//!   the leaf alone (production copies in tests/fixtures/alipay_cert), and
//!   its `alipayRootCert.crt` holds only roots: a leaf whose issuer is in
//!   neither file loads, with a warning that its chain could not be
//!   checked, as the SDK would use it. Like the SDK (and unlike a TLS path
//!   validator), CA flags and key usage are not required: Alipay's sandbox
//!   intermediate carries neither.
//! * Expiry: never a reason to refuse here (the SDK does not refuse either),
//!   the one exception to `expiry`'s rule that an expired key certificate
//!   fails `check`. Every certificate on the two chains is returned in
//!   [`CertMode::certificates`]; `alipay.rs` judges them with
//!   `expiry::WhenExpired::Warn`: expired or expiring within 30 days is a
//!   warning at load (`callgate check` and start-up print it), and each is
//!   exported as `callgate_key_expiry_timestamp_seconds`. A certificate not
//!   yet valid is a warning too.
//! * SNs (AntCertificationUtil `getCertSN` / `getRootCertSN`): `md5(issuer
//!   DN + decimal serial)` as 32 lower-case hex digits, where the DN is
//!   Java's `X500Principal.getName()` (RFC 2253: most specific RDN first,
//!   keywords CN, C, L, ST, O, OU, STREET, DC, UID, other attributes as
//!   `OID=#hex`, specials escaped with `\`). The root SN joins, in file
//!   order with `_`, the SNs of the root file's certificates whose signature
//!   algorithm OID starts with `1.2.840.113549.1.1` (the RSA family; the SM2
//!   and ECDSA roots are skipped). A notification that carries
//!   `alipay_cert_sn` must name the configured certificate's SN.
//!
//! Certificate signatures are checked with aws-lc-rs (RSA PKCS#1 v1.5 with
//! SHA-1, SHA-256, SHA-384 or SHA-512); x509-parser only parses.

use std::path::Path;

use md5::{Digest, Md5};
use x509_parser::asn1_rs::{Tag, ToDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::num_bigint::BigInt;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use super::RsaKey;

/// The SNs of a route's certificates, as the SDK computes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSns {
    /// `alipay_cert_sn`: checked against notifications that carry one.
    pub alipay_cert_sn: Box<str>,
    pub alipay_root_cert_sn: Box<str>,
    pub app_cert_sn: Option<Box<str>>,
}

/// Certificate mode, loaded: the key notifications are verified with, the
/// SNs, the certificates on the chains (for expiry) and warnings to print
/// (a certificate not yet valid).
#[derive(Debug)]
pub struct CertMode {
    pub key: RsaKey,
    pub sns: CertSns,
    pub certificates: Vec<ChainCert>,
    /// (the keys field a warning is about, the warning).
    pub warnings: Vec<(&'static str, String)>,
}

/// A certificate on the Alipay or the app certificate's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCert {
    /// The keys field whose file holds it.
    pub field: &'static str,
    /// `openssl x509 -serial` form.
    pub serial: String,
    /// RFC 2253 subject.
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// A problem with one of the three files: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertProblem {
    pub field: &'static str,
    pub reason: String,
}

/// The three files, already resolved.
pub struct CertFiles<'a> {
    pub alipay_cert: &'a Path,
    pub alipay_root_cert: &'a Path,
    pub app_cert: Option<&'a Path>,
}

/// Loads and checks certificate mode at Unix time `now`, or returns the
/// problems found (at most one per file).
pub fn load(files: &CertFiles<'_>, now: i64) -> Result<CertMode, Vec<CertProblem>> {
    let problem = |field, reason| CertProblem { field, reason };
    let pub_ders = read_pem(files.alipay_cert).map_err(|r| problem("alipay_cert", r));
    let root_ders = read_pem(files.alipay_root_cert).map_err(|r| problem("alipay_root_cert", r));
    let app_ders = files
        .app_cert
        .map(|p| read_pem(p).map_err(|r| problem("app_cert", r)))
        .transpose();
    let mut problems = Vec::new();
    let (pub_ders, root_ders, app_ders) = match (pub_ders, root_ders, app_ders) {
        (Ok(p), Ok(r), Ok(a)) => (p, r, a),
        (p, r, a) => {
            problems.extend(p.err());
            problems.extend(r.err());
            problems.extend(a.err());
            return Err(problems);
        }
    };
    let pub_certs = parse_all(&pub_ders).map_err(|r| vec![problem("alipay_cert", r)])?;
    let roots = parse_all(&root_ders).map_err(|r| vec![problem("alipay_root_cert", r)])?;
    let app_certs = match &app_ders {
        Some(d) => Some(parse_all(d).map_err(|r| vec![problem("app_cert", r)])?),
        None => None,
    };

    let mut warnings = Vec::new();
    let root_sn = root_cert_sn(&roots);
    if root_sn.is_empty() {
        problems.push(problem(
            "alipay_root_cert",
            "no RSA-signed certificate in the file: give Alipay's alipayRootCert.crt".to_owned(),
        ));
    }
    let leaf = &pub_certs[0];
    let key = match RsaKey::from_der(leaf.public_key().raw) {
        Ok(k) => Some(k),
        Err(_) => {
            problems.push(problem(
                "alipay_cert",
                format!(
                    "the key of `{}` is not an RSA key; RSA2 notifications need alipayCertPublicKey_RSA2.crt",
                    rfc2253(leaf.subject())
                ),
            ));
            None
        }
    };
    let mut certificates: Vec<ChainCert> = Vec::new();
    let mut note = |path: &[&X509Certificate<'_>], app: &[X509Certificate<'_>]| {
        for c in path {
            let is_in = |set: &[X509Certificate<'_>]| {
                set.iter()
                    .any(|x| x.tbs_certificate.as_ref() == c.tbs_certificate.as_ref())
            };
            let field = if is_in(app) {
                "app_cert"
            } else if is_in(&pub_certs) {
                "alipay_cert"
            } else {
                "alipay_root_cert"
            };
            let cert = ChainCert {
                field,
                serial: crate::expiry::serial_hex(c),
                subject: rfc2253(c.subject()),
                not_after: c.validity().not_after.timestamp(),
            };
            // An intermediate may sit in both the Alipay and the app
            // certificate file: one entry, under the first file noted.
            if !certificates
                .iter()
                .any(|x| x.serial == cert.serial && x.subject == cert.subject)
            {
                certificates.push(cert);
            }
        }
    };
    let mut reached = |field: &'static str, reach: Reach<'_, '_>, app: &[X509Certificate<'_>]| {
        let path = match reach {
            Reach::Root(path) => path,
            Reach::Unchecked(path, warning) => {
                warnings.push((field, warning));
                path
            }
        };
        warnings.extend(
            validity_warnings(field, &path, now)
                .into_iter()
                .map(|w| (field, w)),
        );
        note(&path, app);
    };
    match chain("alipay_cert", &pub_certs[0], &pub_certs[1..], &roots) {
        Ok(reach) => reached("alipay_cert", reach, &[]),
        Err(reason) => problems.push(problem("alipay_cert", reason)),
    }
    // An app certificate file usually holds the leaf alone; in the sandbox
    // its intermediate is the one shipped in the Alipay certificate file.
    let app_cert_sn = match &app_certs {
        Some(app) => match chain(
            "app_cert",
            &app[0],
            &app[1..]
                .iter()
                .chain(&pub_certs[1..])
                .cloned()
                .collect::<Vec<_>>(),
            &roots,
        ) {
            Ok(reach) => {
                reached("app_cert", reach, app);
                Some(cert_sn(&app[0]).into_boxed_str())
            }
            Err(reason) => {
                problems.push(problem("app_cert", reason));
                None
            }
        },
        None => None,
    };
    match key {
        Some(key) if problems.is_empty() => Ok(CertMode {
            key,
            sns: CertSns {
                alipay_cert_sn: cert_sn(leaf).into(),
                alipay_root_cert_sn: root_sn.into(),
                app_cert_sn,
            },
            certificates,
            warnings,
        }),
        _ => Err(problems),
    }
}

/// The DER of every CERTIFICATE block in a PEM file, in file order.
fn read_pem(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read: {}", crate::load::io_reason(&e)))?;
    if bytes.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err("this file holds a private key; give the certificate here".to_owned());
    }
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        let der = item.map_err(|e| crate::load::pem_reason(&e))?;
        out.push(der.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err("no -----BEGIN CERTIFICATE----- block in the file".to_owned());
    }
    Ok(out)
}

fn parse_all(ders: &[Vec<u8>]) -> Result<Vec<X509Certificate<'_>>, String> {
    ders.iter()
        .enumerate()
        .map(|(i, der)| match x509_parser::parse_x509_certificate(der) {
            Ok(([], cert)) => Ok(cert),
            Ok(_) => Err(format!(
                "certificate {} has trailing bytes after its DER",
                i + 1
            )),
            Err(e) => Err(format!("certificate {} is not valid X.509: {e}", i + 1)),
        })
        .collect()
}

// === SNs ===

/// AntCertificationUtil `getCertSN`: md5(issuer DN (RFC 2253) + decimal
/// serial), lower-case hex.
pub fn cert_sn(cert: &X509Certificate<'_>) -> String {
    let serial = BigInt::from_signed_bytes_be(cert.tbs_certificate.raw_serial());
    let digest = Md5::new()
        .chain_update(rfc2253(cert.issuer()).as_bytes())
        .chain_update(serial.to_string().as_bytes())
        .finalize();
    hex::encode(digest)
}

/// AntCertificationUtil `getRootCertSN`: the SNs of the RSA-signed
/// certificates, in file order, joined with `_`.
pub fn root_cert_sn(certs: &[X509Certificate<'_>]) -> String {
    certs
        .iter()
        .filter(|c| {
            c.signature_algorithm
                .algorithm
                .to_id_string()
                .starts_with("1.2.840.113549.1.1")
        })
        .map(cert_sn)
        .collect::<Vec<_>>()
        .join("_")
}

/// A name as Java's `X500Principal.getName()` writes it (RFC 2253).
pub fn rfc2253(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| rdn.iter().map(ava).collect::<Vec<_>>().join("+"))
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// One attribute, as Java's `AVA.toRFC2253String` writes it.
fn ava(attr: &AttributeTypeAndValue<'_>) -> String {
    let oid = attr.attr_type().to_id_string();
    let keyword = match oid.as_str() {
        "2.5.4.3" => Some("CN"),
        "2.5.4.6" => Some("C"),
        "2.5.4.7" => Some("L"),
        "2.5.4.8" => Some("ST"),
        "2.5.4.9" => Some("STREET"),
        "2.5.4.10" => Some("O"),
        "2.5.4.11" => Some("OU"),
        "0.9.2342.19200300.100.1.25" => Some("DC"),
        "0.9.2342.19200300.100.1.1" => Some("UID"),
        _ => None,
    };
    let value = attr.attr_value();
    let is_string = matches!(
        value.tag(),
        Tag::PrintableString
            | Tag::T61String
            | Tag::Ia5String
            | Tag::GeneralString
            | Tag::BmpString
            | Tag::Utf8String
    );
    match keyword {
        Some(k) if is_string => format!("{k}={}", escape(&String::from_utf8_lossy(value.data))),
        _ => format!(
            "{}=#{}",
            keyword.unwrap_or(&oid),
            hex::encode(value.to_der_vec().unwrap_or_default())
        ),
    }
}

/// RFC 2253 escaping as Java does it: `, = + < > # ; " \` get a backslash
/// wherever they are, NUL becomes `\00`, and leading and trailing spaces
/// (and CRs) get a backslash.
fn escape(value: &str) -> String {
    const SPECIALS: &str = ",=+<>#;\"\\";
    let mut body: Vec<char> = Vec::with_capacity(value.len());
    for c in value.chars() {
        if SPECIALS.contains(c) {
            body.push('\\');
            body.push(c);
        } else if c == '\0' {
            body.extend(['\\', '0', '0']);
        } else {
            body.push(c);
        }
    }
    let blank = |c: &char| *c == ' ' || *c == '\r';
    let lead = body.iter().take_while(|c| blank(c)).count();
    let trail = body.iter().rev().take_while(|c| blank(c)).count();
    let mut out = String::with_capacity(body.len() + 4);
    for (i, c) in body.iter().enumerate() {
        if i < lead || i >= body.len() - trail {
            out.push('\\');
        }
        out.push(*c);
    }
    out
}

// === chain ===

/// How far a certificate chains towards the root file.
enum Reach<'c, 'a> {
    /// To a certificate of the root file: the path, root last.
    Root(Vec<&'c X509Certificate<'a>>),
    /// The leaf alone, its issuer in neither file (Alipay ships its
    /// certificates without their intermediate): the path, and the warning
    /// for the operator.
    Unchecked(Vec<&'c X509Certificate<'a>>, String),
}

/// Follows `leaf` up through `intermediates` to a certificate of `roots`,
/// checking each signature. A leaf whose issuer is in neither file (no
/// certificate there has its name) is [`Reach::Unchecked`]; any other chain
/// that does not reach the root file is refused: one that meets a
/// certificate with the issuer's name whose key does not verify the
/// signature, ends at a self-issued certificate the root file does not
/// hold, or climbs through an intermediate to a root the file lacks.
fn chain<'c, 'a>(
    field: &str,
    leaf: &'c X509Certificate<'a>,
    intermediates: &'c [X509Certificate<'a>],
    roots: &'c [X509Certificate<'a>],
) -> Result<Reach<'c, 'a>, String> {
    let mut path = vec![leaf];
    let mut used = vec![false; intermediates.len()];
    loop {
        let current = path[path.len() - 1];
        let issuer = name_key(current.issuer());
        if let Some(root) = roots
            .iter()
            .find(|r| name_key(r.subject()) == issuer && signed_by(current, r))
        {
            path.push(root);
            return Ok(Reach::Root(path));
        }
        let next = intermediates
            .iter()
            .enumerate()
            .find(|(i, c)| !used[*i] && name_key(c.subject()) == issuer && signed_by(current, c));
        if let Some((i, c)) = next {
            used[i] = true;
            path.push(c);
            continue;
        }
        let stop = if path.len() == 1 {
            String::new()
        } else {
            format!(" (through `{}`)", rfc2253(current.subject()))
        };
        let named = |c: &X509Certificate<'_>| name_key(c.subject()) == issuer;
        let self_issued = name_key(current.subject()) == issuer;
        // A file that ships an intermediate ships the one below a root of
        // the root file: past it, a missing issuer is the wrong root file
        // (sandbox certificates with the production roots).
        if path.len() > 1
            || self_issued
            || roots.iter().any(named)
            || intermediates.iter().any(named)
        {
            return Err(format!(
                "`{}`{stop} does not chain to alipay_root_cert: no certificate there or in this file is `{}` with a key that verifies the signature",
                rfc2253(leaf.subject()),
                rfc2253(current.issuer())
            ));
        }
        let role = if field == "app_cert" {
            "the app certificate is not used to verify notifications"
        } else {
            "notifications are verified with this certificate's key"
        };
        let warning = format!(
            "keys.{field}: cannot check that `{}`{stop} chains to alipay_root_cert: its issuer `{}` is in neither file (Alipay's SDK does not check it either; {role}); put that intermediate certificate after it in the file to have the chain checked",
            rfc2253(leaf.subject()),
            rfc2253(current.issuer())
        );
        return Ok(Reach::Unchecked(path, warning));
    }
}

/// Names compared the way Java's `X500Name.equals` roughly does: by their
/// RFC 2253 form, ignoring ASCII case.
fn name_key(name: &X509Name<'_>) -> String {
    rfc2253(name).to_ascii_lowercase()
}

/// Whether `issuer`'s key verifies `cert`'s signature.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    use aws_lc_rs::signature::{
        RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA384,
        UnparsedPublicKey, VerificationAlgorithm,
    };
    let alg: &'static dyn VerificationAlgorithm =
        match cert.signature_algorithm.algorithm.to_id_string().as_str() {
            "1.2.840.113549.1.1.5" => &RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "1.2.840.113549.1.1.11" => &RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
            "1.2.840.113549.1.1.12" => &RSA_PKCS1_2048_8192_SHA384,
            "1.2.840.113549.1.1.13" => &RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
            _ => return false,
        };
    if cert.signature_value.unused_bits != 0 {
        return false;
    }
    UnparsedPublicKey::new(alg, issuer.public_key().raw)
        .verify(
            cert.tbs_certificate.as_ref(),
            cert.signature_value.data.as_ref(),
        )
        .is_ok()
}

/// Warnings for certificates on `path` that are not valid yet (expiry is
/// judged by `expiry`, from [`CertMode::certificates`]).
fn validity_warnings(field: &str, path: &[&X509Certificate<'_>], now: i64) -> Vec<String> {
    path.iter()
        .filter(|c| now < c.validity().not_before.timestamp())
        .map(|c| {
            format!(
                "keys.{field}: certificate `{}` is not valid until {}",
                rfc2253(c.subject()),
                crate::expiry::utc(c.validity().not_before.timestamp())
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(dir: &str, name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(dir)
            .join(name)
    }

    fn sns_of(dir: &str, name: &str) -> (String, String) {
        let ders = read_pem(&fixture(dir, name)).unwrap();
        let certs = parse_all(&ders).unwrap();
        (cert_sn(&certs[0]), root_cert_sn(&certs))
    }

    #[test]
    fn yansongda_sn_vectors() {
        // yansongda/pay tests/CertManagerTest.php and
        // tests/Plugin/Alipay/V2/StartPluginTest.php.
        let (_, root) = sns_of("alipay_cert", "yansongda_alipayRootCert.crt");
        assert_eq!(
            root,
            "687b59193f3f462dd5336e5abf83c5d8_02941eef3187dddf3d3b83462e1dfcf6"
        );
        let (app, _) = sns_of("alipay_cert", "yansongda_alipayAppPublicCert.crt");
        assert_eq!(app, "e90dd23a37c5c7b616e003970817ff82");
        // PROVIDERS.md §1.3, computed with openssl's RFC 2253 issuer.
        let (sandbox, _) = sns_of("alipay", "yansongda_alipayPublicCert.crt");
        assert_eq!(sandbox, "6f1e366a31d9575cd546914add04f4af");
    }

    #[test]
    fn openssl_chain_sns_match_the_generator() {
        let expected: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixture("alipay_cert", "expected.json")).unwrap(),
        )
        .unwrap();
        for (file, want) in expected["sn"].as_object().unwrap() {
            let (sn, root) = sns_of("alipay_cert", file);
            if file.to_ascii_lowercase().contains("root") {
                assert_eq!(root, want.as_str().unwrap(), "{file}");
            } else {
                assert_eq!(sn, want.as_str().unwrap(), "{file}");
            }
        }
    }

    #[test]
    fn java_rfc2253_escaping() {
        assert_eq!(escape("Ant Financial"), "Ant Financial");
        assert_eq!(escape("Callgate, Inc."), "Callgate\\, Inc.");
        assert_eq!(escape("a#b=c+d"), "a\\#b\\=c\\+d");
        assert_eq!(escape(" lead"), "\\ lead");
        assert_eq!(escape("trail  "), "trail\\ \\ ");
        assert_eq!(escape("支付宝(中国)"), "支付宝(中国)");
        assert_eq!(escape("nul\0"), "nul\\00");
    }

    #[test]
    fn real_sandbox_chain_verifies_by_signature() {
        // yansongda's sandbox Alipay cert + intermediate, fzlee's root file
        // (holds "Ant Financial Certification Authority R1 test").
        let now = 1_700_000_000; // 2023-11-14, inside the leaf's validity
        let loaded = load(
            &CertFiles {
                alipay_cert: &fixture("alipay", "yansongda_alipayPublicCert.crt"),
                alipay_root_cert: &fixture("alipay_cert", "fzlee_alipay_root_cert.crt"),
                app_cert: Some(&fixture("alipay_cert", "yansongda_alipayAppPublicCert.crt")),
            },
            now,
        )
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(
            &*loaded.sns.alipay_cert_sn,
            "6f1e366a31d9575cd546914add04f4af"
        );
        assert_eq!(
            loaded.sns.app_cert_sn.as_deref(),
            Some("e90dd23a37c5c7b616e003970817ff82")
        );
        // Every certificate on both chains, with its file and notAfter
        // (serials and dates as `openssl x509 -serial -enddate` prints them).
        let at = |s: &str| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
                .unwrap()
                .and_utc()
                .timestamp()
        };
        let got: Vec<(&str, &str, i64)> = loaded
            .certificates
            .iter()
            .map(|c| (c.field, c.serial.as_str(), c.not_after))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "alipay_cert",
                    "2023060769B99529DC18B16AC12FD695",
                    at("2024-06-06 08:47:02")
                ),
                (
                    "alipay_cert",
                    "20190819B815C6ADB5D0AC4B27E600FD",
                    at("2024-08-01 11:16:00")
                ),
                (
                    "alipay_root_cert",
                    "2019042253697012597DFC04E69F6E07",
                    at("2029-04-19 03:07:23")
                ),
                (
                    "app_cert",
                    "20230607CAA8B2E6DD943115CD903930",
                    at("2024-06-11 08:46:07")
                ),
            ]
        );
        // Today the sandbox leaf is expired: still loads (expiry is judged
        // by the caller, as a warning).
        let later = load(
            &CertFiles {
                alipay_cert: &fixture("alipay", "yansongda_alipayPublicCert.crt"),
                alipay_root_cert: &fixture("alipay_cert", "fzlee_alipay_root_cert.crt"),
                app_cert: None,
            },
            1_800_000_000,
        )
        .unwrap();
        assert!(later.warnings.is_empty(), "{:?}", later.warnings);
        assert_eq!(later.certificates.len(), 3);
        // Before the leaf's notBefore: a warning.
        let early = load(
            &CertFiles {
                alipay_cert: &fixture("alipay", "yansongda_alipayPublicCert.crt"),
                alipay_root_cert: &fixture("alipay_cert", "fzlee_alipay_root_cert.crt"),
                app_cert: None,
            },
            1_600_000_000,
        )
        .unwrap();
        assert!(
            early
                .warnings
                .iter()
                .any(|(_, w)| w.contains("is not valid until")),
            "{:?}",
            early.warnings
        );
        // The production root file does not hold the sandbox root.
        let err = load(
            &CertFiles {
                alipay_cert: &fixture("alipay", "yansongda_alipayPublicCert.crt"),
                alipay_root_cert: &fixture("alipay_cert", "yansongda_alipayRootCert.crt"),
                app_cert: None,
            },
            now,
        )
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].field, "alipay_cert");
        assert!(
            err[0].reason.contains("does not chain to alipay_root_cert"),
            "{err:?}"
        );
    }

    #[test]
    fn a_forged_intermediate_does_not_chain() {
        // The openssl set has an intermediate with the real intermediate's
        // name but another key: names match, the signature does not.
        let err = load(
            &CertFiles {
                alipay_cert: &fixture("alipay_cert", "forged_alipayCertPublicKey_RSA2.crt"),
                alipay_root_cert: &fixture("alipay_cert", "alipayRootCert.crt"),
                app_cert: None,
            },
            1_800_000_000,
        )
        .unwrap_err();
        assert!(err[0].reason.contains("does not chain"), "{err:?}");
    }
}
