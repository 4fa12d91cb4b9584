#!/usr/bin/env bash
# Runs the demo legacy shop and callgate in front of it, from anywhere:
#   the shop:   php -S 127.0.0.1:8080 (public/ + router.php), data in data/
#   callgate:   https://127.0.0.1:8443 (demo TLS pair), admin http://127.0.0.1:9090
# Ctrl-C stops both. README.md beside this file says what to send it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v php >/dev/null 2>&1 || ! php -m 2>/dev/null | grep -x pdo_sqlite >/dev/null; then
  echo "run.sh: needs PHP with PDO SQLite: sudo apt-get install -y php-cli php-sqlite3" >&2
  exit 1
fi

mkdir -p "$here/data/logs"
# php -S prints one line per request on stderr; keep them out of the way.
php -S 127.0.0.1:8080 -t "$here/public" "$here/router.php" 2>>"$here/data/logs/php-server.log" &
php_pid=$!
trap 'kill "$php_pid" 2>/dev/null || true' EXIT
echo "shop:     http://127.0.0.1:8080/   (logs in $here/data/logs/)"

cd "$here/../.."
cargo run --release -- run -c examples/legacy-shop/callgate.toml
