//! Keys and certificates as a lifecycle: `callgate check` warns when a
//! certificate-backed key or the TLS certificate expires within 30 days and
//! fails when one has expired (Alipay certificate mode only warns, as its
//! SDK keeps verifying), and `/metrics` exports every notAfter as
//! `callgate_key_expiry_timestamp_seconds{route,key}`.
//!
//! Certificates that expire soon are made by the openssl CLI when the test
//! runs (their dates are relative to now); expired ones are committed
//! fixtures (2021) or made by `openssl ca` with explicit dates. Expected
//! serials and dates are read back with `openssl x509`, never from callgate.

mod support;

use std::path::{Path, PathBuf};

use support::*;

/// `callgate check -c DIR/callgate.toml`: (exit code, stdout, stderr).
fn check(dir: &Path) -> (i32, String, String) {
    callgate_cli(&["check"], &dir.join("callgate.toml"))
}

// === openssl ===

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = tool("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const CA_EXT: &str = "[v3]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n[leaf]\nbasicConstraints = CA:FALSE\n";

/// A scratch PKI: every certificate `NAME.pem` has its key in `NAME.key`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ext.cnf"), CA_EXT).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pem"))
    }

    fn run(&self, args: &[&str]) -> String {
        openssl(self.dir.path(), args)
    }

    fn key(&self, name: &str) {
        self.run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &format!("{name}.key"),
        ]);
    }

    /// A self-signed certificate valid for `days` from now.
    fn self_signed(&self, name: &str, cn: &str, days: u32, serial: &str, ca: bool) -> PathBuf {
        self.key(name);
        let mut args = vec![
            "req".to_owned(),
            "-x509".into(),
            "-new".into(),
            "-key".into(),
            format!("{name}.key"),
            "-subj".into(),
            format!("/CN={cn}"),
            "-days".into(),
            days.to_string(),
            "-set_serial".into(),
            serial.into(),
            "-sha256".into(),
            "-out".into(),
            format!("{name}.pem"),
        ];
        if ca {
            args.extend([
                "-addext".into(),
                "basicConstraints=critical,CA:TRUE".into(),
                "-addext".into(),
                "keyUsage=critical,keyCertSign,cRLSign".into(),
            ]);
        }
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.path(name)
    }

    /// A fresh key `NAME.key` and a signing request `NAME.csr` for `/CN=cn`.
    fn key_and_request(&self, name: &str, cn: &str) {
        self.key(name);
        self.run(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &format!("{name}.csr"),
        ]);
    }

    /// A certificate issued by `issuer`, valid for `days` from now.
    fn issued(
        &self,
        name: &str,
        cn: &str,
        issuer: &str,
        days: u32,
        serial: &str,
        ca: bool,
    ) -> PathBuf {
        self.key_and_request(name, cn);
        self.run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{issuer}.pem"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-days",
            &days.to_string(),
            "-set_serial",
            serial,
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-extensions",
            if ca { "v3" } else { "leaf" },
            "-out",
            &format!("{name}.pem"),
        ]);
        self.path(name)
    }

    /// A CA certificate issued by `issuer` with explicit dates
    /// (`YYYYMMDDHHMMSSZ`), through `openssl ca`.
    fn issued_dated(&self, name: &str, cn: &str, issuer: &str, start: &str, end: &str) -> PathBuf {
        let d = self.dir.path();
        std::fs::write(d.join("index.txt"), "").unwrap();
        std::fs::write(d.join("serial"), "04D2\n").unwrap();
        std::fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
             default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n\
             [v3]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n",
        )
        .unwrap();
        self.key_and_request(name, cn);
        self.run(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            &format!("{issuer}.pem"),
            "-keyfile",
            &format!("{issuer}.key"),
            "-in",
            &format!("{name}.csr"),
            "-startdate",
            start,
            "-enddate",
            end,
            "-extensions",
            "v3",
            "-notext",
            "-out",
            &format!("{name}.pem"),
        ]);
        self.path(name)
    }
}

/// notAfter of a certificate file as openssl reads it, Unix seconds.
fn openssl_not_after(cert: &Path) -> i64 {
    let out = openssl(
        Path::new("."),
        &["x509", "-noout", "-enddate", "-in", cert.to_str().unwrap()],
    );
    let text = out.trim().strip_prefix("notAfter=").unwrap();
    chrono::NaiveDateTime::parse_from_str(text, "%b %e %H:%M:%S %Y GMT")
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .and_utc()
        .timestamp()
}

