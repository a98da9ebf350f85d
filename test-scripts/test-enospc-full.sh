#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A full cache directory is not the client's problem (SPEC §8 **beyond**):
# on ENOSPC from the cache file the filter makes room (drops clean
# blocks, writes dirty ones back where the mode allows) and retries, and
# a request the cache still cannot take goes straight to the plugin; the
# client sees an error only when the plugin fails.
# The cache file lives on a 4 MiB tmpfs ($TMPDIR), the plugin is the file
# plugin over a 48 MiB file elsewhere, no cache-max-size, cache-on-read=true;
# in cache=writeback, writethrough and unsafe a workload ten times the
# tmpfs: 40 MiB of distinct data written in requests of 4 KiB to 4 MiB
# (most of them unaligned), in random order, 8 in flight (libnbd aio,
# drained before the disconnect); then all of it read back in other
# request sizes, also 8 in flight, and the unwritten edges too; then
# (writeback, writethrough) a flush, after which the file must equal the
# model byte for byte.  Every request must succeed.  Afterwards nbdkit
# must still be running and serve a new connection, which reads the whole
# export back right (in unsafe the data is checked through the filter
# only: unsafe writes back only on reclaim).
# EXPECTED TO FAIL against nbdkit's C cache filter, which fails writes
# (and cache-on-read fills) with ENOSPC once the tmpfs is full.
# Needs root and mount(2) in a private mount namespace (unshare -m);
# skipped (77) if that is not possible.
set -euo pipefail
REQUIRE_NS=1 . "$(dirname "$0")/mount-namespace.sh"
. "$(dirname "$0")/lib.sh"

small=$tmp/small
mount_tmpfs "$small" 4M || skip "cannot mount a tmpfs"

M=$((1024 * 1024))
SIZE=$((48 * M))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, random, time
uri, disk, mode, modelf = sys.argv[1:5]
M = 1048576
orig = open(disk, "rb").read()
size = len(orig)
model = bytearray(orig)
r = random.Random(2024)
fails = []
INFLIGHT = 8
# 40 MiB from an unaligned start, cut into requests of mixed sizes
start = 3 * M + 12345
end = start + 40 * M
sizes = [4096, 4096 + 7, 16384, 65536, 65536 - 512, 100000, 262144, M, M + 333, 3 * M + 17, 4 * M]
reqs = []
off = start
while off < end:
    n = min(r.choice(sizes), end - off)
    reqs.append((off, n))
    off += n
r.shuffle(reqs)
h = nbd.NBD(); h.connect_uri(uri)

def run(ops):
    """ops: [(kind, off, n, data)]; up to INFLIGHT at once; all drained"""
    pending = {}
    ops = list(ops)
    i = 0
    while i < len(ops) or pending:
        while i < len(ops) and len(pending) < INFLIGHT:
            kind, o, n, data = ops[i]
            i += 1
            if kind == "write":
                ck = h.aio_pwrite(nbd.Buffer.from_bytearray(data), o)
                pending[ck] = (kind, o, n, None)
            else:
                buf = nbd.Buffer(n)
                ck = h.aio_pread(buf, o)
                pending[ck] = (kind, o, n, buf)
        h.poll(-1)
        for ck in list(pending):
            try:
                if not h.aio_command_completed(ck):
                    continue
            except nbd.Error as e:
                kind, o, n, _ = pending[ck]
                fails.append("%s of %d bytes at %d failed: %s" % (kind, n, o, e))
                del pending[ck]
                continue
            kind, o, n, buf = pending.pop(ck)
            if kind == "read" and buf.to_bytearray() != model[o:o + n]:
                if len(fails) >= 15:
                    fails.append("read of %d bytes at %d differs from the model" % (n, o))
                    continue
                got = buf.to_bytearray()
                j = next(j for j in range(n) if got[j] != model[o + j])
                what = ("the original file's" if got[j:j + 64] == orig[o + j:o + j + 64] else
                        "zero" if not any(got[j:j + 64]) else "other")
                fails.append("read of %d bytes at %d differs from the model at byte %d (%s bytes)"
                             % (n, o, o + j, what))

t0 = time.time()
ops = []
for o, n in reqs:
    d = r.randbytes(n)
    model[o:o + n] = d
    ops.append(("write", o, n, d))
run(ops)
t1 = time.time()
# read back in other sizes, from 0 to the end (the unwritten edges too)
ops = []
off = 0
while off < size:
    n = min(r.choice([4096, 70000, 262144 + 1, M - 1, 2 * M]), size - off)
    ops.append(("read", off, n, None))
    off += n
r.shuffle(ops)
run(ops)
t2 = time.time()
if mode != "unsafe":
    try:
        h.flush()
    except nbd.Error as e:
        fails.append("flush failed: %s" % e)
    cur = open(disk, "rb").read()
    if cur != bytes(model):
        nb = sum(1 for i in range(0, size, 65536) if cur[i:i + 65536] != model[i:i + 65536])
        norig = sum(1 for i in range(0, size, 65536)
                    if cur[i:i + 65536] != model[i:i + 65536] and cur[i:i + 65536] == orig[i:i + 65536])
        fails.append("after the flush the file differs from the model in %d 64K blocks (%d of them still "
                     "the original data)" % (nb, norig))
h.shutdown()
print("    %s: %d writes in %.1f s, %d reads in %.1f s" % (mode, len(reqs), t1 - t0, len(ops), t2 - t1),
      file=sys.stderr)
open(modelf, "wb").write(model)
for f in fails[:15]:
    print("FAIL:", f)
if len(fails) > 15:
    print("FAIL: ... %d failures in all" % len(fails))
sys.exit(1 if fails else 0)
EOF_PY

make_random_file "$tmp/orig" $SIZE 77
for mode in writeback writethrough unsafe; do
    disk=$tmp/disk-$mode
    cp "$tmp/orig" "$disk"
    TMPDIR=$small start_nbdkit $mode --filter="$FILTER" file "$disk" cache=$mode cache-on-read=true
    if timeout 15 "$PY" "$tmp/t.py" "$uri" "$disk" $mode "$tmp/model-$mode"; then
        ok "cache=$mode: 40 MiB through a 4 MiB cache directory, every request succeeded, data right"
    else
        bad "cache=$mode: requests failed or data wrong with a full cache directory"
    fi
    if kill -0 "$pid" 2>/dev/null; then
        # a new connection is served and reads the whole export right
        py - "$uri" "$tmp/model-$mode" <<'EOF_PY' || bad "cache=$mode: a new connection afterwards fails"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
model = open(sys.argv[2], "rb").read()
M = 1048576
try:
    for o in range(0, len(model), 4 * M):
        n = min(4 * M, len(model) - o)
        if h.pread(n, o) != model[o:o + n]:
            sys.exit("FAIL: new connection: 4 MiB at %d read back wrong" % o)
except nbd.Error as e:
    sys.exit("FAIL: new connection: read at %d failed: %s" % (o, e))
h.shutdown()
EOF_PY
        stop_nbdkit $mode
        assert_no_crash_in "$tmp/$mode.log"
    else
        tail -n 5 "$tmp/$mode.log" >&2
        bad "cache=$mode: nbdkit died"
    fi
done
finish
