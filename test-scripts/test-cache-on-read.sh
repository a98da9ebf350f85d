#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# cache-on-read (SPEC §2, §4 pread), observed with a stats filter / log
# filter placed after ours (so they count what reaches the plugin):
#  - true:  reading the same region twice costs the plugin no more reads
#           than reading it once;
#  - false: twice the reads (default is false);
#  - /PATH: on while the file exists, checked per request: toggled while
#           nbdkit runs by creating/deleting the file between reads.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# plugin_reads NAME TIMES [cache args]: read 3 separate unaligned regions
# TIMES times each; print the number of plugin reads (stats filter).
plugin_reads() {
    local name=$1 times=$2; shift 2
    start_nbdkit $name --filter="$FILTER" --filter=stats memory 8M \
        statsfile="$tmp/$name.stats" "$@"
    py - "$uri" "$times" <<'EOF_PY'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for t in range(int(sys.argv[2])):
    for off, n in ((100, 4096), (1048576 + 65530, 20), (3 * 1048576, 65536)):
        assert h.pread(n, off) == bytes(n)
h.shutdown()
EOF_PY
    stop_nbdkit $name
    stats_ops "$tmp/$name.stats" read
}

for cor in "" cache-on-read=false cache-on-read=true cache-on-read=1 cache-on-read=no; do
    once=$(plugin_reads once 1 $cor)
    twice=$(plugin_reads twice 2 $cor)
    log "${cor:-default}: plugin reads: once $once, twice $twice"
    [ "$once" -gt 0 ] || { bad "${cor:-default}: no plugin reads at all"; continue; }
    case $cor in
        *true|*=1)
            [ "$twice" -eq "$once" ] && ok "$cor: second read served from the cache" ||
                bad "$cor: reading twice made $twice plugin reads, once made $once (want equal)" ;;
        *)
            [ "$twice" -eq $((2 * once)) ] && ok "${cor:-default (false)}: reads not cached" ||
                bad "${cor:-default (false)}: reading twice made $twice plugin reads, once made $once (want double)" ;;
    esac
done

# ---- cache-on-read=/PATH toggled at run time
flag=$tmp/cor-flag
rm -f "$flag"
start_nbdkit path --filter="$FILTER" --filter=log memory 8M \
    logfile="$tmp/path.nbdlog" cache-on-read="$flag"
py - "$uri" "$flag" <<'EOF_PY'
import nbd, sys, os
h = nbd.NBD(); h.connect_uri(sys.argv[1]); flag = sys.argv[2]
M = 1048576
h.pread(4096, 1 * M + 10); h.pread(4096, 1 * M + 10)     # R1: flag absent
open(flag, "w").close()
h.pread(4096, 3 * M + 10); h.pread(4096, 3 * M + 10)     # R2: flag present
os.unlink(flag)
h.pread(4096, 5 * M + 10); h.pread(4096, 5 * M + 10)     # R3: flag absent again
h.pread(4096, 3 * M + 10)                                # R2 again: still cached
h.shutdown()
EOF_PY
stop_nbdkit path
reads_in() {  # reads_in LO HI -> plugin reads overlapping [LO, HI)
    log_reqs "$tmp/path.nbdlog" Read | awk -v lo="$1" -v hi="$2" \
        '$1 < hi && $1 + $2 > lo {n++} END {print n + 0}'
}
M=1048576
r1=$(reads_in $((M)) $((2 * M)))
r2=$(reads_in $((3 * M)) $((4 * M)))
r3=$(reads_in $((5 * M)) $((6 * M)))
log "cache-on-read=/PATH: plugin reads: R1 (absent) $r1, R2 (present) $r2, R3 (absent) $r3"
[ "$r1" -ge 2 ] || bad "/PATH absent: region read twice hit the plugin $r1 time(s), want 2"
[ "$r2" -eq 1 ] || bad "/PATH present: region read 3 times hit the plugin $r2 time(s), want 1"
[ "$r3" -ge 2 ] || bad "/PATH deleted again: region read twice hit the plugin $r3 time(s), want 2"
[ "$r1" -ge 2 ] && [ "$r2" -eq 1 ] && [ "$r3" -ge 2 ] && ok "cache-on-read=/PATH follows the file at run time"
finish
