#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# No stranded writes (SPEC §8 **beyond**): in writeback mode every dirty
# block is written back to the plugin before the connection's .finalize
# returns, so a client that disconnects without flushing, or a plugin that
# cannot flush at all, still gets its data to the plugin; when nbdkit
# exits with dirty blocks never written back (cache=unsafe) the filter
# says how many through nbdkit_error.
# nbdkit's log filter sits under the filter under test: nbdkit finalizes
# the outer layer first, and the log filter logs "Disconnect" from its own
# .finalize, so once that line is in the log the filter's .finalize has
# returned - the file is checked then, with nbdkit still running.
#  (a) eval plugin over a file with pread and pwrite but no flush (so
#      can_flush is false; the client checks that), cache=writeback:
#      unaligned and whole-block writes, no flush, disconnect: the file
#      holds them.
#  (b) file plugin, cache=writeback, two connections: A writes and
#      disconnects without flushing while B stays connected: the file
#      holds A's data; then B writes and disconnects: the file holds B's.
#  (d) file plugin, cache=writeback: A writes (no flush) and stays
#      connected; B only reads and disconnects: B's close writes nothing
#      back (it strands nothing: a short-lived reader, such as fio's or
#      qemu-img's probes, must not cost the writers a write-back), so the
#      file still has its old bytes; then A disconnects: the file holds A's.
#  (c) cache=unsafe: 5 whole 64K blocks written, disconnect, SIGTERM:
#      nbdkit's stderr has an error line saying "dirty" with the count
#      (5 blocks or 327680 bytes); cache=writeback, same, exits with no
#      such line (nothing was left dirty) and the file holds the data.
#      Either way nbdkit must exit with status 0 (stop_nbdkit).
# EXPECTED TO FAIL against nbdkit's C cache filter, which has no
# .finalize: (a) and (b) the data stays in the cache and is lost when
# nbdkit exits (the files keep their old bytes); (c) it exits silently.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=$((1024 * 1024))

# wait_disconnects LOG N: wait until the log filter has logged N
# Disconnect lines (up to 20 s)
wait_disconnects() {
    local i n=0
    for i in $(seq 1 200); do
        n=$(grep -c ' Disconnect ' "$1" || true)
        [ "$n" -ge "$2" ] && return 0
        sleep 0.1
    done
    log "only $n of $2 disconnects logged after 20 s (the filter's .finalize failed or hangs)"
    return 1
}

# write.py URI MODEL SEED OFF:LEN... : writes, check they read back, no
# flush; saves the updated model; prints can_flush
cat >"$tmp/write.py" <<'EOF_PY'
import nbd, sys, random
uri, modelf, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = bytearray(open(modelf, "rb").read())
r = random.Random(seed)
h = nbd.NBD(); h.connect_uri(uri)
print("can_flush=%d" % h.can_flush())
for rg in sys.argv[4:]:
    off, n = map(int, rg.split(":"))
    d = r.randbytes(n)
    h.pwrite(d, off)
    model[off:off + n] = d
for rg in sys.argv[4:]:
    off, n = map(int, rg.split(":"))
    assert h.pread(n, off) == model[off:off + n], "write at %d+%d does not read back" % (off, n)
open(modelf, "wb").write(model)
h.shutdown()              # every write has completed: nothing in flight
EOF_PY

# check_file DISK MODEL WHAT
check_file() {
    if cmp -s "$1" "$2"; then
        ok "$3: the plugin's file holds the data after the disconnect"
    else
        bad "$3: after the disconnect (no flush) the plugin's file lacks the data ($(cmp "$1" "$2" 2>&1 | head -n1))"
    fi
}

# ------------------------------------------------------------------ (a)
disk=$tmp/disk-a
make_random_file "$disk" $((4 * M)) 41
cp "$disk" "$tmp/model-a"
start_nbdkit a --filter="$FILTER" --filter=log eval logfile="$tmp/a.nbdlog" \
    get_size="echo $((4 * M))" \
    pread="dd if=$disk skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
    pwrite="dd of=$disk seek=\$4 conv=notrunc oflag=seek_bytes status=none" \
    cache=writeback
out=$(py "$tmp/write.py" "$uri" "$tmp/model-a" 1 1000:100 196608:131072 500000:70001 $((4 * M - 10)):10) ||
    fail "(a) client failed"
[ "$out" = "can_flush=0" ] && ok "(a) the client sees can_flush false" ||
    bad "(a) the client sees '$out', want can_flush=0 (plugin without flush)"
wait_disconnects "$tmp/a.nbdlog" 1 || bad "(a) the connection did not finish closing"
assert_alive a
check_file "$disk" "$tmp/model-a" "(a) plugin that cannot flush"
grep -E ' (Write|Flush) id=' "$tmp/a.nbdlog" | head -5 | cut -d' ' -f3- | sed 's/^/    plugin: /' >&2 || true
stop_nbdkit a
assert_no_crash_in "$tmp/a.log"

# stay.py URI READY GO [WRITE]: connects (and writes WRITE bytes of "A"
# at 12345, no flush), creates READY, and stays connected until GO exists
# (at most 30 s)
cat >"$tmp/stay.py" <<'EOF_PY'
import nbd, sys, os, time
h = nbd.NBD(); h.connect_uri(sys.argv[1])
if len(sys.argv) > 4:
    h.pwrite(b"A" * int(sys.argv[4]), 12345)
