// HF -> Kiln -> Orbax with MaxText's tree and shapes -> Kiln is bitwise identical for the
// llama-shaped fixtures, in zarr v2 (raw and zstd) and OCDBT, scanned and unscanned; the
// query scale is undone exactly also where sqrt(head_dim) is not a power of two; and
// `kiln inspect` lists MaxText's tree.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>

#include "kiln/convert/hf_to_kiln.h"
#include "kiln/convert/orbax_export.h"
#include "kiln/io/checkpoint_source.h"
#include "kiln/io/json.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/safetensors.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

constexpr const char* kFormats[] = {"zarr_raw", "zarr_zstd", "ocdbt"};

OrbaxWriteOptions write_options(const std::string& format) {
  OrbaxWriteOptions o;
  o.ocdbt = format == "ocdbt";
  o.zarr.zstd = format != "zarr_raw";
  if (o.ocdbt) o.manager_step = 0;  // MaxText's <dir>/0/items
  return o;
}

// Compares every tensor of two Kiln checkpoints bit for bit; returns the max abs diff.
double compare_checkpoints(const KilnCheckpoint& expected, const KilnCheckpoint& actual) {
  EXPECT_EQ(expected.names(), actual.names());
  double max_diff = 0;
  for (const std::string& name : expected.names()) {
    const Tensor a = expected.get(name), b = actual.get(name);
    EXPECT_EQ(a.shape(), b.shape()) << name;
    EXPECT_EQ(a.dtype(), b.dtype()) << name;
    if (a.shape() != b.shape() || a.dtype() != b.dtype()) continue;
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << name;
    max_diff = std::max(max_diff, test::max_abs_diff(a, b));
  }
  return max_diff;
}

class MaxTextOrbaxFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(MaxTextOrbaxFixture, RoundTripIsBitwise) {
  const std::string fixture = GetParam();
  const std::string hf = test::data_path("hf/" + fixture);
  const Json config = read_json_file(hf + "/config.json");
  const int64_t hidden = config["hidden_size"], heads = config["num_attention_heads"];
  const int64_t kv_heads = config["num_key_value_heads"], layers = config["num_hidden_layers"];
  const int64_t head_dim = config.value("head_dim", hidden / heads);
  const int64_t mlp = config["intermediate_size"], vocab = config["vocab_size"];
  const Json rope = config.value("rope_parameters", config.value("rope_scaling", Json::object()));
  const bool interleaved = rope.is_object() && rope.value("rope_type", "") == "llama3";
  const std::unique_ptr<TensorSource> source = open_tensor_source(hf);
  const Tensor hf_query = source->get("model.layers.1.self_attn.q_proj.weight");
  const std::string dir = test::make_temp_dir("kiln-maxtext-" + fixture);
  for (const std::string layout : {"scanned", "unscanned"}) {
    ConvertOptions options;
    options.layout = layout;
    const std::string kiln = dir + "/kiln_" + layout;
    convert_hf_to_kiln(hf, kiln, options);
    const KilnCheckpoint original(kiln);
    for (const std::string format : kFormats) {
      SCOPED_TRACE(layout + " " + format);
      const std::string orbax = dir + "/orbax_" + layout + "_" + format;
      export_kiln_to_orbax(kiln, orbax, write_options(format), false);
      const OrbaxSource exported(orbax);
      EXPECT_EQ(exported.uses_ocdbt(), format == "ocdbt");
      const bool scanned = layout == "scanned";
      const std::string p = "params/params/";
      const std::string layer = scanned ? "decoder/layers/" : "decoder/layers_1/";
      auto shape = [&](Shape per_layer) {
        if (scanned) per_layer.insert(per_layer.begin() + 1, layers);
        return per_layer;
      };
      EXPECT_EQ(exported.shape_of(p + layer + "self_attention/query/kernel"),
                shape({hidden, heads, head_dim}));
      EXPECT_EQ(exported.shape_of(p + layer + "self_attention/key/kernel"),
                shape({hidden, kv_heads, head_dim}));
      EXPECT_EQ(exported.shape_of(p + layer + "self_attention/value/kernel"),
                shape({hidden, kv_heads, head_dim}));
      EXPECT_EQ(exported.shape_of(p + layer + "self_attention/out/kernel"),
                shape({heads, head_dim, hidden}));
      EXPECT_EQ(exported.shape_of(p + layer + "mlp/wi_0/kernel"), shape({hidden, mlp}));
      EXPECT_EQ(exported.shape_of(p + layer + "mlp/wi_1/kernel"), shape({hidden, mlp}));
      EXPECT_EQ(exported.shape_of(p + layer + "mlp/wo/kernel"), shape({mlp, hidden}));
      EXPECT_EQ(exported.shape_of(p + layer + "pre_self_attention_layer_norm/scale"),
                shape({hidden}));
      EXPECT_EQ(exported.shape_of(p + layer + "post_self_attention_layer_norm/scale"),
                shape({hidden}));
      EXPECT_EQ(exported.shape_of(p + "decoder/decoder_norm/scale"), (Shape{hidden}));
      EXPECT_EQ(exported.shape_of(p + "token_embedder/embedding"), (Shape{vocab, hidden}));
      if (!config.value("tie_word_embeddings", false)) {
        EXPECT_EQ(exported.shape_of(p + "decoder/logits_dense/kernel"), (Shape{hidden, vocab}));
      }
      EXPECT_TRUE(exported.contains("step"));
      // Layer 1's query [E, (L,) heads, D] is HF's q_proj, transposed, split per head,
      // RoPE-reordered when interleaved, divided by sqrt(head_dim) = 4 (exact here).
      Tensor query = exported.get(p + layer + "self_attention/query/kernel");
      if (scanned) query = query.select(1, 1).contiguous();
      double query_diff = 0;
      for (int64_t e = 0; e < hidden; e += 7)
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t i = 0; i < head_dim; ++i) {
            const int64_t hf_i = interleaved ? (i % 2) * (head_dim / 2) + i / 2 : i;
            const double want =
                hf_query.item_as_double((h * head_dim + hf_i) * hidden + e) / std::sqrt(head_dim);
            query_diff = std::max(
                query_diff, std::abs(query.item_as_double((e * heads + h) * head_dim + i) - want));
          }
      EXPECT_EQ(query_diff, 0);

      const std::string back = orbax + "_back";
      import_orbax_to_kiln(orbax, back, {}, false);
      const KilnCheckpoint restored(back);
      restored.verify();
      EXPECT_EQ(restored.layout(), layout);
      const double diff = compare_checkpoints(original, restored);
      EXPECT_EQ(diff, 0);
      std::cout << "  " << fixture << " " << layout << " " << format << ": "
                << original.names().size() << " tensors, MaxText query vs HF max abs diff "
                << query_diff << ", Kiln -> Orbax -> Kiln max abs diff " << diff << "\n";
    }
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(LlamaShaped, MaxTextOrbaxFixture,
                         ::testing::Values("llama", "llama_rope_dynamic", "llama_rope_linear",
                                           "llama_rope_llama3", "llama_rope_yarn", "mistral",
                                           "qwen2"));

// A bf16 llama HF folder with head_dim 8 (query divisor bf16(sqrt 8) = 2.828125, so the
// scale is not exact) and llama3 RoPE; q_proj holds subnormals and signed zeros.
std::string write_bf16_llama(const std::string& dir) {
  const int64_t hidden = 16, heads = 2, kv = 1, d = 8, inter = 24, vocab = 32, layers = 2;
  Json config = {{"architectures", {"LlamaForCausalLM"}},
                 {"model_type", "llama"},
                 {"hidden_size", hidden},
                 {"intermediate_size", inter},
                 {"num_hidden_layers", layers},
                 {"num_attention_heads", heads},
                 {"num_key_value_heads", kv},
                 {"head_dim", d},
                 {"vocab_size", vocab},
                 {"rms_norm_eps", 1e-6},
                 {"hidden_act", "silu"},
                 {"torch_dtype", "bfloat16"},
                 {"rope_scaling",
                  {{"rope_type", "llama3"},
                   {"factor", 8.0},
                   {"low_freq_factor", 1.0},
                   {"high_freq_factor", 4.0},
                   {"original_max_position_embeddings", 64}}}};
  fs::create_directories(dir);
  write_json_file(dir + "/config.json", config);
  std::mt19937 rng(3);
  auto random = [&](Shape shape) {
    std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
    for (size_t i = 0; i < values.size(); ++i)
      values[i] = i % 53 == 0   ? (i % 2 ? -0.0f : 0.0f)
                  : i % 41 == 0 ? std::ldexp(1.0f, -130)  // bf16 subnormal
                                : std::normal_distribution<float>(0, 0.2f)(rng);
    return Tensor::from_f32(std::move(shape), values).to(DType::BF16);
  };
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"model.embed_tokens.weight", random({vocab, hidden})},
      {"model.norm.weight", random({hidden})},
      {"lm_head.weight", random({vocab, hidden})}};
  for (int64_t i = 0; i < layers; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".";
    for (const auto& [name, shape] : std::vector<std::pair<std::string, Shape>>{
             {"input_layernorm.weight", {hidden}},
             {"post_attention_layernorm.weight", {hidden}},
             {"self_attn.q_proj.weight", {heads * d, hidden}},
             {"self_attn.k_proj.weight", {kv * d, hidden}},
             {"self_attn.v_proj.weight", {kv * d, hidden}},
             {"self_attn.o_proj.weight", {hidden, heads * d}},
             {"mlp.gate_proj.weight", {inter, hidden}},
             {"mlp.up_proj.weight", {inter, hidden}},
             {"mlp.down_proj.weight", {hidden, inter}}})
      tensors.push_back({l + name, random(shape)});
  }
  write_safetensors(dir + "/model.safetensors", tensors);
  return dir;
}

