// ModelSpec: a declarative description of a decoder-only transformer. Family files
// translate config.json into one; layers are built from it. Every architectural feature
// Kiln knows is a field here, so a new family is mostly a new combination of fields.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace kiln {

enum class NormKind {
  kNone,             // identity
  kRms,              // x / rms(x) * w
  kRmsOnePlus,       // x / rms(x) * (1 + w)   (Gemma)
  kLayerNorm,        // (x - mean) / std * w + b
  kLayerNormNoBias,  // (x - mean) / std * w
  kNonParametric,    // (x - mean) / std       (OLMo-1)
};

struct NormSpec {
  NormKind kind = NormKind::kRms;
  float eps = 1e-6f;
};

enum class Activation {
  kSilu,
  kGeluExact,  // erf form
  kGeluTanh,   // tanh approximation ("gelu_pytorch_tanh", "gelu_new", "gelu_fast" close)
  kRelu,
  kReluSquared,
};

enum class RopeType { kNone, kDefault, kLinear, kDynamic, kYarn, kLlama3, kLongRope };

struct RopeSpec {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  int64_t rotary_dim = 0;    // dimensions rotated per head (partial rotary when < head_dim)
  bool interleaved = false;  // pairs (2i, 2i+1) instead of (i, i + rotary_dim/2)
  double factor = 1.0;       // linear / dynamic / yarn / llama3
  int64_t original_max_position = 0;
  int64_t max_position = 0;  // max_position_embeddings
  // yarn
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 0.0, mscale_all_dim = 0.0;  // DeepSeek's yarn variant (0 = unset)
  double attention_factor = 0.0;              // 0 = derive from factor
  bool truncate = true;
  // llama3
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  // longrope
  std::vector<double> short_factor, long_factor;
  // LongRoPE with explicit magnitudes (Phi-3.5-MoE): cos and sin are multiplied by short_mscale
  // while the sequence fits original_max_position, else by long_mscale, instead of the factor
  // derived from `factor` (0 = unset).
  double short_mscale = 0.0, long_mscale = 0.0;
};

enum class QkNormKind {
  kNone,
  kPerHead,
  kWholeProjection,
  kL2,  // Llama 4: x / rms(x) per head, no weights (eps = qk_norm_spec.eps), after RoPE
};

enum class LayerKind { kFullAttention, kSlidingAttention };

struct AttentionSpec {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t value_head_dim = 0;  // equals head_dim unless MLA says otherwise
  bool q_bias = false, k_bias = false, v_bias = false, o_bias = false;
  QkNormKind qk_norm = QkNormKind::kNone;
  NormSpec qk_norm_spec;
  int64_t sliding_window = 0;  // 0 = full causal attention
  float softcap = 0.0f;        // attention logit soft-capping (0 = off)
  float scale = 0.0f;          // softmax scale (0 = 1/sqrt(head_dim))
  float clip_qkv = 0.0f;  // clamp q, k and v to [-clip_qkv, clip_qkv] after projection (0 = off)
  RopeSpec rope;
  // Multi-head latent attention (DeepSeek-V2/V3); all zero when not MLA. Then head_dim is
  // qk_nope_head_dim + qk_rope_head_dim, value_head_dim the value size, rope applies to the
  // qk_rope_head_dim part, q_bias means a bias on the query down-projection (q_lora_rank > 0),
  // k_bias on the KV down-projection, o_bias on the output projection (v_bias unused).
  int64_t q_lora_rank = 0;  // 0: one query projection instead of down, norm, up
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  NormSpec latent_norm;  // the RMSNorm of the query and KV latents
  // Llama 4 (all zero when off). Chunked local attention: the query at position p sees only
  // keys j <= p of its own chunk, j >= p - p % chunk_size. Temperature tuning (NoPE layers):
  // the query at position p is multiplied by
  //   log(floor((p + 1) / temperature_floor_scale) + 1) * temperature_attn_scale + 1.
  int64_t chunk_size = 0;
  double temperature_floor_scale = 0.0;
  double temperature_attn_scale = 0.0;
  bool is_mla() const { return kv_lora_rank > 0; }
  // Attention sinks (gpt-oss): a learned logit per query head (`<attention>/sinks` [heads])
  // joins each softmax denominator with no value; the weights of the real keys then sum to
  // less than 1.
  bool sinks = false;
};

struct MlpSpec {
  int64_t intermediate = 0;
  bool gated = true;  // act(gate(x)) * up(x), else act(up(x))
  Activation activation = Activation::kSilu;
  bool bias = false;
  // Clamped SwiGLU (gpt-oss), used instead of `activation` when swiglu_limit > 0 (gated only):
  // gate = min(gate, limit), up = clamp(up, -limit, limit),
  // act = (up + 1) * gate * sigmoid(swiglu_alpha * gate).
  float swiglu_limit = 0.0f;  // 0 = off
  float swiglu_alpha = 1.702f;
};

enum class RouterKind {
  kSoftmaxTopK,   // softmax over all experts, then top-k (Qwen3-MoE, ...)
  kTopKSoftmax,   // top-k logits, softmax over them (Mixtral)
  kSigmoidGroup,  // sigmoid scores, bias-corrected selection, group limit (DeepSeek-V3)
  kTopKSigmoid,   // top-k logits, sigmoid of each (Llama 4)
  kSparseMixer,   // Phi-3.5-MoE's top-2 sparsemixer at inference (MoeSpec::sparsemixer_eps)
};

