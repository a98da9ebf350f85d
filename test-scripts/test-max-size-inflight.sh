#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# cache-max-size holds under concurrency (SPEC §4 cache-max-size: "the
# allocated size never passes the high threshold by more than one block
# per request in flight"; §8 a full cache directory is not the client's
# problem).  cache-max-size=1M, writeback, file plugin over a sparse
# 512 MiB file; one libnbd client keeps 16 writes of 4 MiB in flight (128
# writes, each to its own range) while a sampler process polls the cache
# file's allocated size (fstat of the file opened through /proc/PID/fd,
# about every millisecond) and records the peak.  The bound is the high
# threshold (95% of 1M) plus one 64K block for each of the 16 requests in
# flight: 0.95M + 1M.  (The filter this test was written against peaked
# near 47 MiB: each request stored its 4 MiB before reclaim ran.)  Every
# write must succeed, read back, and be in the file after a flush.  Then
# the same with the cache directory on an 8 MiB tmpfs (private mount
# namespace; that part is skipped if it cannot be mounted): a filter that
# keeps its limit never fills it, and one that did would have to make
# room instead of failing (the old filter failed 88 of 128 writes with
# ENOSPC there).
set -euo pipefail
. "$(dirname "$0")/mount-namespace.sh"
. "$(dirname "$0")/lib.sh"

SIZE=$((512 * 1024 * 1024))
LIMIT=$((95 * 1048576 / 100 + 16 * 65536))

# sampler: python sampler.py PID DIR STOPFILE READYFILE -> "PEAK SAMPLES";
# creates READYFILE once it holds the cache file open.
cat >"$tmp/sampler.py" <<'EOF_PY'
import os, sys, time
pid, d, stop, ready = sys.argv[1:5]
fds = []
for fd in os.listdir("/proc/%s/fd" % pid):
    try:
        t = os.readlink("/proc/%s/fd/%s" % (pid, fd))
    except OSError:
        continue
    if t.startswith(d + "/") and t.endswith(" (deleted)"):
        fds.append(fd)
if len(fds) != 1:
    print("sampler: expected one deleted cache file, found %d" % len(fds), file=sys.stderr)
    sys.exit(1)
f = os.open("/proc/%s/fd/%s" % (pid, fds[0]), os.O_RDONLY)
open(ready, "w").close()
peak = n = 0
end = time.monotonic() + 100
while not os.path.exists(stop) and time.monotonic() < end:
    peak = max(peak, os.fstat(f).st_blocks * 512)
    n += 1
    time.sleep(0.001)
print(peak, n)
EOF_PY

# client: python t.py URI DISK READYFILE -> 128 aio writes of 4 MiB,
# 16 in flight; checks every write, the read-back and the file after a
# flush.
cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, os, random, struct, time
uri, disk, ready = sys.argv[1:4]
W, NW, INFLIGHT = 4 * 1048576, 128, 16
base = bytearray(random.Random(5).randbytes(W))
def data(i):                 # distinct content for each write and 64K block
    b = bytearray(base)
    for k in range(0, W, 65536):
        b[k:k + 16] = struct.pack("<QQ", i, k)
    return bytes(b)
h = nbd.NBD(); h.connect_uri(uri)
for _ in range(1000):                  # until the sampler has the cache file
    if os.path.exists(ready):
        break
    time.sleep(0.01)
else:
    print("FAIL: the sampler did not start"); sys.exit(1)
pending = {}; failed = {}; nxt = 0; maxq = 0
while nxt < NW or pending:
    while nxt < NW and len(pending) < INFLIGHT:
        ck = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data(nxt))), nxt * W)
        pending[ck] = nxt; nxt += 1
    maxq = max(maxq, len(pending))
    h.poll(-1)
    for ck in list(pending):
        try:
            if not h.aio_command_completed(ck):
                continue
        except nbd.Error as e:
            failed[pending[ck]] = e.errnum
        pending.pop(ck)
fails = []
print("    %d writes of 4 MiB, at most %d in flight, %d failed" % (NW, maxq, len(failed)), file=sys.stderr)
if failed:
    fails.append("%d of %d writes failed (errnos %s)" % (len(failed), NW, sorted(set(failed.values()))))
badr = [i for i in range(NW) if i not in failed and h.pread(W, i * W) != data(i)]
if badr:
    fails.append("%d acknowledged writes read back wrong, e.g. write %s" % (len(badr), badr[:5]))
h.flush()
with open(disk, "rb") as f:
    badf = []
    for i in range(NW):
        f.seek(i * W)
        if i not in failed and f.read(W) != data(i):
            badf.append(i)
if badf:
    fails.append("after the flush %d acknowledged writes are not in the file, e.g. %s" % (len(badf), badf[:5]))
h.shutdown()
for x in fails: print("FAIL:", x)
sys.exit(1 if fails else 0)
EOF_PY

run() {   # run NAME DIR
    local name=$1 dir=$2 disk=$tmp/disk-$1 peak n
    rm -f "$tmp/stop" "$tmp/ready"
    truncate -s $SIZE "$disk"
    TMPDIR=$dir start_nbdkit $name --filter="$FILTER" file "$disk" cache=writeback cache-max-size=1M
    py "$tmp/sampler.py" "$pid" "$dir" "$tmp/stop" "$tmp/ready" >"$tmp/peak-$name" &
    local spid=$!
    if py "$tmp/t.py" "$uri" "$disk" "$tmp/ready"; then
        ok "$name: every write succeeded, read back and reached the file"
    else
        bad "$name: writes failed or data lost"
    fi
    touch "$tmp/stop"
    wait $spid || bad "$name: the sampler failed"
    read -r peak n <"$tmp/peak-$name" || true
    log "$name: peak allocated size of the cache file $peak bytes ($n samples), limit $LIMIT"
    [ -n "$peak" ] && [ "$peak" -le $LIMIT ] && ok "$name: peak $peak <= 0.95M + 16 x 64K" ||
        bad "$name: cache file reached $peak bytes > 0.95M + 16 x 64K = $LIMIT with 16 writes in flight"
    assert_alive $name
    stop_nbdkit $name
    assert_no_crash_in "$tmp/$name.log"
    rm -f "$disk"
}

run disk "$TMPDIR"

if mount_tmpfs "$tmp/small" 8M; then
    run tmpfs8M "$tmp/small"
else
    log "cannot mount an 8 MiB tmpfs in a private mount namespace: that part is skipped"
fi
finish
