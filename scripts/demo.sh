#!/usr/bin/env bash
# A real demo of kiln's main job, on a throwaway node: init a project, push a sample app with
# git, watch it build, bake and go live, curl it; then push a change that breaks mid-deploy and
# watch kiln roll run/ and data/ back while the app keeps answering.
# Usage: scripts/demo.sh [DIR]  (default: a new temp dir). The app keeps running afterwards:
# `kiln --root DIR/node ps scale shop web=0` stops it, and removing DIR stops everything.
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

echo "==> a sample app: a build step, a web process in its Procfile, a migration"
app="$work/shop-app"
rm -rf "$app" && mkdir -p "$app" && cd "$app"
git init -q -b master
cat > kiln.yml <<'YML'
keep: 3
stages:
  build:
    - mkdir -p public && echo "<h1>shop $KILN_COMMIT</h1>" > public/index.html
  deploy:
    - echo "visits=0" > "$KILN_DATA_DIR/counter" && test -f "$KILN_DATA_DIR/counter"
YML
cat > Procfile <<'PROCFILE'
web: python3 -m http.server --bind 127.0.0.1 --directory public $PORT
PROCFILE
echo "hello" > README
git add -A && git commit -q -m "first version"
git remote add kiln "$root/shop/git/project.git"

echo "==> git push kiln master"
git push kiln master
echo "==> kiln ps shop"
kiln ps shop
port=$(kiln ps shop --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["instances"][0]["port"])')
echo "==> curl http://127.0.0.1:$port/"
curl -fsS "http://127.0.0.1:$port/"
echo "==> the live tree and the data"
ls -l "$root/shop/run" "$root/shop/run/public"
cat "$root/shop/data/counter"

echo "==> a change whose deploy step corrupts the data and then fails"
cat > kiln.yml <<'YML'
keep: 3
stages:
  build:
    - mkdir -p public && echo "<h1>shop v2 $KILN_COMMIT</h1>" > public/index.html
  deploy:
    - echo "CORRUPTED" > "$KILN_DATA_DIR/counter"
    - echo "migration failed" >&2; exit 3
YML
git commit -q -am "broken migration"
git push kiln master || true

echo "==> after the failed push: the first version still answers, data/ is intact"
curl -fsS "http://127.0.0.1:$port/"
cat "$root/shop/run/public/index.html"
cat "$root/shop/data/counter"
grep -q "visits=0" "$root/shop/data/counter"
grep -q "<h1>shop [0-9a-f]" "$root/shop/run/public/index.html"
curl -fsS "http://127.0.0.1:$port/" | grep -q "<h1>shop [0-9a-f]"
kiln ps shop
kiln logs shop --app -n 4
kiln releases shop
kiln status shop
echo "==> demo done: everything is under $work (the app still runs: \`kiln --root $root ps scale shop web=0\` stops it)"
