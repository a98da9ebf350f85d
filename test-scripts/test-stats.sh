#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# cache-stats=FILE (SPEC §8 Statistics).  EXPECTED TO FAIL against the C
# cache filter: it has no cache-stats (the key goes to the plugin, which
# refuses it).
#  - the file is there once nbdkit is ready, and reports no requests yet;
#  - it reflects the requests sent (exact counts), replaced whole (a new
#    inode each time) while the server runs, at most once a second while
#    the numbers change and not at all while they do not;
#  - at exit it holds the final numbers, and -D swiftcache.stats=1 logs
#    the same report; no temporary file is left behind;
#  - a path that cannot be created stops start-up with a message naming
#    cache-stats.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((4 * 1024 * 1024))
disk=$tmp/disk
make_random_file "$disk" $SIZE 31
mkdir "$tmp/statsdir"
stats=$tmp/statsdir/stats

# wait_for_stats WANT-FILE SECONDS: until the stats file equals WANT-FILE.
wait_for_stats() {
    local i
    for i in $(seq 1 $(( $2 * 10 ))); do
        cmp -s "$1" "$stats" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
inode() { stat -c %i "$stats"; }

# Phase 1: one whole-block write, a hit, a miss (cache-on-read fills its
# block from the plugin), a flush that writes the block back.
cat >"$tmp/phase1.py" <<'EOF_PY'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"w" * 65536, 0)
assert h.pread(65536, 0) == b"w" * 65536
h.pread(4096, 1048576)
h.flush()
h.shutdown()
EOF_PY
cat >"$tmp/want1" <<'EOF'
swiftcache statistics
requests: read 2, write 1, zero 0, trim 0, flush 1, extents 0, cache 0
read hits: 1 block, 65536 bytes (64.0 KiB)
read misses: 1 block, 4096 bytes (4.0 KiB)
hit ratio: 50.0% of the blocks read
plugin reads: 65536 bytes (64.0 KiB)
plugin writes: 65536 bytes (64.0 KiB)
write-backs: 1 block, 65536 bytes (64.0 KiB)
reclaims: 0 blocks
zero blocks now: 0
dirty now: 0 bytes, peak 65536 bytes (64.0 KiB)
cached now: 131072 bytes (128.0 KiB), peak 131072 bytes (128.0 KiB)
EOF

# Phase 3: a trim drops the block read in phase 1; a 4K write makes a
# partial block, which the flush writes back alone (and drops).
cat >"$tmp/phase3.py" <<'EOF_PY'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.trim(65536, 1048576)
h.pwrite(b"p" * 4096, 3 * 1048576)
h.flush()
h.shutdown()
EOF_PY

