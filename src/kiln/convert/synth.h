// `kiln synth`: writes a random HuggingFace model folder of a named real shape (config.json,
// sharded safetensors with an index, tokenizer.json), streaming, for benchmarks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/core/dtype.h"

namespace kiln {

struct SynthOptions {
  DType dtype = DType::BF16;
  uint64_t seed = 0;
  int64_t layers = 0;                        // 0 = the shape's own layer count
  uint64_t shard_bytes = uint64_t{2} << 30;  // target bytes per safetensors shard
  bool force = false;                        // replace an existing output folder
};

// Names accepted by synth_model: "llama-3.2-1b", "llama-3.1-8b", "qwen3-0.6b",
// "mixtral-8x7b", and the small "tiny-llama" used by tests.
std::vector<std::string> synth_shapes();

// Writes the folder `out_dir` (into a temporary sibling, renamed at the end, so a failure
// leaves nothing behind; an existing `out_dir` is an error unless options.force).
// Weights are uniform with variance 1/fan_in (norm scales 1), so activations stay O(1)
// and a forward pass gives finite logits. Memory use does not grow with the model: each
// tensor is generated and written in fixed-size chunks. Returns the total weight bytes.
uint64_t synth_model(const std::string& shape, const std::string& out_dir,
                     const SynthOptions& options);

}  // namespace kiln
