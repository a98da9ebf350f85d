#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Plugin errors (SPEC §4 flush, §6): inject errors with the error filter
# placed after ours, switched on and off at run time with error-*-file.
#  - a plugin read error reaches the client as EIO; nbdkit keeps serving;
#    once errors stop, the same read returns the right data (a failed
#    read did not leave a bad block in the cache, also with
#    cache-on-read=true);
#  - a partial-block write under plugin read errors either needs no plugin
#    read (writeback keeps a partial block, writethrough writes through) and
#    succeeds with the right data, or fails with EIO; with errors off it works;
#  - writeback: a flush whose write-back fails reports the error (with its
#    errno: ENOSPC stays ENOSPC) and leaves the blocks dirty; a second
#    flush with errors off writes them and the file then holds the data;
#  - writethrough: a write whose write-through fails returns an error;
#    nbdkit serves on and later writes reach the file.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((4 * 1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, os, errno
uri, disk, rflag, wflag, mode = sys.argv[1:6]
orig = open(disk, "rb").read()
model = bytearray(orig)
fails = []
def on(f): open(f, "w").close()
def off(f): os.path.exists(f) and os.unlink(f)
def expect_error(what, fn, want=errno.EIO):
    try:
        fn()
        fails.append("%s: succeeded although the plugin failed" % what)
    except nbd.Error as e:
        if e.errnum != want:
            fails.append("%s: errno %s, want %s" % (what, e.errnum, want))

h = nbd.NBD(); h.connect_uri(uri)

# ---- read errors
on(rflag)
expect_error("read with plugin read errors", lambda: h.pread(5000, 65536 * 3 + 7))
# swiftcache needs no plugin read for a partial write (writeback keeps a
# partial block, writethrough sends the bytes through): success is fine
# if the data is right; a failure must be EIO
try:
    h.pwrite(b"r" * 100, 65536 * 5 + 9)
    model[65536 * 5 + 9:65536 * 5 + 109] = b"r" * 100
    if mode != "writeback" and open(disk, "rb").read()[65536 * 5 + 9:65536 * 5 + 109] != b"r" * 100:
        fails.append("writethrough partial write succeeded but is not in the file")
except nbd.Error as e:
    if e.errnum != errno.EIO:
        fails.append("partial write with read errors: errno %s, want EIO" % e.errnum)
off(rflag)
# either way the rest of the block must not have been cached as garbage
blk = h.pread(65536, 65536 * 5)
if blk[:9] != orig[65536 * 5:65536 * 5 + 9] or blk[109:] != orig[65536 * 5 + 109:65536 * 6]:
    fails.append("after a partial write under read errors the rest of the block reads wrong")
if h.pread(5000, 65536 * 3 + 7) != orig[65536 * 3 + 7:65536 * 3 + 5007]:
    fails.append("read after read errors stopped returns wrong data")
h.pwrite(b"r" * 100, 65536 * 5 + 9); model[65536 * 5 + 9:65536 * 5 + 109] = b"r" * 100
if h.pread(200, 65536 * 5) != bytes(model[65536 * 5:65536 * 5 + 200]):
    fails.append("partial write after read errors stopped: wrong data")

# ---- write errors
if mode == "writeback":
    d1 = b"1" * 65536 * 2; d2 = b"2" * 1000
    h.pwrite(d1, 65536 * 10); model[65536 * 10:65536 * 12] = d1
    h.pwrite(d2, 65536 * 20 + 5); model[65536 * 20 + 5:65536 * 20 + 1005] = d2
    on(wflag)
    expect_error("flush with plugin write errors (ENOSPC)", lambda: h.flush(), errno.ENOSPC)
    expect_error("second failing flush", lambda: h.flush(), errno.ENOSPC)
    # the data is still there for the client
    if h.pread(65536 * 2, 65536 * 10) != d1:
        fails.append("after failed flush: client reads wrong data")
    off(wflag)
    h.flush()
    cur = open(disk, "rb").read()
    if cur[65536 * 10:65536 * 12] != d1 or cur[65536 * 20 + 5:65536 * 20 + 1005] != d2:
        fails.append("blocks whose write-back failed were not written by the next flush")
    # FUA write with write errors: error; afterwards fine
    on(wflag)
    expect_error("FUA write with plugin write errors",
                 lambda: h.pwrite(b"f" * 4096, 65536 * 30, nbd.CMD_FLAG_FUA), errno.ENOSPC)
    off(wflag)
    h.pwrite(b"f" * 4096, 65536 * 30, nbd.CMD_FLAG_FUA); model[65536 * 30:65536 * 30 + 4096] = b"f" * 4096
    if open(disk, "rb").read()[65536 * 30:65536 * 30 + 4096] != b"f" * 4096:
        fails.append("FUA write after errors stopped did not reach the file")
elif mode == "writethrough":
    on(wflag)
    expect_error("writethrough write with plugin write errors",
                 lambda: h.pwrite(b"w" * 65536, 65536 * 10), errno.ENOSPC)
    expect_error("writethrough unaligned write with plugin write errors",
                 lambda: h.pwrite(b"w" * 7, 65536 * 11 + 3), errno.ENOSPC)
    off(wflag)
    d = b"W" * 70000
    h.pwrite(d, 65536 * 10 - 5); model[65536 * 10 - 5:65536 * 10 - 5 + 70000] = d
    if open(disk, "rb").read()[65536 * 10 - 5:65536 * 10 - 5 + 70000] != d:
        fails.append("writethrough write after errors stopped did not reach the file")
    if h.pread(70000, 65536 * 10 - 5) != d:
        fails.append("writethrough: read after errors stopped wrong")

h.flush()
if h.pread(len(model), 0) != bytes(model):
    fails.append("final read-back differs from the model")
if open(disk, "rb").read() != bytes(model):
    fails.append("backing file differs from the model after the final flush")
h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

for mode in writeback writethrough; do
    for cor in false true; do
        name=$mode-$cor
        disk=$tmp/disk-$name
        make_random_file "$disk" $SIZE 13
        rm -f "$tmp/rflag" "$tmp/wflag"
        start_nbdkit $name --filter="$FILTER" --filter=error file "$disk" \
            cache=$mode cache-on-read=$cor \
            error-pread=EIO error-pread-rate=1 error-pread-file="$tmp/rflag" \
            error-pwrite=ENOSPC error-pwrite-rate=1 error-pwrite-file="$tmp/wflag"
        if py "$tmp/t.py" "$uri" "$disk" "$tmp/rflag" "$tmp/wflag" $mode; then
            ok "cache=$mode cache-on-read=$cor: errors reported, recovered"
        else
            bad "cache=$mode cache-on-read=$cor: error handling wrong"
        fi
        assert_alive $name
        stop_nbdkit $name
        assert_no_crash_in "$tmp/$name.log"
    done
done
finish
