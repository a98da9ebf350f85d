#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Unaligned I/O checked byte for byte against a python model (SPEC §4
# pread/pwrite): odd offsets and lengths, requests across block
# boundaries, and requests touching the end of an export whose size
# (1000000) is not a multiple of the block size.  Every mode, with and
# without cache-on-read, 64K and 4K blocks; file plugin so the backing
# file can be checked after the final flush.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=1000000

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, random
uri, disk, mode, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
size = 1000000
orig = open(disk, "rb").read()
model = bytearray(orig)
r = random.Random(seed)
h = nbd.NBD(); h.connect_uri(uri)
if h.get_size() != size:
    print("FAIL: export size", h.get_size()); sys.exit(1)
fails = []

def rand_range():
    k = r.random()
    if k < 0.25:        # touching the end of the export
        n = r.randint(1, 150000)
        return size - n, n
    if k < 0.35:        # around a 64K boundary
        b = r.randrange(1, size // 65536 + 1) * 65536
        off = max(0, b - r.randint(1, 5000))
        return off, min(size - off, r.randint(1, 10000))
    off = r.randrange(size)
    return off, r.randint(1, min(size - off, r.choice([17, 4095, 4097, 65537, 200000])))

for i in range(300):
    op = r.random()
    off, n = rand_range()
    if op < 0.45:
        data = r.randbytes(n)
        h.pwrite(data, off)
        model[off:off+n] = data
    elif op < 0.5:
        h.zero(n, off)
        model[off:off+n] = bytes(n)
    elif op < 0.53:
        h.flush()
    else:
        got = h.pread(n, off)
        if got != bytes(model[off:off+n]):
            bad = next(j for j in range(n) if got[j] != model[off+j])
            fails.append("op %d: pread(%d, %d) differs at byte %d" % (i, n, off, off + bad))
            if len(fails) > 5: break
if h.pread(size, 0) != bytes(model):
    fails.append("full read-back differs from the model")
h.flush()
cur = open(disk, "rb").read()
if len(cur) != size:
    fails.append("backing file size changed to %d" % len(cur))
if mode != "unsafe" and cur != bytes(model):
    fails.append("backing file differs from the model after flush")
if mode == "unsafe" and cur != orig:
    fails.append("unsafe: backing file was modified")
h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

seed=10
for mode in writeback writethrough unsafe; do
    for extra in "cache-on-read=false" "cache-on-read=true" \
                 "cache-on-read=true cache-min-block-size=4K"; do
        seed=$((seed + 1))
        disk=$tmp/disk-$seed
        make_random_file "$disk" $SIZE $seed
        # shellcheck disable=SC2086
        start_nbdkit n$seed --filter="$FILTER" file "$disk" cache=$mode $extra
        if py "$tmp/t.py" "$uri" "$disk" $mode $seed; then
            ok "cache=$mode $extra"
        else
            bad "cache=$mode $extra: data differs from the model"
        fi
        stop_nbdkit n$seed
    done
done
# memory plugin (sparse, reads of never-written areas are zeroes)
for mode in writeback unsafe; do
    nbdkit_captive --filter="$FILTER" memory $SIZE cache=$mode cache-on-read=true --run '
        /usr/bin/python3 -c "
import nbd, sys, random
h = nbd.NBD(); h.connect_uri(sys.argv[1])
r = random.Random(5); size = 1000000; m = bytearray(size)
for i in range(200):
    off = r.randrange(size); n = r.randint(1, min(size - off, 70000))
    if i % 2:
        d = r.randbytes(n); h.pwrite(d, off); m[off:off+n] = d
    else:
        assert h.pread(n, off) == bytes(m[off:off+n]), (off, n)
assert h.pread(size, 0) == bytes(m)
" "$uri"' || bad "memory plugin, cache=$mode: data differs from the model"
done
finish
