#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A FUA write reaches the plugin once (SPEC §4 cache-max-size: "every
# byte reaches the plugin once per write: a block that a write is sending
# through to the plugin is not also written back by reclaim").  writeback,
# cache-max-size=4M, nbdkit's log filter under ours: one 16 MiB write with
# FUA at offset 0, larger than the cache, so reclaim runs while the write
# is stored; then a flush.  The plugin writes logged must add up to
# exactly 16 MiB (the filter this test was written against also wrote
# back the blocks being written through: about 28.5 MiB), the data must
# read back, and (file plugin) be in the file as soon as the FUA write
# returns.  Run over the memory plugin (64M) and the file plugin (64M
# sparse file), both with native FUA.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=$((1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, random
uri, disk = sys.argv[1:3]
M = 1048576
data = random.Random(12).randbytes(16 * M)
fails = []
h = nbd.NBD(); h.connect_uri(uri)
if not h.can_fua():
    print("FAIL: server does not advertise FUA"); sys.exit(1)
h.pwrite(data, 0, nbd.CMD_FLAG_FUA)
if disk != "-":
    with open(disk, "rb") as f:
        if f.read(16 * M) != data:
            fails.append("the FUA write is not in the file when it returns")
if h.pread(16 * M, 0) != data:
    fails.append("the FUA write reads back wrong")
h.flush()
if disk != "-":
    with open(disk, "rb") as f:
        if f.read(16 * M) != data:
            fails.append("the FUA write is not in the file after a flush")
h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

run() {   # run NAME DISK-OR-- PLUGIN ARGS...
    local name=$1 disk=$2; shift 2
    local nlog=$tmp/$name.nbdlog
    start_nbdkit $name --filter="$FILTER" --filter=log "$@" logfile="$nlog" \
        cache=writeback cache-max-size=4M
    if py "$tmp/t.py" "$uri" "$disk"; then
        ok "$name: the FUA write reads back (and is in the file)"
    else
        bad "$name: FUA write data wrong"
    fi
    assert_alive $name
    stop_nbdkit $name
    assert_no_crash_in "$tmp/$name.log"
    local n bytes
    read -r n bytes < <(log_reqs "$nlog" Write | awk '{ n++; s += $2 } END { print n + 0, s + 0 }')
    log "$name: $n plugin writes, $bytes bytes ($((bytes / 1024)) KiB) for one 16 MiB FUA write"
    [ "$bytes" -eq $((16 * M)) ] && ok "$name: every byte written to the plugin once" ||
        bad "$name: plugin writes add up to $bytes bytes, want exactly $((16 * M))"
}

run memory - memory 64M
disk=$tmp/disk
truncate -s 64M "$disk"
run file "$disk" file "$disk"
finish
