// Tests of `kiln analyze`: golden reports for every real config in tests/data/hf_configs/,
// missing features with their location, unknown keys, errors, and agreement between the
// raw-config detector and the ModelSpec reader.
//
// Regenerate the golden reports after a change in support (a family or capability landed):
//   KILN_UPDATE_GOLDENS=1 build/tests/kiln_tests --gtest_filter='AnalyzeGolden*'
// then review `git diff tests/data/analyze/` by eye before committing.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "kiln/analyze/analyze.h"
#include "kiln/analyze/detect.h"
#include "kiln/analyze/spec_features.h"
#include "kiln/io/hf_config.h"
#include "kiln/models/capabilities.h"
#include "kiln/models/family.h"
#include "test_util.h"

namespace kiln::analyze {
namespace {
namespace fs = std::filesystem;

Json run_json(const std::string& path, int* exit_code) {
  test::CommandResult r = test::run_kiln("analyze --json " + test::shell_quote(path));
  *exit_code = r.exit_code;
  EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 2) << r.err;
  return parse_json(r.out, "kiln analyze --json " + path);
}

const Json* find_feature(const Json& report, const std::string& id) {
  for (const Json& f : report["features"])
    if (f["id"] == id) return &f;
  return nullptr;
}

// Writes `config` as config.json in a fresh folder; returns the folder.
std::string write_config(const Json& config) {
  std::string dir = test::make_temp_dir("kiln-analyze");
  write_json_file(dir + "/config.json", config);
  return dir;
}

Json llama_config() {
  return read_json_file(test::data_path("hf_configs/meta-llama__Llama-2-7b-hf.json"));
}

// Reports quote config paths in error notes: make them independent of the checkout folder.
Json without_checkout_path(const Json& report) {
  std::string text = report.dump();
  const std::string root = test::data_path("");
  for (size_t pos; (pos = text.find(root)) != std::string::npos;)
    text.replace(pos, root.size(), "tests/data/");
  return Json::parse(text);
}

TEST(AnalyzeGolden, EveryRealConfigMatchesItsReport) {
  bool update = std::getenv("KILN_UPDATE_GOLDENS") != nullptr;
  int checked = 0;
  std::vector<fs::path> configs;
  for (const auto& entry : fs::directory_iterator(test::data_path("hf_configs")))
    if (entry.path().extension() == ".json") configs.push_back(entry.path());
  std::sort(configs.begin(), configs.end());
  ASSERT_GE(configs.size(), 30u);
  for (const fs::path& config : configs) {
    int exit_code = 0;
    Json report = without_checkout_path(run_json(config.string(), &exit_code));
    EXPECT_EQ(exit_code, report["supported"].get<bool>() ? 0 : 2) << config;
    report["config"] = config.filename().string();
    std::string golden = test::data_path("analyze/" + config.stem().string() + ".json");
    if (update) {
      fs::create_directories(fs::path(golden).parent_path());
      write_json_file(golden, report);
      continue;
    }
    ASSERT_TRUE(fs::exists(golden))
        << golden << " is missing; regenerate with KILN_UPDATE_GOLDENS=1";
    Json expected = read_json_file(golden);
    if (report != expected) {
      // Name the features that changed, so the failure reads as a review.
      for (const Json& f : report["features"]) {
        const Json* old = find_feature(expected, f["id"]);
        if (!old || *old != f) {
          ADD_FAILURE() << config.filename() << ": " << f["id"] << " is now " << f.dump()
                        << (old ? ", was " + old->dump() : ", new");
        }
      }
      for (const char* list : {"unknown_keys", "ignored_keys", "family", "supported"})
        EXPECT_EQ(report[list], expected[list]) << config.filename() << ": " << list;
      ADD_FAILURE() << config.filename() << " differs from " << golden
                    << "; if the change is intended (support grew), regenerate with "
                       "KILN_UPDATE_GOLDENS=1 and review the diff";
    }
    int missing = 0;
    for (const Json& f : report["features"]) missing += f["status"] == "missing";
    std::cout << config.filename().string() << ": " << missing << " of "
              << report["features"].size() << " features missing, " << report["unknown_keys"].size()
              << " unknown keys\n";
    ++checked;
  }
  if (!update) {
    EXPECT_EQ(checked, static_cast<int>(configs.size()));
  }
}

TEST(Analyze, MissingFeatureNamesWhereItGoes) {
  Json config = llama_config();
  config["architectures"] = {"WobbleForCausalLM"};
  config["model_type"] = "wobble";
  config["hidden_act"] = "xielu_wobble";
  config["rope_scaling"] = {{"rope_type", "wobble"}, {"factor", 2.0}, {"wobble_depth", 3}};
  std::string dir = write_config(config);
  int exit_code = 0;
  Json report = run_json(dir, &exit_code);
  EXPECT_EQ(exit_code, 2);
  EXPECT_FALSE(report["supported"].get<bool>());
  struct Expected {
    const char* id;
    const char* value;
    const char* where;
  };
  for (const Expected& e :
       {Expected{"architecture", "WobbleForCausalLM (model_type wobble)",
                 "src/kiln/models/wobble.cc: a family for WobbleForCausalLM"},
        Expected{"mlp.activation", "xielu_wobble", "src/kiln/ops/activation.cc: xielu_wobble"},
        Expected{"rope.type", "wobble", "src/kiln/ops/rope.cc: wobble frequency scaling"},
        Expected{"rope.scaling.wobble_depth", "3",
                 "src/kiln/ops/rope.cc: the 'wobble_depth' scaling parameter"}}) {
    const Json* f = find_feature(report, e.id);
    ASSERT_NE(f, nullptr) << e.id;
    EXPECT_EQ((*f)["value"], e.value) << e.id;
    EXPECT_EQ((*f)["status"], "missing") << e.id;
    EXPECT_NE((*f)["where"].get<std::string>().find(e.where), std::string::npos)
        << e.id << ": " << (*f)["where"];
  }
  fs::remove_all(dir);
}

TEST(Analyze, DeclaredCapabilityMakesAFeatureSupported) {
  Json config = llama_config();
  config["architectures"] = {"WobbleForCausalLM"};  // no family: capabilities alone decide
  config["model_type"] = "wobble";
  config["hidden_act"] = "wobble";  // nor the generic route (it knows no such activation)
  config["rope_scaling"] = {{"rope_type", "default"}, {"analyze_test_knob", 1}};
  std::string dir = write_config(config);
  auto knob = [&] {
    Analysis a = analyze_config(dir);
    for (const auto& r : a.features)
      if (r.feature.id == "rope.scaling.analyze_test_knob") return r;
    ADD_FAILURE() << "no rope.scaling.analyze_test_knob row";
    return FeatureReport();
  };
  FeatureReport before = knob();
  EXPECT_FALSE(before.supported);
  EXPECT_EQ(before.capability, "rope.scaling.analyze_test_knob=yes");
  declare_capability("rope.scaling.analyze_test_knob", "yes");
  EXPECT_TRUE(knob().supported);
  fs::remove_all(dir);
}

TEST(Analyze, UnknownKeysAreListed) {
  Json config = llama_config();
  config["frobnication_level"] = 3;
  config["router_jitter_noise"] = 0.0;
  std::string dir = write_config(config);
  int exit_code = 0;
  Json report = run_json(dir, &exit_code);
  EXPECT_EQ(exit_code, 2);
  EXPECT_EQ(report["unknown_keys"], Json({"frobnication_level"}));
  EXPECT_NE(std::find(report["ignored_keys"].begin(), report["ignored_keys"].end(),
                      "router_jitter_noise"),
            report["ignored_keys"].end());
  test::CommandResult markdown = test::run_kiln("analyze " + test::shell_quote(dir));
  EXPECT_EQ(markdown.exit_code, 2);
  EXPECT_NE(markdown.out.find("`frobnication_level`"), std::string::npos) << markdown.out;
  fs::remove_all(dir);
}

TEST(Analyze, WrapperAnalyzesItsTextModel) {
  int exit_code = 0;
  Json report = run_json(test::data_path("hf_configs/google__gemma-3-27b-it.json"), &exit_code);
  EXPECT_EQ(report["text_model"], "text_config");
  const Json* multimodal = find_feature(report, "multimodal");
  ASSERT_NE(multimodal, nullptr);
  // The language model runs (family gemma3); the SigLIP tower is set aside.
  EXPECT_EQ((*multimodal)["status"], "supported");
  EXPECT_NE((*multimodal)["value"].get<std::string>().find("not run"), std::string::npos);
  EXPECT_EQ(report["family"], "gemma3");
  EXPECT_EQ(exit_code, 0);
  EXPECT_EQ((*find_feature(report, "vocabulary"))["value"], "262208");  // Gemma3TextConfig's
  EXPECT_EQ((*find_feature(report, "attention.sliding_window"))["value"],
            "window 1024 on 52 of 62 layers, repeating SSSSSF");
  EXPECT_EQ((*find_feature(report, "attention.scale"))["value"], "1/sqrt(168)");
  EXPECT_EQ((*find_feature(report, "rope.type"))["value"], "linear");
  EXPECT_EQ((*find_feature(report, "rope.local"))["value"], "theta 10000, default");
}

TEST(Analyze, MalformedOrMissingConfigIsAnError) {
  std::string dir = test::make_temp_dir("kiln-analyze");
  std::string path = dir + "/config.json";
  std::ofstream(path) << "{\"model_type\": \"llama\", ";
  test::CommandResult r = test::run_kiln("analyze " + test::shell_quote(path));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("kiln: error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(path), std::string::npos) << r.err;
  r = test::run_kiln("analyze " + test::shell_quote(dir + "/absent"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("absent"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

// The detector and the ModelSpec reader must write the same values for the same model, or
// every family would look like it misreads its config.
TEST(Analyze, DetectorAndSpecReaderAgreeOnLlama) {
  HfConfig config = HfConfig::load(test::data_path("hf_configs/meta-llama__Llama-2-7b-hf.json"));
  ModelSpec spec;
  spec.vocab_size = 32000;
  spec.hidden_size = 4096;
  spec.max_position_embeddings = 4096;
  LayerSpec layer;
  layer.attention.num_heads = 32;
  layer.attention.num_kv_heads = 32;
  layer.attention.head_dim = 128;
  layer.attention.rope.rotary_dim = 128;
  layer.attention.rope.theta = 10000.0;
  layer.norm.eps = 1e-5f;
  layer.mlp.intermediate = 11008;
  spec.layers.assign(32, layer);
  std::map<std::string, std::string> from_spec = spec_feature_values(spec);
  int compared = 0;
  for (const Feature& f : detect_features(config)) {
    auto it = from_spec.find(f.id);
    if (it == from_spec.end() || !f.checkable) continue;
    EXPECT_EQ(f.value, it->second) << f.id;
    ++compared;
  }
  std::cout << "compared " << compared << " features\n";
  EXPECT_GE(compared, 20);
}

// The family cross-check: a family whose ModelSpec drops a setting the config states is
// reported at its build_spec; a feature ModelSpec cannot express is reported at model_spec.h;
// a value the config leaves open takes the family's.
TEST(Analyze, FamilyThatDropsASettingIsReported) {
  Json json = llama_config();
  json["attention_bias"] = true;
  HfConfig config = HfConfig::from_json(json, "config.json");
  ModelSpec spec;
  spec.hidden_size = 4096;
  LayerSpec layer;
  layer.attention.num_heads = layer.attention.num_kv_heads = 32;
  layer.attention.head_dim = 128;
  spec.layers.assign(32, layer);
  const auto values = spec_feature_values(spec);
  bool found = false;
  for (const Feature& f : detect_features(config)) {
    if (f.id != "attention.bias") continue;
    found = true;
    EXPECT_EQ(f.value, "q,k,v,o");
    FeatureReport r = judge_feature(f, &values, "testfamily");
    EXPECT_FALSE(r.supported);
    EXPECT_NE(r.where.find("src/kiln/models/testfamily.cc: build_spec (read attention_bias)"),
              std::string::npos)
        << r.where;
    EXPECT_NE(r.note.find("family testfamily builds 'none'"), std::string::npos) << r.note;
  }
  EXPECT_TRUE(found);

  // ModelSpec states sinks (AttentionSpec::sinks): a spec without them is a family that
  // dropped them.
  Feature sinks{"attention.sinks", "learned per-head sink logits", FeatureKind::kSwitch, {}, true};
  FeatureReport dropped = judge_feature(sinks, &values, "testfamily");
  EXPECT_FALSE(dropped.supported);
  EXPECT_NE(dropped.note.find("family testfamily builds 'none'"), std::string::npos)
      << dropped.note;

  Feature quantized{"quantization", "mxfp4", FeatureKind::kChoice, {}, true};
  FeatureReport r = judge_feature(quantized, &values, "testfamily");
  EXPECT_FALSE(r.supported);
  EXPECT_NE(r.where.find("src/kiln/models/model_spec.h"), std::string::npos) << r.where;
  EXPECT_NE(r.note.find("ModelSpec cannot express it"), std::string::npos) << r.note;

  Feature pairing{"rope.pairing", "interleaved", FeatureKind::kChoice, {}, false};
  EXPECT_EQ(judge_feature(pairing, &values, "testfamily").feature.value, "half_split");
  EXPECT_EQ(judge_feature(pairing, nullptr, "").feature.value, "interleaved");
}

// A fixture model that Kiln converts and verifies (a folder under tests/data/hf/ with weights
// and reference activations) must be reported fully supported once a family builds it:
// otherwise a capability declaration or a ModelSpec field is missing.
TEST(Analyze, EveryVerifiedFixtureWithAFamilyIsSupported) {
  fs::path root = test::data_path("hf");
  int with_family = 0, fixtures = 0;
  if (fs::exists(root)) {
    for (const auto& entry : fs::directory_iterator(root)) {
      fs::path dir = entry.path();
      if (!fs::exists(dir / "model.safetensors") || !fs::exists(dir / "reference.safetensors"))
        continue;
      ++fixtures;
      Analysis a = analyze_config(dir.string());
      if (a.family.empty()) continue;
      ++with_family;
      for (const auto& r : a.features)
        EXPECT_TRUE(r.supported) << dir.filename() << ": " << r.feature.id << " = "
                                 << r.feature.value << ": " << r.note << " (" << r.where
                                 << "); declare what the layers compute beside their code, "
                                    "see docs/analyze.md";
      EXPECT_TRUE(a.unknown_keys.empty())
          << dir.filename() << ": keys not understood: " << Json(a.unknown_keys).dump();
    }
  }
  std::cout << with_family << " of " << fixtures << " verified fixtures have a family\n";
}

}  // namespace
}  // namespace kiln::analyze
