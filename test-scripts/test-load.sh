#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The filter loads into nbdkit and serves data: with the null plugin
# (--run true), with the memory plugin (a write/read round trip), and
# with every cache mode.  Passes against the C filter too.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

nbdkit_captive --filter="$FILTER" null --run true ||
    fail "nbdkit --filter=$FILTER null --run true failed"
ok "loads with the null plugin"

nbdkit_captive --filter="$FILTER" null 1M --run 'nbdinfo "$uri"' >"$tmp/info" ||
    fail "nbdinfo through the filter failed"
grep -q 'export-size: 1048576' "$tmp/info" || { cat "$tmp/info"; fail "nbdinfo: wrong size"; }
ok "nbdinfo sees the export size"

for mode in writeback writethrough unsafe; do
    nbdkit_captive --filter="$FILTER" memory 16M cache=$mode --run '
        nbdsh -u "$uri" -c "
data = bytes(range(256)) * 512
h.pwrite(data, 65536 * 3 + 17)
assert h.pread(len(data), 65536 * 3 + 17) == data
assert h.pread(17, 65536 * 3) == bytes(17)
h.flush()
assert h.get_size() == 16 * 1024 * 1024
"' || fail "round trip in cache=$mode failed"
    ok "round trip in cache=$mode"
done

# nbdkit loads filters with RTLD_GLOBAL: the library exports (binds
# globally) only the entry point and the debug flags nbdkit looks up with
# dlsym (swiftcache.syms), and lists nothing else, not even local symbols
# (lld resolves references to them at link time; gold left 12 in .dynsym);
# -D swiftcache.verbose=1 still reaches it.
if filter_is_path; then
    exports=$(nm -D --defined-only "$(filter_so)" | awk '{print $3}' | sort | tr '\n' ' ')
    [ "$exports" = "filter_init swiftcache_debug_stats swiftcache_debug_verbose " ] &&
        ok "exports only filter_init and swiftcache_debug_*" || bad "exports more than it should: $exports"
    # Size: the standard library's regex engine (_StringProcessing, 1.4 MB of the
    # stripped 6.7) comes in with one call such as split(separator: "string").
    nm "$(filter_so)" 2>/dev/null | grep -q StringProcessing && bad "links in _StringProcessing (1.4 MB)" ||
        ok "does not link in _StringProcessing"
    nbdkit_captive -v -D swiftcache.verbose=1 --filter="$FILTER" memory 1M cache-on-read=true \
        --run 'nbdsh -u "$uri" -c "h.pread(512, 0)"' 2>"$tmp/verbose" || fail "nbdkit -D swiftcache.verbose=1 failed"
    grep -q 'swiftcache: cache from the plugin' "$tmp/verbose" && ok "-D swiftcache.verbose=1 is found" ||
        bad "-D swiftcache.verbose=1 did not reach the filter"
fi

# The filter must not leave a cache file behind in TMPDIR (it is unlinked
# at once).
left=$(find "$cachedir" -mindepth 1 -maxdepth 1 -type f | wc -l)
[ "$left" -eq 0 ] || { ls -la "$cachedir"; fail "files left behind in TMPDIR"; }
ok "no cache file left in TMPDIR"
finish
