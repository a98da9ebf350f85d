#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# make deb, in a scratch copy of the tree (what git would commit, uncommitted
# changes included; the tree itself is left as it was): lintian finds nothing,
# the package depends on exactly the installed nbdkit and holds the filter
# (and the man page, once doc/nbdkit-swiftcache-filter.pod exists) at
# Debian's paths. Then dpkg -i: --filter=swiftcache serves by name, the
# installed filter exports only filter_init and swiftcache_debug_*, man finds
# the page; dpkg -r removes the filter again (also when the test fails).
# Needs root (dpkg -i); the machine's nbdkit filter directory is touched only
# through dpkg.
set -euo pipefail
# The filter under test is the one in the package, not the tree's build.
given_filter=${FILTER:-}
FILTER=swiftcache
. "$(dirname "$0")/lib.sh"

case "$given_filter" in
    ""|"$REPO/libswiftcache.so") ;;
    *) [ "$(realpath -m -- "$given_filter")" = "$REPO/libswiftcache.so" ] ||
           skip "FILTER=$given_filter is not this tree's build" ;;
esac
[ "$(id -u)" -eq 0 ] || skip "dpkg -i needs root"
command -v swift >/dev/null || [ -n "${SWIFT:-}" ] ||
    skip "no swift on PATH to build the package (or set SWIFT=/path/to/swift/usr/bin)"
filterdir=$(nbdkit --dump-config | sed -n 's/^filterdir=//p')
so=$filterdir/nbdkit-swiftcache-filter.so
# Never overwrite or remove what someone installed on this machine.
if dpkg-query -W -f='${Status}' swiftcache 2>/dev/null | grep -q 'ok installed'; then
    skip "a swiftcache package is installed here (dpkg -r swiftcache first)"
fi
[ ! -e "$so" ] || skip "$so exists (make install? make uninstall first)"

version=$(make -s -C "$REPO" --no-print-directory version)
nbdkit_version=$(dpkg-query -W -f='${Version}' nbdkit)
arch=$(dpkg --print-architecture)
has_man=no
[ -f "$REPO/doc/nbdkit-swiftcache-filter.pod" ] && has_man=yes

# ---------------------------------------------------------------- build
ingit=no
git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1 && ingit=yes
[ $ingit = no ] || git -C "$REPO" status --porcelain --ignored >"$tmp/status.before"
# dpkg-buildpackage writes to the parent directory: $tmp/build, ours.
src=$tmp/build/swiftcache
mkdir -p "$src"
if [ $ingit = yes ]; then
    # Tracked and untracked files, not the ignored ones (.build, *.deb, ...).
    (cd "$REPO" && git ls-files -z -co --exclude-standard |
        tar -c --null --ignore-failed-read -T - 2>/dev/null) | tar -x -C "$src"
else
    tar -C "$REPO" -c --exclude='./.build*' --exclude=./libswiftcache.so --exclude='./swiftcache_*' \
        --exclude=./debian/swiftcache --exclude=./debian/.debhelper . | tar -x -C "$src"
fi
start=$(date +%s)
make --no-print-directory -C "$src" deb >"$tmp/deb.log" 2>&1 || { tail -n 40 "$tmp/deb.log"; fail "make deb failed"; }
ok "make deb ($(( $(date +%s) - start )) s)"
deb=$src/swiftcache_${version}_$arch.deb
[ -f "$deb" ] || { ls -la "$src"; fail "make deb did not leave swiftcache_${version}_$arch.deb"; }
ok "$(basename "$deb"), $(stat -c %s "$deb") bytes"
for f in "${deb%.deb}.buildinfo" "${deb%.deb}.changes"; do
    [ -f "$f" ] && ok "$(basename "$f") moved beside it" || bad "make deb did not leave $(basename "$f")"
done
left=$(ls -A "$tmp/build" | grep -vx swiftcache || true)
[ -z "$left" ] && ok "nothing left in the parent directory" || bad "make deb left in ..: $left"

# make deb ran lintian last; it printed its findings after its command line.
sed -n '/^lintian --fail-on/,$p' "$tmp/deb.log" | sed 1d |
    grep -v '^running with root privileges is not recommended!$' >"$tmp/lintian" || true
