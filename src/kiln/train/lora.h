// LoRA (Hu et al., 2021) for TrainModel: low-rank adapters beside frozen linear modules,
//   y = x W^T + b + (alpha / r) * dropout(x) A^T B^T,   A [r, in], B [out, r]
// A starts Kaiming-uniform (PyTorch's kaiming_uniform_(a = sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)))
// from a seed, B at zero, so training starts from the base model exactly. Dropout (inverted,
// scaled by 1 / (1 - p)) masks are a hash of (seed, dropout key, layer, module, element): the
// same key gives the same masks, so runs and resumed runs are reproducible.
//
// Adapters are saved as a folder with
//   adapter_model.safetensors  PEFT's names (base_model.model.<HF module>.lora_{A,B}.weight), f32
//   adapter_config.json        PEFT's LoraConfig (peft_type LORA, r, lora_alpha, lora_dropout,
//                              target_modules, ...)
//   kiln_adapter.safetensors   the same tensors under Kiln names (<module>/lora_a, <module>/lora_b)
//                              with rank and alpha in its metadata
// and are loaded (from the PEFT files, so PEFT adapters of the same base load too) by merging
// into a model's weights: W' = W + (alpha / r) B A, computed in f32, stored in W's dtype.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/models/loader.h"
#include "kiln/train/train_model.h"

namespace kiln::train {

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;  // probability of zeroing an input element, in [0, 1)
  // Generic module names: q, k, v, o (attention), gate, up, down (MLP).
  std::vector<std::string> targets = {"q", "k", "v", "o"};
  uint64_t seed = 0;  // A's initialization and the dropout masks
};

// "q" -> kQuery, ..., "down" -> kDown; Error naming the target otherwise.
LinearSlot lora_slot(const std::string& target);
// The Kiln module of a layer's slot, e.g. decoder/layers_0/self_attention/query.
std::string lora_module(int64_t layer, LinearSlot slot);
// Splits "q,k,v" into targets (each checked by lora_slot(); no duplicates).
std::vector<std::string> parse_lora_targets(const std::string& list);

class Lora : public LinearAdapter {
 public:
  // Registers <module>/lora_a and <module>/lora_b of every targeted module of every layer as
  // trainable parameters of `model` (build it with freeze_base = true to train only them) and
  // routes the model's linear modules through this adapter. Throws Error for a bad option.
  Lora(TrainModel& model, LoraOptions options);
  ~Lora() override;
  Lora(const Lora&) = delete;
  Lora& operator=(const Lora&) = delete;

  const LoraOptions& options() const { return options_; }
  double scale() const { return options_.alpha / static_cast<double>(options_.rank); }
  // The dropout masks of the training forwards that follow depend on `key` (e.g. the
  // window index of the run, so the masks do not depend on the rank count).
  void set_dropout_key(uint64_t key) { key_ = key; }
  // Kiln module name -> (A [r, in], B [out, r]): views of the model's parameters.
  std::map<std::string, std::pair<Tensor, Tensor>> adapters() const;

  void forward(int64_t layer, LinearSlot slot, const float* x, float* y, int64_t rows,
               bool training) override;
  void backward(int64_t layer, LinearSlot slot, const float* x, const float* dy, float* dx,
                int64_t rows) override;

 private:
  struct Module {
    std::string name;
    Tensor a, b;                         // [r, in], [out, r]
    float *da = nullptr, *db = nullptr;  // their gradients
    int64_t in = 0, out = 0;
    // Saved by a training forward: dropout(x) and its keep mask (empty without dropout), u.
    std::vector<float> dropped, u;
    std::vector<uint8_t> keep;
  };
  Module* find(int64_t layer, LinearSlot slot);

  TrainModel& model_;
  LoraOptions options_;
  uint64_t key_ = 0;
  std::map<std::pair<int64_t, int>, Module> modules_;
};

// Kiln name -> the checkpoint's tensor name, for families whose tensors map one to one (no
// split, fused or transposed tensors). Throws Error naming the tensor and family otherwise.
std::map<std::string, std::string> hf_export_names(const LoadedModel& loaded);

// Writes the adapter folder files (see above) into the existing folder `dir`; `hf_names` from
// hf_export_names(), `base` recorded as base_model_name_or_path.
void save_lora(const std::string& dir, const Lora& lora,
               const std::map<std::string, std::string>& hf_names, const std::string& base);

// Adapters read from a folder: Kiln module -> (A, B) in f32, and the scale alpha / r
// (alpha / sqrt(r) with use_rslora).
struct LoraWeights {
  std::map<std::string, std::pair<Tensor, Tensor>> modules;
  double scale = 1.0;
  int64_t rank = 0;
};
// Reads DIR/adapter_config.json and DIR/adapter_model.safetensors, mapping PEFT's names to
// `loaded`'s Kiln modules. Throws Error naming the file and key or tensor: a missing file, a
// config that is not LoRA, a module the model does not have, a shape that does not fit.
LoraWeights load_lora(const std::string& dir, const LoadedModel& loaded);
// W += scale * B A for every adapted module of `weights` (in f32, stored back in each weight's
// dtype as a new tensor).
void merge_lora(WeightMap& weights, const LoraWeights& lora);

}  // namespace kiln::train
