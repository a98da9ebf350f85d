#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Zero requests (SPEC §4 zero):
#  - a plain zero behaves like a write of zeroes: cached in writeback (the
#    backing file is unchanged until a flush, then holds zeroes), written
#    through at once in writethrough, never in unsafe;
#  - with NBD_CMD_FLAG_FAST_ZERO it fails with ENOTSUP and changes nothing
#    (neither what the client reads nor the backing file);
#  - a zero with FUA in writeback reaches the file at once;
#  - unaligned zero ranges, including the end of the export.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((4 * 1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, errno
uri, disk, mode = sys.argv[1], sys.argv[2], sys.argv[3]
size = 4 * 1024 * 1024
orig = open(disk, "rb").read()
model = bytearray(orig)
fails = []
h = nbd.NBD(); h.connect_uri(uri)
if not h.can_zero(): fails.append("can_zero is false")
if not h.can_fast_zero(): fails.append("can_fast_zero is false")

# FAST_ZERO must fail with ENOTSUP and change nothing
for off, n in [(0, 65536), (100000, 300000), (size - 5000, 5000)]:
    try:
        h.zero(n, off, nbd.CMD_FLAG_FAST_ZERO)
        fails.append("fast zero %d+%d succeeded" % (off, n))
    except nbd.Error as e:
        if e.errnum != errno.ENOTSUP:
            fails.append("fast zero %d+%d failed with errno %s, want ENOTSUP" % (off, n, e.errnum))
if h.pread(size, 0) != bytes(model):
    fails.append("fast zero changed the data the client reads")
if open(disk, "rb").read() != orig:
    fails.append("fast zero changed the backing file")

# plain zeroes: aligned, unaligned, across blocks, to the end of the export
zs = [(65536 * 2, 65536), (70001, 999), (65536 * 7 - 10, 65536 + 20), (size - 12345, 12345)]
for off, n in zs:
    h.zero(n, off)
    model[off:off+n] = bytes(n)
# a zero after a write in the same block
h.pwrite(b"w" * 3000, 1500000); model[1500000:1503000] = b"w" * 3000
h.zero(1000, 1501000); model[1501000:1502000] = bytes(1000)
if h.pread(size, 0) != bytes(model):
    fails.append("after zero: client reads wrong data")
cur = open(disk, "rb").read()
if mode == "writethrough":
    if cur != bytes(model): fails.append("writethrough: zeroes not in the backing file at once")
else:
    if cur != orig: fails.append("%s: backing file changed before flush" % mode)

# zero with FUA (writeback: reaches the file at once)
h.zero(50000, 2500000, nbd.CMD_FLAG_FUA); model[2500000:2550000] = bytes(50000)
cur = open(disk, "rb").read()
if mode in ("writeback", "writethrough") and cur[2500000:2550000] != bytes(50000):
    fails.append("%s: FUA zero did not reach the backing file at once" % mode)
if mode == "unsafe" and cur != orig:
    fails.append("unsafe: FUA zero reached the backing file")

h.flush()
cur = open(disk, "rb").read()
if mode == "unsafe":
    if cur != orig: fails.append("unsafe: backing file changed after flush")
else:
    if cur != bytes(model): fails.append("%s: backing file wrong after flush" % mode)
if h.pread(size, 0) != bytes(model):
    fails.append("after flush: client reads wrong data")
h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

for mode in writeback writethrough unsafe; do
    disk=$tmp/disk-$mode
    make_random_file "$disk" $SIZE 3
    start_nbdkit $mode --filter="$FILTER" --filter=log file "$disk" cache=$mode \
        logfile="$tmp/$mode.nbdlog"
    if py "$tmp/t.py" "$uri" "$disk" $mode; then
        ok "cache=$mode: zero behaves"
    else
        bad "cache=$mode: zero misbehaves (see above)"
    fi
    stop_nbdkit $mode
    # A fast zero must never be passed on to the plugin.
    if grep -q ' Zero .*fast=1' "$tmp/$mode.nbdlog"; then
        bad "cache=$mode: a FAST_ZERO request reached the plugin"
    fi
done
finish
