// Pre-quantized HF checkpoints end to end (io/hf_quantized.h), on the fixtures that
// tools/quantize_hf_fixture.py made from tests/data/hf/deepseek_v3 (fp8 e4m3, 32x48 blocks, so
// that most weights span several blocks and partial ones) and tests/data/hf/gpt_oss (MXFP4
// experts). Each fixture's dequantized.safetensors holds the script's own dequantization
// (numpy, bf16): Kiln's must equal it bit for bit, and the model loaded from the quantized
// folder must give exactly the logits of the same model stored unquantized.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>

#include "kiln/analyze/analyze.h"
#include "kiln/convert/hf_to_kiln.h"
#include "kiln/core/error.h"
#include "kiln/io/hf_quantized.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/language_model.h"
#include "kiln/models/loader.h"
#include "kiln/verify/reference_check.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

struct QuantFixture {
  std::string name;      // folder under tests/data/hf_quantized
  std::string original;  // the unquantized fixture under tests/data/hf
  size_t quantized;      // tensors quantized by the script
  double logits_bound;   // max |logits - HF's logits of the unquantized model|
};

// Bounds: measured (fp8 3.2, MXFP4 2.1) with margin. They are large because these tiny random
// MoE models route by small differences: rounding the dequantized fp8 weights to bf16 alone
// moves deepseek_v3's logits by 2.3 (see ConvertDequantizesToTheChosenDtype). Exactness is
// what the bitwise tests guard; this one guards against gross misreadings.
const QuantFixture kFixtures[] = {{"deepseek_v3_fp8", "deepseek_v3", 72, 5.0},
                                  {"gpt_oss_mxfp4", "gpt_oss", 4, 4.0}};

std::string quant_path(const QuantFixture& f) {
  return test::data_path("hf_quantized/" + f.name);
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  const Tensor x = a.contiguous(), y = b.contiguous();
  return x.dtype() == y.dtype() && x.shape() == y.shape() &&
         std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
}

