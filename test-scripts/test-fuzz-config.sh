#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Fuzzed configuration (issue 10; SPEC §2, §8): hundreds of generated values
# for every parameter (cache, cache-min-block-size, cache-max-size, the
# thresholds, cache-on-read, cache-stats) and for TMPDIR, alone and combined.
# Each makes nbdkit either start and serve with the documented meaning
# (checked by a --run probe: a round trip, the cache mode, the preferred
# block size, cache-on-read, where the cache file is, cache-max-size,
# cache-stats) or exit non-zero with exactly one error line naming the
# parameter (TMPDIR: the directory); never a crash or a hang (10 s per run).
# See fuzz_config.py for the oracle and the checks.
#
#   FUZZ_CONFIG_COUNT=N   cases (default 500: the 344 fixed edge cases + random ones)
#   FUZZ_CONFIG_SEED=S    seed (default: random, printed); with
#   FUZZ_CONFIG_ONLY=I,J  rerun just those cases of that seed
#   FUZZ_CONFIG_JOBS=J    nbdkit runs at once (default: cores + 1)
#
# The probe only uses synchronous commands, so nothing is in flight when it
# disconnects (nbdkit 1.32.5 aborts on a disconnect with requests in flight).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

count=${FUZZ_CONFIG_COUNT:-500}
seed=${FUZZ_CONFIG_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
log "seed $seed (rerun with FUZZ_CONFIG_SEED=$seed)"
rc=0
# Bounded: 10 s per case at worst; the whole run gets 140 s by default.
timeout -k 5 "${FUZZ_CONFIG_TIMEOUT:-140}" "$PY" "$TESTDIR/fuzz_config.py" run --filter "$FILTER" \
    --work "$tmp/fuzz" --seed "$seed" --count "$count" --jobs "${FUZZ_CONFIG_JOBS:-0}" \
    --only "${FUZZ_CONFIG_ONLY:-}" >&2 || rc=$?
case $rc in
    0) ok "every configuration started with its meaning or was rejected with one error line" ;;
    124|137) bad "fuzz_config.py timed out (seed $seed)" ;;
    *) bad "fuzz_config.py found failures (rc=$rc, seed $seed)" ;;
esac
finish
