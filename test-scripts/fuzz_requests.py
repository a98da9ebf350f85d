#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""Fuzzed NBD requests through the cache filter (issue 10).

    fuzz_requests.py run --filter F --work DIR [--seed S] [--ops N] [--configs all|default|NAME,...]
                         [--jobs J]
    fuzz_requests.py one --filter F --work DIR --seed S --ops N --config NAME   (one configuration)

For every configuration (an export, a cache mode, an option) one nbdkit serves the export
through the filter (`--filter none`: no filter at all, to check the oracle against nbdkit
alone), and a libnbd client with strict mode off (h.set_strict_mode(0)) sends seeded random
requests: pread, pread_structured, pwrite, zero, trim, cache, block_status and flush, at
random offsets (0, near and at the end, past it, 2^63-1, 2^64-1, block boundaries +-1) and
lengths (0, 1, odd, 4096 +-1, 65536 +-1, up to 32M and past nbdkit's and libnbd's limits),
with flag combinations (FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, and bits no command knows).

Exports: memory size=1, memory size=4095, file of 130000 bytes, memory size=65535, file of
65537 bytes, memory 1T, a sparse file of 1 TiB. Modes: writeback, writethrough, unsafe.
Options: none, cache-max-size=1M, cache-on-read=true. The default set is 23 configurations
(every export in every mode, the option rotating, and cache-max-size=1M under writeback and
unsafe on a 1 TiB export); --configs all runs all 105, adding the options bs4K
(cache-min-block-size=4K cache-on-read=true) and bs1Mmax1M (cache-min-block-size=1M
cache-max-size=1M: one block is the whole cache).

What is checked:
- Every reply is what nbdkit 1.32 must send (it validates requests before any filter):
  out of range or zero length -> ENOSPC for write and zero, EINVAL otherwise; a flag the
  command does not take (NO_HOLE, FAST_ZERO but on zero; DF but on read; REQ_ONE but on
  block status; unknown bits) -> EINVAL; libnbd refuses read/write > 64M and others
  > 4G-1 itself (ERANGE), and flag bits past 16 (EINVAL). A valid request succeeds, except a
  FAST_ZERO zero, which may fail with ENOTSUP and then changes nothing (SPEC §4).
- Data: a model of the export (zeroes at first; writes and zeroes set bytes; a trim makes
  its range unknown). Every successful read (and every pread_structured chunk) must equal the
  known bytes. Block status must not call known non-zero bytes a hole or zero (SPEC §4),
  must start at the offset asked, and with REQ_ONE hold exactly one extent.
- The requests go in 4 rounds of a synchronous batch (40%) and an asynchronous one: up to
  4, 16, 32 or 64 requests in flight per connection, on one connection (rounds 0 and 2) or
  two at once (rounds 1 and 3, one thread each), the ranges of requests in flight never
  overlapping, so the model has one answer. nbdkit must be alive after every batch.
- At the end: all of the touched data reads back, on this connection and on a new one
  after a flush; the server is alive after every batch and exits with status 0 on SIGTERM
  with no crash message; for the file exports (writeback, writethrough) the file holds
  the model's known bytes after nbdkit exits.

Draining: nbdkit 1.32.5 aborts when a client disconnects with requests in flight (with or
without a filter), so the client always waits for every in-flight command before
h.shutdown(), also after a failure.

