#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# No stale data after the export shrinks and grows again (SPEC §4 "the
# export's size changes": when the size shrinks, blocks past the new end
# are forgotten, so a later growth reads the plugin's new bytes, never
# stale cached ones).  File plugin over a 1 MiB random file,
# cache-on-read=true, cache=writeback and cache=writethrough: connection 1
# reads the whole 1 MiB (so it is cached) and closes; the file is
# truncated to 512K; connection 2 opens, sees 512K, reads its first 4K and
# closes; the file is extended back to 1 MiB with new random bytes;
# connection 3 reads the whole 1 MiB, and the bytes past 512K must be the
# new ones.  (The filter this test was written against returned the old
# cached bytes.)  The first 512K, unchanged, must read as before.  And a
# cut inside a block (below) must not bring the cut bytes back.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

K=1024

# in_each_mode NAME SIZE SEED GOOD BAD: $tmp/NAME.py over a SIZE-byte random
# file (seed SEED), served through the filter with cache-on-read, in
# writeback and in writethrough.
in_each_mode() {
    local name=$1 size=$2 seed=$3 good=$4 failed=$5 mode disk
    for mode in writeback writethrough; do
        disk=$tmp/$name-$mode
        make_random_file "$disk" "$size" "$seed"
        start_nbdkit "$name-$mode" --filter="$FILTER" file "$disk" cache=$mode cache-on-read=true
        if py "$tmp/$name.py" "$uri" "$disk"; then ok "cache=$mode: $good"; else bad "cache=$mode: $failed"; fi
        assert_alive "$name-$mode"
        stop_nbdkit "$name-$mode"
        assert_no_crash_in "$tmp/$name-$mode.log"
    done
}

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, os, random
uri, disk = sys.argv[1:3]
K = 1024
old = open(disk, "rb").read()
fails = []
h = nbd.NBD(); h.connect_uri(uri)
if h.pread(1024 * K, 0) != old:
    fails.append("connection 1: the first read of 1 MiB is wrong")
h.shutdown()
os.truncate(disk, 512 * K)
h = nbd.NBD(); h.connect_uri(uri)
if h.get_size() != 512 * K:
    fails.append("connection 2 sees size %d, want 512K" % h.get_size())
if h.pread(4096, 0) != old[:4096]:
    fails.append("connection 2 reads the first 4K wrong")
h.shutdown()
new = random.Random(99).randbytes(512 * K)
with open(disk, "ab") as f:
    f.write(new)
h = nbd.NBD(); h.connect_uri(uri)
if h.get_size() != 1024 * K:
    fails.append("connection 3 sees size %d, want 1 MiB" % h.get_size())
got = h.pread(1024 * K, 0)
if got[:512 * K] != old[:512 * K]:
    fails.append("connection 3: the unchanged first 512K read wrong")
if got[512 * K:] != new:
    d = [i for i in range(512 * K, 1024 * K, 65536) if got[i:i + 65536] != new[i - 512 * K:i - 448 * K]]
    stale = [i for i in d if got[i:i + 65536] == old[i:i + 65536]]
    fails.append("connection 3: %d of 8 64K blocks past 512K are not the file's new bytes (%d are the old, "
                 "stale cached bytes)" % (len(d), len(stale)))
h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

# The file is cut inside a block while an older connection, which still
# sees the old size, stays open; it then writes inside the new end and
# flushes: the block's bytes past the new end must not be written back
# (they would grow the file again with the truncated data).
cat >"$tmp/cut.py" <<'EOF_PY'
import nbd, sys, os
uri, disk = sys.argv[1:3]
a = nbd.NBD(); a.connect_uri(uri)
a.pread(100000, 0)
os.truncate(disk, 70000)
b = nbd.NBD(); b.connect_uri(uri)
assert b.get_size() == 70000, b.get_size()
a.pwrite(b"X" * 10, 66000)
a.flush()
size = os.path.getsize(disk)
data = open(disk, "rb").read()
a.shutdown(); b.shutdown()
if size != 70000:
    print("FAIL: the file grew back to %d bytes after the older connection's flush" % size); sys.exit(1)
if data[66000:66010] != b"X" * 10:
    print("FAIL: the older connection's write is not in the file"); sys.exit(1)
EOF_PY

in_each_mode cut 100000 42 "a cut inside a block keeps the file at its new size" "the bytes cut off came back"

# An older connection that still sees the file at its old size writes past
# the new end (its whole last 64K block as it sees it, and the block after),
# the file grows back with new bytes, and a new connection opens: the older
# one must read its own write back, and its flush must put it in the file.
# (Before the fix, the growth cut the older connection's dirty block at the
# shrunk end, and it read the file's new bytes instead of its write.)  The
# file plugin fails reads past the end of the file, so what an older
# connection reads there is checked by the unit tests only.
cat >"$tmp/grow.py" <<'EOF_PY'
import nbd, sys, os, random
uri, disk = sys.argv[1:3]
fails = []
a = nbd.NBD(); a.connect_uri(uri)
os.truncate(disk, 70000)
b = nbd.NBD(); b.connect_uri(uri)
mine = random.Random(7).randbytes(100000 - 65536)
a.pwrite(mine, 65536)
with open(disk, "ab") as f:
    f.write(random.Random(8).randbytes(200000 - 70000))
c = nbd.NBD(); c.connect_uri(uri)
if a.pread(len(mine), 65536) != mine:
    fails.append("the older connection does not read its own write back after the file grew")
a.flush()
if open(disk, "rb").read()[65536:100000] != mine:
    fails.append("the older connection's flush did not put its write in the file")
for h in (a, b, c):
    h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

in_each_mode grow 100000 43 "an older connection's write past a shrunk end survives the growth" \
    "a shrink and growth with an older connection open lost or hid data"

in_each_mode t $((1024 * K)) 41 "after shrink and growth the new bytes are read" \
    "stale data after the export shrank and grew again"
finish