/// The serial as `openssl x509 -serial` prints it (upper-case hex).
fn openssl_serial(cert: &Path) -> String {
    let out = openssl(
        Path::new("."),
        &["x509", "-noout", "-serial", "-in", cert.to_str().unwrap()],
    );
    out.trim().strip_prefix("serial=").unwrap().to_owned()
}

fn decimal(hex_serial: &str) -> String {
    u128::from_str_radix(hex_serial, 16).unwrap().to_string()
}

/// 1-based line of the first line of `file` containing `needle`.
fn line_of(file: &Path, needle: &str) -> usize {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {}", file.display()))
        + 1
}

fn route(name: &str, provider: &str, keys: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\npath = \"/{name}\"\nprovider = \"{provider}\"\nallow = [\"127.0.0.1/32\"]\n\
         upstream = \"http://127.0.0.1:8080/notify.php\"\nupstream_secret_file = \"../upstream.secret\"\n\n\
         [route.keys]\n{keys}\n"
    )
}

/// A configuration directory with `rules` in `rules/r.toml` and, when given,
/// the TLS pair `tls` (certificate, key).
fn config(rules: &str, tls: Option<(&Path, &Path)>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewaySpec {
        tls: tls.is_some(),
        ..GatewaySpec::new(vec![])
    };
    let file = spec.write(dir.path());
    if let Some((cert, key)) = tls {
        let dev = root().join("certs/dev");
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace(
                &format!("{:?}", dev.join("server.crt")),
                &format!("{cert:?}"),
            )
            .replace(
                &format!("{:?}", dev.join("server.key")),
                &format!("{key:?}"),
            );
        std::fs::write(&file, text).unwrap();
    }
    std::fs::write(dir.path().join("rules/r.toml"), rules).unwrap();
    dir
}

// === check ===

#[test]
fn check_warns_about_every_kind_of_key_expiring_within_30_days() {
    let pki = Pki::new();
    let tls = pki.self_signed("tls", "127.0.0.1", 10, "0x7001", false);
    // Alipay certificate mode: a root (ten years) and a leaf that expires soon.
    pki.self_signed("ali_root", "Callgate Lifecycle Root", 3650, "0x1001", true);
    let ali_leaf = pki.issued(
        "ali_leaf",
        "Alipay Lifecycle Leaf",
        "ali_root",
        12,
        "0x1002",
        false,
    );
    // WeChat Pay v3 platform certificate.
    let wx = pki.self_signed("wx", "Tenpay Lifecycle", 20, "0x1234ABCD", false);
    // UnionPay: a long-lived root, a middle that expires soon, a 5.0.0
    // verification certificate that expires sooner.
    pki.self_signed("up_root", "UnionPay Lifecycle Root", 3650, "0x2001", true);
    let up_middle = pki.issued(
        "up_middle",
        "UnionPay Lifecycle Middle",
        "up_root",
        25,
        "0x2002",
        true,
    );
    let up_verify = pki.self_signed("up_verify", "041@1@UnionPay@1", 5, "4242", false);

    let rules = [
        route(
            "ali",
            "alipay",
            &format!(
                "app_id = \"2021000000000001\"\nalipay_cert = {:?}\nalipay_root_cert = {:?}",
                ali_leaf,
                pki.path("ali_root")
            ),
        ),
        route(
            "wx",
            "wechat_v3",
            &format!(
                "mch_id = \"1900000109\"\napi_v3_key_file = {:?}\nplatform_keys = [\n  {{ serial = \"1234ABCD\", certificate = {:?} }},\n]",
                fixture_path("wechat", "v3_api_v3.key"),
                wx
            ),
        ),
        route(
            "up",
            "unionpay",
            &format!(
                "mer_id = \"777290058110097\"\nroot_cert = {:?}\nmiddle_cert = {:?}\nverify_certs = [{:?}]",
                pki.path("up_root"),
                up_middle,
                up_verify
            ),
        ),
    ]
    .join("\n");
    let dir = config(&rules, Some((&tls, &pki.dir.path().join("tls.key"))));
    let (code, out, err) = check(dir.path());
    assert_eq!((code, out.trim()), (0, "ok: 3 routes"), "{err}");

    let gateway = dir.path().join("callgate.toml");
    let r = dir.path().join("rules/r.toml");
    // (file, the line's needle, key, certificate, how the warning names
    // it, when and what to do).
    let expect = [
        (
            &gateway,
            "tls_cert",
            "listen.tls_cert",
            &tls,
            "`CN=127.0.0.1`",
            "in 10 days; renew it before then",
        ),
        (
            &r,
            "alipay_cert",
            "keys.alipay_cert",
            &ali_leaf,
            "1002 (`CN=Alipay Lifecycle Leaf`)",
            "in 12 days; download the renewed certificate",
        ),
        (
            &r,
            "1234ABCD",
            "keys.platform_keys",
            &wx,
            "1234ABCD (`CN=Tenpay Lifecycle`)",
            "in 20 days; list the next platform certificate",
        ),
        (
            &r,
            "middle_cert",
            "keys.middle_cert",
            &up_middle,
            "8194 (`CN=UnionPay Lifecycle Middle`)",
            "in 25 days; install UnionPay's renewed certificate",
        ),
        (
            &r,
            "verify_certs",
            "keys.verify_certs",
            &up_verify,
            "4242 (`CN=041@1@UnionPay@1`)",
            "in 5 days; install UnionPay's renewed certificate",
        ),
    ]
    .map(|(file, needle, key, cert, named, then)| {
        format!(
            "{}:{}: warning: {key} `{}`: certificate {named} expires on {}, {then}",
            file.display(),
            line_of(file, needle),
            cert.display(),
            callgate::expiry::utc(openssl_not_after(cert))
        )
    });
    for want in &expect {
        assert!(err.contains(want.as_str()), "missing:\n{want}\nin:\n{err}");
    }
    // The long-lived roots are not worth a warning.
    assert_eq!(err.matches("warning:").count(), expect.len(), "{err}");
}

