// Model::decode_rows on every HF fixture: three sequences of different lengths decoded together
// give, step by step, bitwise the logits of each sequence decoded alone (sliding windows, MoE,
// MLA, sinks, learned positions, soft-caps included) — what lets the server batch requests
// without changing any request's tokens. The batched caches start at the prompt's length and
// grow before each step (as the server's block-wise caches do), the alone ones are allocated
// whole: the capacity does not change a bit either. With bf16 caches the same holds, and the
// logits stay close to the f32 cache's (the error is printed).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <memory>

#include "hf_fixtures.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"

namespace kiln {
namespace {

class DecodeRows : public ::testing::TestWithParam<std::string> {};

// Prompts, then `steps` tokens alone and together: the tokens in `fed` ([sequence][step]), or
// when it is empty the greedy ones (stored there). Returns the alone logits of every step
// ([sequence][step][V]) after checking the together ones equal them bitwise.
std::vector<std::vector<std::vector<float>>> check_decode_rows(
    const Model& model, DType dtype, std::vector<std::vector<int32_t>>& fed) {
  const int64_t vocab = model.spec().vocab_size, steps = 5;
  const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, 3}, {7}, {2, 4, 6, 8, 10, 12, 14}};
  const size_t n = prompts.size();
  ForwardOptions last;
  last.last_position_only = true;
  // Alone: the prompt, then `steps` tokens, keeping every step's logits.
  const bool greedy = fed.empty();
  if (greedy) fed.resize(n);
  std::vector<std::vector<std::vector<float>>> alone(n);
  for (size_t s = 0; s < n; ++s) {
    KvCache cache = model.make_cache(1, 32, dtype);
    Workspace workspace;
    const float* logits = model.forward(
        prompts[s].data(), 1, static_cast<int64_t>(prompts[s].size()), cache, workspace, last);
    for (int64_t t = 0; t < steps; ++t) {
      if (greedy)
        fed[s].push_back(static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits));
      const int32_t next = fed[s][t];
      logits = model.forward(&next, 1, 1, cache, workspace, last);
      alone[s].emplace_back(logits, logits + vocab);
    }
  }
  // Together: the same prompts one by one, then shared decode steps.
  std::vector<KvCache> caches;
  for (size_t s = 0; s < n; ++s) {
    caches.push_back(model.make_cache(1, static_cast<int64_t>(prompts[s].size()), dtype));
    Workspace workspace;
    model.forward(prompts[s].data(), 1, static_cast<int64_t>(prompts[s].size()), caches[s],
                  workspace, last);
  }
  std::vector<KvCache*> pointers;
  for (KvCache& c : caches) pointers.push_back(&c);
  Workspace workspace;
  int64_t differing = 0;
  for (int64_t t = 0; t < steps; ++t) {
    std::vector<int32_t> tokens;
    for (size_t s = 0; s < n; ++s) {
      tokens.push_back(fed[s][t]);
      caches[s].reserve(caches[s].length() + 1);
    }
    const float* logits =
        model.decode_rows(tokens.data(), static_cast<int64_t>(n), pointers.data(), workspace);
    for (size_t s = 0; s < n; ++s)
      if (std::memcmp(logits + s * vocab, alone[s][t].data(), sizeof(float) * vocab) != 0)
        ++differing;
  }
  EXPECT_EQ(differing, 0) << "rows whose logits differ from the sequence alone ("
                          << dtype_name(dtype) << " cache)";
  for (size_t s = 0; s < n; ++s)
    EXPECT_EQ(caches[s].length(), static_cast<int64_t>(prompts[s].size()) + steps);
  return alone;
}

TEST_P(DecodeRows, EqualTheSequencesDecodedAloneBitwise) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const LoadedModel loaded = load_model(test::hf_fixture_path(GetParam()));
  const Model model(loaded.spec, loaded.weights);
  std::vector<std::vector<int32_t>> fed;
  check_decode_rows(model, DType::F32, fed);
}

