#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Each connection keeps the size it opened with (SPEC §4 "the export's
# size changes": the filter never calls next past that connection's size;
# write-back and reclaim through it skip blocks beyond its end, which stay
# dirty until a connection that sees them writes them back).  File plugin
# over a 4 MiB file, cache=writeback.  Connection A opens (4 MiB); the
# file grows to 8 MiB; connection B opens (8 MiB) and writes 100 KiB at
# 6 MiB.  Then (a) with cache-max-size=1M, A writes 2 MiB inside its
# 4 MiB, so reclaim runs on A's requests while B's dirty blocks are the
# oldest; (b) without a max size, A flushes.  A's requests must succeed,
# nbdkit must stay alive with no assertion in its log (the filter this
# test was written against made nbdkit abort: "backend_valid_range:
# assertion failed"), and after B flushes, B's data at 6 MiB and A's data
# are in the file.  (a) and (b) run in separate nbdkit instances.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=$((1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, random
uri, disk, case = sys.argv[1:4]
M = 1048576
r = random.Random(17)
fails = []
a = nbd.NBD(); a.connect_uri(uri)
if a.get_size() != 4 * M:
    print("FAIL: connection A sees size %d, want 4 MiB" % a.get_size()); sys.exit(1)
extra = r.randbytes(4 * M)
with open(disk, "ab") as f:
    f.write(extra)
model = bytearray(open(disk, "rb").read())
b = nbd.NBD(); b.connect_uri(uri)
if b.get_size() != 8 * M:
    print("FAIL: connection B sees size %d, want 8 MiB" % b.get_size()); sys.exit(1)
bdata = r.randbytes(100 * 1024)
b.pwrite(bdata, 6 * M + 1234); model[6 * M + 1234:6 * M + 1234 + len(bdata)] = bdata
try:
    if case == "reclaim":
        adata = r.randbytes(2 * M)
        for i in range(0, 2 * M, 256 * 1024):          # 8 writes of 256K
            a.pwrite(adata[i:i + 256 * 1024], M + 777 + i)
        model[M + 777:3 * M + 777] = adata
        if a.pread(2 * M, M + 777) != adata:
            fails.append("A reads back its own writes wrong")
    else:
        adata = r.randbytes(5000)
        a.pwrite(adata, 100000); model[100000:105000] = adata
    a.flush()
except nbd.Error as e:
    fails.append("a request of connection A failed: %s" % e)
try:
    if b.pread(len(bdata), 6 * M + 1234) != bdata:
        fails.append("B reads back its data at 6 MiB wrong")
    b.flush()
except nbd.Error as e:
    fails.append("a request of connection B failed: %s" % e)
cur = open(disk, "rb").read()
if cur[6 * M + 1234:6 * M + 1234 + len(bdata)] != bdata:
    fails.append("after B's flush the file lacks B's data at 6 MiB")
if cur != bytes(model):
    bad = [i // 65536 for i in range(0, 8 * M, 65536) if cur[i:i + 65536] != model[i:i + 65536]]
    fails.append("after the flushes the file differs from the model in 64K blocks %s" % bad[:8])
for h in (a, b):
    try:
        h.shutdown()
    except nbd.Error:
        pass
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

run() {   # run NAME CASE [args]
    local name=$1 case=$2 disk=$tmp/disk-$1; shift 2
    make_random_file "$disk" $((4 * M)) 33
    start_nbdkit $name --filter="$FILTER" file "$disk" cache=writeback "$@"
    if py "$tmp/t.py" "$uri" "$disk" $case; then
        ok "$name: connections of different sizes served, B's data flushed"
    else
        bad "$name: wrong behaviour after the export grew under an open connection"
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        grep -Ei 'assertion|abort' "$tmp/$name.log" | head -3 >&2 || true
        bad "$name: nbdkit died"
        return
    fi
    if grep -Ei 'assertion' "$tmp/$name.log" >&2; then
        bad "$name: assertion in the nbdkit log"
    fi
    stop_nbdkit $name
    assert_no_crash_in "$tmp/$name.log"
}
run reclaim reclaim cache-max-size=1M
run flush flush
finish