// The original fixture folder with the quantized tensors replaced by `dequantized` (bf16),
// the same model stored unquantized.
std::string unquantized_copy(const QuantFixture& f, const std::string& dir) {
  const std::string original = test::data_path("hf/" + f.original);
  const SafetensorsFile model = SafetensorsFile::open(original + "/model.safetensors");
  const SafetensorsFile dequantized =
      SafetensorsFile::open(quant_path(f) + "/dequantized.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : model.names())
    tensors.push_back({name, dequantized.contains(name) ? dequantized.get(name) : model.get(name)});
  fs::create_directories(dir);
  write_safetensors(dir + "/model.safetensors", tensors);
  fs::copy_file(original + "/config.json", dir + "/config.json");
  return dir;
}

TEST(QuantizedCheckpoint, DequantizesExactlyAsTheQuantizer) {
  for (const QuantFixture& f : kFixtures) {
    const std::string path = quant_path(f);
    const HfConfig config = HfConfig::load(path);
    const SafetensorsFile expected = SafetensorsFile::open(path + "/dequantized.safetensors");
    ASSERT_EQ(expected.names().size(), f.quantized) << f.name;
    for (const DType dtype : {DType::BF16, DType::F32}) {
      const std::unique_ptr<TensorSource> source = open_model_source(path, config);
      auto* quantized = dynamic_cast<QuantizedHfSource*>(source.get());
      ASSERT_NE(quantized, nullptr) << f.name;
      EXPECT_EQ(quantized->dequantized_dtype(), DType::BF16);  // the default
      quantized->set_dequantized_dtype(dtype);
      EXPECT_EQ(quantized->quantized_count(), f.quantized) << f.name;
      size_t equal = 0;
      for (const std::string& name : expected.names()) {
        ASSERT_TRUE(source->contains(name)) << f.name << ": " << name;
        EXPECT_EQ(source->dtype_of(name), dtype);
        EXPECT_EQ(source->shape_of(name), expected.shape_of(name)) << name;
        // F32: the exact product; rounded to bf16 it is the script's bf16.
        const Tensor got = source->get(name);
        equal +=
            bitwise_equal(dtype == DType::BF16 ? got : got.to(DType::BF16), expected.get(name));
      }
      EXPECT_EQ(equal, f.quantized) << f.name << " " << dtype_name(dtype);
      std::cout << f.name << " (" << dtype_name(dtype) << "): " << equal << " of " << f.quantized
                << " dequantized tensors bitwise equal to the quantizer's" << std::endl;
      for (const std::string& name : source->names()) {
        EXPECT_FALSE(name.ends_with("_scale_inv") || name.ends_with("_blocks") ||
                     name.ends_with("_scales"))
            << name;
      }
    }
  }
}

TEST(QuantizedCheckpoint, LogitsEqualTheDequantizedModel) {
  for (const QuantFixture& f : kFixtures) {
    const std::string dir = test::make_temp_dir("kiln-quant-" + f.name);
    const LoadedModel quantized = load_model(quant_path(f));
    const LoadedModel plain = load_model(unquantized_copy(f, dir + "/plain"));
    const std::string reference = test::data_path("hf/" + f.original + "/reference.safetensors");
    const Tensor input_ids = SafetensorsFile::open(reference).get("input_ids");
    const Tensor a = test::all_logits(quantized, input_ids);
    const Tensor b = test::all_logits(plain, input_ids);
    // The same weights bit for bit, so the same logits bit for bit.
    EXPECT_TRUE(bitwise_equal(a, b)) << f.name << ": max diff " << test::max_abs_diff(a, b);
    // Against HF's logits of the unquantized model: the quantization error.
    const Model model(quantized.spec, quantized.weights);
    const ReferenceReport report = check_against_reference(model, reference, f.logits_bound);
    std::cout << f.name << ": logits vs the unquantized dequantized model: max diff "
              << test::max_abs_diff(a, b) << "; vs HF's unquantized model: max abs err "
              << report.logits_max_abs_err << " (bound " << f.logits_bound << "), top-1 agreement "
              << report.top1_agreement << std::endl;
    EXPECT_LE(report.logits_max_abs_err, f.logits_bound) << f.name;
    EXPECT_GT(report.logits_max_abs_err, 0.0) << f.name << ": quantization must change something";
    fs::remove_all(dir);
  }
}

TEST(QuantizedCheckpoint, ConvertDequantizesToTheChosenDtype) {
  for (const QuantFixture& f : kFixtures) {
    const std::string dir = test::make_temp_dir("kiln-quant-convert-" + f.name);
    const LoadedModel quantized = load_model(quant_path(f));
    const Tensor input_ids =
        SafetensorsFile::open(test::data_path("hf/" + f.original + "/reference.safetensors"))
            .get("input_ids");
    const Tensor expected = test::all_logits(quantized, input_ids);
    for (const std::string dtype : {"keep", "f32"}) {
      ConvertOptions options;
      options.dtype = dtype;
      const std::string out = dir + "/" + dtype;
      convert_hf_to_kiln(quant_path(f), out, options);
      const KilnCheckpoint checkpoint(out);
      bool saw_quantized = false;
      for (const std::string& name : checkpoint.names()) {
        if (name.find("/mlp/wi_0/kernel") == std::string::npos &&
            name.find("experts") == std::string::npos)
          continue;
        saw_quantized = true;
        EXPECT_EQ(checkpoint.dtype_of(name), dtype == "keep" ? DType::BF16 : DType::F32) << name;
      }
      EXPECT_TRUE(saw_quantized) << f.name;
      const LoadedModel converted = load_model(out);
      const Tensor got = test::all_logits(converted, input_ids);
      // keep: the bf16 weights the loader makes; f32: the exact f32 products, the weights of
      // the quantized folder read with f32 dequantization.
      LoadedModel reference = quantized;
      if (dtype == "f32") {
        const std::unique_ptr<TensorSource> source =
            open_model_source(quant_path(f), quantized.config);
        dynamic_cast<QuantizedHfSource&>(*source).set_dequantized_dtype(DType::F32);
        reference.weights =
            apply_weight_mappings(reference.family->map_weights(reference.spec, *source), *source);
      }
      const Tensor want = dtype == "f32" ? test::all_logits(reference, input_ids) : expected;
      std::cout << f.name << " converted with --dtype " << dtype << ": logits max diff "
                << test::max_abs_diff(got, want) << " from the quantized folder's ("
                << test::max_abs_diff(got, expected) << " from its bf16 dequantization)"
                << std::endl;
      EXPECT_TRUE(bitwise_equal(got, want)) << test::max_abs_diff(got, want);
    }
    fs::remove_all(dir);
  }
}

TEST(QuantizedCheckpoint, AnalyzeReportsThemSupported) {
  for (const QuantFixture& f : kFixtures) {
    const analyze::Analysis a = analyze::analyze_config(quant_path(f));
    bool found = false;
    for (const auto& r : a.features) {
      EXPECT_TRUE(r.supported) << f.name << ": " << r.feature.id << " = " << r.feature.value << ": "
                               << r.note;
      if (r.feature.id == "quantization") {
        found = true;
        EXPECT_EQ(r.capability,
                  "quantization=" + std::string(f.name.ends_with("fp8") ? "fp8" : "mxfp4"));
      }
    }
    EXPECT_TRUE(found) << f.name;
    EXPECT_TRUE(a.unknown_keys.empty()) << f.name;
  }
}

// `kiln inspect` lists the checkpoint as stored: fp8 tensors as F8_E4M3 beside their scales,
// MXFP4 blocks and scales as U8.
TEST(QuantizedCheckpoint, InspectShowsThemAsStored) {
  // The listing's line for `name`.
  auto line_of = [](const std::string& out, const std::string& name) {
    const size_t at = out.find("  " + name + " ");
    return at == std::string::npos ? std::string() : out.substr(at, out.find('\n', at) - at);
  };
  test::CommandResult r = test::run_kiln("inspect " + quant_path(kFixtures[0]));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(line_of(r.out, "model.layers.0.mlp.down_proj.weight").find("F8_E4M3  [64, 128]"),
            std::string::npos)
      << r.out;
  EXPECT_NE(line_of(r.out, "model.layers.0.mlp.down_proj.weight_scale_inv").find("F32"),
            std::string::npos)
      << r.out;
  r = test::run_kiln("inspect " + quant_path(kFixtures[1]));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(line_of(r.out, "model.layers.0.mlp.experts.down_proj_blocks").find("U8"),
            std::string::npos)
      << r.out;
}

// A real fp8 checkpoint with a scale missing, and a config with a method Kiln does not read:
// the loader's errors name the file and tensor (key).
TEST(QuantizedCheckpoint, BadCheckpointsFailNamingTheTensor) {
  const QuantFixture& f = kFixtures[0];
  const std::string dir = test::make_temp_dir("kiln-quant-bad");
  // The fixture with one entry removed from its header (its bytes stay, unreferenced).
  const std::string dropped = "model.layers.1.self_attn.o_proj.weight_scale_inv";
  {
    std::ifstream in(quant_path(f) + "/model.safetensors", std::ios::binary);
    const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    uint64_t length = 0;
    std::memcpy(&length, file.data(), 8);
    Json header = Json::parse(file.substr(8, length));
    ASSERT_EQ(header.erase(dropped), 1u);
    std::string text = header.dump();
    text.append((8 + text.size() + 63) / 64 * 64 - 8 - text.size(), ' ');
    uint64_t new_length = text.size();
    std::ofstream out(dir + "/model.safetensors", std::ios::binary);
    out.write(reinterpret_cast<const char*>(&new_length), 8);
    out << text << file.substr(8 + length);
  }
  fs::copy_file(quant_path(f) + "/config.json", dir + "/config.json");
  try {
    load_model(dir);
    ADD_FAILURE() << "loaded without " << dropped;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(dir +
                        "/model.safetensors: F8_E4M3 tensor "
                        "'model.layers.1.self_attn.o_proj.weight' has no block scales '" +
                        dropped + "'"),
              std::string::npos)
        << what;
  }
  // An unknown quant_method.
  Json config = read_json_file(quant_path(f) + "/config.json");
  config["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  std::ofstream(dir + "/config.json") << config.dump();
  try {
    load_model(dir);
    ADD_FAILURE() << "loaded a gptq config";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json: quantization_config: quant_method 'gptq' is "
                                         "not read by Kiln"),
              std::string::npos)
        << e.what();
  }
  // `kiln analyze` says the same: the row is missing, named where the work goes.
  const analyze::Analysis a = analyze::analyze_config(dir);
  for (const auto& r : a.features)
    if (r.feature.id == "quantization") {
      EXPECT_FALSE(r.supported);
      EXPECT_NE(r.where.find("src/kiln/io/hf_quantized.cc"), std::string::npos) << r.where;
    }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
