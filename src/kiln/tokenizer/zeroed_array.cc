#include "kiln/tokenizer/zeroed_array.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <new>

namespace kiln::tok {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
// Smaller allocations come from malloc; larger ones are mapped in whole huge pages.
constexpr size_t kMappedThreshold = size_t{1} << 20;

size_t mapped_length(size_t bytes) {
  return (bytes + kHugePage - 1) / kHugePage * kHugePage;
}

}  // namespace

void* allocate_zeroed(size_t bytes) {
  if (bytes == 0) return nullptr;
  if (bytes < kMappedThreshold) {
    void* data = std::calloc(bytes, 1);
    if (data == nullptr) throw std::bad_alloc();
    return data;
  }
  // Over-map by one huge page, then trim to a huge-page-aligned range.
  const size_t length = mapped_length(bytes);
  void* mapping = ::mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t start = reinterpret_cast<uintptr_t>(mapping);
  const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) ::munmap(mapping, aligned - start);
  const uintptr_t end = start + length + kHugePage;
  if (end > aligned + length)
    ::munmap(reinterpret_cast<void*>(aligned + length), end - aligned - length);
  void* data = reinterpret_cast<void*>(aligned);
  ::madvise(data, length, MADV_HUGEPAGE);  // advice only: without huge pages it still works
  return data;
}

void release_zeroed(void* data, size_t bytes) {
  if (data == nullptr) return;
  if (bytes < kMappedThreshold) {
    std::free(data);
  } else {
    ::munmap(data, mapped_length(bytes));
  }
}

}  // namespace kiln::tok
