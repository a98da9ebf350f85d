#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Cache blocks larger than nbdkit's 64 MiB request limit (SPEC §7:
# "Plugin reads and writes are at most 64 MiB per call").
# cache-min-block-size=128M, file plugin on a sparse 512 MiB file, log
# filter after ours:
#  - a 4K write + read-back + flush, and a cache-on-read 4K read, give
#    the right data and the right file contents;
#  - EXPECTED TO FAIL against the C cache filter: every plugin read and
#    write must be <= 64 MiB (the C filter reads and writes whole 128 MiB
#    blocks in one call).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=$((1024 * 1024))
disk=$tmp/disk
truncate -s $((512 * M)) "$disk"
printf 'plugin-data' | dd of="$disk" bs=1 seek=$((300 * M)) conv=notrunc status=none

start_nbdkit big --filter="$FILTER" --filter=log file "$disk" \
    cache-min-block-size=128M cache-on-read=true logfile="$tmp/big.nbdlog"
PY_TIMEOUT=120 py - "$uri" "$disk" <<'EOF_PY' || bad "data wrong with 128M blocks"
import nbd, sys
M = 1048576
h = nbd.NBD(); h.connect_uri(sys.argv[1])
d = b"swiftcache" * 410
h.pwrite(d, 200 * M + 12345)
assert h.pread(len(d), 200 * M + 12345) == d, "read-back of the write differs"
assert h.pread(11, 300 * M) == b"plugin-data", "cache-on-read read differs"
assert h.pread(11, 300 * M) == b"plugin-data", "cached read differs"
h.flush()
f = open(sys.argv[2], "rb"); f.seek(200 * M + 12345)
assert f.read(len(d)) == d, "flushed data not in the file"
f.seek(200 * M); assert f.read(12345) == bytes(12345), "flush changed data around the write"
h.shutdown()
EOF_PY
stop_nbdkit big
big=$( { log_reqs "$tmp/big.nbdlog" Read; log_reqs "$tmp/big.nbdlog" Write; } |
       awk '$2 > 64 * 1048576' | wc -l)
log_reqs "$tmp/big.nbdlog" Read | sed 's/^/    plugin read: /' >&2
log_reqs "$tmp/big.nbdlog" Write | sed 's/^/    plugin write: /' >&2
[ "$big" -eq 0 ] && ok "no plugin request above 64 MiB" ||
    bad "$big plugin request(s) above 64 MiB"
finish
