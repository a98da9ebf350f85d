# Shared helpers for the swiftcache end-to-end tests.  Source it from a
# test-*.sh script:   . "$(dirname "$0")/lib.sh"
#
# Environment:
#   FILTER   filter under test, passed as nbdkit --filter="$FILTER".
#            Default: <repo>/libswiftcache.so.  A short name such as
#            "cache" selects an installed filter (the C cache filter).
#   KEEP=1   keep the per-test temporary directory.
#
# Every helper keeps things bounded in time (timeout) and every nbdkit
# started in the background is stopped by its pid on exit.

# nbdsh and the python nbd module only work with the system python.
export PATH=/usr/bin:$PATH
PY=/usr/bin/python3
export LC_ALL=C

TESTDIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$TESTDIR/.." && pwd)
TEST_NAME=$(basename "$0" .sh)

: "${FILTER:=$REPO/libswiftcache.so}"
export FILTER

# ---------------------------------------------------------------- messages
log()  { printf '%s: %s\n' "$TEST_NAME" "$*" >&2; }
fail() { printf '%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2; exit 1; }
skip() { printf '%s: SKIP: %s\n' "$TEST_NAME" "$*" >&2; exit 77; }
ok()   { printf '%s: ok: %s\n' "$TEST_NAME" "$*" >&2; }
# Soft failure: record it, go on with the other checks, fail in finish.
_nbad=0
bad()  { printf '%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2; _nbad=$((_nbad + 1)); }
finish() {
    [ "$_nbad" -eq 0 ] || fail "$_nbad check(s) failed"
    ok "all checks passed"
}

# ---------------------------------------------------------------- filter
# True if FILTER names a file (a path) rather than an installed short name.
filter_is_path() {
    case "$FILTER" in
        */*|*.so) return 0 ;;
        *) return 1 ;;
    esac
}

# Print the absolute path of the filter's shared object.
filter_so() {
    if filter_is_path; then
        realpath -- "$FILTER"
    else
        local dir
        dir=$(nbdkit --dump-config | sed -n 's/^filterdir=//p')
        printf '%s\n' "$dir/nbdkit-$FILTER-filter.so"
    fi
}

if filter_is_path; then
    [ -f "$FILTER" ] || fail "filter $FILTER does not exist (build it, or set FILTER=cache)"
    FILTER=$(realpath -- "$FILTER")
fi

# ---------------------------------------------------------------- tmpdir
tmp=$(mktemp -d "${TMPDIR:-/tmp}/swiftcache-$TEST_NAME.XXXXXX")
# The cache file of the filter goes into $TMPDIR: keep it in our tmpdir,
# in a subdirectory of its own so that tests can see what the filter
# leaves there.
cachedir=$tmp/cachedir
mkdir "$cachedir"
export TMPDIR=$cachedir

_bg_nbdkit_pids=()   # nbdkit pids from pidfiles
_bg_wrap_pids=()     # pids of the "timeout" wrappers

cleanup() {
    local rc=$?
    local p
    for p in "${_bg_nbdkit_pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${_bg_wrap_pids[@]}"; do
        # Bounded: timeout(1) kills nbdkit itself in the end.
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "$TEST_NAME: kept $tmp" >&2
    else
        rm -rf -- "$tmp"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- nbdkit
# Run nbdkit in captive mode with a time limit:
#   nbdkit_captive [nbdkit args...] --run '...'
nbdkit_captive() {
    timeout "${NBDKIT_TIMEOUT:-60}" nbdkit -U - "$@"
}

# Start nbdkit in the background:   start_nbdkit NAME [nbdkit args...]
# Socket $tmp/NAME.sock, pidfile $tmp/NAME.pid, stderr+stdout in
# $tmp/NAME.log.  Sets the globals  uri  and  pid  (and NAME_uri / NAME_pid
# are available through nbdkit_uri NAME / nbdkit_pid NAME).
start_nbdkit() {
    local name=$1; shift
    local sock=$tmp/$name.sock pidf=$tmp/$name.pid i
    rm -f "$sock" "$pidf"
    timeout "${NBDKIT_TIMEOUT:-120}" \
        nbdkit -f -U "$sock" -P "$pidf" "$@" >"$tmp/$name.log" 2>&1 &
    local wrap=$!
    _bg_wrap_pids+=("$wrap")
    echo "$wrap" >"$tmp/$name.wrap"
    for i in $(seq 1 200); do
        if [ -s "$pidf" ] && [ -S "$sock" ]; then
            break
        fi
        if ! kill -0 "$wrap" 2>/dev/null; then
            cat "$tmp/$name.log" >&2
            fail "nbdkit ($name) exited during start-up"
        fi
        sleep 0.05
    done
    [ -s "$pidf" ] && [ -S "$sock" ] || { cat "$tmp/$name.log" >&2; fail "nbdkit ($name) did not start"; }
    pid=$(cat "$pidf")
    _bg_nbdkit_pids+=("$pid")
    uri="nbd+unix:///?socket=$sock"
}

nbdkit_uri() { echo "nbd+unix:///?socket=$tmp/$1.sock"; }
nbdkit_pid() { cat "$tmp/$1.pid"; }

# Stop a background nbdkit cleanly (SIGTERM to its pid) and wait for it,
# so that e.g. the stats filter writes its file.  Fails if nbdkit does not
# exit within 20 s or exits because it crashed.
stop_nbdkit() {
    local name=$1 p wrap rc=0 i
    p=$(cat "$tmp/$name.pid")
    wrap=$(cat "$tmp/$name.wrap")
    kill -TERM "$p" 2>/dev/null || true
    for i in $(seq 1 400); do
        kill -0 "$wrap" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$wrap" 2>/dev/null; then
        kill -KILL "$p" 2>/dev/null || true
        fail "nbdkit ($name) did not exit after SIGTERM"
    fi
    wait "$wrap" 2>/dev/null || rc=$?
    if [ "$rc" -ne 0 ]; then
        tail -n 30 "$tmp/$name.log" >&2
        fail "nbdkit ($name) exited with status $rc"
    fi
}

# Fail if a background nbdkit is no longer running.
assert_alive() {
    local name=$1
    kill -0 "$(cat "$tmp/$name.pid")" 2>/dev/null ||
        { tail -n 30 "$tmp/$name.log" >&2; fail "nbdkit ($name) died"; }
}

# ---------------------------------------------------------------- stats
# stats_ops STATSFILE OP   -> number of OP requests (read, write, flush,
# zero, trim, cache, extents) counted by nbdkit-stats-filter; 0 if absent.
stats_ops() {
    local f=$1 op=$2 n
    [ -f "$f" ] || fail "stats file $f missing (nbdkit not stopped cleanly?)"
    n=$(sed -n "s/^$op: \([0-9][0-9]*\) ops.*/\1/p" "$f" | head -n1)
    echo "${n:-0}"
}

# stats_bytes STATSFILE OP -> bytes moved by OP according to the stats
# filter is only printed in human units, so use the log filter for sizes.

# ---------------------------------------------------------------- cache file
# cache_file_alloc PID -> allocated bytes of the unlinked cache file that
# nbdkit PID holds open in $TMPDIR.  Fails if there is not exactly one.
cache_file_alloc() {
    local p=$1 fd target found=()
    for fd in /proc/"$p"/fd/*; do
        target=$(readlink "$fd" 2>/dev/null) || continue
        case "$target" in
            "$TMPDIR"/*" (deleted)") found+=("$fd") ;;
        esac
    done
    [ "${#found[@]}" -eq 1 ] ||
        fail "expected one deleted cache file in $TMPDIR held by pid $p, found ${#found[@]}"
    echo $(( $(stat -L -c %b "${found[0]}") * 512 ))
}

# cache_file_size PID -> apparent size of that file.
cache_file_size() {
    local p=$1 fd target
    for fd in /proc/"$p"/fd/*; do
        target=$(readlink "$fd" 2>/dev/null) || continue
        case "$target" in
            "$TMPDIR"/*" (deleted)") stat -L -c %s "$fd"; return 0 ;;
        esac
    done
    fail "no deleted cache file in $TMPDIR held by pid $p"
}

# ---------------------------------------------------------------- python
# py SCRIPT-ARGS...  : run the system python with a time limit.
py() { timeout "${PY_TIMEOUT:-90}" "$PY" "$@"; }

# Write a deterministic pseudo-random file:  make_random_file PATH SIZE SEED
make_random_file() {
    py - "$1" "$2" "$3" <<'EOF'
import random, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
with open(path, "wb") as f:
    f.write(r.randbytes(size))
EOF
}

# Check that the log of an nbdkit run shows no crash / assertion.
assert_no_crash_in() {
    local f=$1
    if grep -Ei 'assertion|Fatal error|SIGSEGV|Segmentation|core dumped|panic' "$f" >/dev/null; then
        grep -Ei 'assertion|Fatal error|SIGSEGV|Segmentation|core dumped|panic' "$f" | head -5 >&2
        fail "crash indication in $f"
    fi
}

# ---------------------------------------------------------------- log filter
# log_reqs LOGFILE ACTION -> one line per request of ACTION (Read, Write,
# Zero, Trim, Cache, Flush, Extents) logged by nbdkit-log-filter:
# "OFFSET COUNT FUA" in decimal (0 for missing fields).  Only the request
# lines, not the "...Action id=N return=" lines.
log_reqs() {
    py - "$1" "$2" <<'EOF_PY'
import re, sys
act = sys.argv[2]
for line in open(sys.argv[1]):
    m = re.search(r' connection=\d+ %s id=\d+ (.*)' % act, line)
    if not m:
        continue
    f = dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)
    print(int(f.get("offset", "0"), 0), int(f.get("count", "0"), 0),
          int(f.get("fua", "0"), 0))
EOF_PY
}

# wait_alloc_le PID LIMIT -> print the cache file's allocated size once it
# is <= LIMIT, or the last value seen after 10 s (a reclaim that runs in
# the background gets time to finish; the caller compares the result).
wait_alloc_le() {
    local p=$1 limit=$2 a i
    for i in $(seq 1 100); do
        a=$(cache_file_alloc "$p")
        [ "$a" -le "$limit" ] && break
        sleep 0.1
    done
    echo "$a"
}
