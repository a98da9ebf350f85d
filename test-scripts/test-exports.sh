#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# One cache per export (SPEC §8 **beyond**): exports served by one nbdkit
# never see each other's blocks, whatever their sizes; cache-max-size
# limits all of them together.  The file plugin in directory mode
# (file dir=DIR) serves every file in DIR as an export named by the file
# name (the default export "" is rejected).  Three files: a (1 MiB),
# b (3 MiB + 512) and c (8 MiB), each 8-byte word holding the export's tag
# in its top byte and its offset below, so a stray word names its export;
# each has holes in different places (a: 256K-512K, b: 1M-2M,
# c: 0-1M and 4M-6M).
# In every mode (writeback, writethrough, unsafe) with cache-on-read true
# and false, with three connections open at once, one per export:
#  - sizes are right; each export reads back as its own file (reads
#    interleaved across the exports, block by block);
#  - block status on each has the zero bit exactly where its own file has
#    holes and never says hole where its own file has data;
#  - writes of different data at the same offsets on all three (and a zero
#    on a, writes into holes and at each export's own end): each export
#    reads back only its own writes; block status never says zero where
#    the export holds data and still says zero in its own untouched holes;
#  - a second connection to each export sees the first's unflushed
#    writes; a flush through that second connection (not unsafe) leaves
#    each file holding exactly its own data, sizes unchanged;
#  - qemu-img compare of each export against its model.
# Last, cache=writeback cache-on-read=true cache-max-size=1M: 12 MiB
# written over all three exports at once, read back, flushed: every byte
# right in the exports and the files, and the cache files' allocated size
# (all of them together) stays within the limit plus one block.
# EXPECTED TO FAIL against nbdkit's C cache filter: it keeps one cache for
# all exports, sized by whichever connection came last, so export b reads
# blocks that export a cached or wrote; with these three sizes open at
# once nbdkit 1.32.5 even aborts on the first read (backend_pread:
# Assertion `backend_valid_range' failed: it reads past the smaller
# export's end).  The swiftcache this test was written against (one
# cache for all exports) returned export a's words on b and c.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
export PY_TIMEOUT=25        # each client normally takes a second or two

# mkfiles DIR: the three export files
mkfiles() {
    py - "$1" <<'EOF_PY'
import sys, struct, os
d = sys.argv[1]
M = 1048576
spec = {"a": (0xA1, M, [(256 * 1024, 512 * 1024)]),
        "b": (0xB2, 3 * M + 512, [(M, 2 * M)]),
        "c": (0xC3, 8 * M, [(0, M), (4 * M, 6 * M)])}
for name, (tag, size, holes) in spec.items():
    with open(os.path.join(d, name), "wb") as f:
        pos = 0
        for lo, hi in holes + [(size, size)]:
            if pos < lo:
                f.seek(pos)
                f.write(b"".join(struct.pack(">Q", (tag << 56) | o) for o in range(pos, lo, 8)))
            pos = hi
        f.truncate(size)
EOF_PY
}

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, os, random
sock, d, mode, modeldir = sys.argv[1:5]
M = 1048576
B = 65536
HOLE, ZERO = nbd.STATE_HOLE, nbd.STATE_ZERO
names = ["a", "b", "c"]
sizes = {"a": M, "b": 3 * M + 512, "c": 8 * M}
tags = {"a": 0xA1, "b": 0xB2, "c": 0xC3}
fails = []
def bad(m):
    fails.append(m)
def conn(name):
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri("nbd+unix:///%s?socket=%s" % (name, sock))
    return h
def whose(buf, off):
    """describe the first 8-byte word of buf (at export offset off)"""
    i = (8 - off % 8) % 8
    w = int.from_bytes(buf[i:i + 8], "big")
    t = {v: k for k, v in tags.items()}.get(w >> 56)
    return "export %s's word for offset %d" % (t, w & ((1 << 56) - 1)) if t else "bytes %s" % buf[i:i + 8].hex()
def read_check(hs, models, what):
    """read every export, interleaved in 256 KiB steps, compare with its model"""
    got = {n: bytearray() for n in names}
    for o in range(0, max(sizes.values()), 256 * 1024):
        for n in names:
            if o < sizes[n]:
                got[n] += hs[n].pread(min(256 * 1024, sizes[n] - o), o)
    for n in names:
        if got[n] != models[n]:
            i = next(i for i in range(sizes[n]) if got[n][i] != models[n][i])
            bad("%s: export %s differs from its model at byte %d: read %s" % (what, n, i, whose(got[n][i:i + 16], i)))
