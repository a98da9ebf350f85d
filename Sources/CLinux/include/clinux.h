// SPDX-License-Identifier: BSD-3-Clause
#ifndef SWIFTCACHE_CLINUX_H
#define SWIFTCACHE_CLINUX_H
#include <stdint.h>
/* GNU-only calls that Swift's Glibc module does not show (no _GNU_SOURCE). */

/* mkostemp (template, O_CLOEXEC) */
int swiftcache_mkostemp_cloexec (char *template_);
/* fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) */
int swiftcache_punch_hole (int fd, int64_t offset, int64_t length);
/* lseek (fd, offset, SEEK_DATA) */
int64_t swiftcache_seek_data (int fd, int64_t offset);
/* Whether fd lives on tmpfs (fstatfs f_type == TMPFS_MAGIC): 1, 0, or -1. */
int swiftcache_is_tmpfs (int fd);
/* memfd_create (name, MFD_CLOEXEC): an anonymous file in memory. */
int swiftcache_memfd (const char *name);
#endif
