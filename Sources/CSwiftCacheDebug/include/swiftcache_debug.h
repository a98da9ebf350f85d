// SPDX-License-Identifier: BSD-3-Clause
#ifndef SWIFTCACHE_DEBUG_H
#define SWIFTCACHE_DEBUG_H
/* Set by nbdkit from `-D swiftcache.verbose=1` (found with dlsym). */
extern int swiftcache_debug_verbose;
/* Set by nbdkit from `-D swiftcache.stats=1`: log the statistics at exit. */
extern int swiftcache_debug_stats;

/* nbdkit writes the flags once, before any request: read them through
 * functions so Swift does not see shared mutable state. */
static inline int swiftcache_verbose (void) { return swiftcache_debug_verbose; }
static inline int swiftcache_stats (void) { return swiftcache_debug_stats; }
#endif
