#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The short fault soak (issue 10; the full one is `make soak`): soak.py
# --quick runs three configurations of about 6 s each (writeback with 4K
# blocks and cache-max-size=2M on a cache directory squeezed by a ballast
# file for part of the run; writeback with 1M blocks on a 3 MiB tmpfs;
# writethrough with 1M blocks and cache-max-size=4M), each with 12 libnbd
# connections x 12 requests in flight of every kind, the error filter and
# flushfault.c failing ~10% of plugin calls, the delay filter under the
# filter, the backing file grown between two load phases; every read, block
# status and, after a final flush, the backing file checked against the
# model. Then 300 connections doing every command must leave nbdkit's fds
# and threads flat and RSS within 8 MiB.
# Then the soak's self-test: a run that leaves one acknowledged write out
# of its model must fail (exit 1) and name the mismatch, or the soak could
# not see a loss.
# Needs root for the tmpfs (private mount namespace); without it the cache
# directories are plain directories.
# EXPECTED TO FAIL against nbdkit's C cache filter: its block status calls
# unflushed data a hole, its reclaim drops dirty blocks.
set -euo pipefail
. "$(dirname "$0")/mount-namespace.sh"
. "$(dirname "$0")/lib.sh"

if timeout 110 "$PY" "$TESTDIR/soak.py" --quick --filter "$FILTER" >"$tmp/soak.out" 2>&1; then
    sed 's/^/    /' "$tmp/soak.out" >&2
    ok "quick soak: 0 lost"
else
    rc=$?
    sed 's/^/    /' "$tmp/soak.out" >&2
    bad "quick soak failed (status $rc)"
fi

rc=0
timeout 40 "$PY" "$TESTDIR/soak.py" --phases soak --configs writeback-1M-nomax --quick --seconds 3 \
    --drop-write --filter "$FILTER" >"$tmp/self.out" 2>&1 || rc=$?
if [ $rc -eq 1 ] && grep -q 'MISMATCH' "$tmp/self.out" && grep -q 'self-test: left' "$tmp/self.out"; then
    ok "self-test: the soak reports a write left out of its model: $(grep -m1 MISMATCH "$tmp/self.out" |
        cut -c1-150)"
else
    sed 's/^/    /' "$tmp/self.out" >&2
    bad "self-test: a soak whose model lacks one acknowledged write did not fail as it should (status $rc)"
fi
finish
