#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A read never returns a mix of old and new parts of one write (SPEC §5).
# EXPECTED TO FAIL against the C cache filter: it takes its lock per
# block, so a read concurrent with a multi-block write can see some blocks
# new and others old (typically dozens of torn reads in this test).
#
# One connection rewrites the same unaligned 3-block range over and over,
# each time with a single repeated byte value; three other connections
# read that range in a loop.  Every read must be uniform (one value).
# Detection is probabilistic, but a correct filter can never fail it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, threading
uri, bs = sys.argv[1], int(sys.argv[2])
OFF, N = bs + 123, 2 * bs + 1000         # 3 blocks, both ends partial
stop = False; torn = []; reads = [0]
def writer():
    h = nbd.NBD(); h.connect_uri(uri)
    for i in range(2000):
        h.pwrite(bytes([i % 250 + 1]) * N, OFF)
    h.shutdown()
def reader():
    h = nbd.NBD(); h.connect_uri(uri)
    while not stop:
        d = h.pread(N, OFF); reads[0] += 1
        if d.count(d[0]) != N:
            torn.append(sorted(set(d)))
    h.shutdown()
h0 = nbd.NBD(); h0.connect_uri(uri); h0.pwrite(bytes([255]) * N, OFF); h0.shutdown()
w = threading.Thread(target=writer)
rs = [threading.Thread(target=reader) for _ in range(3)]
w.start(); [r.start() for r in rs]
w.join(); stop = True; [r.join() for r in rs]
print("   %d reads, %d torn" % (reads[0], len(torn)), file=sys.stderr)
if torn:
    print("FAIL: %d of %d reads mixed several writes, e.g. byte values %s" % (len(torn), reads[0], torn[0][:6]))
    sys.exit(1)
EOF_PY

for mode in writeback writethrough unsafe; do
    for cor in false true; do
        nbdkit_captive --filter="$FILTER" memory 16M cache=$mode cache-on-read=$cor \
            --run '/usr/bin/python3 '"$tmp/t.py"' "$uri" 65536' &&
            ok "cache=$mode cache-on-read=$cor: no torn reads" ||
            bad "cache=$mode cache-on-read=$cor: torn reads"
    done
done
nbdkit_captive --filter="$FILTER" memory 16M cache-min-block-size=4K \
    --run '/usr/bin/python3 '"$tmp/t.py"' "$uri" 4096' &&
    ok "4K blocks: no torn reads" || bad "4K blocks: torn reads"
finish
