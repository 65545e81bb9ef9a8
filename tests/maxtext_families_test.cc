// MaxText's tree for every family Kiln maps: HF -> Kiln (either layout) -> Orbax in MaxText's
// tree (scanned and unscanned) has exactly the arrays and shapes written down from MaxText's
// code in tests/data/maxtext_trees/<fixture>.json; back with Kiln's sidecar it is bitwise the
// Kiln checkpoint; without it (as MaxText would write it) `--config` reads it back, and the
// model gives HF's logits: bitwise where MaxText changes no values, else within the rounding
// of its scales. Families MaxText lacks are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "kiln/convert/hf_to_kiln.h"
#include "kiln/convert/maxtext_tree.h"
#include "kiln/convert/orbax_export.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/orbax/orbax_checkpoint.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

constexpr const char* kPrefix = "params/params/";

// Logits [1, T, V] of the model at `path` for a fixed prompt.
Tensor logits_of(const std::string& path) {
  const LoadedModel loaded = load_model(path);
  Model model(loaded.spec, loaded.weights);
  std::vector<int32_t> tokens;
  for (int32_t i = 0; i < 12; ++i) tokens.push_back((i * 37 + 5) % 200);
  KvCache cache = model.make_cache(1, static_cast<int64_t>(tokens.size()));
  return model.forward(tokens.data(), 1, static_cast<int64_t>(tokens.size()), cache);
}

// The arrays under params/params/ of an Orbax checkpoint with their shapes.
std::map<std::string, Shape> tree_of(const std::string& orbax) {
  const OrbaxSource source(orbax);
  std::map<std::string, Shape> tree;
  for (const std::string& name : source.names())
    if (name.rfind(kPrefix, 0) == 0)
      tree[name.substr(std::strlen(kPrefix))] = source.shape_of(name);
  return tree;
}

std::map<std::string, Shape> expected_tree(const std::string& fixture, const std::string& layout) {
  const Json j = read_json_file(test::data_path("maxtext_trees/" + fixture + ".json"));
  std::map<std::string, Shape> tree;
  for (const auto& [path, entry] : j.at(layout).items()) {
    EXPECT_TRUE(entry.contains("from")) << path << ": no MaxText source cited";
    tree[path] = entry.at("shape").get<Shape>();
  }
  return tree;
}

void expect_bitwise(const std::string& expected_dir, const std::string& actual_dir) {
  const KilnCheckpoint expected(expected_dir), actual(actual_dir);
  EXPECT_EQ(expected.names(), actual.names());
  EXPECT_EQ(expected.layout(), actual.layout());
  for (const std::string& name : expected.names()) {
    const Tensor a = expected.get(name), b = actual.get(name);
    ASSERT_EQ(a.shape(), b.shape()) << name;
    ASSERT_EQ(a.dtype(), b.dtype()) << name;
    EXPECT_EQ(std::memcmp(a.contiguous().raw(), b.contiguous().raw(), a.nbytes()), 0) << name;
  }
}

// A copy of the Orbax checkpoint without Kiln's sidecar (what MaxText itself would have).
std::string without_sidecar(const std::string& orbax) {
  const std::string copy = orbax + "_maxtext";
  fs::copy(orbax, copy, fs::copy_options::recursive);
  EXPECT_TRUE(fs::remove(copy + "/kiln_manifest.json"));
  return copy;
}

// MaxText's vocab_size written down for the fixture (Gemma's padded or cut vocab), as a
// `maxtext_vocab` option: 0 when it is the model's own.
int64_t fixture_maxtext_vocab(const std::string& fixture, const Json& config) {
  const Json j = read_json_file(test::data_path("maxtext_trees/" + fixture + ".json"));
  const int64_t v = j.at("maxtext_vocab").get<int64_t>();
  return v == config.at("vocab_size").get<int64_t>() ? 0 : v;
}

// The first `columns` entries of the last axis of logits [1, T, V].
Tensor first_columns(const Tensor& logits, int64_t columns) {
  return logits.slice(2, 0, columns).contiguous(true);
}

class MaxTextFamilyTree : public ::testing::TestWithParam<std::string> {};

