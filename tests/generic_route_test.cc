// The generic route (`--family auto`, registered families bypassed) on every HF fixture:
// every tensor placed, every module and the logits within 1e-4 of the reference, greedy ids
// identical with the KV cache, and logits bitwise those of the built-in family. A family
// file written from the generic route loads like a built-in family and gives the same
// logits bitwise. Errors: unplaceable tensors, malformed or contradicting family files.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>

#include "hf_fixtures.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/auto_family.h"
#include "kiln/models/detect_spec.h"
#include "kiln/models/family_file.h"
#include "kiln/models/loader.h"
#include "kiln/verify/reference_check.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

// Logits [B, T, V] of a batched prefill of the reference's input_ids.
Tensor prefill_logits(const LoadedModel& loaded, const std::string& dir) {
  Model model(loaded.spec, loaded.weights);
  const Tensor input_ids = SafetensorsFile::open(dir + "/reference.safetensors").get("input_ids");
  const int64_t batch = input_ids.dim(0), tokens = input_ids.dim(1);
  std::vector<int32_t> ids;
  for (int64_t k = 0; k < batch * tokens; ++k)
    ids.push_back(static_cast<int32_t>(input_ids.item_as_double(k)));
  KvCache cache = model.make_cache(batch, tokens);
  return model.forward(ids.data(), batch, tokens, cache, {nullptr, false}).contiguous(true);
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

class GenericRoute : public ::testing::TestWithParam<std::string> {};

TEST_P(GenericRoute, VerifiesAndMatchesTheBuiltInFamilyBitwise) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string dir = test::hf_fixture_path(GetParam());
  const LoadedModel generic = load_model(dir, Residency::kResident, {"auto", ""});
  EXPECT_EQ(generic.spec.family, "auto");
  Model model(generic.spec, generic.weights);
  const ReferenceReport report =
      check_against_reference(model, dir + "/reference.safetensors", 1e-4, generic.family.get());
  double worst_module = 0.0;
  for (const ModuleComparison& m : report.modules)
    worst_module = std::max(worst_module, m.max_abs_err);
  std::cout << GetParam() << ": generic route logits max abs err " << report.logits_max_abs_err
            << ", " << report.modules.size() << " modules, worst " << worst_module
            << ", first divergent '" << report.first_divergent << "'\n";
  EXPECT_TRUE(report.passed);
  EXPECT_TRUE(report.greedy_match);
  EXPECT_GT(report.modules.size(), 3u);

  const LoadedModel builtin = load_model(dir);
  EXPECT_EQ(generic.weights.size(), builtin.weights.size());
  EXPECT_TRUE(bitwise_equal(prefill_logits(generic, dir), prefill_logits(builtin, dir)));
  // The generic route proves as many modules as the built-in family (module names that
  // transformers renames at load time included).
  Model builtin_model(builtin.spec, builtin.weights);
  const ReferenceReport builtin_report =
      check_against_reference(builtin_model, dir + "/reference.safetensors", 1e-4);
  EXPECT_GE(report.modules.size(), builtin_report.modules.size());
}

TEST_P(GenericRoute, FamilyFileLoadsLikeABuiltInFamily) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string dir = test::hf_fixture_path(GetParam());
  const HfConfig config = HfConfig::load(dir);
  const LoadedModel generic = load_model(dir, Residency::kResident, {"auto", ""});
  const auto* auto_family = dynamic_cast<const AutoFamily*>(generic.family.get());
  ASSERT_NE(auto_family, nullptr);
  FamilyFile file;
  file.name = GetParam() + "_brought_up";
  file.architectures = {config.architecture()};
  file.model_types = {config.model_type()};
  file.spec_overrides = spec_overrides(detect_spec(config), generic.spec);
  file.tensor_names = auto_family->tensor_names();
  const std::string folder = test::make_temp_dir("kiln-family-file");
  const std::string path = folder + "/" + kFamilyFileName;
  file.save(path);
  // The file round trips and rebuilds the generic route's spec.
  const FamilyFile loaded_file = FamilyFile::load(path);
  EXPECT_EQ(loaded_file.to_json(), file.to_json());
  const LoadedModel from_file = load_model(dir, Residency::kResident, {"", path});
  Json a = from_file.spec.to_json(), b = generic.spec.to_json();
  a.erase("family");
  b.erase("family");
  EXPECT_EQ(a, b);
  EXPECT_TRUE(bitwise_equal(prefill_logits(from_file, dir), prefill_logits(generic, dir)));
  Model model(from_file.spec, from_file.weights);
  EXPECT_TRUE(
      check_against_reference(model, dir + "/reference.safetensors", 1e-4, from_file.family.get())
          .passed);
  fs::remove_all(folder);
}

