#include "kiln/ops/cpu/work_pool.h"

#include <gtest/gtest.h>

#include <omp.h>

#include <atomic>
#include <cstring>
#include <iostream>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/core/quant.h"
#include "kiln/ops/attention.h"
#include "kiln/ops/cpu/kernel_table.h"
#include "kiln/ops/kernels.h"
#include "kiln/ops/linear.h"
#include "test_util.h"

namespace kiln::ops::cpu {
namespace {

using test::random_vector;

// Every index of [0, count) is handed out exactly once, in chunks [k * chunk, ...) that
// never straddle two chunks, for any thread count.
TEST(WorkPool, ChunksCoverEveryIndexOnce) {
  WorkPool pool;
  for (const int threads : {1, 2, 3, 5})
    for (const int64_t count : {int64_t{1}, int64_t{7}, int64_t{64}, int64_t{1000}})
      for (const int64_t chunk : {int64_t{1}, int64_t{3}, int64_t{64}, int64_t{5000}}) {
        std::vector<std::atomic<int>> hits(count);
        std::atomic<int> bad_chunks{0};
        auto body = [&](int64_t begin, int64_t end) {
          if (begin % chunk != 0 || end - begin != std::min(chunk, count - begin)) ++bad_chunks;
          for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
        };
        pool.run(
            count, chunk,
            [](void* c, int64_t b, int64_t e) { (*static_cast<decltype(body)*>(c))(b, e); }, &body,
            threads);
        EXPECT_EQ(bad_chunks.load(), 0);
        for (int64_t i = 0; i < count; ++i)
          ASSERT_EQ(hits[i].load(), 1)
              << threads << " threads, count " << count << ", chunk " << chunk << ", index " << i;
      }
  EXPECT_EQ(pool.workers(), 4);  // started for the largest call
}

// Many calls in a row (workers polling, then sleeping, then woken) all complete and cover
// their range; prints how many chunks the workers took.
TEST(WorkPool, ManyCallsCompleteWithWorkersPollingOrAsleep) {
  WorkPool pool;
  std::atomic<int64_t> on_workers{0}, total{0};
  const std::thread::id caller = std::this_thread::get_id();
  for (int call = 0; call < 2000; ++call) {
    std::atomic<int64_t> sum{0};
    auto body = [&](int64_t begin, int64_t end) {
      if (std::this_thread::get_id() != caller) on_workers += end - begin;
      total += end - begin;
      for (int64_t i = begin; i < end; ++i) sum += i;
    };
    pool.run(
        100, 7, [](void* c, int64_t b, int64_t e) { (*static_cast<decltype(body)*>(c))(b, e); },
        &body, 2);
    ASSERT_EQ(sum.load(), 99 * 100 / 2) << "call " << call;
    if (call % 500 == 499) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::cout << "chunks' indices on the worker: " << on_workers.load() << " of " << total.load()
            << "\n";
}

// With the workers claiming nothing (as if descheduled the whole call), a call still
// finishes: the caller runs every chunk and waits for no one.
TEST(WorkPool, CallerDoesNotWaitForWorkersThatClaimNothing) {
  WorkPool pool;
  auto noop = [](void*, int64_t, int64_t) {};
  pool.run(4, 1, noop, nullptr, 3);  // start the workers
  pool.pause_workers(true);
  const std::thread::id caller = std::this_thread::get_id();
  std::vector<int64_t> order;
  bool all_on_caller = true;
  auto body = [&](int64_t begin, int64_t) {
    all_on_caller = all_on_caller && std::this_thread::get_id() == caller;
    order.push_back(begin);
  };
  for (int call = 0; call < 100; ++call) {
    order.clear();
    pool.run(
        50, 5, [](void* c, int64_t b, int64_t e) { (*static_cast<decltype(body)*>(c))(b, e); },
        &body, 3);
    ASSERT_EQ(order.size(), 10u);
    for (int k = 0; k < 10; ++k) ASSERT_EQ(order[k], 5 * k);
  }
  EXPECT_TRUE(all_on_caller);
  pool.pause_workers(false);
}

// One thread: every chunk in order on the caller, no worker started.
TEST(WorkPool, OneThreadRunsInOrderOnTheCaller) {
  WorkPool pool;
  std::vector<std::pair<int64_t, int64_t>> seen;
  const std::thread::id caller = std::this_thread::get_id();
  bool on_caller = true;
  auto body = [&](int64_t begin, int64_t end) {
    on_caller = on_caller && std::this_thread::get_id() == caller;
    seen.emplace_back(begin, end);
  };
  pool.run(
      10, 4, [](void* c, int64_t b, int64_t e) { (*static_cast<decltype(body)*>(c))(b, e); }, &body,
      1);
  EXPECT_EQ(seen, (std::vector<std::pair<int64_t, int64_t>>{{0, 4}, {4, 8}, {8, 10}}));
  EXPECT_TRUE(on_caller);
  EXPECT_EQ(pool.workers(), 0);
}

// A call made from inside a chunk (this pool or the shared one) runs inline on that chunk's
// thread, in order, and the outer call still covers its range.
TEST(WorkPool, NestedCallsRunInlineOnTheChunksThread) {
  std::atomic<int> outer_hits{0}, inner_hits{0}, misplaced{0}, out_of_order{0};
  auto outer = [&](int64_t begin, int64_t end) {
    const std::thread::id me = std::this_thread::get_id();
    for (int64_t i = begin; i < end; ++i) {
      ++outer_hits;
      int64_t last = -1;
      auto inner = [&](int64_t b, int64_t e) {
        if (std::this_thread::get_id() != me) ++misplaced;
        if (b != last + 1) ++out_of_order;
        last = e - 1;
        inner_hits += static_cast<int>(e - b);
      };
      parallel_chunks(20, 3, inner, 2);
    }
  };
  parallel_chunks(16, 2, outer, 2);
  EXPECT_EQ(outer_hits.load(), 16);
  EXPECT_EQ(inner_hits.load(), 16 * 20);
  EXPECT_EQ(misplaced.load(), 0);
  EXPECT_EQ(out_of_order.load(), 0);
}

// An exception from a chunk (on whichever thread) comes back from the call after the other
// claimed chunks have finished; the pool works afterwards.
TEST(WorkPool, ExceptionsReachTheCaller) {
  WorkPool pool;
  for (int attempt = 0; attempt < 20; ++attempt) {
    std::atomic<int> running{0};
    auto body = [&](int64_t begin, int64_t) {
      ++running;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      --running;
      if (begin == 3 * (attempt % 5)) throw std::runtime_error("chunk " + std::to_string(begin));
    };
    try {
      pool.run(
          15, 3, [](void* c, int64_t b, int64_t e) { (*static_cast<decltype(body)*>(c))(b, e); },
          &body, 2);
      FAIL() << "no exception";
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()), "chunk " + std::to_string(3 * (attempt % 5)));
    }
    EXPECT_EQ(running.load(), 0);  // nothing still running when the call returned
  }
  std::atomic<int> hits{0};
  auto count = [&](int64_t begin, int64_t end) { hits += static_cast<int>(end - begin); };
  pool.run(
      40, 3, [](void* c, int64_t b, int64_t e) { (*static_cast<decltype(count)*>(c))(b, e); },
      &count, 2);
  EXPECT_EQ(hits.load(), 40);
}

// Two application threads calling one pool at once: one gets the pool, the other runs its
// chunks inline; both cover their ranges.
TEST(WorkPool, ConcurrentCallersBothComplete) {
  WorkPool pool;
  auto call = [&pool](std::atomic<int64_t>& sum) {
    for (int k = 0; k < 300; ++k) {
      auto body = [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) sum += i;
      };
      pool.run(
          64, 4, [](void* c, int64_t b, int64_t e) { (*static_cast<decltype(body)*>(c))(b, e); },
          &body, 2);
    }
  };
  std::atomic<int64_t> a{0}, b{0};
  std::thread other([&] { call(b); });
  call(a);
  other.join();
  EXPECT_EQ(a.load(), 300 * (63 * 64 / 2));
  EXPECT_EQ(b.load(), 300 * (63 * 64 / 2));
}