struct MoeSpec {
  int64_t num_experts = 0;  // 0 = dense layer
  int64_t top_k = 0;
  int64_t expert_intermediate = 0;
  RouterKind router = RouterKind::kSoftmaxTopK;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  // Groups of experts: kSigmoidGroup ranks groups by the sum of their two best biased scores;
  // kSoftmaxTopK with n_group > 1 is DeepSeek-V2's group_limited_greedy (groups ranked by their
  // best score). Only the experts of the topk_group best groups can be chosen.
  int64_t n_group = 1, topk_group = 1;
  bool score_correction_bias = false;
  // kSparseMixer: an expert is masked out of a pick's softmax when
  // (best - score) / max(|score|, best) > 2 * sparsemixer_eps (router_jitter_noise).
  float sparsemixer_eps = 0.0f;
  int64_t num_shared_experts = 0;
  int64_t shared_intermediate = 0;  // total intermediate size of the shared expert(s)
  // Qwen2-MoE: the shared expert's output times sigmoid(x . w), w = `shared_expert_gate` [1,
  // hidden].
  bool shared_expert_gate = false;
  // Llama 4: the routing weight multiplies the expert's input, not its output.
  bool weight_expert_input = false;
  bool enabled() const { return num_experts > 0; }
  // gpt-oss: a bias on the router logits (`gate/bias` [E]), biases on every expert's
  // projections (`wi_0/bias`, `wi_1/bias` [E, I], `wo/bias` [E, hidden]), and the experts'
  // clamped SwiGLU (MlpSpec::swiglu_limit, swiglu_alpha; limit 0 = off).
  bool router_bias = false;
  bool expert_bias = false;
  float swiglu_limit = 0.0f;
  float swiglu_alpha = 1.702f;
};

// Where norms sit in a block.
enum class NormPlacement {
  kPre,       // x + attn(norm(x)); x + mlp(norm(x))             (Llama)
  kPost,      // x + norm(attn(x)); x + norm(mlp(x))             (OLMo-2)
  kSandwich,  // x + post_norm(attn(pre_norm(x))); same for MLP   (Gemma 2/3)
  kParallel,  // x + attn(norm(x)) + mlp(norm'(x))                (GPT-NeoX, Falcon, Phi)
};

struct LayerSpec {
  LayerKind kind = LayerKind::kFullAttention;
  AttentionSpec attention;
  MlpSpec mlp;
  MoeSpec moe;  // when enabled, replaces mlp
  NormSpec norm;
  NormPlacement placement = NormPlacement::kPre;
  // Parallel blocks: whether the MLP branch has its own norm (GPT-NeoX) or shares the
  // attention's (Falcon-7B, Phi).
  bool parallel_shared_norm = false;
  // Granite's residual_multiplier: each branch's output is scaled before it joins the residual.
  float residual_scale = 1.0f;
};

struct ModelSpec {
  std::string family;        // registry key that built it ("llama", "qwen3", ...)
  std::string architecture;  // architectures[0] from config.json
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t max_position_embeddings = 0;
  std::vector<LayerSpec> layers;
  // Embeddings
  float embedding_scale = 1.0f;    // Gemma: sqrt(hidden_size), rounded to the dtype
  bool learned_positions = false;  // GPT-2: absolute position embeddings
  bool tie_word_embeddings = false;
  NormSpec final_norm;
  bool has_final_norm = true;
  // Output
  float final_logit_softcap = 0.0f;  // 0 = off
  float logit_scale = 1.0f;
  bool lm_head_bias = false;
  // Tokens
  std::vector<int64_t> bos_token_ids;
  std::vector<int64_t> eos_token_ids;

  int64_t num_layers() const { return static_cast<int64_t>(layers.size()); }
  // Bytes of KV cache per token (all layers) at `bytes_per_value` (4 for f32): keys and
  // values of every KV head, or for multi-head latent attention the latent and the rotary
  // key (kv_lora_rank + qk_rope_head_dim values).
  int64_t kv_cache_bytes_per_token(int64_t bytes_per_value = 4) const;
  // A JSON dump of every field, for `kiln inspect`, checkpoint manifests and family files.
  nlohmann::json to_json() const;
  // The inverse of to_json(): fields absent from `json` keep their defaults; an unknown key,
  // a value of the wrong type or an unknown enum name throws Error naming `where` and the key
  // path ("layers[3].attention.qk_norm").
  static ModelSpec from_json(const nlohmann::json& json, const std::string& where);
};

// The one spelling of each enum value, used by to_json(), from_json(), family files and
// `kiln analyze` ("rms_one_plus", "gelu_tanh", "yarn", "top_k_softmax", "sandwich", ...).
const char* norm_kind_name(NormKind kind);
const char* activation_name(Activation activation);
const char* rope_type_name(RopeType type);
const char* router_name(RouterKind router);
const char* placement_name(NormPlacement placement);
const char* qk_norm_name(QkNormKind kind);
const char* layer_kind_name(LayerKind kind);

}  // namespace kiln
