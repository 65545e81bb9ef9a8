// TrainModel: a Llama-shaped decoder with a forward pass that keeps what its backward needs
// and a backward pass that gives the gradient of the mean next-token cross-entropy for every
// parameter, keyed by Kiln's weight names (models/weight_names.h). Parameters are f32 copies
// of a LoadedModel's weights; activations are f32.
//
// Handled (the Llama family's subset of ModelSpec): pre-norm blocks with RMSNorm (w or 1+w),
// grouped-query attention (MHA/GQA/MQA) with optional q/k/v/o biases, a custom softmax scale
// and an optional sliding window, RoPE of any type (frequencies for the sequence length, as
// the inference forward computes them from an empty cache), half-split or interleaved pairs,
// partial rotary; gated MLPs with SiLU (SwiGLU) or GELU-tanh, with or without biases; an
// embedding scale; a final RMSNorm; a tied or untied lm_head without bias. Also (hooks into
// train/moe_backward.h and train/mla_backward.h): mixture-of-experts blocks (every router but
// sparsemixer, shared experts, dense layers between them, gpt-oss's clamped SwiGLU experts),
// multi-head latent attention, attention sinks and chunked attention (train/sink_attention.h),
// a per-head QK RMSNorm before RoPE (Qwen3-MoE), Llama 4's weightless QK L2 norm after RoPE and
// its query temperature tuning. Anything else is refused by check_trainable()
// with an Error naming the feature.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/layers/weights.h"
#include "kiln/models/model_spec.h"
#include "kiln/train/mla_backward.h"
#include "kiln/train/moe_backward.h"

namespace kiln::train {

// Kiln parameter name -> contiguous, writable f32 tensor.
using ParameterMap = std::map<std::string, Tensor>;

// The linear modules of a layer that a LinearAdapter (train/lora.h) may add to.
enum class LinearSlot { kQuery, kKey, kValue, kOut, kGate, kUp, kDown };

// A trainable addition to some linear modules' outputs (LoRA): TrainModel calls forward()
// after each base linear y = x W^T + b and backward() after the base's backward, in reverse
// order of the forwards. `training` is true in forward_backward() (dropout applies), false in
// loss() and logits().
class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  // x [rows, in], y [rows, out]: y += adapter(x).
  virtual void forward(int64_t layer, LinearSlot slot, const float* x, float* y, int64_t rows,
                       bool training) = 0;
  // x [rows, in] as given to forward(), dy [rows, out]: dx [rows, in] += d adapter / dx,
  // and the adapter's own gradients are added.
  virtual void backward(int64_t layer, LinearSlot slot, const float* x, const float* dy, float* dx,
                        int64_t rows) = 0;
};

// Throws Error "training: model '<arch>'[ layer i]: <feature> is not supported yet" for the
// first feature of `spec` that TrainModel does not compute.
void check_trainable(const ModelSpec& spec);

class TrainModel {
 public:
  // Copies every parameter `spec` needs from `weights` (any float dtype) to f32. Throws Error
  // from check_trainable(), or naming a missing or misshapen tensor.
  // `freeze_base`: the model's own weights get no gradients (they are kept apart, in
  // frozen_parameters()); only parameters added by add_trainable() are trained (LoRA).
  TrainModel(ModelSpec spec, const WeightMap& weights, bool freeze_base = false);
  TrainModel(const TrainModel&) = delete;  // the layers point into the parameter storage
  TrainModel& operator=(const TrainModel&) = delete;
  TrainModel(TrainModel&&) = default;
  TrainModel& operator=(TrainModel&&) = default;

  const ModelSpec& spec() const { return spec_; }
  // Parameters and their gradients: the same names and shapes (the embedding table serves as
  // the lm_head when tied; there is no lm_head entry then). Change parameter values in place
  // only (the layers hold pointers to their storage); do not replace the tensors.
  ParameterMap& parameters() { return parameters_; }
  const ParameterMap& parameters() const { return parameters_; }
  const ParameterMap& gradients() const { return gradients_; }
  // The frozen base weights (empty unless constructed with freeze_base), and weights that are
  // never trained (DeepSeek-V3's score correction bias, a buffer in transformers too).
  const ParameterMap& frozen_parameters() const { return frozen_; }
  // Registers a new trainable f32 parameter `name` (zero, with a zero gradient) and returns
  // it; its storage stays put for the model's life. Throws Error when the name exists.
  Tensor add_trainable(const std::string& name, const Shape& shape);
  // Routes every linear module through `adapter` (not owned; null removes it).
  void set_adapter(LinearAdapter* adapter) { adapter_ = adapter; }
  void zero_gradients();
  // Multiplies every gradient by `factor` (the mean over accumulated micro-batches).
  void scale_gradients(float factor);

