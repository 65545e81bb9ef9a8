// The large members of a tokenizer.json "model" (vocabulary and merges) are kept as raw JSON
// text and read by the model itself with the fast JsonReader, straight into its own tables;
// nlohmann::json only sees the small members. This keeps big tokenizers' load well under a
// second.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "kiln/tokenizer/json_fields.h"
#include "kiln/tokenizer/json_reader.h"

namespace kiln::tok {

// Raw JSON text of the model's "vocab" and "merges" members (empty when absent); it views
// into the tokenizer file's text, which outlives model construction.
struct ModelTables {
  std::string_view vocab;
  std::string_view merges;
};

// Reads the model object at the reader's position: "vocab" and "merges" go to `tables` as raw
// text, every other member is returned as JSON. Throws Error naming `where`.
Json read_model_object(JsonReader& reader, ModelTables& tables, const std::string& where);

// Splits a merge written as one string "left right" into `left` and `right`. Throws Error
// naming `where`.
void split_merge(std::string_view text, std::string& left, std::string& right,
                 const std::string& where);

}  // namespace kiln::tok