// `kiln family show NAME --model DIR`: the built-in family as a family file; its discovered
// tensor names read every Kiln tensor from the HF tensors the family's own code reads.
TEST_P(GenericRoute, FamilyShowMatchesTheBuiltInMapping) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string dir = test::hf_fixture_path(GetParam());
  const std::string family = family_for(HfConfig::load(dir)).name();
  const test::CommandResult r =
      test::run_kiln("family show " + family + " --model " + test::shell_quote(dir));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("come from the same HF tensors as in the built-in family"),
            std::string::npos)
      << r.out;
  const test::CommandResult j =
      test::run_kiln("family show " + family + " --json --model " + test::shell_quote(dir));
  const Json shown = parse_json(j.out, "family show");
  EXPECT_EQ(shown["spec_overrides"], Json::object()) << shown["spec_overrides"].dump();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GenericRoute, ::testing::ValuesIn(test::hf_fixture_names()),
                         [](const auto& info) { return info.param; });

// A copy of the llama fixture with `edit` applied to its config.json.
std::string llama_copy(const std::function<void(Json&)>& edit) {
  const std::string dir = test::make_temp_dir("kiln-generic");
  for (const char* f : {"config.json", "model.safetensors", "reference.safetensors"})
    fs::copy_file(test::hf_fixture_path("llama") + "/" + f, dir + "/" + f);
  Json config = read_json_file(dir + "/config.json");
  edit(config);
  write_json_file(dir + "/config.json", config);
  return dir;
}

