#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# What reaches the plugin's backing file (file plugin) before and after a
# flush in each mode (SPEC §4):
#   writeback:    nothing before flush, everything after
#   writethrough: immediately
#   unsafe:       never, a flush is a no-op
# The client always reads back what it wrote; untouched data comes from
# the plugin.  A second connection sees the first one's unflushed writes
# (the cache is shared).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((16 * 1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, random
uri, disk, mode, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
orig = open(disk + ".orig", "rb").read()
model = bytearray(orig)
r = random.Random(7)
fails = []

def check_file(expect_new, when):
    cur = open(disk, "rb").read()
    want = bytes(model) if expect_new else orig
    if cur != want:
        diff = [i for i in range(0, size, 4096) if cur[i:i+4096] != want[i:i+4096]]
        fails.append("%s: backing file %s (first differing 4K pages at %s)" % (
            when, "does not hold the written data" if expect_new else "was modified",
            [hex(d) for d in diff[:5]]))

h = nbd.NBD(); h.connect_uri(uri)
h2 = nbd.NBD(); h2.connect_uri(uri)
# aligned block, partial blocks, a write straddling block boundaries,
# and one at the very end of the export
writes = [(0, 65536), (65536 * 5 + 100, 3000), (65536 * 9 - 7, 65536 * 2 + 14),
          (size - 65536 - 3333, 65536 + 3333), (4096 * 100 + 1, 1)]
for off, n in writes:
    data = r.randbytes(n)
    h.pwrite(data, off)
    model[off:off+n] = data
for off, n in writes:
    for hh, name in ((h, "writer"), (h2, "other connection")):
        if hh.pread(n, off) != bytes(model[off:off+n]):
            fails.append("read back by %s at %d+%d differs before flush" % (name, off, n))
# whole export in 4M chunks
for off in range(0, size, 4 << 20):
    if h.pread(4 << 20, off) != bytes(model[off:off + (4 << 20)]):
        fails.append("full read-back differs at chunk %#x" % off)

check_file(mode == "writethrough", "before flush (%s)" % mode)
h.flush()
check_file(mode in ("writeback", "writethrough"), "after flush (%s)" % mode)
# still reads the new data after the flush
if h2.pread(4 << 20, 0) != bytes(model[:4 << 20]):
    fails.append("read after flush differs")
h.shutdown(); h2.shutdown()
for f in fails:
    print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

for mode in writeback writethrough unsafe; do
    disk=$tmp/disk-$mode
    make_random_file "$disk.orig" $SIZE 1
    cp "$disk.orig" "$disk"
    start_nbdkit $mode --filter="$FILTER" file "$disk" cache=$mode
    if py "$tmp/t.py" "$uri" "$disk" $mode $SIZE; then
        ok "cache=$mode: backing file as expected before/after flush"
    else
        bad "cache=$mode: data path wrong (see above)"
    fi
    assert_alive $mode
    stop_nbdkit $mode
done
finish
