#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Plugin data that is all zeroes is cached as a hole (README "Design"):
# with cache-on-read, reading 8 MiB of a fresh memory plugin (zeroes) caches
# it (later passes make no plugin reads) while the cache file allocates
# nothing for it, not even when cached holes are read again (4 KiB, 64 KiB
# and 1 MiB reads: on tmpfs a read through a mapping would allocate them);
# reading 8 MiB of the pattern plugin (data) allocates 8 MiB.  Every pass
# reads back byte for byte.  Run with the cache file in $TMPDIR and, when
# it is writable, on /dev/shm (tmpfs, where large reads use mappings).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=1048576
cat >"$tmp/read.py" <<'EOF_PY'
import nbd, sys, struct
h = nbd.NBD(); h.connect_uri(sys.argv[1]); plugin = sys.argv[2]; how = sys.argv[3]
def want(off, n):
    if plugin == "memory":
        return bytes(n)
    # The pattern plugin: each 8-byte word holds its own offset, big-endian.
    first = off - off % 8
    words = b"".join(struct.pack(">Q", o) for o in range(first, off + n + 8, 8))
    return words[off - first:off - first + n]
# cold: each 64K block once; warm: unaligned 64K and 4K reads; big: 1M reads
if how == "cold":
    reads = [(65536 * i, 65536) for i in range(128)]
elif how == "warm":
    reads = [(65536 * i + 1000, 65536 if i < 127 else 64536) for i in range(128)]
    reads += [(65536 * i + 300, 4096) for i in range(0, 128, 5)]
else:
    reads = [(1048576 * i + (i * 4096) % 65536, 1048576 - 65536) for i in range(8)]
for off, n in reads:
    assert h.pread(n, off) == want(off, n), "%s: %d bytes at %d" % (how, n, off)
h.shutdown()
EOF_PY

# check DIR PLUGIN -> "ALLOCATED-AFTER-ALL-PASSES PLUGIN-READS"
check() {
    local dir=$1 plugin=$2 how
    TMPDIR=$dir start_nbdkit $plugin --filter="$FILTER" --filter=stats $plugin 8M \
        statsfile="$tmp/$plugin.stats" cache-on-read=true
    for how in cold warm big; do
        py "$tmp/read.py" "$uri" $plugin $how || fail "$plugin: wrong data read ($how)"
    done
    local a
    a=$(TMPDIR=$dir cache_file_alloc "$pid")
    stop_nbdkit $plugin
    echo "$a $(stats_ops "$tmp/$plugin.stats" read)"
}

dirs=("$TMPDIR")
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    shm=$(mktemp -d /dev/shm/swiftcache-zero-holes.XXXXXX)
    on_exit rm -rf "$shm"
    dirs+=("$shm")
else
    log "/dev/shm not writable: tmpfs not tested"
fi
for dir in "${dirs[@]}"; do
    where=$(stat -f -c %T "$dir")
    read -r a reads < <(check "$dir" memory)
    log "$where, memory plugin (zeroes), 8 MiB read in 3 passes: cache file allocated $a bytes, $reads plugin reads"
    [ "$a" -le 65536 ] && ok "$where: zeroes cached as holes ($a bytes allocated)" ||
        bad "$where: 8 MiB of plugin zeroes allocated $a bytes of cache file"
    [ "$reads" -eq 128 ] && ok "$where: zeroes are cached: later passes read nothing from the plugin" ||
        bad "$where: zero blocks not cached: $reads plugin reads in 3 passes over 128 blocks"

    read -r a reads < <(check "$dir" pattern)
    log "$where, pattern plugin (data), 8 MiB read in 3 passes: cache file allocated $a bytes, $reads plugin reads"
    [ "$a" -ge $((8 * M)) ] && ok "$where: data is stored ($a bytes allocated)" ||
        bad "$where: 8 MiB of plugin data allocated only $a bytes of cache file"
    [ "$reads" -eq 128 ] && ok "$where: data is cached" ||
        bad "$where: data not cached: $reads plugin reads in 3 passes over 128 blocks"
done
finish
