#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Read-only exports (SPEC §7: next->pwrite only if next->can_write):
#  - nbdkit -r: reads (cached with cache-on-read, NBD_CMD_CACHE) work, the
#    export is read-only, writes are refused, the backing file and the
#    plugin see no write; flush (if offered) succeeds;
#  - a plugin that cannot write (eval plugin without pwrite): the export
#    is read-only, reads work in every mode.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((2 * 1024 * 1024))
disk=$tmp/disk
make_random_file "$disk" $SIZE 41
cp "$disk" "$disk.orig"

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys
uri, orig = sys.argv[1], open(sys.argv[2], "rb").read()
h = nbd.NBD(); h.connect_uri(uri)
fails = []
if not h.is_read_only(): fails.append("export is not read-only")
for off, n in ((0, 4096), (65530, 20), (len(orig) - 5, 5), (0, len(orig))):
    for _ in range(2):
        if h.pread(n, off) != orig[off:off+n]:
            fails.append("read %d+%d wrong" % (off, n))
if h.can_cache():
    h.cache(200000, 300000)
    if h.pread(200000, 300000) != orig[300000:500000]:
        fails.append("read after cache wrong")
# the server must refuse writes (bypass libnbd's own read-only check)
h2 = nbd.NBD(); h2.set_strict_mode(0); h2.connect_uri(uri)
try:
    h2.pwrite(b"z" * 100, 1000)
    fails.append("write to a read-only export succeeded")
except nbd.Error:
    pass
if h2.pread(100, 1000) != orig[1000:1100]:
    fails.append("refused write changed the data")
if h.can_flush():
    h.flush()
h.shutdown(); h2.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

for mode in writeback writethrough unsafe; do
    for cor in true false; do
        start_nbdkit ro-$mode-$cor -r --filter="$FILTER" --filter=log file "$disk" \
            cache=$mode cache-on-read=$cor logfile="$tmp/ro.nbdlog"
        py "$tmp/t.py" "$uri" "$disk.orig" && ok "nbdkit -r, cache=$mode cache-on-read=$cor" ||
            bad "nbdkit -r, cache=$mode cache-on-read=$cor: wrong behaviour"
        stop_nbdkit ro-$mode-$cor
        assert_no_crash_in "$tmp/ro-$mode-$cor.log"
        if grep -Eq ' (Write|Zero|Trim) ' "$tmp/ro.nbdlog"; then
            bad "nbdkit -r, cache=$mode: a write reached the plugin"
        fi
    done
done
cmp -s "$disk" "$disk.orig" || bad "backing file changed through a read-only export"

# plugin without write support
for mode in writeback writethrough unsafe; do
    nbdkit_captive --filter="$FILTER" eval \
        get_size="stat -L -c %s $disk" \
        pread='dd if='"$disk"' skip=$4 count=$3 iflag=count_bytes,skip_bytes status=none' \
        can_write='exit 3' cache=$mode cache-on-read=true \
        --run '/usr/bin/python3 '"$tmp/t.py"' "$uri" '"$disk.orig" &&
        ok "read-only plugin, cache=$mode" || bad "read-only plugin, cache=$mode: wrong behaviour"
done
finish
