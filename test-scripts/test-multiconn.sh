#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Two connections share one cache (SPEC §3 multi-conn rationale):
#  - writeback: A and B both write, only B flushes -> A's data (and B's)
#    reaches the plugin's file; A writes and disconnects without a flush,
#    a new connection C still reads A's data and C's flush writes it back;
#  - writethrough: data in the file at once whatever connection;
#  - unsafe: a flush from B writes nothing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((8 * 1024 * 1024))

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys
uri, disk, mode = sys.argv[1], sys.argv[2], sys.argv[3]
orig = open(disk, "rb").read()
fails = []
def conn():
    h = nbd.NBD(); h.connect_uri(uri); return h
a, b = conn(), conn()
if mode != "writethrough" and not a.can_multi_conn():
    fails.append("multi-conn not advertised in %s" % mode)
da = b"A" * 100000; db = b"B" * 3000
a.pwrite(da, 123456)                 # A: unaligned, 2-3 blocks
b.pwrite(db, 5000000)                # B: one block
if b.pread(len(da), 123456) != da: fails.append("B does not see A's write")
if a.pread(len(db), 5000000) != db: fails.append("A does not see B's write")
cur = open(disk, "rb").read()
if mode == "writeback" and cur != orig: fails.append("writeback: file changed before flush")
b.flush()                            # only B flushes
cur = open(disk, "rb").read()
want_written = mode in ("writeback", "writethrough")
if want_written:
    if cur[123456:223456] != da: fails.append("%s: A's data not in the file after B's flush" % mode)
    if cur[5000000:5003000] != db: fails.append("%s: B's data not in the file after B's flush" % mode)
else:
    if cur != orig: fails.append("unsafe: file changed after flush")

# A writes, disconnects without flushing; C reads it and flushes
dc = b"C" * 70000
a.pwrite(dc, 7000000 - 7)
a.shutdown(); del a
c = conn()
if c.pread(len(dc), 7000000 - 7) != dc: fails.append("new connection does not see a closed connection's write")
c.flush()
cur = open(disk, "rb").read()
if want_written and cur[7000000-7:7070000-7] != dc:
    fails.append("%s: data written by a closed connection lost at the next flush" % mode)
if not want_written and cur != orig:
    fails.append("unsafe: file changed")
b.shutdown(); c.shutdown()
for f in fails: print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF_PY

for mode in writeback writethrough unsafe; do
    disk=$tmp/disk-$mode
    make_random_file "$disk" $SIZE 4
    start_nbdkit $mode --filter="$FILTER" file "$disk" cache=$mode
    if py "$tmp/t.py" "$uri" "$disk" $mode; then
        ok "cache=$mode: two connections"
    else
        bad "cache=$mode: multi-connection behaviour wrong"
    fi
    stop_nbdkit $mode
done
finish