#[test]
fn check_fails_on_an_expired_key_certificate_and_reports_them_all() {
    let pki = Pki::new();
    pki.self_signed("up_root", "UnionPay Lifecycle Root", 3650, "0x2001", true);
    let middle = pki.issued_dated(
        "up_middle",
        "UnionPay Expired Middle",
        "up_root",
        "20200101000000Z",
        "20210101000000Z",
    );
    let expired_verify = fixture_path("unionpay", "expired.pem");
    let rules = [
        route(
            "up500",
            "unionpay",
            &format!(
                "mer_id = \"777290058110097\"\nverify_certs = [{:?}]",
                expired_verify
            ),
        ),
        route(
            "up510",
            "unionpay",
            &format!(
                "mer_id = \"777290058110097\"\nroot_cert = {:?}\nmiddle_cert = {:?}",
                pki.path("up_root"),
                middle
            ),
        ),
    ]
    .join("\n");
    // The TLS certificate has expired too: every problem at once.
    let dir = config(
        &rules,
        Some((
            &fixture_path("unionpay", "expired.pem"),
            &fixture_path("unionpay", "expired_key.pem"),
        )),
    );
    let (code, out, err) = check(dir.path());
    assert_eq!(code, 1, "{out}{err}");
    let gateway = dir.path().join("callgate.toml");
    let r = dir.path().join("rules/r.toml");
    let tls_line = format!(
        "{}:{}: listen.tls_cert `{}`: certificate `",
        gateway.display(),
        line_of(&gateway, "tls_cert"),
        fixture_path("unionpay", "expired.pem").display()
    );
    assert!(err.contains(&tls_line), "{tls_line}\n{err}");
    assert!(
        err.contains(
            "` expired on 2021-01-01 00:00:00 UTC; clients refuse it: install a renewed certificate"
        ),
        "{err}"
    );
    let verify = format!(
        "{}:{}: keys.verify_certs `{}`: certificate {} (`",
        r.display(),
        line_of(&r, "verify_certs"),
        expired_verify.display(),
        decimal(&openssl_serial(&expired_verify))
    );
    assert!(err.contains(&verify), "{verify}\n{err}");
    assert!(
        err.contains("`) expired on 2021-01-01 00:00:00 UTC; UnionPay no longer signs 5.0.0 notifications with it"),
        "{err}"
    );
    let middle_line = format!(
        "{}:{}: keys.middle_cert `{}`: certificate {} (`CN=UnionPay Expired Middle`) expired on 2021-01-01 00:00:00 UTC; UnionPay's signing certificates no longer chain through it",
        r.display(),
        line_of(&r, "middle_cert"),
        middle.display(),
        decimal(&openssl_serial(&middle))
    );
    assert!(err.contains(&middle_line), "{middle_line}\n{err}");
    assert_eq!(err.lines().count(), 3, "{err}");
}

