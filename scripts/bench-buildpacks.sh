#!/usr/bin/env bash
# Build speed with buildpacks (issue 11; results in BENCHMARKS.md, "Buildpacks"): push times
# of a Python app (gunicorn and six from PyPI) and a Node app (is-number from npm) built by
# kiln's own buildpacks, against kiln's own no-build push of the same built tree, and Piku's
# pushes of the same apps.
#
#   scripts/bench-buildpacks.sh [--runs N] [--work DIR] [--piku GITDIR]
#
# Per app, timed around `git push` to a local bare repo (the hook deploys before the push
# returns):
#   cold     the first push to a fresh cooking project (empty build cache)
#   warm     a one-line change of the app's code, cache warm (N runs)
#   final    the last 5 of those commits pushed to a final-mode node pulling from staging
#            (the first is its first deploy)
#   nobuild  the tree the buildpack built (.venv/ or node_modules/ included), committed as it
#            is with `buildpacks: []`, pushed once, then a one-line change (N runs)
#   piku     with --piku GITDIR (a clone of github.com/piku/piku; PyPI's `piku` is another
#            project): its piku.py at HEAD, with click and virtualenv from PyPI, takes the
#            first push, then the same one-line changes (N runs). Piku builds in place and
#            starts workers through a uwsgi emperor, which is not run here: its times are
#            the push and build, without starting the app.
# Prints a Markdown table of medians and warm / nobuild (the target is under 3).
#
# Needs a release build (`cargo build --release`), git, python3 with venv, node and npm, and
# the PyPI and npm registries. Installs click and virtualenv (for Piku) into a venv under
# WORK, nothing else. WORK (default /var/tmp/kiln-bench-buildpacks) is wiped first.
set -euo pipefail

RUNS=5
WORK=/var/tmp/kiln-bench-buildpacks
PIKU=
while (($#)); do
    case $1 in
    --runs) RUNS=$2; shift ;;
    --work) WORK=$2; shift ;;
    --piku) PIKU=$2; shift ;;
    -h | --help) sed -n "2,30p" "$0"; exit 0 ;;
    *) echo "error: unknown option \`$1\` (see --help)" >&2; exit 2 ;;
    esac
    shift
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
KILN=$REPO/target/release/kiln
if [[ ! -x $KILN ]]; then
    echo "error: no release build at $KILN: run \`cargo build --release\` first" >&2
    exit 2
fi
for tool in git python3 node npm; do
    command -v "$tool" >/dev/null || { echo "error: \`$tool\` is not installed" >&2; exit 2; }
done

rm -rf "$WORK"
mkdir -p "$WORK"
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
results=$WORK/results.tsv
: >"$results"

now() { date +%s.%N; }

# timed_push DIR REMOTE REV: pushes REV to master of REMOTE; prints the seconds it took.
# Fails (showing the output) unless the deploy said it deployed.
timed_push() {
    local t0 t1 out
    t0=$(now)
    out=$(git -C "$1" push -f "$2" "$3:refs/heads/master" 2>&1) || { echo "$out" >&2; return 1; }
    t1=$(now)
    if [[ $4 == kiln ]] && ! grep -q -- "-----> deployed" <<<"$out"; then
        echo "$out" >&2
        return 1
    fi
    python3 -c "print(f'{$t1 - $t0:.3f}')"
}

record() { # APP WHAT SECONDS
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$results"
    printf '  %-7s %-8s %ss\n' "$1" "$2" "$3"
}

# one_line_change DIR FILE N: appends a comment line and commits; prints the commit.
one_line_change() {
    local comment='#'
    [[ $2 == *.js ]] && comment='//'
    echo "$comment change $3" >>"$1/$2"
    git -C "$1" commit -qam "change $3"
    git -C "$1" rev-parse HEAD
}

python_app() { # DIR
    mkdir -p "$1"
    git -C "$1" init -q -b master
    printf 'gunicorn==23.0.0\nsix==1.16.0\n' >"$1/requirements.txt"
    cat >"$1/app.py" <<'EOF'
import six


def app(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('hello, six ' + six.__version__ + '\n').encode()]
EOF
    echo 'web: gunicorn app:app --bind 127.0.0.1:$PORT' >"$1/Procfile"
    git -C "$1" add -A
    git -C "$1" commit -qm app
}

node_app() { # DIR
    mkdir -p "$1"
    git -C "$1" init -q -b master
    cat >"$1/package.json" <<'EOF'
{
  "name": "benchapp",
  "version": "1.0.0",
  "private": true,
  "scripts": {"start": "node server.js"},
  "dependencies": {"is-number": "7.0.0"}
}
EOF
    cat >"$1/server.js" <<'EOF'
const http = require('http');
const isNumber = require('is-number');
http.createServer((req, res) => res.end('hello ' + isNumber(5) + '\n')).listen(Number(process.env.PORT), '127.0.0.1');
EOF
    (cd "$1" && npm install --package-lock-only --no-audit --no-fund >/dev/null 2>&1)
    echo 'web: node server.js' >"$1/Procfile"
    git -C "$1" add -A
    git -C "$1" commit -qm app
}