TEST_P(MaxTextFamilyTree, TreeMatchesMaxTextAndRoundTrips) {
  const std::string fixture = GetParam();
  const std::string hf = test::data_path("hf/" + fixture);
  const Json config = read_json_file(hf + "/config.json");
  const std::string dir = test::make_temp_dir("kiln-mt-" + fixture);
  const Tensor hf_logits = logits_of(hf);
  const int64_t vocab = fixture_maxtext_vocab(fixture, config);
  for (const std::string kiln_layout : {"unscanned", "scanned"}) {
    ConvertOptions options;
    options.layout = kiln_layout;
    const std::string kiln = dir + "/kiln_" + kiln_layout;
    convert_hf_to_kiln(hf, kiln, options);
    for (const std::string mt_layout : {"unscanned", "scanned"}) {
      SCOPED_TRACE("Kiln " + kiln_layout + " -> MaxText " + mt_layout);
      const std::string orbax = dir + "/orbax_" + kiln_layout + "_" + mt_layout;
      OrbaxWriteOptions write;
      write.ocdbt = mt_layout == "scanned";  // both storage kinds
      OrbaxExportOptions tree;
      tree.maxtext_layout = mt_layout;
      tree.maxtext_vocab = vocab;
      export_kiln_to_orbax(kiln, orbax, write, false, tree);
      EXPECT_EQ(tree_of(orbax), expected_tree(fixture, mt_layout));
      EXPECT_TRUE(OrbaxSource(orbax).contains("step"));

      // Straight from the HF folder, as `kiln convert --format orbax` exports (no
      // intermediate checkpoint): the same arrays, and the same Kiln checkpoint back.
      const std::string direct = orbax + "_direct";
      export_to_orbax(*open_hf_as_kiln(hf, options), direct, write, false, tree);
      {
        const OrbaxSource a(orbax), b(direct);
        EXPECT_EQ(a.names(), b.names());
        for (const std::string& name : a.names()) {
          const Tensor x = a.get(name), y = b.get(name);
          ASSERT_EQ(x.shape(), y.shape()) << name;
          EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0) << name;
        }
        EXPECT_EQ(read_json_file(a.where() + "/kiln_manifest.json"),
                  read_json_file(b.where() + "/kiln_manifest.json"));
      }
      import_orbax_to_kiln(direct, direct + "_back", {}, false);
      expect_bitwise(kiln, direct + "_back");

      // With Kiln's sidecar: bitwise, in the Kiln layout it came from.
      import_orbax_to_kiln(orbax, orbax + "_back", {}, false);
      expect_bitwise(kiln, orbax + "_back");

      // As MaxText wrote it: the config names the family; values by arithmetic.
      if (kiln_layout != "unscanned") continue;
      const std::string maxtext = without_sidecar(orbax);
      import_orbax_to_kiln(maxtext, maxtext + "_kiln", {}, false, config);
      const MaxTextTree t = MaxTextTree::build(config, mt_layout == "scanned", vocab);
      Tensor logits = logits_of(maxtext + "_kiln");
      Tensor want = hf_logits;
      const int64_t v = hf_logits.dim(2);
      if (t.maxtext_vocab() < v) {
        // Gemma 3's vocab cut to MaxText's: those tokens' embedding rows read back as zeros,
        // so their logits are exactly 0; the others as for any tree.
        const Tensor cut = logits.slice(2, t.maxtext_vocab(), v).contiguous(true);
        for (int64_t i = 0; i < cut.numel(); ++i) ASSERT_EQ(cut.item_as_double(i), 0.0) << i;
        want = first_columns(hf_logits, t.maxtext_vocab());
        logits = first_columns(logits, t.maxtext_vocab());
      }
      const double diff = test::max_abs_diff(want, logits);
      double scale = 0;
      for (int64_t i = 0; i < want.numel(); ++i)
        scale = std::max(scale, std::abs(want.item_as_double(i)));
      const std::vector<std::string> lossy = t.lossy_steps(DType::F32);
      if (lossy.empty()) {
        EXPECT_EQ(diff, 0) << "MaxText changes no values here";
      } else {
        EXPECT_LE(diff, 1e-5 * scale) << "beyond float32 rounding of MaxText's scales";
      }
      std::cout << "  " << fixture << " MaxText " << mt_layout << ": " << tree_of(orbax).size()
                << " arrays as MaxText's tree; without Kiln's sidecar logits max abs diff " << diff
                << " (max |logit| " << scale << ", "
                << (lossy.empty() ? "no lossy value changes"
                                  : std::to_string(lossy.size()) + " lossy value changes")
                << ")\n";
      for (const std::string& line : describe_maxtext_tree(maxtext, config))
        std::cout << "    " << line << "\n";
    }
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Families, MaxTextFamilyTree,
                         ::testing::Values("gemma", "gemma2", "gemma3_text", "mixtral", "qwen3",
                                           "qwen3_moe", "deepseek_v3", "gpt_oss", "llama4_text",
                                           "llama", "llama_rope_llama3", "mistral", "qwen2"));

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(MaxTextFamilies, FamiliesMaxTextLacksAreRefused) {
  const std::string dir = test::make_temp_dir("kiln-mt-refuse");
  for (const std::string fixture :
       {"gpt2", "gpt_neox", "falcon", "phi", "phi3", "olmo2", "starcoder2"}) {
    const std::string kiln = dir + "/" + fixture;
    convert_hf_to_kiln(test::data_path("hf/" + fixture), kiln, {});
    const std::string e = error_of([&] { export_kiln_to_orbax(kiln, kiln + "_o", {}, false); });
    EXPECT_NE(e.find("MaxText has no"), std::string::npos) << fixture;
    EXPECT_FALSE(fs::exists(kiln + "_o"));
    OrbaxExportOptions plain;
    plain.tree = "plain";  // Kiln's own tree on request
    export_kiln_to_orbax(kiln, kiln + "_plain", {}, false, plain);
    import_orbax_to_kiln(kiln + "_plain", kiln + "_back", {}, false);
    expect_bitwise(kiln, kiln + "_back");
  }
  fs::remove_all(dir);
}