TEST(WorkPool, GemvChunksAreWholeTilesOfAtLeast64KiB) {
  EXPECT_EQ(gemv_chunk_rows(512, 2176, 2), 32);       // Q8_0 rows of 2048: 16 chunks
  EXPECT_EQ(gemv_chunk_rows(128256, 2176, 2), 2004);  // a vocabulary head: 64 chunks
  EXPECT_EQ(gemv_chunk_rows(10, 100000, 2), 4);       // one tile at least
  EXPECT_EQ(gemv_chunk_rows(8192, 4096, 2) % 4, 0);
}

// ---- The kernels on the pool: bitwise the single-thread results ---------------------------

// Rows of `format` for w [out, in]: plain dtypes converted, Q8_0 / Q4_1 / Q4_1_128 quantized,
// Q4_0 and K-quants random bytes with scales of order 1 / (levels * scales) (Kiln only reads
// them).
std::vector<uint8_t> stored_weights(std::mt19937& rng, DType format, const std::vector<float>& w,
                                    int64_t out, int64_t in) {
  const size_t row_bytes = dtype_nbytes(format, in);
  std::vector<uint8_t> stored(out * row_bytes);
  if (format == DType::Q4_K || format == DType::Q5_K || format == DType::Q6_K ||
      format == DType::Q4_0) {
    for (uint8_t& b : stored) b = static_cast<uint8_t>(rng() & 255);
    const size_t bytes = dtype_block_bytes(format);
    for (size_t at = 0; at < stored.size(); at += bytes) {
      if (format == DType::Q4_0) {  // d * (q - 8) up to 1
        const uint16_t d = f32_to_f16(1.0f / 8.0f);
        std::memcpy(&stored[at], &d, 2);
        continue;
      }
      const uint16_t d = f32_to_f16(format == DType::Q6_K ? 1.0f / 2048.0f : 1.0f / 1000.0f);
      const uint16_t dmin = f32_to_f16(1.0f / 60.0f);
      std::memcpy(&stored[at + (format == DType::Q6_K ? 208 : 0)], &d, 2);
      if (format != DType::Q6_K) std::memcpy(&stored[at + 2], &dmin, 2);
    }
    return stored;
  }
  for (int64_t o = 0; o < out; ++o) {
    uint8_t* row = stored.data() + o * row_bytes;
    const float* source = w.data() + o * in;
    if (format == DType::F32) std::memcpy(row, source, sizeof(float) * in);
    if (format == DType::BF16 || format == DType::F16)
      for (int64_t i = 0; i < in; ++i) {
        const uint16_t h = format == DType::BF16 ? f32_to_bf16(source[i]) : f32_to_f16(source[i]);
        std::memcpy(row + 2 * i, &h, 2);
      }
    if (dtype_block(format) > 1) quantize_row(format, source, row, in);
  }
  return stored;
}

