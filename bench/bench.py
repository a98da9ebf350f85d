#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""swiftcache benchmark: nbdkit's C cache filter ("C") against swiftcache
("ours") and against no cache filter at all ("none", the limit).

Run it through ./bench/run (or `make bench`).  See bench/README.md.
The markdown report goes to stdout; progress and warnings go to stderr.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PY = "/usr/bin/python3"
CLIENT = os.path.join(HERE, "nbd_client.py")

CONFIGS = ("none", "C", "ours")          # column order in the report
# Order of the three configurations in round r (cycled).  C and ours are
# always next to each other, each goes first half of the time, and `none`
# alternates between first and last.
ORDERS = (("C", "ours", "none"), ("none", "ours", "C"),
          ("ours", "C", "none"), ("none", "C", "ours"))
ALL_WORKLOADS = ("1", "2", "2d", "3", "4", "5", "6a", "6b", "6c", "7", "7d", "8")

UP, DOWN = "↑", "↓"


def env_int(name, default):
    v = os.environ.get(name, "")
    try:
        return int(v) if v else default
    except ValueError:
        sys.exit("bench: %s must be an integer, got %r" % (name, v))


ROUNDS = env_int("ROUNDS", 3)
RUNTIME = env_int("RUNTIME", 3)
CLIENT_TIMEOUT = env_int("CLIENT_TIMEOUT", 120)
START_TIMEOUT = 15
STOP_TIMEOUT = 30
RDELAY = os.environ.get("RDELAY", "2ms")
WDELAY = os.environ.get("WDELAY", "2ms")
KEEP = os.environ.get("KEEP", "") not in ("", "0")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    sys.stderr.write("bench: %s\n" % msg)
    sys.stderr.flush()


class BenchError(Exception):
    pass


# ----------------------------------------------------------------------------
# helpers: processes, /proc


def run_client(argv, rundir, tag, timeout=None):
    """Run a client command with a hard timeout; keep its output in rundir."""
    timeout = timeout or CLIENT_TIMEOUT
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError("%s: killed after the %d s timeout" % (tag, timeout)) from e
    dt = time.monotonic() - t0
    with open(os.path.join(rundir, tag + ".out"), "w") as f:
        f.write("$ %s\n# exit %d, %.3f s\n--- stdout\n%s--- stderr\n%s"
                % (" ".join(argv), p.returncode, dt, p.stdout, p.stderr))
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise BenchError("%s: exit %d: %s" % (tag, p.returncode, last))
    return p.stdout, dt


