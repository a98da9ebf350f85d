#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# make install / make uninstall into a scratch DESTDIR: the filter lands
# in nbdkit's filter directory (under DESTDIR) as
# nbdkit-swiftcache-filter.so, stripped (no .symtab, a smaller file),
# exporting the same three symbols, and loads into nbdkit and serves;
# make uninstall removes it.  Only for a built filter (FILTER is a path).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

filter_is_path || skip "FILTER=$FILTER is an installed filter, not a build"
[ "$(realpath "$FILTER")" = "$REPO/libswiftcache.so" ] || skip "FILTER is not this tree's build"
filterdir=$(nbdkit --dump-config | sed -n 's/^filterdir=//p')
root=$tmp/root
make -s -C "$REPO" install DESTDIR="$root" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "make install"; }
so=$root$filterdir/nbdkit-swiftcache-filter.so
[ -f "$so" ] || fail "make install did not put the filter at $so"
ok "installed at DESTDIR$filterdir/nbdkit-swiftcache-filter.so"
if readelf -S "$so" | grep -q '\.symtab'; then bad "the installed filter is not stripped"; else ok "stripped"; fi
[ "$(stat -c %s "$so")" -lt "$(stat -c %s "$FILTER")" ] && ok "smaller than the build ($(stat -c %s "$so") bytes)" ||
    bad "the installed filter is not smaller than the build"
exports=$(nm -D --defined-only "$so" | awk '{print $3}' | sort | tr '\n' ' ')
[ "$exports" = "filter_init swiftcache_debug_stats swiftcache_debug_verbose " ] && ok "exports: $exports" ||
    bad "the installed filter exports $exports"
nbdkit_captive --filter="$so" memory 1M --run 'nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 512, 0); assert h.pread(512, 0) == b\"x\" * 512"' ||
    bad "the installed filter does not serve"
make -s -C "$REPO" uninstall DESTDIR="$root" >"$tmp/uninstall.log" 2>&1 || { cat "$tmp/uninstall.log"; fail "make uninstall"; }
[ ! -e "$so" ] && ok "make uninstall removed it" || bad "make uninstall left $so"
finish
