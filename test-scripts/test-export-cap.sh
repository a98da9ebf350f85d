#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# One cache per export name must not cost one file descriptor per name
# forever (issue 10): 1,000 connections, each under a DIFFERENT export
# name (memory plugin, which serves one disk under any name;
# cache-min-block-size=4K), each doing write, read-back, zero, trim, cache,
# block status and flush in its own 8 KiB region (700 one after another,
# 300 on 6 threads at once), after a warm-up of 50 connections under one
# name (so the baseline holds one export cache).  Then
#  - nbdkit's open fds must be at most 70 above the baseline (the filter
#    caps the number of export caches it keeps open),
#  - RSS at most 64 MiB above it,
#  - every connection must have read its write back, and a last connection
#    must find every name's flushed write in the plugin (evicting a cache
#    must not lose its data).
# FAILED before export caches were capped at 64 (Filter.swift): then
# every name kept its cache file open, so the fds grew by 1,000.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if timeout 100 "$PY" "$TESTDIR/soak.py" --phases export-names --names 1000 --filter "$FILTER" \
        >"$tmp/out" 2>&1; then
    sed 's/^/    /' "$tmp/out" >&2
    ok "1000 export names: fds bounded, every export's data right"
else
    rc=$?
    sed 's/^/    /' "$tmp/out" >&2
    bad "1000 export names: fds unbounded or data wrong (status $rc)"
fi
finish