def pages(h, size):
    """per 4K page: flags of the extents covering it (ANDed)"""
    out = [None] * ((size + 4095) // 4096)
    pos = 0
    while pos < size:
        ext = []
        def cb(meta, o, entries, err):
            if meta == nbd.CONTEXT_BASE_ALLOCATION:
                ext.extend(entries)
            return 0
        h.block_status(size - pos, pos, cb)
        for i in range(0, len(ext), 2):
            n, f = min(ext[i], size - pos), ext[i + 1]
            for pg in range(pos // 4096, (pos + n + 4095) // 4096):
                out[pg] = f if out[pg] is None else out[pg] & f
            pos += n
            if pos >= size:
                break
    return out
def file_holes(path, size):
    """per 4K page: True where the file has a hole"""
    out = [False] * ((size + 4095) // 4096)
    fd = os.open(path, os.O_RDONLY)
    pos = 0
    try:
        while pos < size:
            try:
                hole = os.lseek(fd, pos, os.SEEK_HOLE)
            except OSError:
                break
            if hole >= size:
                break
            try:
                data = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError:
                data = size
            for pg in range((hole + 4095) // 4096, min(data, size) // 4096):
                out[pg] = True
            pos = data
    finally:
        os.close(fd)
    return out

def excepthook(t, e, tb):
    bad("client error: %s: %s" % (t.__name__, e))
    report()
sys.excepthook = excepthook
def report():
    for f in fails[:20]:
        print("FAIL:", f)
    sys.exit(1 if fails else 0)

orig = {n: open(os.path.join(d, n), "rb").read() for n in names}
holes = {n: file_holes(os.path.join(d, n), sizes[n]) for n in names}
for n in names:
    if sum(holes[n]) == 0:
        print("SKIP: the file system of %s has no holes" % d)
        sys.exit(77)
models = {n: bytearray(orig[n]) for n in names}
hs = {n: conn(n) for n in names}
for n in names:
    if hs[n].get_size() != sizes[n]:
        bad("export %s: size %d, want %d" % (n, hs[n].get_size(), sizes[n]))
read_check(hs, models, "first read")
# block status before any write: the zero bit exactly on the own file's holes
for n in names:
    pg = pages(hs[n], sizes[n])
    for i, f in enumerate(pg):
        if bool(f & ZERO) != holes[n][i] or (f & HOLE and not holes[n][i]):
            bad("before writes: export %s page at %d has flags %d, its own file has %s there"
                % (n, i * 4096, f, "a hole" if holes[n][i] else "data"))
            break

# writes of different data at the same offsets
r = random.Random(int.from_bytes(mode.encode(), "big") % 1000)
common = [(100, 70000), (512 * 1024 - 10, 20), (640 * 1024, B)]
own = {"a": [(M - 1000, 1000)], "b": [(M + 4096, 8192), (3 * M + 512 - 700, 700)], "c": [(8 * M - B, B)]}
touched = {n: set() for n in names}
for off, cnt in common:
    for n in names:
        data = r.randbytes(cnt)
        hs[n].pwrite(data, off)
        models[n][off:off + cnt] = data
        touched[n].update(range(off // B, (off + cnt - 1) // B + 1))
for n in names:
    for off, cnt in own[n]:
        data = r.randbytes(cnt)
        hs[n].pwrite(data, off)
        models[n][off:off + cnt] = data
        touched[n].update(range(off // B, (off + cnt - 1) // B + 1))
hs["a"].zero(2 * B, 768 * 1024)                # b and c keep data there
models["a"][768 * 1024:768 * 1024 + 2 * B] = bytes(2 * B)
touched["a"].update(range(768 * 1024 // B, 768 * 1024 // B + 2))
read_check(hs, models, "after the writes")
for n in names:
    pg = pages(hs[n], sizes[n])
    for i, f in enumerate(pg):
        if f & ZERO and any(models[n][i * 4096:(i + 1) * 4096]):
            bad("after the writes: export %s page at %d reported zero but holds data" % (n, i * 4096))
            break
        if holes[n][i] and (i * 4096) // B not in touched[n] and not f & ZERO:
            bad("after the writes: export %s page at %d, an untouched hole of its own file, has flags %d"
                % (n, i * 4096, f))
            break
# a second connection to each export sees the first's unflushed writes
h2 = {n: conn(n) for n in names}
read_check(h2, models, "second connection, before any flush")
if mode != "unsafe":
    for n in names:
        h2[n].flush()
    for n in names:
        path = os.path.join(d, n)
        if os.stat(path).st_size != sizes[n]:
            bad("after the flush file %s has size %d, want %d" % (n, os.stat(path).st_size, sizes[n]))
        cur = open(path, "rb").read()
        if cur != models[n]:
            i = next((i for i in range(min(len(cur), sizes[n])) if cur[i] != models[n][i]), len(cur))
            bad("after the flush file %s differs from its model at byte %d: holds %s"
                % (n, i, whose(cur[i:i + 16], i)))
    read_check(hs, models, "after the flush")
for n in names:
    open(os.path.join(modeldir, n), "wb").write(models[n])
for h in list(hs.values()) + list(h2.values()):
    h.shutdown()
report()
EOF_PY

for mode in writeback writethrough unsafe; do
    for cor in true false; do
        name=$mode-$cor
        dir=$tmp/exports-$name
        mkdir "$dir" "$tmp/model-$name"
        mkfiles "$dir"
        start_nbdkit $name --filter="$FILTER" file dir="$dir" cache=$mode cache-on-read=$cor
        rc=0
        py "$tmp/t.py" "$tmp/$name.sock" "$dir" $mode "$tmp/model-$name" || rc=$?
        [ $rc -ne 77 ] || skip "no holes in files under $tmp"
        if [ $rc -eq 0 ]; then
            ok "cache=$mode cache-on-read=$cor: each export sees only its own data"
        else
            bad "cache=$mode cache-on-read=$cor: exports see each other's data (or other errors above)"
        fi
        for e in a b c; do
            if [ -f "$tmp/model-$name/$e" ]; then
                timeout 20 qemu-img compare -f raw -F raw "$tmp/model-$name/$e" \
                    "nbd+unix:///$e?socket=$tmp/$name.sock" >/dev/null ||
                    bad "cache=$mode cache-on-read=$cor: qemu-img compare: export $e differs from its model"
            fi
        done
        if kill -0 "$pid" 2>/dev/null; then
            stop_nbdkit $name
            assert_no_crash_in "$tmp/$name.log"
        else
            tail -n 3 "$tmp/$name.log" >&2
            bad "cache=$mode cache-on-read=$cor: nbdkit died"
        fi
    done
done

# cache-max-size=1M over all three exports together
cat >"$tmp/max.py" <<'EOF_PY'
import nbd, sys, os, random
sock, d, pid, tmpdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
M = 1048576
names = ["a", "b", "c"]
sizes = {"a": M, "b": 3 * M + 512, "c": 8 * M}
fails = []
def cache_alloc():
    total = 0
    fdd = "/proc/%d/fd" % pid
    for fd in os.listdir(fdd):
        try:
            t = os.readlink(os.path.join(fdd, fd))
        except OSError:
            continue
        if t.startswith(tmpdir + "/") and t.endswith(" (deleted)"):
            total += os.stat(os.path.join(fdd, fd)).st_blocks * 512
    return total
hs = {}
for n in names:
    hs[n] = nbd.NBD()
    hs[n].connect_uri("nbd+unix:///%s?socket=%s" % (n, sock))
models = {n: bytearray(open(os.path.join(d, n), "rb").read()) for n in names}
r = random.Random(31)
peak = 0
CH = 256 * 1024 + 17                          # unaligned steps
for o in range(0, 8 * M, CH):
    for n in names:
        if o < sizes[n]:
            cnt = min(CH, sizes[n] - o)
            data = r.randbytes(cnt)
            hs[n].pwrite(data, o)
            models[n][o:o + cnt] = data
            peak = max(peak, cache_alloc())
for o in range(0, 8 * M, 300000):
    for n in names:
        if o < sizes[n]:
            cnt = min(300000, sizes[n] - o)
            if hs[n].pread(cnt, o) != models[n][o:o + cnt]:
                fails.append("export %s: %d bytes at %d read back wrong before the flush" % (n, cnt, o))
            peak = max(peak, cache_alloc())
for n in names:
    hs[n].flush()
for n in names:
    cur = open(os.path.join(d, n), "rb").read()
    if cur != models[n]:
        bad = sum(1 for i in range(0, sizes[n], 65536) if cur[i:i + 65536] != models[n][i:i + 65536])
        fails.append("after the flush file %s differs from its model in %d 64K blocks" % (n, bad))
    got = b"".join(bytes(hs[n].pread(min(M, sizes[n] - o), o)) for o in range(0, sizes[n], M))
    if got != models[n]:
        fails.append("after the flush export %s reads back wrong" % n)
print("    peak allocated size of the cache file(s): %d" % peak, file=sys.stderr)
if peak > M + 65536:
    fails.append("cache files together allocated %d bytes, over cache-max-size=1M plus one block" % peak)
for n in names:
    hs[n].shutdown()
for f in fails[:20]:
    print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

dir=$tmp/exports-max
mkdir "$dir"
mkfiles "$dir"
start_nbdkit max --filter="$FILTER" file dir="$dir" cache=writeback cache-on-read=true cache-max-size=1M
py "$tmp/max.py" "$tmp/max.sock" "$dir" "$pid" "$TMPDIR" &&
    ok "cache-max-size=1M: three exports written at once, every byte right, within the limit" ||
    bad "cache-max-size=1M over three exports: data lost or mixed, or the limit not kept"
assert_alive max
stop_nbdkit max
assert_no_crash_in "$tmp/max.log"
finish