Counts printed: requests sent per command, replies by errno, bytes verified, per
configuration and in total.
"""
import bisect
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

MAX_RW = 64 << 20           # nbdkit 1.32 MAX_REQUEST_SIZE, libnbd's limit for read/write
MAX_OTHER = (1 << 32) - 1   # libnbd's limit for zero/trim/cache/block status
TiB = 1 << 40
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 0x10
KNOWN_FLAGS = FUA | NO_HOLE | DF | REQ_ONE | FAST_ZERO
HOLE, ZERO = 1, 2
CRASH = re.compile(rb"Fatal error|Swift runtime failure|Assertion|assertion failed|Segmentation|"
                   rb"core dumped|SIGSEGV|SIGABRT|SIGBUS|panic", re.I)

EXPORTS = [  # name, plugin kind, size
    ("mem1", "memory", 1),
    ("mem4095", "memory", 4095),
    ("file130000", "file", 130000),
    ("mem65535", "memory", 65535),
    ("file65537", "file", 65537),
    ("mem1T", "memory", TiB),
    ("file1T", "file", TiB),
]
MODES = ["writeback", "writethrough", "unsafe"]
OPTIONS = [("plain", []), ("max1M", ["cache-max-size=1M"]), ("cor", ["cache-on-read=true"])]
# Only in --configs all (or by name): other cache block sizes, the smallest with reclaim.
MORE_OPTIONS = [("bs4K", ["cache-min-block-size=4K", "cache-on-read=true"]),
                ("bs1Mmax1M", ["cache-min-block-size=1M", "cache-max-size=1M"])]


def all_configs():
    return ["%s-%s-%s" % (e[0], m, o[0]) for e in EXPORTS for m in MODES for o in OPTIONS + MORE_OPTIONS]


def default_configs():
    """Every export in every mode, the option rotating, and cache-max-size=1M under writeback
    and unsafe on a 1 TiB export (where the writes are larger than the limit)."""
    out = []
    for i, e in enumerate(EXPORTS):
        for j, m in enumerate(MODES):
            out.append("%s-%s-%s" % (e[0], m, OPTIONS[(i + j + 1) % 3][0]))
    return out + ["mem1T-writeback-max1M", "mem1T-unsafe-max1M"]


def parse_config(name):
    ename, mode, oname = name.split("-")
    exp = next(e for e in EXPORTS if e[0] == ename)
    opt = next(o for o in OPTIONS + MORE_OPTIONS if o[0] == oname)
    return exp, mode, opt


# ------------------------------------------------------------------ the model
class Model:
    """The export's bytes as sorted segments [start, end) of kind 'z' (zeroes), 'd' (bytes)
    or 'u' (unknown: trimmed, or an unexpected failure hit it)."""

    def __init__(self, size):
        self.size = size
        self.starts = [0]
        self.segs = [(0, size, "z", None)]

    def _cut(self, pos):
        """Index of the segment starting at pos (splitting one if needed); len if pos == size."""
        if pos >= self.size:
            return len(self.segs)
        i = bisect.bisect_right(self.starts, pos) - 1
        s, e, k, d = self.segs[i]
        if s == pos:
            return i
        a = (s, pos, k, d[:pos - s] if d is not None else None)
        b = (pos, e, k, d[pos - s:] if d is not None else None)
        self.segs[i:i + 1] = [a, b]
        self.starts[i:i + 1] = [s, pos]
        return i + 1

    def set(self, off, n, kind, data=None):
        if n <= 0:
            return
        i = self._cut(off)
        j = self._cut(off + n)
        self.segs[i:j] = [(off, off + n, kind, data)]
        self.starts[i:j] = [off]

    def pieces(self, off, n):
        """(start, end, kind, data) of the segments overlapping [off, off+n), clipped."""
        end = min(off + n, self.size)
        i = max(0, bisect.bisect_right(self.starts, off) - 1)
        while i < len(self.segs) and self.segs[i][0] < end:
            s, e, k, d = self.segs[i]
            a, b = max(s, off), min(e, end)
            if a < b:
                yield a, b, k, (d[a - s:b - s] if d is not None else None)
            i += 1

    def check(self, off, got):
        """Compares bytes read at off with the known bytes: (first differing offset or None,
        bytes compared)."""
        mv = memoryview(got)
        compared = 0
        for a, b, k, d in self.pieces(off, len(got)):
            part = mv[a - off:b - off]
            if k == "z":
                if part.nbytes and bytes(part).count(0) != part.nbytes:
                    return a + next(i for i, x in enumerate(bytes(part)) if x), compared
            elif k == "d":
                if part != d:
                    return a + next(i for i in range(b - a) if part[i] != d[i]), compared
            else:
                continue
            compared += b - a
        return None, compared

    def nonzero_at(self, off, n):
        """First offset in [off, off+n) known to hold a non-zero byte, or None."""
        for a, b, k, d in self.pieces(off, n):
            if k == "d" and d.count(0) != len(d):
                return a + next(i for i, x in enumerate(d) if x)
        return None

    def data_ranges(self):
        return [(s, e) for s, e, k, _ in self.segs if k == "d"]


# ------------------------------------------------------------------ the oracle
def expected(cmd, off, n, flags, caps, size):
    """('ok'|'client'|'server', errno or None) for a request, by nbdkit 1.32's
    validate_request and libnbd 1.14's own checks (strict mode off)."""
    if flags >> 16:
        return ("client", errno.EINVAL)
    if cmd in ("pread", "pread_structured", "pwrite") and n > MAX_RW:
        return ("client", errno.ERANGE)
    if cmd in ("zero", "trim", "cache", "block_status") and n > MAX_OTHER:
        return ("client", errno.ERANGE)
    if cmd != "flush" and not (n > 0 and off <= size and off + n <= size):
        return ("server", errno.ENOSPC if cmd in ("pwrite", "zero") else errno.EINVAL)
    if flags & ~KNOWN_FLAGS:
        return ("server", errno.EINVAL)
    if flags & NO_HOLE and cmd != "zero":
        return ("server", errno.EINVAL)
    if flags & FAST_ZERO and cmd != "zero":
        return ("server", errno.EINVAL)
    if flags & DF and cmd not in ("pread", "pread_structured"):
        return ("server", errno.EINVAL)
    if flags & REQ_ONE and cmd != "block_status":
        return ("server", errno.EINVAL)
    if flags & FUA and not caps["fua"]:
        return ("server", errno.EINVAL)
    need = {"flush": "flush", "trim": "trim", "zero": "zero", "cache": "cache"}.get(cmd)
    if need and not caps[need]:
        return ("server", errno.EINVAL)
    if flags & FAST_ZERO and not caps["fast_zero"]:
        return ("server", errno.EINVAL)
    return ("ok", None)


