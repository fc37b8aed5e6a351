#!/usr/bin/env bash
# A Capistrano deploy against a kiln push of the same small app to the same machine over SSH on
# 127.0.0.1, timed side by side in one run (issue 6, point 4). See BENCHMARKS.md.
#
#   scripts/bench-capistrano.sh [--files N] [--rounds R] [--runs N] [--work DIR] [--out DIR]
#                               [--kiln PATH] [--no-loop]
#
#   --files   files in the app (default 50, about 10 KB each, a few directories, no build step)
#   --rounds  hyperfine rounds, the contenders' order reversed every other round (default 6)
#   --runs    timed runs per contender per round (default 2: 12 runs each), after 1 warm-up
#   --work    scratch directory (default /var/tmp/kiln-bench-cap); wiped first, removed at exit
#             except its results/
#   --out     where the raw hyperfine JSON and summary.txt go (default WORK/results)
#   --kiln    the kiln binary (default: target/release/kiln of this checkout; copied first, so a
#             rebuild during the run does not change what is measured)
#   --no-loop do not mount a journaled ext4 loop image for the repos and deploy trees
#   --login-rc let the login shell read root's ~/.bashrc on every SSH command (by default sshd
#             sets SHLVL=1 so bash skips it: a heavy .bashrc, e.g. one running `pyenv init`,
#             would be timed once per command, and Capistrano runs about 14 of them per deploy)
#
# Run as root: it starts a private sshd on 127.0.0.1 on a free high port (stopped at exit) and
# logs in as root with a throwaway key. Installs nothing: it stops with the `apt-get install`
# line to run if openssh-server, capistrano, hyperfine or git is missing.
#
# Each timed run deploys a new commit that rewrites one file (the same series on both sides):
#   kiln:       `git push ssh://root@127.0.0.1:PORT/R/app/git/project.git master` to a project
#               made by `kiln init app --mode cooking`; its hook deploys (export, data snapshot,
#               switch, journal, tarball bake) before the push returns.
#   capistrano: `cap bench deploy` (Capistrano 3, git SCM, keep_releases 5, no plugins) after
#               the commit was pushed, untimed, to the bare repo its repo_url names over the
#               same sshd: the server updates its mirror, archives a new release dir, switches
#               the `current` symlink, and removes old releases.
set -euo pipefail

FILES=50
ROUNDS=6
RUNS=2
WORK=/var/tmp/kiln-bench-cap
OUT=
KILN_SRC=
USE_LOOP=1
LOGIN_RC=0
while (($#)); do
    case $1 in
    --files) FILES=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --work) WORK=$2; shift ;;
    --out) OUT=$2; shift ;;
    --kiln) KILN_SRC=$2; shift ;;
    --no-loop) USE_LOOP=0 ;;
    --login-rc) LOGIN_RC=1 ;;
    -h | --help) sed -n "2,32p" "$0"; exit 0 ;;
    *) echo "error: unknown option \`$1\` (see --help)" >&2; exit 2 ;;
    esac
    shift
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
KILN_SRC=${KILN_SRC:-${CARGO_TARGET_DIR:-$REPO/target}/release/kiln}

# --- tools ----------------------------------------------------------------------------------
if [[ $(id -u) != 0 ]]; then
    echo "error: run as root (it starts sshd and deploys as root over SSH to 127.0.0.1)" >&2
    exit 2