  // Packed rows: `segments` [B, T] (optional, null: one sequence per row) gives each token a
  // document id; a document is a run of equal ids within a row. Attention stays within a
  // document (block-diagonal causal) and positions restart at 0 at each document's start, so a
  // row of packed documents computes what each document alone would.
  //
  // Logits of B rows of T tokens from position 0: tokens [B, T] -> [B, T, V] f32.
  Tensor logits(const int32_t* tokens, int64_t batch, int64_t tokens_per_row,
                const int32_t* segments = nullptr) const;
  // The forward pass over tokens [B, T] and the mean cross-entropy over the targets [B, T]
  // that are not kIgnoreTarget (train/backward.h: next_token_targets()); the logits are made
  // `chunk_rows` rows at a time (never [B * T, V] at once). Returns the loss (0 when every
  // target is ignored). Throws Error for token or target ids outside the vocabulary.
  double loss(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t tokens_per_row,
              int64_t chunk_rows = 256, const int32_t* segments = nullptr) const;
  // Per-layer activation recomputation for forward_backward(): when on, the forward keeps
  // only each layer's input, and each layer's forward runs again just before its backward
  // (about one more forward pass of compute; the activations of one layer in memory instead
  // of all). The gradients are bitwise the same either way (adapters included: their dropout
  // masks are a function of the layer and element, so the second forward repeats the first).
  void set_recompute(bool on) { recompute_ = on; }
  bool recompute() const { return recompute_; }
  // loss() and the backward pass, whose gradients are ADDED to gradients() (call
  // zero_gradients() first unless accumulating).
  double forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch,
                          int64_t tokens_per_row, int64_t chunk_rows = 256,
                          const int32_t* segments = nullptr);

 private:
  // A linear module's parameters and gradients (biases null when absent).
  struct LinearParams {
    float *w = nullptr, *b = nullptr, *dw = nullptr, *db = nullptr;
  };
  // One decoder layer's parameters and gradients (pointers into the maps' storage).
  struct Layer {
    float *attention_norm = nullptr, *d_attention_norm = nullptr;
    float *mlp_norm = nullptr, *d_mlp_norm = nullptr;
    LinearParams query, key, value, out, gate, up, down;
    // Per-head QK RMSNorm [head_dim] (null when the layer has none).
    float *query_norm = nullptr, *key_norm = nullptr;
    float *d_query_norm = nullptr, *d_key_norm = nullptr;
    float *sinks = nullptr, *d_sinks = nullptr;  // attention sinks [heads] (gpt-oss)
    MoeParams moe;                               // when spec.moe.enabled() (gate, up, down unused)
    MlaParams mla;  // when spec.attention.is_mla() (query, key, value, out unused)
  };
  struct LayerSaved;   // what the forward keeps of one layer
  struct Activations;  // what the forward keeps for the backward
  LinearParams add_linear(const WeightMap& weights, const std::string& module, int64_t in,
                          int64_t out, bool bias);
  // keep_inputs_only: each layer's input, the rest of every layer in saved.work (overwritten).
  void forward(const int32_t* tokens, int64_t batch, int64_t tokens_per_row, Activations& saved,
               bool training = false, const int32_t* segments = nullptr,
               bool keep_inputs_only = false) const;
  // Layer i on the residual stream x (updated in place), keeping what its backward needs in s;
  // the positions and packed documents are saved's (set by forward()).
  void forward_layer(size_t i, int64_t batch, int64_t tokens_per_row, const Activations& saved,
                     bool training, std::vector<float>& x, LayerSaved& s) const;
  // The attention of layer i (not MLA) on s.normed1: branch [rows, hidden] (overwritten).
  void attention_forward_layer(size_t i, int64_t batch, int64_t tokens_per_row,
                               const Activations& saved, bool training, LayerSaved& s,
                               float* branch) const;
  // The attention of layer i's backward: from d_branch [rows, hidden] to d_normed [rows,
  // hidden] (added), parameter gradients added.
  void attention_backward_layer(size_t i, int64_t batch, int64_t tokens_per_row,
                                const Activations& saved, const LayerSaved& s,
                                const float* d_branch, float* d_normed);
  // The parameter `name` of `shape`, registered with a zero gradient.
  float* add_parameter(const WeightMap& weights, const std::string& name, const Shape& shape);
  // A weight that is never trained (kept in frozen_, no gradient).
  const float* add_constant(const WeightMap& weights, const std::string& name, const Shape& shape);
  // The MoE block and latent attention parameters of layer i.
  MoeParams add_moe(const WeightMap& weights, int64_t i);
  MlaParams add_mla(const WeightMap& weights, int64_t i);
  float* grad(const std::string& name);

  ModelSpec spec_;
  ParameterMap parameters_, gradients_, frozen_;
  bool freeze_base_ = false;
  LinearAdapter* adapter_ = nullptr;
  std::vector<Layer> layers_;
  float* embedding_ = nullptr;   // [V, hidden]
  float* final_norm_ = nullptr;  // [hidden]
  float* lm_head_ = nullptr;     // [V, hidden]: the embedding when tied
  std::string lm_head_name_;     // whose gradient the lm_head's goes to
  bool recompute_ = false;
};

}  // namespace kiln::train
