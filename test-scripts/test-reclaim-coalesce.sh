#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Reclaim writes dirty blocks back in runs, not one block at a time (SPEC
# §4 cache-max-size; README: write-back sends runs of dirty blocks as one
# plugin request).  cache-min-block-size=4K cache-max-size=1M, writeback,
# file plugin over a sparse 64M file with nbdkit's log filter under ours:
# 8 MiB written in eight sequential 1 MiB requests, then a flush.  Each
# reclaim round takes the cache from the high threshold (95% of 1M,
# ~973K) to the low one (80%, ~819K): ~154K, ~38 blocks of 4K, which are
# the least recently used, i.e. adjacent blocks of the sequential writes,
# so one or two plugin writes a round.  8 MiB - 0.8 MiB left cached is
# about 7.2 MiB / 154K ~ 48 rounds (a filter that reclaims in smaller
# chunks as each request stores its blocks may need a few more), plus a
# few writes for the flush: at most 200 plugin writes averaging at least
# 32 KiB leaves room, while block-by-block write-back takes ~1,800 writes
# of 4 KiB (the filter this test was written against: ~1,841).  The data
# must read back and be in the file after the flush.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=$((1024 * 1024))
disk=$tmp/disk
truncate -s 64M "$disk"
nlog=$tmp/coalesce.nbdlog
start_nbdkit coalesce --filter="$FILTER" --filter=log file "$disk" logfile="$nlog" \
    cache=writeback cache-min-block-size=4K cache-max-size=1M

py - "$uri" "$disk" <<'EOF_PY' || bad "data written under reclaim wrong after the flush"
import nbd, sys, random
uri, disk = sys.argv[1:3]
M = 1048576
data = random.Random(4).randbytes(8 * M)
h = nbd.NBD(); h.connect_uri(uri)
for i in range(8):
    h.pwrite(data[i * M:(i + 1) * M], 3 * M + i * M)
h.flush()
fails = []
if h.pread(8 * M, 3 * M) != data:
    fails.append("the 8 MiB read back wrong")
with open(disk, "rb") as f:
    f.seek(3 * M)
    cur = f.read(8 * M)
if cur != data:
    n = sum(1 for i in range(0, 8 * M, 65536) if cur[i:i + 65536] != data[i:i + 65536])
    fails.append("after the flush the file differs in %d of 128 64K chunks" % n)
h.shutdown()
for x in fails: print("FAIL:", x)
sys.exit(1 if fails else 0)
EOF_PY
assert_alive coalesce
stop_nbdkit coalesce
assert_no_crash_in "$tmp/coalesce.log"

read -r n bytes < <(log_reqs "$nlog" Write | awk '{ n++; s += $2 } END { print n + 0, s + 0 }')
avg=$((n > 0 ? bytes / n : 0))
log "8 MiB written in 1 MiB requests: $n plugin writes, $bytes bytes, average $avg bytes"
[ "$n" -gt 0 ] && [ "$n" -le 200 ] && ok "$n plugin writes (<= 200)" ||
    bad "$n plugin writes for 8 MiB of sequential writes under reclaim, want 1..200 (runs, not blocks)"
[ "$avg" -ge 32768 ] && ok "average plugin write $avg bytes (>= 32 KiB)" ||
    bad "average plugin write $avg bytes < 32 KiB: reclaim writes back block by block"
finish
