#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Known-zero blocks (SPEC §8 **beyond**): a zero request, and a write whose
# whole block is zeroes, record the block as zero without storing data;
# reads of it need no plugin I/O, it does not count against cache-max-size,
# block status calls it zero (and hole where the client allowed trimming),
# and write-back sends a run of such blocks as one plugin zero (MAY_TRIM
# when the client allowed it).  File plugin, nbdkit's log filter under the
# filter under test where plugin requests are counted.
#  (a) writeback, 32 MiB zero (trimming allowed) + flush over a sparse
#      64 MiB file: the file stays sparse (< 1 MiB allocated); over a fully
#      allocated file the file plugin punches the range (allocation drops
#      by 32 MiB).  Zeroes read back; the rest of the file is unchanged.
#  (b) cache-max-size=1M: a 12 MiB zero over data, then 512 KiB of data,
#      no flush: the 12 MiB read back as zeroes and the plugin saw no
#      request at all (no reads, no reclaim write-back); the flush sends
#      the range as one plugin Zero and leaves zeroes in the file.
#  (c) block status before a flush (writeback, unsafe): a zero allowing
#      trim reports zero+hole, a NO_HOLE zero reports zero and not hole,
#      unflushed data over a plugin hole reports data (0), untouched
#      regions report the plugin's extents; REQ_ONE agrees; nbdcopy of
#      the export reproduces it byte for byte.
#  (d) pwrite of whole blocks of zeroes: the cache file does not grow
#      (and shrinks when zeroes overwrite cached data), reads and block
#      status say zero, the flush sends them as plugin Zero requests
#      without trim and the file holds zeroes.
#  (e) trim (writeback, writethrough; cache-on-read=true): a read never
#      returns the cached pre-trim data of a clean block once the plugin
#      trimmed it (the read equals the plugin's file, or zeroes); after a
#      flush the reads equal the file and block status equals the plugin's
#      own (an unfiltered nbdkit on the same file).
# EXPECTED TO FAIL against nbdkit's C cache filter, which (a) stores and
# writes back zeroes as data (the sparse file gets 32 MiB allocated, the
# allocated one stays allocated), (b) punches the dirty zero blocks to
# honour cache-max-size and so reads the plugin's old data back, (c)
# passes the plugin's extents through (data where zeroed, hole where
# written; nbdcopy copies zeroes), (d) allocates the zero blocks and writes
# them back as Write requests, (e) passes trim to the plugin but keeps the
# cached block, so reads return the old data.  (The swiftcache this test
# was written against failed (a)-(d) and passed (e), which guards the
# trim path against regressions.)  Cache blocks are assumed to be the
# default 64 KiB (cache-min-block-size, file system blocks <= 64 KiB).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=$((1024 * 1024))
export PYTHONPATH=$tmp
export PY_TIMEOUT=25        # each client normally takes a second or two

cat >"$tmp/zb.py" <<'EOF_PY'
import nbd, os, re
HOLE, ZERO = nbd.STATE_HOLE, nbd.STATE_ZERO
M = 1048576
fails = []
def bad(msg):
    fails.append(msg)
def done():
    for f in fails:
        print("FAIL:", f)
    raise SystemExit(1 if fails else 0)
def connect(uri):
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h
def extents(h, off, n, flags=0):
    """[(offset, length, flags)] covering off..off+n (REQ_ONE: the first only)."""
    out = []
    end = off + n
    while off < end:
        got = []
        def cb(meta, o, entries, err):
            if meta == nbd.CONTEXT_BASE_ALLOCATION:
                got.extend(entries)
            return 0
        h.block_status(end - off, off, cb, flags)
        if not got:
            raise RuntimeError("no extent at %d" % off)
        for i in range(0, len(got), 2):
            ln = min(got[i], end - off)
            out.append((off, ln, got[i + 1]))
            off += ln
            if off >= end:
                break
        if flags & nbd.CMD_FLAG_REQ_ONE:
            break
    return out
def flags_in(ext, off, n):
    """(offset, length, flags) of the extents overlapping off..off+n"""
    return [(o, l, f) for o, l, f in ext if o < off + n and off < o + l]
def read_all(h, off, n, chunk=4 * M):
    return b"".join(bytes(h.pread(min(chunk, off + n - o), o)) for o in range(off, off + n, chunk))
def first_diff(a, b):
    return next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
def alloc(path):
    return os.stat(path).st_blocks * 512
