#include "kiln/analyze/config_keys.h"

#include <algorithm>

namespace kiln::analyze {

const std::vector<std::string>& irrelevant_keys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> k = {
        // Bookkeeping of the file and of transformers.
        "_name_or_path", "_attn_implementation_autoset", "auto_map", "transformers_version",
        "torch_dtype", "dtype", "use_cache", "cache_implementation", "for_llm_compressor",
        "task_specific_params", "tokenizer_class", "is_decoder", "gradient_checkpointing",
        "return_dict", "output_attentions", "output_hidden_states",
        // Training only: initialization, dropout, auxiliary losses, noise.
        "initializer_range", "attention_dropout", "hidden_dropout", "embd_pdrop", "attn_pdrop",
        "resid_pdrop", "embedding_dropout", "residual_dropout", "dropout", "activation_dropout",
        "classifier_dropout", "router_aux_loss_coef", "aux_loss_alpha", "seq_aux",
        "router_jitter_noise", "input_jitter_noise", "output_router_logits", "router_z_loss_coef",
        // Parallelism and precision hints of the original implementation.
        "pretraining_tp", "ep_size", "attention_softmax_in_fp32", "scale_attention_softmax_in_fp32",
        // GPT-2: cross-attention is only used under an encoder; upcasting is a precision
        // hint for half-precision attention.
        "add_cross_attention", "reorder_and_upcast_attn",
        // GPT-2's sequence-classification head, not part of the language model.
        "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
        "summary_first_dropout",
        // gpt-oss: the context length it was trained at (rope_scaling carries it too).
        "initial_context_length"};
    std::sort(k.begin(), k.end());
    return k;
  }();
  return keys;
}

bool is_irrelevant_key(const std::string& key) {
  const auto& keys = irrelevant_keys();
  return std::binary_search(keys.begin(), keys.end(), key);
}

}  // namespace kiln::analyze
