#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# swiftcache-only identity (SPEC §1).  EXPECTED TO FAIL against the C
# cache filter (FILTER=cache): its name is "cache", it does not export
# swiftcache_debug_verbose and has no swiftcache.verbose debug flag.
#
#  - nbdkit registers the filter under the name "swiftcache" (-v output,
#    --help header);
#  - the .so exports filter_init (function) and swiftcache_debug_verbose
#    (a data object, found by nbdkit with dlsym for -D swiftcache.verbose);
#  - it is self-contained: ldd/readelf show only system libraries, nothing
#    from a Swift toolchain;
#  - -D swiftcache.verbose=1 adds per-block debug messages that mention
#    swiftcache.
# Every sub-check runs; the test fails if any failed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

so=$(filter_so)
[ -f "$so" ] || fail "filter shared object $so not found"
log "filter .so: $so"

# ---- name as registered by nbdkit
nbdkit_captive -v --filter="$FILTER" null --run true >"$tmp/v.log" 2>&1 ||
    { tail "$tmp/v.log"; fail "nbdkit -v null --run true failed"; }
grep -E 'registered filter .*\(name [^)]*\)' "$tmp/v.log" >&2 || true
if grep -Eq 'registered filter .*\(name swiftcache\)' "$tmp/v.log"; then
    ok "registered as swiftcache"
else
    bad "nbdkit -v does not show the filter registered as '(name swiftcache)'"
fi

nbdkit --filter="$FILTER" null --help >"$tmp/help" 2>&1 || true
if grep -Eq '^filter: swiftcache( |$)' "$tmp/help"; then
    ok "--help header names swiftcache"
else
    bad "--help does not show 'filter: swiftcache' (got: $(grep '^filter:' "$tmp/help" || echo nothing))"
fi

# ---- exported symbols
nm -D --defined-only "$so" >"$tmp/nm" || fail "nm -D failed on $so"
if grep -Eq ' T filter_init$' "$tmp/nm"; then
    ok "exports function filter_init"
else
    bad "filter_init is not an exported function"
fi
if grep -Eq ' [BDGSbdgs] swiftcache_debug_verbose$' "$tmp/nm" &&
   readelf --dyn-syms -W "$so" |
     awk '$8 == "swiftcache_debug_verbose" && $4 == "OBJECT" && $3 == 4 {f=1} END {exit !f}'; then
    ok "exports int swiftcache_debug_verbose"
else
    bad "swiftcache_debug_verbose is not an exported 4-byte data OBJECT (int)"
fi

# ---- self-contained: only system libraries
ldd "$so" >"$tmp/ldd" 2>&1 || fail "ldd failed: $(cat "$tmp/ldd")"
sed 's/^/    ldd: /' "$tmp/ldd" >&2
# Allowed: libc, libm, libstdc++, libgcc_s, the dynamic loader, the vdso.
# glibc's compatibility stubs (libpthread, libdl, librt, libutil) are part
# of libc on Debian 12 and are tolerated too.
others=$(awk '{print $1}' "$tmp/ldd" | grep -Ev '^(linux-vdso\.so\.1|/lib64/ld-linux-x86-64\.so\.2|ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libstdc\+\+\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libutil\.so\.1)$' || true)
if grep -q 'not found' "$tmp/ldd"; then
    bad "ldd: unresolved library"
elif [ -n "$others" ]; then
    bad "ldd lists non-system libraries: $(echo $others)"
elif readelf -d -W "$so" | grep -Ei 'swift|dispatch|Foundation|icu|BlocksRuntime' >&2; then
    bad "dynamic section (NEEDED/RUNPATH) mentions Swift runtime libraries or paths"
else
    ok "links only system libraries"
fi

# ---- -D swiftcache.verbose=1 gives per-block debug messages
# One read and one write of 32 blocks each (64K default block size),
# then count debug lines mentioning swiftcache with and without the flag.
count_lines() {
    nbdkit_captive -v "$@" --filter="$FILTER" memory 16M cache-on-read=true --run '
        nbdsh -u "$uri" -c "
h.pread(2 * 1024 * 1024, 0)
h.pwrite(bytes(2 * 1024 * 1024), 4 * 1024 * 1024)
h.flush()
"' >"$tmp/dbg.log" 2>&1 || { tail "$tmp/dbg.log" >&2; fail "nbdkit -v run failed"; }
    grep -c swiftcache "$tmp/dbg.log" || true
}
without=$(count_lines)
with=$(count_lines -D swiftcache.verbose=1)
log "debug lines mentioning swiftcache: without flag $without, with flag $with"
if [ "$with" -ge $((without + 64)) ]; then
    ok "swiftcache.verbose adds per-block debug output"
else
    bad "-D swiftcache.verbose=1 did not add per-block debug lines mentioning swiftcache (without: $without, with: $with; expected >= $((without + 64)))"
fi

finish
