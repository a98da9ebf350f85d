#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Metadata costs a few bits per block, not bytes (SPEC §4).  A 1 TiB
# export with 4K cache blocks has 2^28 blocks: at 1 byte per block the
# filter would need 256 MiB, at 3 bits 96 MiB (5 bits, 160 MiB, with
# cache-max-size).  Compare nbdkit's
# virtual size and RSS (connected, after a read and a write) between a
# 1 GiB and a 1 TiB export, with and without cache-max-size (LRU state):
# the growth must stay within those bits per block (and 8 MiB).  glibc's per-thread
# malloc arenas are disabled (MALLOC_ARENA_MAX=1) so that virtual sizes
# are comparable.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

export MALLOC_ARENA_MAX=1

cat >"$tmp/client.py" <<'EOF_PY'
import nbd, sys, os, time
uri, ready, done = sys.argv[1:4]
h = nbd.NBD(); h.connect_uri(uri)
h.pread(4096, 0); h.pwrite(b"x" * 4096, (1 << 30) - 4096)
h.pread(4096, h.get_size() - 4096)
open(ready, "w").close()
for _ in range(600):
    if os.path.exists(done): break
    time.sleep(0.05)
h.shutdown()
EOF_PY

# measure NAME SIZE [args] -> "VmSizeKB VmRSSKB"
measure() {
    local name=$1 size=$2; shift 2
    rm -f "$tmp/ready" "$tmp/done"
    start_nbdkit $name --filter="$FILTER" memory $size cache-min-block-size=4K "$@"
    py "$tmp/client.py" "$uri" "$tmp/ready" "$tmp/done" &
    local c=$!
    for _ in $(seq 1 300); do [ -e "$tmp/ready" ] && break; sleep 0.1; done
    [ -e "$tmp/ready" ] || fail "$name: client did not get ready"
    local v r
    v=$(awk '/^VmSize:/ {print $2}' /proc/"$pid"/status)
    r=$(awk '/^VmRSS:/ {print $2}' /proc/"$pid"/status)
    touch "$tmp/done"; wait $c || fail "$name: client failed"
    stop_nbdkit $name
    echo "$v $r"
}

# SPEC §8: block states take 3 bits a block (96 MiB for 2^28 blocks), 5
# with cache-max-size's LRU order (160 MiB); 8 MiB of slack for the rest.
for extra in "" "cache-max-size=1G"; do
    bits=3; [ -n "$extra" ] && bits=5
    limit_kb=$(( (1 << 28) * bits / 8 / 1024 + 8 * 1024 ))
    read -r v1 r1 < <(measure small 1G $extra)
    read -r v2 r2 < <(measure big 1T $extra)
    dv=$((v2 - v1)); dr=$((r2 - r1))
    log "${extra:-no cache-max-size}: 1G export: VmSize ${v1}K RSS ${r1}K; 1T export: VmSize ${v2}K RSS ${r2}K; growth ${dv}K / ${dr}K"
    if [ $dv -le $limit_kb ] && [ $dr -le $limit_kb ]; then
        ok "${extra:-no cache-max-size}: metadata for 2^28 blocks <= $bits bits a block ($((dv / 1024)) MiB virtual)"
    else
        bad "${extra:-no cache-max-size}: metadata for 2^28 blocks takes $((dv / 1024)) MiB virtual / $((dr / 1024)) MiB resident (> $((limit_kb / 1024)) MiB = $bits bits a block + 8 MiB)"
    fi
done
finish
