// Damaged inputs in every format Kiln reads: truncated files and flipped bytes end in a
// kiln::Error (or in a successful read where the damage only hits tensor values), never in
// a crash or another exception type.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "kiln/core/error.h"
#include "kiln/io/checkpoint_source.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/safetensors.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

struct Outcome {
  int errors = 0, reads = 0;
};

// Opens the weights at `path` and reads every tensor; records how that ended.
void open_and_read_all(const std::string& path, Outcome& outcome) {
  try {
    auto source = open_tensor_source(path);
    for (const std::string& name : source->names()) source->get(name);
    ++outcome.reads;
  } catch (const Error&) {
    ++outcome.errors;
  } catch (const std::exception& e) {
    ADD_FAILURE() << path << ": escaped as " << typeid(e).name() << ": " << e.what();
  }
}

// Copies `source` (a file or folder) once, then damages `target` (relative to the copy
// root, or "" for a single file) `trials` times — truncation or one flipped byte, at
// positions biased to the file's first and last 4 KiB where the structure lives — checking
// each damaged version and restoring the file after it.
void check_damage(const std::string& source, const std::string& target, int trials) {
  std::mt19937 rng(1234);
  const std::string work = test::make_temp_dir("kiln-corrupt");
  const std::string copy = work + "/copy" + fs::path(source).extension().string();
  fs::copy(source, copy, fs::copy_options::recursive);
  for (const auto& entry : fs::recursive_directory_iterator(work))
    fs::permissions(entry.path(), fs::perms::owner_write, fs::perm_options::add);
  const std::string file = target.empty() ? copy : copy + "/" + target;
  std::string original;
  {
    std::ifstream in(file, std::ios::binary);
    original.assign(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_FALSE(original.empty());
  Outcome outcome;
  for (int trial = 0; trial < trials; ++trial) {
    const size_t window = std::min<size_t>(original.size(), 4096);
    size_t position = rng() % window;
    if (rng() % 2) position = original.size() - 1 - position;
    std::string damaged = original;
    if (trial % 3 == 0)
      damaged.resize(position);
    else
      damaged[position] = static_cast<char>(damaged[position] ^ (1 + rng() % 255));
    std::ofstream(file, std::ios::binary | std::ios::trunc) << damaged;
    open_and_read_all(copy, outcome);
  }
  fs::remove_all(work);
  std::cout << "  " << source << (target.empty() ? "" : "/" + target) << ": " << outcome.errors
            << " errors, " << outcome.reads << " reads accepted (damage only in tensor values)\n";
  EXPECT_EQ(outcome.errors + outcome.reads, trials);
  EXPECT_GT(outcome.errors, 0);
}

TEST(CorruptInputs, Safetensors) {
  const std::string dir = test::make_temp_dir("kiln-corrupt-src");
  write_safetensors(dir + "/w.safetensors", {{"a", Tensor::from_f32({2, 3}, {1, 2, 3, 4, 5, 6})},
                                             {"b", Tensor::zeros(DType::BF16, {4})}});
  check_damage(dir + "/w.safetensors", "", 120);
  fs::remove_all(dir);
}

TEST(CorruptInputs, TorchBin) {
  check_damage(test::data_path("torch_bin/gpt2/pytorch_model.bf16.bin"), "", 120);
}

TEST(CorruptInputs, OrbaxOcdbt) {
  const std::string ocdbt = test::data_path("orbax/standard_ocdbt");
  check_damage(ocdbt, "manifest.ocdbt", 80);
  check_damage(ocdbt, "d/fb07b4bc7a40bd9c3bc9cae843ad1a43", 80);
  check_damage(ocdbt, "_METADATA", 80);
}

TEST(CorruptInputs, OrbaxZarr) {
  check_damage(test::data_path("orbax/pytree_zarr3"),
               "params.decoder.layers.mlp.wi_0.kernel/c/0/0/0", 80);
  check_damage(test::data_path("orbax/pytree_zarr3"),
               "params.decoder.layers.mlp.wi_0.kernel/zarr.json", 80);
  check_damage(test::data_path("orbax/pytree_zarr"), "params.token_embedder.embedding/.zarray",
               100);
  check_damage(test::data_path("orbax/pytree_zarr"), "params.token_embedder.embedding/0.0", 80);
}

TEST(CorruptInputs, Gguf) {
  // The first 4 KiB hold the header and the vocabulary, the last the final tensor's blocks.
  check_damage(test::data_path("gguf/tinycoder-Q4_0.gguf"), "", 60);
}

TEST(CorruptInputs, KilnCheckpoint) {
  const std::string dir = test::make_temp_dir("kiln-corrupt-src") + "/ckpt";
  {
    KilnCheckpointWriter writer(dir, {}, {{"w", DType::F32, {3, 2}, -1, ""}}, {});
    writer.write("w", Tensor::from_f32({3, 2}, {1, 2, 3, 4, 5, 6}));
    writer.finish();
  }
  check_damage(dir, "kiln_checkpoint.json", 80);
  check_damage(dir, "tensors-00001-of-00001.safetensors", 80);
  fs::remove_all(fs::path(dir).parent_path());
}

}  // namespace
}  // namespace kiln