TEST(MaxTextFamilies, ImportChecksEveryArrayAgainstTheConfig) {
  const std::string dir = test::make_temp_dir("kiln-mt-check");
  const std::string hf = test::data_path("hf/qwen3");
  Json config = read_json_file(hf + "/config.json");
  ConvertOptions options;
  convert_hf_to_kiln(hf, dir + "/kiln", options);
  export_kiln_to_orbax(dir + "/kiln", dir + "/o", {}, false);
  const std::string maxtext = without_sidecar(dir + "/o");
  // Without a config, a MaxText tree's family is unknown.
  std::string e = error_of([&] { import_orbax_to_kiln(maxtext, dir + "/a", {}, false); });
  EXPECT_NE(e.find("--config"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir + "/a"));
  // A config whose shapes differ: the error names the array.
  Json wrong = config;
  wrong["intermediate_size"] = config["intermediate_size"].get<int64_t>() * 2;
  e = error_of([&] { import_orbax_to_kiln(maxtext, dir + "/b", {}, false, wrong); });
  EXPECT_NE(e.find("params/params/decoder/layers_0/mlp/wi_0/kernel"), std::string::npos);
  EXPECT_NE(e.find("[64, 256]"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir + "/b"));
  // Another family's config: its tree's arrays are missing.
  const Json gemma = read_json_file(test::data_path("hf/gemma/config.json"));
  e = error_of([&] { import_orbax_to_kiln(maxtext, dir + "/c", {}, false, gemma); });
  EXPECT_NE(e.find("which is missing"), std::string::npos);
  fs::remove_all(dir);
}