def cache_alloc(pid, tmpdir):
    """allocated bytes of every deleted file in tmpdir that pid holds open"""
    total = 0
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            t = os.readlink(os.path.join(d, fd))
        except OSError:
            continue
        if t.startswith(tmpdir + "/") and t.endswith(" (deleted)"):
            total += os.stat(os.path.join(d, fd)).st_blocks * 512
    return total
def plugin_reqs(logfile, acts=("Read", "Write", "Zero", "Trim", "Flush")):
    """[(act, offset, count, trim)] of the requests the log filter saw"""
    out = []
    for line in open(logfile):
        m = re.search(r" connection=\d+ (\w+) id=\d+ (.*)", line)
        if not m or m.group(1) not in acts:
            continue
        f = dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
        out.append((m.group(1), int(f.get("offset", "0"), 0), int(f.get("count", "0"), 0),
                    int(f.get("trim", "0"), 0)))
    return out
EOF_PY

# ------------------------------------------------------------------ (a)
cat >"$tmp/a.py" <<'EOF_PY'
import sys
from zb import *
uri, disk, zoff = sys.argv[1], sys.argv[2], int(sys.argv[3])
orig = open(disk, "rb").read()
before = alloc(disk)
h = connect(uri)
h.zero(32 * M, zoff)                  # no flags: trimming allowed
h.flush()
after = alloc(disk)
print("    file allocated %d bytes before, %d after the zero and flush" % (before, after), file=sys.stderr)
if before == 0 and after >= M:
    bad("sparse file: zeroing 32 MiB and flushing allocated %d bytes (want < 1 MiB)" % after)
if before > 0 and after > before - 31 * M:
    bad("allocated file: zeroing 32 MiB (trim allowed) and flushing left %d of %d bytes allocated"
        " (the plugin punches holes for a zero with MAY_TRIM)" % (after, before))
want = orig[:zoff] + bytes(32 * M) + orig[zoff + 32 * M:]
if read_all(h, 0, len(want)) != want:
    bad("the export does not read as zeroes in the zeroed range (or changed outside it)")
cur = open(disk, "rb").read()
if cur != want:
    bad("the file differs from the model after the flush, first at byte %d" % first_diff(cur, want))
h.shutdown()
done()
EOF_PY

truncate -s 64M "$tmp/a-sparse"
start_nbdkit a-sparse --filter="$FILTER" --filter=log file "$tmp/a-sparse" \
    cache=writeback logfile="$tmp/a-sparse.nbdlog"
py "$tmp/a.py" "$uri" "$tmp/a-sparse" 0 && ok "(a) 32 MiB zero + flush leaves a sparse file sparse" ||
    bad "(a) zeroing a sparse file through the cache allocated it (or data wrong)"
stop_nbdkit a-sparse
log "(a) plugin requests: $(grep -Eo ' (Write|Zero) id=[0-9]+ [^.]*' "$tmp/a-sparse.nbdlog" | head -3 | tr '\n' ';')"

make_random_file "$tmp/a-full" $((64 * M)) 11
if [ $(($(stat -c %b "$tmp/a-full") * 512)) -lt $((64 * M)) ]; then
    log "(a) not checked: cannot make a fully allocated file in $tmp"
else
    start_nbdkit a-full --filter="$FILTER" file "$tmp/a-full" cache=writeback
    py "$tmp/a.py" "$uri" "$tmp/a-full" $((16 * M)) &&
        ok "(a) 32 MiB zero (trim allowed) + flush punches an allocated file" ||
        bad "(a) zeroing an allocated file through the cache did not deallocate it (or data wrong)"
    stop_nbdkit a-full
fi

# ------------------------------------------------------------------ (b)
cat >"$tmp/b.py" <<'EOF_PY'
import sys, random
from zb import *
uri, disk, logf = sys.argv[1:4]
orig = open(disk, "rb").read()
model = bytearray(orig)
h = connect(uri)
h.zero(12 * M, 2 * M)
model[2 * M:14 * M] = bytes(12 * M)
data = random.Random(5).randbytes(512 * 1024)
h.pwrite(data, 15 * M)
model[15 * M:15 * M + len(data)] = data
for o in range(2 * M, 14 * M, M):
    if h.pread(M, o) != bytes(M):
        bad("zeroed MiB at %d does not read back as zeroes before the flush" % o)
