// Kiln's names for modules, parameters and captured activations. They follow MaxText's
// parameter tree (unscanned form), so that a Kiln checkpoint maps one to one onto an Orbax
// one:
//
//   token_embedder/embedding                                   [vocab, hidden]
//   position_embedder/embedding                                [max_positions, hidden] (GPT-2)
//   decoder/layers_{i}/pre_self_attention_layer_norm/scale     [hidden]  (+ /bias)
//   decoder/layers_{i}/self_attention/query/kernel             [heads * head_dim, hidden]
//   decoder/layers_{i}/self_attention/key/kernel               [kv_heads * head_dim, hidden]
//   decoder/layers_{i}/self_attention/value/kernel             [kv_heads * value_dim, hidden]
//   decoder/layers_{i}/self_attention/out/kernel               [hidden, heads * value_dim]
//   decoder/layers_{i}/self_attention/{query,key,value,out}/bias           (when present)
//   decoder/layers_{i}/self_attention/{query_norm,key_norm}/scale [head_dim] (per-head QK norm)
//   decoder/layers_{i}/self_attention/sinks                    [heads] (attention sinks)
//   decoder/layers_{i}/post_self_attention_layer_norm/scale    [hidden]  (the pre-MLP norm;
//                                     with post or sandwich norms: the attention output's)
//   decoder/layers_{i}/{pre_ffw_norm,post_ffw_norm}/scale      [hidden]  (sandwich, post norms)
//   decoder/layers_{i}/mlp/wi_0/kernel                         [intermediate, hidden] (gate)
//   decoder/layers_{i}/mlp/wi_1/kernel                         [intermediate, hidden] (up)
//   decoder/layers_{i}/mlp/wo/kernel                           [hidden, intermediate] (down)
//  mixture-of-experts layers (E experts of intermediate I) instead of the three above:
//   decoder/layers_{i}/mlp/gate/kernel                         [E, hidden] (router)
//   decoder/layers_{i}/mlp/gate/score_correction_bias          [E] (DeepSeek-V3)
//   decoder/layers_{i}/mlp/gate/bias                           [E] (router bias, gpt-oss)
//   decoder/layers_{i}/mlp/{wi_0,wi_1}/kernel                  [E, I, hidden] (stacked experts)
//   decoder/layers_{i}/mlp/wo/kernel                           [E, hidden, I]
//   decoder/layers_{i}/mlp/{wi_0,wi_1}/bias, wo/bias           [E, I], [E, hidden] (gpt-oss)
//   decoder/layers_{i}/mlp/shared_experts/{wi_0,wi_1,wo}/kernel  (shared experts, as an MLP)
//  multi-head latent attention layers (DeepSeek; ranks Rq, Rkv, head dims nope, rope, v)
//  instead of query/key/value:
//   decoder/layers_{i}/self_attention/wq_a/kernel              [Rq, hidden]
//   decoder/layers_{i}/self_attention/q_norm/scale             [Rq]
//   decoder/layers_{i}/self_attention/wq_b/kernel              [heads * (nope + rope), Rq]
//   decoder/layers_{i}/self_attention/query/kernel             [heads * (nope + rope), hidden]
//                                                              (instead of wq_a/wq_b, Rq = 0)
//   decoder/layers_{i}/self_attention/wkv_a/kernel             [Rkv + rope, hidden]
//   decoder/layers_{i}/self_attention/kv_norm/scale            [Rkv]
//   decoder/layers_{i}/self_attention/wkv_b/kernel             [heads * (nope + v), Rkv]
//   decoder/layers_{i}/self_attention/{wq_a,wkv_a,out}/bias    (when present)
//   decoder/decoder_norm/scale                                 [hidden]
//   decoder/logits_dense/kernel                                [vocab, hidden] (absent when tied)
//
// Layout: every linear kernel is stored [out, in] (PyTorch's nn.Linear layout, one output
// row contiguous: the natural layout for matrix-vector products). MaxText stores [in, out];
// export to Orbax transposes.
//
// Activations passed to a forward observer are named by the module that produced them
// (the module path, without a parameter suffix), with shape [B, T, ...]:
//   token_embedder                                   embedding output (after any scaling)
//   decoder/layers_{i}/pre_self_attention_layer_norm input norm output
//   decoder/layers_{i}/self_attention/{query,key,value}  projections, [B, T, heads, head_dim]
//   decoder/layers_{i}/self_attention/{query_norm,key_norm}  after QK norm, before RoPE
//   decoder/layers_{i}/self_attention/{wq_a,q_norm,wkv_a,kv_norm}  latent attention's
//                                                    down projections and their norms
//   decoder/layers_{i}/self_attention/out            out projection output (before any norm)
//   decoder/layers_{i}/self_attention                attention output (after any post norm)
//   decoder/layers_{i}/post_self_attention_layer_norm  pre-MLP norm output
//   decoder/layers_{i}/mlp/gate                      router logits [B, T, E] (mixture of experts)
//   decoder/layers_{i}/mlp/wo                        dense MLP output (before any post norm)
//   decoder/layers_{i}/mlp                           MLP output (after any post norm)
//   decoder/layers_{i}                               hidden state after the layer (residual)
//   decoder/decoder_norm                             final norm output
//   decoder/logits_dense                             logits
// HF's module paths correspond as: model.embed_tokens, model.layers.{i}.input_layernorm,
// .self_attn.{q,k,v}_proj, .self_attn.{q,k}_norm, .self_attn.o_proj, .self_attn,
// .post_attention_layernorm, .mlp.gate, .mlp.down_proj, .mlp, model.layers.{i}, model.norm,
// lm_head (Llama's names; each family declares its own in hf_modules(), hf_module_names.h).
#pragma once

