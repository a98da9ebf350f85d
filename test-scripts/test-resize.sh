#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The export grows between connections (the file plugin's file is
# extended while nbdkit runs).  The filter sizes its cache from each
# connection's get_size (as the C filter does in .prepare), so a later
# connection sees the new size, reads the new area from the plugin, and
# can write and flush there; data cached before stays right.
# (The old partial last block is not touched before the growth: a cached
# copy of it would legitimately be stale, like any data changed behind
# the cache's back.)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=$((1024 * 1024))
disk=$tmp/disk
make_random_file "$disk" $((1 * M + 1000)) 81
for mode in writeback writethrough; do
    cp "$disk" "$disk.$mode"
    start_nbdkit $mode --filter="$FILTER" file "$disk.$mode" cache=$mode
    py - "$uri" "$disk.$mode" <<'EOF_PY' || bad "cache=$mode: wrong behaviour after the export grew"
import nbd, sys, os, random
uri, disk = sys.argv[1:3]
M = 1048576
h = nbd.NBD(); h.connect_uri(uri)
assert h.get_size() == M + 1000
h.pwrite(b"a" * 70000, 100000)
model = bytearray(open(disk, "rb").read()); model[100000:170000] = b"a" * 70000
assert h.pread(M - 65536, 0) == bytes(model[:M - 65536])
h.flush(); h.shutdown()
# grow the file by 2 MiB of new data
extra = random.Random(3).randbytes(2 * M)
with open(disk, "ab") as f: f.write(extra)
model += extra
h = nbd.NBD(); h.connect_uri(uri)
assert h.get_size() == 3 * M + 1000, "new size not seen: %d" % h.get_size()
assert h.pread(3 * M + 1000, 0) == bytes(model), "read after growing differs"
h.pwrite(b"b" * 7000, 3 * M + 1000 - 7000); model[3 * M - 6000:] = b"b" * 7000
h.pwrite(b"c" * 10, M + 500); model[M + 500:M + 510] = b"c" * 10
assert h.pread(3 * M + 1000, 0) == bytes(model), "read after writing the new area differs"
h.flush()
assert open(disk, "rb").read() == bytes(model), "file differs after flush"
h.shutdown()
EOF_PY
    assert_alive $mode
    stop_nbdkit $mode
    assert_no_crash_in "$tmp/$mode.log"
done
finish
