#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Reclaim under concurrency without losing data (SPEC §4 cache-max-size
# **beyond**, §5).  EXPECTED TO FAIL against the C cache filter, which
# drops dirty blocks.
#
# The 4-connection aio workload of test-concurrency.sh (64, or 4,
# requests in flight each, 16 MiB export, shared blocks, flushes from
# every connection meanwhile) with cache-max-size=1M, so
# blocks are reclaimed - dirty ones written back first - all the time:
# every read is checked against the model, the whole export at the end,
# and (writeback, writethrough) the backing file after the final flush.
# The cache file stays <= 1M + one block afterwards.
# First a simpler form that is easier to debug: 2 and 4 connections, each
# with one request at a time (plain synchronous libnbd), small unaligned
# writes into 1000-byte stripes of the first 8 MiB (128 shared blocks)
# and a flush every 10 writes; then the whole export is compared.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((16 * 1024 * 1024))
aio_model_script >"$tmp/t.py"

cat >"$tmp/sync.py" <<'EOF_PY'
import nbd, sys, random, threading
uri, disk, nconn = sys.argv[1], sys.argv[2], int(sys.argv[3])
orig = open(disk, "rb").read(); SIZE = len(orig)
model = bytearray(orig)
def worker(c):
    h = nbd.NBD(); h.connect_uri(uri); r = random.Random(c)
    for i in range(600):
        s = r.randrange(c, SIZE // 2 // 1000, nconn)
        off = s * 1000 + r.randrange(500); n = r.randint(1, 500)
        d = r.randbytes(n); model[off:off+n] = d
        h.pwrite(d, off)
        if i % 10 == c: h.flush()
    h.shutdown()
ts = [threading.Thread(target=worker, args=(c,)) for c in range(nconn)]
[t.start() for t in ts]; [t.join() for t in ts]
h = nbd.NBD(); h.connect_uri(uri)
got = h.pread(SIZE, 0)
bad = [i // 65536 for i in range(0, SIZE, 65536) if got[i:i+65536] != model[i:i+65536]]
if bad:
    zero = [b for b in bad if got[b*65536:(b+1)*65536].count(0) > 60000]
    print("FAIL: %d connections: blocks %s read wrong (%d of them mostly zeroes)" % (nconn, bad[:10], len(zero)))
    sys.exit(1)
EOF_PY
for nconn in 2 4; do
    disk=$tmp/disk-sync-$nconn
    make_random_file "$disk" $SIZE 29
    start_nbdkit sync$nconn --filter="$FILTER" file "$disk" cache-max-size=1M
    py "$tmp/sync.py" "$uri" "$disk" $nconn &&
        ok "$nconn synchronous connections writing + flushing: no data lost" ||
        bad "$nconn synchronous connections writing + flushing under reclaim: data lost"
    stop_nbdkit sync$nconn
done

run() {   # run NAME CHECKFILE NOPS INFLIGHT [args]
    local name=$1 check=$2 nops=$3 inflight=$4; shift 4
    local disk=$tmp/disk-$name
    make_random_file "$disk" $SIZE 23
    start_nbdkit $name --filter="$FILTER" file "$disk" cache-max-size=1M "$@"
    if PY_TIMEOUT=120 py "$tmp/t.py" "$uri" "$disk" $check $nops $inflight; then
        ok "$name: consistent with the model under reclaim"
    else
        bad "$name: data lost or wrong under reclaim"
    fi
    assert_alive $name
    local a
    a=$(wait_alloc_le "$pid" $((1048576 + 65536)))
    [ "$a" -le $((1048576 + 65536)) ] || bad "$name: cache file holds $a bytes > 1M + 64K"
    stop_nbdkit $name
    assert_no_crash_in "$tmp/$name.log"
}
run writeback yes 1500 64 cache=writeback
run writeback-4 yes 1500 4 cache=writeback
run writeback-cor yes 1000 64 cache=writeback cache-on-read=true cache-high-threshold=60 cache-low-threshold=30
run writeback-cor-4 yes 1000 4 cache=writeback cache-on-read=true
run unsafe no 800 64 cache=unsafe
run writethrough yes 800 64 cache=writethrough cache-on-read=true
finish
