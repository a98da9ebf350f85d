// SPDX-License-Identifier: BSD-3-Clause
#include "swiftcache_debug.h"
__attribute__((visibility("default"))) int swiftcache_debug_verbose = 0;
__attribute__((visibility("default"))) int swiftcache_debug_stats = 0;