def proc_cpu_seconds(pid):
    """user+system CPU of the whole process (all threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime/stime are fields 14/15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError("no %s in /proc/%d/status" % (key, pid))


def cpu_busy_sample(seconds=1.0):
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ----------------------------------------------------------------------------
# nbdkit server


STATS_LINE = re.compile(r"^(\w+): (\d+) ops", re.M)


class Server:
    """One fresh nbdkit: [cache filter] stats [delay] memory|pattern."""

    def __init__(self, filt, rundir, disk, params, delay=None):
        self.rundir = rundir
        self.sock = os.path.join(rundir, "sock")
        self.pidfile = os.path.join(rundir, "pid")
        self.statsfile = os.path.join(rundir, "stats")
        self.uri = "nbd+unix:///?socket=" + self.sock
        argv = ["nbdkit", "-f", "-U", self.sock, "-P", self.pidfile,
                "--exit-with-parent"]
        if filt:
            argv.append("--filter=" + filt)
        argv.append("--filter=stats")
        if delay:
            argv.append("--filter=delay")
        plugin, size = disk.split(":") if ":" in disk else ("memory", disk)
        argv += [plugin, "size=" + size, "statsfile=" + self.statsfile,
                 "statsthreshold=0"]
        if delay:
            argv.append(delay)
        if filt:
            argv += params
        self.argv = argv
        self.proc = None
        self.reqs = None

    def start(self):
        with open(os.path.join(self.rundir, "cmdline"), "w") as f:
            f.write(" ".join(self.argv) + "\n")
        env = dict(os.environ, TMPDIR=self.rundir)
        self.logf = open(os.path.join(self.rundir, "nbdkit.log"), "w")
        self.proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        # nbdkit writes the pid file once it is listening.
        while not (os.path.exists(self.pidfile) and os.path.getsize(self.pidfile) > 0):
            if self.proc.poll() is not None:
                raise BenchError("nbdkit exited at start-up (status %d): %s"
                                 % (self.proc.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                self.kill()
                raise BenchError("nbdkit did not start within %d s" % START_TIMEOUT)
            time.sleep(0.01)
        self.pid = self.proc.pid
        return self

    def log_tail(self):
        self.logf.flush()
        try:
            with open(os.path.join(self.rundir, "nbdkit.log")) as f:
                lines = f.read().strip().splitlines()
            return " | ".join(lines[-3:]) or "(empty log)"
        except OSError:
            return "(no log)"

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """SIGTERM, wait, then read the stats file (written at unload)."""
        if self.proc.poll() is not None:
            raise BenchError("nbdkit died during the run (status %d): %s"
                             % (self.proc.returncode, self.log_tail()))
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError("nbdkit did not exit within %d s of SIGTERM" % STOP_TIMEOUT)
        finally:
            self.logf.close()
        if rc != 0:
            raise BenchError("nbdkit exited with status %d after SIGTERM: %s"
                             % (rc, self.log_tail()))
        try:
            with open(self.statsfile) as f:
                text = f.read()
        except OSError as e:
            raise BenchError("no stats file: %s" % e)
        if not text.startswith("total:"):
            raise BenchError("stats file has no 'total:' line")
        self.reqs = {m.group(1): int(m.group(2))
                     for m in STATS_LINE.finditer(text) if m.group(1) != "total"}
        return self.reqs


# ----------------------------------------------------------------------------
# fio


def fio(srv, rundir, tag, opts, timeout=None):
    argv = ["fio", "--name=" + tag, "--ioengine=nbd", "--uri=" + srv.uri,
            "--thread", "--group_reporting", "--output-format=json"] + opts
    out, _ = run_client(argv, rundir, tag, timeout)
    i = out.find("{")            # the nbd engine prints a line before the JSON
    if i < 0:
        raise BenchError("%s: no JSON in fio output" % tag)
    try:
        doc = json.loads(out[i:])
    except ValueError as e:
        raise BenchError("%s: bad fio JSON: %s" % (tag, e))
    with open(os.path.join(rundir, tag + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
    job = doc["jobs"][0]
    if job.get("error"):
        raise BenchError("%s: fio job error %s" % (tag, job["error"]))
    return job


def fio_ios(job):
    return job["read"]["total_ios"] + job["write"]["total_ios"]


def expect_ios(job, tag, n):
    got = fio_ios(job)
    if got != n:
        raise BenchError("%s: fio did %d I/Os, expected exactly %d" % (tag, got, n))


def prefill(srv, rundir):
    run_client(["nbdcopy", "--no-extents", srv.uri, "null:"], rundir, "prefill")


def timed_fio(srv, rundir, tag, opts, timeout=None):
    """fio, plus nbdkit's CPU seconds spent during it."""
    c0 = proc_cpu_seconds(srv.pid)
    job = fio(srv, rundir, tag, opts, timeout)
    c1 = proc_cpu_seconds(srv.pid)
    ios = fio_ios(job)
    if ios <= 0:
        raise BenchError("%s: fio did no I/O" % tag)
    return job, (c1 - c0) * 1e6 / ios


# ----------------------------------------------------------------------------
# workloads.  Each returns {row id: value} and optionally notes.


def w1(srv, rd):
    prefill(srv, rd)
    job, us = timed_fio(srv, rd, "fio", [
        "--rw=randread", "--bs=4k", "--iodepth=16", "--numjobs=4",
        "--time_based", "--runtime=%d" % RUNTIME], RUNTIME + 60)
    return {"1": job["read"]["iops"], "1c": us}, {}


def warm_seq_read(row):
    def w(srv, rd):
        prefill(srv, rd)
        job, us = timed_fio(srv, rd, "fio", [
            "--rw=read", "--bs=1M", "--iodepth=4", "--numjobs=2",
            "--size=64M", "--offset_increment=64M",
            "--time_based", "--runtime=%d" % RUNTIME], RUNTIME + 60)
        return {row: job["read"]["bw_bytes"] / 2**20, row + "c": us}, {}
    return w


def w3(srv, rd):
    job = fio(srv, rd, "fio", [
        "--rw=randread", "--bs=64k", "--iodepth=16", "--numjobs=1", "--size=64M"])
    expect_ios(job, "fio", 1024)
    return {"3": job["read"]["iops"]}, {}


