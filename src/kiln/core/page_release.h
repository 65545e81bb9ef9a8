// Dropping the pages of a read-only file mapping from the process once they have been used,
// so that streaming through large mapped files keeps the resident set small.
#pragma once

#include <cstddef>

namespace kiln {

// Drops the process's pages overlapping [data, data + size), rounded out to whole pages
// (madvise MADV_DONTNEED): they leave the resident set and are read again from the page
// cache if touched. Only for memory of a read-only file mapping (MappedFile with
// Residency::kMapped); on anonymous memory it would discard the data. Advisory: a failure
// changes nothing and is not reported.
void release_mapped_pages(const void* data, size_t size);

}  // namespace kiln