#[test]
fn an_expired_alipay_certificate_only_warns_as_the_sdk_keeps_verifying() {
    let rules = route(
        "ali",
        "alipay",
        &format!(
            "app_id = \"2021000000000001\"\nalipay_cert = {:?}\nalipay_root_cert = {:?}",
            fixture_path("alipay_cert", "expired_alipayCertPublicKey_RSA2.crt"),
            fixture_path("alipay_cert", "alipayRootCert.crt")
        ),
    );
    let dir = config(&rules, None);
    let (code, out, err) = check(dir.path());
    assert_eq!((code, out.trim()), (0, "ok: 1 routes"), "{err}");
    assert!(
        err.contains("warning: keys.alipay_cert `")
            && err.contains("expired on 2021-01-01 00:00:00 UTC; Alipay's SDK still verifies notifications with it and so does callgate"),
        "{err}"
    );
}

// === metrics ===

#[tokio::test]
async fn every_certificate_backed_key_is_a_gauge_and_follows_reloads() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![
        RouteSpec::alipay_cert(&up),
        RouteSpec::wechat_v3(&up),
        RouteSpec::unionpay(&up),
        RouteSpec::alipay_md5(&up),
        RouteSpec::jdpay(&up),
    ]);
    spec.tls = true;
    let gw = TestGateway::start(spec.clone()).await;
    let text = gw.get_admin("/metrics").await.text();

    let ali = |f: &str| fixture_path("alipay_cert", f);
    let up_f = |f: &str| fixture_path("unionpay", f);
    let wx = |f: &str| fixture_path("wechat", f);
    let expected: Vec<(&str, String, i64)> = vec![
        (
            "-",
            "tls_cert".into(),
            openssl_not_after(&root().join("certs/dev/server.crt")),
        ),
        (
            "shop-alipay",
            format!("alipay_cert:{}", openssl_serial(&ali("alipay_leaf.crt"))),
            openssl_not_after(&ali("alipay_leaf.crt")),
        ),
        (
            "shop-alipay",
            format!("alipay_cert:{}", openssl_serial(&ali("inter_ca.crt"))),
            openssl_not_after(&ali("inter_ca.crt")),
        ),
        (
            "shop-alipay",
            format!("alipay_root_cert:{}", openssl_serial(&ali("root_ca.crt"))),
            openssl_not_after(&ali("root_ca.crt")),
        ),
        (
            "shop-alipay",
            format!("app_cert:{}", openssl_serial(&ali("app_leaf.crt"))),
            openssl_not_after(&ali("app_leaf.crt")),
        ),
        (
            "shop-wechat-v3",
            format!("platform_keys:{WECHAT_PLATFORM_SERIAL}"),
            openssl_not_after(&wx("platform_cert.pem")),
        ),
        (
            "shop-wechat-v3",
            format!("platform_keys:{WECHAT_FUTURE_SERIAL}"),
            openssl_not_after(&wx("future_cert.pem")),
        ),
        (
            "shop-unionpay",
            format!("root_cert:{}", decimal(&openssl_serial(&up_f("root.pem")))),
            openssl_not_after(&up_f("root.pem")),
        ),
        (
            "shop-unionpay",
            format!(
                "middle_cert:{}",
                decimal(&openssl_serial(&up_f("middle.pem")))
            ),
            openssl_not_after(&up_f("middle.pem")),
        ),
        (
            "shop-unionpay",
            format!(
                "verify_certs:{}",
                decimal(&openssl_serial(&up_f("sign.pem")))
            ),
            openssl_not_after(&up_f("sign.pem")),
        ),
    ];
    for (route, key, not_after) in &expected {
        assert_eq!(
            find_metric(
                &text,
                "callgate_key_expiry_timestamp_seconds",
                &[("route", route), ("key", key)]
            ),
            Some(*not_after as f64),
            "{route} {key}\n{text}"
        );
    }
    // Exactly those: secrets and bare public keys have no expiry.
    let series = text
        .lines()
        .filter(|l| l.starts_with("callgate_key_expiry_timestamp_seconds{"))
        .count();
    assert_eq!(series, expected.len(), "{text}");

    // A reload without the UnionPay route drops its series.
    let mut smaller = spec.clone();
    smaller.routes.retain(|r| r.provider != "unionpay");
    let rules: String = smaller.routes.iter().map(route_toml).collect();
    std::fs::write(gw.dir.path().join("rules/routes.toml"), rules).unwrap();
    assert_eq!(gw.gateway.reload().unwrap(), 4);
    let text = gw.get_admin("/metrics").await.text();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("callgate_key_expiry_timestamp_seconds{")
                && l.contains("route=\"shop-unionpay\"")),
        "{text}"
    );
    let series = text
        .lines()
        .filter(|l| l.starts_with("callgate_key_expiry_timestamp_seconds{"))
        .count();
    assert_eq!(series, expected.len() - 3, "{text}");
    assert!(text.contains("callgate_replay_store_up 1"), "{text}");
}

