/* SPDX-License-Identifier: BSD-3-Clause */
/* flushfault: a test-only nbdkit filter that fails a share of flush
 * requests, for the soak (test-scripts/soak.py).  nbdkit 1.32's error
 * filter injects errors into pread, pwrite, zero, trim, extents and cache
 * but not into flush; this one does only that:
 *
 *   nbdkit --filter=./flushfault.so PLUGIN flushfault-rate=10
 *          [flushfault-error=EIO|ENOSPC] [flushfault-file=/PATH]
 *
 * flushfault-rate is a percentage (0..100); with flushfault-file, errors
 * are injected only while that file exists.  Each injected error is logged
 * as "injecting EIO error into flush", the error filter's wording, so
 * that one pattern counts both.
 *
 * Built by soak.py with: cc -shared -fPIC -o flushfault.so flushfault.c
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

static unsigned rate;           /* percent */
static const char *trigger;     /* NULL: always armed */
static int error_code = EIO;
static _Atomic uint64_t state = 0x9e3779b97f4a7c15ULL;

/* splitmix64 on an atomic counter: thread safe, good enough for a test */
static unsigned
percent (void)
{
  uint64_t z = atomic_fetch_add (&state, 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return (unsigned) (z % 100);
}

static int
ff_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
           const char *key, const char *value)
{
  if (strcmp (key, "flushfault-rate") == 0) {
    if (nbdkit_parse_unsigned ("flushfault-rate", value, &rate) == -1)
      return -1;
    if (rate > 100) {
      nbdkit_error ("flushfault-rate must be 0..100");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "flushfault-file") == 0) {
    trigger = value;            /* nbdkit keeps argv alive */
    return 0;
  }
  if (strcmp (key, "flushfault-error") == 0) {
    if (strcmp (value, "EIO") == 0)
      error_code = EIO;
    else if (strcmp (value, "ENOSPC") == 0)
      error_code = ENOSPC;
    else {
      nbdkit_error ("flushfault-error must be EIO or ENOSPC");
      return -1;
    }
    return 0;
  }
  return next (nxdata, key, value);
}

static int
ff_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  if (rate > 0 && (trigger == NULL || access (trigger, F_OK) == 0) &&
      percent () < rate) {
    nbdkit_error ("injecting %s error into flush",
                  error_code == EIO ? "EIO" : "ENOSPC");
    *err = error_code;
    return -1;
  }
  return next->flush (next, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "flushfault",
  .longname = "swiftcache test: fail some flushes",
  .config = ff_config,
  .config_help = "flushfault-rate=PERCENT  flushfault-error=EIO|ENOSPC  "
                 "flushfault-file=PATH",
  .flush = ff_flush,
};

NBDKIT_REGISTER_FILTER (filter)