TEST(MaxTextFamilies, ValueChangesAreUndoneBitwiseWithResiduals) {
  // Gemma's 1 + w norms, sqrt(hidden) embedding and 1/sqrt(D) query scale all round in
  // float32; Kiln's residual side arrays restore every bit, and without them the values are
  // within a few units in the last place.
  const std::string hf = test::data_path("hf/gemma2");
  const Json config = read_json_file(hf + "/config.json");
  const MaxTextTree tree = MaxTextTree::build(config, false);
  EXPECT_FALSE(tree.lossy_steps(DType::F32).empty());
  const std::string dir = test::make_temp_dir("kiln-mt-values");
  convert_hf_to_kiln(hf, dir + "/kiln", {});
  const KilnCheckpoint kiln(dir + "/kiln");
  int64_t changed = 0, total = 0;
  double worst_ulps = 0;
  for (const MaxTextArraySpec& a : tree.arrays()) {
    if (a.transform.op == MaxTextValueOp::kNone) continue;
    const Tensor x =
        a.layers.empty() ? kiln.get(a.kiln_param) : kiln.layer_tensor(a.layers[0], a.kiln_param);
    const MaxTextValue v = MaxTextTree::to_maxtext(a, x);
    const Tensor exact = MaxTextTree::from_maxtext(a, v.array, v.residual);
    const Tensor plain = MaxTextTree::from_maxtext(a, v.array, Tensor());
    ASSERT_EQ(std::memcmp(exact.raw(), x.contiguous().raw(), x.nbytes()), 0) << a.path;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double want = x.contiguous().item_as_double(i), got = plain.item_as_double(i);
      total++;
      if (want != got) {
        changed++;
        const double ulp = std::abs(want) > 0 ? std::ldexp(1.0, std::ilogb(want) - 23) : 1e-45;
        worst_ulps = std::max(worst_ulps, std::abs(want - got) / ulp);
      }
    }
  }
  std::cout << "  gemma2 value changes: " << changed << "/" << total
            << " elements differ without residuals, worst " << worst_ulps << " ulp\n";
  EXPECT_GT(total, 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

TEST(MaxTextFamilies, CliReadsMaxTextTreesAndReportsLossySteps) {
  const std::string dir = test::make_temp_dir("kiln-mt-cli");
  const std::string hf = test::data_path("hf/gemma2");
  const std::string config = test::shell_quote(hf + "/config.json");
  const std::string orbax = dir + "/o";
  auto r = test::run_kiln("convert " + test::shell_quote(hf) + " -o " + test::shell_quote(orbax) +
                          " --format orbax --layout scanned --maxtext-vocab 640");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_kiln("inspect " + test::shell_quote(orbax));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("MaxText tree: gemma2, scanned"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("to MaxText's vocab_size 640 with rows of zeros"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("[640, 64]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("undone exactly by Kiln's residual arrays"), std::string::npos) << r.out;
  // As MaxText would have written it: no sidecar.
  const std::string maxtext = without_sidecar(orbax);
  r = test::run_kiln("convert " + test::shell_quote(maxtext) + " -o " +
                     test::shell_quote(dir + "/k"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--config"), std::string::npos) << r.err;
  r = test::run_kiln("inspect " + test::shell_quote(maxtext) + " --config " + config);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::cout << r.out.substr(0, r.out.find("  params/"));
  EXPECT_NE(r.out.find("LOSSY"), std::string::npos) << r.out;
  r = test::run_kiln("convert " + test::shell_quote(maxtext) + " -o " +
                     test::shell_quote(dir + "/k") + " --config " + config);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_kiln("inspect " + test::shell_quote(dir + "/k"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("weights read from MaxText's gemma2 tree (scanned)"), std::string::npos)
      << r.out;
  r = test::run_kiln("verify " + test::shell_quote(dir + "/k") + " --reference " +
                     test::shell_quote(hf + "/reference.safetensors"));
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("MaxText value change, LOSSY"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("PASSED"), std::string::npos) << r.out;
  // Families MaxText lacks: refused, unless Kiln's own tree is asked for.
  const std::string gpt2 = test::shell_quote(test::data_path("hf/gpt2"));
  r = test::run_kiln("convert " + gpt2 + " -o " + test::shell_quote(dir + "/g") +
                     " --format orbax");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("MaxText has no gpt2"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir + "/g"));
  r = test::run_kiln("convert " + gpt2 + " -o " + test::shell_quote(dir + "/g") +
                     " --format orbax --orbax-tree plain");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// In bf16, Gemma's 1 + w norms round (MaxText's conversion is lossy there): a tree MaxText
// wrote reads back within that rounding; Kiln's own export stays bitwise.
TEST(MaxTextFamilies, Bf16LossyStepsStayWithinTheirRounding) {
  const std::string dir = test::make_temp_dir("kiln-mt-bf16");
  for (const std::string fixture : {"gemma2", "gemma3_text", "qwen3"}) {
    const std::string hf = test::data_path("hf/" + fixture);
    const Json config = read_json_file(hf + "/config.json");
    ConvertOptions options;
    options.dtype = "bf16";
    const std::string kiln = dir + "/" + fixture;
    convert_hf_to_kiln(hf, kiln, options);
    export_kiln_to_orbax(kiln, kiln + "_o", {}, false);
    import_orbax_to_kiln(kiln + "_o", kiln + "_back", {}, false);
    expect_bitwise(kiln, kiln + "_back");
    const std::string maxtext = without_sidecar(kiln + "_o");
    import_orbax_to_kiln(maxtext, kiln + "_mt", {}, false, config);
    const std::vector<std::string> lossy =
        MaxTextTree::build(config, false).lossy_steps(DType::BF16);
    const Tensor want = logits_of(kiln), got = logits_of(kiln + "_mt");
    const double diff = test::max_abs_diff(want, got);
    double scale = 0;
    for (int64_t i = 0; i < want.numel(); ++i)
      scale = std::max(scale, std::abs(want.item_as_double(i)));
    std::cout << "  " << fixture << " bf16: " << lossy.size()
              << " lossy value changes; logits of the tree read without Kiln's residuals vs "
                 "Kiln's: max abs diff "
              << diff << " (max |logit| " << scale << ")\n";
    if (lossy.empty()) {
      EXPECT_EQ(diff, 0) << fixture;
    } else {
      EXPECT_GT(diff, 0) << fixture << ": bf16 1 + w should round somewhere";
      EXPECT_LE(diff, 0.02 * scale) << fixture;
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

const MaxTextArraySpec& array_at(const MaxTextTree& tree, const std::string& path) {
  for (const MaxTextArraySpec& a : tree.arrays())
    if (a.path == path) return a;
  throw Error("no array " + path);
}

// Gemma 3 scans in blocks of 6 with an unstacked remainder, gpt-oss in blocks of 2, DeepSeek
// in dense and MoE groups: the grouping for more layers than the fixtures have.
TEST(MaxTextFamilies, BlockScansGroupLayersAsMaxTextDoes) {
  Json gemma3 = read_json_file(test::data_path("hf/gemma3_text/config.json"));
  gemma3["num_hidden_layers"] = 13;
  gemma3.erase("layer_types");  // from sliding_window_pattern
  const MaxTextTree g3 = MaxTextTree::build(gemma3, true);
  const MaxTextArraySpec& block = array_at(g3, "decoder/layers/layers_1/mlp/wo/kernel");
  EXPECT_EQ(block.layers, (std::vector<int64_t>{1, 7}));
  EXPECT_EQ(block.stored_shape(), (Shape{128, 2, 64}));
  const MaxTextArraySpec& rest = array_at(g3, "decoder/layers_remainder/layers_0/mlp/wo/kernel");
  EXPECT_EQ(rest.layers, (std::vector<int64_t>{12}));
  EXPECT_FALSE(rest.stacked);
  EXPECT_EQ(rest.stored_shape(), (Shape{128, 64}));

  Json oss = read_json_file(test::data_path("hf/gpt_oss/config.json"));
  oss["num_hidden_layers"] = 6;
  oss["layer_types"] = Json::array();
  for (int i = 0; i < 6; ++i)
    oss["layer_types"].push_back(i % 2 ? "full_attention" : "sliding_attention");
  const MaxTextTree g = MaxTextTree::build(oss, true);
  EXPECT_EQ(array_at(g, "decoder/layers/layers_1/GptOssAttention/sinks").layers,
            (std::vector<int64_t>{1, 3, 5}));
  EXPECT_EQ(array_at(g, "decoder/layers/layers_0/GptOssMlp/wi_0").stored_shape(),
            (Shape{4, 3, 64, 128}));  // [X, L, E, I]
  oss["num_hidden_layers"] = 5;
  oss["layer_types"].erase(5);
  EXPECT_THROW(MaxTextTree::build(oss, true), Error);  // MaxText scans whole blocks only

  Json ds = read_json_file(test::data_path("hf/deepseek_v3/config.json"));
  ds["num_hidden_layers"] = 5;
  ds["first_k_dense_replace"] = 2;
  const MaxTextTree d = MaxTextTree::build(ds, false);
  EXPECT_EQ(array_at(d, "decoder/dense_layers_1/mlp/wi_0/kernel").layers,
            (std::vector<int64_t>{1}));
  EXPECT_EQ(array_at(d, "decoder/moe_layers_2/DeepSeekMoeBlock_0/MoeBlock_0/wi_0").layers,
            (std::vector<int64_t>{4}));
  const MaxTextTree ds_scanned = MaxTextTree::build(ds, true);
  EXPECT_EQ(array_at(ds_scanned, "decoder/moe_layers/DeepSeekMoeBlock_0/MoeBlock_0/gate/bias")
                .stored_shape(),
            (Shape{8, 3}));
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// Gemma's embedding holds MaxText's vocab_size rows: the stock Gemma 1/2 vocab (256000) padded
// to 256128 with zero rows, Gemma 3's 262208 cut to 262144 (param_mapping.py:
// GEMMA2_MAXTEXT_TO_HF_PARAM_HOOK_FN.pad_hf_embedding_layer,
// GEMMA3_MAXTEXT_TO_HF_PARAM_HOOK_FN.pad_and_scale_embedding). Import drops the padding
// whatever it holds, and says so when it is not zeros.
TEST(MaxTextFamilies, GemmaVocabIsPaddedOrCutAsMaxTextDoes) {
  struct Case {
    const char* fixture;
    int64_t hf_vocab, maxtext_vocab;
  };
  for (const Case& c : {Case{"gemma", 256000, 256128}, Case{"gemma2", 256000, 256128},
                        Case{"gemma3_text", 262208, 262144}, Case{"gemma3_text", 262144, 262144},
                        Case{"gemma2", 512, 512}}) {
    Json config = read_json_file(test::data_path(std::string("hf/") + c.fixture + "/config.json"));
    config["vocab_size"] = c.hf_vocab;
    const MaxTextTree t = MaxTextTree::build(config, true);
    EXPECT_EQ(t.maxtext_vocab(), c.maxtext_vocab) << c.fixture << " " << c.hf_vocab;
    EXPECT_EQ(array_at(t, "token_embedder/embedding").stored_shape(), (Shape{c.maxtext_vocab, 64}))
        << c.fixture;
  }
  const Json qwen3 = read_json_file(test::data_path("hf/qwen3/config.json"));
  EXPECT_NE(error_of([&] { MaxTextTree::build(qwen3, false, 640); }).find("Gemma padding"),
            std::string::npos);

  const std::string dir = test::make_temp_dir("kiln-mt-vocab");
  const std::string hf = test::data_path("hf/gemma2");
  const Json config = read_json_file(hf + "/config.json");
  const Tensor hf_logits = logits_of(hf);
  OrbaxExportOptions tree;
  tree.maxtext_vocab = 640;
  OrbaxWriteOptions write;
  write.ocdbt = false;
  export_to_orbax(*open_hf_as_kiln(hf, {}), dir + "/o", write, false, tree);
  {
    const Tensor e = OrbaxSource(dir + "/o").get("params/params/token_embedder/embedding");
    ASSERT_EQ(e.shape(), (Shape{640, 64}));
    const Tensor pad = e.slice(0, 512, 640).contiguous(true);
    for (int64_t i = 0; i < pad.numel(); ++i) ASSERT_EQ(pad.item_as_double(i), 0.0) << i;
    // The kept rows are HF's times float32(sqrt(64)) = 8: exact.
    const Tensor hf_e = open_hf_as_kiln(hf, {})->get("token_embedder/embedding").contiguous(true);
    const Tensor kept = e.slice(0, 0, 512).contiguous(true);
    ASSERT_EQ(hf_e.shape(), kept.shape());
    for (int64_t i = 0; i < kept.numel(); ++i)
      ASSERT_EQ(kept.item_as_double(i), 8 * hf_e.item_as_double(i)) << i;
  }
  // With Kiln's sidecar: HF's logits bitwise (the padding is dropped again).
  import_orbax_to_kiln(dir + "/o", dir + "/k", {}, false);
  EXPECT_EQ(KilnCheckpoint(dir + "/k").get("token_embedder/embedding").shape(), (Shape{512, 64}));
  EXPECT_EQ(test::max_abs_diff(hf_logits, logits_of(dir + "/k")), 0);

  // As MaxText wrote it, with padding rows that are not zero (a MaxText-trained model's):
  // dropped all the same, the logits those of the zero-padded tree, and said so.
  const std::string maxtext = without_sidecar(dir + "/o");
  import_orbax_to_kiln(maxtext, dir + "/mt", {}, false, config);
  const std::string odd = dir + "/odd";
  {
    const OrbaxSource source(maxtext);
    OrbaxWriter writer(odd, write);
    for (const std::string& name : source.names()) {
      Tensor t = source.get(name).contiguous(true);
      if (name == "params/params/token_embedder/embedding") {
        Tensor pad = t.slice(0, 512, 640);
        for (int64_t i = 0; i < pad.numel(); ++i) pad.mutable_data<float>()[i] = 0.5f;
      }
      writer.add(name, t);
    }
    writer.finish();
  }
  import_orbax_to_kiln(odd, dir + "/odd_k", {}, false, config);
  EXPECT_EQ(test::max_abs_diff(logits_of(dir + "/mt"), logits_of(dir + "/odd_k")), 0);
  const Json manifest = KilnCheckpoint(dir + "/odd_k").manifest();
  EXPECT_EQ(manifest["provenance"]["maxtext"].value("nonzero_padding_rows", int64_t{-1}), 128);
  EXPECT_EQ(KilnCheckpoint(dir + "/mt")
                .manifest()["provenance"]["maxtext"]
                .value("nonzero_padding_rows", int64_t{-1}),
            0);
  bool said = false;
  for (const std::string& line : maxtext_provenance(manifest)) {
    std::cout << "  " << line << "\n";
    said = said || line.find("128 of them not zero") != std::string::npos;
  }
  EXPECT_TRUE(said);
  // A tree with MaxText's vocab other than the default: the rows are read from the array.
  for (const std::string& line : describe_maxtext_tree(maxtext, config))
    std::cout << "    " << line << "\n";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// Gemma's embedding scaled by sqrt(hidden) in MaxText's own vocab size (no padding rows) is a
// top-level array MaxText rescales: above a few chunks it is written in blocks of source rows
// (chunks of rows), the same array as written whole, and HF's logits come back bitwise.
TEST(MaxTextFamilies, RescaledEmbeddingIsWrittenInBlocksOfRows) {
  const std::string dir = test::make_temp_dir("kiln-mt-emb-blocks");
  const std::string hf = test::data_path("hf/gemma2");  // embedding [512, 64] f32: 256-byte rows
  OrbaxExportOptions tree;
  tree.maxtext_vocab = 512;
  OrbaxWriteOptions whole, blocks;
  whole.ocdbt = blocks.ocdbt = false;
  blocks.zarr.max_chunk_bytes = 4096;  // 16 rows per block: 32 blocks
  export_to_orbax(*open_hf_as_kiln(hf, {}), dir + "/whole", whole, false, tree);
  export_to_orbax(*open_hf_as_kiln(hf, {}), dir + "/blocks", blocks, false, tree);
  const std::string name = "params/params/token_embedder/embedding";
  const Json zarray =
      read_json_file(dir + "/blocks/params.params.token_embedder.embedding/.zarray");
  EXPECT_EQ(zarray["chunks"], Json({16, 64}));
  EXPECT_TRUE(fs::exists(dir + "/blocks/params.params.token_embedder.embedding/31.0"));
  const OrbaxSource a(dir + "/whole"), b(dir + "/blocks");
  const Tensor x = a.get(name), y = b.get(name);
  ASSERT_EQ(x.shape(), y.shape());
  EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0);
  import_orbax_to_kiln(dir + "/blocks", dir + "/back", {}, false);
  const double diff = test::max_abs_diff(logits_of(hf), logits_of(dir + "/back"));
  EXPECT_EQ(diff, 0);
  std::cout << "  gemma2 embedding in blocks of 16 rows: same array as whole, logits max abs diff "
            << diff << "\n";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
