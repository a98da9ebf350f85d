# SPDX-License-Identifier: BSD-3-Clause
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
_on_exit=()          # extra cleanup commands, run after nbdkit is stopped
on_exit() { _on_exit+=("$*"); }
_bg_wrap_pids=()     # pids of the "timeout" wrappers

cleanup() {
    local rc=$?
    local p c
    for p in "${_bg_nbdkit_pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${_bg_wrap_pids[@]}"; do
        # Bounded: timeout(1) kills nbdkit itself in the end.
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    for c in "${_on_exit[@]}"; do
        eval "$c" || true
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

# mount_tmpfs DIR SIZE: a tmpfs of SIZE at DIR (made here), unmounted at
# exit; fails unless the test runs in its own mount namespace
# (mount-namespace.sh), so that it never mounts over the host's tree.
mount_tmpfs() {
    [ -n "${SWIFTCACHE_IN_NS:-}" ] || return 1
    mkdir -p "$1"
    mount -t tmpfs -o size="$2" tmpfs "$1" || return 1
    on_exit umount "$1"
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

# ---------------------------------------------------------------- aio model
# aio_model_script > FILE: a python program for concurrency tests.
#   python FILE URI DISK CHECK_FILE(yes|no) NOPS [INFLIGHT (default 64)]
# 4 connections x 64 requests in flight (libnbd aio), each connection
# owning every 4th 1000-byte stripe of the first half of the export (so
# cache blocks are shared by all connections) and a contiguous quarter of
# the second half (large unaligned writes, zeroes).  In-flight requests of
# a connection never overlap, so the model is well defined; reads of own
# data are checked on completion, the whole export at the end, and the
# backing file (CHECK_FILE=yes) after a final flush.  Export: 16 MiB.
aio_model_script() {
    cat <<'EOF_PY'
import nbd, sys, random, threading
uri, disk, check_file = sys.argv[1], sys.argv[2], sys.argv[3] == "yes"
NCONN, NOPS = 4, int(sys.argv[4])
INFLIGHT = int(sys.argv[5]) if len(sys.argv) > 5 else 64
SIZE = 16 * 1048576
HALF = SIZE // 2
STRIPE = 1000
NSTRIPES = HALF // STRIPE
orig = open(disk, "rb").read()
model = bytearray(orig)
errors = []
stats = {}

def worker(c):
    r = random.Random(100 + c)
    h = nbd.NBD(); h.connect_uri(uri)
    my_stripes = list(range(c, NSTRIPES, NCONN))
    lo = HALF + c * (HALF // NCONN); hi = lo + HALF // NCONN
    busy_stripes = set()
    busy_ranges = {}          # cookie -> (off, n)
    pending = {}              # cookie -> (kind, off, n, buf, expected, stripe)
    issued = 0; maxq = 0; nread = 0
    def free_range(off, n):
        return all(off + n <= o or o + m <= off for o, m in busy_ranges.values())
    while issued < NOPS or pending:
        while issued < NOPS and len(pending) < INFLIGHT:
            k = r.random()
            stripe = None
            if k < 0.45 or k >= 0.95:        # small op in an own stripe
                free = [s for s in r.sample(my_stripes, 8) if s not in busy_stripes]
                if not free:
                    break
                stripe = free[0]
                so = stripe * STRIPE
                off = so + r.randrange(STRIPE); n = r.randint(1, so + STRIPE - off)
                busy_stripes.add(stripe)
                if k < 0.45:
                    data = r.randbytes(n)
                    model[off:off+n] = data
                    ck = h.aio_pwrite(nbd.Buffer.from_bytearray(data), off)
                    pending[ck] = ("write", off, n, None, None, stripe)
                else:
                    buf = nbd.Buffer(n)
                    ck = h.aio_pread(buf, off)
                    pending[ck] = ("read", off, n, buf, bytes(model[off:off+n]), stripe)
            else:                            # own contiguous region
                for _ in range(10):
                    off = r.randrange(lo, hi); n = r.randint(1, min(hi - off, 150000))
                    if free_range(off, n): break
                else:
                    break
                if k < 0.65:
                    data = r.randbytes(n)
                    model[off:off+n] = data
                    ck = h.aio_pwrite(nbd.Buffer.from_bytearray(data), off)
                    pending[ck] = ("write", off, n, None, None, None)
                elif k < 0.70:
                    model[off:off+n] = bytes(n)
                    ck = h.aio_zero(n, off)
                    pending[ck] = ("zero", off, n, None, None, None)
                elif k < 0.90:
                    buf = nbd.Buffer(n)
                    ck = h.aio_pread(buf, off)
                    pending[ck] = ("read", off, n, buf, bytes(model[off:off+n]), None)
                elif k < 0.93:
                    ck = h.aio_flush()
                    pending[ck] = ("flush", 0, 0, None, None, None)
                    issued += 1
                    continue
                else:                        # unchecked read across everything
                    o2 = r.randrange(SIZE - 262144)
                    ck = h.aio_pread(nbd.Buffer(262144), o2)
                    pending[ck] = ("bigread", o2, 262144, None, None, None)
                    issued += 1
                    continue
                busy_ranges[ck] = (off, n)
            issued += 1
        maxq = max(maxq, len(pending))
        h.poll(-1)
        for ck in list(pending):
            try:
                done = h.aio_command_completed(ck)
            except nbd.Error as e:
                errors.append("conn %d: %s at %d+%d failed: %s" % (c, pending[ck][0], pending[ck][1], pending[ck][2], e))
                done = True
            if not done:
                continue
            kind, off, n, buf, exp, stripe = pending.pop(ck)
            busy_ranges.pop(ck, None)
            if stripe is not None:
                busy_stripes.discard(stripe)
            nread += kind == "read"
            if kind == "read" and buf.to_bytearray() != exp:
                got = buf.to_bytearray()
                first = next(i for i in range(n) if got[i] != exp[i])
                errors.append("conn %d: read %d+%d differs from the model at byte %d" % (c, off, n, off + first))
        if len(errors) > 20:
            break
    h.flush()
    h.shutdown()
    stats[c] = (issued, maxq, nread)

threads = [threading.Thread(target=worker, args=(c,)) for c in range(NCONN)]
for t in threads: t.start()
for t in threads: t.join(timeout=100)
if any(t.is_alive() for t in threads):
    print("FAIL: workers did not finish"); sys.exit(1)

h = nbd.NBD(); h.connect_uri(uri)
got = h.pread(SIZE, 0)
if got != bytes(model):
    badb = [i for i in range(0, SIZE, 65536) if got[i:i+65536] != model[i:i+65536]]
    desc = []
    for i in badb[:4]:
        d = [j for j in range(i, i + 65536) if got[j] != model[j]]
        desc.append("block %d: %d bytes differ in %d..%d%s" % (
            i // 65536, len(d), d[0], d[-1],
            " (bytes read equal the original plugin data)"
            if all(got[j] == orig[j] for j in d) else
            " (bytes read are zeroes)" if all(got[j] == 0 for j in d) else ""))
    errors.append("final read-back differs from the model in %d 64K blocks: %s" % (len(badb), "; ".join(desc)))
h.flush()
if check_file:
    cur = open(disk, "rb").read()
    if cur != bytes(model):
        badc = sum(1 for i in range(0, SIZE, 65536) if cur[i:i+65536] != model[i:i+65536])
        errors.append("backing file differs from the model after flush in %d 64K blocks" % badc)
h.shutdown()
print("    %d connections: requests %s, max in flight %s, reads checked %s" % (
    NCONN, [stats[c][0] for c in sorted(stats)], [stats[c][1] for c in sorted(stats)],
    [stats[c][2] for c in sorted(stats)]), file=sys.stderr)
for e in errors[:20]: print("FAIL:", e)
sys.exit(1 if errors else 0)
EOF_PY
}
