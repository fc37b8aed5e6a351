#!/usr/bin/env bash
# kiln's hot paths against the tools that do the same job, timed side by side in one run.
#
#   scripts/bench.sh [--smoke | --quick | --full] [--out DIR] [--work DIR] [--no-loop]
#
#   --smoke   a few hundred files, one run each: seconds; checks that everything works (CI)
#   --quick   1,000 and 10,000 files (default)
#   --full    1,000, 10,000 and 100,000 files, a changed-fraction sweep, and peak RSS of bake
#             and unpack on a 2 GB tree (about 15 to 25 minutes on 2 cores)
#   --out     where results go (default: WORK/results): raw hyperfine JSON, summary.md,
#             summary.json, time-vs-files.svg, machine.txt
#   --work    scratch directory (default: /var/tmp/kiln-bench); wiped first
#   --no-loop do not mount a journaled ext4 loop image even when running as root
#   --only P  run only these parts, comma-separated: tree, push, rss (default: all); results
#             are added to those already in --out, so a failed part can be run again
#
# Installs nothing. Needs rsync, zstd, hyperfine, GNU tar, git, python3 (standard library
# only) and, for --full, GNU time (/usr/bin/time). See BENCHMARKS.md.
set -euo pipefail

MODE=quick
OUT=
WORK=/var/tmp/kiln-bench
USE_LOOP=1
PARTS=tree,push,rss
while (($#)); do
    case $1 in
    --smoke | --quick | --full) MODE=${1#--} ;;
    --out) OUT=$2; shift ;;
    --work) WORK=$2; shift ;;
    --no-loop) USE_LOOP=0 ;;
    --only) PARTS=$2; shift ;;
    -h | --help) sed -n "2,20p" "$0"; exit 0 ;;
    *) echo "error: unknown option \`$1\` (see --help)" >&2; exit 2 ;;
    esac
    shift
done

REPO=$(cd "$(dirname "$0")/.." && pwd)

# --- tools ----------------------------------------------------------------------------------
missing=()
for tool in rsync zstd hyperfine tar git python3 cargo; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ $MODE == full && ! -x /usr/bin/time ]] && missing+=(/usr/bin/time)
if ((${#missing[@]})); then
    echo "error: missing ${missing[*]}" >&2
    pkgs=()
    for t in "${missing[@]}"; do
        case $t in
        /usr/bin/time) pkgs+=(time) ;;
        cargo) echo "  cargo: install Rust from https://rustup.rs" >&2 ;;
        *) pkgs+=("$t") ;;
        esac
    done
    ((${#pkgs[@]})) && echo "  install with: apt-get install -y ${pkgs[*]}" >&2
    exit 2
fi

# --- scratch space, on a journaled ext4 loop filesystem when we may -------------------------
if mountpoint -q "$WORK/fs" 2>/dev/null; then umount "$WORK/fs"; fi
rm -rf "$WORK"
mkdir -p "$WORK/fs" "$WORK/bin"
FS=$WORK/fs
FS_NOTE="plain filesystem of $WORK"
cleanup() {
    cd /
    if mountpoint -q "$FS" 2>/dev/null; then umount "$FS" || true; fi
    rm -f "$WORK/fs.img"
}
trap cleanup EXIT
if ((USE_LOOP)) && [[ $(id -u) == 0 ]]; then
    case $MODE in smoke) size=2G ;; quick) size=8G ;; full) size=24G ;; esac
    truncate -s "$size" "$WORK/fs.img"
    mkfs.ext4 -q -F "$WORK/fs.img"
    if mount -o loop "$WORK/fs.img" "$FS"; then
        FS_NOTE="journaled ext4 on a loop device ($size sparse image on $(df --output=fstype "$WORK" | tail -1))"
    else
        echo "warning: could not mount a loop filesystem; using the plain filesystem" >&2
        rm -f "$WORK/fs.img"
    fi
