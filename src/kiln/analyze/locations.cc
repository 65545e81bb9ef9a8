#include "kiln/analyze/locations.h"

namespace kiln::analyze {

std::string feature_location(const std::string& id, const std::string& value) {
  std::string word = value.substr(0, value.find_first_of(" ("));
  auto starts = [&](const char* prefix) { return id.rfind(prefix, 0) == 0; };
  if (id == "multimodal")
    return "src/kiln/models/: a vision encoder and the multimodal wrapper (Kiln runs the text "
           "model only)";
  if (id == "embedding.scale") return "src/kiln/layers/model.cc: embedding scale";
  if (id == "embedding.positions") {
    if (word == "alibi") return "src/kiln/ops/attention.cc: ALiBi position biases";
    if (word == "learned")
      return "src/kiln/layers/model.cc: learned position embeddings (src/kiln/ops/embedding.cc)";
    return "src/kiln/ops/rope.cc: rotary position embeddings";
  }
  if (id == "attention.kind" && word == "mla")
    return "src/kiln/layers/mla.cc: multi-head latent attention";
  if (id == "attention.kind") return "src/kiln/layers/attention.cc: " + word + " heads";
  if (id == "attention.bias") return "src/kiln/layers/attention.cc: projection biases";
  if (id == "attention.qk_norm")
    return "src/kiln/layers/attention.cc: " + word + " QK-norm (src/kiln/ops/norm.cc for the norm)";
  if (id == "attention.sliding_window")
    return "src/kiln/ops/attention.cc: sliding-window mask (and src/kiln/runtime/kv_cache.cc)";
  if (id == "attention.chunked") return "src/kiln/ops/attention.cc: chunked attention mask";
  if (id == "attention.softcap") return "src/kiln/ops/attention.cc: attention logit soft-cap";
  if (id == "attention.scale") return "src/kiln/layers/attention.cc: softmax scale";
  if (id == "attention.sinks")
    return "src/kiln/ops/attention.cc: attention sinks (a learned per-head logit in the softmax)";
  if (id == "attention.temperature_tuning")
    return "src/kiln/layers/attention.cc: query temperature tuning";
  if (id == "attention.clip_qkv") return "src/kiln/layers/attention.cc: q/k/v clipping";
  if (id == "residual.scale") return "src/kiln/layers/decoder_layer.cc: residual branch scale";
  if (id == "attention.bidirectional") return "src/kiln/ops/attention.cc: bidirectional mask";
  if (id == "attention.layer_type") return "src/kiln/layers/: a " + word + " layer";
  if (starts("attention.")) return "src/kiln/layers/attention.cc";
  if (id == "rope.type") return "src/kiln/ops/rope.cc: " + word + " frequency scaling";
  if (starts("rope.scaling."))
    return "src/kiln/ops/rope.cc: the '" + id.substr(13) + "' scaling parameter";
  if (id == "rope.fraction") return "src/kiln/ops/rope.cc: " + word + " rotary dimensions";
  if (id == "rope.pairing") return "src/kiln/ops/rope.cc: " + word + " pairs";
  if (id == "rope.local") return "src/kiln/layers/attention.cc: per-layer-type RoPE settings";
  if (id == "rope.skipped_layers") return "src/kiln/layers/decoder_layer.cc: layers without RoPE";
  if (id == "rope.mrope") return "src/kiln/ops/rope.cc: multimodal RoPE sections";
  if (starts("rope.")) return "src/kiln/ops/rope.cc";
  if (id == "norm.kind") return "src/kiln/ops/norm.cc: " + word + " norm";
  if (id == "norm.placement")
    return "src/kiln/layers/decoder_layer.cc: " + word + " norm placement";
  if (id == "mlp.activation") return "src/kiln/ops/activation.cc: " + word;
  if (id == "mlp.kind") return "src/kiln/layers/mlp.cc: " + word + " MLP";
  if (id == "mlp.bias") return "src/kiln/layers/mlp.cc: biases";
  if (starts("mlp.")) return "src/kiln/layers/mlp.cc";
  if (id == "moe") return "src/kiln/layers/moe.cc: mixture of experts";
  if (id == "moe.router") return "src/kiln/layers/moe.cc: " + word + " router";
  if (id == "moe.router_bias") return "src/kiln/layers/moe.cc: router bias";
  if (id == "moe.expert_bias") return "src/kiln/layers/moe.cc: expert biases";
  if (id == "moe.groups") return "src/kiln/layers/moe.cc: group-limited expert selection";
  if (id == "moe.routed_scaling") return "src/kiln/layers/moe.cc: routed scaling factor";
  if (id == "moe.shared_experts") return "src/kiln/layers/moe.cc: shared experts";
  if (id == "moe.shared_expert_gate") return "src/kiln/layers/moe.cc: shared-expert gate";
  if (id == "moe.dense_layers")
    return "src/kiln/layers/decoder_layer.cc: dense and MoE layers in one model";
  if (starts("moe")) return "src/kiln/layers/moe.cc";
  if (id == "logits.softcap") return "src/kiln/layers/model.cc: final logit soft-cap";
  if (id == "logits.scale") return "src/kiln/layers/model.cc: logit scale";
  if (id == "logits.bias") return "src/kiln/layers/model.cc: lm_head bias";
  if (id == "quantization")
    return "src/kiln/io/hf_quantized.cc: read and dequantize " + word +
           " weights on load, as fp8 and mxfp4 are";
  return "src/kiln/";
}

}  // namespace kiln::analyze
