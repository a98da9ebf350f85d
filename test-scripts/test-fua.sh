#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# FUA writes (SPEC §4 pwrite):
#  - writeback, plugin with native FUA (file plugin): the FUA write goes
#    through to the plugin at once, with the FUA flag (log filter after
#    ours shows fua=1), while a plain write stays in the cache until the
#    connection closes (SPEC §8);
#  - writeback, plugin that only emulates FUA (fua filter fuamode=emulate
#    after ours): the data reaches the file at once and a flush reaches
#    the plugin after the write;
#  - writethrough: FUA data in the file at once (native and emulated);
#  - unsafe: FUA becomes a flush, which is a no-op: nothing reaches the
#    plugin at all.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((4 * 1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, os, sys
uri, disk, expect_in_file = sys.argv[1], sys.argv[2], sys.argv[3] == "yes"
h = nbd.NBD(); h.connect_uri(uri)
if not h.can_fua():
    print("FAIL: server does not advertise FUA"); sys.exit(1)
orig = open(disk, "rb").read()
plain = b"P" * 5000
h.pwrite(plain, 1000000)                      # plain write: stays cached (wb)
fua = b"F" * 70000
h.pwrite(fua, 200000, nbd.CMD_FLAG_FUA)       # unaligned FUA write, 2-3 blocks
cur = open(disk, "rb").read()
fails = []
if os.environ.get("PLAIN_STAYS") == "yes" and cur[1000000:1005000] == plain:
    fails.append("the plain (non-FUA) write reached the plugin before any flush")
if expect_in_file and cur[200000:270000] != fua:
    fails.append("FUA write did not reach the backing file at once")
if not expect_in_file and cur != orig:
    fails.append("backing file changed although nothing should reach the plugin")
if h.pread(70000, 200000) != fua or h.pread(5000, 1000000) != plain:
    fails.append("read-back differs")
h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

# run NAME EXPECT_IN_FILE(yes|no) [extra filters/args...]  (log filter right after ours)
run() {
    local name=$1 expect=$2; shift 2
    local disk=$tmp/disk-$name
    truncate -s $SIZE "$disk"
    start_nbdkit $name --filter="$FILTER" --filter=log "$@" logfile="$tmp/$name.nbdlog"
    py "$tmp/t.py" "$uri" "$disk" $expect || bad "$name: FUA data path wrong"
    stop_nbdkit $name
    grep -E ' (Write|Flush|Zero) ' "$tmp/$name.nbdlog" | sed 's/^/    plugin saw: /' >&2 || true
}
# Writes to the plugin covering offset 200000 (the FUA write)
fua_writes() { log_reqs "$1" Write | while read -r o c f; do
    if [ "$o" -le 200000 ] && [ $((o + c)) -gt 200000 ]; then echo "$f"; fi; done; }

# writeback, native FUA (file plugin)
PLAIN_STAYS=yes run wb-native yes file "$tmp/disk-wb-native" cache=writeback
f=$(fua_writes "$tmp/wb-native.nbdlog")
case $f in
    *1*) ok "writeback/native: FUA write reached the plugin with fua=1" ;;
    *) bad "writeback/native: no write with fua=1 covering the FUA range reached the plugin (fua flags seen: '${f}')" ;;
esac

# writeback, emulated FUA: fua filter after ours (and after the log)
run wb-emulate yes --filter=fua file "$tmp/disk-wb-emulate" fuamode=emulate cache=writeback
if ! grep -q ' Flush ' "$tmp/wb-emulate.nbdlog"; then
    bad "writeback/emulate: FUA write was not turned into a flush reaching the plugin"
else
    # the flush must come after the write of the FUA data
    w=$(grep -n ' Write ' "$tmp/wb-emulate.nbdlog" | tail -n1 | cut -d: -f1)
    fl=$(grep -n ' Flush ' "$tmp/wb-emulate.nbdlog" | tail -n1 | cut -d: -f1)
    if [ -n "$w" ] && [ "$fl" -gt "$w" ]; then
        ok "writeback/emulate: write then flush reached the plugin"
    else
        bad "writeback/emulate: no flush after the write (write line ${w:-none}, flush line $fl)"
    fi
fi

# writethrough, native and emulated
run wt-native yes file "$tmp/disk-wt-native" cache=writethrough
run wt-emulate yes --filter=fua file "$tmp/disk-wt-emulate" fuamode=emulate cache=writethrough
if grep -q ' Flush ' "$tmp/wt-emulate.nbdlog" ||
   [ -n "$(fua_writes "$tmp/wt-emulate.nbdlog" | grep 1)" ]; then
    ok "writethrough/emulate: FUA honoured (flush or FUA write reached the plugin)"
else
    bad "writethrough/emulate: neither a flush nor a FUA write reached the plugin"
fi

# unsafe: nothing reaches the plugin (native and emulated FUA plugins)
run unsafe-native no file "$tmp/disk-unsafe-native" cache=unsafe
run unsafe-emulate no --filter=fua file "$tmp/disk-unsafe-emulate" fuamode=emulate cache=unsafe
for n in unsafe-native unsafe-emulate; do
    if grep -Eq ' (Write|Flush|Zero|Trim) ' "$tmp/$n.nbdlog"; then
        bad "$n: requests reached the plugin in cache=unsafe"
    else
        ok "$n: nothing reached the plugin"
    fi
done
finish
