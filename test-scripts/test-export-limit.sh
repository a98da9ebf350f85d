#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# At most 64 exports' caches at once (SPEC §8, one cache per export): a
# client trying export names must not use up the server's file descriptors.
# With 64 connections open on 64 names, a 65th name is refused (its open
# fails, the log says why) while the 64 names still open; once one closes,
# the 65th gets a cache in place of the idle one and serves the right
# data. Then 400 more names, one connection each, written and read: the
# server's open file descriptors stay within 64 cache files of where they
# began, and every name reads back its own write.
# EXPECTED TO FAIL against swiftcache before the limit: every name kept a
# cache file open (the 65th name was served, descriptors grew by 465).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
filter_is_path || skip "the limit is swiftcache's own"

start_nbdkit s --filter="$FILTER" memory 64M
fds() { ls "/proc/$pid/fd" | wc -l; }
before=$(fds)
py - "$tmp/s.sock" "$pid" >"$tmp/client" <<'PY' || bad "the client failed: $(tail -n3 "$tmp/client")"
import nbd, os, sys, time
sock, pid = sys.argv[1], sys.argv[2]

def connect(name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix(sock)
    return h

held = [connect(f"held{i}") for i in range(64)]
try:
    connect("one-too-many")
    print("FAIL: a 65th export name was served while 64 caches are in use")
except nbd.Error:
    print("ok: a 65th export name is refused while 64 caches are in use")
h = connect("held7"); h.pwrite(b"7" * 4096, 0); h.flush(); h.shutdown()
print("ok: a name with a cache still opens")
held.pop().shutdown()
for _ in range(100):          # its close reaches the filter a little later
    try:
        h = connect("one-too-many")
        break
    except nbd.Error:
        time.sleep(0.05)
else:
    raise SystemExit("FAIL: no cache for a new name after one closed")
h.pwrite(b"n" * 5000, 100); assert h.pread(5000, 100) == b"n" * 5000; h.flush(); h.shutdown()
print("ok: once one closes, a new name gets a cache and serves")
for h in held:
    h.shutdown()
for i in range(400):
    h = connect(f"name{i}")
    data = (b"%08d" % i) * 512
    h.pwrite(data, 8192 * (i % 7))
    assert h.pread(len(data), 8192 * (i % 7)) == data, f"name{i} read back wrong data"
    h.shutdown()
print("ok: 400 more names each read back their own write")
PY
sed 's/^/    /' "$tmp/client" >&2
grep -q "^FAIL" "$tmp/client" && bad "$(grep ^FAIL "$tmp/client")"
sleep 0.5
after=$(fds)
[ "$after" -le $((before + 64)) ] && ok "open descriptors: $before before, $after after 465 names" ||
    bad "open descriptors grew from $before to $after over 465 export names"
grep -q 'no cache for export "one-too-many"' "$tmp/s.log" && ok "the refusal is logged" ||
    bad "no log line for the refused export: $(tail -n3 "$tmp/s.log")"
stop_nbdkit s
finish
