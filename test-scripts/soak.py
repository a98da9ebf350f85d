#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""swiftcache fault soak (issue 10: "prove it never loses a byte").

Run with the system python (the nbd module only works there):

    /usr/bin/python3 test-scripts/soak.py                 # the full soak (make soak)
    /usr/bin/python3 test-scripts/soak.py --quick         # the short one (test-soak.sh)
    FILTER=cache /usr/bin/python3 test-scripts/soak.py    # against nbdkit's C cache filter

Phases (--phases, comma separated; default soak,crash,resources,export-names):

soak          For each configuration (cache mode x cache-min-block-size x
              cache-max-size x cache directory), nbdkit serves a sparse file
              through   FILTER -> error -> flushfault -> delay -> file
              (the error filter fails ~10% of plugin reads, writes, zeroes,
              trims and some block status calls with EIO or ENOSPC, the
              flushfault filter (flushfault.c, built here) ~10% of plugin
              flushes; the delay filter slows plugin reads and writes by a few
              ms).  Many libnbd handles, each with many aio requests in
              flight, mix unaligned reads, writes (some FUA, some all-zero),
              zeroes (with and without MAY_TRIM, some FAST_ZERO), trims,
              cache requests, block status and flushes, from 1 byte to 3 MiB
              and now and then 8-33 MiB (block status: up to the whole
              export); every half second or so one connection drains,
              disconnects (its .finalize writes back while the others go on)
              and a new one takes its place.  A range-lock table
              in the client gives every in-flight request that changes data
              sole ownership of its bytes, so every read has exactly one
              right answer.  The model records every acknowledged write; a
              failed write/zero (or any trim) makes its range unknown until a
              later successful write or zero covers it.  Every successful
              read must match the model where known; block status must never
              call a byte the model knows to be non-zero a hole or zero.
              Between two load phases, with no connection open, the backing
              file grows (its size is not a multiple of any block size).  For
              part of some runs the cache directory is a tmpfs nearly filled
              by a ballast file; in others it is a tiny tmpfs.  At the end:
              faults off, one flush (retried), the whole export read back
              (must match the model), and in writeback and writethrough the
              backing file must equal the model byte for byte where known,
              and equal what the filter returned everywhere else (the cache
              and the plugin must agree after a flush).  In unsafe mode,
              which ignores flush, only the reads are checked.  nbdkit must
              exit with status 0, no crash in its log, and (writeback,
              writethrough) no dirty blocks left.  Configurations named
              *-nofaults inject nothing: there, no request may fail at all
              (a full cache directory is not the client's problem).
crash         A write load on several connections (whole "slots" at
              unaligned offsets rewritten with new generations, flushes, FUA
              writes), nbdkit SIGKILLed at a random moment, then restarted on
              the same file.  Every slot must hold, in every 4 KiB page, its
              last durable generation or a later one that was issued: durable
              = acknowledged in writethrough, acknowledged with FUA, or
              acknowledged before a flush was sent that then succeeded
              (NBD's flush semantics: a flush covers the writes completed
              before it was sent, on any connection - multi-conn).
resources     1,000 connections (most one after another, some concurrently),
              each doing read, write, zero, trim, cache, block status and
              flush: nbdkit's open fds and threads must not grow at all, RSS
              by at most --rss-margin MiB (default 8), measured after a
              warm-up of 50 connections and after the 1,000 (and half-way,
              printed).  Why 8 MiB: glibc keeps freed memory in its arenas
              (up to 8 per core; nbdkit runs 16 threads per connection) and
              trims them lazily, so RSS may creep by a few MiB with no leak
              (about 1 MiB here); a leak of 8 KiB per connection or more
              exceeds it.
export-names  The same with a different export name per connection (memory
              plugin, which ignores the name; the warm-up under one name):
              fds must stay within --fd-margin (default 70) of the baseline,
              RSS within 64 MiB, and
              every connection's data must read back right and reach the
              plugin (the filter keeps at most 64 exports' caches open).

Exit status: 0 when nothing was lost; 1 on any loss, mismatch or failed
check; 2 when nbdkit crashed or the soak could not run.
--drop-write is the soak's own self-test: it leaves one acknowledged write
out of the model, and the soak must then report a mismatch.
"""
import argparse
import errno
import os
import random
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import nbd

K = 1024
M = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ZEROES = bytes(8 * M)
KNOWN_RUN = re.compile(rb"\x00+")
NONZERO_MASK_RUN = re.compile(rb"[^\x00]+")
# A crash or an assertion in nbdkit or the filter (not the delay filter's
# "aborting sleep because of connection close").
CRASH_PATTERN = re.compile(r"assertion|Fatal error|SIGSEGV|SIGABRT|Segmentation|core dumped|panic|Aborted"
                           r"|terminate called|Illegal instruction", re.I)
INJECT_PATTERN = re.compile(r"injecting (\w+) error into (\w+)")

UNKNOWN_FAILED = 1   # a write or zero that failed: old or new content
UNKNOWN_TRIM = 2     # a trim (successful or not): anything


def completed(cl):
    """The commands of client cl that have completed, as (op, error or None), in the order libnbd gives."""
    while cl.pending:
        ck = cl.h.aio_peek_command_completed()
        if ck <= 0:
            return
        op = cl.pending.pop(ck)
        err = None
        try:
            cl.h.aio_command_completed(ck)
        except nbd.Error as e:
            err = e
        yield op, err

class BufferPool:
    """Buffers for aio_pread/aio_pwrite.  libnbd 1.14's Python binding never
    releases the buffer object of an aio_pread/aio_pwrite (every request's
    buffer stayed alive: the full soak reached 24 GB and was OOM-killed), so
    the data goes through reused bytearrays (one per power-of-two size class
    and request in flight) and only a small memoryview object leaks per
    request."""

    def __init__(self):
        self.free = {}

    def get(self, n):
        size = max(4096, 1 << (n - 1).bit_length())
        lst = self.free.setdefault(size, [])
        return lst.pop() if lst else bytearray(size)

    def reader(self, n):
        """(bytearray to give back with put, memoryview of n bytes to read into)"""
        ba = self.get(n)
        return ba, memoryview(ba)[:n]

    def writer(self, data):
        """(bytearray to give back with put, memoryview holding a copy of data)"""
        n = len(data)
        ba = self.get(n)
        ba[:n] = data
        return ba, memoryview(ba)[:n]

    def put(self, ba):
        if ba is not None:
            self.free[len(ba)].append(ba)


POOL = BufferPool()


class SoakError(Exception):
    """The soak could not run, or nbdkit crashed (exit status 2)."""


def fmt_bytes(n):
    if n >= 10 * 1024 * M:
        return "%.1f GiB" % (n / 1024 / M)
    if n >= M:
        return "%.1f MiB" % (n / M)
    if n >= 10 * K:
        return "%.1f KiB" % (n / K)
    return "%d bytes" % n


def parse_size(s):
    if s is None:
        return None
    m = re.fullmatch(r"(\d+)([KMG]?)", s)
    return int(m.group(1)) * {"": 1, "K": K, "M": M, "G": 1024 * M}[m.group(2)]


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------- nbdkit
class Server:
    """One nbdkit in the foreground (-f), its pid being our child's."""

    def __init__(self, ctx, name, args, tmpdir=None):
        self.ctx = ctx
        self.name = name
        self.sock = os.path.join(ctx.sockdir, name + ".sock")   # short: sun_path has 108 bytes
        self.logfile = os.path.join(ctx.tmp, name + ".log")
        pidfile = os.path.join(ctx.tmp, name + ".pid")
        for f in (self.sock, pidfile):
            if os.path.exists(f):
                os.unlink(f)
        env = dict(os.environ)
        env["TMPDIR"] = self.tmpdir = tmpdir or ctx.cachedir
        self.cmd = ["nbdkit", "-f", "-U", self.sock, "-P", pidfile] + args
        self.logf = open(self.logfile, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        for _ in range(400):
            if os.path.exists(pidfile) and os.path.exists(self.sock):
                break
            if self.proc.poll() is not None:
                raise SoakError("nbdkit %s exited during start-up (status %s): %s\n%s"
                                % (name, self.proc.returncode, " ".join(self.cmd), self.tail()))
            time.sleep(0.025)
        else:
            self.proc.kill()
            raise SoakError("nbdkit %s did not start: %s" % (name, self.tail()))

    def tail(self, n=15):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join("    | " + x for x in f.readlines()[-n:])
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise SoakError("nbdkit %s died (status %s):\n%s" % (self.name, self.proc.returncode, self.tail()))

    def stop(self):
        """SIGTERM and wait; returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stacks = self.stacks()
            self.proc.kill()
            self.proc.wait()
            raise SoakError("nbdkit %s did not exit within 60 s of SIGTERM; its threads:\n%s" % (self.name, stacks))
        self.logf.close()
        return rc

    def stacks(self):
        """The stacks of nbdkit's threads (gdb), for a hang; saved next to the log."""
        if not shutil.which("gdb"):
            return "(no gdb)"
        out = subprocess.run(["gdb", "-p", str(self.pid), "-batch", "-ex", "thread apply all bt"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120).stdout.decode(
                                 errors="replace")
        path = self.logfile + ".stacks"
        with open(path, "w") as f:
            f.write(out)
        keep = [x for x in out.splitlines() if x.startswith(("Thread ", "#"))]
        return "\n".join("    | " + x for x in keep[:80]) + "\n    (all in %s)" % path

    def cache_alloc(self):
        """Allocated bytes of the (unlinked) cache files nbdkit holds in its TMPDIR."""
        total = 0
        d = "/proc/%d/fd" % self.pid
        try:
            fds = os.listdir(d)
        except OSError:
            return 0
        for fd in fds:
            try:
                t = os.readlink(os.path.join(d, fd))
                if t.startswith(self.tmpdir + "/") and t.endswith(" (deleted)"):
                    total += os.stat(os.path.join(d, fd)).st_blocks * 512
            except OSError:
                pass
        return total

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.logf.close()

    def connect(self, export=None, meta=True):
        h = nbd.NBD()
        if meta:
            h.add_meta_context("base:allocation")
        if export is not None:
            h.set_export_name(export)
        h.connect_unix(self.sock)
        return h

    def logtext(self):
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def resources(self):
        """(open fds, threads, RSS in KiB) of nbdkit now."""
        fds = len(os.listdir("/proc/%d/fd" % self.pid))
        threads = rss = 0
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("Threads:"):
                    threads = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return fds, threads, rss


def close_handle(h):
    """Close a libnbd handle now (its socket with it); libnbd 1.14's Python
    binding has no close(), only __del__."""
    if hasattr(h, "close"):
        h.close()
    elif hasattr(h, "_o"):
        h.__del__()
        del h._o


def crash_lines(text):
    return [x for x in text.splitlines() if CRASH_PATTERN.search(x) and "injecting" not in x]


# ----------------------------------------------------------------- model
class Model:
    """What the export must hold: data, and a mask of the unknown bytes."""

    def __init__(self, data):
        self.data = bytearray(data)
        self.mask = bytearray(len(data))
        self.size = len(data)

    def resize(self, size):
        if size < self.size:
            del self.data[size:]
            del self.mask[size:]
        else:
            self.data.extend(bytes(size - self.size))
            self.mask.extend(bytes(size - self.size))
        self.size = size

    def write(self, off, data):
        n = len(data)
        self.data[off:off + n] = data
        self.mask[off:off + n] = ZEROES[:n] if n <= len(ZEROES) else bytes(n)

    def zero(self, off, n):
        z = ZEROES[:n] if n <= len(ZEROES) else bytes(n)
        self.data[off:off + n] = z
        self.mask[off:off + n] = z

    def forget(self, off, n, why):
        self.mask[off:off + n] = bytes([why]) * n

    def known_runs(self, off, end):
        """[(a, b)] of the known bytes in off..end."""
        if self.mask.count(0, off, end) == end - off:
            return [(off, end)]
        return [m.span() for m in KNOWN_RUN.finditer(self.mask, off, end)]

    def unknown_runs(self, off, end):
        return [m.span() for m in NONZERO_MASK_RUN.finditer(self.mask, off, end)]


def first_diff(a, b):
    """Index of the first differing byte of two equal-length byte strings
    known to differ."""
    lo, hi = 0, len(a)
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return None


def diff_run(a, b, i, limit=1 << 20):
    """Length of the run of differing bytes from i (capped)."""
    j = i
    end = min(len(a), i + limit)
    while j < end and a[j] != b[j]:
        j += 1
    return j - i


# ----------------------------------------------------------------- soak
class Op:
    __slots__ = ("kind", "off", "n", "buf", "flags", "data", "extents", "seq", "conn", "locked", "t", "exp",
                 "pooled")

    def __init__(self, kind, off, n, flags=0, buf=None, data=None, locked=None):
        self.kind, self.off, self.n, self.flags = kind, off, n, flags
        self.buf, self.data, self.locked = buf, data, locked
        self.extents = None
        self.seq = self.conn = 0
        self.t = 0.0
        self.exp = None
        self.pooled = None        # the BufferPool bytearray behind buf (read) or a copy of data (write)


class Client:
    def __init__(self, idx, h, exp=None):
        self.idx = idx
        self.h = h
        self.exp = exp
        self.fd = h.aio_get_fd()
        self.pending = {}
        self.closing = False
        self.can_trim = h.can_trim()
        self.can_fua = h.can_fua()
        self.can_fast_zero = h.can_fast_zero()
        self.can_cache = h.can_cache()
        self.can_flush = h.can_flush()
        self.can_zero = h.can_zero()
        self.can_meta = h.can_meta_context("base:allocation")


class Counters:
    KINDS = ("read", "write", "zero", "trim", "cache", "block-status", "flush")

    def __init__(self):
        self.ok = {k: 0 for k in self.KINDS}
        self.err = {k: 0 for k in self.KINDS}
        self.errnos = {}
        self.fua = 0
        self.fast_zero = 0
        self.fast_zero_enotsup = 0
        self.may_trim = 0
        self.zero_writes = 0
        self.bytes_verified = 0
        self.bytes_unverified = 0
        self.extents_checked = 0
        self.max_inflight = 0
        self.reconnects = 0

    def add(self, o):
        for k in self.KINDS:
            self.ok[k] += o.ok[k]
            self.err[k] += o.err[k]
        for k, v in o.errnos.items():
            self.errnos[k] = self.errnos.get(k, 0) + v
        for a in ("fua", "fast_zero", "fast_zero_enotsup", "may_trim", "zero_writes", "bytes_verified",
                  "bytes_unverified", "extents_checked", "reconnects"):
            setattr(self, a, getattr(self, a) + getattr(o, a))
        self.max_inflight = max(self.max_inflight, o.max_inflight)

    def ops(self):
        return sum(self.ok.values()) + sum(self.err.values())

    def line(self):
        parts = ["%s %d" % (k, self.ok[k] + self.err[k]) for k in self.KINDS]
        return "%d ops (%s; %d FUA, %d FAST_ZERO, %d zeroes with MAY_TRIM, %d all-zero writes; %d reconnects)" % (
            self.ops(), ", ".join(parts), self.fua, self.fast_zero, self.may_trim, self.zero_writes, self.reconnects)

    def err_line(self):
        total = sum(self.err.values())
        if not total:
            return "0"
        by_kind = ", ".join("%s %d" % (k, self.err[k]) for k in self.KINDS if self.err[k])
        by_errno = ", ".join("%s %d" % kv for kv in sorted(self.errnos.items()))
        return "%d (%s; %s)" % (total, by_kind, by_errno)


class Export:
    """One export of a soak configuration: its file, its model, the client's
    range locks on it and the history of its changes (for diagnosis)."""

    def __init__(self, name, path, data):
        self.name = name          # export name (None: a single file, no name sent)
        self.path = path
        self.model = Model(data)
        self.initial = bytes(data)   # for diagnosis only
        self.size = len(data)
        self.edges = []           # earlier ends of the export: requests gather around them
        self.locks = {}           # seq -> (off, end, exclusive)
        self.history = []         # (seq, conn, kind, off, n, result) of data-changing requests
        self.hot = (0, 0)
        self.file_checked = False

    def label(self):
        return "" if self.name is None else "export %s: " % self.name

    def resize(self, size):
        """The backing file and the model change size (no connection open)."""
        old = self.size
        os.truncate(self.path, size)
        self.model.resize(size)
        self.size = size
        self.edges.append(min(old, size))
        self.hot = (min(self.hot[0], size - 1), min(self.hot[1], size))


class Soak:
    """One configuration of the fault soak."""

    def __init__(self, ctx, cfg):
        self.ctx = ctx
        self.cfg = cfg
        self.name = cfg["name"]
        self.r = random.Random("%s/%s" % (ctx.seed, self.name))
        self.c = Counters()
        self.failures = []       # loss/mismatch messages
        self.warnings = []
        self.exports = []
        self.seq = 0
        self.drop_at = None      # --drop-write: time after which one write is left out of the model
        self.dropped = None
        self.peak_alloc = 0
        self.nconn = 0
        self.churn = ctx.churn   # mean seconds between two reconnects (0: none)
        self.faults = {}
        self.secs = 0

    # ---- ranges
    @staticmethod
    def conflicts(exp, off, end, excl):
        for o, e, x in exp.locks.values():
            if o < end and off < e and (excl or x):
                return True
        return False

    def pick_len(self, exp, kind):
        x = self.r.random()
        if kind == "block-status":
            if x < 0.02:
                return exp.size     # the whole export
            return self.r.choice([self.r.randint(1, 70000), self.r.randint(1, 2 * M), self.r.randint(M, 6 * M)])
        if x < 0.004 and kind != "cache":  # huge: write-back and plugin requests split at 32 MiB
            return self.r.randint(8 * M, 33 * M + 5)
        if x < 0.42:
            return self.r.randint(1, 4200)
        if x < 0.72:
            return self.r.randint(4000, 70000)
        if x < 0.93:
            return self.r.randint(60000, 600000)
        return self.r.randint(500000, 3 * M + 1000)

    def pick_range(self, exp, kind):
        r, size = self.r, exp.size
        x = r.random()
        n = self.pick_len(exp, kind)
        if n >= 8 * M:
            off = r.randrange(0, max(1, size - n)) if r.random() < 0.5 else r.randrange(size)
            return off, max(1, min(n, size - off))
        if x < 0.35:          # hot: many requests on the same few blocks
            lo, hi = exp.hot
        elif x < 0.55 and exp.edges:   # around an earlier end of the export, and past it
            e = r.choice(exp.edges)
            lo, hi = max(0, e - 2 * M), min(size, e + 4 * M)
        else:
            lo, hi = 0, size
        off = r.randrange(lo, hi)
        return off, max(1, min(n, size - off))

    # ---- issuing
    def issue(self, cl):
        r = self.r
        exp = cl.exp
        x = r.random()
        if x < 0.30:
            kind = "read"
        elif x < 0.58:
            kind = "write"
        elif x < 0.66:
            kind = "zero"
        elif x < 0.71:
            kind = "trim"
        elif x < 0.76:
            kind = "cache"
        elif x < 0.94:
            kind = "block-status"
        else:
            kind = "flush"
        if kind == "trim" and not cl.can_trim or kind == "cache" and not cl.can_cache or \
                kind == "block-status" and not cl.can_meta or kind == "flush" and not cl.can_flush or \
                kind == "zero" and not cl.can_zero:
            kind = "read"
        self.seq += 1
        seq = self.seq
        h = cl.h
        if kind == "flush":
            op = Op(kind, 0, 0)
            ck = h.aio_flush()
        elif kind == "cache":      # no lock: a cache request changes no data, and may race with writes
            off, n = self.pick_range(exp, kind)
            op = Op(kind, off, n)
            ck = h.aio_cache(n, off)
        else:
            excl = kind in ("write", "zero", "trim")
            for _ in range(4):
                off, n = self.pick_range(exp, kind)
                if not self.conflicts(exp, off, off + n, excl):
                    break
            else:
                self.seq -= 1
                return False
            exp.locks[seq] = (off, off + n, excl)
            if kind == "read":
                ba, buf = POOL.reader(n)
                op = Op(kind, off, n, buf=buf)
                op.pooled = ba
                ck = h.aio_pread(nbd.Buffer.from_buffer(buf), off)
            elif kind == "write":
                y = r.random()
                if y < 0.08:
                    data = bytes(n)
                    self.c.zero_writes += 1
                elif y < 0.12:
                    data = (bytes(r.randrange(1, 256) for _ in range(7)) * (n // 7 + 1))[:n]
                else:
                    data = r.randbytes(n)
                flags = 0
                if cl.can_fua and r.random() < 0.12:
                    flags |= nbd.CMD_FLAG_FUA
                    self.c.fua += 1
                op = Op(kind, off, n, flags=flags, data=data)
                op.pooled, mv = POOL.writer(data)
                ck = h.aio_pwrite(nbd.Buffer.from_buffer(mv), off, flags=flags)
            elif kind == "zero":
                flags = 0
                if r.random() < 0.5:
                    flags |= nbd.CMD_FLAG_NO_HOLE
                else:
                    self.c.may_trim += 1
                if cl.can_fast_zero and r.random() < 0.2:
                    flags |= nbd.CMD_FLAG_FAST_ZERO
                    self.c.fast_zero += 1
                if cl.can_fua and r.random() < 0.1:
                    flags |= nbd.CMD_FLAG_FUA
                    self.c.fua += 1
                op = Op(kind, off, n, flags=flags)
                ck = h.aio_zero(n, off, flags=flags)
            elif kind == "trim":
                flags = nbd.CMD_FLAG_FUA if cl.can_fua and r.random() < 0.1 else 0
                op = Op(kind, off, n, flags=flags)
                ck = h.aio_trim(n, off, flags=flags)
            else:  # block-status
                flags = nbd.CMD_FLAG_REQ_ONE if r.random() < 0.25 else 0
                op = Op(kind, off, n, flags=flags)
                op.extents = []
                ext = op.extents

                def cb(meta, o, entries, err, ext=ext):
                    if meta == "base:allocation":
                        ext.append((o, list(entries)))
                    return 0
                ck = h.aio_block_status(n, off, cb, flags=flags)
            op.locked = seq
        op.seq = seq
        op.conn = cl.idx
        op.exp = exp
        op.t = time.monotonic()
        cl.pending[ck] = op
        return True

    # ---- completion
    def complete(self, op, e):
        kind = op.kind
        exp = op.exp
        model = exp.model
        if op.locked:
            del exp.locks[op.locked]
        if e is not None:
            self.c.err[kind] += 1
            name = e.errno or str(e.errnum)
            self.c.errnos[name] = self.c.errnos.get(name, 0) + 1
            if kind == "zero" and op.flags & nbd.CMD_FLAG_FAST_ZERO and e.errnum == errno.ENOTSUP:
                self.c.fast_zero_enotsup += 1      # changes nothing
                return
            if not self.cfg.get("faults", True):
                # no plugin fault: a full cache directory is not the client's problem (SPEC 8)
                self.fail("ERROR", "%s%s %d+%d (request %d, connection %d) failed with no fault injected: %s" % (
                    exp.label(), kind, op.off, op.n, op.seq, op.conn, e))
            if kind in ("write", "zero"):
                model.forget(op.off, op.n, UNKNOWN_FAILED)
                exp.history.append((op.seq, op.conn, kind, op.off, op.n, "failed " + name))
            elif kind == "trim":
                model.forget(op.off, op.n, UNKNOWN_TRIM)
                exp.history.append((op.seq, op.conn, kind, op.off, op.n, "failed " + name))
            return
        self.c.ok[kind] += 1
        if kind == "read":
            self.verify(exp, op.off, op.buf, "read by connection %d (request %d)" % (op.conn, op.seq))
        elif kind == "write":
            if self.drop_at is not None and self.dropped is None and time.monotonic() >= self.drop_at \
                    and op.n >= 4096 and model.data[op.off:op.off + op.n] != op.data \
                    and model.mask.count(0, op.off, op.off + op.n) == op.n:   # all known: the loss must show
                self.dropped = (op.off, op.n)
                log("    self-test: left the acknowledged write %d+%d (request %d) out of the model"
                    % (op.off, op.n, op.seq))
            else:
                model.write(op.off, op.data)
            exp.history.append((op.seq, op.conn, kind, op.off, op.n, "ok"))
        elif kind == "zero":
            model.zero(op.off, op.n)
            exp.history.append((op.seq, op.conn, kind, op.off, op.n, "ok"))
        elif kind == "trim":
            model.forget(op.off, op.n, UNKNOWN_TRIM)
            exp.history.append((op.seq, op.conn, kind, op.off, op.n, "ok"))
        elif kind == "block-status":
            self.verify_extents(op)

    def fail(self, tag, msg):
        self.failures.append(msg)
        if len(self.failures) <= 5:
            log("    %s %s" % (tag, msg))

    @staticmethod
    def who_touched(exp, off):
        found = []
        for rec in reversed(exp.history):
            if rec[3] <= off < rec[3] + rec[4]:
                found.append("%s %d+%d by connection %d (request %d): %s" % (rec[2], rec[3], rec[4], rec[1],
                                                                             rec[0], rec[5]))
                if len(found) == 3:
                    break
        return "; ".join(found) or "never written in this run"

    def mismatch(self, exp, what, off, want, got, i):
        w = min(len(want) - i, 65536)
        diff = [j for j in range(i, i + w) if want[j] != got[j]]
        last = diff[-1] + 1
        a = off + i
        kind = ("zeroes" if not any(got[i:last]) else
                "the file's initial content" if exp.initial[a:off + last] == got[i:last] else "other data")
        self.fail("MISMATCH", "%s%s: byte %d: expected %s, got %s (%s; %d of the next %d bytes differ, the last at "
                  "%d); last changes there: %s" % (exp.label(), what, a, bytes(want[i:i + 8]).hex(),
                                                   bytes(got[i:i + 8]).hex(), kind, len(diff), w, off + last - 1,
                                                   self.who_touched(exp, a)))

    def verify(self, exp, off, got, what):
        """Compare bytes read at off with the model where it knows them."""
        n = len(got)
        model = exp.model
        runs = model.known_runs(off, off + n)
        for a, b in runs:
            want = model.data[a:b]
            seg = got[a - off:b - off]
            if seg != want:
                self.mismatch(exp, what, a, want, seg, first_diff(want, seg))
                return False
            self.c.bytes_verified += b - a
        self.c.bytes_unverified += n - sum(b - a for a, b in runs)
        return True

    def verify_extents(self, op):
        exp = op.exp
        req_end = op.off + op.n
        for o, entries in op.extents:
            if o != op.off:
                self.fail("MISMATCH", "%sblock status %d+%d: extents start at %d" % (exp.label(), op.off, op.n, o))
            pos = o
            for i in range(0, len(entries), 2):
                length, flags = entries[i], entries[i + 1]
                a, b = max(pos, op.off), min(pos + length, req_end)
                if flags & (nbd.STATE_HOLE | nbd.STATE_ZERO) and a < b:
                    self.c.extents_checked += 1
                    for ka, kb in exp.model.known_runs(a, b):
                        seg = exp.model.data[ka:kb]
                        if seg.count(0) != kb - ka:
                            j = next(j for j in range(kb - ka) if seg[j])
                            what = "+".join(x for x, bit in (("hole", nbd.STATE_HOLE), ("zero", nbd.STATE_ZERO))
                                            if flags & bit)
                            self.fail("MISMATCH", "%sblock status (request %d, connection %d) reports %d..%d as %s, "
                                      "but the model has data at %d (byte %02x); last changes there: %s"
                                      % (exp.label(), op.seq, op.conn, pos, pos + length, what, ka + j, seg[j],
                                         self.who_touched(exp, ka + j)))
                            return
                pos += length

    # ---- the load
    def connect(self, server, exp):
        self.nconn += 1
        return Client(self.nconn - 1, server.connect(export=exp.name), exp)

    def run_load(self, server, seconds, conns, qd, events=(), last=False):
        clients = [self.connect(server, self.exports[i % len(self.exports)]) for i in range(conns)]
        for cl in clients:
            if cl.h.get_size() != cl.exp.size:
                self.fail("MISMATCH", "%sa new connection sees size %d, the file has %d"
                          % (cl.exp.label(), cl.h.get_size(), cl.exp.size))
        byfd = {cl.fd: cl for cl in clients}
        start = time.monotonic()
        deadline = start + seconds
        events = sorted(events)
        last_alive = start
        next_churn = start + self.r.expovariate(1 / self.churn) if self.churn else None
        while True:
            now = time.monotonic()
            while events and now >= start + events[0][0]:
                events.pop(0)[1]()
            issuing = now < deadline and len(self.failures) < 20
            # connection churn: now and then a connection stops sending, drains,
            # disconnects (its .finalize writes back while the others go on) and
            # a new one takes its place
            if issuing and next_churn is not None and now >= next_churn:
                next_churn = now + self.r.expovariate(1 / self.churn)
                self.r.choice(clients).closing = True
            for i, cl in enumerate(clients):
                if cl.closing and not cl.pending:
                    cl.h.shutdown()
                    close_handle(cl.h)
                    del byfd[cl.fd]
                    self.c.reconnects += 1
                    cl = clients[i] = self.connect(server, self.r.choice(self.exports))
                    byfd[cl.fd] = cl
            if last and not issuing and self.ctx.drop_write and self.drop_at is None:
                # self-test: once no more requests are sent, the next write to
                # complete is left out of the model (nothing can overwrite it)
                self.drop_at = now
            if issuing:
                for cl in clients:
                    while len(cl.pending) < qd and not cl.closing:
                        if not self.issue(cl):
                            break
                inflight = sum(len(cl.pending) for cl in clients)
                self.c.max_inflight = max(self.c.max_inflight, inflight)
            elif not any(cl.pending for cl in clients):
                break
            p = select.poll()
            for cl in clients:
                d = cl.h.aio_get_direction()
                ev = (select.POLLIN if d & nbd.AIO_DIRECTION_READ else 0) | \
                     (select.POLLOUT if d & nbd.AIO_DIRECTION_WRITE else 0)
                if ev:
                    p.register(cl.fd, ev)
            try:
                for fd, ev in p.poll(100):
                    cl = byfd[fd]
                    if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        cl.h.aio_notify_read()
                    if ev & select.POLLOUT:
                        cl.h.aio_notify_write()
            except nbd.Error as e:
                server.check_alive()
                raise SoakError("connection failed: %s" % e)
            for cl in clients:
                for op, err in completed(cl):
                    self.complete(op, err)
                    POOL.put(op.pooled)
            if now - last_alive > 0.25:
                last_alive = now
                server.check_alive()
                self.peak_alloc = max(self.peak_alloc, server.cache_alloc())
                stuck = [op for cl in clients for op in cl.pending.values() if now - op.t > 60]
                if stuck:
                    raise SoakError("a %s request has waited over 60 s (nbdkit hangs?)" % stuck[0].kind)
        for cl in clients:          # everything drained: nbdkit 1.32 aborts on a disconnect with requests in flight
            assert cl.h.aio_in_flight() == 0
            cl.h.shutdown()
            close_handle(cl.h)
        return time.monotonic() - start

    # ---- the whole configuration
    def nbdkit_args(self, plugin_args, faults_file, ff_so):
        cfg = self.cfg
        e1, e2 = ("EIO", "ENOSPC") if self.r.random() < 0.5 else ("ENOSPC", "EIO")
        fault = "%d%%" % cfg.get("fault_pct", 10)
        args = ["--filter=" + self.ctx.filter, "--filter=error", "--filter=" + ff_so, "--filter=delay"]
        if cfg.get("serialize"):    # a thread model other than parallel under the filter
            args[1:1] = ["--filter=noparallel"]
        args += plugin_args + ["cache=" + cfg["mode"], "cache-min-block-size=" + cfg["bs"]]
        if cfg.get("serialize"):
            args.append("serialize=" + cfg["serialize"])
        if cfg.get("max"):
            args.append("cache-max-size=" + cfg["max"])
        if cfg.get("cor"):
            args.append("cache-on-read=true")
        if cfg.get("faults", True):
            args += ["error-file=" + faults_file,
                     "error-pread-rate=" + fault, "error-pread=EIO",
                     "error-pwrite-rate=" + fault, "error-pwrite=" + e1,
                     "error-zero-rate=" + fault, "error-zero=" + e2,
                     "error-trim-rate=" + fault, "error-trim=" + e1,
                     "error-extents-rate=3%", "error-extents=EIO",
                     "flushfault-rate=%d" % cfg.get("fault_pct", 10), "flushfault-error=" + e2,
                     "flushfault-file=" + faults_file]
        args += ["delay-read=%dms" % cfg.get("rdelay", 2), "delay-write=%dms" % cfg.get("wdelay", 3)]
        return args

    def make_disk(self, path, size):
        """A sparse file: random data in some places, holes elsewhere."""
        data = bytearray(size)
        off = 0
        while off < size:
            n = self.r.randint(4096, 1536 * K)
            if self.r.random() < 0.45:
                n = min(n, size - off)
                data[off:off + n] = self.r.randbytes(n)
            off += n + self.r.randint(0, 512 * K)
        with open(path, "wb") as f:
            f.truncate(size)
            # write only the data runs, so the rest stays a hole
            pos = 0
            while pos < size:
                chunk = data[pos:pos + 65536]
                if chunk.count(0) != len(chunk):
                    f.seek(pos)
                    f.write(chunk)
                pos += 65536
        return data

    def run(self):
        ctx, cfg = self.ctx, self.cfg
        t0 = time.monotonic()
        d = os.path.join(ctx.tmp, self.name)
        os.mkdir(d)
        faults = os.path.join(d, "faults-on")
        nexp = cfg.get("exports", 1)
        # sizes that are multiples of no block size; several exports get different sizes
        sizes0 = [cfg.get("size0", 24 * M + 12345) - i * (5 * M + 999) for i in range(nexp)]
        if nexp == 1:
            path = os.path.join(d, "disk.img")
            self.exports = [Export(None, path, self.make_disk(path, sizes0[0]))]
            plugin = ["file", path]
        else:
            edir = os.path.join(d, "exports")
            os.mkdir(edir)
            for i in range(nexp):
                path = os.path.join(edir, "e%d" % i)
                self.exports.append(Export("e%d" % i, path, self.make_disk(path, sizes0[i])))
            plugin = ["file", "dir=" + edir]
        for exp in self.exports:
            h0 = self.r.randrange(0, exp.size - 3 * M)
            exp.hot = (h0, h0 + 2 * M + 4321)
        if cfg.get("faults", True):
            open(faults, "w").close()
        # the cache directory
        cachedir = os.path.join(d, "cache")
        os.mkdir(cachedir)
        tmpfs = cfg.get("tmpfs")
        ballast = os.path.join(cachedir, "ballast")
        if tmpfs:
            if not ctx.in_ns:
                log("    (no mount namespace: the cache directory is not a tmpfs)")
                tmpfs = None
            else:
                subprocess.check_call(["mount", "-t", "tmpfs", "-o", "size=" + ("64M" if tmpfs == "squeeze"
                                                                                  else tmpfs),
                                       "tmpfs", cachedir])
        server = Server(ctx, self.name, self.nbdkit_args(plugin, faults, ctx.flushfault), tmpdir=cachedir)
        secs = cfg["seconds"]

        def squeeze():
            st = os.statvfs(cachedir)
            free = st.f_bavail * st.f_frsize
            n = max(0, free - 1536 * K)
            with open(ballast, "wb") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, n)
                except OSError:
                    pass
            log("    cache directory squeezed: %s ballast, %s free" % (
                fmt_bytes(n), fmt_bytes(os.statvfs(cachedir).f_bavail * os.statvfs(cachedir).f_frsize)))

        def unsqueeze():
            if os.path.exists(ballast):
                os.unlink(ballast)
                log("    cache directory released")

        def resize(what, delta):
            for exp in self.exports:
                exp.resize(exp.size + delta)
            log("    %s the files with no connection open: %s" % (
                what, ", ".join(fmt_bytes(exp.size) for exp in self.exports)))
        # the phases: (share of the time, resize before it)
        if cfg.get("resize", "grow") == "shrink-grow":
            phases = [(0.35, None), (0.3, ("shrank", -(5 * M + 4321))), (0.35, ("grew", 21 * M + 4321 - 3456))]
        else:
            phases = [(0.4, None), (0.6, ("grew", 16 * M + 777 - 12345))]
        conns, qd = cfg.get("conns", ctx.conns), cfg.get("qd", ctx.qd)
        completed = False
        try:
            for i, (share, rs) in enumerate(phases):
                if rs:
                    resize(*rs)
                last = i == len(phases) - 1
                events = [(0.0, squeeze), (secs * share * 0.6, unsqueeze)] if last and tmpfs == "squeeze" else []
                t = self.run_load(server, secs * share, conns, qd, events, last=last)
                log("    phase %s: %.1f s, %d ops" % ("ABC"[i], t, self.c.ops()))
            unsqueeze()
            for exp in self.exports:
                self.final_check(server, exp)
            completed = True
        finally:
            if not completed and server.alive():
                server.kill()
                rc = 0
            elif server.alive():
                rc = server.stop()
            else:
                rc = server.proc.returncode
            text = server.logtext()
            if tmpfs:
                subprocess.call(["umount", cachedir])
        if rc != 0:
            raise SoakError("%s: nbdkit exited with status %s:\n%s" % (self.name, rc, server.tail()))
        bad = crash_lines(text)
        if bad:
            raise SoakError("%s: crash indication in nbdkit's log: %s" % (self.name, bad[:3]))
        dl = [x for x in text.splitlines() if "exiting with" in x and "dirty" in x]
        if cfg["mode"] != "unsafe" and dl:
            self.failures.append("nbdkit exited with dirty blocks after a successful final flush: %s" % dl[0])
        for m in INJECT_PATTERN.finditer(text):
            key = "%s %s" % (m.group(2), m.group(1))
            self.faults[key] = self.faults.get(key, 0) + 1
        if ctx.drop_write and self.dropped is None:
            self.warnings.append("self-test: no write was dropped (run too short?)")
        self.secs = time.monotonic() - t0
        self.summary()

    def final_check(self, server, exp):
        faults = os.path.join(self.ctx.tmp, self.name, "faults-on")
        if os.path.exists(faults):
            os.unlink(faults)
        h = server.connect(export=exp.name)
        flushed = False
        for attempt in range(5):
            try:
                h.flush()
                flushed = True
                break
            except nbd.Error as e:
                self.warnings.append("%sfinal flush attempt %d failed: %s" % (exp.label(), attempt + 1, e))
        if not flushed:
            self.failures.append("%sthe final flush failed 5 times with faults off" % exp.label())
        size = exp.model.size
        if h.get_size() != size:
            self.failures.append("%sexport size %d, expected %d" % (exp.label(), h.get_size(), size))
        image = bytearray()
        for off in range(0, size, 4 * M):
            image += h.pread(min(4 * M, size - off), off)
        self.verify(exp, 0, image, "final read-back")
        h.shutdown()
        close_handle(h)
        if self.cfg["mode"] == "unsafe":
            return
        with open(exp.path, "rb") as f:
            cur = f.read()
        exp.file_checked = True
        if len(cur) != size:
            self.failures.append("%sbacking file size %d, expected %d" % (exp.label(), len(cur), size))
            return
        # known bytes: the file must equal the model
        model = exp.model
        lost = 0
        first = None
        for a, b in model.known_runs(0, size):
            if cur[a:b] != model.data[a:b]:
                want, got = model.data[a:b], cur[a:b]
                i = first_diff(want, got)
                while i is not None:
                    run = diff_run(want, got, i)
                    if first is None:
                        first = (a, want, got, i)
                    lost += run
                    j = i + run
                    i = None if want[j:] == got[j:] else j + first_diff(want[j:], got[j:])
        if lost:
            a, want, got, i = first
            self.mismatch(exp, "backing file after the final flush (%d bytes differ in all)" % lost, a, want, got, i)
        # unknown bytes: after a flush the plugin must hold what the filter serves
        incoherent = {UNKNOWN_FAILED: 0, UNKNOWN_TRIM: 0}
        where = {}
        for a, b in model.unknown_runs(0, size):
            if cur[a:b] != image[a:b]:
                for x in range(a, b):
                    if cur[x] != image[x]:
                        incoherent[model.mask[x]] = incoherent.get(model.mask[x], 0) + 1
                        where.setdefault(model.mask[x], x)
        if incoherent[UNKNOWN_FAILED]:
            x = where[UNKNOWN_FAILED]
            self.failures.append("%safter the flush the filter serves other bytes than the file holds in a range "
                                 "of a failed write: %d bytes, first at %d (file %02x, served %02x); last changes "
                                 "there: %s" % (exp.label(), incoherent[UNKNOWN_FAILED], x, cur[x], image[x],
                                                self.who_touched(exp, x)))
        if incoherent[UNKNOWN_TRIM]:
            x = where[UNKNOWN_TRIM]
            self.warnings.append("%safter the flush the filter serves other bytes than the file holds in trimmed "
                                 "ranges: %d bytes, first at %d (file %02x, served %02x)"
                                 % (exp.label(), incoherent[UNKNOWN_TRIM], x, cur[x], image[x]))
        self.c.bytes_verified += size - sum(b - a for a, b in model.unknown_runs(0, size))

    def summary(self):
        cfg = self.cfg
        faults = sum(self.faults.values())
        fl = ", ".join("%s %d" % kv for kv in sorted(self.faults.items()))
        unknown = sum(b - a for exp in self.exports for a, b in exp.model.unknown_runs(0, exp.model.size))
        total = sum(exp.model.size for exp in self.exports)
        lost = "%d mismatches" % len(self.failures) if self.failures else "0 lost"
        log("  %s: %.0f s, %s" % (self.name, self.secs, self.c.line()))
        log("    faults injected %d (%s); client errors %s; FAST_ZERO refused %d" % (
            faults, fl or "none", self.c.err_line(), self.c.fast_zero_enotsup))
        log("    bytes verified %s (reads and final image%s), %s of reads unknown (failed writes, trims), %d "
            "block-status extents checked, max %d requests in flight; at the end %s of %s%s unknown; %s"
            % (fmt_bytes(self.c.bytes_verified),
               " and backing file" if all(exp.file_checked for exp in self.exports) else "",
               fmt_bytes(self.c.bytes_unverified), self.c.extents_checked, self.c.max_inflight,
               fmt_bytes(unknown), fmt_bytes(total),
               " (%d exports)" % len(self.exports) if len(self.exports) > 1 else "", lost))
        log("    cache file allocation: peak %s seen (sampled 4 times a second; cache-max-size %s, cache directory %s)"
            % (fmt_bytes(self.peak_alloc), cfg.get("max") or "unset",
               {None: "a plain directory", "squeeze": "a 64M tmpfs, nearly full for part of the run"}.get(
                   cfg.get("tmpfs"), "a %s tmpfs" % cfg.get("tmpfs"))))
        for w in self.warnings[:5]:
            log("    note: " + w)


# ----------------------------------------------------------------- crash
class Crash:
    """Write load, SIGKILL, restart, check the durable writes."""

    def __init__(self, ctx, cfg):
        self.ctx = ctx
        self.cfg = cfg
        self.name = cfg["name"]
        self.r = random.Random("%s/%s" % (ctx.seed, self.name))
        self.failures = []
        self.stats = {"writes": 0, "fua": 0, "flushes": 0, "reads": 0, "kills": 0, "inflight_at_kill": 0,
                      "durable_slots": 0, "bytes_checked": 0, "newer_pages": 0, "torn_slots": 0}

    def content(self, rnd, slot, gen):
        if gen == 0:
            return self.base[slot]
        n = self.slots[slot][1]
        return random.Random("%s/%d/%d/%d" % (self.name, rnd, slot, gen)).randbytes(n)

    def run(self):
        ctx, cfg = self.ctx, self.cfg
        t0 = time.monotonic()
        d = os.path.join(ctx.tmp, self.name)
        os.mkdir(d)
        disk = os.path.join(d, "disk.img")
        cachedir = os.path.join(d, "cache")
        os.mkdir(cachedir)
        size = cfg.get("size", 12 * M + 999)
        with open(disk, "wb") as f:
            f.truncate(size)
            f.write(self.r.randbytes(2 * M))
        # slots: unaligned offsets and sizes, from a few bytes to over a MiB
        self.slots = []
        off = 777
        while True:
            x = self.r.random()
            n = (self.r.randint(1, 5000) if x < 0.45 else self.r.randint(4000, 100000) if x < 0.85 else
                 self.r.randint(100000, 1300000))
            if off + n > size:
                break
            self.slots.append((off, n))
            off += n + self.r.choice([0, 0, 1, 4096, 100000])
        args = ["--filter=" + ctx.filter, "--filter=delay", "file", disk, "cache=" + cfg["mode"],
                "cache-min-block-size=" + cfg["bs"], "delay-write=%dms" % cfg.get("wdelay", 1)]
        if cfg.get("max"):
            args.append("cache-max-size=" + cfg["max"])
        for rnd in range(1, cfg["kills"] + 1):
            with open(disk, "rb") as f:
                cur = f.read()
            self.base = [cur[o:o + n] for o, n in self.slots]
            server = Server(ctx, "%s-%d" % (self.name, rnd), args, tmpdir=cachedir)
            # after a restart, the filter must serve what the file holds
            h = server.connect()
            got = h.pread(size, 0)
            h.shutdown()
            close_handle(h)
            if got != cur:
                i = first_diff(cur, got)
                self.failures.append("round %d: a fresh nbdkit serves byte %d as %02x, the file holds %02x"
                                     % (rnd, i, got[i], cur[i]))
            self.round(rnd, server, disk)
            if self.failures:
                break
        self.secs = time.monotonic() - t0
        s = self.stats
        log("  %s: %.0f s, %d kills; %d writes (%d FUA), %d flushes, %d reads; %d writes in flight at the kills; "
            "%d slots durable at the kills, %s of durable data checked in the file; %d pages held newer "
            "(unflushed) generations; %s"
            % (self.name, self.secs, s["kills"], s["writes"], s["fua"], s["flushes"], s["reads"],
               s["inflight_at_kill"], s["durable_slots"], fmt_bytes(s["bytes_checked"]), s["newer_pages"],
               "%d lost" % len(self.failures) if self.failures else "0 lost"))

    def round(self, rnd, server, disk):
        cfg, r = self.cfg, self.r
        nslots = len(self.slots)
        durable = [0] * nslots     # generation the file must hold at least
        acked = [0] * nslots       # newest acknowledged generation
        issued = [0] * nslots      # newest generation sent
        busy = set()
        undurable = set()          # slots with acked > durable
        acked_by = [None] * nslots   # the connection that wrote it
        clients = [Client(i, server.connect()) for i in range(cfg.get("conns", 6))]
        multi_conn = all(cl.h.can_multi_conn() for cl in clients)
        if cfg["mode"] == "writeback" and not multi_conn:
            log("    note: writeback without multi-conn (against the SPEC): flushes count per connection")
        byfd = {cl.fd: cl for cl in clients}
        kill_at = time.monotonic() + r.uniform(0.4, cfg.get("max_kill", 2.5))
        qd = cfg.get("qd", 8)
        fua_rate = cfg.get("fua", 0.0)
        st = self.stats
        while time.monotonic() < kill_at:
            for cl in clients:
                while len(cl.pending) < qd:
                    x = r.random()
                    if x < 0.05:
                        # a flush covers the writes completed before it was sent: on every
                        # connection with multi-conn, else on its own
                        snap = {s: acked[s] for s in undurable if multi_conn or acked_by[s] == cl.idx}
                        ck = cl.h.aio_flush()
                        cl.pending[ck] = ("flush", snap)
                        st["flushes"] += 1
                        continue
                    s = r.randrange(nslots)
                    if s in busy:
                        break
                    busy.add(s)
                    o, n = self.slots[s]
                    if x < 0.25:
                        ba, buf = POOL.reader(n)
                        ck = cl.h.aio_pread(nbd.Buffer.from_buffer(buf), o)
                        cl.pending[ck] = ("read", s, acked[s], buf, ba)
                        st["reads"] += 1
                        continue
                    g = issued[s] + 1
                    issued[s] = g
                    data = self.content(rnd, s, g)
                    flags = 0
                    if r.random() < fua_rate and cl.can_fua:
                        flags = nbd.CMD_FLAG_FUA
                        st["fua"] += 1
                    ba, mv = POOL.writer(data)
                    ck = cl.h.aio_pwrite(nbd.Buffer.from_buffer(mv), o, flags=flags)
                    cl.pending[ck] = ("write", s, g, flags, ba)
                    st["writes"] += 1
            p = select.poll()
            for cl in clients:
                dd = cl.h.aio_get_direction()
                ev = (select.POLLIN if dd & nbd.AIO_DIRECTION_READ else 0) | \
                     (select.POLLOUT if dd & nbd.AIO_DIRECTION_WRITE else 0)
                if ev:
                    p.register(cl.fd, ev)
            for fd, ev in p.poll(20):
                cl = byfd[fd]
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    cl.h.aio_notify_read()
                if ev & select.POLLOUT:
                    cl.h.aio_notify_write()
            for cl in clients:
                for op, err in completed(cl):
                    ok = err is None
                    if not ok:
                        self.failures.append("round %d: %s failed with no fault injected: %s" % (rnd, op[0], err))
                    if op[0] == "flush":
                        if ok:
                            for s, g in op[1].items():
                                if g > durable[s]:
                                    durable[s] = g
                                if acked[s] <= durable[s]:
                                    undurable.discard(s)
                        continue
                    s = op[1]
                    busy.discard(s)
                    if op[0] == "read":
                        if ok and op[3] != self.content(rnd, s, op[2]):
                            self.failures.append("round %d: slot %d read back wrong (generation %d expected)"
                                                 % (rnd, s, op[2]))
                        POOL.put(op[4])
                        continue
                    POOL.put(op[4])
                    if ok:
                        g = op[2]
                        acked[s] = g
                        acked_by[s] = cl.idx
                        if cfg["mode"] == "writethrough" or op[3] & nbd.CMD_FLAG_FUA:
                            durable[s] = max(durable[s], g)
                        if acked[s] > durable[s]:
                            undurable.add(s)
                        else:
                            undurable.discard(s)
            server.check_alive()
        st["inflight_at_kill"] += sum(1 for cl in clients for op in cl.pending.values() if op[0] == "write")
        server.kill()
        st["kills"] += 1
        for cl in clients:
            close_handle(cl.h)
        with open(disk, "rb") as f:
            cur = f.read()
        for s, (o, n) in enumerate(self.slots):
            lo, hi = durable[s], issued[s]
            if durable[s] > 0:
                st["durable_slots"] += 1
            got = cur[o:o + n]
            want = self.content(rnd, s, lo)
            if got == want:
                st["bytes_checked"] += n if lo else 0
                continue
            cands = {g: self.content(rnd, s, g) for g in range(lo, hi + 1)}
            # page by page (4 KiB, absolute): a SIGKILL can cut a write-back between pages
            p0 = o
            torn = False
            while p0 < o + n:
                p1 = min(o + n, (p0 // 4096 + 1) * 4096)
                a, b = p0 - o, p1 - o
                match = [g for g, c in cands.items() if c[a:b] == got[a:b]]
                if not match:
                    older = [g for g in range(0, lo) if self.content(rnd, s, g)[a:b] == got[a:b]]
                    self.failures.append(
                        "round %d: slot %d (%d+%d): file bytes %d..%d hold %s; durable generation %d "
                        "(newest sent %d) was lost" % (rnd, s, o, n, p0, p1,
                                                       "generation %d" % older[-1] if older else "other data",
                                                       lo, hi))
                    if len(self.failures) <= 5:
                        log("    LOST " + self.failures[-1])
                    break
                if lo not in match:
                    st["newer_pages"] += 1
                    torn = True
                p0 = p1
            st["torn_slots"] += torn
            if lo:
                st["bytes_checked"] += n


# ----------------------------------------------------------------- resources
def every_command(h, r, size, region=None):
    """One of each command on a connection (synchronous: nothing in flight at
    the close).  With region, everything stays in region..region+8192."""
    off = r.randrange(0, size - 200000) if region is None else region
    data = r.randbytes(r.randint(1, 5000))
    h.pwrite(data, off + 3)
    if h.pread(len(data), off + 3) != data:
        raise AssertionError("write at %d did not read back" % (off + 3))
    h.zero(100, off + 3 + len(data), nbd.CMD_FLAG_NO_HOLE if r.random() < 0.5 else 0)
    if h.can_trim():
        if region is None:
            h.trim(64 * K, off + 70000)
        else:
            h.trim(512, off + 6000)
    h.cache(65536 if region is None else 8192, off)
    h.block_status(131072 if region is None else 8192, off, lambda *a: 0)
    h.flush()
    return off + 3, data


def resources(ctx, n_total, name="resources", export_names=False):
    d = os.path.join(ctx.tmp, name)
    os.mkdir(d)
    cachedir = os.path.join(d, "cache")
    os.mkdir(cachedir)
    size = 64 * M
    if export_names:
        args = ["--filter=" + ctx.filter, "memory", str(size), "cache-min-block-size=4K"]
    else:
        disk = os.path.join(d, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(size)
        args = ["--filter=" + ctx.filter, "file", disk, "cache-max-size=4M", "cache-on-read=true"]
    server = Server(ctx, name, args, tmpdir=cachedir)
    r = random.Random("%s/%s" % (ctx.seed, name))
    failures = []
    written = {}
    lock = threading.Lock()
    counter = [0]

    def one():
        with lock:
            i = counter[0]
            counter[0] += 1
        # export names: the warm-up under one name, so the baseline holds one cache; then one name each
        export = ("export-%04d" % i if i >= warm else "warm-up") if export_names else None
        rr = random.Random(i)
        try:
            h = server.connect(export=export)
            region = (i % 8000) * 8192 if export_names else None
            off, data = every_command(h, rr, size, region)
            h.shutdown()
            close_handle(h)
            if export_names:
                with lock:
                    written[off] = data
        except (nbd.Error, AssertionError) as e:
            with lock:
                failures.append("connection %d%s: %s" % (i, " (export %s)" % export if export else "", e))

    def batch(n, threads):
        if threads == 1:
            for _ in range(n):
                one()
            return
        per = n // threads

        def loop():
            for _ in range(per):
                one()
        ts = [threading.Thread(target=loop) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def settle(target=None):
        """Wait for nbdkit's connection threads to end: fds (not with export
        names: they grow today) and threads at most target's and steady for
        0.1 s (up to 10 s)."""
        last = None
        for _ in range(100):
            cur = server.resources()
            if (target is None or (export_names or cur[0] <= target[0]) and cur[1] <= target[1]) and \
                    cur[:2] == (last or ())[:2]:
                return cur
            last = cur
            time.sleep(0.1)
        return server.resources()

    t0 = time.monotonic()
    warm = 50
    batch(30, 1)
    batch(20, 4)
    base = settle()
    n_conc = n_total * 3 // 10
    n_seq = n_total - n_conc
    batch(n_seq // 2, 1)
    batch(n_conc - n_conc % 6, 6)
    mid = settle(base)
    batch(n_seq - n_seq // 2 + n_conc % 6, 1)
    after = settle(base)
    # a last connection must still work
    try:
        h = server.connect()
        if export_names:
            got = h.pread(size, 0)
            wrong = [o for o, dta in written.items() if got[o:o + len(dta)] != dta]
            if wrong:
                failures.append("%d of %d exports' flushed writes are not in the plugin (first at %d)"
                                % (len(wrong), len(written), wrong[0]))
        else:
            every_command(h, r, size)
        h.shutdown()
        close_handle(h)
    except (nbd.Error, AssertionError) as e:
        failures.append("a connection after the %d: %s" % (n_total, e))
    alive = server.alive()
    rc = server.stop() if alive else server.proc.returncode
    text = server.logtext()
    secs = time.monotonic() - t0
    dfd, dthr, drss = after[0] - base[0], after[1] - base[1], (after[2] - base[2]) / 1024
    what = "%d connections%s" % (counter[0] - warm, " with %d different export names" % (counter[0] - warm)
                                 if export_names else "")
    log("  %s: %s in %.0f s (%d one after another, %d on 6 threads at once): fds %d -> %d, threads %d -> %d, "
        "RSS %.1f -> %.1f -> %.1f MiB (after a warm-up of %d, half-way, at the end)"
        % (name, what, secs, n_seq, n_conc - n_conc % 6, base[0], after[0], base[1], after[1], base[2] / 1024,
           mid[2] / 1024, after[2] / 1024, warm))
    checks = []
    if export_names:
        if dfd > ctx.fd_margin:
            checks.append("open fds grew by %d (more than %d) over %d export names" % (dfd, ctx.fd_margin,
                                                                                         n_total))
        if drss > 64:
            checks.append("RSS grew by %.1f MiB (more than 64) over %d export names" % (drss, n_total))
    else:
        if dfd > 0:
            checks.append("open fds grew by %d" % dfd)
        if dthr > 0:
            checks.append("threads grew by %d" % dthr)
        if drss > ctx.rss_margin:
            checks.append("RSS grew by %.1f MiB (more than %d)" % (drss, ctx.rss_margin))
    checks += failures[:5]
    if len(failures) > 5:
        checks.append("... %d connections failed in all" % len(failures))
    if not alive or rc != 0 or crash_lines(text):
        checks.append("nbdkit %s (status %s) %s" % ("died" if not alive else "exited", rc,
                                                    crash_lines(text)[:2]))
    for c in checks:
        log("    FAIL: %s" % c)
    if not checks:
        log("    ok: %s" % ("fds within %d of the baseline, every export's data right" % ctx.fd_margin
                            if export_names else "fds and threads flat, RSS within %d MiB" % ctx.rss_margin))
    return checks


# ----------------------------------------------------------------- main
FULL_SOAK = [
    # mode, bs, max, cache dir (None: a plain directory; "squeeze": a 64M tmpfs nearly filled by a ballast
    # file for part of the last phase; "3M": a 3 MiB tmpfs), cache-on-read[, options: faults (default True),
    # exports (default 1), resize ("grow", the default, or "shrink-grow")]
    ("writeback", "4K", "2M", None, False),
    ("writeback", "1M", "4M", "squeeze", True),
    ("writeback", "4K", None, "squeeze", True),
    ("writeback", "1M", None, "3M", False),
    ("writethrough", "4K", "2M", "squeeze", False),
    ("writethrough", "1M", "4M", None, True),
    ("writethrough", "4K", None, "3M", True),
    ("writethrough", "1M", None, "squeeze", False),
    ("unsafe", "4K", "2M", None, True),
    ("unsafe", "1M", "4M", "squeeze", False),
    ("unsafe", "4K", None, "squeeze", False),
    ("unsafe", "1M", None, "3M", True),
    # no faults: then no request may fail at all, however full the cache directory (SPEC 8)
    ("writeback", "64K", None, "2M", True, {"faults": False}),
    ("unsafe", "4K", "2M", "squeeze", True, {"faults": False}),
    # beyond the brief: three exports of different sizes (file dir=) sharing one cache-max-size,
    # and a file that shrinks (no connection open) before it grows
    ("writeback", "64K", "3M", None, True, {"exports": 3}),
    ("writethrough", "4K", "2M", "squeeze", False, {"exports": 3, "resize": "shrink-grow"}),
    ("writeback", "4K", None, None, False, {"resize": "shrink-grow"}),
    ("unsafe", "64K", "2M", None, True, {"exports": 3, "resize": "shrink-grow"}),
]
QUICK_SOAK = [
    ("writeback", "4K", "2M", "squeeze", True),
    ("writeback", "1M", None, "3M", False),
    ("writethrough", "1M", "4M", None, True),
]
FULL_CRASH = [
    ("writeback", "64K", None, 0.0),
    ("writeback", "4K", "2M", 0.3),
    ("writeback", "1M", "4M", 0.0),
    ("writethrough", "4K", None, 0.0),
    ("writethrough", "1M", "2M", 0.0),
]
QUICK_CRASH = [
    ("writeback", "4K", "2M", 0.3),
    ("writeback", "1M", None, 0.0),
    ("writethrough", "64K", "2M", 0.0),
]


def soak_configs(table, seconds):
    out = []
    for mode, bs, mx, tmpfs, cor, *extra in table:
        opts = dict(extra[0]) if extra else {}
        opts.setdefault("faults", True)
        name = "%s-%s-%s%s%s%s%s%s" % (
            mode, bs, "max" + mx if mx else "nomax",
            "-squeezed" if tmpfs == "squeeze" else "-tmpfs" + tmpfs if tmpfs else "", "-cor" if cor else "",
            "-%dexports" % opts["exports"] if opts.get("exports", 1) > 1 else "",
            "-shrink" if opts.get("resize") == "shrink-grow" else "", "" if opts["faults"] else "-nofaults") + (
            "-serialize-" + opts["serialize"] if opts.get("serialize") else "")
        out.append(dict(opts, name=name, mode=mode, bs=bs, max=mx, tmpfs=tmpfs, cor=cor, seconds=seconds))
    return out


def crash_configs(table, kills):
    return [dict(name="crash-%s-%s-%s%s" % (mode, bs, "max" + mx if mx else "nomax", "-fua" if fua else ""),
                 mode=mode, bs=bs, max=mx, fua=fua, kills=kills) for mode, bs, mx, fua in table]


def ensure_namespace():
    """Re-run in a private mount namespace (root, unshare -m), so that the
    tmpfs cache directories vanish with us."""
    if os.environ.get("SWIFTCACHE_IN_NS"):
        return True
    if os.geteuid() != 0 or os.environ.get("SOAK_NO_NS"):
        return False
    if subprocess.call(["unshare", "-m", "--propagation", "private", "true"], stderr=subprocess.DEVNULL) != 0:
        return False
    env = dict(os.environ, SWIFTCACHE_IN_NS="1")
    os.execvpe("unshare", ["unshare", "-m", "--propagation", "private", sys.executable,
                           os.path.abspath(__file__)] + sys.argv[1:], env)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--filter", default=os.environ.get("FILTER", os.path.join(REPO, "libswiftcache.so")))
    ap.add_argument("--quick", action="store_true", help="the short soak of make check")
    ap.add_argument("--phases", default=None, help="soak,crash,resources,export-names")
    ap.add_argument("--configs", default=None, help="only soak/crash configurations whose name contains one of "
                    "these (comma separated)")
    ap.add_argument("--seconds", type=float, default=None, help="load per soak configuration")
    ap.add_argument("--kills", type=int, default=None, help="SIGKILLs per crash configuration")
    ap.add_argument("--connections", type=int, default=None, help="resources: connections (default 1000)")
    ap.add_argument("--names", type=int, default=1000, help="export-names: connections/names")
    ap.add_argument("--conns", type=int, default=12, help="soak: libnbd handles")
    ap.add_argument("--qd", type=int, default=12, help="soak: requests in flight per handle")
    ap.add_argument("--churn", type=float, default=0.5, help="soak: mean seconds between two reconnects "
                    "during the load (0: none)")
    ap.add_argument("--seed", default="10")
    ap.add_argument("--drop-write", action="store_true", help="self-test: leave one acknowledged write out of "
                    "the model; the soak must fail")
    ap.add_argument("--rss-margin", type=int, default=8, help="MiB")
    ap.add_argument("--fd-margin", type=int, default=70)
    ap.add_argument("--no-faults", action="store_true", help="soak: no error injection")
    ap.add_argument("--fault-pct", type=int, default=10, help="soak: %% of plugin calls failed (default 10)")
    ap.add_argument("--custom", action="append", default=[], metavar="MODE:BS:MAX:DIR:COR[:OPTS]",
                    help="soak: a configuration of one's own instead of the table, e.g. writeback:1M:1M:3M:1 "
                    "(MAX '-' for none; DIR '-', 'squeeze' or a tmpfs size; COR 0/1; OPTS e.g. "
                    "exports=3,resize=shrink-grow,faults=0,serialize=requests|all-requests); repeatable")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    in_ns = ensure_namespace()
    filt = a.filter
    if "/" in filt or filt.endswith(".so"):
        filt = os.path.realpath(filt)
        if not os.path.exists(filt):
            print("soak: filter %s does not exist (make, or FILTER=cache)" % filt)
            return 2
    phases = a.phases or ("soak,resources" if a.quick else "soak,crash,resources,export-names")
    phases = phases.split(",")

    class Ctx:
        pass
    ctx = Ctx()
    ctx.filter = filt
    ctx.in_ns = in_ns
    ctx.seed = a.seed
    ctx.drop_write = a.drop_write
    ctx.conns, ctx.qd = a.conns, a.qd
    ctx.churn = a.churn
    ctx.rss_margin, ctx.fd_margin = a.rss_margin, a.fd_margin
    ctx.tmp = tempfile.mkdtemp(prefix="swiftcache-soak.")
    ctx.sockdir = tempfile.mkdtemp(prefix="scsoak.", dir="/tmp")
    ctx.cachedir = os.path.join(ctx.tmp, "cache")
    os.mkdir(ctx.cachedir)
    ctx.flushfault = os.path.join(ctx.tmp, "flushfault.so")
    subprocess.check_call(["cc", "-O2", "-Wall", "-shared", "-fPIC", "-o", ctx.flushfault,
                           os.path.join(HERE, "flushfault.c")])

    def wanted(name):
        return not a.configs or any(c in name for c in a.configs.split(","))

    log("soak: filter %s, seed %s, %s%s" % (filt, a.seed, "quick" if a.quick else "full",
                                           "" if in_ns else " (no mount namespace: no tmpfs cache directories)"))
    t0 = time.monotonic()
    failed = []
    total = Counters()
    total_faults = 0
    crashed = None
    try:
        if "soak" in phases:
            secs = a.seconds or (6 if a.quick else 14)
            table = QUICK_SOAK if a.quick else FULL_SOAK
            if a.custom:
                table = []
                for spec in a.custom:
                    mode, bs, mx, dr, cor, *more = spec.split(":")
                    opts = {}
                    for kv in (more[0].split(",") if more else []):
                        k, v = kv.split("=")
                        opts[k] = int(v) if k == "exports" else v != "0" if k == "faults" else v
                    table.append((mode, bs, None if mx == "-" else mx, None if dr == "-" else dr, cor == "1", opts))
            cfgs = [c for c in soak_configs(table, secs) if wanted(c["name"])]
            log("soak: %d configurations, %d connections x %d requests in flight, %s, delays read 2 ms / write 3 ms"
                % (len(cfgs), a.conns, a.qd, "no faults" if a.no_faults else
                   "faults ~%d%% (pread, pwrite, zero, trim, flush; extents 3%%; none in *-nofaults)"
                   % a.fault_pct))
            for cfg in cfgs:
                cfg["faults"] = cfg["faults"] and not a.no_faults
                cfg["fault_pct"] = a.fault_pct
                s = Soak(ctx, cfg)
                try:
                    s.run()
                finally:
                    total.add(s.c)
                total_faults += sum(s.faults.values())
                if s.failures:
                    failed.append("%s: %d failures, first: %s" % (s.name, len(s.failures), s.failures[0]))
        if "crash" in phases:
            kills = a.kills or (3 if a.quick else 5)
            cfgs = [c for c in crash_configs(QUICK_CRASH if a.quick else FULL_CRASH, kills) if wanted(c["name"])]
            log("crash: %d configurations x %d SIGKILLs mid-load" % (len(cfgs), kills))
            for cfg in cfgs:
                c = Crash(ctx, cfg)
                c.run()
                if c.failures:
                    failed.append("%s: %d failures, first: %s" % (c.name, len(c.failures), c.failures[0]))
        if "resources" in phases:
            n = a.connections or (300 if a.quick else 1000)
            log("resources: %d connections, each doing read, write, zero, trim, cache, block status, flush" % n)
            failed += resources(ctx, n)
        if "export-names" in phases:
            log("export-names: %d connections, each under its own export name (memory plugin)" % a.names)
            failed += resources(ctx, a.names, name="export-names", export_names=True)
    except SoakError as e:
        crashed = str(e)
    finally:
        if a.keep:
            log("soak: kept %s" % ctx.tmp)
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
        shutil.rmtree(ctx.sockdir, ignore_errors=True)
    log("")
    if "soak" in phases:
        log("soak total: %s" % total.line())
        log("  faults injected %d; client errors %s; bytes verified %s; max %d requests in flight"
            % (total_faults, total.err_line(), fmt_bytes(total.bytes_verified), total.max_inflight))
    log("soak: %.0f s in all; the soak's own peak RSS %.0f MiB" % (
        time.monotonic() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if crashed:
        log("soak: FAILED (nbdkit crashed or the soak could not run): %s" % crashed)
        return 2
    if failed:
        for f in failed:
            log("soak: FAILED: %s" % f)
        return 1
    log("soak: 0 lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
