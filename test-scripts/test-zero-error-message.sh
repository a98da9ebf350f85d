#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A failed plugin zero is reported as a zero (SPEC §6: a failed plugin call
# returns -1 with a message through nbdkit_error; the message must name the
# call that failed). The error filter under swiftcache fails every plugin
# zero with ENOSPC; a client zero request in cache=writethrough, and a FUA
# zero in cache=writeback (both go through to the plugin at once), must
# fail with ENOSPC and nbdkit's log must say "plugin zero", not "plugin
# write" (there was no write).
# FOUND BY THE SOAK (issue 10), fixed (Payload.request): the log said "swiftcache:
# plugin write of 70000 bytes at 1000: No space left on device" right after
# the error filter's "injecting ENOSPC error into zero".
set -euo pipefail
. "$(dirname "$0")/lib.sh"

cat >"$tmp/z.py" <<'EOF_PY'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
flags = nbd.CMD_FLAG_FUA if sys.argv[2] == "fua" else 0
try:
    h.zero(70000, 1000, flags)
    print("zero succeeded")
except nbd.Error as e:
    print("zero failed:", e.errno)
h.shutdown()
EOF_PY

truncate -s $((4 * 1024 * 1024)) "$tmp/disk"
for c in "writethrough plain" "writeback fua"; do
    set -- $c
    mode=$1 how=$2
    out=$(nbdkit_captive --filter="$FILTER" --filter=error file "$tmp/disk" cache=$mode \
        error-zero-rate=100% error-zero=ENOSPC --run "$PY $tmp/z.py \$uri $how" 2>"$tmp/$mode.log") ||
        fail "$mode: nbdkit or the client failed: $(cat "$tmp/$mode.log")"
    [ "$out" = "zero failed: ENOSPC" ] || bad "cache=$mode, $how zero: client saw '$out', want ENOSPC"
    msg=$(grep 'swiftcache:' "$tmp/$mode.log" | head -n1 || true)
    case $msg in
        *"plugin zero"*) ok "cache=$mode, $how zero: $msg" ;;
        *) bad "cache=$mode, $how zero: the message names another call: '$msg'" ;;
    esac
done
finish
