#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Concurrency (SPEC §5): 4 connections, each with 64 requests in flight
# (libnbd aio), nbdkit's default thread pool.  Each connection owns
#  - every 4th 1000-byte stripe of the first half of the export, so the
#    64K cache blocks are shared by all connections and many unaligned
#    writes read-modify-write the same block at once;
#  - a contiguous quarter of the second half, for larger unaligned writes
#    across block boundaries and zeroes.
# In-flight requests of a connection never overlap each other, so a model
# is well defined: reads of a connection's own bytes are checked when they
# complete, flushes run in between, and at the end the whole export is
# read back and (after a flush) the backing file compared with the model.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((16 * 1024 * 1024))

aio_model_script >"$tmp/t.py"

run() {   # run NAME CHECKFILE NOPS [args]
    local name=$1 check=$2 nops=$3; shift 3
    local disk=$tmp/disk-$name
    make_random_file "$disk" $SIZE 21
    start_nbdkit $name --filter="$FILTER" file "$disk" "$@"
    if PY_TIMEOUT=120 py "$tmp/t.py" "$uri" "$disk" $check $nops; then
        ok "$name: 4 connections x 64 in flight consistent with the model"
    else
        bad "$name: concurrent I/O inconsistent"
    fi
    assert_alive $name
    stop_nbdkit $name
    assert_no_crash_in "$tmp/$name.log"
}
run writeback yes 1500 cache=writeback
run writeback-cor yes 1000 cache=writeback cache-on-read=true
run writethrough yes 1000 cache=writethrough
run unsafe no 1000 cache=unsafe cache-on-read=true
finish