open(sys.argv[2], "w").close()
for i in range(300):
    if os.path.exists(sys.argv[3]):
        break
    time.sleep(0.1)
h.shutdown()
EOF_PY

# ------------------------------------------------------------------ (b)
disk=$tmp/disk-b
make_random_file "$disk" $((8 * M)) 42
cp "$disk" "$tmp/model-b"
start_nbdkit b --filter="$FILTER" --filter=log file "$disk" logfile="$tmp/b.nbdlog" cache=writeback
# B: connected and idle until $tmp/b.go exists
py "$tmp/stay.py" "$uri" "$tmp/b.ready" "$tmp/b.go" &
bpid=$!
for i in $(seq 1 100); do [ -e "$tmp/b.ready" ] && break; sleep 0.1; done
[ -e "$tmp/b.ready" ] || fail "(b) client B did not connect"
out=$(py "$tmp/write.py" "$uri" "$tmp/model-b" 2 70000:5 $((2 * M)):$((M + 4097)) $((7 * M)):65536) ||
    fail "(b) client A failed"
wait_disconnects "$tmp/b.nbdlog" 1 || bad "(b) connection A did not finish closing"
check_file "$disk" "$tmp/model-b" "(b) connection A closed while B stays connected"
touch "$tmp/b.go"
wait "$bpid" || bad "(b) idle client B failed"
wait_disconnects "$tmp/b.nbdlog" 2 || true
out=$(py "$tmp/write.py" "$uri" "$tmp/model-b" 3 3:65533 $((5 * M + 1)):300000) || fail "(b) client C failed"
wait_disconnects "$tmp/b.nbdlog" 3 || bad "(b) connection C did not finish closing"
assert_alive b
check_file "$disk" "$tmp/model-b" "(b) a second writer"
stop_nbdkit b
assert_no_crash_in "$tmp/b.log"

# ------------------------------------------------------------------ (d)
disk=$tmp/disk-d
make_random_file "$disk" $((4 * M)) 44
cp "$disk" "$tmp/old-d"
start_nbdkit d --filter="$FILTER" --filter=log file "$disk" logfile="$tmp/d.nbdlog" cache=writeback
py "$tmp/stay.py" "$uri" "$tmp/d.ready" "$tmp/d.go" 100000 &
apid=$!
for i in $(seq 1 100); do [ -e "$tmp/d.ready" ] && break; sleep 0.1; done
[ -e "$tmp/d.ready" ] || fail "(d) client A did not write"
py - "$uri" <<'EOF_PY' || bad "(d) reader B failed"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.pread(100000, 12345) == b"A" * 100000
h.shutdown()
EOF_PY
wait_disconnects "$tmp/d.nbdlog" 1 || bad "(d) reader B did not finish closing"
cmp -s "$disk" "$tmp/old-d" && ok "(d) a reader's close wrote nothing back" ||
    bad "(d) a reader's close wrote the writer's dirty blocks back"
touch "$tmp/d.go"
wait "$apid" || bad "(d) writer A failed"
wait_disconnects "$tmp/d.nbdlog" 2 || bad "(d) writer A did not finish closing"
[ "$(od -An -c -j 12345 -N 1 "$disk" | tr -d ' ')" = A ] && ok "(d) the writer's close wrote its data back" ||
    bad "(d) the writer's data is not in the file after it closed"
stop_nbdkit d

# ------------------------------------------------------------------ (c)
for mode in unsafe writeback; do
    disk=$tmp/disk-c-$mode
    make_random_file "$disk" $((4 * M)) 43
    cp "$disk" "$tmp/model-c-$mode"
    start_nbdkit c-$mode --filter="$FILTER" --filter=log file "$disk" cache=$mode \
        logfile="$tmp/c-$mode.nbdlog"
    py "$tmp/write.py" "$uri" "$tmp/model-c-$mode" 4 65536:65536 $((4 * 65536)):$((3 * 65536)) \
        $((40 * 65536)):65536 >/dev/null || fail "(c) cache=$mode: client failed"
    wait_disconnects "$tmp/c-$mode.nbdlog" 1 || bad "(c) cache=$mode: the connection did not finish closing"
    stop_nbdkit c-$mode
    assert_no_crash_in "$tmp/c-$mode.log"
    msg=$(grep -i 'dirty' "$tmp/c-$mode.log" | grep -E '[0-9]' || true)
    if [ $mode = unsafe ]; then
        if [ -z "$msg" ]; then
            sed 's/^/    stderr: /' "$tmp/c-$mode.log" >&2
            bad "(c) cache=unsafe: nbdkit exited with 5 dirty blocks and said nothing about them"
        elif echo "$msg" | grep -Eqi '(^|[^0-9])(5|327680|320 ?K)([^0-9]|$)'; then
            ok "(c) cache=unsafe: the dirty blocks at exit are reported: $msg"
        else
            bad "(c) cache=unsafe: the report does not give the count (5 blocks, 327680 bytes): $msg"
        fi
    else
        [ -z "$msg" ] && ok "(c) cache=writeback: nothing reported dirty at a clean exit" ||
            bad "(c) cache=writeback: dirty blocks reported at exit although finalize wrote them back: $msg"
        check_file "$disk" "$tmp/model-c-$mode" "(c) cache=writeback"
    fi
done
finish
