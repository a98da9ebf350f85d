#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Block status through the filter is well-formed (SPEC §7: a filter's
# .extents returns at least one extent starting at the requested offset;
# with REQ_ONE only the first is sent).  Passes against the C filter.
#
# Memory plugin, writeback, some written (dirty) blocks, then at many
# aligned and unaligned offsets, with and without REQ_ONE:
#  - the request succeeds and describes the range from the requested
#    offset (libnbd checks the reply; entries are non-empty, lengths > 0,
#    never past the end of the export);
#  - REQ_ONE returns exactly one extent;
#  - after a flush, written data is reported as data (neither hole nor
#    zero).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

for mode in writeback writethrough unsafe; do
nbdkit_captive --filter="$FILTER" memory 1000000 cache=$mode --run '
    /usr/bin/python3 - "$uri" '"$mode"' <<'"'EOF_PY'"'
import nbd, sys, random
h = nbd.NBD(); h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.set_strict_mode(nbd.STRICT_MASK)
h.connect_uri(sys.argv[1]); mode = sys.argv[2]
size = h.get_size()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.pwrite(b"d" * 100000, 300001)
h.pwrite(b"e" * 10, size - 10)
got = []
def cb(meta, off, entries, err):
    if meta == nbd.CONTEXT_BASE_ALLOCATION:
        got.append((off, list(entries)))
    return 0
r = random.Random(3)
offsets = [0, 1, 65535, 65536, 300000, 300001, 350000, 400001, 500000, size - 11, size - 10, size - 1]
offsets += [r.randrange(size) for _ in range(40)]
for flush in (False, True):
    if flush: h.flush()
    for off in offsets:
        for n in (1, 4096, 70000, size - off):
            n = min(n, size - off)
            for flags in (0, nbd.CMD_FLAG_REQ_ONE):
                got.clear()
                h.block_status(n, off, cb, flags)
                assert len(got) == 1, ("no base:allocation reply", off, n)
                o, e = got[0]
                assert o == off, ("reply for offset", o, "requested", off)
                assert len(e) >= 2 and len(e) % 2 == 0, e
                if flags:
                    assert len(e) == 2, ("REQ_ONE returned %d extents" % (len(e) // 2), off, n)
                total = sum(e[0::2])
                assert all(x > 0 for x in e[0::2]), ("zero-length extent", off, n, e)
                assert off + total <= size, ("extents past the end", off, n, e)
                if flush and mode != "unsafe":
                    # written data after a flush is in the plugin too
                    for wo, wn in ((300001, 100000), (size - 10, 10)):
                        p = off
                        for i in range(0, len(e), 2):
                            if p < wo + wn and wo < p + e[i]:
                                assert not (e[i+1] & (nbd.STATE_HOLE | nbd.STATE_ZERO)), \
                                    ("flushed data reported as hole/zero", off, n, e)
                            p += e[i]
h.shutdown()
EOF_PY
' || bad "cache=$mode: block status through the filter is malformed or failed"
done
finish
