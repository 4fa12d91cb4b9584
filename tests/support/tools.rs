//! The programs the test suite runs, and the one check that they are there.
//!
//! Every test that starts an outside program (openssl, redis-server, php,
//! promtool, ...) gets its `Command` from [`tool`]. The first call in a test
//! process checks for every program of [`TOOLS`] at once; when any is
//! missing it prints one message naming the Debian packages to install and
//! ends the process, so `cargo test` stops at that test binary instead of
//! failing deep inside a test with a bare "No such file or directory".
//! `bash .ci/run` installs the same packages before it runs the suite.
//!
//! This file has no dependencies beyond std: `tests/support/mod.rs` and the
//! library's own unit tests (`#[path]`) both include it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

/// Every program the suite runs, with the Debian package that installs it.
/// `.ci/run` installs exactly these packages (`tests/docs.rs` compares).
pub const TOOLS: &[(&str, &str)] = &[
    // Independent signer for fixtures and checks of X-Callgate-Signature.
    ("openssl", "openssl"),
    // The Redis replay store's tests run a real server and read it back.
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    // The failover tests' Sentinel deployment.
    ("redis-sentinel", "redis-sentinel"),
    // The legacy PHP shop (PDO SQLite, checked below) and its database.
    ("php", "php-cli"),
    ("sqlite3", "sqlite3"),
    // deploy/: alert rules and their unit tests, the systemd unit.
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
    // Signals to a running `callgate run` (SIGHUP, SIGTERM).
    ("kill", "procps"),
    // Building and unpacking the Debian package.
    ("dpkg-deb", "dpkg"),
    // The console, rendered by a real browser (headless) in tests/console.rs.
    ("chromium", "chromium"),
];

/// The PHP extension the legacy shop needs, and its package.
const PHP_PDO_SQLITE: (&str, &str) = ("pdo_sqlite", "php-sqlite3");

static CHECKED: Once = Once::new();

/// A `Command` for `program`, after the suite's tools were found (the first
/// call checks them all; when any is missing the process ends with one
/// message naming the packages to install).
pub fn tool(program: &str) -> Command {
    require_tools();
    Command::new(program)
}

/// Checks, once per process, that every program of [`TOOLS`] is installed;
/// when not, prints which Debian packages to install and exits with status 2.
pub fn require_tools() {
    CHECKED.call_once(|| {
        let missing = missing_packages();
        if missing.is_empty() {
            return;
        }
        // Straight to the process's stderr: the test harness captures
        // `eprintln!`, and this line must be seen.
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "\n\ncallgate's tests need programs that are not installed. Install them with\n\n    \
             sudo apt-get install -y --no-install-recommends {}\n\n\
             or run `bash .ci/run`, which installs what is missing and runs the whole suite.\n",
            missing.join(" ")
        );
        let _ = err.flush();
        std::process::exit(2);
    });
}

/// The Debian packages of the tools that are missing, in [`TOOLS`] order.
pub fn missing_packages() -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = TOOLS
        .iter()
        .filter(|(program, _)| find_in_path(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    let php_has_pdo_sqlite = find_in_path("php").is_some_and(|php| {
        Command::new(php)
            .arg("-m")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == PHP_PDO_SQLITE.0)
            })
            .unwrap_or(false)
    });
    if !php_has_pdo_sqlite {
        missing.push(PHP_PDO_SQLITE.1);
    }
    missing.dedup();
    missing
}

/// The executable `program` on `PATH`, like `command -v`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
