#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The man page, nbdkit-swiftcache-filter(1), built from
# doc/nbdkit-swiftcache-filter.pod by the Makefile (pod2man):
#  - man --warnings renders it without a single warning;
#  - every parameter the filter's --help lists has an item NAME=... in PARAMETERS;
#  - it has the sections an nbdkit filter page needs, including
#    "DIFFERENCES FROM nbdkit-cache-filter";
#  - its version (footer and VERSION section) is make version's.
# Needs man (man-db) and pod2man (perl): scripts/install-deps installs them.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

command -v man >/dev/null || skip "no man command (install man-db: scripts/install-deps)"
command -v pod2man >/dev/null || skip "no pod2man (install perl: scripts/install-deps)"

# make rebuilds the page only when the POD or the version changed.
page=$REPO/nbdkit-swiftcache-filter.1
make -s -C "$REPO" nbdkit-swiftcache-filter.1 >"$tmp/make.log" 2>&1 ||
    { cat "$tmp/make.log" >&2; fail "make nbdkit-swiftcache-filter.1"; }
[ -s "$page" ] || fail "make did not build $page"

# No warnings at all, from man or from groff under it.
man --warnings -l "$page" >/dev/null 2>"$tmp/warnings" || bad "man -l $page failed"
if [ -s "$tmp/warnings" ]; then
    sed 's/^/    | /' "$tmp/warnings" >&2
    bad "man --warnings printed $(wc -l <"$tmp/warnings") line(s)"
else
    ok "man --warnings: no warnings"
fi

# The rendered text, wide enough that no parameter is split over two lines.
MANWIDTH=200 man -l "$page" >"$tmp/page" 2>/dev/null
[ -s "$tmp/page" ] || fail "man -l rendered nothing"

# Every parameter of --help (the lines of the filter's section that start
# with "cache", up to "=") has an item NAME=... of its own in PARAMETERS.
awk '/^PARAMETERS$/ { on = 1; next } /^[^[:space:]]/ { on = 0 } on' "$tmp/page" >"$tmp/parameters"
nbdkit --filter="$FILTER" null --help >"$tmp/help" 2>&1 ||
    { cat "$tmp/help" >&2; fail "nbdkit --filter=... null --help failed"; }
sed -n '/^filter:/,/^plugin:/p' "$tmp/help" | sed -n 's/^\(cache[^=]*\)=.*/\1/p' >"$tmp/params"
[ -s "$tmp/params" ] || { cat "$tmp/help" >&2; fail "no parameters found in --help"; }
while read -r p; do
    grep -qE -- "^ +$p=" "$tmp/parameters" && ok "PARAMETERS has an item $p=" ||
        bad "PARAMETERS has no item $p="
done <"$tmp/params"

# The section headers, each alone on its line.
for h in NAME SYNOPSIS DESCRIPTION PARAMETERS "DIFFERENCES FROM nbdkit-cache-filter" ENVIRONMENT FILES \
         "DEBUG FLAGS" EXAMPLES VERSION "SEE ALSO"; do
    grep -qx -- "$h" "$tmp/page" && ok "section $h" || bad "no section $h"
done
for w in TMPDIR /var/tmp "-D swiftcache.verbose=1" "-D swiftcache.stats=1" \
         '$filterdir/nbdkit-swiftcache-filter.so' "nbdkit-cache-filter(1)"; do
    grep -qF -- "$w" "$tmp/page" || bad "the page does not mention $w"
done

# The version: make version's, in the footer (pod2man --release) and in
# the VERSION section (the Makefile's @VERSION@).
version=$(make -s -C "$REPO" version)
[ -n "$version" ] || fail "make version printed nothing"
footer=$(grep -v '^[[:space:]]*$' "$tmp/page" | tail -n 1 | tr -s ' ')
case "$footer" in
    "swiftcache $version "*) ok "footer: $footer" ;;
    *) bad "footer '$footer' does not start with swiftcache $version" ;;
esac
grep -qF "This page describes swiftcache $version." "$tmp/page" && ok "VERSION section says $version" ||
    bad "the VERSION section does not say swiftcache $version"
if grep -q '@VERSION@' "$page"; then bad "@VERSION@ left in the page"; fi
finish
