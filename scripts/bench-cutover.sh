#!/usr/bin/env bash
# No failed request (BENCHMARKS.md, "No failed request"): requests through the same
# node-private nginx while four operations run — a good deploy, a deploy that fails its check
# and rolls back, a rollback, a restart — for the same WSGI app served by gunicorn (PyPI, 2
# workers, a 1 s migration in every deploy), run five ways in one go:
#
#   socket        kiln, `socket_activation: true`, `cutover: stop` (the default cutover)
#   overlap       kiln, `socket_activation: true`, `cutover: overlap`
#   port          kiln, the app binds $PORT itself, `cutover: stop`
#   overlap-port  kiln, the app binds $PORT itself, `cutover: overlap`
#   plain         what Piku does: stop gunicorn, switch the code, migrate, start it again (a
#                 shell script, no kiln), nginx in front pointing at its port
#
# scripts/cutover_load.py sends the requests (4 clients, a connection each, a 2 ms pause).
# Prints a Markdown table per operation and way: requests sent while it ran, how many failed
# (no answer or a 5xx) and for how long (first failed request sent to last one answered), how
# many took over 100 ms, the longest latency, p50 and p99, then the same for the requests sent
# during the switch (from the old start's last answered request to the new start's first
# answer: scripts/cutover_load.py), how long the operation took; over N runs requests,
# failures and slow ones are summed, the longest is the longest, the rest are medians.
#
#   scripts/bench-cutover.sh [--runs N] [--work DIR]      (default 3 runs)
#
# Needs git, python3 with venv, nginx, and PyPI (gunicorn). Set KILN=/path/to/kiln to use a
# built binary instead of `cargo build --release`. WORK (default a new temp dir) holds
# everything; the node's processes and nginx are stopped at the end.
set -euo pipefail

runs=3
work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "error: unknown option \`$1\` (see --help)" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
for tool in git python3 nginx curl; do
  command -v "$tool" >/dev/null || { echo "error: \`$tool\` is not installed" >&2; exit 2; }
done
if [ -z "${KILN:-}" ]; then
  cargo build --release --quiet --bin kiln --manifest-path "$here/Cargo.toml"
  KILN="$here/target/release/kiln"
fi
work=${work:-$(mktemp -d -t kiln-cutover.XXXXXX)}
mkdir -p "$work" && work=$(cd "$work" && pwd)
root="$work/node"
kiln() { "$KILN" --root "$root" "$@"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
plain_pid="$work/plain/gunicorn.pid"
cleanup() {
  [ -f "$plain_pid" ] && kill "$(cat "$plain_pid")" 2>/dev/null || true
  [ -d "$root" ] && kiln proxy stop >/dev/null 2>&1 || true
  # Removing the node root ends the supervisor and every process it runs.
  rm -rf "$root"
}
trap cleanup EXIT
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
export PIP_CACHE_DIR="$work/pip-cache"
rm -rf "$root" && mkdir -p "$root"
http=$(free_port)
cat > "$root/node.yml" <<YML
supervisor:
  backend: kiln
  ports: 20950-20999
proxy:
  nginx:
    private: true
    listen: ['127.0.0.1:$http']
YML
results="$work/results.jsonl"
: > "$results"

write_app() { # dir version binds_port(yes|no) cutover
  local dir=$1
  mkdir -p "$dir"
  # The second line tells one start of the app from the next (gunicorn's master: the workers'
  # parent), for the switch figures.
  cat > "$dir/app.py" <<'PY'
import os
VERSION = open("version.txt").read().strip()
def app(environ, start_response):
    body = ("%s\n%d\n" % (VERSION, os.getppid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
PY
  echo "$2" > "$dir/version.txt"
  echo "gunicorn==23.0.0" > "$dir/requirements.txt"
  echo 'web: gunicorn app:app --bind 127.0.0.1:$PORT --workers 2' > "$dir/Procfile"
  local socket=true
  [ "$3" = yes ] && socket=false
  printf 'socket_activation: %s\ncutover: %s\nstages:\n  deploy: ["sleep 1"]\n' "$socket" "$4" > "$dir/kiln.yml"
}

measure() { # way operation command...
  local way=$1 op=$2
  shift 2
  local out
  out=$("$here/scripts/cutover_load.py" --port "$http" --host "$way.bench" -- "$@")
  echo "{\"way\": \"$way\", \"operation\": \"$op\", \"result\": $out}" >> "$results"
  echo "$way $op: $out" >&2
}

# The kiln ways: one cooking project each, deployed with git push.
kiln_ways="socket overlap port overlap-port"
for way in $kiln_ways; do
  kiln init "$way" --mode cooking >/dev/null
  kiln domains add "$way" "$way.bench" >/dev/null
  binds=no cutover=stop
  case $way in
    overlap) cutover=overlap ;;
    port) binds=yes ;;
    overlap-port) binds=yes cutover=overlap ;;
  esac
  app="$work/app-$way"
  rm -rf "$app"
  write_app "$app" v0 "$binds" "$cutover"
  (cd "$app" && git init -q -b master && git add -A && git commit -q -m v0 &&
    git push -q "$root/$way/git/project.git" HEAD:master 2>/dev/null)