# ------------------------------------------------------------------ request generation
COMMANDS = ["pread", "pread_structured", "pwrite", "zero", "trim", "cache", "block_status", "flush"]
WEIGHTS = [22, 6, 24, 10, 6, 5, 10, 3]
ONLY_COMMANDS = set(COMMANDS)          # --commands narrows it (to find what a failure needs)


def gen_offset(r, size):
    k = r.random()
    if k < 0.55:
        if size > 64 << 20 and r.random() < 0.8:
            # large exports: mostly three 8 MiB windows (start, middle, end), so that reads,
            # block status and reclaim meet what was written
            base = r.choice([0, size // 2 - (4 << 20), size - (8 << 20)])
            return base + r.randrange(8 << 20)
        return r.randrange(size)
    if k < 0.7:                      # block boundaries +-1 (4K, 64K, 1M)
        b = r.choice([4096, 65536, 1 << 20])
        top = max(1, size // b)
        return max(0, min(size, r.randrange(top + 1) * b + r.choice([-1, 0, 1])))
    if k < 0.85:                     # near the end
        return max(0, size - r.choice([0, 1, 2, 3, 511, 512, 4095, 4096, 65535, 65536, 65537]))
    return r.choice([size, size + 1, size + 4096, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, (1 << 64) - 4096,
                     TiB, TiB + 1, 2 * TiB, (1 << 62), r.randrange(1 << 64)])


def gen_count(r, cmd, size):
    k = r.random()
    if k < 0.05:
        return 0
    if k < 0.45:
        return r.randint(1, 300)
    if k < 0.7:
        return r.choice([1, 2, 3, 511, 512, 513, 4095, 4096, 4097, 65535, 65536, 65537, 131071, 131072, 131073])
    if k < 0.9:
        return r.randint(1, 1 << 20)
    if k < 0.97:
        return r.choice([4 << 20, (4 << 20) + 1, 16 << 20, (32 << 20) - 1, 32 << 20, (32 << 20) + 1])
    if cmd in ("pread", "pread_structured", "pwrite"):
        return r.choice([MAX_RW, MAX_RW + 1])
    return r.choice([1 << 30, MAX_OTHER, MAX_OTHER + 1])


def gen_flags(r, cmd):
    k = r.random()
    valid = {"pread": DF, "pread_structured": DF, "pwrite": FUA, "zero": FUA | NO_HOLE | FAST_ZERO,
             "trim": FUA, "cache": 0, "block_status": REQ_ONE, "flush": 0}[cmd]
    if k < 0.6:
        return 0
    if k < 0.85:
        return valid & r.randrange(32)
    if k < 0.96:
        return r.randrange(32)               # any combination of known flags
    return r.choice([0x20, 0x40, 0x80, 0x100, 0x4000, 0x8000, 0xffff, 0x10000, FUA | 0x200])


def gen_request(r, size, cap_large):
    cmd = r.choices(COMMANDS, WEIGHTS)[0]
    while cmd not in ONLY_COMMANDS:
        cmd = r.choices(COMMANDS, WEIGHTS)[0]
    if cmd == "flush":
        return cmd, 0, 0, gen_flags(r, cmd)
    off = gen_offset(r, size)
    n = gen_count(r, cmd, size)
    if r.random() < 0.6 and off < size:      # mostly in range, so data gets checked
        n = max(1, min(n, size - off))
    if cap_large and cmd in ("cache",) and n > 256 << 20 and off + n <= size:
        n = 256 << 20                        # a cache of GiBs would read GiBs from the plugin
    if cmd == "pwrite" and n > 4 << 20 and r.random() < 0.7:
        n = r.randint(1, 4 << 20)            # big writes are slow to make: fewer of them
    return cmd, off, n, gen_flags(r, cmd)


# ------------------------------------------------------------------ one configuration
class Failure(Exception):
    pass


class Run:
    def __init__(self, a, name):
        self.a = a
        self.name = name
        (self.ename, self.kind, self.size), self.mode, (self.oname, self.opts) = parse_config(name)
        self.r = random.Random("%s/%s" % (a.seed, name))
        self.model = Model(self.size)
        self.sent = {}
        self.errnos = {}
        self.verified = 0
        self.fails = []
        self.kinds = {}
        self.stopping = False
        self.progress = None
        self.last = ""

    KINDS = [("server died", r"nbdkit (died|is gone|exited with status|did not)|crash message"),
             ("connection lost", r"invalid state: (CLOSED|DEAD)|connection \d* ?died|connection lost|"
                                 r"Transport endpoint is not connected|Connection reset by peer|too many failures"),
             ("block status over known data", r"is (hole,zero|zero|hole) but"),
             ("wrong data", r"read 0x|reads 0x|differs from the model|does not read back"),
             ("wrong reply", r"succeeded, want|, want E|failed: "),
             ("lost dirty data at exit", r"dirty blocks"),
             ("bad extents", r"extent|REQ_ONE")]

    def fail(self, msg):
        self.fails.append(msg)
        kind = next((k for k, rx in self.KINDS if re.search(rx, msg)), "other")
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        print("FAIL %s: %s" % (self.name, msg), flush=True)
        if len(self.fails) >= 20 and not self.stopping:
            self.stopping = True               # raised once; later failures are only recorded
            raise Failure("too many failures")

    def note(self, what):
        self.last = what
        if self.progress:
            self.progress.seek(0)
            self.progress.write(what.ljust(200)[:200])
            self.progress.flush()

    # -------------------------------------------------------------- server
    def start(self):
        d = os.path.join(self.a.work, self.name)
        os.makedirs(d, exist_ok=True)
        self.dir = d
        self.progress = open(os.path.join(d, "progress"), "w")
        self.sock = os.path.join(d, "sock")
        self.pidfile = os.path.join(d, "pid")
        self.logpath = os.path.join(d, "nbdkit.log")
        for f in (self.sock, self.pidfile):
            if os.path.exists(f):
                os.unlink(f)
        cachedir = os.path.join(d, "cachedir")
        os.makedirs(cachedir, exist_ok=True)
        if self.kind == "file":
            self.file = os.path.join(d, "disk")
            with open(self.file, "wb") as f:
                f.truncate(self.size)
            plugin = ["file", "file=" + self.file]
        else:
            plugin = ["memory", "size=%d" % self.size]
        filt = [] if self.a.filter == "none" else ["--filter=" + self.a.filter]
        cache_args = [] if self.a.filter == "none" else ["cache=" + self.mode] + self.opts
        self.cmd = ["nbdkit", "-f", "-U", self.sock, "-P", self.pidfile] + filt + plugin + cache_args
        env = dict(os.environ, TMPDIR=cachedir)
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=env)
        for _ in range(400):
            if os.path.exists(self.sock) and os.path.exists(self.pidfile):
                break
            if self.proc.poll() is not None:
                raise Failure("nbdkit exited during start-up: %s" % open(self.logpath, "rb").read()[-500:])
            time.sleep(0.02)
        else:
            raise Failure("nbdkit did not start")

    def alive(self, when):
        if self.proc.poll() is not None:
            raise Failure("nbdkit died %s (status %s): %r" % (when, self.proc.returncode,
                                                                open(self.logpath, "rb").read()[-800:]))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.fail("nbdkit did not exit within 30 s of SIGTERM")
            return
        self.log.close()
        err = open(self.logpath, "rb").read()
        if rc != 0:
            self.fail("nbdkit exited with status %d: %r" % (rc, err[-800:]))
        m = CRASH.search(err)
        if m:
            self.fail("crash message in nbdkit's log: %r" % err[max(0, m.start() - 300):m.end() + 300])
        lost = re.search(rb"exiting with \d+ dirty blocks[^\n]*", err)
        if lost and self.mode != "unsafe":
            self.fail("cache=%s: %s" % (self.mode, lost.group(0).decode("utf-8", "replace")))

    # -------------------------------------------------------------- client
    def connect(self):
        import nbd
        h = nbd.NBD()
        h.set_strict_mode(0)
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_unix(self.sock)
        if h.get_size() != self.size:
            self.fail("export size %d, want %d" % (h.get_size(), self.size))
        self.caps = dict(fua=h.can_fua(), flush=h.can_flush(), trim=h.can_trim(), zero=h.can_zero(),
                         cache=h.can_cache(), fast_zero=h.can_fast_zero(),
                         meta=h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION))
        return h

    @staticmethod
    def close(h):
        """Drains h, then disconnects (when the server is gone there is nothing to shut down)."""
        import nbd
        Run.drain(h)
        try:
            h.shutdown()
        except nbd.Error:
            pass

    @staticmethod
    def drain(h):
        """Waits for every command in flight (nbdkit 1.32.5 aborts on a disconnect with
        requests in flight)."""
        import nbd
        for _ in range(100000):
            try:
                if h.aio_in_flight() == 0:
                    return
                h.poll(1000)
            except nbd.Error:
                return

    def count(self, cmd, result):
        self.sent[cmd] = self.sent.get(cmd, 0) + 1
        key = result if isinstance(result, str) else errno.errorcode.get(result, str(result))
        self.errnos[key] = self.errnos.get(key, 0) + 1

    def data_for(self, n, valid):
        if not valid:
            return bytes(n)                  # refused before it is stored: no need to fill it
        k = self.r.random()
        if k < 0.15:
            return bytes(n)                  # all zeroes: the filter's known-zero path
        if k < 0.25 and n > 8:
            return bytes(n // 2) + self.r.randbytes(n - n // 2)
        return self.r.randbytes(n)

    def issue(self, h, req, done=None):
        """Sends one request (sync if done is None); returns (cookie or None, context)."""
        import nbd
        cmd, off, n, flags = req
        ctx = dict(req=req, extents=[], chunks=[], buf=None, data=None)
        exp = expected(cmd, off, n, flags, self.caps, self.size)
        ctx["exp"] = exp

        def on_extent(metacontext, offset, entries, err):
            ctx["extents"].append((metacontext, offset, list(entries)))
            return 0

        def on_chunk(subbuf, offset, status, err):
            ctx["chunks"].append((offset, status, bytes(subbuf)))
            return 0

        if cmd == "pwrite":
            ctx["data"] = self.data_for(n, exp[0] == "ok")
        sync = done is None
        try:
            if sync:
                if cmd == "pread":
                    ctx["got"] = h.pread(n, off, flags)
                elif cmd == "pread_structured":
                    ctx["got"] = h.pread_structured(n, off, on_chunk, flags)
                elif cmd == "pwrite":
                    h.pwrite(ctx["data"], off, flags)
                elif cmd == "zero":
                    h.zero(n, off, flags)
                elif cmd == "trim":
                    h.trim(n, off, flags)
                elif cmd == "cache":
                    h.cache(n, off, flags)
                elif cmd == "block_status":
                    h.block_status(n, off, on_extent, flags)
                elif cmd == "flush":
                    h.flush(flags)
                self.complete(ctx, None)
                return None, ctx
            if cmd in ("pread", "pread_structured"):
                ctx["buf"] = nbd.Buffer(n) if n <= MAX_RW else None
                if cmd == "pread":
                    ck = h.aio_pread(ctx["buf"] if n <= MAX_RW else nbd.Buffer(1 << 26 | 1), off, flags=flags)
                else:
                    ck = h.aio_pread_structured(ctx["buf"] if n <= MAX_RW else nbd.Buffer(1 << 26 | 1), off,
                                                on_chunk, flags=flags)
            elif cmd == "pwrite":
                ctx["buf"] = nbd.Buffer.from_bytearray(bytearray(ctx["data"]))
                ck = h.aio_pwrite(ctx["buf"], off, flags=flags)
            elif cmd == "zero":
                ck = h.aio_zero(n, off, flags=flags)
            elif cmd == "trim":
                ck = h.aio_trim(n, off, flags=flags)
            elif cmd == "cache":
                ck = h.aio_cache(n, off, flags=flags)
            elif cmd == "block_status":
                ck = h.aio_block_status(n, off, on_extent, flags=flags)
            else:
                ck = h.aio_flush(flags=flags)
            return ck, ctx
        except nbd.Error as e:
            self.complete(ctx, e)
            return None, ctx

    def complete(self, ctx, e):
        """Checks one reply against the oracle and the model, and updates the model."""
        cmd, off, n, flags = ctx["req"]
        where, want = ctx["exp"]
        what = "%s(off=%d, count=%d, flags=0x%x)" % (cmd, off, n, flags)
        if e is None:
            self.count(cmd, "ok")
        else:
            server = "command failed" in (e.string or "")
            self.count(cmd, e.errnum or "?")
        if where in ("client", "server"):
            if e is None:
                self.fail("%s succeeded, want %s %s" % (what, errno.errorcode[want], where))
                if cmd in ("pwrite", "zero", "trim"):
                    self.model.set(off, min(n, self.size - off) if off < self.size else 0, "u")
            elif e.errnum != want or server != (where == "server"):
                self.fail("%s: %s (errno %s, %s), want %s from the %s" % (
                    what, e.string, e.errnum, "server" if server else "client", errno.errorcode[want], where))
            return
        # a valid request
        if e is not None:
            if cmd == "zero" and flags & FAST_ZERO and e.errnum == errno.ENOTSUP and server:
                return                          # SPEC §4: fast zero refused, nothing changed
            self.fail("%s failed: %s (errno %s)" % (what, e.string, e.errnum))
            if cmd in ("pwrite", "zero", "trim"):
                self.model.set(off, n, "u")
            return
        if cmd in ("pread", "pread_structured"):
            got = ctx.get("got")
            if got is None:
                got = ctx["buf"].to_bytearray()
            bad, k = self.model.check(off, got)
            self.verified += k
            if bad is not None:
                self.fail("%s: byte %d read 0x%02x, the model has %s" % (
                    what, bad, got[bad - off], self.describe(bad)))
            for coff, status, data in ctx["chunks"]:
                if not off <= coff <= coff + len(data) <= off + n:
                    self.fail("%s: chunk at %d+%d outside the request" % (what, coff, len(data)))
                    continue
                if status == 2:                 # LIBNBD_READ_HOLE
                    nz = self.model.nonzero_at(coff, len(data))
                    if nz is not None:
                        self.fail("%s: hole chunk over known data at %d" % (what, nz))
                else:
                    bad, k = self.model.check(coff, data)
                    if bad is not None:
                        self.fail("%s: chunk byte %d differs from the model" % (what, bad))
        elif cmd == "pwrite":
            self.model.set(off, n, "d", bytes(ctx["data"]))
        elif cmd == "zero":
            self.model.set(off, n, "z")
        elif cmd == "trim":
            self.model.set(off, n, "u")
        elif cmd == "block_status":
            self.check_extents(ctx, what, off, n, flags)

    def check_extents(self, ctx, what, off, n, flags):
        ours = [x for x in ctx["extents"] if x[0] == "base:allocation"]
        if len(ours) != 1:
            self.fail("%s: %d base:allocation replies" % (what, len(ours)))
            return
        _, eoff, entries = ours[0]
        if eoff != off:
            self.fail("%s: extents start at %d" % (what, eoff))
        if not entries or len(entries) % 2:
            self.fail("%s: no extents (%r)" % (what, entries))
            return
        if flags & REQ_ONE and len(entries) != 2:
            self.fail("%s: REQ_ONE but %d extents" % (what, len(entries) // 2))
        pos = off
        for i in range(0, len(entries), 2):
            length, fl = entries[i], entries[i + 1]
            if length == 0:
                self.fail("%s: an extent of length 0" % what)
            if pos + length > self.size:
                self.fail("%s: extent %d+%d past the end %d" % (what, pos, length, self.size))
                return
            if fl & (HOLE | ZERO):
                nz = self.model.nonzero_at(pos, length)
                if nz is not None:
                    self.fail("%s: extent %d+%d is %s but byte %d holds known data" % (
                        what, pos, length, "hole,zero" if fl & 3 == 3 else "zero" if fl & 2 else "hole", nz))
            pos += length

    def describe(self, at):
        for a, b, k, d in self.model.pieces(at, 1):
            return {"z": "zero", "u": "unknown"}.get(k) or "0x%02x (written)" % d[0]
        return "?"

    # -------------------------------------------------------------- phases
    def gen(self):
        cmd, off, n, flags = gen_request(self.r, self.size, True)
        if flags & FAST_ZERO and not self.caps["fast_zero"]:
            # nbdkit 1.32.5 does not refuse FAST_ZERO when it did not advertise it: backend_zero
            # asserts can_fast_zero == 1 and the server aborts (file plugin, no filter). Not sent.
            flags &= ~FAST_ZERO
        if cmd == "block_status" and n == MAX_OTHER and self.a.filter == "none":
            # nbdkit 1.32.5 itself aborts (protocol.c extents_to_block_descriptors: Assertion
            # `e.length <= length') on a block status of exactly 4G-1 bytes over a plugin hole
            # larger than that (memory 1T, no filter; the C cache filter passes it through and
            # aborts the same way). Only the reference run without a filter avoids it.
            n -= 1
        return cmd, off, n, flags

    def phase_sync(self, h, nops):
        for i in range(nops):
            req = self.gen()
            self.note("sync %d: %r" % (i, req))
            self.issue(h, req)
            if h.aio_is_dead() or h.aio_is_closed():
                raise Failure("connection lost after %r" % (req,))

    def phase_aio(self, hs, nops, inflight):
        """nops requests over the connections hs, each from a thread of its own with up to
        inflight in flight; requests in flight on any connection never overlap."""
        import threading
        lock = threading.Lock()
        busy = {}                               # (connection, cookie) -> (start, end)
        maxq = [0]
        errors = []

        def worker(ci, h, my_ops):
            import nbd
            pending = {}                        # cookie -> ctx
            issued = 0
            try:
                while issued < my_ops or pending:
                    with lock:
                        while issued < my_ops and len(pending) < inflight:
                            req = None
                            for _ in range(10):
                                cand = self.gen()
                                cmd, off, n, flags = cand
                                if cmd in ("pread", "pread_structured", "pwrite") and n > 8 << 20:
                                    continue    # keep the memory in flight small
                                if expected(cmd, off, n, flags, self.caps, self.size)[0] != "ok" or cmd == "flush":
                                    req = cand
                                    break
                                if all(off + n <= s or e <= off for s, e in busy.values()):
                                    req = cand
                                    break
                            if req is None:
                                break
                            self.note("aio conn %d, %d: %r" % (ci, issued, req))
                            ck, ctx = self.issue(h, req, done=True)
                            issued += 1
                            if ck is not None:
                                pending[ck] = ctx
                                cmd, off, n, flags = req
                                if ctx["exp"][0] == "ok" and cmd != "flush":
                                    busy[(ci, ck)] = (off, off + n)
                        maxq[0] = max(maxq[0], len(pending))
                    if not pending:
                        continue
                    h.poll(1000)
                    with lock:
                        for ck in list(pending):
                            try:
                                done = h.aio_command_completed(ck)
                                e = None
                            except nbd.Error as err:
                                done, e = True, err
                            if not done:
                                continue
                            ctx = pending.pop(ck)
                            busy.pop((ci, ck), None)
                            self.complete(ctx, e)
                    if h.aio_is_dead() or h.aio_is_closed():
                        raise Failure("connection %d lost in the aio phase" % ci)
            except Exception as e:              # Failure, or nbd.Error when the server is gone
                errors.append(e)
            finally:
                self.drain(h)

        threads = [threading.Thread(target=worker, args=(ci, h, nops // len(hs))) for ci, h in enumerate(hs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return maxq[0]

    def verify_all(self, h, label):
        """Reads back the data ranges (and, on small exports, everything)."""
        if self.size <= 1 << 20:
            ranges = [(0, self.size)]
        else:
            ranges = self.model.data_ranges()
            extra = [(0, 65536), (self.size - 65536, self.size)]
            ranges = ranges + extra
        for s, e in ranges:
            pos = s
            while pos < e:
                n = min(e - pos, 8 << 20)
                got = h.pread(n, pos)
                bad, k = self.model.check(pos, got)
                self.verified += k
                if bad is not None:
                    self.fail("%s: byte %d reads 0x%02x, the model has %s" % (
                        label, bad, got[bad - pos], self.describe(bad)))
                    break
                pos += n

    def check_file(self):
        """After nbdkit exits: the file plugin's file holds every known byte."""
        with open(self.file, "rb") as f:
            for s, e, k, d in self.model.segs:
                if k == "u" or (k == "z" and e - s > 1 << 20):
                    continue
                f.seek(s)
                got = f.read(e - s)
                want = d if k == "d" else bytes(e - s)
                if got != want:
                    first = next((i for i in range(len(got)) if got[i] != want[i]), len(got))
                    self.fail("the file differs from the model at %d (%s segment %d..%d) after exit" % (
                        s + first, "data" if k == "d" else "zero", s, e))
                    return

    def main(self):
        import nbd
        t0 = time.monotonic()
        self.start()
        maxq = 0
        try:
            h = self.connect()
            h2 = self.connect()
            try:
                rounds = 4
                for k in range(rounds):
                    part = self.a.ops // rounds
                    nsync = part * 2 // 5
                    self.phase_sync(h, nsync)
                    self.alive("after synchronous batch %d" % k)
                    # odd rounds: a second connection at once (the cache is shared)
                    hs = [h] if k % 2 == 0 else [h, h2]
                    maxq = max(maxq, self.phase_aio(hs, part - nsync, self.r.choice([4, 16, 32, 64])))
                    self.alive("after aio batch %d" % k)
                self.note("verify")
                self.verify_all(h, "read-back")
                if self.caps["flush"]:
                    h.flush()
            finally:
                for x in (h, h2):
                    self.close(x)
            self.alive("after the first connections closed")
            h = self.connect()
            try:
                self.verify_all(h, "read-back on a new connection")
            finally:
                self.close(h)
            self.alive("at the end")
        except nbd.Error as e:
            self.fail("unexpected libnbd error: %s (last request: %s)" % (e, self.last))
        except Failure as e:
            self.fail(str(e) + " (last: %s)" % self.last)
        finally:
            if self.proc.poll() is None:
                self.stop()
            else:
                self.fail("nbdkit is gone (status %s): %r" % (self.proc.returncode,
                                                             open(self.logpath, "rb").read()[-800:]))
        if self.kind == "file" and (self.mode != "unsafe" or self.a.filter == "none"):
            self.check_file()
        secs = time.monotonic() - t0
        return dict(name=self.name, sent=self.sent, errnos=self.errnos, verified=self.verified,
                    fails=len(self.fails), secs=round(secs, 2), maxq=maxq, segments=len(self.model.segs),
                    kinds=self.kinds)


# ------------------------------------------------------------------ driver
def one(a):
    run = Run(a, a.config)
    try:
        res = run.main()
    except Exception as e:                    # a bug of this script, or the server gone
        import traceback
        traceback.print_exc()
        res = dict(name=a.config, sent=run.sent, errnos=run.errnos, verified=run.verified,
                   fails=len(run.fails) + 1, secs=0, maxq=0, segments=0, kinds=dict(run.kinds, script=1))
    print("RESULT " + json.dumps(res), flush=True)
    return 1 if res["fails"] else 0


def fmt(d):
    return ", ".join("%s %d" % kv for kv in sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))


def run_all(a):
    import concurrent.futures
    names = {"all": all_configs(), "default": default_configs()}.get(a.configs) or a.configs.split(",")
    seed = a.seed if a.seed is not None else str(random.randrange(1 << 32))
    print("fuzz-requests: seed %s, %d configurations, %d requests each, %d at once, filter %s" % (
        seed, len(names), a.ops, a.jobs, a.filter), flush=True)
    t0 = time.monotonic()
    me = os.path.abspath(__file__)

    def child(name):
        cmd = ["/usr/bin/python3", me, "one", "--filter", a.filter, "--work", a.work, "--seed", seed,
               "--ops", str(a.ops), "--config", name, "--commands", a.commands]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=a.config_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)        # the client and its nbdkit
            out, _ = p.communicate()
            try:
                last = open(os.path.join(a.work, name, "progress")).read().strip()
            except OSError:
                last = "?"
            out += ("FAIL %s: timed out after %d s (hang?); last request: %s\n" % (
                name, a.config_timeout, last)).encode()
            return name, out.decode("utf-8", "replace"), None
        text = out.decode("utf-8", "replace")
        res = None
        for line in text.splitlines():
            if line.startswith("RESULT "):
                res = json.loads(line[7:])
        return name, text, res

    sent, errnos, verified, nfail, bad, kinds = {}, {}, 0, 0, [], {}
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        for name, text, res in ex.map(child, names):
            for line in text.splitlines():
                if not line.startswith("RESULT "):
                    print("    " + line[:600], flush=True)
            if res is None:
                nfail += 1
                bad.append(name)
                print("%-28s no result (crashed or timed out)" % name, flush=True)
                continue
            for k, v in res["sent"].items():
                sent[k] = sent.get(k, 0) + v
            for k, v in res["errnos"].items():
                errnos[k] = errnos.get(k, 0) + v
            verified += res["verified"]
            for k, v in res.get("kinds", {}).items():
                kinds[k] = kinds.get(k, 0) + 1          # configurations with this kind of failure
            if res["fails"]:
                nfail += 1
                bad.append(name)
            print("%-28s %s %5.1fs %5d requests, %3d max in flight, %12d bytes verified%s" % (
                name, "FAIL" if res["fails"] else "ok  ", res["secs"], sum(res["sent"].values()), res["maxq"],
                res["verified"], " (%d failures)" % res["fails"] if res["fails"] else ""), flush=True)
    print("fuzz-requests: requests sent: %s (total %d)" % (fmt(sent), sum(sent.values())))
    print("fuzz-requests: replies: %s" % fmt(errnos))
    if kinds:
        print("fuzz-requests: configurations failing by kind: %s" % fmt(kinds))
    print("fuzz-requests: %d bytes verified; %d of %d configurations failed%s; %.1f s; seed %s" % (
        verified, nfail, len(names), (" (" + " ".join(bad) + ")") if bad else "", time.monotonic() - t0, seed),
        flush=True)
    return 1 if nfail else 0


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["run", "one"])
    ap.add_argument("--filter", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seed", default=None)
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--configs", default="default")
    ap.add_argument("--config", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--config-timeout", type=int, default=60)
    ap.add_argument("--commands", default="")
    a = ap.parse_args()
    if a.commands:
        ONLY_COMMANDS.intersection_update(a.commands.split(","))
    a.work = os.path.abspath(a.work)
    os.makedirs(a.work, exist_ok=True)
    if a.cmd == "one":
        return one(a)
    return run_all(a)


if __name__ == "__main__":
    sys.exit(main())