#[tokio::test]
async fn an_expired_entry_of_a_rotation_list_is_skipped_while_another_is_valid() {
    // WeChat Pay v3 platform_keys and UnionPay verify_certs hold several
    // keys so they can rotate: one that has expired is skipped with a
    // warning (and stays in the expiry gauge, so its alert fires), not a
    // failed load, while another is still valid.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let expired_wx = fixture_path("wechat", "expired_cert.pem");
    let expired_serial = openssl_serial(&expired_wx);
    let wx = RouteSpec::wechat_v3(&up).with(|r| {
        r.keys = format!(
            "mch_id = {WECHAT_MCH_ID:?}\napi_v3_key_file = {:?}\nplatform_keys = [\n  {{ serial = {expired_serial:?}, certificate = {expired_wx:?} }},\n  {{ serial = {WECHAT_PLATFORM_SERIAL:?}, certificate = {:?} }},\n]\n",
            fixture_path("wechat", "v3_api_v3.key"),
            fixture_path("wechat", "platform_cert.pem"),
        )
    });
    let expired_up = fixture_path("unionpay", "expired.pem");
    let up_route = RouteSpec::unionpay(&up).with(|r| {
        r.keys = format!(
            "mer_id = \"777290058110097\"\nverify_certs = [{expired_up:?}, {:?}]\n",
            fixture_path("unionpay", "sign.pem")
        )
    });
    let spec = GatewaySpec::new(vec![wx, up_route]);
    let dir = tempfile::tempdir().unwrap();
    spec.write(dir.path());
    let (code, out, err) = check(dir.path());
    assert_eq!((code, out.trim()), (0, "ok: 2 routes"), "{err}");
    for (file, serial) in [
        (&expired_wx, expired_serial.clone()),
        (&expired_up, decimal(&openssl_serial(&expired_up))),
    ] {
        let want = format!("`{}`: certificate {serial} (", file.display());
        let line = err
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("no warning for {want} in:\n{err}"));
        assert!(
            line.contains(": warning: ")
                && line.contains(
                    "expired on 2021-01-01 00:00:00 UTC; skipped while the other entries are in use"
                ),
            "{line}"
        );
    }

    let gw = TestGateway::start(spec).await;
    let text = gw.get_admin("/metrics").await.text();
    let gauge = |route: &str, key: &str| {
        find_metric(
            &text,
            "callgate_key_expiry_timestamp_seconds",
            &[("route", route), ("key", key)],
        )
    };
    assert_eq!(
        gauge("shop-wechat-v3", &format!("platform_keys:{expired_serial}")),
        Some(openssl_not_after(&expired_wx) as f64)
    );
    assert_eq!(
        gauge(
            "shop-unionpay",
            &format!("verify_certs:{}", decimal(&openssl_serial(&expired_up)))
        ),
        Some(openssl_not_after(&expired_up) as f64)
    );
    // The valid entries verify; the skipped one is not a key any more.
    let body = fixture("wechat", "v3_pay.json");
    let now = unix_now();
    let good = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        now,
        "rotationNonce001",
        &body,
    );
    assert_eq!(
        gw.send_owned("/notify/wechat-v3", &good, &body)
            .await
            .status,
        200
    );
    let old = v3_headers(
        "expired_private.pem",
        &expired_serial,
        now,
        "rotationNonce002",
        &body,
    );
    assert_eq!(
        gw.send_owned("/notify/wechat-v3", &old, &body).await.status,
        401
    );
    let r = gw
        .post_form(
            "/notify/unionpay",
            &fixture("unionpay", "v500_payment.form"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn check_says_when_a_listed_v3_certificate_becomes_valid() {
    // Listed ahead of a rotation, as it should be; until its start every
    // notification signed with it is refused, which check says.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = GatewaySpec::new(vec![RouteSpec::wechat_v3(&up)]).write(dir.path());
    let (code, out, err) = callgate_cli(&["check"], &file);
    assert_eq!((code, out.trim()), (0, "ok: 1 routes"), "{err}");
    let want = format!(
        "warning: platform_keys: certificate `{WECHAT_FUTURE_SERIAL}` is not valid until 2099-"
    );
    assert!(err.contains(&want), "{err}");
}