struct Restore {
  int threads = omp_get_max_threads();
  Bf16Gemv bf16 = bf16_gemv();
  DecodeThreads mode = decode_threads();
  ~Restore() {
    use_decode_threads(mode);
    omp_set_num_threads(threads);
    use_kernels("auto");
    use_bf16_gemv(bf16);
    work_pool().pause_workers(false);
  }
};

// linear() of every weight format and kernel set, 1 and 3 rows, on 2 and 3 threads of the pool
// and with the workers claiming nothing: bitwise what one thread gives. linear_group over
// products of different formats (as Q4_K_M's attention: Q4_K and Q6_K) likewise, against
// one thread's linear() per product.
TEST(WorkPool, LinearIsBitwiseOneThreadsForEveryFormat) {
  const Restore restore;
  const int64_t in = 1024, out = 300;  // 307200 multiply-adds per row: the pool is used
  std::mt19937 rng(23);
  const std::vector<float> x = random_vector(rng, 3 * in);  // [3, in]
  const std::vector<float> w = random_vector(rng, out * in), bias = random_vector(rng, out);
  int compared = 0;
  for (const std::string& set : available_kernels()) {
    use_kernels(set);
    for (const DType format : kWeightFormats) {
      const std::vector<uint8_t> stored = stored_weights(rng, format, w, out, in);
      for (const Bf16Gemv mode : {Bf16Gemv::kSplit, Bf16Gemv::kRounded, Bf16Gemv::kWiden}) {
        if (format != DType::BF16 && mode != Bf16Gemv::kSplit) continue;
        use_bf16_gemv(mode);
        for (const int64_t rows : {int64_t{1}, int64_t{3}}) {
          omp_set_num_threads(1);
          std::vector<float> one(rows * out);
          linear(x.data(), stored.data(), format, bias.data(), one.data(), rows, in, out);
          // -2: two threads, the worker paused; 4: two OpenMP threads (KILN_DECODE_THREADS)
          for (const int threads : {2, 3, -2, 4}) {
            omp_set_num_threads(threads < 0 ? -threads : threads == 4 ? 2 : threads);
            work_pool().pause_workers(threads < 0);
            use_decode_threads(threads == 4 ? DecodeThreads::kOpenMP : DecodeThreads::kPool);
            std::vector<float> pooled(rows * out, -1.0f);
            linear(x.data(), stored.data(), format, bias.data(), pooled.data(), rows, in, out);
            work_pool().pause_workers(false);
            use_decode_threads(DecodeThreads::kPool);
            ASSERT_EQ(std::memcmp(one.data(), pooled.data(), sizeof(float) * one.size()), 0)
                << set << " " << dtype_name(format) << " " << bf16_gemv_name(mode) << " rows "
                << rows << " threads " << threads;
            ++compared;
          }
        }
      }
    }
    // A group of mixed formats, one row.
    constexpr int kGroup = 5;
    const DType formats[kGroup] = {DType::Q4_K, DType::Q6_K, DType::Q8_0, DType::Q4_0, DType::BF16};
    const int64_t outs[kGroup] = {300, 130, 77, 53, 41};
    std::vector<std::vector<uint8_t>> weights;
    std::vector<std::vector<float>> together(kGroup), alone(kGroup);
    std::vector<LinearProduct> products;
    for (int k = 0; k < kGroup; ++k) {
      weights.push_back(stored_weights(rng, formats[k], w, outs[k], in));
      together[k].assign(outs[k], -1.0f);
      alone[k].assign(outs[k], -2.0f);
    }
    omp_set_num_threads(1);
    for (int k = 0; k < kGroup; ++k)
      linear(x.data(), weights[k].data(), formats[k], k ? bias.data() : nullptr, alone[k].data(), 1,
             in, outs[k]);
    omp_set_num_threads(2);
    for (int k = 0; k < kGroup; ++k)
      products.push_back({weight_view(weights[k].data(), formats[k], in), k ? bias.data() : nullptr,
                          together[k].data(), outs[k]});
    linear_group(x.data(), 1, in, products.data(), kGroup);
    for (int k = 0; k < kGroup; ++k)
      ASSERT_EQ(std::memcmp(together[k].data(), alone[k].data(), sizeof(float) * outs[k]), 0)
          << set << " group product " << k << " (" << dtype_name(formats[k]) << ")";
  }
  std::cout << compared << " pooled linear() results bitwise one thread's\n";
}

