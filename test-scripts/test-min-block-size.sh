#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# cache-min-block-size (SPEC §2, §4): the cache works in whole blocks of
# max(cache-min-block-size, file system block size); default 64K.  A 4 KiB
# read with cache-on-read=true makes the plugin read the whole enclosing
# block (log filter after ours shows count=block size at the block's
# offset); a partial write never reads the plugin (the block is kept as a
# partial block) and the flush writes back just the bytes it holds.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

fsbs=$(stat -f -c %S "$TMPDIR")
log "file system block size of TMPDIR: $fsbs"

# check NAME BLOCKSIZE [args]
check() {
    local name=$1 bs=$2; shift 2
    start_nbdkit $name --filter="$FILTER" --filter=log memory 16M \
        logfile="$tmp/$name.nbdlog" cache-on-read=true "$@"
    py - "$uri" "$bs" <<'EOF_PY'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); bs = int(sys.argv[2])
h.pread(4096, 3 * bs + 8192 if bs > 8192 else 3 * bs)    # inside block 3
h.pwrite(b"x" * 100, 7 * bs + 17)                       # inside block 7
h.flush()
h.shutdown()
EOF_PY
    stop_nbdkit $name
    local reads writes before=$_nbad
    reads=$(log_reqs "$tmp/$name.nbdlog" Read)
    writes=$(log_reqs "$tmp/$name.nbdlog" Write)
    echo "$reads" | sed "s/^/    $name plugin read: /" >&2
    echo "$writes" | sed "s/^/    $name plugin write: /" >&2
    # the read of block 3, and nothing else read
    grep -qx "$((3 * bs)) $bs 0" <<<"$reads" ||
        bad "$name: 4K read did not make a plugin read of the whole block ($((3 * bs)) $bs)"
    [ "$(wc -l <<<"$reads")" -eq 1 ] ||
        bad "$name: the partial write of block 7 read the plugin"
    # the flush writes back exactly the 100 bytes block 7 holds
    grep -Eq "^$((7 * bs + 17)) 100 [01]\$" <<<"$writes" && [ "$(wc -l <<<"$writes")" -eq 1 ] ||
        bad "$name: flush did not write back just the 100 written bytes of block 7"
    [ "$_nbad" -ne "$before" ] || ok "$name: block size $bs"
}

max() { [ "$1" -gt "$2" ] && echo "$1" || echo "$2"; }
check default "$(max 65536 "$fsbs")"
check 1M "$(max 1048576 "$fsbs")" cache-min-block-size=1M
check 4K "$(max 4096 "$fsbs")" cache-min-block-size=4K
check 256K "$(max 262144 "$fsbs")" cache-min-block-size=256K
finish
