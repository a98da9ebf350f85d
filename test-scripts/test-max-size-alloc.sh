#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# cache-max-size bounds the cache file (SPEC §2, §4): with
# cache-max-size=1M the allocated size of the unlinked cache file (found
# through /proc/PID/fd) stays <= 1M + one 64K block of slack
#  - after 8 MiB of cache-on-read reads (clean blocks);
#  - after 8 MiB of writes in cache=unsafe and in writeback;
# and without cache-max-size the cache does grow past it (so the
# measurement itself is meaningful).  Passes against the C filter (data
# correctness under reclaim is test-max-size.sh).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

LIMIT=$((1048576 + 65536))

cat >"$tmp/io.py" <<'EOF_PY'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); what = sys.argv[2]
for i in range(128):
    if what == "read":
        h.pread(65536, 65536 * i)
    else:
        h.pwrite(bytes([i % 255 + 1]) * 65536, 65536 * i)
h.shutdown()
EOF_PY

# run NAME read|write LIMIT MAXSIZE-ARGS... -> prints allocated size.
# Reads come from the pattern plugin: plugin zeroes are cached as holes,
# which would allocate nothing and prove nothing.
run() {
    local name=$1 what=$2 lim=$3 plugin=memory; shift 3
    [ "$what" = read ] && plugin=pattern
    start_nbdkit $name --filter="$FILTER" $plugin 16M "$@"
    py "$tmp/io.py" "$uri" $what || fail "$name: I/O failed"
    local a
    a=$(wait_alloc_le "$pid" "$lim")
    stop_nbdkit $name
    echo "$a"
}

a=$(run nolimit read 999999999999 cache-on-read=true)
log "no cache-max-size, 8 MiB read with cache-on-read: allocated $a"
[ "$a" -ge $((8 * 1048576)) ] || bad "without a limit the cache file only holds $a bytes after 8 MiB cached (measurement broken?)"

a=$(run cor read $LIMIT cache-on-read=true cache-max-size=1M)
log "cache-max-size=1M, 8 MiB read with cache-on-read: allocated $a"
[ "$a" -le $LIMIT ] && ok "cache-on-read reads: $a <= $LIMIT" || bad "cache-on-read reads: allocated $a > $LIMIT"

a=$(run unsafe write $LIMIT cache=unsafe cache-max-size=1M)
log "cache-max-size=1M, unsafe, 8 MiB written: allocated $a"
[ "$a" -le $LIMIT ] && ok "unsafe writes: $a <= $LIMIT" || bad "unsafe writes: allocated $a > $LIMIT"

a=$(run wb write $((524288 + 65536)) cache=writeback cache-max-size=1M cache-high-threshold=50 cache-low-threshold=25)
log "cache-max-size=1M high=50 low=25, writeback, 8 MiB written: allocated $a"
[ "$a" -le $((524288 + 65536)) ] && ok "writeback writes with 50% threshold: $a <= 576K" ||
    bad "writeback writes with cache-high-threshold=50: allocated $a > 576K"
finish
