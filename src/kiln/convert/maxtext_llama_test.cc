// MaxText's llama tree: shapes, RoPE order and query scale as MaxText's converter writes
// them, and an exact inverse (including the non-power-of-two query divisors).
#include "kiln/convert/maxtext_llama.h"
#include "kiln/convert/maxtext_tree.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <iostream>
#include <random>

#include "kiln/core/error.h"

namespace kiln {
namespace {

// A llama config.json with the given attention shape.
Json llama_config(int64_t heads, int64_t kv_heads, int64_t head_dim, bool llama3_rope) {
  Json c = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"hidden_size", 8},
            {"intermediate_size", 12},
            {"num_hidden_layers", 2},
            {"num_attention_heads", heads},
            {"num_key_value_heads", kv_heads},
            {"head_dim", head_dim},
            {"vocab_size", 16},
            {"rms_norm_eps", 1e-6},
            {"hidden_act", "silu"}};
  if (llama3_rope)
    c["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", 8.0},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 64}};
  return c;
}

// [rows, cols] F32 tensor with element (r, c) = r * cols + c + 1 (exact in every dtype).
Tensor counting(int64_t rows, int64_t cols) {
  Tensor t = Tensor::zeros(DType::F32, {rows, cols});
  for (int64_t i = 0; i < rows * cols; ++i) t.mutable_data<float>()[i] = static_cast<float>(i + 1);
  return t;
}

float at(const Tensor& t, std::initializer_list<int64_t> index) {
  int64_t flat = 0;
  size_t d = 0;
  for (int64_t i : index) flat = flat * t.dim(static_cast<int>(d++)) + i;
  return static_cast<float>(t.item_as_double(flat));
}

// The array of `tree` at `path`.
const MaxTextArraySpec& array_at(const MaxTextTree& tree, const std::string& path) {
  for (const MaxTextArraySpec& a : tree.arrays())
    if (a.path == path) return a;
  throw Error("no array " + path);
}

TEST(MaxTextLlama, DivisorIsSqrtHeadDimRoundedToTheDtype) {
  EXPECT_EQ(maxtext_query_divisor(128, DType::BF16), 11.3125);  // as MaxText's bf16 cast
  EXPECT_EQ(maxtext_query_divisor(128, DType::F32), static_cast<double>(std::sqrt(128.0f)));
  EXPECT_EQ(maxtext_query_divisor(128, DType::F64), std::sqrt(128.0));
  for (DType d : {DType::BF16, DType::F16, DType::F32}) EXPECT_EQ(maxtext_query_divisor(16, d), 4);
  EXPECT_THROW(maxtext_query_divisor(16, DType::I32), Error);
}

TEST(MaxTextLlama, OnlyTheLlamaConverterScalesTheQuery) {
  const MaxTextTree llama = MaxTextTree::build(llama_config(2, 1, 4, false), false);
  EXPECT_EQ(array_at(llama, "decoder/layers_0/self_attention/query/kernel").transform.op,
            MaxTextValueOp::kDivideRounded);
  Json qwen3 = llama_config(2, 1, 4, false);
  qwen3["architectures"] = {"Qwen3ForCausalLM"};
  qwen3["model_type"] = "qwen3";
  const MaxTextTree q3 = MaxTextTree::build(qwen3, false);
  EXPECT_EQ(array_at(q3, "decoder/layers_0/self_attention/query/kernel").transform.op,
            MaxTextValueOp::kNone);
  EXPECT_THROW(MaxTextTree::build(Json::object(), false), Error);
}

