#!/usr/bin/env bash
# The restart window of a deploy (BENCHMARKS.md, "Restart window"): how long no process accepts
# connections on a Python web app's port while `git push` deploys a one-line change, measured
# from outside by scripts/restart_window.py (a connect() every 2 ms). Two apps: a standard
# library http.server app, and a WSGI app served by gunicorn from PyPI (in a venv the build
# makes). Usage: scripts/restart-window.sh [--runs N] [--work DIR]   (default 10 runs)
# Set KILN=/path/to/kiln to use a built binary instead of `cargo build --release`.
set -euo pipefail

runs=10
work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--work DIR]" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${KILN:-}" ]; then
  cargo build --release --quiet --bin kiln --manifest-path "$here/Cargo.toml"
  KILN="$here/target/release/kiln"
fi
work=${work:-$(mktemp -d -t kiln-window.XXXXXX)}
mkdir -p "$work" && work=$(cd "$work" && pwd)
root="$work/node"
kiln() { "$KILN" --root "$root" "$@"; }
# Everything this script started stops with it: removing the node root ends the supervisor.
trap 'rm -rf "$root"' EXIT
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
export PIP_CACHE_DIR="$work/pip-cache"
mkdir -p "$root"
printf 'supervisor:\n  backend: kiln\n  ports: 20900-20949\n' > "$root/node.yml"

stdlib_app() {
  cat > app.py <<'PY'
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = open('message.txt', 'rb').read()
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), Handler).serve_forever()
PY
  echo 'web: python3 app.py' > Procfile
}

gunicorn_app() {
  cat > app.py <<'PY'
def app(environ, start_response):
    data = open('message.txt', 'rb').read()
    start_response('200 OK', [('Content-Length', str(len(data)))])
    return [data]
PY
  cat > kiln.yml <<'YML'
stages:
  build:
    - python3 -m venv --copies .venv && .venv/bin/pip install -q gunicorn==23.0.0
YML
  echo 'web: .venv/bin/python -m gunicorn --bind 127.0.0.1:$PORT --workers 2 app:app' > Procfile
}

echo "kind,run,window_seconds,windows,kiln_stopped_seconds,push_seconds"
for kind in stdlib gunicorn; do
  kiln init "$kind" --mode cooking >/dev/null
  app="$work/app-$kind"
  rm -rf "$app" && mkdir -p "$app" && cd "$app"
  git init -q -b master
  "${kind}_app"
  echo "v0" > message.txt
  git add -A && git commit -q -m v0
  if ! git push "$root/$kind/git/project.git" HEAD:master >"$work/push-$kind.log" 2>&1 ||
    ! grep -q -- "-----> deployed" "$work/push-$kind.log"; then
    echo "the first push of the $kind app did not deploy:" >&2
    cat "$work/push-$kind.log" >&2
    exit 1
  fi
  port=$(kiln ps "$kind" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["instances"][0]["port"])')
  for run in $(seq 1 "$runs"); do
    echo "v$run" > message.txt
    git commit -q -am "v$run"
    result=$("$here/scripts/restart_window.py" --port "$port" -- \
      git push -q "$root/$kind/git/project.git" HEAD:master)
    stopped=$(grep -h "services were stopped for" "$root/$kind/logs/"*.log | tail -1 | sed 's/.*stopped for \([0-9.]*\)s.*/\1/')
    echo "$result" | python3 -c "
import json, sys
r = json.load(sys.stdin)
assert r['command_status'] == 0 and not r['still_down'], r
print('$kind,$run,%.3f,%d,$stopped,%.2f' % (r['window_seconds'], r['windows'], r['command_seconds']))"
    test "$(curl -fsS "http://127.0.0.1:$port/")" = "v$run"
  done
done