// Decode attention (one query row per sequence, on the pool) and linear_refine_top over
// several rows (one row per chunk): bitwise one thread's.
TEST(WorkPool, DecodeAttentionAndRefineAreBitwiseOneThreads) {
  const Restore restore;
  std::mt19937 rng(29);
  AttentionShape s;
  s.batch = 2;
  s.tokens = 1;
  s.heads = 8;
  s.kv_heads = 2;
  s.head_dim = s.value_dim = 64;
  s.cache_max = s.cache_len = 300;
  s.start = 299;
  s.scale = 0.125f;
  const std::vector<float> q = random_vector(rng, s.batch * s.heads * s.head_dim);
  const std::vector<float> k = random_vector(rng, s.batch * s.cache_max * s.kv_heads * 64);
  const std::vector<float> v = random_vector(rng, s.batch * s.cache_max * s.kv_heads * 64);
  for (const std::string& set : available_kernels()) {
    use_kernels(set);
    omp_set_num_threads(1);
    std::vector<float> one(s.batch * s.heads * 64), pooled(one.size(), -1.0f);
    causal_attention(q.data(), k.data(), v.data(), one.data(), s);
    omp_set_num_threads(2);
    causal_attention(q.data(), k.data(), v.data(), pooled.data(), s);
    ASSERT_EQ(std::memcmp(one.data(), pooled.data(), sizeof(float) * one.size()), 0) << set;

    const int64_t rows = 4, in = 256, out = 70000;  // rows * out >= 2^18: one row per chunk
    const std::vector<float> x = random_vector(rng, rows * in), w = random_vector(rng, out * in);
    std::vector<uint16_t> exact(out * in);
    for (size_t i = 0; i < exact.size(); ++i) exact[i] = f32_to_bf16(w[i]);
    const std::vector<float> y = random_vector(rng, rows * out);
    std::vector<float> refined_one = y, refined_pooled = y;
    const WeightView view = weight_view(exact.data(), DType::BF16, in);
    omp_set_num_threads(1);
    linear_refine_top(x.data(), view, refined_one.data(), rows, in, out, 16);
    omp_set_num_threads(2);
    linear_refine_top(x.data(), view, refined_pooled.data(), rows, in, out, 16);
    ASSERT_EQ(std::memcmp(refined_one.data(), refined_pooled.data(), sizeof(float) * y.size()), 0)
        << set;
    EXPECT_NE(std::memcmp(refined_one.data(), y.data(), sizeof(float) * y.size()), 0);
  }
}

}  // namespace
}  // namespace kiln::ops::cpu
