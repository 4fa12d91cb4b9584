//! Rule files: the input is the only rule file of a gateway, loaded with
//! `callgate::config::load` (the loader behind `check`, start-up and
//! reload). `../certs` next to it is the repository's `certs/`, so seeds
//! copied from the shipped `rules/` load real demo keys.
#![no_main]

use callgate_fuzz::*;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn gateway_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("callgate-fuzz-rules-{}", std::process::id()));
        let file = write_config(&dir);
        // Relative paths in the fuzzed rule file resolve from rules/.
        let _ = std::fs::remove_dir_all(dir.join("rules"));
        std::fs::create_dir_all(dir.join("rules")).expect("rules dir");
        // The shipped demo rules (the seeds) name ../certs/dev/...: link it.
        let certs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../certs");
        let _ = std::fs::remove_file(dir.join("certs"));
        let _ = std::os::unix::fs::symlink(certs, dir.join("certs"));
        file
    })
}

fuzz_target!(|data: &[u8]| {
    let file = gateway_file();
    let rules = file.parent().expect("dir").join("rules/routes.toml");
    std::fs::write(&rules, data).expect("write rule file");
    let _ = callgate::config::load(file);
});
