#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Flush (SPEC §4 flush), seen by a log filter after ours:
#  - writeback: a flush writes back every dirty block, then flushes the
#    plugin; written-back blocks are clean, so the next flush writes
#    nothing more; a flush with nothing dirty still flushes the plugin;
#  - writethrough: writes reach the plugin at once; a flush only flushes;
#  - unsafe: neither writes nor flushes reach the plugin.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"1" * 70000, 65536 * 2 + 100)     # blocks 2, 3
h.pwrite(b"2" * 10, 65536 * 9)              # block 9
h.flush()                                   # F1
h.flush()                                   # F2
h.pwrite(b"3" * 100, 65536 * 12 + 5)        # block 12
h.flush()                                   # F3
h.shutdown()
EOF_PY

# phases LOG -> one line per phase between flushes: the sorted block
# numbers written to the plugin in it; a line "F" per flush
phases() {
    py - "$1" <<'EOF_PY'
import re, sys
cur = set()
for line in open(sys.argv[1]):
    m = re.search(r' connection=\d+ (Write|Flush|Zero|Trim) id=\d+ (.*)', line)
    if not m: continue
    if m.group(1) == "Flush":
        print(" ".join(map(str, sorted(cur))) or "-"); print("F"); cur = set()
        continue
    f = dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
    o, n = int(f["offset"], 0), int(f["count"], 0)
    cur.update(range(o // 65536, (o + n - 1) // 65536 + 1))
print(" ".join(map(str, sorted(cur))) or "-")
EOF_PY
}

for mode in writeback writethrough unsafe; do
    truncate -s 4M "$tmp/disk-$mode"
    start_nbdkit $mode --filter="$FILTER" --filter=log file "$tmp/disk-$mode" \
        cache=$mode logfile="$tmp/$mode.nbdlog"
    py "$tmp/t.py" "$uri" || fail "client failed"
    stop_nbdkit $mode
    got=$(phases "$tmp/$mode.nbdlog" | paste -sd'|')
    case $mode in
        # blocks 2 3 9 written back before F1; nothing before F2; 12 before F3
        writeback)    want="2 3 9|F|-|F|12|F|-" ;;
        writethrough) want="2 3 9|F|-|F|12|F|-" ;;
        unsafe)       want="-" ;;
    esac
    if [ "$got" = "$want" ]; then
        ok "cache=$mode: plugin saw $got"
    else
        grep -E ' (Write|Flush) ' "$tmp/$mode.nbdlog" | sed 's/^/    /' >&2
        bad "cache=$mode: plugin saw (blocks written|F=flush) '$got', want '$want'"
    fi
done
finish
