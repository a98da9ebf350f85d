#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Block status never calls cached data a hole or zero (SPEC §4 extents,
# **beyond**).  EXPECTED TO FAIL against the C cache filter, which passes
# the plugin's extents through: after an unflushed write nbdinfo --map
# reports hole,zero and nbdcopy copies zeroes instead of the data.
#
# Memory plugin (reports holes where never written), cache=writeback and
# cache=unsafe, unflushed writes; then:
#  - nbdinfo --map: no extent overlapping written data has the hole or
#    zero bit;
#  - python block_status (full and REQ_ONE at written offsets) agrees;
#  - nbdcopy of the export to a file reproduces the written data.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((16 * 1024 * 1024))

cat >"$tmp/write.py" <<'EOF_PY'
import nbd, sys, random
h = nbd.NBD(); h.connect_uri(sys.argv[1])
r = random.Random(12)
img = bytearray(16 * 1048576)
writes = [(1048576 + 5, 200000), (5 * 1048576 - 3, 6), (9 * 1048576, 65536),
          (16 * 1048576 - 1000, 1000)]
for off, n in writes:
    d = r.randbytes(n); h.pwrite(d, off); img[off:off+n] = d
open(sys.argv[2], "wb").write(img)
open(sys.argv[3], "w").write("\n".join("%d %d" % w for w in writes) + "\n")
h.shutdown()
EOF_PY

cat >"$tmp/bs.py" <<'EOF_PY'
import nbd, sys
uri, wfile = sys.argv[1], sys.argv[2]
writes = [tuple(map(int, l.split())) for l in open(wfile) if l.strip()]
h = nbd.NBD(); h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION); h.connect_uri(uri)
size = h.get_size(); fails = []
ext = []
def cb(meta, off, entries, err):
    if meta == nbd.CONTEXT_BASE_ALLOCATION:
        ext.append((off, list(entries)))
    return 0
# full map, following the server's extents
pos = 0
while pos < size:
    ext.clear()
    h.block_status(min(size - pos, 1 << 30), pos, cb)
    o = pos
    for i in range(0, len(ext[0][1]), 2):
        n, fl = ext[0][1][i], ext[0][1][i + 1]
        for wo, wn in writes:
            if o < wo + wn and wo < o + n and fl & (nbd.STATE_HOLE | nbd.STATE_ZERO):
                fails.append("block_status: extent %d+%d flags %d overlaps written %d+%d" % (o, n, fl, wo, wn))
        o += n
    pos = o
# REQ_ONE at every written offset
for wo, wn in writes:
    ext.clear()
    h.block_status(wn, wo, cb, nbd.CMD_FLAG_REQ_ONE)
    fl = ext[0][1][1]
    if fl & (nbd.STATE_HOLE | nbd.STATE_ZERO):
        fails.append("REQ_ONE block_status at written offset %d: flags %d" % (wo, fl))
h.shutdown()
for f in sorted(set(fails))[:10]: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

for mode in writeback unsafe; do
    start_nbdkit $mode --filter="$FILTER" memory $SIZE cache=$mode
    py "$tmp/write.py" "$uri" "$tmp/model-$mode" "$tmp/writes-$mode" || fail "writes failed"
    before=$_nbad

    # nbdinfo --map: "offset length type description"
    timeout 60 nbdinfo --map "$uri" >"$tmp/map-$mode" || fail "nbdinfo --map failed"
    sed 's/^/    map: /' "$tmp/map-$mode" >&2
    while read -r wo wn; do
        if awk -v wo="$wo" -v wn="$wn" '$1 < wo + wn && wo < $1 + $2 && ($3 % 4) != 0 {f=1} END {exit !f}' "$tmp/map-$mode"; then
            bad "cache=$mode: nbdinfo --map reports unflushed data at $wo+$wn as hole/zero"
        fi
    done <"$tmp/writes-$mode"

    py "$tmp/bs.py" "$uri" "$tmp/writes-$mode" ||
        bad "cache=$mode: block_status calls cached data a hole/zero"

    rm -f "$tmp/copy-$mode"
    timeout 60 nbdcopy -- "$uri" "$tmp/copy-$mode" || fail "nbdcopy failed"
    if cmp -s "$tmp/copy-$mode" "$tmp/model-$mode"; then
        :
    else
        bad "cache=$mode: nbdcopy of the export does not reproduce the written data ($(cmp "$tmp/copy-$mode" "$tmp/model-$mode" 2>&1 | head -n1))"
    fi
    [ "$_nbad" -ne "$before" ] || ok "cache=$mode: extents and nbdcopy see the cached data"
    stop_nbdkit $mode
done
finish