if grep -q '^[EW]: ' "$tmp/lintian"; then
    cat "$tmp/lintian" >&2; bad "lintian: errors or warnings"
elif [ -s "$tmp/lintian" ]; then
    sed 's/^/    /' "$tmp/lintian" >&2; ok "lintian: no error or warning (above: what it said)"
else
    ok "lintian said nothing"
fi

# ---------------------------------------------------------------- contents
[ "$(dpkg-deb -f "$deb" Version)" = "$version" ] && ok "Version: $version" ||
    bad "Version: $(dpkg-deb -f "$deb" Version), make version says $version"
depends=$(dpkg-deb -f "$deb" Depends)
case ", $depends," in
    *", nbdkit (= $nbdkit_version),"*) ok "Depends: $depends" ;;
    *) bad "Depends: $depends does not name nbdkit (= $nbdkit_version)" ;;
esac
dpkg-deb -c "$deb" | awk '{print $NF}' >"$tmp/files"
grep -qx ".$so" "$tmp/files" && ok "holds .$so" || { cat "$tmp/files" >&2; bad "no .$so in the package"; }
man=./usr/share/man/man1/nbdkit-swiftcache-filter.1.gz
if [ $has_man = yes ]; then
    grep -qx "$man" "$tmp/files" && ok "holds $man" || { cat "$tmp/files" >&2; bad "no $man in the package"; }
else
    ok "man page not checked: no doc/nbdkit-swiftcache-filter.pod yet"
fi

# ---------------------------------------------------------------- installed
on_exit 'dpkg -r swiftcache >/dev/null 2>&1'
dpkg -i "$deb" >"$tmp/dpkg-i.log" 2>&1 || { cat "$tmp/dpkg-i.log"; fail "dpkg -i failed"; }
ok "dpkg -i"
[ -f "$so" ] || fail "dpkg -i did not put the filter at $so"
nbdkit_captive --filter=swiftcache memory 1G --run 'nbdinfo "$uri"' >"$tmp/info" 2>&1 ||
    { cat "$tmp/info"; fail "nbdkit --filter=swiftcache memory 1G --run nbdinfo failed"; }
# block_size_preferred is the filter's cache block: the memory plugin alone has none.
if grep -q 'export-size: 1073741824' "$tmp/info" && grep -q 'block_size_preferred: 65536' "$tmp/info"; then
    ok "--filter=swiftcache serves: nbdinfo sees 1G with 64K preferred blocks"
else
    cat "$tmp/info" >&2; bad "nbdinfo through --filter=swiftcache: unexpected output"
fi
nbdkit --filter=swiftcache null --help >"$tmp/help" 2>&1 || true
grep -qF "filter: swiftcache (swiftcache $version," "$tmp/help" && grep -qxF "($so)" "$tmp/help" &&
    ok "--help names swiftcache $version at $so" || { cat "$tmp/help" >&2; bad "--help: not the installed $version"; }
exports=$(nm -D --defined-only --extern-only "$so" | awk '{print $3}' | sort | tr '\n' ' ')
[ "$exports" = "filter_init swiftcache_debug_stats swiftcache_debug_verbose " ] &&
    ok "exports: $exports" || bad "the installed filter exports $exports"
if [ $has_man = yes ]; then
    page=$(man -w nbdkit-swiftcache-filter 2>&1) && ok "man -w: $page" || bad "man -w nbdkit-swiftcache-filter: $page"
fi

dpkg -r swiftcache >"$tmp/dpkg-r.log" 2>&1 || { cat "$tmp/dpkg-r.log"; fail "dpkg -r failed"; }
[ ! -e "$so" ] && ok "dpkg -r removed $so" || bad "dpkg -r left $so"
if dpkg-query -W -f='${Status}' swiftcache 2>/dev/null | grep -q 'ok installed'; then
    bad "swiftcache still installed after dpkg -r"
fi

if [ $ingit = yes ]; then
    git -C "$REPO" status --porcelain --ignored >"$tmp/status.after"
    cmp -s "$tmp/status.before" "$tmp/status.after" && ok "the tree is as it was" ||
        { diff "$tmp/status.before" "$tmp/status.after" >&2; bad "the tree changed"; }
fi
finish
