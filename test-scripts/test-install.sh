#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# make install / make uninstall into a scratch DESTDIR: the filter lands
# in nbdkit's filter directory (under DESTDIR) as
# nbdkit-swiftcache-filter.so, stripped (no .symtab, a smaller file),
# exporting the same three symbols, and loads into nbdkit and serves; the
# man page lands in PREFIX/share/man/man1 (mode 0644) and man renders it;
# make uninstall (same DESTDIR and PREFIX) removes both.  Only for a built
# filter (FILTER is a path).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

filter_is_path || skip "FILTER=$FILTER is an installed filter, not a build"
[ "$(realpath "$FILTER")" = "$REPO/libswiftcache.so" ] || skip "FILTER is not this tree's build"
filterdir=$(nbdkit --dump-config | sed -n 's/^filterdir=//p')
root=$tmp/root
make -s -C "$REPO" install DESTDIR="$root" PREFIX=/usr >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log"; fail "make install"; }
so=$root$filterdir/nbdkit-swiftcache-filter.so
[ -f "$so" ] || fail "make install did not put the filter at $so"
ok "installed at DESTDIR$filterdir/nbdkit-swiftcache-filter.so"
if readelf -S "$so" | grep -q '\.symtab'; then bad "the installed filter is not stripped"; else ok "stripped"; fi
[ "$(stat -c %s "$so")" -lt "$(stat -c %s "$FILTER")" ] && ok "smaller than the build ($(stat -c %s "$so") bytes)" ||
    bad "the installed filter is not smaller than the build"
exports=$(nm -D --defined-only "$so" | awk '{print $3}' | sort | tr '\n' ' ')
[ "$exports" = "filter_init swiftcache_debug_stats swiftcache_debug_verbose " ] && ok "exports: $exports" ||
    bad "the installed filter exports $exports"
page=$root/usr/share/man/man1/nbdkit-swiftcache-filter.1
if [ -f "$page" ]; then
    ok "man page installed at DESTDIR/usr/share/man/man1/nbdkit-swiftcache-filter.1"
    [ "$(stat -c %a "$page")" = 644 ] && ok "man page mode 0644" || bad "man page mode $(stat -c %a "$page")"
    if command -v man >/dev/null; then
        man -l "$page" >"$tmp/page" 2>"$tmp/man.err" && grep -q '^NAME$' "$tmp/page" &&
            grep -q 'nbdkit-swiftcache-filter - ' "$tmp/page" && ok "man -l renders it" ||
            { cat "$tmp/man.err" >&2; bad "man -l does not render the installed page"; }
    else
        log "no man command: the installed page is not rendered (install man-db)"
    fi
else
    bad "make install did not put the man page at $page"
fi
nbdkit_captive --filter="$so" memory 1M --run 'nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 512, 0); assert h.pread(512, 0) == b\"x\" * 512"' ||
    bad "the installed filter does not serve"
make -s -C "$REPO" uninstall DESTDIR="$root" PREFIX=/usr >"$tmp/uninstall.log" 2>&1 ||
    { cat "$tmp/uninstall.log"; fail "make uninstall"; }
[ ! -e "$so" ] && ok "make uninstall removed the filter" || bad "make uninstall left $so"
[ ! -e "$page" ] && ok "make uninstall removed the man page" || bad "make uninstall left $page"
finish
