#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include "clinux.h"

int swiftcache_mkostemp_cloexec (char *template_) {
  return mkostemp (template_, O_CLOEXEC);
}

int swiftcache_punch_hole (int fd, int64_t offset, int64_t length) {
  return fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}
