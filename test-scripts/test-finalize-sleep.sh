#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# No stranded writes (SPEC §8) when the layers under the filter sleep with
# nbdkit_nanosleep: the delay filter (delay-write=5ms) and the rate filter
# (rate=256K) between swiftcache and the file plugin. A client writes 300000
# bytes at an unaligned offset (cache=writeback) and disconnects without a
# flush; once nbdkit is back to one thread (the connection's threads, and so
# our .finalize, have ended), the file must hold the bytes; at SIGTERM nbdkit
# must not report dirty blocks lost. (The log filter under ours shows what
# the write-back sent; it cannot mark the end of .finalize here: when our
# .finalize fails, nbdkit skips the inner layers' .finalize.)
# FOUND BY THE SOAK (issue 10), fixed (Callbacks.finalize works on a thread of its own): .finalize wrote back on the
# connection's own thread after the client has gone, and nbdkit 1.32's
# nbdkit_nanosleep aborts every sleep on such a thread ("aborting sleep
# because of connection close or error", ESHUTDOWN), so the write-back fails
# and the data is lost at exit ("exiting with N dirty blocks ... they are
# lost"). A sleep on a thread of the filter's own has no connection and is
# not aborted.
# EXPECTED TO FAIL against nbdkit's C cache filter too (no write-back at close).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

M=$((1024 * 1024))
cat >"$tmp/w.py" <<'EOF_PY'
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1])
h.pwrite(b"\xa5" * 300000, 12345)
h.shutdown()          # no flush; nothing in flight
EOF_PY

for layer in "delay delay-write=5ms" "rate rate=256K"; do
    set -- $layer
    name=$1
    disk=$tmp/disk-$name
    truncate -s $((4 * M)) "$disk"
    start_nbdkit $name --filter="$FILTER" --filter=log --filter=$name file "$disk" "$2" cache=writeback \
        logfile="$tmp/$name.nbdlog"
    py "$tmp/w.py" "$tmp/$name.sock" || fail "$name: client failed"
    for i in $(seq 1 200); do
        [ "$(awk '/^Threads:/ {print $2}' /proc/"$pid"/status)" = 1 ] && break
        sleep 0.1
    done
    [ "$(awk '/^Threads:/ {print $2}' /proc/"$pid"/status)" = 1 ] ||
        bad "$name: the connection's threads did not end in 20 s"
    grep -E ' (Write|Zero) ' "$tmp/$name.nbdlog" | cut -d' ' -f3- | sed 's/^/    plugin: /' >&2 || true
    if [ "$(od -v -An -tx1 -j 12345 -N 300000 "$disk" | tr -s ' \n' '\n' | grep -v '^$' | sort -u)" = a5 ]; then
        ok "$name filter under the cache: the write reached the file when the client disconnected"
    else
        bad "$name filter under the cache: after a disconnect without flush the file lacks the write"
    fi
    stop_nbdkit $name
    if grep -E 'dirty blocks.*lost|aborting sleep' "$tmp/$name.log" >&2; then
        bad "$name filter under the cache: write-back at close failed (above), data lost at exit"
    fi
done
finish
