// A llama.cpp GGUF file seen as a HuggingFace model: its metadata as a config.json, its
// tensors under HF names (llama.cpp's Q/K row order for RoPE undone, quantized tensors kept
// in Kiln's block formats or dequantized one at a time) and its vocabulary as a tokenizer.json, so
// the families, the loader and the converter read it like any model folder.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/io/gguf.h"
#include "kiln/io/hf_config.h"
#include "kiln/models/family.h"

namespace kiln {

// True when `path` is a .gguf file.
bool is_gguf_model(const std::string& path);

// The architectures read: general.architecture "llama" (Llama, Mistral and others that
// llama.cpp writes as llama; Q/K rows permuted), "qwen2" and "qwen3" (no permutation).
std::vector<std::string> gguf_architectures();

// The HF config.json of the GGUF's model: architectures, model_type, sizes, RoPE, norm
// epsilon, vocabulary size, tied embeddings (no output.weight), bos/eos ids. Throws Error
// naming the file and metadata key (or tensor) for an unknown architecture, missing or bad
// hyperparameters, or what Kiln cannot represent (RoPE scaling it does not map, llama 3
// rope_freqs.weight).
Json gguf_hf_config_json(const GgufFile& gguf);
HfConfig gguf_hf_config(const GgufFile& gguf);

// The HF tokenizer.json of the GGUF's vocabulary: tokenizer.ggml.model "gpt2" (byte-level
// BPE: tokens, merges, token_type; pre-tokenizer from tokenizer.ggml.pre: "gpt-2"/"default",
// "llama-bpe"/"llama3", "qwen2"), bos/eos and add_bos_token/add_eos_token. Throws Error naming
// the key for other tokenizer models or pre-tokenizers.
std::string gguf_tokenizer_json(const GgufFile& gguf);

// How a GGUF model's quantized tensors load:
//   kDirect: the types with a Kiln block format (gguf_direct.h: Q8_0, Q4_1, Q4_0, Q4_K, Q5_K,
//            Q6_K) in that format, ggml's values exactly, run by Kiln's quantized kernels;
//            the other quantized types (Q5_0, Q5_1) dequantized to F32;
//   kF32:    every quantized tensor dequantized to F32 (ggml's values exactly);
//   kBF16:   every quantized tensor dequantized and rounded to BF16.
enum class GgufWeights { kDirect, kF32, kBF16 };
// "direct", "f32", "bf16"; parse_gguf_weights throws Error for other names.
const char* gguf_weights_name(GgufWeights weights);
GgufWeights parse_gguf_weights(const std::string& name);
// The process-wide choice load_model() makes for .gguf models (kDirect unless set; the
// commands' `--gguf-weights`). Not safe while another thread is loading a model.
GgufWeights gguf_weights();
void set_gguf_weights(GgufWeights weights);

// The GGUF's tensors under HF names with HF shapes. get() reads quantized tensors as
// `weights` says (the first constructor: dequantized into `dequantized`, F32: ggml's values
// exactly; BF16: rounded) and un-permutes attn_q / attn_k rows of llama-architecture files
// (whole rows, so whole blocks of any format); plain F32/F16/BF16 tensors are views of the
// mapping. Tensors llama.cpp adds that HF checkpoints lack are not listed.
class GgufSource : public TensorSource {
 public:
  explicit GgufSource(const std::string& path, Residency residency = Residency::kMapped,
                      DType dequantized = DType::F32);
  GgufSource(const std::string& path, Residency residency, GgufWeights weights);

  std::vector<std::string> names() const override { return hf_names_; }
  bool contains(const std::string& name) const override;
  Tensor get(const std::string& name) const override;
  Shape shape_of(const std::string& name) const override;
  DType dtype_of(const std::string& name) const override;
  std::string where() const override { return gguf_->path(); }

  const GgufFile& gguf() const { return *gguf_; }
  // The GGUF tensor behind an HF name (throws when absent).
  const GgufTensorInfo& gguf_tensor(const std::string& hf_name) const;

 private:
  std::shared_ptr<GgufFile> gguf_;
  DType dequantized_;
  bool direct_ = false;
  bool permuted_qk_ = false;
  int64_t heads_ = 0, kv_heads_ = 0;
  std::vector<std::string> hf_names_;
  std::map<std::string, std::string> to_gguf_;  // HF name -> GGUF name
};

// HF name of a llama.cpp tensor name ("blk.3.attn_q.weight" ->
// "model.layers.3.self_attn.q_proj.weight"), or "" when it has no HF counterpart.
std::string gguf_to_hf_name(const std::string& gguf_name);

}  // namespace kiln
