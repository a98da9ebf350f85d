#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# What reaches the plugin, counted by the stats filter placed after ours
# (request counts, never timing):
#  - writeback: random 4 KiB writes into a cold cache read nothing from the
#    plugin (partly written blocks are kept partial), and the data is right
#    after a flush;
#  - flush after 16 x 1 MiB sequential writes: at most 16 plugin writes
#    (runs are coalesced), no reads;
#  - flush after 256 scattered 4 KiB writes: no plugin reads, one write each;
#  - writethrough: one plugin write per client write (4 x 1 MiB at 512
#    bytes past each MiB), and one read per partly written block the cache
#    lacks (read-modify-write, SPEC §4): 5 edge blocks, block 16, 32 and 48
#    shared by two writes; reading all of it back twice then reads nothing
#    more;
#  - 16 concurrent reads of one uncached block (cache-on-read): one plugin read.
# EXPECTED TO FAIL against the C cache filter, which reads a whole block
# before every partial write and writes back and through one block at a time.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

run() {   # run NAME "cache args" PYTHON
    local name=$1 args=$2 script=$3
    # shellcheck disable=SC2086
    start_nbdkit "$name" --filter="$FILTER" --filter=stats memory 64M \
        statsfile="$tmp/$name.stats" $args
    py - "$uri" <<<"$script"
    stop_nbdkit "$name"
}

WRITES='
import nbd, sys, random
h = nbd.NBD(); h.connect_uri(sys.argv[1])
rng = random.Random(7); model = bytearray(64 << 20)
for i in range(2000):
    off = rng.randrange((64 << 20) // 4096 - 1) * 4096 + rng.choice((0, 512, 1000))
    data = bytes([i % 251 + 1]) * 4096
    h.pwrite(data, off); model[off:off + 4096] = data
'
# The log filter shows the reads before a trim (which goes straight to the
# plugin) that marks the end of the writes: the write-back as the
# connection closes (SPEC §8) reads to complete partial blocks.
start_nbdkit random --filter="$FILTER" --filter=log memory 64M logfile="$tmp/random.log" cache=writeback
py - "$uri" <<<"$WRITES"'
h.trim(65536, (64 << 20) - 65536)
h.shutdown()
'
stop_nbdkit random
grep -q ' connection=1 Trim ' "$tmp/random.log" || bad "no trim marker in the plugin log"
r=$(awk '/ connection=1 Trim /{exit} / connection=1 Read /{n++} END{print n+0}' "$tmp/random.log")
log "2000 random 4K writes into a cold cache: plugin reads $r before the end of the writes"
[ "$r" -eq 0 ] && ok "writes read nothing from the plugin" || bad "the writes made $r plugin reads"
run random-data "cache=writeback" "$WRITES"'
for off in range(0, 32 << 20, 1 << 20):
    assert h.pread(1 << 20, off) == model[off:off + (1 << 20)], off
h.flush()
for off in range(0, 64 << 20, 1 << 20):
    assert h.pread(1 << 20, off) == model[off:off + (1 << 20)], off
h.shutdown()
'
ok "the same writes read back right before and after a flush"

run seq "cache=writeback" '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for i in range(16): h.pwrite(bytes([i + 1]) * (1 << 20), i << 20)
h.flush()
for i in range(16): assert h.pread(1 << 20, i << 20) == bytes([i + 1]) * (1 << 20)
h.shutdown()
'
r=$(stats_ops "$tmp/seq.stats" read); w=$(stats_ops "$tmp/seq.stats" write)
log "flush after 16 x 1M sequential writes: plugin reads $r, writes $w"
[ "$r" -eq 0 ] && [ "$w" -ge 1 ] && [ "$w" -le 16 ] && ok "coalesced write-back ($w writes)" ||
    bad "16 MiB written back with $w writes and $r reads (want 1..16 writes, 0 reads)"

run scatter "cache=writeback" '
import nbd, sys, random
h = nbd.NBD(); h.connect_uri(sys.argv[1])
rng = random.Random(11)
for region in rng.sample(range((64 << 20) // 65536), 256):
    h.pwrite(b"s" * 4096, region * 65536 + rng.randrange(16) * 4096)
h.flush()
h.shutdown()
'
r=$(stats_ops "$tmp/scatter.stats" read); w=$(stats_ops "$tmp/scatter.stats" write)
log "flush after 256 scattered 4K writes: plugin reads $r, writes $w"
[ "$r" -eq 0 ] && [ "$w" -eq 256 ] && ok "scattered write-back: no reads, one write each" ||
    bad "scattered write-back: $r reads, $w writes (want 0 and 256)"

run through "cache=writethrough" '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for i in range(4): h.pwrite(bytes([i + 1]) * (1 << 20), (i << 20) + 512)
want = bytes(512) + b"".join(bytes([i + 1]) * (1 << 20) for i in range(4)) + bytes(65536 - 512)
for _ in range(2):
    assert h.pread(len(want), 0) == want, "writethrough: read back wrong"
h.shutdown()
'
r=$(stats_ops "$tmp/through.stats" read); w=$(stats_ops "$tmp/through.stats" write)
log "writethrough 4 x 1M unaligned writes, then read back twice: plugin reads $r, writes $w"
[ "$r" -eq 5 ] && [ "$w" -eq 4 ] && ok "one plugin write per client write, one read per partly written block, read back from the cache" ||
    bad "writethrough: $r reads, $w writes (want 5 and 4)"

run same "cache-on-read=true" '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for i in range(16):
    h.aio_pread(nbd.Buffer(4096), 5 * 65536 + i * 4096)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.shutdown()
'
r=$(stats_ops "$tmp/same.stats" read)
log "16 concurrent reads of one uncached block: plugin reads $r"
[ "$r" -eq 1 ] && ok "concurrent misses on one block fetch it once" ||
    bad "16 concurrent reads of one block made $r plugin reads (want 1)"
finish
