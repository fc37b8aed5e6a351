#!/usr/bin/env bash
# A real demo of kiln's main job, on a throwaway node: init a project, push a small Python web
# app (gunicorn from PyPI, a SQLite database in data/) with git and no build script: kiln's
# python buildpack builds it, kiln's supervisor runs it, curl talks to it. Then push a change
# whose migration corrupts the database and fails, and watch kiln roll run/ and data/ back while
# a load loop keeps hitting the app: not one request fails.
# Usage: scripts/demo.sh [DIR]  (default: a new temp dir). Needs git, python3 with venv, curl
# and PyPI. The app keeps running afterwards: `kiln --root DIR/node stop shop` stops it,
# `kiln --root DIR/node supervise --stop` stops the node's supervisor.
# Set KILN=/path/to/kiln to use a built binary instead of building one with cargo.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${KILN:-}" ]; then
  echo "==> building kiln (cargo build --release)"
  cargo build --release --quiet --manifest-path "$here/Cargo.toml"
  KILN="$here/target/release/kiln"
fi
work=${1:-$(mktemp -d -t kiln-demo.XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
root="$work/node"
kiln() { "$KILN" --root "$root" "$@"; }
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.invalid
export GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.invalid

echo "==> a throwaway node under $root"
kiln init shop --mode cooking

echo "==> a sample app: a WSGI app, its requirements, a Procfile with a web process and a migration"
app="$work/shop-app"
rm -rf "$app" && mkdir -p "$app" && cd "$app"
git init -q -b master
cat > app.py <<'PY'
import os
import sqlite3

VERSION = "v1"
DB = os.path.join(os.environ["KILN_DATA_DIR"], "shop.db")


def app(environ, start_response):
    with sqlite3.connect(DB, timeout=10) as db:
        db.execute("UPDATE visits SET n = n + 1")
        (n,) = db.execute("SELECT n FROM visits").fetchone()
    body = f"shop {VERSION}: visit {n}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
PY
cat > migrate.py <<'PY'
import os
import sqlite3

with sqlite3.connect(os.path.join(os.environ["KILN_DATA_DIR"], "shop.db")) as db:
    db.execute("CREATE TABLE IF NOT EXISTS visits (n INTEGER NOT NULL)")
    if db.execute("SELECT COUNT(*) FROM visits").fetchone()[0] == 0:
        db.execute("INSERT INTO visits VALUES (0)")
print("migrated")
PY
echo "gunicorn==23.0.0" > requirements.txt
# What Python writes beside the code as it runs: not a manual edit of run/ for kiln to keep.
echo "__pycache__/" > .gitignore
cat > Procfile <<'PROCFILE'
web: gunicorn app:app --bind 127.0.0.1:$PORT --workers 2
release: python migrate.py
PROCFILE
# kiln holds the web port and hands it to gunicorn: while the app restarts, requests wait in
# the kernel's queue instead of failing.
echo "socket_activation: true" > kiln.yml
git add -A && git commit -q -m "first version"
git remote add kiln "$root/shop/git/project.git"

echo "==> git push kiln master"
git push kiln master
echo "==> kiln ps shop"
kiln ps shop
port=$(kiln ps shop --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["instances"][0]["port"])')
echo "==> curl http://127.0.0.1:$port/"
curl -fsS "http://127.0.0.1:$port/"
curl -fsS "http://127.0.0.1:$port/"

echo "==> a change whose migration corrupts the database and then fails, pushed under load"
sed -i 's/VERSION = "v1"/VERSION = "v2"/' app.py
cat > migrate.py <<'PY'
import os
import sqlite3
import sys

with sqlite3.connect(os.path.join(os.environ["KILN_DATA_DIR"], "shop.db")) as db:
    db.execute("DROP TABLE visits")
print("migration failed half-way", file=sys.stderr)
sys.exit(3)
PY
git commit -q -am "v2 with a broken migration"
load="$work/load.txt"
: > "$load"
(
  while [ ! -e "$work/stop-load" ]; do
    curl -sS -o /dev/null -w '%{http_code}\n' --max-time 10 "http://127.0.0.1:$port/" >> "$load" 2>/dev/null ||
      echo "failed" >> "$load"
  done
) &
loader=$!
trap 'touch "$work/stop-load"' EXIT
sleep 0.5
git push kiln master || true
sleep 0.5
touch "$work/stop-load"
wait "$loader"

echo "==> after the failed push: v1 still answers, its database intact"
total=$(wc -l < "$load")
failed=$(grep -cv '^200$' "$load" || true)
echo "load loop during the push: $total requests, $failed failed"
curl -fsS "http://127.0.0.1:$port/"
test "$failed" -eq 0
curl -fsS "http://127.0.0.1:$port/" | grep -q "^shop v1: visit "
grep -q 'VERSION = "v1"' "$root/shop/run/app.py"
kiln ps shop
kiln logs shop --app -n 4
kiln releases shop
kiln status shop
echo "==> demo done: everything is under $work (the app still runs: \`kiln --root $root stop shop\` stops it)"
