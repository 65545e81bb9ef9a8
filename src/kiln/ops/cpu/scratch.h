// Grow-only scratch buffers of the calling thread, so that kernels allocate only when a
// shape grows, never in a steady decode loop.
#pragma once

#include <cstddef>

namespace kiln::ops::cpu {

// Which buffer: each slot is independent, so a kernel may hold several at once.
enum class ScratchSlot {
  kPackedActivations,
  kStagedWeights,
  kPackRow,
  kAttentionKeys,
  kAttentionOutput,
  kAttentionScores,       // reference and latent attention: the scores of one query
  kWeightRow,             // reference kernels: one weight row converted to f32
  kTopKOrder,             // ops::top_k: the candidate order
  kRouting,               // ops::route_tokens: per-token scores
  kQuantizedActivations,  // quantized GEMV: activations as int8 blocks
  kActivationOffsets,     // K-quant GEMV (Q6_K): -32 * sums of 4 int8 activations
  kCount
};

// At least `bytes` bytes, 64-byte aligned, owned by the calling thread and valid until its
// next call with the same slot and a larger size. Contents are unspecified.
void* thread_scratch(ScratchSlot slot, size_t bytes);

}  // namespace kiln::ops::cpu