TEST(MaxTextLlama, ShapesRopeOrderAndScaleAreMaxTexts) {
  // 2 query heads, 1 KV head of 4: divisor 2 (exact); hidden 8.
  for (bool llama3 : {false, true}) {
    SCOPED_TRACE(llama3 ? "llama3 rope: interleaved" : "default rope: halves");
    const MaxTextTree tree = MaxTextTree::build(llama_config(2, 1, 4, llama3), false);
    auto to = [&](const std::string& path, const Tensor& t) {
      return MaxTextTree::to_maxtext(array_at(tree, path), t);
    };
    const std::string l0 = "decoder/layers_0/", l1 = "decoder/layers_1/";
    EXPECT_EQ(array_at(tree, l0 + "self_attention/query/kernel").transform.rope_pairs, llama3);
    const Tensor q = counting(8, 8);  // [heads * D, E]
    const MaxTextValue mq = to(l0 + "self_attention/query/kernel", q);
    ASSERT_EQ(mq.array.shape(), (Shape{8, 2, 4}));  // [E, heads, D]
    for (int64_t e = 0; e < 8; ++e)
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t i = 0; i < 4; ++i) {
          // Interleaved: position 2j holds HF's j, 2j+1 holds HF's j + D/2.
          const int64_t hf = llama3 ? (i % 2) * 2 + i / 2 : i;
          EXPECT_EQ(at(mq.array, {e, h, i}), at(q, {h * 4 + hf, e}) / 2) << e << h << i;
        }
    const Tensor k = counting(4, 8);
    const MaxTextValue mk = to(l1 + "self_attention/key/kernel", k);
    ASSERT_EQ(mk.array.shape(), (Shape{8, 1, 4}));
    EXPECT_FALSE(mk.residual.defined());
    EXPECT_EQ(at(mk.array, {3, 0, 1}), at(k, {llama3 ? 2 : 1, 3}));  // not scaled
    const Tensor v = counting(4, 8);
    const MaxTextValue mv = to(l1 + "self_attention/value/kernel", v);
    EXPECT_EQ(at(mv.array, {3, 0, 1}), at(v, {1, 3}));  // never permuted
    const Tensor o = counting(8, 8);                    // [E, heads * D]
    const MaxTextValue mo = to(l0 + "self_attention/out/kernel", o);
    ASSERT_EQ(mo.array.shape(), (Shape{2, 4, 8}));  // [heads, D, E]
    EXPECT_EQ(at(mo.array, {1, 2, 5}), at(o, {5, 6}));
    const Tensor wo = counting(8, 12);  // [E, mlp]
    const MaxTextValue mwo = to(l0 + "mlp/wo/kernel", wo);
    ASSERT_EQ(mwo.array.shape(), (Shape{12, 8}));  // [mlp, E]
    EXPECT_EQ(at(mwo.array, {7, 2}), at(wo, {2, 7}));
    const MaxTextValue lm = to("decoder/logits_dense/kernel", counting(16, 8));
    EXPECT_EQ(lm.array.shape(), (Shape{8, 16}));  // [E, vocab]
    const MaxTextValue emb = to("token_embedder/embedding", counting(16, 8));
    EXPECT_EQ(emb.array.shape(), (Shape{16, 8}));  // [vocab, E]: unchanged
    for (const auto& [path, kiln, out] : {std::tuple{l0 + "self_attention/query/kernel", q, mq},
                                          std::tuple{l1 + "self_attention/key/kernel", k, mk},
                                          std::tuple{l0 + "self_attention/out/kernel", o, mo},
                                          std::tuple{l0 + "mlp/wo/kernel", wo, mwo}}) {
      const Tensor back = MaxTextTree::from_maxtext(array_at(tree, path), out.array, out.residual);
      ASSERT_EQ(back.shape(), kiln.shape()) << path;
      EXPECT_EQ(std::memcmp(back.raw(), kiln.raw(), kiln.nbytes()), 0) << path;
    }
    EXPECT_THROW(to(l0 + "self_attention/query/kernel", counting(6, 8)), Error);
  }
}

// Random finite values of `dtype` from 2^-30 to 2^11 (f16 subnormals among them) and both
// zeros.
Tensor random_finite(DType dtype, Shape shape, std::mt19937& rng) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    const double magnitude = std::ldexp(std::uniform_real_distribution<double>(0.5, 1)(rng),
                                        static_cast<int>(rng() % 24) - (i % 7 == 0 ? 30 : 12));
    const double value = (rng() & 1 ? -1 : 1) * (i % 97 == 0 ? 0.0 : magnitude);
    Tensor one = Tensor::from_f32({1}, {static_cast<float>(value)});
    if (dtype == DType::F32)
      t.mutable_data<float>()[i] = static_cast<float>(value);
    else
      std::memcpy(static_cast<char*>(t.mutable_raw()) + i * 2, one.to(dtype).raw(), 2);
  }
  return t;
}