TEST(MaxTextOrbax, InexactQueryScaleRoundTripsThroughTheCli) {
  const std::string dir = test::make_temp_dir("kiln-maxtext-cli");
  const std::string hf = write_bf16_llama(dir + "/hf");
  const std::string q = test::shell_quote(hf);
  for (const std::string layout : {"scanned", "unscanned"}) {
    for (const std::string format : kFormats) {
      SCOPED_TRACE(layout + " " + format);
      const std::string kiln = dir + "/kiln_" + layout, orbax = dir + "/o_" + layout + format;
      if (!fs::exists(kiln)) {
        const auto r = test::run_kiln("convert " + q + " -o " + test::shell_quote(kiln) +
                                      " --layout " + layout);
        ASSERT_EQ(r.exit_code, 0) << r.err;
      }
      const std::string flags = format == "ocdbt"       ? " --orbax-step 0"
                                : format == "zarr_zstd" ? " --orbax-zarr"
                                                        : " --orbax-zarr --orbax-raw";
      auto r = test::run_kiln("convert " + q + " -o " + test::shell_quote(orbax) +
                              " --format orbax --layout " + layout + flags);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      const OrbaxSource exported(orbax);
      const std::string query = std::string("decoder/layers") + (layout == "scanned" ? "" : "_0") +
                                "/self_attention/query/kernel";
      const Tensor residual = exported.get_side_array("kiln_residual/" + query);
      ASSERT_TRUE(residual.defined()) << "the bf16 scale by 1/2.828125 is inexact";
      int64_t corrected = 0;
      for (int64_t i = 0; i < residual.numel(); ++i) corrected += residual.data<int8_t>()[i] != 0;
      EXPECT_GT(corrected, 0);
      EXPECT_FALSE(exported.contains("kiln_residual/" + query)) << "orbax must not see it";

      r = test::run_kiln("convert " + test::shell_quote(orbax) + " -o " +
                         test::shell_quote(orbax + "_back"));
      ASSERT_EQ(r.exit_code, 0) << r.err;
      const double diff =
          compare_checkpoints(KilnCheckpoint(kiln), KilnCheckpoint(orbax + "_back"));
      EXPECT_EQ(diff, 0);
      std::cout << "  bf16 head_dim 8 " << layout << " " << format << ": " << corrected << "/"
                << residual.numel() << " query elements corrected by the residual, max abs diff "
                << diff << "\n";
    }
  }
  fs::remove_all(dir);
}