# want_final N: the report at exit after phases 1 and 3 and N reads of 4K
# at 0 in between (all hits), with the report's rounding and units.
want_final() {
    py - "$1" <<'EOF_PY'
import math, sys
n = int(sys.argv[1])
def tenths(x): r = math.floor(x * 10 + 0.5); return "%d.%d" % (r // 10, r % 10)
def size(b):
    scaled, unit = float(b), -1
    while scaled >= 1024 and unit + 1 < 6: scaled /= 1024; unit += 1
    if unit < 0: return "1 byte" if b == 1 else "%d bytes" % b
    return "%d bytes (%s %s)" % (b, tenths(scaled), ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"][unit])
def blocks(c): return "1 block" if c == 1 else "%d blocks" % c
print("swiftcache statistics")
print("requests: read %d, write 2, zero 0, trim 1, flush 2, extents 0, cache 0" % (2 + n))
print("read hits: %s, %s" % (blocks(1 + n), size(65536 + 4096 * n)))
print("read misses: 1 block, 4096 bytes (4.0 KiB)")
print("hit ratio: %s%% of the blocks read" % tenths((1 + n) / (2 + n) * 100))
print("plugin reads: 65536 bytes (64.0 KiB)")
print("plugin writes: 69632 bytes (68.0 KiB)")
print("write-backs: 2 blocks, 69632 bytes (68.0 KiB)")
print("reclaims: 0 blocks")
print("zero blocks now: 0")
print("dirty now: 0 bytes, peak 65536 bytes (64.0 KiB)")
print("cached now: 65536 bytes (64.0 KiB), peak 131072 bytes (128.0 KiB)")
EOF_PY
}

start_nbdkit stats -v -D swiftcache.stats=1 --filter="$FILTER" file "$disk" \
    cache-on-read=true cache-stats="$stats"

# ---- there at start-up, with no requests
for i in $(seq 1 20); do [ -f "$stats" ] && break; sleep 0.1; done
[ -f "$stats" ] || fail "no $stats within 2 s of start-up"
if grep -qx 'requests: read 0, write 0, zero 0, trim 0, flush 0, extents 0, cache 0' "$stats"; then
    ok "the stats file is there at start-up, with no requests"
else
    sed 's/^/    | /' "$stats" >&2
    bad "the stats file at start-up does not report zero requests"
fi
first=$(inode)

# ---- exact counts, replaced while running
py "$tmp/phase1.py" "$uri" || fail "phase 1 client failed"
if wait_for_stats "$tmp/want1" 3; then
    ok "the stats file follows the requests (exact counts) within 3 s"
else
    diff "$tmp/want1" "$stats" | sed 's/^/    | /' >&2
    bad "the stats file does not show phase 1's requests after 3 s"
fi
updated=$(inode)
[ "$updated" != "$first" ] && ok "the file was replaced (inode $first -> $updated)" ||
    bad "the file kept inode $first: not replaced by a rename"

# ---- not rewritten while nothing changes
sleep 2.2
[ "$(inode)" = "$updated" ] && ok "not rewritten while the numbers do not change" ||
    bad "rewritten although nothing changed (inode $updated -> $(inode))"

# ---- at most once a second while reads go on for 3 s
py - "$uri" >"$tmp/reads" <<'EOF_PY' &
import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1])
n, end = 0, time.monotonic() + 3
while time.monotonic() < end:
    h.pread(4096, 0)
    n += 1
h.shutdown()
print(n)
EOF_PY
reader=$!
inodes=()
while kill -0 $reader 2>/dev/null; do inodes+=("$(inode)"); sleep 0.05; done
wait $reader || fail "the reader failed"
changes=$(printf '%s\n' "${inodes[@]}" | uniq | tail -n +2 | wc -l)
if [ "$changes" -ge 1 ] && [ "$changes" -le 4 ]; then
    ok "replaced $changes times during 3 s of reads"
else
    bad "replaced $changes times during 3 s of reads (want 1 to 4: at most once a second)"
fi

# ---- final at exit; the log has the same report
py "$tmp/phase3.py" "$uri" || fail "phase 3 client failed"
stop_nbdkit stats
want_final "$(cat "$tmp/reads")" >"$tmp/want-final"
if cmp -s "$tmp/want-final" "$stats"; then
    ok "at exit the file has the final numbers ($(cat "$tmp/reads") reads of 4K in between)"
else
    diff "$tmp/want-final" "$stats" | sed 's/^/    | /' >&2
    bad "the file at exit does not have the final numbers"
fi
sed -n 's/.*swiftcache: stats: //p' "$tmp/stats.log" >"$tmp/logged"
if cmp -s "$tmp/logged" "$stats"; then
    ok "-D swiftcache.stats=1 logged the same report at exit"
else
    diff "$stats" "$tmp/logged" | sed 's/^/    | /' >&2
    bad "-D swiftcache.stats=1 did not log the report of the file"
fi
leftover=$(ls -A "$tmp/statsdir" | grep -vx stats || true)
[ -z "$leftover" ] && ok "no temporary file left next to it" || bad "left behind: $leftover"

# ---- a path that cannot be created stops start-up
rc=0
timeout 20 nbdkit -U - --filter="$FILTER" file "$disk" cache-stats=/nonexistent/dir/stats \
    --run "touch $tmp/ran" >"$tmp/bad.out" 2>&1 || rc=$?
if [ "$rc" -eq 0 ] || [ -e "$tmp/ran" ]; then
    bad "started with cache-stats=/nonexistent/dir/stats"
elif ! grep -q 'cache-stats' "$tmp/bad.out"; then
    bad "the error does not name cache-stats: $(cat "$tmp/bad.out")"
else
    ok "cache-stats=/nonexistent/dir/stats stops start-up: $(grep -m1 error "$tmp/bad.out")"
fi
assert_no_crash_in "$tmp/stats.log"
finish
