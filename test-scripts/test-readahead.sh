#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The readahead filter stacked above ours (SPEC §7: .cache can be called
# with err == NULL, from readahead's own thread).
#  1. Plain sequential reads through readahead + ours: right data, and
#     readahead's cache requests do load our cache.
#  2. EXPECTED TO FAIL against the C cache filter: with plugin read errors
#     injected (error filter after ours) readahead's background .cache
#     calls fail.  nbdkit must survive: the C filter writes the errno
#     through the NULL err pointer (SIGSEGV); and nbdkit 1.32's
#     backend_cache() itself dereferences err when a filter's .cache
#     returns -1, so a filter must not return -1 when err is NULL (the
#     request is advisory: ignore the failure).  Then, with errors off,
#     the data must read back right.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE=$((8 * 1024 * 1024))
disk=$tmp/disk
make_random_file "$disk" $SIZE 51

cat >"$tmp/t.py" <<'EOF_PY'
import nbd, sys, os
uri, disk, flag = sys.argv[1], sys.argv[2], sys.argv[3]
orig = open(disk, "rb").read()
h = nbd.NBD(); h.connect_uri(uri)
errs = 0
if flag != "-":
    open(flag, "w").close()
    for i in range(0, 64):
        try: h.pread(32768, i * 32768)
        except nbd.Error: errs += 1
    os.unlink(flag)
bad = 0
for i in range(0, len(orig) // 32768):
    if h.pread(32768, i * 32768) != orig[i * 32768:(i + 1) * 32768]: bad += 1
h.shutdown()
if bad:
    print("FAIL: %d sequential reads returned wrong data" % bad); sys.exit(1)
print("   %d reads failed while errors were injected" % errs, file=sys.stderr)
EOF_PY

# 1. no errors
start_nbdkit ra --filter=readahead --filter="$FILTER" --filter=stats file "$disk" \
    statsfile="$tmp/ra.stats"
py "$tmp/t.py" "$uri" "$disk" - && ok "sequential reads through readahead + filter" ||
    bad "sequential reads through readahead + filter returned wrong data"
stop_nbdkit ra

# 2. background cache requests fail
rm -f "$tmp/flag"
start_nbdkit raerr --filter=readahead --filter="$FILTER" --filter=error file "$disk" \
    error-pread-rate=1 error-pread-file="$tmp/flag"
if py "$tmp/t.py" "$uri" "$disk" "$tmp/flag"; then
    ok "survived failing readahead .cache calls (err == NULL)"
else
    bad "client failed with readahead above the filter and plugin read errors"
fi
if kill -0 "$pid" 2>/dev/null; then
    stop_nbdkit raerr
else
    grep -v 'injecting' "$tmp/raerr.log" | tail -n 5 >&2
    bad "nbdkit died (failed .cache with err == NULL must neither write through err nor return -1)"
fi
finish
