#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# `make run` (the README's first command) serves a 1G memory disk through the
# filter, and `make run ARGS='...'` passes the parameters to the filter: here
# cache-stats=FILE, which only the filter understands, must produce FILE.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
filter_is_path || skip "make run serves the built library, not FILTER=$FILTER"

socket=$TMPDIR/swiftcache-run.sock   # where scripts/serve puts it
setsid make -s -C "$REPO" run ARGS="cache-stats=$tmp/stats cache-on-read=true" >"$tmp/out" 2>&1 &
pid=$!
on_exit "kill -INT -- -$pid 2>/dev/null; sleep 1; kill -KILL -- -$pid 2>/dev/null"
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { cat "$tmp/out" >&2; fail "make run did not serve at $socket"; }

uri="nbd+unix:///?socket=$socket"
size=$(timeout 10 nbdinfo --size "$uri") || fail "nbdinfo failed against make run"
[ "$size" -eq $((1 << 30)) ] && ok "make run serves a 1G disk" || bad "make run serves $size bytes, not 1G"
grep -qF "$uri" "$tmp/out" && ok "make run prints the URI" || bad "make run does not print $uri: $(cat "$tmp/out")"
for _ in $(seq 50); do [ -s "$tmp/stats" ] && break; sleep 0.1; done
grep -q "swiftcache statistics" "$tmp/stats" 2>/dev/null && ok "ARGS reached the filter (cache-stats file written)" ||
    bad "ARGS did not reach the filter: no cache-stats file"
finish