// bf16 caches: decode_rows still equals each sequence alone bitwise, and the logits differ
// from the f32 cache's by the rounding of the cached keys and values.
TEST_P(DecodeRows, Bf16CacheIsBatchInvariantAndCloseToF32) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const LoadedModel loaded = load_model(test::hf_fixture_path(GetParam()));
  const Model model(loaded.spec, loaded.weights);
  std::vector<std::vector<int32_t>> fed;  // the f32 run's greedy tokens, fed to both
  const auto f32 = check_decode_rows(model, DType::F32, fed);
  const auto bf16 = check_decode_rows(model, DType::BF16, fed);
  double max_error = 0.0, max_logit = 0.0;
  for (size_t s = 0; s < f32.size(); ++s)
    for (size_t t = 0; t < f32[s].size(); ++t)
      for (size_t v = 0; v < f32[s][t].size(); ++v) {
        max_error =
            std::max(max_error, std::fabs(static_cast<double>(bf16[s][t][v]) - f32[s][t][v]));
        max_logit = std::max(max_logit, std::fabs(static_cast<double>(f32[s][t][v])));
      }
  std::cout << GetParam() << ": bf16 KV cache, max logit error " << max_error
            << " (largest |logit| " << max_logit << ", relative " << max_error / max_logit << ")"
            << std::endl;
  EXPECT_LT(max_error, 0.02 * max_logit);
}

// Chunked prefill as the server runs it: a prompt cut into chunks that share step_rows calls
// with other sequences' prompt chunks and decode tokens gives, at every position, bitwise the
// logits of feeding the sequence alone one token at a time, however it is cut; the decode steps
// after it (which read every cached key and value) too. Runs with both cache types. Token by
// token is close to one forward pass over the whole sequence (the difference is printed).
TEST_P(DecodeRows, PromptChunksSharingAStepEqualTokenByToken) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const LoadedModel loaded = load_model(test::hf_fixture_path(GetParam()));
  const Model model(loaded.spec, loaded.weights);
  const int64_t vocab = model.spec().vocab_size;
  // Sequence 0: a 10-token prompt then 2 decode tokens; sequence 1: a 3-token prompt then 4.
  const std::vector<std::vector<int32_t>> seqs = {{1, 5, 9, 3, 11, 2, 7, 4, 6, 8, 12, 3},
                                                  {7, 2, 9, 5, 1, 4, 10}};
  for (DType dtype : {DType::F32, DType::BF16}) {
    // Alone, one token at a time: the logits of every position.
    std::vector<std::vector<std::vector<float>>> alone(seqs.size());
    ForwardOptions last;
    last.last_position_only = true;
    double max_error = 0.0, max_logit = 0.0;  // against one pass over the whole sequence
    for (size_t s = 0; s < seqs.size(); ++s) {
      KvCache cache = model.make_cache(1, 32, dtype);
      Workspace workspace;
      for (int32_t token : seqs[s]) {
        const float* logits = model.forward(&token, 1, 1, cache, workspace, last);
        alone[s].emplace_back(logits, logits + vocab);
      }
      KvCache whole_cache = model.make_cache(1, 32, dtype);
      const auto length = static_cast<int64_t>(seqs[s].size());
      const float* whole = model.forward(seqs[s].data(), 1, length, whole_cache, workspace);
      for (int64_t t = 0; t < length; ++t)
        for (int64_t v = 0; v < vocab; ++v) {
          max_error = std::max(
              max_error, std::fabs(static_cast<double>(alone[s][t][v]) - whole[t * vocab + v]));
          max_logit = std::max(max_logit, std::fabs(static_cast<double>(whole[t * vocab + v])));
        }
    }
    // Token by token (the server's path) is close to, not bitwise, one pass over the prompt.
    std::cout << GetParam() << " (" << dtype_name(dtype)
              << " cache): token by token against one pass, max logit difference " << max_error
              << " (largest |logit| " << max_logit << ")" << std::endl;
    EXPECT_LT(max_error, 1e-3 * max_logit);
    // Together: each step a list of (sequence, tokens); logits wanted for every row or only
    // for the last row of each sequence.
    using Step = std::vector<std::pair<size_t, int64_t>>;
    const std::vector<std::vector<Step>> schedules = {
        {{{0, 4}, {1, 1}}, {{1, 2}, {0, 6}}, {{0, 1}, {1, 1}}, {{1, 1}, {0, 1}}, {{1, 2}}},
        {{{1, 3}, {0, 1}}, {{0, 9}, {1, 1}}, {{0, 2}, {1, 3}}},
        {{{0, 12}, {1, 4}}, {{1, 3}}}};
    for (size_t k = 0; k < schedules.size(); ++k)
      for (bool every_row : {true, false}) {
        std::vector<KvCache> caches;
        for (size_t s = 0; s < seqs.size(); ++s) caches.push_back(model.make_cache(1, 32, dtype));
        std::vector<int64_t> fed(seqs.size(), 0);
        Workspace workspace;
        int64_t compared = 0, differing = 0;
        for (const Step& step : schedules[k]) {
          std::vector<int32_t> tokens;
          std::vector<KvCache*> rows;
          std::vector<std::pair<size_t, int64_t>> where;  // (sequence, position) per row
          bool want[Model::kMaxDecodeRows] = {};
          size_t wanted = 0;
          for (const auto& [s, n] : step)
            for (int64_t i = 0; i < n; ++i) {
              tokens.push_back(seqs[s][fed[s] + i]);
              rows.push_back(&caches[s]);
              where.emplace_back(s, fed[s] + i);
              want[wanted++] = every_row || i + 1 == n;
            }
          for (const auto& [s, n] : step) fed[s] += n;
          const float* logits = model.step_rows(tokens.data(), static_cast<int64_t>(tokens.size()),
                                                rows.data(), want, workspace);
          for (size_t r = 0, j = 0; r < tokens.size(); ++r) {
            if (!want[r]) continue;
            const auto& [s, position] = where[r];
            ++compared;
            differing += std::memcmp(logits + j++ * vocab, alone[s][position].data(),
                                     sizeof(float) * vocab) != 0;
          }
        }
        for (size_t s = 0; s < seqs.size(); ++s) {
          EXPECT_EQ(fed[s], static_cast<int64_t>(seqs[s].size()));
          EXPECT_EQ(caches[s].length(), static_cast<int64_t>(seqs[s].size()));
        }
        EXPECT_GE(compared, 3);
        EXPECT_EQ(differing, 0) << "schedule " << k << (every_row ? ", every row" : ", last rows")
                                << ", " << dtype_name(dtype) << " cache: " << differing << " of "
                                << compared << " rows differ from the sequence fed alone";
      }
  }
}

