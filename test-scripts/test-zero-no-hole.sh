#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A zero request with NBD_CMD_FLAG_NO_HOLE never becomes a trim (SPEC §8
# known-zero blocks: write-back sends zero blocks as one plugin zero "with
# MAY_TRIM when the client allowed it" - and a client that sets NO_HOLE
# did not).  File plugin over a fully allocated 8 MiB file (random data),
# nbdkit's log filter under ours; a 4 MiB zero at 2 MiB with NO_HOLE in
# cache=writethrough, in cache=writeback with FUA, and in cache=writeback
# followed by a flush.  Afterwards the file's allocated size must still be
# 8 MiB (the filter this test was written against let the file plugin
# punch the range: 4 MiB left), the range must read as zeroes through NBD
# and in the file, the rest be unchanged, and no plugin Zero request may
# carry trim=1 (nor may a Trim reach the plugin).  Last, a zero without
# NO_HOLE in writethrough is only reported: the filter may pass trimming
# on there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=$((1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys
uri, disk, how = sys.argv[1:4]
M = 1048576
orig = open(disk, "rb").read()
fails = []
h = nbd.NBD(); h.connect_uri(uri)
flags = {"no-hole": nbd.CMD_FLAG_NO_HOLE, "no-hole-fua": nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA,
         "no-hole-flush": nbd.CMD_FLAG_NO_HOLE, "plain": 0}[how]
h.zero(4 * M, 2 * M, flags)
if how == "no-hole-flush":
    h.flush()
want = orig[:2 * M] + bytes(4 * M) + orig[6 * M:]
if h.pread(8 * M, 0) != want:
    fails.append("the export does not read as zeroes in the range (or changed outside it)")
if open(disk, "rb").read() != want:
    fails.append("the file does not hold the zeroes (or changed outside the range)")
h.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

run() {   # run NAME HOW MODE -> sets alloc, trims
    local name=$1 how=$2 mode=$3 disk=$tmp/disk-$1 nlog=$tmp/$1.nbdlog
    make_random_file "$disk" $((8 * M)) 51
    [ $(($(stat -c %b "$disk") * 512)) -ge $((8 * M)) ] || skip "cannot make a fully allocated file"
    start_nbdkit $name --filter="$FILTER" --filter=log file "$disk" logfile="$nlog" cache=$mode
    py "$tmp/t.py" "$uri" "$disk" $how || bad "$name: zeroes not in the export or the file"
    assert_alive $name
    stop_nbdkit $name
    assert_no_crash_in "$tmp/$name.log"
    alloc=$(($(stat -c %b "$disk") * 512))
    trims=$(grep -Ec ' connection=[0-9]+ (Zero id=[0-9]+ .*trim=1|Trim id=)' "$nlog" || true)
    log "$name: file allocated $alloc bytes after the zero; plugin zeroes with trim=1 or trims: $trims;" \
        "plugin requests:" "$(grep -Eo ' (Zero|Trim|Write) id=[0-9]+ .*' "$nlog" | head -4 | tr '\n' ';')"
}

for c in writethrough:no-hole:writethrough writeback-fua:no-hole-fua:writeback \
         writeback-flush:no-hole-flush:writeback; do
    IFS=: read -r name how mode <<<"$c"
    run $name $how $mode
    [ "$alloc" -ge $((8 * M)) ] && ok "$name: the file is still fully allocated" ||
        bad "$name: zero with NO_HOLE deallocated the file: $alloc of $((8 * M)) bytes left"
    [ "$trims" -eq 0 ] && ok "$name: no trim reached the plugin" ||
        bad "$name: zero with NO_HOLE reached the plugin as $trims zero(s) with trim=1 / trim(s)"
done

run plain plain writethrough
log "(not checked) writethrough zero without NO_HOLE: $alloc bytes allocated, $trims trimming request(s)"
finish
