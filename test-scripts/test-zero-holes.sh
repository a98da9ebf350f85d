#!/usr/bin/env bash
# Plugin data that is all zeroes is cached as a hole (README "Design"):
# with cache-on-read, reading 8 MiB of a fresh memory plugin (zeroes) caches
# it (a second pass makes no plugin reads) while the cache file allocates
# nothing for it; reading 8 MiB of the pattern plugin (data) allocates 8 MiB.
# Both read back byte for byte, cold (aligned blocks) and then from the
# cache (unaligned).  The allocation is measured after the cold pass: on
# tmpfs, reads of cached blocks go through a mapping of the cache file, and
# the kernel allocates the pages it maps, holes or not.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=1048576
cat >"$tmp/read.py" <<'EOF_PY'
import nbd, sys, struct
h = nbd.NBD(); h.connect_uri(sys.argv[1]); plugin = sys.argv[2]; cold = sys.argv[3] == "cold"
def want(off, n):
    if plugin == "memory":
        return bytes(n)
    # The pattern plugin: each 8-byte word holds its own offset, big-endian.
    first = off - off % 8
    words = b"".join(struct.pack(">Q", o) for o in range(first, off + n + 8, 8))
    return words[off - first:off - first + n]
for i in range(128):
    off = 65536 * i + (0 if cold or i % 3 else 1000)
    n = min(65536, 8 * 1048576 - off)
    assert h.pread(n, off) == want(off, n), "%d bytes at %d" % (n, off)
h.shutdown()
EOF_PY

# check PLUGIN -> "ALLOCATED-AFTER-THE-COLD-PASS PLUGIN-READS-IN-BOTH-PASSES"
check() {
    local plugin=$1
    start_nbdkit $plugin --filter="$FILTER" --filter=stats $plugin 8M \
        statsfile="$tmp/$plugin.stats" cache-on-read=true
    py "$tmp/read.py" "$uri" $plugin cold || fail "$plugin: wrong data read (cold)"
    local a
    a=$(cache_file_alloc "$pid")
    py "$tmp/read.py" "$uri" $plugin warm || fail "$plugin: wrong data read (from the cache)"
    stop_nbdkit $plugin
    echo "$a $(stats_ops "$tmp/$plugin.stats" read)"
}

read -r a reads < <(check memory)
log "memory plugin (zeroes), 8 MiB read twice: cache file allocated $a bytes, $reads plugin reads"
[ "$a" -le 65536 ] && ok "zeroes cached as holes ($a bytes allocated)" ||
    bad "8 MiB of plugin zeroes allocated $a bytes of cache file"
[ "$reads" -eq 128 ] && ok "zeroes are cached: the second pass read nothing from the plugin" ||
    bad "zero blocks not cached: $reads plugin reads for two passes over 128 blocks"

read -r a reads < <(check pattern)
log "pattern plugin (data), 8 MiB read twice: cache file allocated $a bytes, $reads plugin reads"
[ "$a" -ge $((8 * M)) ] && ok "data is stored ($a bytes allocated)" ||
    bad "8 MiB of plugin data allocated only $a bytes of cache file"
[ "$reads" -eq 128 ] && ok "data is cached" ||
    bad "data not cached: $reads plugin reads for two passes over 128 blocks"
finish