// The unembedding MaxText stores transposed ([V, E] -> [E, V]) is exported in blocks of
// source rows, each block one chunk of columns ([E, n]): the source is read once, front to
// back, and one block is held instead of a whole transposed copy (1 GB for an 8B model).
// Orbax and Kiln read the same array as with whole-row chunks, and the round trip stays
// bitwise, scanned and unscanned, zstd and raw.
TEST(MaxTextOrbax, UnembeddingIsWrittenInBlocksOfSourceRows) {
  const std::string dir = test::make_temp_dir("kiln-maxtext-blocks");
  const std::string hf = write_bf16_llama(dir + "/hf");  // lm_head [32, 16] bf16: 32-byte rows
  const std::unique_ptr<TensorSource> source = open_tensor_source(hf);
  const Tensor lm_head = source->get("lm_head.weight");
  const std::string logits = "params/params/decoder/logits_dense/kernel";
  for (const std::string layout : {"scanned", "unscanned"}) {
    ConvertOptions options;
    options.layout = layout;
    const std::string kiln = dir + "/kiln_" + layout;
    convert_hf_to_kiln(hf, kiln, options);
    for (bool zstd : {true, false}) {
      SCOPED_TRACE(layout + (zstd ? " zstd" : " raw"));
      OrbaxWriteOptions whole, blocks;
      whole.zarr.zstd = blocks.zarr.zstd = zstd;
      blocks.zarr.max_chunk_bytes = 96;  // 3 source rows per block: 10 blocks of 3, one of 2
      OrbaxExportOptions tree;
      tree.maxtext_layout = layout;
      const std::string a = dir + "/whole_" + layout + std::to_string(zstd);
      const std::string b = dir + "/blocks_" + layout + std::to_string(zstd);
      export_to_orbax(*open_hf_as_kiln(hf, options), a, whole, false, tree);
      export_to_orbax(*open_hf_as_kiln(hf, options), b, blocks, false, tree);
      const Json metadata = read_json_file(b + "/array_metadatas/process_0");
      Json chunks;
      for (const Json& m : metadata["array_metadatas"])
        if (m["array_metadata"]["param_name"] == "params.params.decoder.logits_dense.kernel")
          chunks = m["array_metadata"]["chunk_shape"];
      EXPECT_EQ(chunks, Json({16, 3})) << "blocks of 3 columns (source rows)";
      const OrbaxSource x(a), y(b);
      ASSERT_EQ(x.names(), y.names());
      for (const std::string& name : x.names()) {
        const Tensor u = x.get(name), v = y.get(name);
        ASSERT_EQ(u.shape(), v.shape()) << name;
        EXPECT_EQ(std::memcmp(u.raw(), v.raw(), u.nbytes()), 0) << name;
      }
      const Tensor kernel = y.get(logits);  // [E, V]: HF's lm_head transposed
      ASSERT_EQ(kernel.shape(), (Shape{16, 32}));
      int64_t mismatches = 0;
      for (int64_t e = 0; e < 16; ++e)
        for (int64_t v = 0; v < 32; ++v)
          mismatches += kernel.data<uint16_t>()[e * 32 + v] != lm_head.data<uint16_t>()[v * 16 + e];
      EXPECT_EQ(mismatches, 0);
      import_orbax_to_kiln(b, b + "_back", {}, false);
      const double diff = compare_checkpoints(KilnCheckpoint(kiln), KilnCheckpoint(b + "_back"));
      EXPECT_EQ(diff, 0);
      std::cout << "  " << layout << (zstd ? " zstd" : " raw") << ": logits_dense chunks "
                << chunks.dump() << ", " << mismatches
                << " elements differ from HF's lm_head transposed, round trip max abs diff " << diff
                << "\n";
    }
  }
  fs::remove_all(dir);
}

// A KilnTensorSet that records which tensors are asked for, in order.
class RecordingTensors : public KilnTensorSet {
 public:
  explicit RecordingTensors(std::unique_ptr<KilnTensorSet> inner) : inner_(std::move(inner)) {}
  const Json& manifest() const override { return inner_->manifest(); }
  std::vector<std::string> names() const override { return inner_->names(); }
  Tensor get(const std::string& name) const override {
    reads.push_back({-1, name});
    return inner_->get(name);
  }
  Tensor layer_tensor(int64_t layer, const std::string& param) const override {
    reads.push_back({layer, param});
    return inner_->layer_tensor(layer, param);
  }
  std::string where() const override { return inner_->where(); }
  mutable std::vector<std::pair<int64_t, std::string>> reads;

