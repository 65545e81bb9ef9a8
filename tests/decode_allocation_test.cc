// The decode loop allocates nothing: this binary's global operator new counts the
// allocations made while counting is on, and each test turns it on only after the prompt's
// pass and two warm-up steps, so that every counted call is a steady decode step (forward
// pass with its workspace, sampling). Covers the bundled tinycoder (bf16, greedy and
// sampled) and every HF fixture (dense, MoE, MLA), through the Generator and through
// batched Model::forward steps.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <new>
#include <vector>

#include "hf_fixtures.h"
#include "kiln/cli/command.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/ops/top_k.h"
#include "kiln/runtime/generator.h"

namespace {
std::atomic<bool> counting{false};
std::atomic<int64_t> allocations{0};

void* allocate(size_t bytes) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1);
  if (void* p = std::malloc(bytes > 0 ? bytes : 1)) return p;
  throw std::bad_alloc();
}

void* allocate_aligned(size_t bytes, std::align_val_t alignment) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1);
  const size_t a = static_cast<size_t>(alignment);
  if (void* p = std::aligned_alloc(a, (bytes + a - 1) / a * a + (bytes == 0 ? a : 0))) return p;
  throw std::bad_alloc();
}
}  // namespace

void* operator new(size_t bytes) {
  return allocate(bytes);
}
void* operator new[](size_t bytes) {
  return allocate(bytes);
}
void* operator new(size_t bytes, std::align_val_t alignment) {
  return allocate_aligned(bytes, alignment);
}
void* operator new[](size_t bytes, std::align_val_t alignment) {
  return allocate_aligned(bytes, alignment);
}
// The nothrow forms too: the standard library's temporary buffers (std::stable_sort) use
// them, and a sanitizer build reports memory from its own nothrow new freed by free() here.
void* operator new(size_t bytes, const std::nothrow_t&) noexcept {
  try {
    return allocate(bytes);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void* operator new[](size_t bytes, const std::nothrow_t&) noexcept {
  try {
    return allocate(bytes);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void* operator new(size_t bytes, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  try {
    return allocate_aligned(bytes, alignment);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void* operator new[](size_t bytes, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  try {
    return allocate_aligned(bytes, alignment);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, size_t, std::align_val_t) noexcept {
  std::free(p);
}

namespace kiln {
namespace {

constexpr int64_t kWarmUpTokens = 3;  // the prompt's token and two decode steps
constexpr int64_t kCountedSteps = 8;

// Generates kWarmUpTokens + kCountedSteps tokens (stop tokens disabled) and returns the
// allocations made after the warm-up tokens.
int64_t generation_allocations(const Model& model, const SamplingParams& params,
                               const std::vector<int32_t>& prompt) {
  Generator generator(model, params, {});
  int64_t seen = 0;
  allocations = 0;
  const std::vector<int32_t> ids =
      generator.generate(prompt, kWarmUpTokens + kCountedSteps, [&](int32_t) {
        if (++seen == kWarmUpTokens) counting = true;
      });
  counting = false;
  EXPECT_EQ(static_cast<int64_t>(ids.size()), kWarmUpTokens + kCountedSteps);
  return allocations;
}

TEST(DecodeAllocations, TinycoderGreedyAndSampledStepsAllocateNothing) {
  const LoadedModel loaded = load_model(cli::default_model_path());
  const Model model(loaded.spec, loaded.weights);
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
  const int64_t greedy = generation_allocations(model, SamplingParams{}, prompt);
  const int64_t sampled = generation_allocations(model, SamplingParams{0.8f, 40, 0.9f, 7}, prompt);
  std::cout << "tinycoder: allocations in " << kCountedSteps << " decode steps: greedy " << greedy
            << ", sampled " << sampled << std::endl;
  EXPECT_EQ(greedy, 0);
  EXPECT_EQ(sampled, 0);
}

class FixtureDecodeAllocations : public ::testing::TestWithParam<std::string> {};

// The first 4 prompt tokens keep every position within the smallest fixture's
// max_position_embeddings (16, dynamic NTK), where the RoPE frequencies do not change.
TEST_P(FixtureDecodeAllocations, GeneratedAndBatchedStepsAllocateNothing) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string dir = test::hf_fixture_path(GetParam());
  const LoadedModel loaded = load_model(dir);
  const Model model(loaded.spec, loaded.weights);
  const Tensor input_ids = SafetensorsFile::open(dir + "/reference.safetensors").get("input_ids");
  const int64_t batch = input_ids.dim(0), prompt_length = 4, vocab = loaded.spec.vocab_size;
  std::vector<int32_t> prompt;  // [B, prompt_length]
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < prompt_length; ++t)
      prompt.push_back(static_cast<int32_t>(input_ids.item_as_double(b * input_ids.dim(1) + t)));

  const int64_t generated =
      generation_allocations(model, SamplingParams{},
                             std::vector<int32_t>(prompt.begin(), prompt.begin() + prompt_length));

  // All rows at once, straight through Model::forward with a workspace.
  KvCache cache = model.make_cache(batch, prompt_length + kWarmUpTokens + kCountedSteps);
  Workspace workspace;
  ForwardOptions options;
  options.last_position_only = true;
  const float* logits =
      model.forward(prompt.data(), batch, prompt_length, cache, workspace, options);
  std::vector<int32_t> next(batch);  // [B, 1]
  allocations = 0;
  for (int64_t step = 0; step < kWarmUpTokens + kCountedSteps - 1; ++step) {
    if (step == kWarmUpTokens - 1) counting = true;
    for (int64_t b = 0; b < batch; ++b)
      next[b] = static_cast<int32_t>(ops::argmax(logits + b * vocab, vocab));
    logits = model.forward(next.data(), batch, 1, cache, workspace, options);
  }
  counting = false;
  const int64_t batched = allocations;
  std::cout << GetParam() << ": allocations in " << kCountedSteps << " decode steps: generator "
            << generated << ", batch of " << batch << " " << batched << std::endl;
  EXPECT_EQ(generated, 0);
  EXPECT_EQ(batched, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureDecodeAllocations,
                         ::testing::ValuesIn(test::hf_fixture_names()), test::FixtureName());

}  // namespace
}  // namespace kiln
