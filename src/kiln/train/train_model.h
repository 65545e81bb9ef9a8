// TrainModel: a decoder with a forward pass that keeps what its backward needs and a
// backward pass that gives the gradient of the mean next-token cross-entropy for every
// parameter, keyed by Kiln's weight names (models/weight_names.h). Parameters are f32 copies
// of a LoadedModel's weights; activations are f32.
//
// Handled: blocks with the norms before (pre), after (post), around (sandwich) the attention and
// MLP, or parallel attention and MLP (with one shared norm
// or two); RMSNorm (w or 1+w), LayerNorm (with or without bias, or non-parametric); grouped-query
// attention (MHA/GQA/MQA) with optional q/k/v/o biases, QK norm per head or over the whole
// projection, a custom softmax scale, an optional sliding window and attention logit
// soft-capping, RoPE of any type per layer (frequencies for the sequence length, as the
// inference forward computes them from an empty cache), half-split or interleaved pairs,
// partial rotary; gated MLPs with SiLU (SwiGLU) or GELU-tanh, non-gated MLPs with any
// activation, with or without biases; an embedding scale, a learned position table; a final
// norm; a tied or untied lm_head (an untied one with an optional bias); final logit
// soft-capping. Also (hooked into attention_forward/backward and mlp_forward/backward):
// mixture-of-experts blocks in place of the MLP (train/moe_backward.h: every router but
// sparsemixer, shared experts, dense layers between them, gpt-oss's clamped SwiGLU experts),
// multi-head latent attention (train/mla_backward.h), attention sinks and chunked attention
// (train/sink_attention.h), Llama 4's weightless QK L2 norm after RoPE and its query
// temperature tuning. Anything else (sparsemixer routers, clip_qkv, ...) is refused by
// check_trainable() with an Error naming the feature.
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
  // A norm's spec, size, parameters and gradients (dim 0: no norm there, the identity;
  // parameters null when the kind has none).
  struct NormParams {
    NormSpec spec = {};
    int64_t dim = 0;
    float *w = nullptr, *b = nullptr, *dw = nullptr, *db = nullptr;
  };
  // One decoder layer's parameters and gradients (pointers into the maps' storage). The norms
  // present depend on the layer's placement (absent ones have dim 0): attention_in and mlp_in
  // before the attention and the MLP (pre, sandwich, parallel; a parallel block with a shared
  // norm has no mlp_in), attention_out and mlp_out on their outputs (post, sandwich).
  struct Layer {
    NormParams attention_in, attention_out, mlp_in, mlp_out;
    NormParams query_norm, key_norm;  // QK norm: over head_dim, or over all heads (whole)
    LinearParams query, key, value, out, gate, up, down;  // gate: gated MLPs only
    float *sinks = nullptr, *d_sinks = nullptr;  // attention sinks [heads] (gpt-oss), or null
    MoeParams moe;  // when the layer's moe is enabled (gate, up, down unused)
    MlaParams mla;  // latent attention layers (query, key, value, out and the QK norms unused)
  };
  struct NormStats;    // a norm's per-row statistics
  struct LayerSaved;   // what the forward keeps of one layer
  struct Activations;  // what the forward keeps for the backward
  struct Scratch;      // the backward's gradient buffers
  LinearParams add_linear(const WeightMap& weights, const std::string& module, int64_t in,
                          int64_t out, bool bias);
  NormParams add_norm(const WeightMap& weights, const std::string& module, const NormSpec& spec,
                      int64_t dim);
  // y = norm(x) over rows of n.dim values (n.dim > 0), keeping the statistics.
  static void norm_forward(const NormParams& n, const float* x, float* y, int64_t rows,
                           NormStats& st);
  // dx [rows, dim] += d norm / d x for dy (x and st: what the forward was given and kept); the
  // parameters' gradients are added.
  static void norm_backward(const NormParams& n, const float* x, const NormStats& st,
                            const float* dy, float* dx, int64_t rows);
  // keep_inputs_only: each layer's input, the rest of every layer in saved.work (overwritten).
  void forward(const int32_t* tokens, int64_t batch, int64_t tokens_per_row, Activations& saved,
               bool training = false, const int32_t* segments = nullptr,
               bool keep_inputs_only = false) const;
  // Layer i on the residual stream x (updated in place), keeping what its backward needs in s;
  // the positions and packed documents are saved's (set by forward()).
  void forward_layer(size_t i, int64_t batch, int64_t tokens_per_row, const Activations& saved,
                     bool training, std::vector<float>& x, LayerSaved& s) const;
  // The attention of layer i on its input `in` [rows, hidden] into `out` [rows, hidden]
  // (projections, QK norm, RoPE, attention with its sinks or chunks, output projection; or latent
  // attention), keeping what its backward needs.
  void attention_forward(size_t i, int64_t batch, int64_t tokens_per_row, const Activations& saved,
                         bool training, const float* in, float* out, LayerSaved& s) const;
  // Its backward: d_in [rows, hidden] += d attention / d in for d_out [rows, hidden].
  void attention_backward(size_t i, int64_t batch, int64_t tokens_per_row, const Activations& saved,
                          const float* in, const LayerSaved& s, const float* d_out, float* d_in,
                          Scratch& scratch);
  // The MLP (or MoE block) of layer i on `in` into `out` (both [rows, hidden]), and its backward.
  void mlp_forward(size_t i, int64_t rows, bool training, const float* in, float* out,
                   LayerSaved& s) const;
  void mlp_backward(size_t i, int64_t rows, const float* in, const LayerSaved& s,
                    const float* d_out, float* d_in, Scratch& scratch);
  // Layer i's backward: dx [rows, hidden] holds the gradient of its output on entry and of its
  // input on return.
  void backward_layer(size_t i, int64_t batch, int64_t tokens_per_row, const Activations& saved,
                      const LayerSaved& s, std::vector<float>& dx, Scratch& scratch);
  // The lm_head's logits of rows of final-norm outputs h [rows, hidden] -> [rows, V] (bias and
  // final soft-cap included).
  void head_logits(const float* h, float* logits, int64_t rows) const;
  // The lm_head input times spec.logit_scale (in place; nothing when it is 1).
  void scale_for_logits(std::vector<float>& h) const;
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
  float* embedding_ = nullptr;     // [V, hidden]
  float* positions_ = nullptr;     // [max_position_embeddings, hidden] learned positions, or null
  NormParams final_norm_;          // [hidden]
  float* lm_head_ = nullptr;       // [V, hidden]: the embedding when tied
  float* lm_head_bias_ = nullptr;  // [V] (untied lm_head with a bias), or null
  std::string lm_head_name_;       // whose gradient the lm_head's goes to
  bool recompute_ = false;
};

}  // namespace kiln::train