fi
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/raw
LOG=$OUT/hyperfine.log
if [[ $PARTS == tree,push,rss ]]; then
    rm -rf "$RAW"
    rm -f "$OUT"/{rss.tsv,first-push.txt,final-mode.txt,peer-differences.txt,push-*-releases.txt}
    : >"$LOG"
fi
mkdir -p "$RAW"

# --- build ----------------------------------------------------------------------------------
echo "building (cargo build --release) ..."
(cd "$REPO" && cargo build --release --quiet --bin kiln --example kiln-bench)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
# A target dir shared with another checkout of kiln can hold that checkout's `kiln` binary
# while cargo calls ours fresh. Debug info names the source directory: check it, and if the
# binary is not ours, build again into a target dir of our own.
built_here() { # built_here BINARY: its debug info names $REPO as the compilation directory
    python3 -c 'import sys; sys.exit(b"\0" + sys.argv[1].encode() + b"\0" not in open(sys.argv[2], "rb").read())' "$REPO" "$1"
}
if ! built_here "$TARGET/release/kiln" || ! built_here "$TARGET/release/examples/kiln-bench"; then
    echo "  $TARGET/release/kiln was built from another checkout; building into $REPO/target/bench"
    TARGET=$REPO/target/bench
    (cd "$REPO" && cargo build --release --quiet --target-dir "$TARGET" --bin kiln --example kiln-bench)
fi
# Private copies: a shared target dir may be rebuilt by someone else mid-run.
cp "$TARGET/release/kiln" "$TARGET/release/examples/kiln-bench" "$WORK/bin/"
KILN=$WORK/bin/kiln
KB=$WORK/bin/kiln-bench

MACHINE=$OUT/machine.txt
[[ $PARTS == tree,push,rss ]] || MACHINE=$OUT/machine-${PARTS//,/-}.txt
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "mode: $MODE"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "cpu: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -sr)"
    echo "filesystem: $FS_NOTE"
    echo "rustc: $(rustc --version)"
    echo "rsync: $(rsync --version | head -1)"
    echo "zstd: $(zstd --version)"
    echo "tar: $(tar --version | head -1)"
    echo "git: $(git --version)"
    echo "hyperfine: $(hyperfine --version)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$MACHINE"
cat "$MACHINE"

# --- the runner -----------------------------------------------------------------------------
# hyperfine times all runs of one command before the next, so each case is run in ROUNDS
# rounds with the contenders' order reversed every other round; the report pools the rounds.
ROUNDS=3
RUNS=3
WARMUP=1

# bench CASE FILES FRACTION  NAME PREPARE COMMAND  [NAME PREPARE COMMAND ...]
bench() {
    local case=$1 files=$2 frac=$3
    shift 3
    local -a names=() preps=() cmds=()
    while (($#)); do
        names+=("$1"); preps+=("${2:-true}"); cmds+=("$3")
        shift 3
    done
    local n=${#names[@]} r k i
    printf '  %-18s %7s files, %5s changed:' "$case" "$files" "$frac"
    local load_before
    load_before=$(cut -d' ' -f1 /proc/loadavg)
    for ((r = 0; r < ROUNDS; r++)); do
        local -a args=()
        for ((k = 0; k < n; k++)); do
            if ((r % 2)); then i=$((n - 1 - k)); else i=$k; fi
            args+=(--prepare "${preps[i]}" -n "${names[i]}" "${cmds[i]}")
        done
        echo "### $case $files $frac round $r" >>"$LOG"
        hyperfine --style basic --runs "$RUNS" --warmup "$WARMUP" \
            --export-json "$RAW/$case.$files.$frac.r$r.json" "${args[@]}" >>"$LOG" 2>&1 || {
            echo " FAILED (see $LOG)"; tail -20 "$LOG" >&2; exit 1
        }
    done
    python3 "$REPO/scripts/bench_report.py" --brief "$RAW" "$case" "$files" "$frac" "$load_before" "$(cut -d' ' -f1 /proc/loadavg)"
}

# Writeback of a freshly written tree (1.5 GB at 100,000 files) goes on for half a minute and
# slows whatever runs meanwhile: flush before measuring, and before every run (in the prepare
# step, untimed), so each run starts with nothing dirty and pays for its own writes only.
SYNC=sync

# manifest DIR: one line per entry with type, mode, size, mtime (ns) and link target, so two
# copies made by different tools can be compared exactly.
manifest() {
    (cd "$1" && find . -mindepth 1 -printf '%P\t%y\t%m\t%s\t%T@\t%l\n' | LC_ALL=C sort)
}

# same SOURCE KILN_TREE PEER_TREE WHAT: kiln's copy must equal its source exactly (a benchmark
# of a wrong copy is worthless); where the peer's copy differs, that is noted, not fatal.
same() {
    local want
    want=$(manifest "$1")
    if ! cmp -s <(echo "$want") <(manifest "$2"); then
        echo "error: $4: kiln's tree differs from its source:" >&2
        diff <(echo "$want") <(manifest "$2") | head -10 >&2 || true
        exit 1
    fi
    if ! cmp -s <(echo "$want") <(manifest "$3"); then
        local n
        n=$(diff <(echo "$want") <(manifest "$3") | grep -c '^>' || true)
        echo "  note: $4: the peer's copy differs from the source in $n entries (see peer-differences.txt)"
        {
            echo "## $4 ($n entries; < source, > peer)"
            diff <(echo "$want") <(manifest "$3") | head -20 || true
        } >>"$OUT/peer-differences.txt"
    fi
}

case $MODE in
smoke) SIZES=(300); PUSH_SIZES=(300); ROUNDS=1; RUNS=1; WARMUP=0 ;;
quick) SIZES=(1000 10000); PUSH_SIZES=(1000 10000) ;;
full) SIZES=(1000 10000 100000); PUSH_SIZES=(1000 10000) ;;
esac

set_runs() { # fewer runs where one run takes seconds
    case $MODE in
    smoke) ;;
    *) if (($1 >= 100000)); then ROUNDS=2; RUNS=2; WARMUP=0; else ROUNDS=3; RUNS=3; WARMUP=1; fi ;;
    esac
}

