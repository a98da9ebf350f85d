// SPDX-License-Identifier: BSD-3-Clause
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/magic.h>
#include "clinux.h"

int swiftcache_mkostemp_cloexec (char *template_) {
  return mkostemp (template_, O_CLOEXEC);
}

int swiftcache_punch_hole (int fd, int64_t offset, int64_t length) {
  return fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

int64_t swiftcache_seek_data (int fd, int64_t offset) {
  return lseek (fd, offset, SEEK_DATA);
}

int swiftcache_is_tmpfs (int fd) {
  struct statfs info;
  if (fstatfs (fd, &info) == -1)
    return -1;
  return info.f_type == TMPFS_MAGIC;
}

int swiftcache_memfd (const char *name) {
  return memfd_create (name, MFD_CLOEXEC);
}