if h.pread(len(data), 15 * M) != data:
    bad("the 512 KiB of data does not read back before the flush")
seen = plugin_reqs(logf)
if seen:
    bad("before any flush the plugin saw %d request(s), e.g. %s: zero blocks must need no plugin I/O "
        "and must not count against cache-max-size" % (len(seen), seen[:3]))
h.flush()
cur = open(disk, "rb").read()
if cur != bytes(model):
    bad("after the flush the file differs from the model, first at byte %d" % first_diff(cur, model))
if read_all(h, 0, len(model)) != bytes(model):
    bad("after the flush the export differs from the model")
h.shutdown()
reqs = plugin_reqs(logf)
zr = [r for r in reqs if r[0] == "Zero" and r[1] < 14 * M and 2 * M < r[1] + r[2]]
wr = [r for r in reqs if r[0] == "Write" and r[1] < 14 * M and 2 * M < r[1] + r[2]]
print("    plugin requests in the zeroed range: %s" % (zr + wr)[:6], file=sys.stderr)
if wr:
    bad("write-back sent %d Write request(s) into the zeroed range (want one Zero)" % len(wr))
if len(zr) != 1 or zr[0][1:3] != (2 * M, 12 * M):
    bad("write-back of the 12 MiB run of zero blocks was %d Zero request(s) %s, want one of 2M+12M"
        % (len(zr), [r[1:3] for r in zr[:4]]))
done()
EOF_PY

make_random_file "$tmp/b-disk" $((16 * M)) 12
start_nbdkit b --filter="$FILTER" --filter=log file "$tmp/b-disk" cache=writeback \
    cache-max-size=1M logfile="$tmp/b.nbdlog"
py "$tmp/b.py" "$uri" "$tmp/b-disk" "$tmp/b.nbdlog" &&
    ok "(b) cache-max-size=1M: 12 MiB of zero blocks read back with no plugin I/O, flushed as one Zero" ||
    bad "(b) zero blocks under cache-max-size=1M"
assert_alive b
stop_nbdkit b
assert_no_crash_in "$tmp/b.log"

# ------------------------------------------------------------------ (c)
cat >"$tmp/c.py" <<'EOF_PY'
import sys, random, subprocess
from zb import *
uri, disk, mode, copy = sys.argv[1:5]
model = bytearray(open(disk, "rb").read())
size = len(model)
h = connect(uri)
h.zero(M, M)                                   # trimming allowed
h.zero(M, 3 * M, nbd.CMD_FLAG_NO_HOLE)
model[M:2 * M] = bytes(M); model[3 * M:4 * M] = bytes(M)
data = random.Random(6).randbytes(200000)
h.pwrite(data, 9 * M + 5)                      # over a hole of the file
model[9 * M + 5:9 * M + 5 + len(data)] = data
ext = extents(h, 0, size)
def check(name, off, n, want_set, want_clear):
    for o, l, f in flags_in(ext, off, n):
        if f & want_set != want_set or f & want_clear:
            bad("%s: extent %d+%d has flags %d, want %d set and %d clear" % (name, o, l, f, want_set, want_clear))
            return
check("zeroed, trim allowed", M, M, ZERO | HOLE, 0)
check("zeroed with NO_HOLE", 3 * M, M, ZERO, HOLE)
check("unflushed data over a plugin hole", 9 * M + 5, len(data), 0, ZERO | HOLE)
check("untouched plugin data", 5 * M, M, 0, ZERO | HOLE)
check("untouched plugin hole", 12 * M, 4 * M, ZERO | HOLE, 0)
for off, want_set, want_clear in ((M, ZERO | HOLE, 0), (3 * M + 4096, ZERO, HOLE),
                                  (9 * M + 5, 0, ZERO | HOLE)):
    f = extents(h, off, 65536, nbd.CMD_FLAG_REQ_ONE)[0][2]
    if f & want_set != want_set or f & want_clear:
        bad("REQ_ONE block status at %d: flags %d, want %d set and %d clear" % (off, f, want_set, want_clear))
for o, l, f in ext:
    if f & ZERO and any(model[o:o + l]):
        bad("extent %d+%d is reported zero but holds data" % (o, l))
if read_all(h, 0, size) != bytes(model):
    bad("the export does not read back as the model")
r = subprocess.run(["timeout", "20", "nbdcopy", "--", uri, copy])
if r.returncode != 0:
    bad("nbdcopy failed")