def w4(srv, rd):
    job, us = timed_fio(srv, rd, "fio", [
        "--rw=randwrite", "--bs=4k", "--iodepth=16", "--numjobs=2",
        "--size=64M", "--offset_increment=64M"])
    expect_ios(job, "fio", 32768)
    return {"4": job["write"]["iops"], "4c": us}, {}


def w5(srv, rd):
    job = fio(srv, rd, "fio", [
        "--rw=write", "--bs=1M", "--iodepth=4", "--numjobs=1", "--size=32M"])
    expect_ios(job, "fio", 32)
    return {"5": job["write"]["bw_bytes"] / 2**20}, {}


def nbd_client(srv, rd, *args):
    out, _ = run_client([PY, CLIENT, srv.uri] + [str(a) for a in args], rd, "client")
    try:
        return json.loads(out)
    except ValueError:
        raise BenchError("client: bad output %r" % out[:200])


def w6a(srv, rd):
    r = nbd_client(srv, rd, "flush-seq", 16)
    return {"6a": r["flush_s"]}, {"write phase s": r["write_s"]}


def w6b(srv, rd):
    r = nbd_client(srv, rd, "flush-scatter", 256)
    return {"6b": r["flush_s"]}, {"write phase s": r["write_s"]}


def w6c(srv, rd):
    r = nbd_client(srv, rd, "flush-empty")
    return {"6c": r["empty_flush_s"] * 1e3, "6d": r["one_block_flush_s"] * 1e3}, {}