fi
pkgs=()
[[ -x /usr/sbin/sshd ]] || pkgs+=(openssh-server)
command -v ssh-keygen >/dev/null || pkgs+=(openssh-client)
command -v cap >/dev/null || pkgs+=(capistrano)
command -v ruby >/dev/null || pkgs+=(ruby)
command -v hyperfine >/dev/null || pkgs+=(hyperfine)
command -v git >/dev/null || pkgs+=(git)
if ((${#pkgs[@]})); then
    echo "error: missing ${pkgs[*]}" >&2
    echo "  install with: apt-get install -y ${pkgs[*]}" >&2
    exit 2
fi
if [[ ! -x $KILN_SRC ]]; then
    echo "error: no kiln binary at \`$KILN_SRC\`: cargo build --release --bin kiln (or --kiln PATH)" >&2
    exit 2
fi

# --- scratch space and cleanup ---------------------------------------------------------------
if mountpoint -q "$WORK/fs" 2>/dev/null; then umount "$WORK/fs"; fi
rm -rf "$WORK"
mkdir -p "$WORK/fs" "$WORK/bin" "$WORK/ssh"
chmod 700 "$WORK" "$WORK/ssh"
WORK=$(cd "$WORK" && pwd)
FS=$WORK/fs
S=$WORK/ssh
SSHD_PID=
cleanup() {
    local rc=$?
    cd /
    if [[ -n $SSHD_PID ]] && kill -0 "$SSHD_PID" 2>/dev/null; then kill "$SSHD_PID" || true; fi
    if mountpoint -q "$FS" 2>/dev/null; then umount "$FS" || true; fi
    rm -rf "$FS" "$WORK/fs.img" "$WORK/bin" "$S"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FS_NOTE="plain filesystem of $WORK ($(df --output=fstype "$WORK" | tail -1))"
if ((USE_LOOP)); then
    truncate -s 2G "$WORK/fs.img"
    mkfs.ext4 -q -F "$WORK/fs.img"
    if mount -o loop "$WORK/fs.img" "$FS"; then
        FS_NOTE="journaled ext4 on a loop device (2G sparse image on $(df --output=fstype "$WORK" | tail -1))"
    else
        echo "warning: could not mount a loop filesystem; using the plain filesystem" >&2
        rm -f "$WORK/fs.img"
    fi
fi
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT/raw"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/hyperfine.log
: >"$LOG"
cp "$KILN_SRC" "$WORK/bin/kiln"
KILN=$WORK/bin/kiln

# --- sshd on 127.0.0.1 -----------------------------------------------------------------------
PORT=$(ruby -rsocket -e 's = TCPServer.new("127.0.0.1", 0); puts s.addr[1]; s.close')
ssh-keygen -q -t ed25519 -N '' -C kiln-bench-host -f "$S/host_key"
ssh-keygen -q -t ed25519 -N '' -C kiln-bench-client -f "$S/client_key"
cp "$S/client_key.pub" "$S/authorized_keys"
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$S/host_key.pub")" >"$S/known_hosts"
cat >"$S/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $S/host_key
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
# The key files live under /var/tmp (world-writable, sticky), which StrictModes refuses.
StrictModes no
PrintMotd no
MaxStartups 100
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
# Debian's bash reads ~/.bashrc when sshd runs it, unless it is a nested shell (SHLVL >= 1 before
# it starts): measure the deploy tools, not this machine's root ~/.bashrc.
((LOGIN_RC)) || echo "SetEnv SHLVL=1" >>"$S/sshd_config"
# Only this client config: no ~/.ssh/config, no agent, no known host but ours.
cat >"$S/ssh_config" <<EOF
Host *
    HostName 127.0.0.1
    Port $PORT
    User root
    IdentityFile $S/client_key
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile $S/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ControlMaster no
    ControlPath none
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -f "$S/sshd_config" -E "$S/sshd.log"
for _ in $(seq 50); do [[ -s $S/sshd.pid ]] && break; sleep 0.1; done
SSHD_PID=$(cat "$S/sshd.pid")
export GIT_SSH_COMMAND="ssh -F $S/ssh_config"
unset SSH_AUTH_SOCK
if ! $GIT_SSH_COMMAND root@127.0.0.1 true; then
    echo "error: cannot log in over ssh to 127.0.0.1:$PORT; sshd log:" >&2
    tail -20 "$S/sshd.log" >&2
    exit 1
fi
URL=ssh://root@127.0.0.1:$PORT

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "cpu: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -sr)"
    echo "filesystem: $FS_NOTE"
    echo "app: $FILES files"
    if ((LOGIN_RC)); then echo "login shell: reads ~/.bashrc"; else echo "login shell: SHLVL=1, skips ~/.bashrc"; fi
    echo "kiln: $KILN_SRC ($(stat -c %y "$KILN_SRC" | cut -d. -f1))"
    echo "capistrano: $(cap --version | head -1); ruby $(ruby -e 'print RUBY_VERSION')"
    echo "openssh: $(ssh -V 2>&1)"
    echo "git: $(git --version)"
    echo "hyperfine: $(hyperfine --version)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"

# --- the app ---------------------------------------------------------------------------------
# FILES text files of about 10 KB in a few directories; both contenders start from this commit.
mkdir -p "$FS/app"
for ((i = 0; i < FILES; i++)); do
    d=$FS/app/dir$((i % 5))
    mkdir -p "$d"
    head -c 7600 /dev/urandom | base64 -w 76 >"$d/file$i.txt"
done
git -C "$FS/app" init -q -b master
git -C "$FS/app" add -A
git -C "$FS/app" -c user.name=bench -c user.email=bench@kiln.invalid commit -qm "app: $FILES files"
for w in w-kiln w-cap; do
    git clone -q "$FS/app" "$FS/$w"
    git -C "$FS/$w" config user.name bench
    git -C "$FS/$w" config user.email bench@kiln.invalid
done

# next-commit WORKTREE: rewrite the next file in turn and commit it (the prepare step). Both
# worktrees count on their own, so both sides deploy the same series of changes.
cat >"$WORK/bin/next-commit" <<EOF
#!/bin/sh
set -e
w=\$1
n=\$(cat "\$w/.git/bench-count" 2>/dev/null || echo 0)
i=\$((n % $FILES))
head -c 7600 /dev/urandom | base64 -w 76 >"\$w/dir\$((i % 5))/file\$i.txt"
echo \$((n + 1)) >"\$w/.git/bench-count"
git -C "\$w" commit -qam "change file\$i (\$n)"
EOF
chmod +x "$WORK/bin/next-commit"
NEXT=$WORK/bin/next-commit

# --- kiln side -------------------------------------------------------------------------------
"$KILN" --root "$FS/kiln" init app --mode cooking >/dev/null
KILN_PUSH="git -C $FS/w-kiln push -q $URL$FS/kiln/app/git/project.git master"

# --- Capistrano side -------------------------------------------------------------------------
git clone -q --bare "$FS/app" "$FS/origin.git"
git -C "$FS/w-cap" remote set-url origin "$FS/origin.git"
C=$FS/cap-config
mkdir -p "$C/config/deploy"
cat >"$C/Capfile" <<'EOF'
require "capistrano/setup"
require "capistrano/deploy"
require "capistrano/scm/git"
install_plugin Capistrano::SCM::Git
EOF
cat >"$C/config/deploy.rb" <<EOF
set :application, "app"
set :repo_url, "$URL$FS/origin.git"
set :branch, "master"
set :deploy_to, "$FS/cap"
set :tmp_dir, "$FS/cap-tmp"
set :keep_releases, 5
set :pty, false
# The server's git reaches the repo through the same sshd, with the same client config as kiln's
# push (the default wrapper would use root's own ~/.ssh).
set :git_environmental_variables, { git_askpass: "/bin/echo", git_ssh_command: "ssh -F $S/ssh_config" }
set :ssh_options, {
  port: $PORT,
  user: "root",
  keys: ["$S/client_key"],
  keys_only: true,
  auth_methods: ["publickey"],
  use_agent: false,
  config: false,
  user_known_hosts_file: "$S/known_hosts",
  global_known_hosts_file: "/dev/null",
  verify_host_key: :always,
}
EOF
cat >"$C/config/deploy/bench.rb" <<'EOF'
server "127.0.0.1", user: "root", roles: %w[app]
EOF
mkdir -p "$FS/cap-tmp"
CAP_DEPLOY="cd $C && cap bench deploy"

# --- first deploys (untimed: a full clone on both sides) -------------------------------------
elapsed() { ruby -e 'printf("%.2f", ARGV[1].to_f - ARGV[0].to_f)' "$@"; }
t0=$(date +%s.%N)
git -C "$FS/w-kiln" push -q "$URL$FS/kiln/app/git/project.git" master 2>"$OUT/kiln-first-push.txt"
t1=$(date +%s.%N)
(cd "$C" && cap bench deploy) >"$OUT/cap-first-deploy.txt" 2>&1 || {
    echo "error: the first \`cap bench deploy\` failed:" >&2
    tail -30 "$OUT/cap-first-deploy.txt" >&2
    exit 1
}
t2=$(date +%s.%N)
echo "first deploy: kiln push $(elapsed "$t0" "$t1") s, cap deploy $(elapsed "$t1" "$t2") s" |
    tee "$OUT/first-deploy.txt"
sync

# --- timed runs: rounds with the contenders' order reversed every other round ----------------
names=(kiln capistrano)
preps=("$NEXT $FS/w-kiln && sync"
    "$NEXT $FS/w-cap && git -C $FS/w-cap push -q origin master && sync")
cmds=("$KILN_PUSH" "$CAP_DEPLOY")
: >"$OUT/load.tsv"
for ((r = 0; r < ROUNDS; r++)); do
    args=()
    for k in 0 1; do
        if ((r % 2)); then i=$((1 - k)); else i=$k; fi
        args+=(--prepare "${preps[i]}" -n "${names[i]}" "${cmds[i]}")
    done
    printf '%s\tstart\t%s\n' "$r" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.tsv"
    echo "### round $r" >>"$LOG"
    hyperfine --style basic --runs "$RUNS" --warmup 1 --export-json "$OUT/raw/r$r.json" \
        "${args[@]}" >>"$LOG" 2>&1 || {
        echo "error: round $r failed (see $LOG)" >&2
        tail -20 "$LOG" >&2
        exit 1
    }
    printf '%s\tend\t%s\n' "$r" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.tsv"
    echo "  round $((r + 1))/$ROUNDS done (load $(cut -d' ' -f1 /proc/loadavg))"
done

# --- context: one more deploy each with its step log, and fixed costs -------------------------
$NEXT "$FS/w-kiln"
git -C "$FS/w-kiln" push "$URL$FS/kiln/app/git/project.git" master >"$OUT/kiln-push.txt" 2>&1
$NEXT "$FS/w-cap"
git -C "$FS/w-cap" push -q origin master
(cd "$C" && cap bench deploy) >"$OUT/cap-deploy.txt" 2>&1
# An ssh login (each side pays one per git transfer) and loading Capistrano without connecting.
hyperfine --style basic --runs 10 --warmup 1 --export-json "$OUT/raw/fixed.json" \
    -n "ssh login" "$GIT_SSH_COMMAND root@127.0.0.1 true" \
    -n "cap -T" "cd $C && cap -T" >>"$LOG" 2>&1

# --- what went live must be the last commit on both sides ------------------------------------
mkdir "$FS/head-kiln" "$FS/head-cap"
git -C "$FS/w-kiln" archive HEAD | tar -x -C "$FS/head-kiln"
git -C "$FS/w-cap" archive HEAD | tar -x -C "$FS/head-cap"
if ! diff -r --no-dereference "$FS/head-kiln" "$FS/kiln/app/run" >"$FS/run.diff"; then
    echo "error: after the pushes, kiln's run/ is not the last commit:" >&2
    head "$FS/run.diff" >&2
    exit 1
fi
# Capistrano adds REVISION and REVISION_TIME to each release.
if ! diff -r -x REVISION -x REVISION_TIME "$FS/head-cap" "$FS/cap/current/" >"$FS/cap.diff" ||
    [[ $(cat "$FS/cap/current/REVISION") != $(git -C "$FS/w-cap" rev-parse HEAD) ]]; then
    echo "error: after the deploys, Capistrano's current/ is not the last commit:" >&2
    head "$FS/cap.diff" >&2
    exit 1
fi
"$KILN" --root "$FS/kiln" releases app >"$OUT/kiln-releases.txt" 2>&1 || true
ls "$FS/cap/releases" >"$OUT/cap-releases.txt"

# --- report ----------------------------------------------------------------------------------
ruby -rjson - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
out = ARGV[0]
times = Hash.new { |h, k| h[k] = [] }
Dir[File.join(out, "raw", "r[0-9]*.json")].sort.each do |f|
  JSON.parse(File.read(f))["results"].each { |r| times[r["command"]].concat(r["times"]) }
end
median = lambda do |xs|
  s = xs.sort
  s.size.odd? ? s[s.size / 2] : (s[s.size / 2 - 1] + s[s.size / 2]) / 2.0
end
loads = File.readlines(File.join(out, "load.tsv")).map { |l| l.split("\t")[2].split[0].to_f }
k, c = median.(times["kiln"]), median.(times["capistrano"])
%w[kiln capistrano].each do |n|
  xs = times[n]
  printf("%-10s median %6.3f s  min %6.3f s  max %6.3f s  (%d runs)\n",
         n, median.(xs), xs.min, xs.max, xs.size)
end
printf("ratio kiln/capistrano (medians): %.2f   (capistrano/kiln: %.1f)\n", k / c, c / k)
JSON.parse(File.read(File.join(out, "raw", "fixed.json")))["results"].each do |r|
  printf("for scale: %-9s median %6.3f s\n", r["command"], median.(r["times"]))
end
printf("1-minute load average during the run: %.2f to %.2f\n", loads.min, loads.max)
EOF
echo "results in $OUT"