# --- tree cases -----------------------------------------------------------------------------
tree_cases() {
    local n=$1 fractions=$2
    local T=$FS/t$n
    mkdir -p "$T"
    echo "generating $n files ..."
    "$KB" gen "$T/a" --files "$n" --seed 42 | sed 's/^/  /'
    $SYNC
    set_runs "$n"

    # Switching run/ to a new release: both tools copy into a fresh directory, then keep it
    # up to date.
    bench switch-full "$n" 0 \
        kiln "rm -rf $T/dk && $SYNC" "$KB sync $T/a $T/dk" \
        rsync "rm -rf $T/dr && $SYNC" "rsync -a --delete $T/a/ $T/dr/"
    same "$T/a" "$T/dk" "$T/dr" "full copy ($n files)"
    bench switch-nochange "$n" 0 \
        kiln "" "$KB sync $T/a $T/dk" \
        rsync "" "rsync -a --delete $T/a/ $T/dr/"

    local f
    for f in $fractions; do
        rm -rf "$T/b"
        cp -al "$T/a" "$T/b"
        "$KB" mutate "$T/b" --fraction "$f" --seed 7 >/dev/null
        $SYNC
        # Each run starts from run/ = release a and switches it to release b.
        bench switch-changed "$n" "$f" \
            kiln "$KB sync $T/a $T/dk && $SYNC" "$KB sync $T/b $T/dk" \
            rsync "rsync -a --delete $T/a/ $T/dr/ && $SYNC" "rsync -a --delete $T/b/ $T/dr/"
        same "$T/b" "$T/dk" "$T/dr" "switch ($n files, $f changed)"

        # Data snapshot: the previous snapshot is a real copy of data/ as it was (a), data/
        # has since changed (b); unchanged files are hard-linked from the previous snapshot.
        rm -rf "$T/prev"
        rsync -a "$T/a/" "$T/prev/"
        $SYNC
        local taken_at
        taken_at=$(date +%s)
        bench snapshot-changed "$n" "$f" \
            kiln "rm -rf $T/sk $T/sk.partial && $SYNC" "$KB snapshot $T/b $T/sk $T/prev $taken_at" \
            kiln-nosync "rm -rf $T/sn $T/sn.partial && $SYNC" "$KB snapshot-nosync $T/b $T/sn $T/prev $taken_at" \
            rsync "rm -rf $T/sr && $SYNC" "rsync -a --link-dest=$T/prev $T/b/ $T/sr/"
        same "$T/b" "$T/sk" "$T/sr" "snapshot ($n files, $f changed)"
        rm -rf "$T/sk" "$T/sn" "$T/sr"
    done
    rm -rf "$T/dk" "$T/dr" "$T/prev"

    # Baking a release and unpacking it with every check. Both unpack the archive kiln baked
    # (GNU tar reads its PAX headers), so both decompress the same bytes.
    bench bake "$n" 0 \
        kiln "rm -f $T/k.tar.zst && $SYNC" "$KB bake $T/a $T/k.tar.zst" \
        kiln-nosync "rm -f $T/n.tar.zst && $SYNC" "KILN_NOSYNC=1 $KB bake $T/a $T/n.tar.zst" \
        tar-zstd "rm -f $T/t.tar.zst && $SYNC" "tar -cf - -C $T/a . | zstd -q -T0 -3 -f -o $T/t.tar.zst"
    ls -l "$T"/*.tar.zst >>"$LOG"
    bench unpack "$n" 0 \
        kiln "rm -rf $T/uk && $SYNC" "$KB unpack $T/k.tar.zst $T/uk" \
        zstd-tar "rm -rf $T/ut && mkdir $T/ut && $SYNC" "zstd -q -d -c $T/k.tar.zst | tar -x -C $T/ut"
    same "$T/a" "$T/uk" "$T/ut" "unpack ($n files)"
    rm -rf "$T"
}

if [[ $PARTS == *tree* ]]; then
    echo "== tree cases on $FS_NOTE"
    for n in "${SIZES[@]}"; do
        if [[ $MODE == full && $n == 10000 ]]; then
            tree_cases "$n" "0.001 0.01 0.1"
        else
            tree_cases "$n" "0.01"
        fi
    done
fi

# --- push to live ---------------------------------------------------------------------------
# Real pushes to a real node: kiln's post-receive hook deploys each commit (cooking mode: export,
# bake, snapshot, switch). The peer is the same push into a bare repo without hooks, so the
# difference is kiln's own overhead.
commit_cmd() { # commit_cmd WORKTREE: the prepare step that makes the next commit (~1% changed)
    echo "$KB mutate $1 --fraction 0.01 >/dev/null && git -C $1 add -A && git -C $1 commit -qm next && $SYNC"
}

push_case() {
    local n=$1 P=$FS/p$n
    mkdir -p "$P"
    set_runs "$n"
    "$KB" gen "$P/w1" --files "$n" --seed 9 >/dev/null
    git -C "$P/w1" init -q -b master
    git -C "$P/w1" add -A
    git -C "$P/w1" -c user.name=bench -c user.email=bench@kiln.invalid commit -qm init
    git -C "$P/w1" config user.name bench
    git -C "$P/w1" config user.email bench@kiln.invalid
    cp -a "$P/w1" "$P/w2"
    "$KILN" --root "$P/node" init app --mode cooking >/dev/null
    $SYNC
    git init -q --bare -b master "$P/plain.git"
    local t0 t1
    t0=$(date +%s.%N)
    git -C "$P/w1" push -q "$P/node/app/git/project.git" master 2>"$P/first-push.txt"
    t1=$(date +%s.%N)
    local t2 t3
    t2=$(date +%s.%N)
    git -C "$P/w2" push -q "$P/plain.git" master
    t3=$(date +%s.%N)
    echo "first push of $n files: kiln (full deploy) $(python3 -c "print(round($t1-$t0,2))") s," \
        "git-only $(python3 -c "print(round($t3-$t2,2))") s" | tee -a "$OUT/first-push.txt"
    bench push-cooking "$n" 0.01 \
        kiln "$(commit_cmd "$P/w1")" "git -C $P/w1 push -q $P/node/app/git/project.git master" \
        git-only "$(commit_cmd "$P/w2")" "git -C $P/w2 push -q $P/plain.git master"
    # A push succeeds even when the deploy it triggers fails: check what went live.
    mkdir "$P/head"
    git -C "$P/w1" archive HEAD | tar -x -C "$P/head"
    if ! diff -r --no-dereference "$P/head" "$P/node/app/run" >"$P/run.diff"; then
        echo "error: after the pushes, run/ is not the last commit:" >&2
        head "$P/run.diff" >&2
        exit 1
    fi
    "$KILN" --root "$P/node" releases app >"$OUT/push-$n-releases.txt" 2>&1 || true

    # Final mode: production pulls the release staging baked for the same commit.
    "$KILN" --root "$P/prod" init app --mode final --source "$P/node/app" >/dev/null 2>&1 || true
    # (Not `| grep -q`: with pipefail, grep quitting early fails the pipeline through SIGPIPE.)
    git -C "$P/w1" push "$P/prod/app/git/project.git" master >"$P/final.txt" 2>&1 || true
    if [[ -d $P/prod/app/git/project.git ]] && grep -q -- '-----> deployed' "$P/final.txt"; then
        bench push-final "$n" 0.01 \
            kiln "$(commit_cmd "$P/w1") && git -C $P/w1 push -q $P/node/app/git/project.git master" \
            "git -C $P/w1 push -q $P/prod/app/git/project.git master" \
            git-only "$(commit_cmd "$P/w2")" "git -C $P/w2 push -q $P/plain.git master"
    else
        echo "  push-final: not measured, final mode does not deploy in this build:" \
            | tee "$OUT/final-mode.txt"
        grep -E 'FAILED|error' "$P/final.txt" | sed 's/^/    /' | tee -a "$OUT/final-mode.txt" || true
    fi
    rm -rf "$P"
}

if [[ $PARTS == *push* ]]; then
    echo "== push to live"
    for n in "${PUSH_SIZES[@]}"; do push_case "$n"; done
fi

# --- peak memory ----------------------------------------------------------------------------
rss() { # rss NAME COMMAND...: peak RSS (largest process) and wall time, from GNU time
    local name=$1 kb secs
    shift
    /usr/bin/time -f '%M %e' -o "$OUT/rss.tmp" "$@"
    read -r kb secs <"$OUT/rss.tmp"
    printf '%s\t%s\t%s\n' "$name" "$kb" "$secs" >>"$OUT/rss.tsv"
    printf '  %-22s peak RSS %6.1f MiB, %s s\n' "$name" "$((kb / 1024))" "$secs"
}
if [[ $MODE == full && $PARTS == *rss* ]]; then
    echo "== peak RSS on a 2 GB tree"
    R=$FS/rss
    mkdir -p "$R"
    "$KB" gen "$R/tree" --files 20000 --seed 5 --min-total-mb 2048 | sed 's/^/  /'
    $SYNC
    rm -f "$OUT/rss.tsv"
    rss kiln-bake "$KB" bake "$R/tree" "$R/k.tar.zst"
    rss tar-zstd sh -c "tar -cf - -C $R/tree . | zstd -q -T0 -3 -f -o $R/t.tar.zst"
    sync
    rm -f "$R/t.tar.zst"
    rss kiln-unpack "$KB" unpack "$R/k.tar.zst" "$R/uk"
    rm -rf "$R/uk"
    sync
    mkdir "$R/ut"
    rss zstd-tar sh -c "zstd -q -d -c $R/k.tar.zst | tar -x -C $R/ut"
    rm -f "$OUT/rss.tmp"
    rm -rf "$R"
fi

# --- report ---------------------------------------------------------------------------------
python3 "$REPO/scripts/bench_report.py" "$OUT"
echo
cat "$OUT/summary.md"
echo
echo "results in $OUT (summary.md, summary.json, time-vs-files.svg, raw/)"
