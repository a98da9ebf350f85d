#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The filter under a serialized thread model (SPEC §7: it may call the
# plugin from a thread of its own only while the final thread model is
# PARALLEL).  The noparallel filter after ours lowers the thread model to
# serialize=requests / all-requests / connections; aio clients with many
# requests in flight then check the data against a model, with
# cache-on-read, with cache-max-size (writethrough: clean blocks are
# reclaimed) and in writeback with a flush.  nbdkit must neither crash nor
# hang, and the data must match.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((8 * 1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, random
uri, disk, nconn, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
orig = open(disk, "rb").read(); size = len(orig)
model = bytearray(orig)
hs = []
for c in range(nconn):
    h = nbd.NBD(); h.connect_uri(uri); hs.append(h)
r = random.Random(71)
fails = []
region = size // nconn
for rnd in range(4):
    pend = []
    for c, h in enumerate(hs):
        lo = c * region
        used = []
        for i in range(32):
            off = lo + r.randrange(region - 70000); n = r.randint(1, 70000)
            if any(off < o + m and o < off + n for o, m in used):
                continue
            used.append((off, n))
            if r.random() < 0.6:
                d = r.randbytes(n); model[off:off+n] = d
                pend.append((h, h.aio_pwrite(nbd.Buffer.from_bytearray(d), off), None, off, n))
            else:
                b = nbd.Buffer(n)
                pend.append((h, h.aio_pread(b, off), b, off, n))
                pend[-1] = pend[-1] + (bytes(model[off:off+n]),)
    while pend:
        for h in hs:
            if h.aio_in_flight() > 0: h.poll(0)
        rest = []
        for p in pend:
            h, ck = p[0], p[1]
            if h.aio_command_completed(ck):
                if p[2] is not None and p[2].to_bytearray() != p[5]:
                    fails.append("read %d+%d wrong" % (p[3], p[4]))
            else:
                rest.append(p)
        pend = rest
        if pend: pend[0][0].poll(10)
    hs[0].flush()
if hs[0].pread(size, 0) != bytes(model): fails.append("full read-back differs")
if mode != "unsafe" and open(disk, "rb").read() != bytes(model):
    fails.append("backing file differs after flush")
for h in hs: h.shutdown()
for f in fails[:10]: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

n=0
for ser in requests all-requests connections; do
    nconn=2; [ $ser = connections ] && nconn=1
    for args in "cache=writeback" "cache=writeback cache-on-read=true" \
                "cache=writethrough cache-on-read=true cache-max-size=1M"; do
        n=$((n + 1))
        disk=$tmp/disk-$n
        make_random_file "$disk" $SIZE $n
        # shellcheck disable=SC2086
        start_nbdkit t$n --filter="$FILTER" --filter=noparallel file "$disk" \
            serialize=$ser $args
        if py "$tmp/t.py" "$uri" "$disk" $nconn "${args%% *}"; then
            ok "serialize=$ser $args"
        else
            bad "serialize=$ser $args: data wrong"
        fi
        assert_alive t$n
        stop_nbdkit t$n
        assert_no_crash_in "$tmp/t$n.log"
    done
done
finish