bench_kiln() { # NAME SOURCE_FILE MAKE_APP
    local name=$1 file=$2 make=$3
    local dir=$WORK/$name
    local app=$dir/app staging=$dir/staging prod=$dir/production
    echo "$name:"
    "$make" "$app"
    "$KILN" --root "$staging" init "$name" --mode cooking >/dev/null
    t=$(timed_push "$app" "$staging/$name/git/project.git" HEAD kiln)
    record "$name" cold "$t"
    local commits=()
    for i in $(seq "$RUNS"); do
        commits+=("$(one_line_change "$app" "$file" "$i")")
        t=$(timed_push "$app" "$staging/$name/git/project.git" HEAD kiln)
        record "$name" warm "$t"
    done
    "$KILN" --root "$prod" init "$name" --mode final --source "$staging/$name" >/dev/null
    # Staging keeps 5 releases (kiln.yml `keep`): production can pull only those.
    for commit in "${commits[@]: -5}"; do
        t=$(timed_push "$app" "$prod/$name/git/project.git" "$commit" kiln)
        record "$name" final "$t"
    done

    # The same built tree, pushed as it is: what a push costs without any build.
    local built=$dir/built nobuild=$dir/nobuild
    mkdir -p "$built"
    cp -a "$staging/$name/run/." "$built/"
    echo 'buildpacks: []' >"$built/kiln.yml"
    git -C "$built" init -q -b master
    git -C "$built" add -A
    git -C "$built" commit -qm built
    "$KILN" --root "$nobuild" init "$name" --mode cooking >/dev/null
    timed_push "$built" "$nobuild/$name/git/project.git" HEAD kiln >/dev/null
    for i in $(seq "$RUNS"); do
        one_line_change "$built" "$file" "$i" >/dev/null
        t=$(timed_push "$built" "$nobuild/$name/git/project.git" HEAD kiln)
        record "$name" nobuild "$t"
    done
}

bench_piku() { # NAME SOURCE_FILE MAKE_APP
    local name=$1 file=$2 make=$3
    local dir=$WORK/piku-$name
    local app=$dir/app
    export PIKU_ROOT=$dir/.piku
    echo "piku $name:"
    "$make" "$app"
    "$WORK/piku-venv/bin/python" "$WORK/piku.py" setup >/dev/null
    # What `piku git-receive-pack` does on the first push over SSH.
    git init -q --bare "$PIKU_ROOT/repos/$name"
    printf '#!/usr/bin/env bash\nset -e; set -o pipefail;\ncat | PATH="%s:$PATH" PIKU_ROOT="%s" "%s" "%s" git-hook %s\n' \
        "$WORK/piku-venv/bin" "$PIKU_ROOT" "$WORK/piku-venv/bin/python" "$WORK/piku.py" "$name" \
        >"$PIKU_ROOT/repos/$name/hooks/post-receive"
    chmod +x "$PIKU_ROOT/repos/$name/hooks/post-receive"
    t=$(timed_push "$app" "$PIKU_ROOT/repos/$name" HEAD piku)
    record "piku-$name" cold "$t"
    for i in $(seq "$RUNS"); do
        one_line_change "$app" "$file" "$i" >/dev/null
        t=$(timed_push "$app" "$PIKU_ROOT/repos/$name" HEAD piku)
        record "piku-$name" warm "$t"
    done
    unset PIKU_ROOT
}

bench_kiln python app.py python_app
bench_kiln node server.js node_app

piku_note=
if [[ -n $PIKU ]]; then
    if git --git-dir "$PIKU" show HEAD:piku.py >"$WORK/piku.py" &&
        python3 -m venv "$WORK/piku-venv" &&
        "$WORK/piku-venv/bin/pip" install -q click virtualenv >"$WORK/piku-install.log" 2>&1; then
        echo "piku: $(git --git-dir "$PIKU" log -1 --format='%h %cs')"
        bench_piku python app.py python_app || piku_note="Piku's python push failed: see above"
        bench_piku node server.js node_app || piku_note="$piku_note Piku's node push failed: see above"
    else
        piku_note="Piku did not install: $(tail -n 1 "$WORK/piku-install.log")"
    fi
fi

python3 - "$results" "$piku_note" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    app, what, secs = line.split("\t")
    rows.setdefault((app, what), []).append(float(secs))
def med(app, what):
    values = rows.get((app, what))
    return statistics.median(values) if values else None
def cell(value):
    return "—" if value is None else f"{value:.2f} s"
print()
print("| app | cold push | warm push (one-line change) | final-mode push | no-build push of the built tree | warm / no-build | Piku cold | Piku warm |")
print("|---|---|---|---|---|---|---|---|")
for app in ("python", "node"):
    warm, nobuild = med(app, "warm"), med(app, "nobuild")
    ratio = f"{warm / nobuild:.2f}" if warm and nobuild else "—"
    print(f"| {app} | {cell(med(app, 'cold'))} | {cell(warm)} | {cell(med(app, 'final'))} | {cell(nobuild)} | {ratio} | {cell(med('piku-' + app, 'cold'))} | {cell(med('piku-' + app, 'warm'))} |")
if sys.argv[2]:
    print()
    print(sys.argv[2])
EOF
