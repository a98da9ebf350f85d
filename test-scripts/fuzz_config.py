#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""Fuzzed configuration of the cache filter (SPEC §2 and §8; issue 10).

    fuzz_config.py run --filter F --work DIR [--seed S] [--count N] [--jobs J] [--only I,J,...]
    fuzz_config.py probe CASE.json NBDKIT_PID URI       (the --run command of a started case)

Every case is one nbdkit run:

    [TMPDIR=...] timeout 10 nbdkit -U - --filter=F --filter=log memory 16M logfile=LOG KEY=VALUE... --run PROBE

with generated values for cache, cache-min-block-size, cache-max-size, cache-high-threshold,
cache-low-threshold, cache-on-read, cache-stats and the TMPDIR environment variable (one
parameter at a time, and combinations). Values are bytes, never NUL. Each case runs in a
directory of its own (its cwd, with a kit of files, directories and odd names that the
generated paths point at), so cases never see each other's files.

An oracle says what nbdkit must do: it replicates nbdkit 1.32's parsers
(nbdkit_parse_size, nbdkit_parse_bool, nbdkit_parse_unsigned), the filter's checks (SPEC §2)
in the order nbdkit makes them (.config in argv order, .config_complete, then .get_ready:
TMPDIR, then cache-stats), and tries the file operations a path needs on the real file system.

- Expected to fail: nbdkit exits non-zero (< 124), the --run command never runs, and stderr
  is exactly one line (values containing a newline: exactly one line starting "nbdkit:")
  that says "error" and names the parameter (TMPDIR: names the directory).