#include <cstdint>
#include <string>

namespace kiln::names {

inline std::string token_embedder() {
  return "token_embedder";
}
// Learned absolute position embeddings (GPT-2).
inline std::string position_embedder() {
  return "position_embedder";
}
inline std::string layer(int64_t i) {
  return "decoder/layers_" + std::to_string(i);
}
inline std::string input_norm(int64_t i) {
  return layer(i) + "/pre_self_attention_layer_norm";
}
inline std::string attention(int64_t i) {
  return layer(i) + "/self_attention";
}
inline std::string post_attention_norm(int64_t i) {
  return layer(i) + "/post_self_attention_layer_norm";
}
// Gemma 2/3 sandwich and OLMo-2 post norms around the MLP.
inline std::string pre_ffw_norm(int64_t i) {
  return layer(i) + "/pre_ffw_norm";
}
inline std::string post_ffw_norm(int64_t i) {
  return layer(i) + "/post_ffw_norm";
}
inline std::string mlp(int64_t i) {
  return layer(i) + "/mlp";
}
inline std::string final_norm() {
  return "decoder/decoder_norm";
}
inline std::string lm_head() {
  return "decoder/logits_dense";
}

// Children of an attention module: "query", "key", "value", "out", "query_norm", "key_norm".
inline std::string child(const std::string& module, const std::string& name) {
  return module + "/" + name;
}
// Children of an MLP module.
inline std::string mlp_gate(int64_t i) {
  return mlp(i) + "/wi_0";
}
inline std::string mlp_up(int64_t i) {
  return mlp(i) + "/wi_1";
}
inline std::string mlp_down(int64_t i) {
  return mlp(i) + "/wo";
}

// Parameter names of a module.
inline std::string embedding(const std::string& module) {
  return module + "/embedding";
}
inline std::string kernel(const std::string& module) {
  return module + "/kernel";
}
inline std::string bias(const std::string& module) {
  return module + "/bias";
}
inline std::string scale(const std::string& module) {
  return module + "/scale";
}
// The per-head sink logits of an attention module (gpt-oss).
inline std::string sinks(const std::string& attention_module) {
  return attention_module + "/sinks";
}
// The bias DeepSeek-V3's router adds to its scores to choose experts (not to weigh them).
inline std::string score_correction_bias(const std::string& module) {
  return module + "/score_correction_bias";
}

}  // namespace kiln::names