 private:
  std::unique_ptr<KilnTensorSet> inner_;
};

// Export reads each source tensor once: the top-level ones, then decoder layer after decoder
// layer (the order HF and Kiln files hold them), for the scanned tree too, whose stacked
// arrays are written a layer at a time.
TEST(MaxTextOrbax, SourceTensorsAreReadOnceLayerAfterLayer) {
  const std::string dir = test::make_temp_dir("kiln-maxtext-order");
  const std::string hf = write_bf16_llama(dir + "/hf");  // 2 layers, 9 tensors each
  for (const std::string layout : {"scanned", "unscanned"}) {
    SCOPED_TRACE(layout);
    ConvertOptions options;
    options.layout = layout;
    RecordingTensors source(open_hf_as_kiln(hf, options));
    OrbaxExportOptions tree;
    tree.maxtext_layout = layout;
    export_to_orbax(source, dir + "/o_" + layout, {}, false, tree);
    std::set<std::pair<int64_t, std::string>> distinct(source.reads.begin(), source.reads.end());
    EXPECT_EQ(distinct.size(), source.reads.size()) << "a tensor was read twice";
    EXPECT_EQ(source.reads.size(), 3u + 2 * 9) << "embedding, final norm, lm_head, 2 layers";
    int64_t descents = 0;
    for (size_t i = 1; i < source.reads.size(); ++i)
      descents += source.reads[i].first < source.reads[i - 1].first;
    EXPECT_EQ(descents, 0) << "layers out of order";
    import_orbax_to_kiln(dir + "/o_" + layout, dir + "/back_" + layout, {}, false);
    convert_hf_to_kiln(hf, dir + "/kiln_" + layout, options);
    EXPECT_EQ(compare_checkpoints(KilnCheckpoint(dir + "/kiln_" + layout),
                                  KilnCheckpoint(dir + "/back_" + layout)),
              0);
    std::cout << "  " << layout << ": " << source.reads.size()
              << " source tensors read once each, layer order descents " << descents << "\n";
  }
  fs::remove_all(dir);
}

TEST(MaxTextOrbax, InspectShowsMaxTextsTree) {
  const std::string dir = test::make_temp_dir("kiln-maxtext-inspect");
  const std::string orbax = dir + "/o";
  auto r = test::run_kiln("convert " + test::shell_quote(test::data_path("hf/llama")) + " -o " +
                          test::shell_quote(orbax) + " --format orbax --layout scanned");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_kiln("inspect --json " + test::shell_quote(orbax));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json j = parse_json(r.out, "kiln inspect --json");
  std::map<std::string, Shape> shapes;
  for (const Json& t : j["tensors"]) shapes[t["name"]] = t["shape"].get<Shape>();
  const std::string l = "params/params/decoder/layers/";
  const std::map<std::string, Shape> expected = {
      {l + "self_attention/query/kernel", {64, 2, 4, 16}},
      {l + "self_attention/key/kernel", {64, 2, 2, 16}},
      {l + "self_attention/value/kernel", {64, 2, 2, 16}},
      {l + "self_attention/out/kernel", {4, 2, 16, 64}},
      {l + "mlp/wi_0/kernel", {64, 2, 128}},
      {l + "mlp/wi_1/kernel", {64, 2, 128}},
      {l + "mlp/wo/kernel", {128, 2, 64}},
      {l + "pre_self_attention_layer_norm/scale", {64, 2}},
      {l + "post_self_attention_layer_norm/scale", {64, 2}},
      {"params/params/decoder/decoder_norm/scale", {64}},
      {"params/params/decoder/logits_dense/kernel", {64, 512}},
      {"params/params/token_embedder/embedding", {512, 64}},
      {"step", {}}};
  EXPECT_EQ(shapes, expected);
  EXPECT_EQ(j["format"], "orbax");
  EXPECT_EQ(j["layout"], "ocdbt");
  r = test::run_kiln("inspect " + test::shell_quote(orbax));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::cout << r.out;
  EXPECT_NE(r.out.find("params/params/decoder/layers/self_attention/query/kernel"),
            std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