def nbdcopy_cold(row):
    def w(srv, rd):
        _, dt = run_client(["nbdcopy", "--no-extents", "--connections=2", "--threads=2",
                            srv.uri, "null:"], rd, "nbdcopy")
        try:
            p = subprocess.run(["nbdinfo", "--can", "multi-conn", srv.uri],
                               capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError("nbdinfo --can multi-conn: killed after 30 s")
        mc = {0: "yes", 2: "no"}.get(p.returncode, "?(exit %d)" % p.returncode)
        return {row: dt}, {"multi-conn": mc}
    return w


def w8(srv, rd):
    nbd_client(srv, rd, "read", 0, 4096)
    time.sleep(0.3)          # let the connection's threads finish and exit
    rss = proc_status_kib(srv.pid, "VmRSS") / 1024
    hwm = proc_status_kib(srv.pid, "VmHWM") / 1024
    return {"8": rss}, {"VmHWM MiB": round(hwm, 1)}


RD = "rdelay=" + RDELAY
WD = "wdelay=" + WDELAY
ON_READ = ["cache-on-read=true"]

# id: (function, disk, cache params, delay param, description).  The disk is
# the memory plugin of that size (all zeroes until written), or PLUGIN:SIZE.
WORKLOADS = {
    "1": (w1, "128M", ON_READ, None, "warm rand read 4K, qd16 x4"),
    "2": (warm_seq_read("2"), "128M", ON_READ, None, "warm seq read 1M, qd4 x2"),
    "2d": (warm_seq_read("2d"), "pattern:128M", ON_READ, None, "warm seq read 1M of data (pattern plugin), qd4 x2"),
    "3": (w3, "64M", ON_READ, RD, "cold rand read 64K, rdelay, qd16"),
    "4": (w4, "128M", ["cache=writeback"], None, "writeback rand write 4K, qd16 x2"),
    "5": (w5, "64M", ["cache=writethrough"], WD, "writethrough seq write 1M, wdelay"),
    "6a": (w6a, "64M", ["cache=writeback"], WD, "flush after 16 x 1M seq writes, wdelay"),
    "6b": (w6b, "64M", ["cache=writeback"], WD, "flush after 256 x 4K scattered writes, wdelay"),
    "6c": (w6c, "1T", ["cache=writeback"], None, "flush cost on a 1T disk: empty"),
    "7": (nbdcopy_cold("7"), "256M", ON_READ, RD, "nbdcopy cold 256M, rdelay"),
    "7d": (nbdcopy_cold("7d"), "pattern:256M", ON_READ, RD, "nbdcopy cold 256M of data (pattern plugin), rdelay"),
    "8": (w8, "1T", ON_READ, None, "RSS, 1T sparse disk, after 1 conn"),
}

# Report rows: (row id, workload id, metric, direction, number format)
ROWS = (
    ("1", "1", "IOPS", UP, "%.0f"),
    ("1c", "1", "nbdkit CPU µs/IO", DOWN, "%.2f"),
    ("2", "2", "MiB/s", UP, "%.0f"),
    ("2c", "2", "nbdkit CPU µs/IO", DOWN, "%.1f"),
    ("2d", "2d", "MiB/s", UP, "%.0f"),
    ("2dc", "2d", "nbdkit CPU µs/IO", DOWN, "%.1f"),
    ("3", "3", "IOPS", UP, "%.0f"),
    ("4", "4", "IOPS", UP, "%.0f"),
    ("4c", "4", "nbdkit CPU µs/IO", DOWN, "%.2f"),
    ("5", "5", "MiB/s", UP, "%.1f"),
    ("6a", "6a", "flush s", DOWN, "%.3g"),
    ("6b", "6b", "flush s", DOWN, "%.3g"),
    ("6c", "6c", "flush ms", DOWN, "%.3g"),
    ("6d", "6c", "flush ms (1 dirty 4K at the end)", DOWN, "%.3g"),
    ("7", "7", "s", DOWN, "%.3g"),
    ("7d", "7d", "s", DOWN, "%.3g"),
    ("8", "8", "RSS MiB", DOWN, "%.1f"),
)


# ----------------------------------------------------------------------------
# driver


class Bench:
    def __init__(self, workloads, filters, work):
        self.workloads = workloads
        self.filters = filters          # config -> --filter= value (None for none)
        self.work = work
        self.values = {}                # (row, cfg) -> [value or None per round]
        self.reqs = {}                  # (wid, cfg) -> [reqs dict per round]
        self.notes = {}                 # (wid, cfg) -> [notes dict per round]
        self.failures = []

    def one(self, rnd, wid, cfg):
        fn, disk, params, delay, _ = WORKLOADS[wid]
        rd = os.path.join(self.work, "r%d-%s-%s" % (rnd, wid, cfg))
        os.mkdir(rd)
        srv = Server(self.filters[cfg], rd, disk, params, delay)
        t0 = time.monotonic()
        try:
            srv.start()
            try:
                vals, notes = fn(srv, rd)
            except BaseException:
                srv.kill()
                raise
            reqs = srv.stop()
        except Exception as e:
            if not isinstance(e, BenchError):
                e = "%s: %s" % (type(e).__name__, e)
            self.failures.append("round %d, workload %s, %s: %s (see %s)"
                                 % (rnd, wid, cfg, e, rd))
            log("FAILED r%d %s %s: %s" % (rnd, wid, cfg, e))
            for row in ROWS:
                if row[1] == wid:
                    self.values.setdefault((row[0], cfg), []).append(None)
            return
        for row in ROWS:
            if row[1] == wid:
                self.values.setdefault((row[0], cfg), []).append(vals[row[0]])
        self.reqs.setdefault((wid, cfg), []).append(reqs)
        self.notes.setdefault((wid, cfg), []).append(notes)
        shown = ", ".join("%s=%.4g" % kv for kv in vals.items())
        log("r%d %-2s %-4s %s  %s  (%.1f s)"
            % (rnd, wid, cfg, shown, fmt_reqs(reqs), time.monotonic() - t0))

    def preflight(self):
        """Start each configuration once to check that its filter loads."""
        ok = True
        for cfg in CONFIGS:
            rd = os.path.join(self.work, "preflight-" + cfg)
            os.mkdir(rd)
            srv = Server(self.filters[cfg], rd, "1M", ON_READ)
            try:
                srv.start()
                try:
                    run_client(["nbdinfo", "--size", srv.uri], rd, "nbdinfo", 30)
                except BaseException:
                    srv.kill()
                    raise
                srv.stop()
            except BenchError as e:
                log("preflight %s failed: %s (see %s)" % (cfg, e, rd))
                self.failures.append("preflight %s: %s" % (cfg, e))
                ok = False
        return ok

    def run(self):
        for rnd in range(1, ROUNDS + 1):
            order = ORDERS[(rnd - 1) % len(ORDERS)]
            log("round %d/%d, order %s" % (rnd, ROUNDS, ",".join(order)))
            for wid in self.workloads:
                for cfg in order:
                    self.one(rnd, wid, cfg)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_ratio(x):
    if x is None:
        return "–"
    if x >= 100:
        return "%.0f" % x
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x


def fmt_reqs(r):
    s = "R%d W%d F%d" % (r.get("read", 0), r.get("write", 0), r.get("flush", 0))
    extra = {"zero": "Z", "trim": "T", "cache": "C", "extents": "E"}
    for k, tag in extra.items():
        if r.get(k):
            s += " %s%d" % (tag, r[k])
    return s


def fmt_reqs_rounds(rs):
    if not rs:
        return "–"
    keys = sorted(set(k for r in rs for k in r))
    med = {k: int(statistics.median([r.get(k, 0) for r in rs])) for k in keys}
    varied = any(len(set(r.get(k, 0) for r in rs)) > 1 for k in keys)
    return fmt_reqs(med) + ("~" if varied else "")


def fmt_val(fmt, v):
    return "FAIL" if v is None else fmt % v


def report(b, meta, started):
    out = []
    p = out.append
    p("# swiftcache benchmark")
    p("")
    for k, v in meta:
        p("- %s: %s" % (k, v))
    p("")
    p("Medians over %d rounds. ↑ = higher is better, ↓ = lower is better "
      "(for ↓ rows a ratio ours/C **below** 1 means ours is faster). "
      "The last column folds the direction in: **>1 means ours is better than C**. "
      "Plugin reqs = requests that reached the plugin (R=read W=write F=flush), "
      "median over rounds, `~` if they varied; for 1 and 2 they include the prefill."
      % ROUNDS)
    p("")
    p("| workload | metric | none (limit) | C | ours | ours/C | ours/none "
      "| per-round ours/C range | plugin reqs C | plugin reqs ours "
      "| ours vs C (>1 = ours better) |")
    p("|---|---|---|---|---|---|---|---|---|---|---|")
    for row, wid, metric, arrow, fmt in ROWS:
        if wid not in b.workloads:
            continue
        vals = {c: b.values.get((row, c), []) for c in CONFIGS}
        med = {c: median(vals[c]) for c in CONFIGS}
        cells = []
        for c in CONFIGS:
            s = fmt_val(fmt, med[c]) if vals[c] else "–"
            nfail = sum(1 for v in vals[c] if v is None)
            if med[c] is not None and nfail:
                s += " (%d failed)" % nfail
            cells.append(s)

        def ratio(a, bb):
            if a is None or bb is None or bb == 0:
                return None
            return a / bb
        r_oc = ratio(med["ours"], med["C"])
        r_on = ratio(med["ours"], med["none"])
        per = [ratio(o, c) for o, c in zip(vals["ours"], vals["C"])]
        per = [x for x in per if x is not None]
        rng = ("%s–%s" % (fmt_ratio(min(per)), fmt_ratio(max(per)))) if per else "–"
        better = None
        if r_oc:
            better = r_oc if arrow == UP else 1 / r_oc
        is_main = row == wid
        reqc = fmt_reqs_rounds(b.reqs.get((wid, "C"), [])) if is_main else ""
        reqo = fmt_reqs_rounds(b.reqs.get((wid, "ours"), [])) if is_main else ""
        label = "%s %s" % (row, WORKLOADS[wid][4]) if is_main else row
        p("| %s | %s %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
          % (label, metric, arrow, cells[0], cells[1], cells[2], fmt_ratio(r_oc),
             fmt_ratio(r_on), rng, reqc, reqo,
             ("**%s**" % fmt_ratio(better)) if better else "–"))
    p("")
    p("Plugin reqs for `none` (everything the client sent):")
    p("")
    for wid in b.workloads:
        p("- %s: %s" % (wid, fmt_reqs_rounds(b.reqs.get((wid, "none"), []))))
    p("")

    p("## Per-round values")
    p("")
    orders = [",".join(ORDERS[(r - 1) % len(ORDERS)]) for r in range(1, ROUNDS + 1)]
    p("Order per round: " + "; ".join("r%d %s" % (i + 1, o) for i, o in enumerate(orders)))
    p("")
    p("| row | config | " + " | ".join("r%d" % (i + 1) for i in range(ROUNDS))
      + " | spread (max−min)/median |")
    p("|---|---|" + "---|" * ROUNDS + "---|")
    for row, wid, metric, arrow, fmt in ROWS:
        if wid not in b.workloads:
            continue
        for c in CONFIGS:
            vs = b.values.get((row, c), [])
            ok = [v for v in vs if v is not None]
            spread = "–"
            if len(ok) > 1 and median(ok):
                spread = "%.0f%%" % (100 * (max(ok) - min(ok)) / median(ok))
            cells = [fmt_val(fmt, v) for v in vs] + [""] * (ROUNDS - len(vs))
            p("| %s %s | %s | %s | %s |" % (row, metric, c, " | ".join(cells), spread))
    p("")
    notes = []
    for wid in b.workloads:
        for c in CONFIGS:
            ns = b.notes.get((wid, c), [])
            keys = sorted(set(k for n in ns for k in n))
            for k in keys:
                vs = [n.get(k) for n in ns]
                vs = [("%.3f" % v) if isinstance(v, float) else str(v) for v in vs]
                notes.append("- %s %s %s: %s" % (wid, c, k, ", ".join(vs)))
    if notes:
        p("Other per-round observations:")
        p("")
        out.extend(notes)
        p("")
    if b.failures:
        p("## FAILURES")
        p("")
        for f in b.failures:
            p("- " + f)
        p("")
    p("Machine load after: loadavg %s" % loadavg())
    p("Total wall time: %.0f s" % (time.monotonic() - started))
    return "\n".join(out) + "\n"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    started = time.monotonic()
    os.environ["PATH"] = "/usr/bin:" + os.environ.get("PATH", "")

    wl = os.environ.get("WORKLOADS", "").split() or list(ALL_WORKLOADS)
    expanded = []
    for w in wl:
        expanded += ["6a", "6b"] if w == "6" else [w]
    bad = [w for w in expanded if w not in WORKLOADS]
    if bad:
        sys.exit("bench: unknown workload(s) %s; known: %s"
                 % (" ".join(bad), " ".join(ALL_WORKLOADS)))
    workloads = list(dict.fromkeys(expanded))
    if ROUNDS < 1:
        sys.exit("bench: ROUNDS must be >= 1")
    if ROUNDS < 3:
        log("warning: ROUNDS=%d; medians need at least 3 rounds to mean much" % ROUNDS)

    for tool in ("nbdkit", "fio", "nbdcopy", "nbdinfo"):
        if not shutil.which(tool):
            sys.exit("bench: %s not found (make deps)" % tool)
    if not os.access(PY, os.X_OK):
        sys.exit("bench: %s not found" % PY)

    ours_src = os.path.abspath(os.environ.get("SWIFTCACHE")
                               or os.path.join(REPO, "libswiftcache.so"))
    if not os.path.isfile(ours_src):
        sys.exit("bench: %s not found (run make, or set SWIFTCACHE)" % ours_src)

    base = os.environ.get("BENCH_TMPDIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
    work = tempfile.mkdtemp(prefix="swiftcache-bench.", dir=base)
    # Snapshot the filter so that a rebuild during the run cannot mix versions.
    ours = os.path.join(work, "libswiftcache.so")
    shutil.copy2(ours_src, ours)
    filters = {"none": None, "C": "cache", "ours": ours}

    nbdkit_ver = subprocess.run(["nbdkit", "--version"], capture_output=True,
                                text=True).stdout.strip()
    la = loadavg()
    busy = cpu_busy_sample(1.0)
    log("work dir %s; loadavg %s; CPU busy %.0f%% over 1 s" % (work, la, busy))
    if busy >= 10:
        log("WARNING: the machine is busy (%.0f%% CPU) before starting; "
            "numbers will be noisy" % busy)
    meta = [
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("host", "%s, %d CPUs, %s" % (os.uname().nodename, os.cpu_count(), nbdkit_ver)),
        ("C", "`--filter=cache` (nbdkit's nbdkit-cache-filter.so)"),
        ("ours", "`%s` (sha256 %s…, mtime %s), run from a snapshot copy"
         % (ours_src, sha256(ours)[:12],
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(ours_src))))),
        ("none", "no cache filter, no cache params (the limit)"),
        ("rounds", "%d, workloads %s, RUNTIME=%d s, rdelay=%s, wdelay=%s, cache files in %s"
         % (ROUNDS, " ".join(workloads), RUNTIME, RDELAY, WDELAY, base)),
        ("machine before start", "loadavg %s, CPU busy %.0f%% over 1 s%s"
         % (la, busy, "  **WARNING: busy, expect noise**" if busy >= 10 else "")),
    ]

    b = Bench(workloads, filters, work)
    if b.preflight():
        b.run()
    else:
        log("preflight failed; not running the workloads")
    sys.stdout.write(report(b, meta, started))
    sys.stdout.flush()

    if b.failures:
        log("%d failure(s); work dir kept: %s" % (len(b.failures), work))
        return 1
    if KEEP:
        log("work dir kept: %s" % work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    log("done in %.0f s" % (time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
