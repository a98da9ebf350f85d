#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A cache fill from the plugin never overwrites newer data written
# meanwhile (SPEC §5).  Plugin reads are slowed down (delay filter after
# ours) so that cache-on-read fills and read-modify-write reads are still
# waiting on the plugin while another connection writes into the same
# blocks.  Afterwards every written byte must read back, and after a
# flush be in the backing file.  Also with NBD_CMD_CACHE as the filler.
# Passes against the C filter (it holds its lock while reading the
# plugin).  The delay only widens the race window; nothing is timed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((4 * 1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, random
uri, disk, filler, mode = sys.argv[1:5]
orig = open(disk, "rb").read()
model = bytearray(orig)
BS = 65536; NB = 64
R = nbd.NBD(); R.connect_uri(uri)
W = nbd.NBD(); W.connect_uri(uri)
rnd = random.Random(31)
rc = []
# reader / cacher: touch every block (fills from the slow plugin)
for b in range(NB):
    if filler == "read":
        rc.append(R.aio_pread(nbd.Buffer(BS), b * BS))
    else:
        rc.append(R.aio_cache(BS, b * BS))
# writer: a small unaligned write into every block, issued meanwhile
wc = []
for b in range(NB):
    off = b * BS + rnd.randrange(BS - 5000); n = rnd.randint(1, 5000)
    d = rnd.randbytes(n); model[off:off+n] = d
    wc.append(W.aio_pwrite(nbd.Buffer.from_bytearray(d), off))
# drive both handles
while rc or wc:
    if rc: R.poll(0)
    if wc: W.poll(0)
    rc[:] = [c for c in rc if not R.aio_command_completed(c)]
    wc[:] = [c for c in wc if not W.aio_command_completed(c)]
    if rc: R.poll(10)
    if wc: W.poll(10)
fails = []
for h, name in ((R, "reader"), (W, "writer")):
    got = h.pread(NB * BS, 0)
    if got != bytes(model[:NB * BS]):
        bad = [b for b in range(NB) if got[b*BS:(b+1)*BS] != model[b*BS:(b+1)*BS]]
        fails.append("%s sees stale data in %d blocks (first: %s)" % (name, len(bad), bad[:5]))
W.flush()
if mode != "unsafe":
    cur = open(disk, "rb").read()
    if cur != bytes(model):
        bad = [b for b in range(NB) if cur[b*BS:(b+1)*BS] != model[b*BS:(b+1)*BS]]
        fails.append("backing file stale in %d blocks after flush (first: %s)" % (len(bad), bad[:5]))
R.shutdown(); W.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

for mode in writeback writethrough unsafe; do
    for filler in read cache; do
        name=$mode-$filler
        disk=$tmp/disk-$name
        make_random_file "$disk" $SIZE 17
        start_nbdkit $name --filter="$FILTER" --filter=delay file "$disk" \
            rdelay=10ms cache=$mode cache-on-read=true
        if py "$tmp/t.py" "$uri" "$disk" $filler $mode; then
            ok "cache=$mode, filler=$filler: no newer data overwritten by a fill"
        else
            bad "cache=$mode, filler=$filler: a fill overwrote newer data"
        fi
        stop_nbdkit $name
    done
done
finish
