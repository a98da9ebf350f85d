#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A full cache directory never strands acknowledged writes (SPEC §6:
# "writing back an acknowledged write never needs space in the cache
# file"; §8 "a full cache directory is not the client's problem").  The
# cache lives on a 2 MiB tmpfs ($TMPDIR), cache=writeback, over a 16 MiB
# file.  First one 64K block gets two separate small writes (100 bytes at
# 1000 and at 30000: a block holding two byte ranges, which write-back
# must complete with the plugin's bytes around them), then 64 whole-block
# writes elsewhere (4 MiB, twice the tmpfs) fill the tmpfs; some may fail
# with ENOSPC, which is allowed, and their ranges are not checked.  Then a
# flush must succeed, every acknowledged byte must read back, and after
# the flush the backing file must hold them.  Second case: an eval plugin
# over a file with a 4096-byte minimum block size (as in
# test-plugin-min-block.sh: nbdkit's blocksize filter advertises a minimum
# of 1 above itself, so it cannot be used) and a single 100-byte range not
# aligned to it, which write-back must extend to 4096-byte alignment -
# again without needing cache space.  The filter this test was written
# against failed these flushes (and the reads) with ENOSPC.
# Needs root and mount(2) in a private mount namespace (unshare -m);
# skipped (77) if that is not possible.
set -euo pipefail
REQUIRE_NS=1 . "$(dirname "$0")/mount-namespace.sh"
. "$(dirname "$0")/lib.sh"

small=$tmp/small
mount_tmpfs "$small" 2M || skip "cannot mount a tmpfs"

SIZE=$((16 * 1024 * 1024))

# t.py URI DISK RANGES: RANGES is "OFF:LEN,..." of small writes made
# first; then 64 blocks of 64K (4 MiB, twice the tmpfs) from 4 MiB on.
cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, errno, random
uri, disk, ranges = sys.argv[1:4]
orig = open(disk, "rb").read()
r = random.Random(7)
h = nbd.NBD(); h.connect_uri(uri)
h.set_strict_mode(0)          # let small unaligned writes through
acked = []                    # (off, data) the server acknowledged
fails = []
for rg in ranges.split(","):
    off, n = map(int, rg.split(":"))
    d = r.randbytes(n)
    h.pwrite(d, off)
    acked.append((off, d))
nfail = 0; errs = set()
for i in range(64):
    off = 4 * 1048576 + i * 65536
    d = r.randbytes(65536)
    try:
        h.pwrite(d, off)
        acked.append((off, d))
    except nbd.Error as e:
        nfail += 1; errs.add(e.errnum)
print("    %d whole-block writes acknowledged, %d failed (errnos %s)"
      % (len(acked) - len(ranges.split(",")), nfail, sorted(errs)), file=sys.stderr)
if errs - {errno.ENOSPC}:
    fails.append("whole-block writes failed with errnos %s; only ENOSPC is allowed" % sorted(errs))
try:
    h.flush()
except nbd.Error as e:
    fails.append("flush failed: %s" % e)
for off, d in acked:
    try:
        if h.pread(len(d), off) != d:
            fails.append("acknowledged write %d+%d reads back wrong" % (off, len(d)))
    except nbd.Error as e:
        fails.append("read of acknowledged write %d+%d failed: %s" % (off, len(d), e))
cur = open(disk, "rb").read()
lost = [(off, len(d)) for off, d in acked if cur[off:off + len(d)] != d]
if lost:
    fails.append("after the flush the backing file lacks %d of %d acknowledged writes, e.g. %s"
                 % (len(lost), len(acked), lost[:3]))
# bytes around the small writes are the plugin's own (write-back completed
# the block with them, not with garbage or zeroes)
model = bytearray(orig[:4 * 1048576])
for off, d in acked:
    if off < 4 * 1048576:
        model[off:off + len(d)] = d
if cur[:4 * 1048576] != bytes(model):
    fails.append("after the flush the file's first 4 MiB differ from the model (bytes around the small writes?)")
h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

# 1. file plugin: one block holding two separate ranges
disk=$tmp/disk-file
make_random_file "$disk" $SIZE 71
TMPDIR=$small start_nbdkit file --filter="$FILTER" file "$disk" cache=writeback
if py "$tmp/t.py" "$uri" "$disk" 1000:100,30000:100; then
    ok "file plugin: two ranges in one block written back with the cache file system full"
else
    bad "file plugin: acknowledged writes stranded by a full cache file system"
fi
assert_alive file
stop_nbdkit file
assert_no_crash_in "$tmp/file.log"

# 2. plugin with a 4096-byte minimum block size: one range not aligned to it
disk=$tmp/disk-eval
make_random_file "$disk" $SIZE 72
TMPDIR=$small start_nbdkit eval --filter="$FILTER" eval \
    get_size="echo $SIZE" block_size='echo 4096 4096 33554432' \
    can_write='exit 0' can_flush='exit 0' flush='exit 0' \
    pread="dd if=$disk skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
    pwrite="dd of=$disk seek=\$4 conv=notrunc oflag=seek_bytes status=none" \
    cache=writeback
if py "$tmp/t.py" "$uri" "$disk" 70000:100; then
    ok "plugin minimum 4096: unaligned range written back with the cache file system full"
else
    bad "plugin minimum 4096: acknowledged write stranded by a full cache file system"
fi
assert_alive eval
stop_nbdkit eval
assert_no_crash_in "$tmp/eval.log"
finish
