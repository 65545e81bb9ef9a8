#include "kiln/core/page_release.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

namespace kiln {

void release_mapped_pages(const void* data, size_t size) {
  if (data == nullptr || size == 0) return;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(data) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + size + page - 1) / page * page;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace kiln
