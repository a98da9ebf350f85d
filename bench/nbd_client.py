#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""Small libnbd client used by bench.py (needs Debian's /usr/bin/python3,
which is the only interpreter with the `nbd` module).

    nbd_client.py URI flush-seq N       N x 1 MiB sequential pwrites, then one timed flush
    nbd_client.py URI flush-scatter N   N x 4 KiB pwrites, each in its own 64 KiB
                                        region (fixed seed), then one timed flush
    nbd_client.py URI read OFFSET LEN   one pread, then close
    nbd_client.py URI flush-empty       one timed flush with nothing written, then
                                        one 4 KiB pwrite at the end of the disk and
                                        one timed flush (median of 20 each)

Prints one JSON object on stdout.
"""

import json
import random
import sys
import time

import nbd

MiB = 1 << 20
REGION = 64 * 1024
SMALL = 4096
SEED = 0x5CAC4E


def pattern(n, salt):
    # Non-zero, position-dependent data, so nothing can treat it as zeroes.
    unit = bytes(((i * 7 + salt) & 0xFF) | 1 for i in range(256))
    return (unit * (n // len(unit) + 1))[:n]


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    uri, mode = argv[1], argv[2]
    h = nbd.NBD()
    h.connect_uri(uri)
    out = {"size": h.get_size()}

    if mode == "flush-seq":
        n = int(argv[3])
        buf = pattern(MiB, 1)
        t0 = time.monotonic()
        for i in range(n):
            h.pwrite(buf, i * MiB)
        t1 = time.monotonic()
        h.flush()
        t2 = time.monotonic()
        out.update(writes=n, write_s=t1 - t0, flush_s=t2 - t1)

    elif mode == "flush-scatter":
        n = int(argv[3])
        regions = out["size"] // REGION
        if n > regions:
            sys.exit("disk too small for %d distinct 64K regions" % n)
        rng = random.Random(SEED)
        picks = rng.sample(range(regions), n)
        buf = pattern(SMALL, 2)
        t0 = time.monotonic()
        for r in picks:
            off = r * REGION + rng.randrange(REGION // SMALL) * SMALL
            h.pwrite(buf, off)
        t1 = time.monotonic()
        h.flush()
        t2 = time.monotonic()
        out.update(writes=n, write_s=t1 - t0, flush_s=t2 - t1)

    elif mode == "flush-empty":
        def timed_flush():
            t0 = time.monotonic()
            h.flush()
            return time.monotonic() - t0
        empty = sorted(timed_flush() for _ in range(20))[10]
        ones = []
        for i in range(20):
            h.pwrite(pattern(SMALL, 3 + i), out["size"] - SMALL)
            ones.append(timed_flush())
        out.update(empty_flush_s=empty, one_block_flush_s=sorted(ones)[10])

    elif mode == "read":
        off, length = int(argv[3]), int(argv[4])
        data = h.pread(length, off)
        out.update(read=len(data))

    else:
        sys.exit("unknown mode %r" % mode)

    h.shutdown()
    del h
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
