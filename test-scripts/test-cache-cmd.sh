#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# NBD_CMD_CACHE (SPEC §4 cache): h.cache(len, off) loads the range into
# the cache whatever cache-on-read says, so later reads of that range make
# no plugin reads (stats filter after ours), and return the right data.
# A cache request over dirty (unflushed) data must not replace it with the
# plugin's older data.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((4 * 1024 * 1024))
disk=$tmp/disk
make_random_file "$disk" $SIZE 9

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys
uri, disk, what = sys.argv[1], sys.argv[2], sys.argv[3]
orig = open(disk, "rb").read()
h = nbd.NBD(); h.connect_uri(uri)
assert h.can_cache(), "can_cache is false"
ranges = [(100, 65530), (1048576, 262144), (3 * 1048576 + 5, 1)]
if "cache" in what:
    for off, n in ranges:
        h.cache(n, off)
if "read" in what:
    for t in range(2):
        for off, n in ranges:
            if h.pread(n, off) != orig[off:off+n]:
                print("FAIL: wrong data at", off, n); sys.exit(1)
h.shutdown()
EOF_PY

# reads NAME WHAT [args] -> plugin reads
reads() {
    local name=$1 what=$2; shift 2
    start_nbdkit $name --filter="$FILTER" --filter=stats file "$disk" \
        statsfile="$tmp/$name.stats" "$@"
    py "$tmp/t.py" "$uri" "$disk" "$what" || bad "$name: client check failed"
    stop_nbdkit $name
    stats_ops "$tmp/$name.stats" read
}

for mode in writeback writethrough unsafe; do
    for cor in false true; do
        c=$(reads c-$mode-$cor cache cache=$mode cache-on-read=$cor)
        cr=$(reads cr-$mode-$cor cache+read cache=$mode cache-on-read=$cor)
        log "cache=$mode cache-on-read=$cor: plugin reads: cache only $c, cache then 2x read $cr"
        if [ "$c" -gt 0 ] && [ "$cr" -eq "$c" ]; then
            ok "cache=$mode cache-on-read=$cor: reads after NBD_CMD_CACHE served from the cache"
        else
            bad "cache=$mode cache-on-read=$cor: NBD_CMD_CACHE did not load the range (plugin reads: cache only $c, cache+reads $cr)"
        fi
    done
done
r=$(reads r-nocache read cache-on-read=false)
[ "$r" -gt 0 ] || bad "reads without cache made no plugin reads (measurement broken?)"

# cache over dirty data keeps the dirty data
cp "$disk" "$disk.2"
start_nbdkit dirty --filter="$FILTER" file "$disk.2"
py - "$uri" "$disk.2" <<'EOF_PY' || bad "NBD_CMD_CACHE over dirty blocks lost data"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
d = b"D" * 70000
h.pwrite(d, 65536 - 100)
h.cache(300000, 0)
assert h.pread(70000, 65536 - 100) == d, "cache replaced dirty data"
h.flush()
assert open(sys.argv[2], "rb").read()[65536 - 100:65536 - 100 + 70000] == d, "flush after cache lost data"
h.shutdown()
EOF_PY
stop_nbdkit dirty
finish