- Expected to start: the --run probe does a write/read/flush round trip and checks the
  documented meaning through the log filter under the cache: cache mode (writethrough: the
  write reaches the plugin at once; writeback: at the flush; unsafe: not even then), the
  preferred block size (max(cache-min-block-size, TMPDIR's block size)), cache-on-read (a
  second read of a block reaches the plugin only when it is off; /PATH: on while PATH
  exists), TMPDIR (nbdkit holds an unlinked cache file in that directory; nothing is left
  there afterwards), cache-max-size <= 5M (writing 3x the limit, the cache file never holds
  more than the high threshold plus one block, and every byte reads back before and after
  a flush), cache-stats (FILE holds a report after exit, no temporary file left).
- Never: exit status >= 124 (timeout, signal), "Fatal error", "Swift runtime failure",
  "Assertion", "Segmentation", "core dumped", or "error" on stderr of a started case.

Cases 0..F-1 are a fixed list of edge values (F is printed); the rest are random. Case I
is generated from random.Random("SEED/I") alone, so `--only I` with the same seed
reproduces it. Counts printed: tried, started, rejected, failures by reason.
"""
import concurrent.futures
import json
import os
import random
import re
import shlex
import subprocess
import sys
import threading
import time

EXPORT_SIZE = 16 << 20
RUN_TIMEOUT = 10
PARAMS = [b"cache", b"cache-min-block-size", b"cache-max-size", b"cache-high-threshold",
          b"cache-low-threshold", b"cache-on-read", b"cache-stats"]
CRASH = re.compile(rb"Fatal error|Swift runtime failure|Assertion|assertion failed|Segmentation|"
                   rb"core dumped|SIGSEGV|SIGABRT|SIGBUS|panic", re.I)
WS = b" \t\n\v\f\r"
INT64_MAX = (1 << 63) - 1
UNSET = None


# ------------------------------------------------------------------ nbdkit 1.32's parsers
def parse_size(s):
    """nbdkit_parse_size: strtoimax(s, 10), one optional suffix; None if rejected."""
    i = 0
    while i < len(s) and s[i] in WS:
        i += 1
    neg = False
    if i < len(s) and s[i] in b"+-":
        neg = s[i] == ord("-")
        i += 1
    j = i
    while j < len(s) and 48 <= s[j] <= 57:
        j += 1
    if j == i:
        return None                       # could not parse size string
    if len(s[i:j].lstrip(b"0")) > 30:
        return None                       # exceeds maximum value
    v = int(s[i:j].lstrip(b"0") or b"0")
    if neg:
        v = -v
    if v < 0 or v > INT64_MAX:
        return None                       # negative / exceeds maximum value
    rest = s[j:]
    if rest == b"":
        return v
    scale = {b"b": 1, b"s": 512, b"k": 1 << 10, b"m": 1 << 20, b"g": 1 << 30, b"t": 1 << 40,
             b"p": 1 << 50, b"e": 1 << 60}.get(rest.lower() if len(rest) == 1 else b"?")
    if scale is None:
        return None                       # unknown suffix
    if INT64_MAX // scale < v:
        return None                       # overflow
    return v * scale


def parse_bool(s):
    """nbdkit_parse_bool: 1, 0, or None."""
    low = s.lower()                       # bytes.lower folds ASCII only, as ascii_strcasecmp
    if s == b"1" or low in (b"true", b"t", b"yes", b"y", b"on"):
        return 1
    if s == b"0" or low in (b"false", b"f", b"no", b"n", b"off"):
        return 0
    return None


def parse_unsigned(s):
    """nbdkit_parse_unsigned: skip ASCII space, no '-', strtoul(s, 0), <= UINT_MAX, nothing after."""
    i = 0
    while i < len(s) and s[i] in WS:
        i += 1
    if i < len(s) and s[i] == ord("-"):
        return None
    if i < len(s) and s[i] == ord("+"):
        i += 1
    t = s[i:]
    if len(t) >= 3 and t[:2].lower() == b"0x" and chr(t[2]) in "0123456789abcdefABCDEF":
        base, digits = 16, t[2:]
    elif t[:1] == b"0":
        base, digits = 8, t
    else:
        base, digits = 10, t
    allowed = "0123456789abcdefABCDEF"[:base + (6 if base == 16 else 0)]
    if not digits or any(chr(c) not in allowed for c in digits):
        return None                       # empty, or trailing garbage
    if len(digits.lstrip(b"0")) > 30:
        return None                       # ERANGE
    v = int(digits.lstrip(b"0") or b"0", base)
    return v if v <= 0xffffffff else None


# ------------------------------------------------------------------ values
UNICODE = ["é", "ß", "∞", "😀", "\u202e", "\u200b", "１２", "٣", "Ⅻ", "ｋ", "𝟗", "中文", "\ufeff", "ñ",
           "\u00a0", "İ", "ﬁ", "Ω", "\u0301", "тrue"]


def g_unicode(r):
    return "".join(r.choice(UNICODE) for _ in range(r.randint(1, 4))).encode()


def g_binary(r, n=None):
    return bytes(r.randint(1, 255) for _ in range(n or r.randint(1, 64)))


def g_ws(r):
    return bytes(r.choice(WS) for _ in range(r.randint(1, 5)))


def g_huge(r):
    n = r.choice([1000, 4096, 4097, 65536, 100000])
    fill = r.choice([b"a", b"9", b"/", b"0", b"\xff", b"k"])
    return fill * n


NUMBERS = [b"0", b"1", b"-1", b"-0", b"+0", b"+1", str(1 << 63).encode(), str((1 << 63) - 1).encode(),
           str(1 << 64).encode(), str((1 << 64) - 1).encode(), str((1 << 64) + 1).encode(), b"1e30",
           b"1E3", b"9" * 20, b"9" * 300, b"0x10", b"0X1000", b"010", b"08", b"0o10", b"0b101", b"1.5",
           b"1,5", b".5", b"1_000", b"1e", b"-9223372036854775808", b"-9223372036854775809", b"4294967295",
           b"4294967296", b"00000000000000000000000000004096", b"NaN", b"inf", b"-inf", b"0x", b"0xffffffff",
           b"0x100000000", b"+", b"-", b"++1", b"+-1", b" +1", b"1 ", b"\t\n1"]


def g_junk(r):
    k = r.randrange(7)
    if k == 0:
        return b""
    if k == 1:
        return g_ws(r)
    if k == 2:
        return g_huge(r)
    if k == 3:
        return g_unicode(r)
    if k == 4:
        return g_binary(r)
    if k == 5:
        return r.choice(NUMBERS)
    return r.choice(NUMBERS) + r.choice([g_ws(r), g_unicode(r), g_binary(r, 3), b"k", b"K "])


SUFFIXES = [b"", b"b", b"B", b"k", b"K", b"m", b"M", b"g", b"G", b"t", b"T", b"p", b"P", b"e", b"E", b"s", b"S"]
BOGUS_SUFFIXES = [b"x", b"KB", b"KiB", b"kb", b"MB", b"Mi", b"Z", b"z", b"y", b"%", b"k ", b" k", b"kk",
                  "µ".encode(), "ｋ".encode(), b"k\n", b"sec", b"i", b"0x", b"\xff", b"-", b"+", b".5k", b"k1"]


def g_number_for_size(r):
    k = r.randrange(6)
    if k == 0:
        return r.randrange(11)
    if k == 1:
        return 1 << r.randrange(64)
    if k == 2:
        return (1 << r.randrange(1, 64)) + r.choice([-1, 1])
    if k == 3:
        return r.randrange(1 << r.randrange(1, 64))
    if k == 4:
        return r.choice([4096, 4095, 1048576, 1048575, (1 << 32) - 1, 1 << 32, 65536, 65535])
    return r.randrange(1 << 64, 1 << 70)


def g_size(r):
    """Any SIZE-ish string: every suffix, bogus suffixes, signs, whitespace, hex, octal, decimals."""
    if r.random() < 0.15:
        return g_junk(r)
    n = g_number_for_size(r)
    d = r.random()
    if d < 0.08:
        num = b"0x%x" % n
    elif d < 0.14:
        num = b"0%o" % n
    elif d < 0.20:
        num = b"%d.%d" % (n, r.randrange(10))
    elif d < 0.24:
        num = b"000" + b"%d" % n
    else:
        num = b"%d" % n
    suf = r.choice(BOGUS_SUFFIXES) if r.random() < 0.2 else r.choice(SUFFIXES)
    pre = r.choice([b"", b"", b"", b"", b"+", b"-", b" ", b"\t", b"\n ", b"+-", b"--"])
    post = r.choice([b""] * 12 + [b" ", b"\n", b"\x01"])
    return pre + num + suf + post


def spell(r, v, unit):
    """v (a multiple of unit) written with the suffix of unit, or in bytes."""
    names = {1: [b"", b"b", b"B"], 512: [b"s", b"S"], 1 << 10: [b"k", b"K"], 1 << 20: [b"m", b"M"],
             1 << 30: [b"g", b"G"], 1 << 40: [b"t", b"T"], 1 << 50: [b"p", b"P"], 1 << 60: [b"e", b"E"]}
    return b"%d%s" % (v // unit, r.choice(names[unit]))


def g_block_size(r):
    """cache-min-block-size: mostly valid powers of 2 (4K..2G) in every spelling, else any size."""
    if r.random() < 0.45:
        return g_size(r)
    k = r.choice([12, 12, 13, 14, 15, 16, 16, 17, 18, 20, 21, 24, 26, 30, 31])
    v = 1 << k
    return spell(r, v, r.choice([u for u in (1, 512, 1 << 10, 1 << 20, 1 << 30) if v % u == 0]))


def g_max_size(r):
    """cache-max-size: mostly valid (1M..2^62; small ones get the data check), else any size."""
    if r.random() < 0.45:
        return g_size(r)
    v = r.choice([1 << 20, 1 << 20, 2 << 20, 3 << 20, 4 << 20, 5 << 20, 1 << 30, 1 << 40, 1 << 62,
                  (1 << 20) + 4096, 1536 << 10, 9 << 20])
    units = [u for u in (1, 512, 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50, 1 << 60) if v % u == 0]
    return spell(r, v, r.choice(units))


def g_percent(r):
    k = r.random()
    if k < 0.5:
        return b"%d" % r.choice([1, 2, 5, 10, 50, 79, 80, 81, 90, 94, 95, 96, 99, 100, 101, 150, 200, 1000])
    if k < 0.6:
        return r.choice([b"0x50", b"0120", b"+90", b" 90", b"\t50", b"\n90", b"090", b"08", b"00", b"0",
                         b"0x0", b"000080", b"0X5a"])
    if k < 0.75:
        return r.choice([b"-1", b"-0", b"90 ", b"90%", b"9e1", b"90.0", b"4294967295", b"4294967296",
                         b"18446744073709551615", b"18446744073709551616", b"0x", b"0xg", b"1_0", "٩٠".encode(),
                         "９０".encode(), b"+-5", b"++5", b"5\n"])
    return g_junk(r)


BOOLS = [b"1", b"0", b"true", b"t", b"yes", b"y", b"on", b"false", b"f", b"no", b"n", b"off"]


def mixcase(r, s):
    return bytes(c ^ 0x20 if 97 <= (c | 0x20) <= 122 and r.random() < 0.5 else c for c in s)


def g_bool(r):
    k = r.random()
    if k < 0.55:
        return mixcase(r, r.choice(BOOLS))
    if k < 0.8:
        return r.choice([b"2", b"tru", b"yes!", b"", b" on", b"on ", b"ON\n", b"oui", "тrue".encode(),
                         "ｔｒｕｅ".encode(), b"01", b"00", b"+1", b"0x1", b"-1", b"truee", b"nope", b"enable",
                         b"disabled", b"TRUE\x00"[:4] + b"!", b"y\t", b"\xff", b"1.0"])
    return g_junk(r)


# The kit every case directory holds (see make_kit): names paths can point at.
NONUTF8_DIR = b"d\xff\xfe"
NONUTF8_FILE = b"f\xfd"
UNICODE_DIR = "dír-∞".encode()
NEWLINE_DIR = b"new\nline dir"


def g_abs_path(r, S, for_stats=False):
    """An absolute path (bytes) under case directory S, or a system one that is safe to name."""
    long_name = b"n" * r.choice([200, 247, 248, 250, 255, 256, 300])
    choices = [
        S + b"/file", S + b"/dir", S + b"/missing", S + b"/missing/sub", S + b"/file/sub", S + b"/dir/",
        S + b"//dir//new", S + b"/dir/new", S + b"/symdir/new", S + b"/dangling", S + b"/" + NONUTF8_FILE,
        S + b"/" + NONUTF8_DIR + b"/new", S + b"/" + UNICODE_DIR + b"/" + g_unicode(r), S + b"/" + NEWLINE_DIR,
        S + b"/dir/" + long_name, S + b"/x" * r.choice([1000, 2047, 2048, 2100]), S + b"/" + g_binary(r, 8),
        S + b"/dir/" + g_unicode(r), S + b"/dir/ sp ace\t", S + b"/dir/.", S + b"/dir/..", S + b"/..",
        b"/proc", b"/proc/", b"/proc/nonexistent/x", b"/" + b"a" * 100000,
        S + b"/new\nline", S + b"/dir/-", S + b"/dir/--help",
    ]
    if not for_stats:             # never a name cache-stats could create outside S
        choices += [b"/", b"/dev/null", b"/proc/self/status", b"//", b"/" + g_binary(r, 20)]
    return r.choice(choices)


def g_stats(r, S):
    k = r.random()
    if k < 0.55:
        return g_abs_path(r, S, for_stats=True)
    if k < 0.85:
        return r.choice([b"rel", b"./rel", b"dir/rel", b"missing/rel", b"dir", b"file", b".", b"..", b"dir/",
                         NONUTF8_FILE, NONUTF8_DIR + b"/s", UNICODE_DIR + b"/s", b"-", b"~/x", b"n" * 248,
                         b"n" * 256, g_unicode(r), b"a" * 5000, b" ", b"rel\n"])
    return r.choice([b"", g_ws(r), g_binary(r), g_huge(r)])


def g_on_read(r, S):
    k = r.random()
    if k < 0.45:
        return g_bool(r)
    if k < 0.9:
        return g_abs_path(r, S)
    return r.choice([b"rel", b"./file", b"file", b"~/x", b"", g_junk(r)])


def g_tmpdir(r, S):
    k = r.random()
    if k < 0.15:
        return r.choice([UNSET, b"", b"/var/tmp", b"/dev/shm", b"/tmp"])
    if k < 0.75:
        return r.choice([S + b"/dir", S + b"/dir/", S + b"//dir", S + b"/missing", S + b"/file", S + b"/symdir",
                         S + b"/dangling", S + b"/" + NONUTF8_DIR, S + b"/" + UNICODE_DIR, S + b"/" + NEWLINE_DIR,
                         S + b"/file/x", S + b"/dir/" + b"x" * 255, S + b"/dir/" + b"x" * 256, S + b"/x" * 2100,
                         b"/proc", b"/proc/", b"/sys", b"/proc/self", b"dir", b"./dir", b"missing", b"file",
                         NONUTF8_DIR, b"/" + b"a" * 100000, S + b"/dir/../dir", S + b"/" + g_binary(r, 8)])
    return g_junk(r)


VALUE_GEN = {
    b"cache": lambda r, S: r.choice([mixcase(r, r.choice([b"writeback", b"writethrough", b"unsafe"])),
                                     b"writeback", b"writethrough", b"unsafe", b"write-back", b"writeback ",
                                     b" unsafe", b"unsafe\n", b"writebac", b"writebackk", b"none", b"readonly",
                                     g_junk(r)]),
    b"cache-min-block-size": lambda r, S: g_block_size(r),
    b"cache-max-size": lambda r, S: g_max_size(r),
    b"cache-high-threshold": lambda r, S: g_percent(r),
    b"cache-low-threshold": lambda r, S: g_percent(r),
    b"cache-on-read": g_on_read,
    b"cache-stats": g_stats,
}


def fixed_cases(S, r):
    """The edge values every run tries: list of (args, tmpdir) with S the case directory."""
    cases = []

    def one(key, *values):
        for v in values:
            cases.append(([(key, v)], UNSET))

    common = [b"", b" ", b"\t\n", b"a" * 100000, b"9" * 100000, str(1 << 63).encode(), str(1 << 64).encode(),
              b"1e30", b"-1", b"-0", "∞😀".encode(), b"\xff\xfe\x01\x7f", b"0x10", b"010", b"+5"]
    one(b"cache", b"writeback", b"writethrough", b"unsafe", b"WRITEBACK", b"Unsafe", b"writeback ", *common)
    sizes = [b"%d%s" % (n, s) for n, s in [(4096, b""), (4, b"k"), (4, b"K"), (1, b"m"), (1, b"M"), (1, b"g"),
                                           (2, b"G"), (8, b"s"), (4096, b"b"), (4096, b"B"), (1, b"t"),
                                           (1, b"T"), (1, b"p"), (1, b"P"), (1, b"e"), (1, b"E"), (7, b"E"),
                                           (8, b"E"), (16, b"S"), (3, b"x"), (4, b"KB"), (4, b"KiB"),
                                           (4, b"k "), (64, b"kk")]]
    sizes += [b"0x1000", b"010000", b"4.5K", b"+4K", b"-4K", b" 4K", b"4K ", b"\t64K", b"64K\n", b"0", b"4095",
              b"4097", b"8191", b"2147483648", b"4294967295", b"4294967296", b"4G", b"3G", b"1k", b"1M1"]
    one(b"cache-min-block-size", *sizes, *common)
    one(b"cache-max-size", *sizes, *common, b"1048575", b"1048576", b"1023K", b"1024K", b"2048s", b"2047s",
        b"4611686018427387904", b"8E")
    for key in (b"cache-high-threshold", b"cache-low-threshold"):
        one(key, b"1", b"50", b"95", b"100", b"101", b"4294967295", b"4294967296", b"0", b"0x50", b"0120",
            b"08", b"90%", b"9e1", b" 90", b"90 ", *common)
    spellings = []
    for b in BOOLS:
        spellings += [b, b.upper(), b.capitalize(), mixcase(r, b)]
    one(b"cache-on-read", *dict.fromkeys(spellings), b"2", b"tru", b"oui", b"relative/path", b"file",
        S + b"/file", S + b"/missing", S + b"/dir", S + b"/" + NONUTF8_FILE, b"/" + b"a" * 100000,
        S + b"/x" * 2100, b"/", *common)
    one(b"cache-stats", S + b"/stats", S + b"/file", S + b"/dir", S + b"/missing/x", S + b"/file/x",
        b"rel-stats", b"dir/rel", b"missing/rel", S + b"/dir/", S + b"/" + NONUTF8_FILE, S + b"/n" + b"n" * 246,
        S + b"/n" + b"n" * 247, S + b"/n" + b"n" * 254, S + b"/n" + b"n" * 255, S + b"/x" * 2100, b"/proc/x",
        S + b"/" + UNICODE_DIR + b"/stats", S + b"/" + NEWLINE_DIR + b"/st", b".", b"..",
        S + b"/dir/" + "\u0301x".encode(), *common)
    for t in [UNSET, b"", S + b"/dir", S + b"/dir/", S + b"/missing", S + b"/file", b"/proc", b"/sys",
              b"dir", b"missing", S + b"/symdir", S + b"/dangling", S + b"/" + NONUTF8_DIR, S + b"/" + UNICODE_DIR,
              S + b"/" + NEWLINE_DIR, S + b"/x" * 2100, b"/" + b"a" * 100000, b"/dev/shm", S + b"/file/x"]:
        cases.append(([], t))
    # combinations: thresholds with and without a max size, duplicates, order of errors
    M = b"cache-max-size"
    H, L = b"cache-high-threshold", b"cache-low-threshold"
    for args in [[(L, b"90"), (H, b"90"), (M, b"1M")], [(L, b"96"), (M, b"1M")], [(L, b"96")],
                 [(L, b"90"), (H, b"50")], [(M, b"1M"), (H, b"50"), (L, b"90")], [(H, b"200"), (L, b"100"), (M, b"1M")],
                 [(H, b"2"), (L, b"1"), (M, b"1M")], [(H, b"96"), (L, b"95"), (M, b"2M")], [(H, b"95"), (M, b"2M")],
                 [(M, b"1M"), (L, b"80"), (H, b"80")], [(L, b"100"), (H, b"101"), (M, b"3M")],
                 [(b"cache", b"unsafe"), (b"cache", b"writethrough")], [(b"cache", b"bogus"), (b"cache", b"unsafe")],
                 [(M, b"1M"), (M, b"abc")], [(M, b"abc"), (b"cache", b"bogus")], [(M, b"1M"), (M, b"4M")],
                 [(b"cache-on-read", b"true"), (b"cache-on-read", b"false")],
                 [(b"cache-stats", b"s1"), (b"cache-stats", b"")], [(b"cache-stats", b"missing/s"), (M, b"1M")],
                 [(b"cache-min-block-size", b"1M"), (M, b"1M"), (b"cache-on-read", b"true")],
                 [(b"cache-min-block-size", b"2M"), (M, b"1M")], [(b"cache", b"unsafe"), (M, b"1M"), (L, b"10")],
                 [(b"cache", b"writethrough"), (M, b"2M"), (b"cache-on-read", b"1")]]:
        cases.append((args, UNSET))
    cases.append(([(b"cache-stats", b"missing/s")], S + b"/missing"))      # TMPDIR is reported first
    cases.append(([(b"cache-stats", b"st"), (L, b"99"), (M, b"1M")], S + b"/missing"))   # thresholds first
    return cases


def random_case(r, S):
    k = r.random()
    if k < 0.08:
        return [], g_tmpdir(r, S)
    if k < 0.75:
        key = r.choice(PARAMS)
        return [(key, VALUE_GEN[key](r, S))], UNSET
    args = []
    for _ in range(r.randint(2, 6)):
        key = r.choice(PARAMS)
        args.append((key, VALUE_GEN[key](r, S)))
    return args, (g_tmpdir(r, S) if r.random() < 0.3 else UNSET)


def generate(seed, i, nfixed, S):
    r = random.Random("%s/%d" % (seed, i))
    if i < nfixed:
        return fixed_cases(S, random.Random("fixed"))[i]
    return random_case(r, S)


# ------------------------------------------------------------------ the case directory
def make_kit(S):
    os.makedirs(S)
    for d in (b"dir", NONUTF8_DIR, UNICODE_DIR, NEWLINE_DIR):
        os.mkdir(os.path.join(S, d))
    for f in (b"file", NONUTF8_FILE):
        with open(os.path.join(S, f), "wb") as fh:
            fh.write(b"x")
    os.symlink(b"dir", os.path.join(S, b"symdir"))
    os.symlink(b"missing", os.path.join(S, b"dangling"))


def absolute(S, p):
    return p if p.startswith(b"/") else S + b"/" + p


def can_make_file_in(d):
    """Whether a new file can be made in directory d (tried for real, then removed), with a name
    as long as the filter's swiftcache.XXXXXX; another run may hold one name, so on EEXIST try another."""
    r = random.Random()
    for _ in range(20):
        probe = (d if d else b"") + b"/swiftcache.%06d" % r.randrange(10 ** 6)
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            continue
        except OSError:
            return False
        os.close(fd)
        os.unlink(probe)
        return True
    return False


def stats_path_ok(S, v):
    """SPEC §8: a cache-stats path that cannot be created (or replaced: an existing file) fails."""
    p = absolute(S, v)
    d, _, name = p.rpartition(b"/")
    if name in (b"", b".", b".."):
        return False
    try:
        if os.path.isdir(p):
            return False
    except (OSError, ValueError):
        return False
    if not can_make_file_in(d):
        return False
    if os.path.lexists(p):
        return True
    try:                                   # the name itself (length limits and all)
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except OSError:
        return False
    os.close(fd)
    os.unlink(p)
    return True


def path_exists(p):
    try:
        return os.path.exists(re.sub(rb"/+", b"/", p))     # taken as a FilePath: repeated slashes are one
    except (OSError, ValueError):
        return False


def oracle(S, args, tmpdir):
    """What nbdkit must do: ("reject", why, [names one of]) or ("start", meaning)."""
    m = {"mode": "writeback", "minbs": 65536, "max": None, "high": 95, "low": 80, "cor": False,
         "stats": None}
    for key, v in args:
        bad = ("reject", "%s=%s" % (key.decode(), show(v)), [key])
        if key == b"cache":
            if v not in (b"writeback", b"writethrough", b"unsafe"):
                return bad
            m["mode"] = v.decode()
        elif key == b"cache-min-block-size":
            n = parse_size(v)
            if n is None or n < 4096 or n > 0xffffffff or n & (n - 1):
                return bad
            m["minbs"] = n
        elif key == b"cache-max-size":
            n = parse_size(v)
            if n is None or n < 1 << 20:
                return bad
            m["max"] = n
        elif key in (b"cache-high-threshold", b"cache-low-threshold"):
            n = parse_unsigned(v)
            if not n:
                return bad
            m["high" if key == b"cache-high-threshold" else "low"] = n
        elif key == b"cache-on-read":
            if v.startswith(b"/"):
                m["cor"] = v.hex()
            else:
                n = parse_bool(v)
                if n is None:
                    return bad
                m["cor"] = bool(n)
        elif key == b"cache-stats":
            if v == b"":
                return bad
            m["stats"] = v
    if m["max"] is not None and m["low"] >= m["high"]:
        return ("reject", "low %d >= high %d" % (m["low"], m["high"]),
                [b"cache-low-threshold", b"cache-high-threshold"])
    d = b"/var/tmp" if tmpdir is UNSET or tmpdir == b"" else tmpdir     # empty TMPDIR is unset
    d = re.sub(rb"/+", b"/", d)              # taken as a FilePath: repeated slashes are one
    if d != b"" and not can_make_file_in(d if d.startswith(b"/") else S + b"/" + d):
        return ("reject", "TMPDIR=%s" % show(d), [d])
    if m["stats"] is not None and not stats_path_ok(S, m["stats"]):
        return ("reject", "cache-stats=%s" % show(m["stats"]), [b"cache-stats"])
    if m["stats"] is not None:            # a report nbdkit may write must stay in our work directory
        work = os.path.dirname(S)
        if not os.path.realpath(absolute(S, m["stats"]).rpartition(b"/")[0]).startswith(work + b"/"):
            raise RuntimeError("generated cache-stats=%s outside %s" % (show(m["stats"]), show(work)))
    real = os.path.realpath(absolute(S, d))
    m["tmpdir_real"] = real.hex()
    m["block"] = max(m["minbs"], os.stat(real).st_blksize)
    if m["stats"] is not None:
        m["stats"] = absolute(S, m["stats"]).hex()
    return ("start", m)


# ------------------------------------------------------------------ running a case
def show(b, n=60):
    if b is None:
        return "(unset)"
    if len(b) > n:
        return "%r...(%d bytes)" % (b[:n // 2], len(b))
    return repr(b)


def quote(b, prelude=None):
    """b for bash: 'as is', $'\\xHH' escapes, or (long values, up to 100 KB) "$vN", with
    vN=$(python3 -c ...) appended to prelude."""
    if len(b) > 300 and prelude is not None:
        runs, j = [], 0
        while j < len(b):
            best_u, best_n = 1, 1
            for u in (1, 2, 3, 4):
                n = 1
                while b[j + n * u:j + (n + 1) * u] == b[j:j + u]:
                    n += 1
                if n * u > best_n * best_u:
                    best_u, best_n = u, n
            unit = b[j:j + best_u]
            runs.append("%r*%d" % (unit, best_n) if best_n > 4 else repr(unit * best_n))
            j += best_u * best_n
        merged = []
        for x in runs:                    # join short literal pieces
            if merged and "*" not in x and "*" not in merged[-1]:
                merged[-1] = repr(eval(merged[-1]) + eval(x))
            else:
                merged.append(x)
        code = "import sys; sys.stdout.buffer.write(%s+b'x')" % "+".join(merged)
        name = "v%d" % len(prelude)
        prelude.append("%s=$(/usr/bin/python3 -c %s); %s=${%s%%x}; " % (name, quote(code.encode()), name, name))
        return '"$%s"' % name
    if all(32 <= c < 127 for c in b):
        return shlex.quote(b.decode())
    return "$'" + "".join(chr(c) if 32 <= c < 127 and c not in b"'\\" else "\\x%02x" % c for c in b) + "'"


def command_line(filter_, args, tmpdir, S):
    pre = []
    env = "" if tmpdir is UNSET else "TMPDIR=%s " % quote(tmpdir, pre)
    kv = " ".join(quote(k + b"=" + v, pre) for k, v in args)
    return "%scd %s && %snbdkit -U - --filter=%s memory 16M %s --run 'nbdinfo $uri'" % (
        "".join(pre), quote(S), env, quote(filter_), kv)


def tree(d):
    try:
        return sorted(os.listdir(d))
    except OSError:
        return None


def run_case(cfg, i):
    S = os.path.join(cfg.work, b"c%05d" % i)
    args, tmpdir = generate(cfg.seed, i, cfg.nfixed, S)
    make_kit(S)
    expect = oracle(S, args, tmpdir)
    log = S + b"/nbdkit.log"
    casefile = S + b"/case.json"
    result = S + b"/probe.json"
    with open(casefile, "w") as f:         # (a case that must fail gets a probe that only says it ran)
        json.dump(dict(expect[1] if expect[0] == "start" else dict(reject=True), log=log.hex(),
                       result=result.hex()), f)
    env = dict(os.environb)
    env.pop(b"TMPDIR", None)
    if tmpdir is not UNSET:
        env[b"TMPDIR"] = tmpdir
    tmp_real = None
    if expect[0] == "start":
        tmp_real = bytes.fromhex(expect[1]["tmpdir_real"])
    before = tree(tmp_real) if tmp_real and tmp_real.startswith(S) else None
    cmd = [b"timeout", b"-k", b"3", b"%d" % RUN_TIMEOUT, b"nbdkit", b"-U", b"-", b"--filter=" + cfg.filter,
           b"--filter=log", b"memory", b"%d" % EXPORT_SIZE, b"logfile=" + log]
    cmd += [k + b"=" + v for k, v in args]
    cmd += [b"--run", b"exec /usr/bin/python3 %s probe %s \"$PPID\" \"$uri\"" % (quote(cfg.me).encode(),
                                                                                quote(casefile).encode())]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=S, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    secs = time.monotonic() - t0
    err = p.stderr
    fails = []
    if p.returncode >= 124 or p.returncode < 0:
        # timeout(1) exits 124, or dies of its own SIGKILL (-k) when nbdkit ignored SIGTERM
        hung = p.returncode in (124, 137, -9) and secs >= RUN_TIMEOUT
        fails.append(("hang" if hung else "crash", "exit status %d after %.1f s" % (p.returncode, secs)))
    if CRASH.search(err) or CRASH.search(p.stdout):
        fails.append(("crash", "crash message: %r" % (CRASH.search(err) or CRASH.search(p.stdout)).group(0)))
    started = os.path.exists(result)
    if expect[0] == "reject":
        if p.returncode == 0:
            fails.append(("started", "started although %s must be rejected" % expect[1]))
        elif started:
            fails.append(("started", "the --run command ran although %s must be rejected" % expect[1]))
        lines = err.rstrip(b"\n").split(b"\n")
        multi = any(b"\n" in x for x in [v for _, v in args] + ([tmpdir] if tmpdir else []))
        if multi:                          # the value's own newlines: count lines nbdkit starts
            lines = [x for x in lines if x.startswith(b"nbdkit:")]
            named = err
        else:
            named = lines[0] if lines else b""
        if 0 < p.returncode < 124:
            if len(lines) != 1 or b"error" not in lines[0]:
                fails.append(("lines", "want one error line, got %d: %s" % (len(lines), show(err, 300))))
            elif not any(name_in(n, named) for n in expect[2]):
                fails.append(("naming", "error line does not name %s: %s" % (
                    " or ".join(show(n, 40) for n in expect[2]), show(lines[0], 300))))
    else:
        m = expect[1]
        if p.returncode != 0 or not started:
            fails.append(("refused", "did not start and serve (rc=%d): %s %s" % (
                p.returncode, show(err, 300), show(p.stdout, 300))))
        else:
            with open(result) as f:
                probe_fails = json.load(f)
            for why in probe_fails:
                fails.append(("meaning", why))
            if m["mode"] == "unsafe":          # SPEC §8: unsafe says what it never wrote back
                err = re.sub(rb"nbdkit: error: swiftcache: exiting with \d+ dirty blocks \(\d+ bytes\) of export "
                             rb"\"\" never written back to the plugin: they are lost\n", b"", err)
            if re.search(rb"error", err, re.I):
                fails.append(("stderr", "error on stderr of a started case: %s" % show(err, 300)))
            if m["stats"] is not None:
                sp = bytes.fromhex(m["stats"])
                try:
                    content = open(sp, "rb").read()
                except OSError as e:
                    content = None
                    fails.append(("meaning", "cache-stats file %s missing after exit: %s" % (show(sp), e)))
                if content is not None and b"requests:" not in content:
                    fails.append(("meaning", "cache-stats file %s holds no report: %s" % (show(sp), show(content))))
                d, _, name = sp.rpartition(b"/")
                left = [x for x in (tree(d or b"/") or []) if x.startswith(b"." + name + b".")]
                if left:
                    fails.append(("meaning", "temporary stats files left: %s" % show(left[0])))
            if before is not None:
                after = tree(tmp_real)
                if after != before:
                    fails.append(("meaning", "TMPDIR %s: files left behind: %s" % (
                        show(tmp_real), show(b",".join(set(after or []) - set(before))))))
    return dict(i=i, expect=expect[0], started=started, fails=fails, secs=secs, S=S,
                args=args, tmpdir=tmpdir, why=expect[1] if expect[0] == "reject" else "")


def name_in(name, line):
    if name.startswith(b"cache"):
        return re.search(rb"(^|[^a-z-])" + re.escape(name) + rb"($|[= ):])", line) is not None
    # A path is shown as the UTF-8 it decodes to, bytes that are not UTF-8 as U+FFFD, and
    # normalized as a FilePath is (no repeated or trailing slashes).
    normal = re.sub(rb"/+", b"/", name)
    normal = normal.rstrip(b"/") or normal
    return any(n in line or n.decode("utf-8", "replace").encode() in line for n in (name, normal))


# ------------------------------------------------------------------ the probe (--run)
def probe(casefile, pid, uri):
    import nbd
    c = json.load(open(casefile))
    log = bytes.fromhex(c["log"])
    fails = []
    if c.get("reject"):                    # it started although it must not: say so, no more
        with open(bytes.fromhex(c["result"]), "w") as f:
            json.dump([], f)
        return 0

    def count(*acts):
        text = open(log, "rb").read()
        return sum(len(re.findall(rb"connection=\d+ %s id=" % a, text)) for a in acts)

    def cache_fd():
        real = bytes.fromhex(c["tmpdir_real"])
        for fd in os.listdir(b"/proc/%d/fd" % pid):
            try:
                t = os.readlink(b"/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if t.endswith(b" (deleted)") and os.path.dirname(t[:-10]) == real:
                return b"/proc/%d/fd/%s" % (pid, fd)
        return None

    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        mode = c["mode"]
        data = os.urandom(5000)
        w0 = count(b"Write")
        h.pwrite(data, 70000)
        w1 = count(b"Write")
        if mode == "writethrough" and w1 == w0:
            fails.append("cache=writethrough: a write did not reach the plugin at once")
        # (a block larger than cache-max-size allows cannot be cached: it goes to the plugin)
        if mode != "writethrough" and w1 != w0 and not (c["max"] and c["block"] >= c["max"] * c["low"] // 100):
            fails.append("cache=%s: a write reached the plugin before any flush" % mode)
        if h.pread(5000, 70000) != data:
            fails.append("round trip: read back differs")
        h.flush()
        w2 = count(b"Write", b"Zero")
        if mode == "writeback" and w2 == w1:
            fails.append("cache=writeback: the flush wrote nothing back to the plugin")
        if mode == "unsafe" and w2 != w1:
            fails.append("cache=unsafe: the flush wrote to the plugin")
        pref = h.get_block_size(nbd.SIZE_PREFERRED)
        if pref != c["block"]:
            fails.append("preferred block size %d, want %d" % (pref, c["block"]))
        if c["block"] <= 1 << 20:
            off = (8 << 20) + 12345
            r0 = count(b"Read")
            h.pread(100, off)
            r1 = count(b"Read")
            h.pread(100, off)
            r2 = count(b"Read")
            cor = c["cor"]
            if isinstance(cor, str):
                p = bytes.fromhex(cor)
                on = path_exists(p)
                what = "cache-on-read=%s (%s)" % (show(p), "exists" if on else "missing")
            else:
                on, what = cor, "cache-on-read=%s" % cor
            if r1 == r0:
                fails.append("%s: the first read of a block did not reach the plugin" % what)
            elif on and r2 != r1:
                fails.append("%s: a second read of a block reached the plugin" % what)
            elif not on and r2 == r1:
                fails.append("%s: a second read of a block was served from the cache" % what)
        fdpath = cache_fd()
        if fdpath is None:
            fails.append("no unlinked cache file in TMPDIR %s held by nbdkit" % show(bytes.fromhex(c["tmpdir_real"])))
        if c["max"] is not None and c["max"] <= 5 << 20 and fdpath is not None:
            limit = c["max"] * c["high"] // 100 + c["block"]
            chunk = 256 << 10
            start, total = 4 << 20, min(3 * c["max"], 12 << 20) // chunk * chunk
            model = bytearray()
            peak = 0
            for off in range(start, start + total, chunk):
                d = os.urandom(chunk)
                h.pwrite(d, off)
                model += d
                peak = max(peak, os.stat(fdpath).st_blocks * 512)
            if peak > limit:
                fails.append("cache-max-size=%d high=%d: cache file held %d bytes, limit %d" % (
                    c["max"], c["high"], peak, limit))
            if h.pread(total, start) != model:
                fails.append("cache-max-size=%d: data written does not read back" % c["max"])
            h.flush()
            if h.pread(total, start) != model:
                fails.append("cache-max-size=%d: data written does not read back after a flush" % c["max"])
    except nbd.Error as e:
        fails.append("NBD error: %s" % e)
    h.shutdown()                              # only synchronous commands: nothing in flight
    with open(bytes.fromhex(c["result"]), "w") as f:
        json.dump(fails, f)
    return 0


# ------------------------------------------------------------------ main
class Cfg:
    pass


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "probe":
        return probe(os.fsencode(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["run"])
    ap.add_argument("--filter", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seed", default=None)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    cfg = Cfg()
    cfg.filter = os.fsencode(a.filter)
    cfg.filter_is_c = b"/" not in cfg.filter
    cfg.work = os.fsencode(os.path.abspath(a.work))
    cfg.seed = a.seed if a.seed is not None else str(random.randrange(1 << 32))
    cfg.me = os.fsencode(os.path.abspath(__file__))
    os.makedirs(cfg.work, exist_ok=True)
    cfg.nfixed = len(fixed_cases(b"S", random.Random("fixed")))
    jobs = a.jobs or (os.cpu_count() or 2) + 1
    idx = [int(x) for x in a.only.split(",") if x] or list(range(a.count))
    print("fuzz-config: seed %s, %d cases (%d fixed edge cases first), %d at once, %ds timeout each" % (
        cfg.seed, len(idx), min(cfg.nfixed, a.count), jobs, RUN_TIMEOUT), flush=True)
    t0 = time.monotonic()
    results = []
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
        futs = [ex.submit(run_case, cfg, i) for i in idx]
        for f in concurrent.futures.as_completed(futs):
            try:
                res = f.result()
            except Exception as e:         # a bug of this script: report it, count it
                import traceback
                res = dict(i=-1, expect="?", started=False, fails=[("script", traceback.format_exc())], secs=0, S=b"",
                           args=[], tmpdir=UNSET, why="")
            with lock:
                results.append(res)
                if res["fails"]:
                    print("FAIL case %d (%s%s): %s" % (
                        res["i"], " ".join("%s=%s" % (k.decode(), show(v, 50)) for k, v in res["args"]),
                        "" if res["tmpdir"] is UNSET else " TMPDIR=%s" % show(res["tmpdir"], 50),
                        "; ".join("[%s] %s" % x for x in res["fails"])), flush=True)
                    print("    reproduce (seed %s, case %d): %s" % (cfg.seed, res["i"], command_line(
                        os.fsencode(a.filter), res["args"], res["tmpdir"], res["S"])), flush=True)
                elif res["S"]:
                    subprocess.run(["rm", "-rf", "--", res["S"]])
    secs = time.monotonic() - t0
    nvalues = {}
    for res in results:
        for k, _ in res["args"]:
            nvalues[k] = nvalues.get(k, 0) + 1
        if res["tmpdir"] is not UNSET or not res["args"]:
            nvalues[b"TMPDIR"] = nvalues.get(b"TMPDIR", 0) + 1
    reasons = {}
    for res in results:
        for why, _ in res["fails"]:
            reasons[why] = reasons.get(why, 0) + 1
    nfail = sum(1 for res in results if res["fails"])
    families = {}                          # (the parameter at fault, reason) -> cases
    for res in results:
        for why, msg in res["fails"]:
            if res["expect"] == "reject":
                who = "thresholds" if res["why"].startswith("low") else res["why"].split("=")[0]
            else:
                m = re.search(r"cache-[a-z-]+|cache=|cache file|TMPDIR|preferred block size|round trip|NBD error", msg)
                who = {"cache=": "cache", "cache file": "TMPDIR"}.get(m.group(0), m.group(0)) if m else "?"
            families[(who, why)] = families.get((who, why), 0) + 1
    if families:
        print("fuzz-config: failures by parameters and reason: %s" % ", ".join(
            "%s [%s] %d" % (p, w, n) for (p, w), n in sorted(families.items())))
    print("fuzz-config: values tried per parameter: %s" % ", ".join(
        "%s %d" % (k.decode(), n) for k, n in sorted(nvalues.items())))
    print("fuzz-config: tried %d, started %d (expected %d), rejected %d (expected %d), failed %d %s; "
          "%.1f s (%.0f ms per case), seed %s" % (
              len(results), sum(r["started"] for r in results), sum(r["expect"] == "start" for r in results),
              sum(not r["started"] for r in results), sum(r["expect"] == "reject" for r in results), nfail,
              "(" + ", ".join("%s %d" % kv for kv in sorted(reasons.items())) + ")" if reasons else "",
              secs, 1000 * secs / max(1, len(results)), cfg.seed), flush=True)
    return 1 if nfail else 0


if __name__ == "__main__":
    sys.exit(main())
