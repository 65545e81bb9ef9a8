// Post-processors of tokenizer.json: add the special tokens a model expects around an
// encoded sequence (TemplateProcessing, BertProcessing, RobertaProcessing, ...).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/tokenizer/json_fields.h"

namespace kiln::tok {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens of a single sequence to `ids` (HF's add_special_tokens=True).
  virtual void add_special_tokens(std::vector<int32_t>& ids) const = 0;
};

// Builds the post-processor described by `spec`; null `spec` gives nullptr. Throws Error
// naming `where` for unknown types or malformed fields.
std::unique_ptr<PostProcessor> make_post_processor(const Json& spec, const std::string& where);

}  // namespace kiln::tok