// The server's prompt passes (Model::prefill_rows: every product through the GEMM, attention
// per row): a prompt's rows give, at every position, bitwise the logits of feeding the
// sequence alone one token per call, however the prompts are cut and whatever other prompts
// share a call (calls of up to 27 rows, across the GEMV's 16-row limit); the decode steps after
// them too. Each position's logits are close to the decode path's (the difference is printed).
TEST_P(DecodeRows, PrefillRowsAreBitwiseWhateverTheirCompany) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const LoadedModel loaded = load_model(test::hf_fixture_path(GetParam()));
  const Model model(loaded.spec, loaded.weights);
  const int64_t vocab = model.spec().vocab_size;
  std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, 3, 11, 2, 7, 4, 6, 8}, {7, 2, 9}, {}};
  // (at most 16 positions with the decode steps: the dynamic-RoPE fixture's limit)
  for (int32_t i = 0; i < 14; ++i) prompts[2].push_back((i * 7 + 3) % 13 + 1);
  const size_t n = prompts.size();
  for (DType dtype : {DType::F32, DType::BF16}) {
    // Alone, one token per call, then two decode steps: the logits of every position.
    std::vector<std::vector<std::vector<float>>> alone(n);
    std::vector<std::vector<int32_t>> decoded(n);
    double max_error = 0.0, max_logit = 0.0;  // against the decode path, token by token
    for (size_t s = 0; s < n; ++s) {
      KvCache cache = model.make_cache(1, 32, dtype), rows_cache = model.make_cache(1, 32, dtype);
      Workspace workspace;
      KvCache* c = &cache;
      KvCache* rc = &rows_cache;
      for (int32_t token : prompts[s]) {
        const float* logits = model.prefill_rows(&token, 1, &c, nullptr, workspace);
        alone[s].emplace_back(logits, logits + vocab);
        const float* row = model.step_rows(&token, 1, &rc, nullptr, workspace);
        for (int64_t v = 0; v < vocab; ++v) {
          max_error =
              std::max(max_error, std::fabs(static_cast<double>(alone[s].back()[v]) - row[v]));
          max_logit = std::max(max_logit, std::fabs(static_cast<double>(row[v])));
        }
      }
      for (int step = 0; step < 2; ++step) {
        const std::vector<float>& last = alone[s].back();
        const auto token =
            static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
        decoded[s].push_back(token);
        const float* logits = model.decode_rows(&token, 1, &c, workspace);
        alone[s].emplace_back(logits, logits + vocab);
      }
    }
    std::cout << GetParam() << " (" << dtype_name(dtype)
              << " cache): prompt rows through the GEMM against the decode path, max logit "
                 "difference "
              << max_error << " (largest |logit| " << max_logit << ")" << std::endl;
    EXPECT_LT(max_error, 0.05 * max_logit + 1e-3);
    // Together: each call a list of (sequence, tokens).
    using Call = std::vector<std::pair<size_t, int64_t>>;
    const std::vector<std::vector<Call>> schedules = {
        {{{0, 10}, {1, 3}, {2, 14}}},                  // all in one call of 27 rows
        {{{2, 5}, {0, 4}}, {{1, 3}, {0, 6}, {2, 9}}},  // 9 rows, then 18
        {{{0, 1}, {2, 13}}, {{2, 1}, {0, 9}, {1, 1}}, {{1, 2}}}};
    for (size_t k = 0; k < schedules.size(); ++k)
      for (bool every_row : {true, false}) {
        std::vector<KvCache> caches;
        for (size_t s = 0; s < n; ++s) caches.push_back(model.make_cache(1, 32, dtype));
        std::vector<int64_t> fed(n, 0);
        Workspace workspace;
        int64_t compared = 0, differing = 0;
        for (const Call& call : schedules[k]) {
          std::vector<int32_t> tokens;
          std::vector<KvCache*> rows;
          std::vector<std::pair<size_t, int64_t>> where;  // (sequence, position) per row
          std::vector<char> want;
          for (const auto& [s, count] : call)
            for (int64_t i = 0; i < count; ++i) {
              tokens.push_back(prompts[s][fed[s] + i]);
              rows.push_back(&caches[s]);
              where.emplace_back(s, fed[s] + i);
              want.push_back(every_row || i + 1 == count);
            }
          for (const auto& [s, count] : call) fed[s] += count;
          std::unique_ptr<bool[]> wanted(new bool[want.size()]);
          for (size_t r = 0; r < want.size(); ++r) wanted[r] = want[r] != 0;
          const float* logits =
              model.prefill_rows(tokens.data(), static_cast<int64_t>(tokens.size()), rows.data(),
                                 wanted.get(), workspace);
          for (size_t r = 0, j = 0; r < tokens.size(); ++r) {
            if (!want[r]) continue;
            const auto& [s, position] = where[r];
            ++compared;
            differing += std::memcmp(logits + j++ * vocab, alone[s][position].data(),
                                     sizeof(float) * vocab) != 0;
          }
        }
        // Two decode steps of all three together: they read every cached key and value.
        for (int step = 0; step < 2; ++step) {
          int32_t tokens[3];
          KvCache* rows[3];
          for (size_t s = 0; s < n; ++s) tokens[s] = decoded[s][step], rows[s] = &caches[s];
          const float* logits = model.decode_rows(tokens, 3, rows, workspace);
          for (size_t s = 0; s < n; ++s) {
            ++compared;
            differing += std::memcmp(logits + s * vocab, alone[s][prompts[s].size() + step].data(),
                                     sizeof(float) * vocab) != 0;
          }
        }
        EXPECT_GE(compared, 9);
        EXPECT_EQ(differing, 0) << "schedule " << k << (every_row ? ", every row" : ", last rows")
                                << ", " << dtype_name(dtype) << " cache: " << differing << " of "
                                << compared << " rows differ from the sequence fed alone";
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DecodeRows, ::testing::ValuesIn(test::hf_fixture_names()));

}  // namespace
}  // namespace kiln
