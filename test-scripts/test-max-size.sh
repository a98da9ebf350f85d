#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# cache-max-size without data loss (SPEC §4 cache-max-size, **beyond**).
# EXPECTED TO FAIL against the C cache filter, which punches dirty blocks
# out of the cache and loses their data (about 116 of 128 blocks here).
#
# cache-max-size=1M, writeback, file plugin: write 8 MiB of distinct data
# (128 blocks of 64K, each with its own content) then:
#  - the unlinked cache file's allocated size is <= 1M + one block;
#  - the client reads back every byte it wrote (before any flush);
#  - after a flush the backing file holds every byte written.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((16 * 1024 * 1024))
disk=$tmp/disk
make_random_file "$disk" $SIZE 8
start_nbdkit max --filter="$FILTER" file "$disk" cache-max-size=1M

cat >"$tmp/write.py" <<'EOF_PY'
import nbd, sys, random
h = nbd.NBD(); h.connect_uri(sys.argv[1])
r = random.Random(88)
data = r.randbytes(8 * 1048576)
# 8 MiB at offset 1M+12345: unaligned, so partial blocks at both ends
h.pwrite(data[:3 * 1048576], 1048576 + 12345)
for i in range(3, 8):          # then 1 MiB at a time
    h.pwrite(data[i * 1048576:(i + 1) * 1048576], 1048576 + 12345 + i * 1048576)
h.shutdown()
open(sys.argv[2], "wb").write(data)
EOF_PY
py "$tmp/write.py" "$uri" "$tmp/written" || fail "writes failed"
alloc=$(wait_alloc_le "$pid" $((1048576 + 65536)))
log "cache file allocated size after 8 MiB of writes: $alloc"
[ "$alloc" -le $((1048576 + 65536)) ] ||
    bad "cache file allocated size $alloc > 1M + 64K after the writes"

cat >"$tmp/check.py" <<'EOF_PY'
import nbd, sys
uri, disk, written = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(written, "rb").read()
off = 1048576 + 12345
h = nbd.NBD(); h.connect_uri(uri)
fails = []
got = h.pread(len(data), off)
if got != data:
    badblk = sum(1 for i in range(0, len(data), 65536) if got[i:i+65536] != data[i:i+65536])
    fails.append("before flush: client reads wrong data in %d of %d 64K chunks" % (badblk, len(data) // 65536))
h.flush()
cur = open(disk, "rb").read()[off:off + len(data)]
if cur != data:
    badblk = sum(1 for i in range(0, len(data), 65536) if cur[i:i+65536] != data[i:i+65536])
    fails.append("after flush: backing file wrong in %d of %d 64K chunks (dirty blocks lost)" % (badblk, len(data) // 65536))
if h.pread(len(data), off) != data:
    fails.append("after flush: client reads wrong data")
h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY
if py "$tmp/check.py" "$uri" "$disk" "$tmp/written"; then
    ok "no data lost with cache-max-size=1M"
else
    bad "data lost with cache-max-size=1M"
fi
alloc=$(wait_alloc_le "$pid" $((1048576 + 65536)))
log "cache file allocated size at the end: $alloc"
[ "$alloc" -le $((1048576 + 65536)) ] ||
    bad "cache file allocated size $alloc > 1M + 64K at the end"
assert_alive max
stop_nbdkit max
finish