elif open(copy, "rb").read() != bytes(model):
    bad("nbdcopy of the export differs from the model (it trusts block status)")
if mode == "writeback":
    h.flush()
    cur = open(disk, "rb").read()
    if cur != bytes(model):
        bad("after the flush the file differs from the model, first at byte %d" % first_diff(cur, model))
    for o, l, f in flags_in(extents(h, M, M), M, M):
        if not f & ZERO:
            bad("after the flush, zeroed extent %d+%d has flags %d (no zero bit)" % (o, l, f))
h.shutdown()
done()
EOF_PY

for mode in writeback unsafe; do
    disk=$tmp/c-$mode
    make_random_file "$disk" $((8 * M)) 13
    truncate -s $((16 * M)) "$disk"            # 8 MiB of data, then an 8 MiB hole
    start_nbdkit c-$mode --filter="$FILTER" file "$disk" cache=$mode
    py "$tmp/c.py" "$uri" "$disk" $mode "$tmp/c-$mode.copy" &&
        ok "(c) cache=$mode: block status of zeroed and unflushed blocks" ||
        bad "(c) cache=$mode: block status of zeroed / written blocks wrong"
    stop_nbdkit c-$mode
done

# ------------------------------------------------------------------ (d)
cat >"$tmp/d.py" <<'EOF_PY'
import sys, random
from zb import *
uri, disk, logf, pid, tmpdir = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
model = bytearray(open(disk, "rb").read())
r = random.Random(7)
B = 65536
h = connect(uri)
h.pwrite(b"x" * 100, 0); model[:100] = b"x" * 100      # the cache file exists now
a0 = cache_alloc(pid, tmpdir)
for i in range(64):                                    # 4 MiB of zero blocks at 4M
    h.pwrite(bytes(B), 4 * M + i * B)
model[4 * M:8 * M] = bytes(4 * M)
a1 = cache_alloc(pid, tmpdir)
if a1 - a0 > 4 * B:
    bad("writing 64 whole blocks of zeroes grew the cache file by %d bytes (want no data stored)" % (a1 - a0))
data = r.randbytes(M)
h.pwrite(data, 10 * M); model[10 * M:11 * M] = data
a2 = cache_alloc(pid, tmpdir)
h.pwrite(bytes(M), 10 * M); model[10 * M:11 * M] = bytes(M)
a3 = cache_alloc(pid, tmpdir)
print("    cache file allocated: %d, after 4 MiB of zero blocks %d, after 1 MiB of data %d, "
      "after zeroes over it %d" % (a0, a1, a2, a3), file=sys.stderr)
if a2 - a1 < M - B:
    bad("1 MiB of data grew the cache file by only %d bytes (measurement broken?)" % (a2 - a1))
elif a2 - a3 < M - 2 * B:
    bad("zero blocks written over 1 MiB of cached data freed only %d bytes of the cache file" % (a2 - a3))
mixed = r.randbytes(B) + bytes(B) + r.randbytes(B)
h.pwrite(mixed, 12 * M); model[12 * M:12 * M + 3 * B] = mixed
for name, off, n in (("4 MiB of zero blocks", 4 * M, 4 * M), ("zeroes over data", 10 * M, M),
                     ("zero block inside a write", 12 * M + B, B)):
    if h.pread(n, off) != bytes(n):
        bad("%s: does not read back as zeroes" % name)
    for o, l, f in flags_in(extents(h, off, n), off, n):
        if not f & ZERO:
            bad("%s: block status extent %d+%d has flags %d, want the zero bit" % (name, o, l, f))
            break
if read_all(h, 0, len(model)) != bytes(model):
    bad("the export does not read back as the model")
nbefore = len(plugin_reqs(logf))
h.flush()
cur = open(disk, "rb").read()
if cur != bytes(model):
    bad("after the flush the file differs from the model, first at byte %d" % first_diff(cur, model))
h.shutdown()
wb = plugin_reqs(logf)[nbefore:]
for name, off, n in (("4 MiB of zero blocks", 4 * M, 4 * M), ("zeroes over data", 10 * M, M)):
    ws = [x for x in wb if x[0] == "Write" and x[1] < off + n and off < x[1] + x[2]]
    zs = [x for x in wb if x[0] == "Zero" and x[1] < off + n and off < x[1] + x[2]]
    if ws or not zs:
        bad("%s: written back as %d Write and %d Zero request(s); want Zero only" % (name, len(ws), len(zs)))
    if any(x[3] for x in zs):
        bad("%s: written back as a Zero with trim=1, but the client wrote zeroes (no trim allowed)" % name)
