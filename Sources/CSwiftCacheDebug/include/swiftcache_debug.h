#ifndef SWIFTCACHE_DEBUG_H
#define SWIFTCACHE_DEBUG_H
/* Set by nbdkit from `-D swiftcache.verbose=1` (found with dlsym). */
extern int swiftcache_debug_verbose;

/* nbdkit writes the flag once, before any request: read it through a
 * function so Swift does not see shared mutable state. */
static inline int swiftcache_verbose (void) { return swiftcache_debug_verbose; }
#endif
