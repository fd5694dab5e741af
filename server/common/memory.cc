#include "server/common/memory.h"

#include <malloc.h>

namespace careserve {

void KeepFreedMemory() {
  // Setting either disables glibc's dynamic mmap threshold, so set both: alone, a fixed
  // trim threshold leaves the mmap threshold at 128 KiB and every activation is mmapped.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace careserve