done()
EOF_PY

make_random_file "$tmp/d-disk" $((16 * M)) 14
start_nbdkit d --filter="$FILTER" --filter=log file "$tmp/d-disk" cache=writeback logfile="$tmp/d.nbdlog"
py "$tmp/d.py" "$uri" "$tmp/d-disk" "$tmp/d.nbdlog" "$pid" "$TMPDIR" &&
    ok "(d) whole blocks of zeroes written: no cache space, read as zero, flushed as plugin zeroes" ||
    bad "(d) writes of whole zero blocks"
stop_nbdkit d

# ------------------------------------------------------------------ (e)
cat >"$tmp/e.py" <<'EOF_PY'
import sys, random
from zb import *
uri, plain_uri, disk, mode = sys.argv[1:5]
size = 4 * M
h = connect(uri)
old = read_all(h, 0, size)                 # cache-on-read: everything cached, clean
if old != open(disk, "rb").read():
    bad("the first read differs from the file")
model = bytearray(old)
wdata = random.Random(8).randbytes(128 * 1024)
h.pwrite(wdata, 3 * M); model[3 * M:3 * M + len(wdata)] = wdata
clean_trims = [(M, 256 * 1024), (2 * M + 1000, 4000)]
dirty_trims = [(3 * M + 65536, 65536), (3 * M + 100, 100)]
for off, n in clean_trims + dirty_trims:
    h.trim(n, off)
got = read_all(h, 0, size)
cur = open(disk, "rb").read()
for off, n in clean_trims:
    g = got[off:off + n]
    if g == old[off:off + n] and cur[off:off + n] != old[off:off + n]:
        bad("trimmed clean range %d+%d reads back the old cached data; the plugin's file has other bytes" % (off, n))
    elif g != cur[off:off + n] and g != bytes(n):
        bad("trimmed clean range %d+%d reads neither the plugin's bytes nor zeroes" % (off, n))
trimmed = bytearray(size)
for off, n in clean_trims + dirty_trims:
    trimmed[off:off + n] = b"\1" * n
for i in range(0, size, 4096):
    if not any(trimmed[i:i + 4096]) and got[i:i + 4096] != model[i:i + 4096]:
        bad("bytes at %d, outside every trimmed range, changed" % i)
        break
ext = extents(h, 0, size)
for o, l, f in ext:
    if f & ZERO and any(got[o:o + l]):
        bad("before the flush, extent %d+%d is reported zero but reads data" % (o, l))
h.flush()
got = read_all(h, 0, size)
cur = open(disk, "rb").read()
if got != cur:
    i = first_diff(got, cur)
    bad("after the flush the export differs from the plugin's file, first at byte %d%s" % (
        i, " (the old cached data)" if got[i] == old[i] else ""))
p = connect(plain_uri)
pext = extents(p, 0, size)
fext = extents(h, 0, size)
def per_page(ext):
    out = [None] * (size // 4096)
    for o, l, f in ext:
        for pg in range(o // 4096, (o + l + 4095) // 4096):
            out[pg] = f & (HOLE | ZERO) if out[pg] is None else out[pg] & f & (HOLE | ZERO)
    return out
pp, fp = per_page(pext), per_page(fext)
diff = [i for i in range(len(pp)) if pp[i] != fp[i]]
if diff:
    bad("after the flush block status differs from the plugin's in %d 4K pages, first at %d "
        "(filter %s, plugin %s)" % (len(diff), diff[0] * 4096, fp[diff[0]], pp[diff[0]]))
p.shutdown()
h.shutdown()
done()
EOF_PY

for mode in writeback writethrough; do
    disk=$tmp/e-$mode
    make_random_file "$disk" $((4 * M)) 15
    start_nbdkit e-plain -r file "$disk"
    plain_uri=$uri
    start_nbdkit e-$mode --filter="$FILTER" file "$disk" cache=$mode cache-on-read=true
    py "$tmp/e.py" "$uri" "$plain_uri" "$disk" $mode &&
        ok "(e) cache=$mode: after trim, reads and block status agree with the plugin" ||
        bad "(e) cache=$mode: stale data or extents after trim"
    stop_nbdkit e-$mode
    stop_nbdkit e-plain
done
finish
