#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Reclaim drops the least recently used blocks first (SPEC §4
# cache-max-size).  cache-max-size=1M (16 blocks of 64K), thresholds
# 95/80, cache-on-read=true, data plugin (data in every block: blocks
# of zeroes would be kept as known zeroes, which take no room), log
# filter after ours:
#   1. read blocks 0..9            (10 blocks cached)
#   2. read blocks 0..4 again      (now more recent than 5..9)
#   3. read blocks 20..27          (passes the high threshold: reclaim)
#   4. read blocks 0..4 again      -> must still be cached: no plugin reads
#   5. read blocks 5..9 again      -> at least some were dropped
# and the cache file never holds more than 1M + one block.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BS=65536
start_nbdkit lru --filter="$FILTER" --filter=log data '( 0x55 0xaa )*8388608' \
    cache-on-read=true cache-max-size=1M logfile="$tmp/lru.nbdlog"
py - "$uri" "$tmp/phase" <<'EOF_PY'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); BS = 65536
def rd(blocks):
    for b in blocks: h.pread(4096, b * BS + 1000)
rd(range(0, 10)); rd(range(0, 5)); rd(range(20, 28))
h.flush()                      # marker in the log: phase 4 starts here
rd(range(0, 5))
h.flush()                      # marker: phase 5
rd(range(5, 10))
h.shutdown()
EOF_PY
alloc=$(wait_alloc_le "$pid" $((1048576 + BS)))
stop_nbdkit lru
[ "$alloc" -le $((1048576 + BS)) ] || bad "cache file holds $alloc bytes > 1M + 64K"

# plugin reads per phase (phases separated by the Flush lines)
py - "$tmp/lru.nbdlog" >"$tmp/phases" <<'EOF_PY'
import re, sys
phase = 0; reads = {0: [], 1: [], 2: []}
for line in open(sys.argv[1]):
    m = re.search(r' connection=\d+ (Read|Flush) id=\d+ (.*)', line)
    if not m: continue
    if m.group(1) == "Flush":
        phase += 1; continue
    f = dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
    o, n = int(f["offset"], 0), int(f["count"], 0)
    reads[min(phase, 2)].extend(range(o // 65536, (o + n - 1) // 65536 + 1))
for p in range(3):
    print(" ".join(map(str, sorted(set(reads[p])))) or "-")
EOF_PY
p4=$(sed -n 2p "$tmp/phases"); p5=$(sed -n 3p "$tmp/phases")
log "plugin reads: phases 1-3: $(sed -n 1p "$tmp/phases"); phase 4 (blocks 0-4): $p4; phase 5 (blocks 5-9): $p5"
[ "$p4" = "-" ] && ok "recently used blocks 0-4 survived reclaim" ||
    bad "recently used blocks were dropped: re-reading blocks 0-4 read blocks '$p4' from the plugin"
[ "$p5" != "-" ] && ok "least recently used blocks 5-9 were dropped ($p5)" ||
    bad "no block of 5-9 was dropped although the cache passed its high threshold"
finish