done

# The plain way: gunicorn from a venv of its own, started and stopped by this script; each
# version of the app in a directory of its own, `current` the one that runs.
plain="$work/plain"
mkdir -p "$plain/releases"
python3 -m venv "$plain/venv"
"$plain/venv/bin/pip" install -q gunicorn==23.0.0
plain_port=$(free_port)
write_app "$plain/template" v0 yes stop
cp -r "$plain/template" "$plain/releases/v0"
ln -sfn "$plain/releases/v0" "$plain/current"
cat > "$plain/op.sh" <<SH
#!/usr/bin/env bash
# Piku's way: stop the app, switch the code, migrate, start it; a failed check puts the old back.
set -euo pipefail
cd $plain
start() {
  venv/bin/gunicorn --chdir "\$(readlink -f current)" app:app --bind 127.0.0.1:$plain_port \\
    --workers 2 --daemon --pid $plain_pid
  until curl -fsS -o /dev/null http://127.0.0.1:$plain_port/; do sleep 0.01; done
}
stop() {
  local pid; pid=\$(cat $plain_pid)
  kill -TERM "\$pid"
  while kill -0 "\$pid" 2>/dev/null; do sleep 0.01; done
}
release() { rm -rf "releases/\$1"; cp -r template "releases/\$1"; echo "\$1" > "releases/\$1/version.txt"; }
case \$1 in
  start) start ;;
  deploy) release "\$2"; stop; readlink current > previous; ln -sfn "$plain/releases/\$2" current; sleep 1; start ;;
  failed) release "\$2"; stop; old=\$(readlink current); ln -sfn "$plain/releases/\$2" current; sleep 1; start
          sleep 1; stop; ln -sfn "\$old" current; start ;;
  rollback) stop; target=\$(cat previous); readlink current > previous; ln -sfn "\$target" current; sleep 1; start ;;
  restart) stop; start ;;
esac
SH
chmod +x "$plain/op.sh"
"$plain/op.sh" start
kiln init plain --mode cooking >/dev/null
printf 'proxy:\n  upstreams: ["127.0.0.1:%s"]\n' "$plain_port" >> "$root/plain/project.yml"
kiln domains add plain plain.bench >/dev/null
kiln proxy start >/dev/null

for run in $(seq 1 "$runs"); do
  for way in $kiln_ways; do
    app="$work/app-$way"
    repo="$root/$way/git/project.git"
    cd "$app"
    echo "v$run" > version.txt && git commit -q -am "v$run"
    measure "$way" deploy git push -q "$repo" HEAD:master
    cp kiln.yml kiln.yml.good
    printf 'check:\n  command: "false"\n  timeout: 1s\n' >> kiln.yml
    echo "v$run-bad" > version.txt && git commit -q -am "v$run fails its check"
    measure "$way" failed git push -q "$repo" HEAD:master
    mv kiln.yml.good kiln.yml && git commit -q -am "v$run again"
    measure "$way" rollback "$KILN" --root "$root" rollback "$way"
    measure "$way" restart "$KILN" --root "$root" restart "$way"
  done
  measure plain deploy "$plain/op.sh" deploy "v$run"
  measure plain failed "$plain/op.sh" failed "v$run-bad"
  measure plain rollback "$plain/op.sh" rollback
  measure plain restart "$plain/op.sh" restart
done

python3 - "$results" "$runs" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
runs = sys.argv[2]
ways = ["socket", "overlap", "port", "overlap-port", "plain"]
for op in ["deploy", "failed", "rollback", "restart"]:
    print(f"\n{op} ({runs} runs)\n")
    print("| way | requests | failed | failing for s | over 100 ms | longest ms | p50 ms | p99 ms | in the switch | failed there | switch p50 ms | switch p99 ms | operation s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for way in ways:
        rs = [r["result"] for r in rows if r["way"] == way and r["operation"] == op]
        if not rs:
            continue
        # Runs with a switch only: an overlap has none (no request waits for a stop).
        sw = [r for r in rs if r["switch_requests"]]
        median = lambda key: "%.1f" % statistics.median(r[key] for r in sw) if sw else "-"
        print("| %s | %d | %d | %.2f | %d | %.0f | %.1f | %.1f | %d | %d | %s | %s | %.1f |" % (
            way, sum(r["requests"] for r in rs), sum(r["failed"] for r in rs),
            statistics.median(r["failing_seconds"] for r in rs), sum(r["slow"] for r in rs),
            max(r["max_ms"] for r in rs), statistics.median(r["p50_ms"] for r in rs),
            statistics.median(r["p99_ms"] for r in rs),
            sum(r["switch_requests"] for r in rs), sum(r["switch_failed"] for r in rs),
            median("switch_p50_ms"), median("switch_p99_ms"),
            statistics.median(r["command_seconds"] for r in rs)))
PY