TEST(MaxTextLlama, QueryScaleIsUndoneBitwiseForAnyHeadDim) {
  std::mt19937 rng(11);
  for (DType dtype : {DType::BF16, DType::F16, DType::F32}) {
    for (int64_t head_dim : {128, 96, 80, 64, 16}) {
      const MaxTextTree tree = MaxTextTree::build(llama_config(2, 1, head_dim, true), false);
      const MaxTextArraySpec& spec = array_at(tree, "decoder/layers_0/self_attention/query/kernel");
      const Tensor q = random_finite(dtype, {2 * head_dim, 8}, rng);
      const MaxTextValue m = MaxTextTree::to_maxtext(spec, q);
      ASSERT_TRUE(m.residual.defined());
      int64_t corrected = 0;
      for (int64_t i = 0; i < m.residual.numel(); ++i)
        corrected += m.residual.data<int8_t>()[i] != 0;
      const Tensor exact = MaxTextTree::from_maxtext(spec, m.array, m.residual);
      const Tensor plain = MaxTextTree::from_maxtext(spec, m.array, Tensor());
      ASSERT_EQ(exact.shape(), q.shape());
      EXPECT_EQ(std::memcmp(exact.raw(), q.raw(), q.nbytes()), 0)
          << dtype_name(dtype) << " head_dim " << head_dim;
      double max_diff = 0, max_plain = 0;
      for (int64_t i = 0; i < q.numel(); ++i) {
        max_diff = std::max(max_diff, std::abs(exact.item_as_double(i) - q.item_as_double(i)));
        max_plain = std::max(max_plain, std::abs(plain.item_as_double(i) - q.item_as_double(i)));
      }
      EXPECT_EQ(max_diff, 0);
      std::cout << "  " << dtype_name(dtype) << " head_dim " << head_dim << ": divisor "
                << maxtext_query_divisor(head_dim, dtype) << ", " << corrected << "/" << q.numel()
                << " elements need the residual; max abs diff " << max_diff << " with it, "
                << max_plain << " without\n";
      const bool power_of_four = head_dim == 64 || head_dim == 16;
      if (power_of_four && dtype != DType::F16) {
        EXPECT_EQ(corrected, 0);
      }
      if (!power_of_four) {
        EXPECT_GT(corrected, 0);
      }
    }
  }
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// An export builds every layer's MaxText arrays in MaxTextScratch's reused buffers: the
// arrays and residuals are bitwise those built in fresh memory (query: transpose, RoPE pairs
// in place, scale with residual in place; key: RoPE pairs; out and MLP kernels: transposes,
// bf16 with 8x8 register blocks and odd edges), and once a layer's arrays are dropped the
// next layer reuses the same buffers: the bytes held stay those of one layer's arrays.
TEST(MaxTextLlama, ScratchBuffersAreReusedAndGiveTheSameArrays) {
  // head_dim 24: divisor bf16(sqrt 24) = 4.90625 (inexact), RoPE halves of 12 (one 8-wide
  // register step and 4 by element).
  const MaxTextTree tree = MaxTextTree::build(llama_config(3, 1, 24, true), true);
  std::mt19937 rng(9);
  MaxTextScratch scratch;
  size_t held_after_first_layer = 0, max_held = 0;
  int64_t arrays = 0;
  for (int64_t layer = 0; layer < 2; ++layer) {
    for (const MaxTextArraySpec& a : tree.arrays()) {
      if (a.layers.empty()) continue;
      std::vector<float> values(static_cast<size_t>(shape_numel(a.kiln_shape)));
      for (float& v : values) v = std::normal_distribution<float>(0, 0.3f)(rng);
      const Tensor kiln = Tensor::from_f32(a.kiln_shape, values).to(DType::BF16);
      const MaxTextValue fresh = MaxTextTree::to_maxtext(a, kiln);
      {
        const MaxTextValue reused = MaxTextTree::to_maxtext(a, kiln, &scratch);
        ASSERT_EQ(reused.array.shape(), fresh.array.shape()) << a.path;
        EXPECT_EQ(std::memcmp(reused.array.contiguous().raw(), fresh.array.contiguous().raw(),
                              fresh.array.nbytes()),
                  0)
            << a.path;
        ASSERT_EQ(reused.residual.defined(), fresh.residual.defined()) << a.path;
        if (fresh.residual.defined()) {
          EXPECT_EQ(
              std::memcmp(reused.residual.raw(), fresh.residual.raw(), fresh.residual.nbytes()), 0)
              << a.path;
        }
        const Tensor back = MaxTextTree::from_maxtext(a, reused.array, reused.residual);
        EXPECT_EQ(std::memcmp(back.raw(), kiln.raw(), kiln.nbytes()), 0) << a.path;
      }  // the writer has copied the layer out
      max_held = std::max(max_held, scratch.bytes_held());
      ++arrays;
    }
    if (layer == 0) held_after_first_layer = scratch.bytes_held();
  }
  // The largest per-layer arrays: the query (72 x 8 bf16, 1152 bytes, scaled in place) and
  // its residual (576 bytes): held once each, whatever the order of the other arrays.
  EXPECT_GT(held_after_first_layer, 0u);
  EXPECT_EQ(scratch.bytes_held(), held_after_first_layer) << "layer 1 allocated new buffers";
  EXPECT_LE(max_held, 1152u + 576u + 192u);
  std::cout << "  " << arrays << " per-layer arrays bitwise as in fresh memory; scratch held "
            << max_held << " bytes at most, " << scratch.bytes_held() << " after two layers\n";
}

}  // namespace
}  // namespace kiln
