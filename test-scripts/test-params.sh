#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Parameters (SPEC §2): every bad value makes nbdkit exit non-zero at
# start-up with one error line naming the parameter (TMPDIR: the directory);
# where nbdkit's own parser rejects the value, that line carries the
# parser's reason ("swiftcache: cache-max-size=abc: could not parse size
# string (abc)"), not a second line. Good values start and serve; unknown
# keys reach the plugin.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

marker=$tmp/ran

# expect_bad NAME-TO-MENTION ALT-TO-MENTION [env...] -- [nbdkit args...]
expect_bad() {
    local want=$1 alt=$2; shift 2
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    local rc=0
    rm -f "$marker"
    env "${envs[@]}" timeout 20 nbdkit -U - --filter="$FILTER" "$@" \
        --run "touch $marker" >"$tmp/out" 2>&1 || rc=$?
    local what="${envs[*]} $*"
    if [ "$rc" -eq 0 ]; then
        bad "started although it should fail: $what"
    elif [ "$rc" -ge 124 ]; then
        bad "exit status $rc (timeout/crash) for: $what: $(tail -n3 "$tmp/out")"
    elif [ -e "$marker" ]; then
        bad "--run command ran although start-up should fail: $what"
    elif ! grep -qi 'error' "$tmp/out"; then
        bad "no error message for: $what (output: $(cat "$tmp/out"))"
    elif [ "$(grep -ci 'error' "$tmp/out")" -ne 1 ]; then
        bad "more than one error line for: $what: $(cat "$tmp/out")"
    elif [[ $want == cache* ]] && ! grep -qE -- "$want[= ]" "$tmp/out"; then
        bad "error message for '$what' does not name $want: $(cat "$tmp/out")"
    elif ! grep -qF -- "$want" "$tmp/out" && ! grep -qF -- "$alt" "$tmp/out"; then
        bad "error message for '$what' names neither '$want' nor '$alt': $(cat "$tmp/out")"
    else
        ok "rejected: $what  ($(grep -i error "$tmp/out" | head -n1))"
    fi
}

# expect_good [env...] -- [nbdkit args...]: starts, serves a read.
expect_good() {
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    local rc=0
    env "${envs[@]}" timeout 20 nbdkit -U - --filter="$FILTER" "$@" \
        --run 'nbdsh -u "$uri" -c "h.pwrite(b\"a\" * 5000, 70000); assert h.pread(5000, 70000) == b\"a\" * 5000; h.flush()"' \
        >"$tmp/out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        bad "failed (rc=$rc) with good parameters: ${envs[*]} $*: $(tail -n5 "$tmp/out")"
    else
        ok "accepted: ${envs[*]} $*"
    fi
}

M="memory 2M"
# ---- cache=
expect_bad cache bogus -- $M cache=bogus
expect_bad cache WriteBack -- $M cache=WriteBack
# ---- cache-min-block-size=
expect_bad cache-min-block-size '(abc)' -- $M cache-min-block-size=abc
expect_bad cache-min-block-size 5000 -- $M cache-min-block-size=5000
expect_bad cache-min-block-size 2048 -- $M cache-min-block-size=2048
expect_bad cache-min-block-size 0 -- $M cache-min-block-size=0
expect_bad cache-min-block-size 8G -- $M cache-min-block-size=8G
expect_bad cache-min-block-size 4G -- $M cache-min-block-size=4G
# ---- cache-max-size=
expect_bad cache-max-size '(abc)' -- $M cache-max-size=abc
expect_bad cache-max-size 512K -- $M cache-max-size=512K
expect_bad cache-max-size 1048575 -- $M cache-max-size=1048575
# ---- thresholds
expect_bad cache-high-threshold '(-1)' -- $M cache-high-threshold=-1
expect_bad cache-high-threshold '(abc)' -- $M cache-high-threshold=abc
expect_bad cache-high-threshold 0 -- $M cache-high-threshold=0
expect_bad cache-low-threshold 0 -- $M cache-low-threshold=0
expect_bad cache-low-threshold '(x5)' -- $M cache-low-threshold=x5
expect_bad cache-low-threshold cache-high-threshold -- \
    $M cache-max-size=1M cache-low-threshold=90 cache-high-threshold=90
expect_bad cache-low-threshold cache-high-threshold -- \
    $M cache-max-size=1M cache-low-threshold=96
# ---- cache-on-read=
expect_bad cache-on-read '(maybe)' -- $M cache-on-read=maybe
expect_bad cache-on-read '(relative/path)' -- $M cache-on-read=relative/path
# ---- TMPDIR: missing directory, a file, an existing directory nobody can
# create files in (/proc refuses file creation even to root, so this works
# although the tests run as root).
touch "$tmp/afile"
expect_bad /nonexistent TMPDIR TMPDIR=/nonexistent -- $M
expect_bad "$tmp/afile" TMPDIR "TMPDIR=$tmp/afile" -- $M
expect_bad /proc TMPDIR TMPDIR=/proc -- $M

# ---- good values
expect_good -- $M
for mode in writeback writethrough unsafe; do
    expect_good -- $M cache=$mode
done
expect_good -- $M cache-min-block-size=4096
expect_good -- $M cache-min-block-size=4K
expect_good -- $M cache-min-block-size=1M
expect_good -- $M cache-max-size=1M
expect_good -- $M cache-max-size=1G cache-high-threshold=90 cache-low-threshold=10
expect_good -- $M cache-max-size=1048576 cache-high-threshold=200 cache-low-threshold=100
# low >= high is only checked when cache-max-size is set (as the C filter)
expect_good -- $M cache-low-threshold=90 cache-high-threshold=50
for b in true false yes no on off 1 0 TRUE False; do
    expect_good -- $M cache-on-read=$b
done
expect_good -- $M cache-on-read=/nonexistent/path/is/fine
expect_good -- $M cache-on-read="$tmp/afile"
mkdir "$tmp/other"
expect_good "TMPDIR=$tmp/other" -- $M
[ -z "$(ls -A "$tmp/other")" ] || bad "cache file left behind in TMPDIR=$tmp/other"

# ---- unknown keys go to the plugin
n=$(nbdkit_captive --filter="$FILTER" memory size=3M cache=writethrough \
        --run 'nbdsh -u "$uri" -c "print(h.get_size())"') ||
    bad "memory size=3M through the filter failed"
[ "${n:-}" = 3145728 ] && ok "size=3M reached the memory plugin" ||
    bad "size=3M did not reach the memory plugin (export size ${n:-?})"
truncate -s 1M "$tmp/disk"
n=$(nbdkit_captive --filter="$FILTER" file file="$tmp/disk" \
        --run 'nbdsh -u "$uri" -c "print(h.get_size())"') ||
    bad "file file=... through the filter failed"
[ "${n:-}" = 1048576 ] && ok "file= reached the file plugin" ||
    bad "file= did not reach the file plugin (export size ${n:-?})"
rc=0
nbdkit_captive --filter="$FILTER" memory 1M bogus-key=1 --run true >"$tmp/out" 2>&1 || rc=$?
if [ "$rc" -ne 0 ] && grep -q "bogus-key" "$tmp/out"; then
    ok "unknown key reached the plugin (which rejected it)"
else
    bad "unknown key bogus-key=1 was not passed to the memory plugin (rc=$rc): $(cat "$tmp/out")"
fi

finish
