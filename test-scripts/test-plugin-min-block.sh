#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A plugin that declares a block size minimum (here 4096, an eval plugin
# over a file) only gets writes aligned to it from write-back, even from a
# client that ignores the advertised minimum (libnbd with strict mode off):
# a partly written block whose held bytes are not aligned is read and
# written whole; an aligned one is written alone.  The data is right in
# the client's reads and, after the flush, in the file.  The "written
# alone" check fails against the C cache filter, which writes whole blocks.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

disk=$tmp/disk
make_random_file "$disk" 1048576 91
cp "$disk" "$tmp/model"
start_nbdkit minblock --filter="$FILTER" --filter=log eval logfile="$tmp/minblock.nbdlog" \
    get_size='echo 1048576' block_size='echo 4096 4096 33554432' \
    can_write='exit 0' can_flush='exit 0' flush='exit 0' \
    pread="dd if=$disk skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
    pwrite="dd of=$disk seek=\$4 conv=notrunc oflag=seek_bytes status=none"
py - "$uri" "$tmp/model" <<'EOF_PY'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); model = bytearray(open(sys.argv[2], "rb").read())
h.set_strict_mode(0)
for off, n, b in ((70000, 100, b"p"), (2 * 65536 + 8192, 4096, b"q"), (5 * 65536 + 4096, 5000, b"r")):
    h.pwrite(b * n, off); model[off:off + n] = b * n
h.flush()
assert h.pread(len(model), 0) == bytes(model), "read back wrong"
open(sys.argv[2], "wb").write(model)
h.shutdown()
EOF_PY
stop_nbdkit minblock
cmp -s "$disk" "$tmp/model" && ok "the file holds the writes after the flush" || bad "the file differs from the model after the flush"
writes=$(log_reqs "$tmp/minblock.nbdlog" Write)
log "plugin writes (offset count fua): $(echo "$writes" | tr '\n' ';')"
unaligned=$(echo "$writes" | awk '$1 % 4096 || $2 % 4096' | wc -l)
[ -n "$writes" ] && [ "$unaligned" -eq 0 ] && ok "every plugin write is aligned to the 4096-byte minimum" ||
    bad "$unaligned plugin write(s) not aligned to the plugin's 4096-byte minimum"
echo "$writes" | grep -q "^139264 4096 " && ok "an aligned held range is written alone" ||
    bad "the aligned 4 KiB write was not written back alone"
finish