TEST(GenericRouteCli, UnknownArchitectureRunsTheGenericRouteWithAWarning) {
  const std::string dir = llama_copy([](Json& c) {
    c["architectures"] = {"FooForCausalLM"};
    c["model_type"] = "foo";
  });
  const test::CommandResult r = test::run_kiln("verify " + test::shell_quote(dir));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("no built-in family for 'FooForCausalLM'"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("PASSED"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

TEST(GenericRouteCli, UnplaceableTensorsAreListed) {
  const std::string dir = llama_copy([](Json&) {});
  // Two extra tensors under names no role knows.
  const SafetensorsFile weights = SafetensorsFile::open(dir + "/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : weights.names()) tensors.push_back({name, weights.get(name)});
  tensors.push_back({"model.layers.1.mlp.mystery.weight", weights.get("model.norm.weight")});
  tensors.push_back({"model.extra_scale", weights.get("model.norm.weight")});
  write_safetensors(dir + "/model.safetensors", tensors);
  const test::CommandResult r = test::run_kiln("verify --family auto " + test::shell_quote(dir));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_NE(r.err.find("2 tensor(s) the generic mapping cannot place: "
                       "model.layers.1.mlp.mystery.weight, model.extra_scale"),
            std::string::npos)
      << r.err;
  fs::remove_all(dir);
}

TEST(FamilyFileErrors, MalformedAndContradictingFilesNameTheKey) {
  const std::string dir = test::make_temp_dir("kiln-family-errors");
  auto expect_error = [&](const Json& json, const std::string& fragment) {
    const std::string path = dir + "/f.json";
    write_json_file(path, json);
    const test::CommandResult r =
        test::run_kiln("verify --family-file " + test::shell_quote(path) + " " +
                       test::shell_quote(test::hf_fixture_path("llama")));
    EXPECT_EQ(r.exit_code, 1) << fragment;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
  };
  const Json good = {{"kiln_family", 1},
                     {"name", "x"},
                     {"architectures", {"LlamaForCausalLM"}},
                     {"tensor_names",
                      {{"embedding", "model.embed_tokens"},
                       {"layers", "model.layers"},
                       {"attention", "self_attn"},
                       {"query", "q_proj"},
                       {"key", "k_proj"},
                       {"value", "v_proj"},
                       {"out", "o_proj"},
                       {"mlp", "mlp"},
                       {"gate", "gate_proj"},
                       {"up", "up_proj"},
                       {"down", "down_proj"},
                       {"input_norm", "input_layernorm"},
                       {"post_attention_norm", "post_attention_layernorm"},
                       {"final_norm", "model.norm"},
                       {"lm_head", "lm_head"}}}};
  {
    const std::string path = dir + "/good.json";
    write_json_file(path, good);
    const test::CommandResult r =
        test::run_kiln("verify --family-file " + test::shell_quote(path) + " " +
                       test::shell_quote(test::hf_fixture_path("llama")));
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  Json bad = good;
  bad["kiln_family"] = 2;
  expect_error(bad, "key 'kiln_family' must be 1");
  bad = good;
  bad["tensor_names"]["quer"] = "q_proj";
  expect_error(bad, "tensor_names: unknown key 'quer'");
  bad = good;
  bad["spec_overrides"] = {{"layers.*.attention.q_bais", true}};
  expect_error(bad, "key 'layers.*.attention.q_bais' is not a ModelSpec field");
  bad = good;
  bad["spec_overrides"] = {{"layers.*.placement", "diagonal"}};
  expect_error(bad, "key 'layers[0].placement' is \"diagonal\"");
  bad = good;
  bad["architectures"] = {"GPT2LMHeadModel"};
  expect_error(bad, "the family file is for GPT2LMHeadModel");
  bad = good;
  bad["tensor_names"]["down"] = "down";
  expect_error(bad, "missing tensor 'model.layers.0.mlp.down.weight'");
  bad = good;
  bad["spec_overrides"] = {{"layers.*.attention.q_bias", true}};
  expect_error(bad, "missing tensor 'model.layers.0.self_attn.q_proj.bias'");
  {
    const std::string path = dir + "/f.json";
    std::ofstream(path) << "{\"kiln_family\": 1,";
    const test::CommandResult r =
        test::run_kiln("verify --family-file " + test::shell_quote(path) + " " +
                       test::shell_quote(test::hf_fixture_path("llama")));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("f.json: malformed JSON"), std::string::npos) << r.err;
  }
  fs::remove_all(dir);
}

// `kiln bringup --family auto` settles the open choices against the reference and writes a
// family file into the model folder; the default route then loads it, and its logits are those
// of the built-in family bit for bit (verify reports the same errors to the reference).
TEST(GenericRouteCli, BringupWritesAFamilyFileThatLoadsAutomatically) {
  for (const std::string name : {"gpt_neox", "gemma2"}) {
    const std::string dir = test::make_temp_dir("kiln-bringup-generic");
    for (const auto& entry : fs::directory_iterator(test::hf_fixture_path(name)))
      fs::copy_file(entry.path(), dir + "/" + entry.path().filename().string());
    const test::CommandResult bringup =
        test::run_kiln("bringup --family auto " + test::shell_quote(dir));
    EXPECT_EQ(bringup.exit_code, 0) << bringup.out << bringup.err;
    EXPECT_NE(bringup.out.find("Family file written: " + dir + "/kiln_family.json"),
              std::string::npos)
        << bringup.out;
    const FamilyFile file = FamilyFile::load(dir + "/kiln_family.json");
    EXPECT_EQ(file.name, name + "_generic");
    ASSERT_FALSE(file.decisions.empty());
    for (const Json& d : file.decisions) {
      EXPECT_TRUE(d["verified"].get<bool>()) << d.dump();
      EXPECT_GE(d["evidence"].size(), 2u) << d.dump();
    }
    const test::CommandResult mine = test::run_kiln("verify --json " + test::shell_quote(dir));
    const test::CommandResult builtin =
        test::run_kiln("verify --json --family " + name + " " + test::shell_quote(dir));
    ASSERT_EQ(mine.exit_code, 0) << mine.err;
    ASSERT_EQ(builtin.exit_code, 0) << builtin.err;
    const Json a = parse_json(mine.out, "verify"), b = parse_json(builtin.out, "verify");
    EXPECT_EQ(a["family"], name + "_generic");
    EXPECT_EQ(a["comparisons"], b["comparisons"]);
    LoadedModel from_file = load_model(dir);
    LoadedModel reference_family = load_model(dir, Residency::kResident, {name, ""});
    EXPECT_TRUE(
        bitwise_equal(prefill_logits(from_file, dir), prefill_logits(reference_family, dir)));
    fs::remove_all(dir);
  }
}

TEST(GenericRouteCli, BringupWithoutReferenceListsUnverifiedChoicesAndWritesNothing) {
  const std::string dir = test::make_temp_dir("kiln-bringup-noref");
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(test::hf_fixture_path("gemma") + "/" + f, dir + "/" + f);
  const test::CommandResult r = test::run_kiln("bringup --family auto " + test::shell_quote(dir));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("norm.weight = 1+w (unverified)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("No family file written"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/kiln_family.json"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
