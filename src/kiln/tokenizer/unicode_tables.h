// Unicode data tables for the normalizers (generated into unicode_tables.cc by
// tools/gen_unicode_tables.py). Every table is sorted by its first field.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln::tok::unicode_data {

struct CombiningClass {
  char32_t code_point;
  uint8_t value;  // canonical combining class, non-zero
};
// A code point and its mapping: pool[offset, offset + length).
struct Mapping {
  char32_t code_point;
  uint32_t offset;
  uint32_t length;
};
// first + second compose canonically to composite.
struct Composite {
  char32_t first;
  char32_t second;
  char32_t composite;
};

extern const CombiningClass combining_classes[];
extern const size_t combining_classes_size;
// Single-level mappings (apply recursively); Hangul syllables are left to the algorithm.
extern const char32_t canonical_decompositions_pool[];
extern const Mapping canonical_decompositions[];
extern const size_t canonical_decompositions_size;
extern const char32_t compatibility_decompositions_pool[];
extern const Mapping compatibility_decompositions[];
extern const size_t compatibility_decompositions_size;
// Full lowercase mappings without context (final sigma is handled by the caller).
extern const char32_t lowercase_mappings_pool[];
extern const Mapping lowercase_mappings[];
extern const size_t lowercase_mappings_size;
extern const Composite composites[];
extern const size_t composites_size;

}  // namespace kiln::tok::unicode_data
