#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Run the swiftcache end-to-end tests.
#
#   test-scripts/run.sh                 # every test-*.sh
#   test-scripts/run.sh caps zero       # only test-caps.sh, test-zero.sh
#   test-scripts/run.sh test-caps.sh    # same, by file name
#   FILTER=cache test-scripts/run.sh    # against nbdkit's C cache filter
#
# Prints PASS/FAIL/SKIP per test (with the tail of a failing test's
# output) and ends with one line "N passed, M failed[, K skipped]".
# Exit status is non-zero if any test failed.
set -uo pipefail
export PATH=/usr/bin:$PATH

dir=$(cd "$(dirname "$0")" && pwd)
: "${FILTER:=$(cd "$dir/.." && pwd)/libswiftcache.so}"
export FILTER
: "${TEST_TIMEOUT:=150}"

tests=()
if [ $# -eq 0 ]; then
    for t in "$dir"/test-*.sh; do tests+=("$t"); done
else
    for a in "$@"; do
        a=$(basename "$a"); a=${a%.sh}; a=${a#test-}
        t=$dir/test-$a.sh
        if [ ! -f "$t" ]; then
            echo "run.sh: no such test: $t" >&2
            exit 2
        fi
        tests+=("$t")
    done
fi

echo "FILTER=$FILTER"
passed=0 failed=0 skipped=0
failed_names=()
out=$(mktemp "${TMPDIR:-/tmp}/swiftcache-run.XXXXXX")
trap 'rm -f "$out"' EXIT

for t in "${tests[@]}"; do
    name=$(basename "$t" .sh)
    start=$(date +%s)
    timeout -k 10 "$TEST_TIMEOUT" bash "$t" >"$out" 2>&1 </dev/null
    rc=$?
    secs=$(( $(date +%s) - start ))
    case $rc in
        0)  echo "PASS $name (${secs}s)"; passed=$((passed + 1)) ;;
        77) echo "SKIP $name ($(grep -m1 'SKIP' "$out" | sed 's/^[^:]*: SKIP: //'))"
            skipped=$((skipped + 1)) ;;
        *)  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
                echo "FAIL $name (timed out after ${TEST_TIMEOUT}s, rc=$rc)"
            else
                echo "FAIL $name (rc=$rc, ${secs}s)"
            fi
            tail -n 25 "$out" | sed 's/^/    | /'
            failed=$((failed + 1)); failed_names+=("$name") ;;
    esac
done

summary="$passed passed, $failed failed"
[ $skipped -gt 0 ] && summary="$summary, $skipped skipped"
echo "$summary"
[ $failed -eq 0 ]
