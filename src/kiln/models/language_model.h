// The language model of a multimodal checkpoint (Gemma3ForConditionalGeneration,
// Llama4ForConditionalGeneration, ...): its config from the wrapper's `text_config`, and its
// tensors under the names a text-only checkpoint of the same model uses. Kiln runs the
// language model only; the vision (or audio) tower's tensors are set aside and reported.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/io/checkpoint_source.h"
#include "kiln/io/hf_config.h"
#include "kiln/models/family.h"

namespace kiln {

// When `config` wraps a language model (an object `text_config` and no hidden_size /
// num_hidden_layers of its own): the text config, with the wrapper's token ids and
// tie_word_embeddings where it lacks them, and the defaults of its text config class for the
// keys a sparse text_config leaves out (Gemma3TextConfig's: vocab_size 262208, ...). Its
// source() reads "<config>: text_config". Otherwise nullopt.
std::optional<HfConfig> language_model_config(const HfConfig& config);

// A view of a multimodal checkpoint's language model: `model.language_model.X` (transformers
// >= 4.52) and `language_model.model.X` (earlier) read as `model.X`, `language_model.lm_head.*`
// as `lm_head.*`; the other tensors (vision tower, projector) are not listed. Names already
// in text-only form pass through.
class LanguageModelSource : public TensorSource {
 public:
  explicit LanguageModelSource(std::unique_ptr<TensorSource> inner);
  std::vector<std::string> names() const override { return names_; }
  bool contains(const std::string& name) const override;
  Tensor get(const std::string& name) const override;
  Shape shape_of(const std::string& name) const override;
  DType dtype_of(const std::string& name) const override;
  std::string where() const override { return inner_->where(); }
  // The tensors set aside (not part of the language model), in the checkpoint's names.
  const std::vector<std::string>& skipped() const { return skipped_; }
  // "the vision tower is not run: 12 tensors set aside (vision_tower.*, multi_modal_projector.*)",
  // or "" when nothing was set aside.
  std::string skipped_note() const;

 private:
  const std::string& inner_name(const std::string& name) const;

  std::unique_ptr<TensorSource> inner_;
  std::vector<std::string> names_;    // language-model names, text-only form
  std::vector<std::string> sources_;  // the inner name of each, same order
  std::vector<std::string> skipped_;
};

// Opens the weights of the model folder `path` whose config is `config`: for a multimodal
// wrapper, as a LanguageModelSource (printing its skipped_note() to stderr once as a note),
// else as open_tensor_source() does.
std::unique_ptr<TensorSource> open_model_source(const std::string& path, const HfConfig& config,
                                                Residency residency = Residency::kMapped);

}  // namespace kiln
