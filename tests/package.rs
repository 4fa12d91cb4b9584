//! The Debian package as an operator installs it: `packaging/deb/build.sh`
//! builds it around the binary this test run already built (the release
//! build is the same code), `dpkg-deb -x` unpacks it, and the packaged
//! binary checks the packaged configuration. The package must hold
//! everything the README's Install section promises.

mod support;

use std::path::{Path, PathBuf};

use support::*;

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}:\n{text}");
    text
}

/// Builds the package into `out` and returns its path.
fn build(out: &Path) -> PathBuf {
    let printed = run(tool("bash")
        .arg(root().join("packaging/deb/build.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_callgate"))
        .arg("--out")
        .arg(out)
        // xz over a debug binary takes minutes; the release build compresses.
        .arg("--uncompressed"));
    PathBuf::from(printed.trim())
}

#[test]
fn the_debian_package_holds_what_an_operator_needs_and_its_configuration_checks() {
    let work = tempfile::tempdir().unwrap();
    let deb = build(work.path());
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("callgate_{}_", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );
    let info = run(tool("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: callgate"), "{info}");
    assert!(
        info.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );

    let root = work.path().join("root");
    run(tool("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let control = work.path().join("control");
    run(tool("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    for file in [
        "usr/bin/callgate",
        "lib/systemd/system/callgate.service",
        "usr/lib/sysusers.d/callgate.conf",
        "etc/callgate/callgate.toml",
        "etc/callgate/rules/example.toml.disabled",
        "etc/callgate/rules/ipsets/wechatpay.toml",
        "usr/share/bash-completion/completions/callgate",
        "usr/share/zsh/vendor-completions/_callgate",
        "usr/share/fish/vendor_completions.d/callgate.fish",
        "usr/share/man/man1/callgate.1.gz",
        "usr/share/man/man1/callgate-check.1.gz",
        "usr/share/man/man1/callgate-run.1.gz",
        "usr/share/doc/callgate/README.md",
        "usr/share/doc/callgate/rules.md",
        "usr/share/doc/callgate/prometheus/alerts.yml",
        "usr/share/doc/callgate/grafana/callgate.json",
    ] {
        assert!(root.join(file).is_file(), "{file} is not in the package");
    }
    assert!(
        root.join("var/lib/callgate").is_dir(),
        "no /var/lib/callgate"
    );

    // The unit runs the packaged binary on the packaged file, and checks
    // before a reload.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/callgate.service")).unwrap();
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    assert!(
        unit.contains("\nExecStart=/usr/bin/callgate run -c /etc/callgate/callgate.toml"),
        "{unit}"
    );
    let reload: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(
        reload,
        [
            "/usr/bin/callgate check -c /etc/callgate/callgate.toml",
            "/bin/kill -HUP $MAINPID"
        ]
    );
    let sysusers = std::fs::read_to_string(root.join("usr/lib/sysusers.d/callgate.conf")).unwrap();
    assert!(sysusers.contains("u callgate "), "{sysusers}");

    // The operator's edits survive upgrades; the scripts make the user.
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/callgate/callgate.toml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("systemd-sysusers"), "{postinst}");
    // The service reads its configuration as user callgate: the shipped
    // files are 0640 root, so their group must become callgate.
    assert!(
        postinst.contains("chgrp -R callgate /etc/callgate\n"),
        "{postinst}"
    );
    for file in conffiles.lines() {
        let mode = std::fs::metadata(root.join(file.trim_start_matches('/')))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o640, "{file}");
    }

    // Generated from the binary's own command line.
    let man = run(tool("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/callgate-check.1.gz")));
    assert!(man.contains(".TH callgate-check 1"), "{man}");
    assert!(man.contains("dump"), "{man}");
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/callgate"))
        .unwrap();
    assert!(bash.contains("complete -F _callgate"), "{bash:.300}");

    // The packaged binary accepts the packaged configuration, and writes
    // nothing while checking it.
    let etc = root.join("etc/callgate");
    let before = std::fs::read_dir(&etc).unwrap().count();
    let out = tool(root.join("usr/bin/callgate").to_str().unwrap())
        .args(["check", "--dump", "-c"])
        .arg(etc.join("callgate.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.ends_with("ok: 0 routes\n"), "{stdout}");
    assert!(
        stdout.contains("dir = \"/var/lib/callgate/journal\""),
        "{stdout}"
    );
    // Only the reminder that no route is defined yet: no demo key, no open allow list.
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("no *.toml file here defines a route"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&etc).unwrap().count(), before);
    assert!(!root.join("var/lib/callgate/journal").exists());
}
