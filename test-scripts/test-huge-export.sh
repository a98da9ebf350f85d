#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# An export too large for the cache's metadata (SPEC §6: bad input gets a
# clear error, no crash): `null 1E` with 64K blocks would need 4 TiB of
# block states.  The connection is refused with a message saying why, and
# nbdkit keeps serving (a second attempt gets the same answer, not a dead
# server).  A large but possible export (1T) works.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

start_nbdkit huge --filter="$FILTER" null 1E
for attempt in 1 2; do
    if nbdinfo --size "$uri" >"$tmp/info.$attempt" 2>&1; then
        bad "attempt $attempt: a 1E export was served: $(cat "$tmp/info.$attempt")"
    fi
    assert_alive huge
done
grep -qi "metadata\|memory" "$tmp/huge.log" && ok "refused with a clear message: $(grep -i -m1 metadata "$tmp/huge.log")" ||
    bad "no message saying why the export was refused"
stop_nbdkit huge

start_nbdkit big --filter="$FILTER" null 1T
[ "$(nbdinfo --size "$uri")" = 1099511627776 ] && ok "a 1T export is served" || bad "a 1T export was not served"
stop_nbdkit big
finish
