// SPDX-License-Identifier: BSD-3-Clause
/* The filter API exactly as installed by nbdkit-plugin-dev. */
#include <nbdkit-filter.h>
#include <nbdkit-version.h>

/* The header's version string, with static storage, for the filter table. */
static inline const char *swiftcache_nbdkit_version (void) {
  return NBDKIT_VERSION_STRING;
}
