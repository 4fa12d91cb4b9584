#!/usr/bin/env bash
# Runs one cargo-fuzz target (or `all`, each in turn) for a bounded time.
#   fuzz/run.sh TARGET SECONDS
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain
# (libFuzzer's instrumentation needs -Zsanitizer). Prints libFuzzer's final
# statistics; exits non-zero if the target crashed (the input is kept in
# fuzz/artifacts/TARGET/).
set -euo pipefail
cd "$(dirname "$0")"

targets=(form xml json v3_headers jd_envelope pem rules)
if [ $# -ne 2 ]; then
  echo "usage: $0 TARGET|all SECONDS   (targets: ${targets[*]})" >&2
  exit 2
fi
target=$1
secs=$2
if [ "$target" = all ]; then
  status=0
  for t in "${targets[@]}"; do
    "$0" "$t" "$secs" || status=1
  done
  exit $status
fi
if [ ! -d "seeds/$target" ]; then
  echo "unknown target $target (targets: ${targets[*]})" >&2
  exit 2
fi

toolchain=${CALLGATE_FUZZ_TOOLCHAIN:-nightly}
# CALLGATE_FUZZ_BIN_DIR: run already-built binaries from there (no rebuild).
bin_dir=${CALLGATE_FUZZ_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
  cargo "+$toolchain" fuzz build --release --debug-assertions "$target"
  bin_dir=target/x86_64-unknown-linux-gnu/release
fi
mkdir -p "corpus/$target" "artifacts/$target"
log="artifacts/$target.log"
echo "== fuzz $target for ${secs}s (cargo-fuzz build, libFuzzer, +$toolchain), log in fuzz/$log"
set +e
"$bin_dir/$target" "corpus/$target" "seeds/$target" \
  -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
  -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1
rc=$?
set -e
grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)|stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added' "$log" || true
crashes=$(find "artifacts/$target" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l)
echo "target=$target seconds=$secs exit=$rc crashes=$crashes corpus=$(ls "corpus/$target" | wc -l)"
exit $rc
