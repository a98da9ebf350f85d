#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Fuzzed NBD requests (issue 10): a libnbd client with strict mode off sends
# seeded random pread, pread_structured, pwrite, zero, trim, cache,
# block_status and flush requests (odd and out-of-range offsets and lengths,
# every flag combination and unknown flag bits), synchronously and with up to
# 64 in flight, to exports of 1, 4095, 65535, 65537, 130000 bytes and 1 TiB
# (memory and file plugins) in every cache mode, with cache-max-size=1M or
# cache-on-read=true. Replies must be what nbdkit 1.32 and the NBD protocol
# say, data must match a model of the export (reads, block status, a read-back
# on a new connection, the file after exit), nbdkit must stay alive and exit
# cleanly. See fuzz_requests.py for the oracle.
#
#   FUZZ_REQUESTS_OPS=N        requests per configuration (default 1000)
#   FUZZ_REQUESTS_CONFIGS=all  all 105 configurations (default: 23, see fuzz_requests.py),
#                              or a comma-separated list (mem1T-writeback-max1M,...)
#   FUZZ_REQUESTS_SEED=S       seed (default: random, printed)
#   FUZZ_REQUESTS_TIMEOUT=S    time limit of the whole run (default 140 s)
#
# nbdkit 1.32.5 aborts when a client disconnects with requests in flight (with
# or without a filter): the client drains every in-flight command before
# h.shutdown(), also after a failure. It also aborts (backend_zero asserts
# can_fast_zero) on a FAST_ZERO zero it did not advertise: the client does not
# send FAST_ZERO where can_fast_zero is false.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

seed=${FUZZ_REQUESTS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
log "seed $seed (rerun with FUZZ_REQUESTS_SEED=$seed)"
rc=0
timeout -k 5 "${FUZZ_REQUESTS_TIMEOUT:-140}" "$PY" "$TESTDIR/fuzz_requests.py" run --filter "$FILTER" \
    --work "$tmp/fuzz" --seed "$seed" --ops "${FUZZ_REQUESTS_OPS:-1000}" \
    --configs "${FUZZ_REQUESTS_CONFIGS:-default}" >&2 || rc=$?
case $rc in
    0) ok "every reply, every byte read and every extent as the model says; nbdkit alive and exited cleanly" ;;
    124|137) bad "fuzz_requests.py timed out (seed $seed)" ;;
    *) bad "fuzz_requests.py found failures (rc=$rc, seed $seed)" ;;
esac
finish
