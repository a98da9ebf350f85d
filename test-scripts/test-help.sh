#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# swiftcache help text (SPEC §1: "nbdkit --filter=... null --help prints
# its parameters").  EXPECTED TO FAIL against the C cache filter: its
# help text does not mention cache-min-block-size.
#
# Every parameter must appear in the filter's own section of --help
# (between the "filter:" header and the "plugin:" header).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

nbdkit --filter="$FILTER" null --help >"$tmp/help" 2>&1 ||
    { cat "$tmp/help" >&2; fail "nbdkit --filter=... null --help failed"; }
sed -n '/^filter:/,/^plugin:/p' "$tmp/help" >"$tmp/section"
[ -s "$tmp/section" ] || { cat "$tmp/help" >&2; fail "no filter section in --help output"; }
sed 's/^/    | /' "$tmp/section" >&2

for p in cache cache-min-block-size cache-max-size cache-high-threshold \
         cache-low-threshold cache-on-read cache-stats; do
    if grep -Eq "(^|[^a-z-])$p=" "$tmp/section"; then
        ok "help mentions $p="
    else
        bad "help text does not mention $p="
    fi
done
# What is always on beyond the C filter (SPEC §8), one line each.
tr '\n' ' ' <"$tmp/section" | tr -s ' ' >"$tmp/flat"
for w in "known-zero blocks" "one cache per export" "when a connection closes" "full cache directory" \
         "TMPDIR" "-D swiftcache.verbose=1" "-D swiftcache.stats=1" "built for nbdkit" "nbdkit-swiftcache-filter(1)"; do
    grep -qF -- "$w" "$tmp/flat" && ok "help mentions $w" || bad "help text does not mention $w"
done
# nbdkit's layout: each parameter starts a line, its text starts in column 27,
# in the C cache filter's order (cache, cache-on-read, cache-max-size, the thresholds), ours after.
grep -oE '^cache[a-z-]*=' "$tmp/section" | tr -d = | tr '\n' ' ' >"$tmp/order"
want="cache cache-on-read cache-max-size cache-high-threshold cache-low-threshold cache-min-block-size cache-stats "
[ "$(cat "$tmp/order")" = "$want" ] && ok "parameters in the C filter's order" ||
    bad "parameter order: $(cat "$tmp/order"), want $want"
awk 'length($0) > 26 && /^cache/ && substr($0, 27, 1) == " " { exit 1 }' "$tmp/section" &&
    ok "descriptions start in column 27" || bad "a description does not start in column 27"
# The three modes and the cache-on-read forms.
for w in writeback writethrough unsafe; do
    grep -q "$w" "$tmp/section" || bad "help text does not mention mode $w"
done
finish
