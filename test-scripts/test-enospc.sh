#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A full cache file system (SPEC §6, §8): the cache lives on a 1 MiB tmpfs
# ($TMPDIR), the export is 16 MiB, so cache-file writes fail with ENOSPC.
#  - no request fails: what the cache cannot take goes straight to the
#    plugin (SPEC §8), never a crash; nbdkit keeps serving;
#  - what was cached before still reads back, and a flush writes it to
#    the plugin (writeback: no dirty block lost);
#  - writethrough: after any failure, what the client reads equals the
#    backing file (the cache never holds a block it could not store);
#  - regions never written read as the plugin's data;
#  - zeroed blocks and blocks of plugin zeroes (cache-on-read), kept as
#    holes in the full cache file, read back as zeroes in small reads.
# Needs root and mount(2) in a private mount namespace (unshare -m);
# skipped (77) if that is not possible.
set -euo pipefail
REQUIRE_NS=1 . "$(dirname "$0")/mount-namespace.sh"
. "$(dirname "$0")/lib.sh"

small=$tmp/small
mount_tmpfs "$small" 1M || skip "cannot mount a tmpfs"

SIZE=$((16 * 1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, errno
uri, disk, mode = sys.argv[1:4]
orig = open(disk, "rb").read()
h = nbd.NBD(); h.connect_uri(uri)
fails = []
# 1. fits: 4 blocks, unaligned
first = b"F" * (4 * 65536 - 200)
h.pwrite(first, 100)
# 2. does not fit: 4 MiB more, 64K at a time: every write succeeds
errs = []
for i in range(64):
    try:
        h.pwrite(bytes([i + 1]) * 65536, 8 * 1048576 + i * 65536)
    except nbd.Error as e:
        errs.append(e.errnum)
if errs:
    fails.append("%d writes failed (errnos %s) although the plugin could take them" % (len(errs), sorted(set(errs))))
for i in range(64):
    if h.pread(65536, 8 * 1048576 + i * 65536) != bytes([i + 1]) * 65536:
        fails.append("block %d written on the full file system reads back wrong" % i)
        break
# 3. nbdkit still serving; the first data is still there
try:
    if h.pread(len(first), 100) != first:
        fails.append("data written before the file system filled up reads back wrong")
except nbd.Error as e:
    fails.append("data written before the file system filled up: read failed: %s" % e)
# reads of uncached regions: the plugin's data, never an error or garbage
for off in (2 * 1048576 + 7, 5 * 1048576):
    try:
        if h.pread(1000, off) != orig[off:off + 1000]:
            fails.append("read of a never-written region at %d returned wrong data" % off)
    except nbd.Error as e:
        fails.append("read at %d failed with errno %d" % (off, e.errnum))
# holes on the full file system: a zeroed block, and (cache-on-read) a
# block of plugin zeroes, are holes in the cache file; small reads of them
# must return zeroes (a mapped read of a hole on a full tmpfs is SIGBUS)
ZEROED, PLUGIN_ZEROES = 12 * 1048576, 14 * 1048576
try:
    h.zero(65536, ZEROED)
    for off in (ZEROED, PLUGIN_ZEROES):
        h.pread(65536, off)
        for sub in (100, 8192, 65536 - 4096):
            if h.pread(4096, off + sub) != bytes(4096):
                fails.append("4 KiB at %d of a zero block reads back non-zero" % (off + sub))
except nbd.Error as e:
    fails.append("zero blocks on the full file system: %s" % e)
if mode == "writethrough":
    cur = open(disk, "rb").read()
    for i in range(64):
        off = 8 * 1048576 + i * 65536
        try:
            got = h.pread(65536, off)
        except nbd.Error:
            continue
        if got != cur[off:off + 65536]:
            fails.append("writethrough: block at %d reads differently from the backing file" % off)
            break
# 4. flush: the first data reaches the plugin
try:
    h.flush()
except nbd.Error as e:
    # the blocks that could never be cached are not dirty: flush should work
    fails.append("flush failed: %s" % e)
cur = open(disk, "rb").read()
if cur[100:100 + len(first)] != first:
    fails.append("after flush the backing file lacks the data cached before ENOSPC")
if cur[8 * 1048576:12 * 1048576] != b"".join(bytes([i + 1]) * 65536 for i in range(64)):
    fails.append("after flush the backing file lacks the data written on the full file system")
if cur[:100] != orig[:100] or cur[100 + len(first):8 * 1048576] != orig[100 + len(first):8 * 1048576]:
    fails.append("after flush the backing file changed outside the written ranges")
h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

for mode in writeback writethrough; do
    for cor in false true; do
        name=$mode-$cor
        disk=$tmp/disk-$name
        make_random_file "$disk" $SIZE 61
        # 1 MiB of zeroes at 14 MiB: plugin zeroes for cache-on-read
        dd if=/dev/zero of="$disk" bs=1M seek=14 count=1 conv=notrunc status=none
        TMPDIR=$small start_nbdkit $name --filter="$FILTER" file "$disk" \
            cache=$mode cache-on-read=$cor
        if py "$tmp/t.py" "$uri" "$disk" $mode; then
            ok "cache=$mode cache-on-read=$cor: ENOSPC handled"
        else
            bad "cache=$mode cache-on-read=$cor: ENOSPC mishandled"
        fi
        if kill -0 "$pid" 2>/dev/null; then
            stop_nbdkit $name
            assert_no_crash_in "$tmp/$name.log"
        else
            tail -n 5 "$tmp/$name.log" >&2
            bad "cache=$mode cache-on-read=$cor: nbdkit died"
        fi
    done
done
finish
