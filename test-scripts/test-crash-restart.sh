#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Crash and restart (issue 10): soak.py --phases crash --quick. Six libnbd
# connections rewrite "slots" (unaligned offsets and sizes, 1 byte to over
# 1 MiB) with new generations, flush now and then, some writes with FUA;
# nbdkit (the filter over the delay filter and the file plugin) is
# SIGKILLed at a random moment 0.4-2.5 s into the load, three times per
# configuration (writeback 4K blocks cache-max-size=2M with FUA writes;
# writeback 1M blocks; writethrough 64K cache-max-size=2M), restarted on
# the same file each time.  After each kill every 4 KiB page of every slot
# must hold the slot's last durable generation or a newer one that was
# sent: durable = acknowledged (writethrough), acknowledged with FUA, or
# acknowledged before a flush was sent that then succeeded, on any
# connection (NBD flush semantics with multi-conn).  A restarted nbdkit
# must serve exactly the file's bytes.
# EXPECTED TO FAIL against nbdkit's C cache filter: with cache-max-size its
# reclaim drops dirty blocks, so flushed writes are not in the file.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if timeout 100 "$PY" "$TESTDIR/soak.py" --phases crash --quick --filter "$FILTER" >"$tmp/out" 2>&1; then
    sed 's/^/    /' "$tmp/out" >&2
    ok "crash and restart: every durable write survived every SIGKILL"
else
    rc=$?
    sed 's/^/    /' "$tmp/out" >&2
    bad "crash and restart: data lost or nbdkit failed (status $rc)"
fi
finish
