#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The cache file (SPEC §4): one file shared by every connection, created
# in $TMPDIR (default /var/tmp) with O_CLOEXEC, unlinked at once, sparse,
# sized to the export rounded up to the block size.  Inspected through
# /proc/PID/fd and /proc/PID/fdinfo of a running nbdkit while two
# connections are open.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# deleted_fds PID DIR -> the fd links of deleted files directly in DIR
deleted_fds() {
    local fd t
    for fd in /proc/"$1"/fd/*; do
        t=$(readlink "$fd" 2>/dev/null) || continue
        case "$t" in "$2"/*" (deleted)") echo "$fd" ;; esac
    done
}

# A client that opens two connections, writes a little through each and
# keeps them open until $tmp/done appears.
cat >"$tmp/client.py" <<'EOF_PY'
import nbd, sys, os, time
uri, ready, done = sys.argv[1:4]
h1 = nbd.NBD(); h1.connect_uri(uri)
h2 = nbd.NBD(); h2.connect_uri(uri)
h1.pwrite(b"x" * 10, 0)
h2.pwrite(b"y" * 10, 500000)
open(ready, "w").close()
for _ in range(400):
    if os.path.exists(done): break
    time.sleep(0.05)
h1.shutdown(); h2.shutdown()
EOF_PY

# inspect NAME DIR EXPORTSIZE BLOCKSIZE
inspect() {
    local name=$1 dir=$2 esize=$3 bs=$4
    rm -f "$tmp/ready" "$tmp/done"
    py "$tmp/client.py" "$uri" "$tmp/ready" "$tmp/done" &
    local cpid=$!
    for _ in $(seq 1 200); do [ -e "$tmp/ready" ] && break; sleep 0.05; done
    [ -e "$tmp/ready" ] || fail "$name: client did not connect"
    local fds n fd flags size alloc want
    fds=$(deleted_fds "$pid" "$dir")
    n=$(echo "$fds" | grep -c . || true)
    if [ "$n" -ne 1 ]; then
        ls -l /proc/"$pid"/fd/ >&2
        bad "$name: want exactly one deleted cache file in $dir with 2 connections open, found $n"
    else
        fd=$fds
        flags=$(sed -n 's/^flags:[[:space:]]*//p' /proc/"$pid"/fdinfo/"${fd##*/}")
        if (( (8#$flags & 8#2000000) != 0 )); then
            ok "$name: cache file opened with O_CLOEXEC (flags $flags)"
        else
            bad "$name: cache file not O_CLOEXEC (fdinfo flags $flags)"
        fi
        size=$(stat -L -c %s "$fd")
        want=$(( (esize + bs - 1) / bs * bs ))
        [ "$size" -eq "$want" ] && ok "$name: cache file size $size = export size rounded up to $bs" ||
            bad "$name: cache file size $size, want $want (export $esize rounded up to $bs)"
        alloc=$(( $(stat -L -c %b "$fd") * 512 ))
        [ "$alloc" -le $((2 * bs + 65536)) ] && ok "$name: sparse ($alloc bytes allocated for 2 blocks)" ||
            bad "$name: cache file not sparse: $alloc bytes allocated after writing 2 blocks"
    fi
    # no visible (non-deleted) file left in the directory by the filter
    touch "$tmp/done"
    wait $cpid || bad "$name: client failed"
}

start_nbdkit a --filter="$FILTER" memory 1000000
inspect "TMPDIR=$TMPDIR" "$TMPDIR" 1000000 65536
[ -z "$(ls -A "$TMPDIR")" ] || bad "files visible in TMPDIR: $(ls -A "$TMPDIR")"
stop_nbdkit a

start_nbdkit b --filter="$FILTER" memory 16M cache-min-block-size=1M
inspect "1M blocks" "$TMPDIR" 16777216 1048576
stop_nbdkit b

# default directory /var/tmp when TMPDIR is unset
if [ -d /var/tmp ] && [ -w /var/tmp ]; then
    before=$(ls -A /var/tmp | sort)
    unset TMPDIR
    start_nbdkit c --filter="$FILTER" memory 3M
    export TMPDIR=$cachedir
    inspect "TMPDIR unset" /var/tmp 3145728 65536
    stop_nbdkit c
    after=$(ls -A /var/tmp | sort)
    [ "$before" = "$after" ] || bad "files left in /var/tmp: $(comm -13 <(echo "$before") <(echo "$after"))"
else
    log "/var/tmp missing or not writable: default directory not checked"
fi
finish
