// `kiln convert SRC -o DST`: a HuggingFace folder to a Kiln checkpoint (scanned or
// unscanned) or to an Orbax checkpoint, or an Orbax checkpoint back to Kiln; atomic.
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "kiln/cli/command.h"
#include "kiln/convert/hf_to_kiln.h"
#include "kiln/convert/orbax_export.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"

namespace kiln::cli {
namespace {
namespace fs = std::filesystem;

// Progress on stderr: a redrawn bar on a terminal, otherwise a plain line every few
// seconds and at the end.
class Progress {
 public:
  void operator()(size_t done, size_t total, uint64_t bytes) {
    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const bool last = done == total;
    if (!tty_ && !last && std::chrono::duration<double>(now - printed_).count() < 2.0) return;
    printed_ = now;
    const double rate = seconds > 0 ? bytes / seconds / 1e6 : 0;
    const double eta = done > 0 ? seconds * (total - done) / done : 0;
    const int filled = static_cast<int>(30.0 * done / total);
    std::fprintf(stderr, "%s[%-30s] %zu/%zu tensors, %.1f MB, %.1f MB/s, ETA %.0f s%s",
                 tty_ ? "\r" : "", std::string(filled, '#').c_str(), done, total, bytes / 1e6, rate,
                 eta, tty_ && !last ? "" : "\n");
  }

 private:
  bool tty_ = ::isatty(2) != 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point printed_ = start_;
};

class ConvertCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    app.add_option("source", source_,
                   "HuggingFace model folder, a llama.cpp .gguf file, or an Orbax checkpoint")
        ->required();
    app.add_option("-o,--output", output_, "Output folder")->required();
    app.add_option("--layout", layout_, "Kiln layout: unscanned or scanned")
        ->check(CLI::IsMember({"unscanned", "scanned"}));
    app.add_option("--dtype", dtype_,
                   "Stored dtype of floating tensors: keep, f32, bf16, f16; or quantized linear "
                   "weights: int8, int4, int4-128")
        ->check(CLI::IsMember({"keep", "f32", "bf16", "f16", "int8", "int4", "int4-128"}));
    app.add_option("--keep", keep_,
                   "With a quantized --dtype: leave tensors whose name matches this glob "
                   "unquantized (repeatable)");
    app.add_option("--quantize", quantize_,
                   "With a quantized --dtype: also quantize tensors matching this glob, e.g. "
                   "the embedding (repeatable)");
    app.add_option("--head-dtype", head_dtype_,
                   "With a quantized --dtype: the output matrix's format, int8, int4 or "
                   "int4-128 (default: the --dtype's own format; --keep "
                   "decoder/logits_dense/kernel keeps it unquantized)");
    app.add_option("--format", format_, "Output format: kiln or orbax")
        ->check(CLI::IsMember({"kiln", "orbax"}));
    app.add_flag("--force", force_, "Replace an existing output folder");
    add_family_options(app, family_);
    app.add_flag("--orbax-zarr", orbax_zarr_, "Orbax: plain zarr files instead of OCDBT");
    app.add_flag("--orbax-raw", orbax_raw_, "Orbax: uncompressed zarr chunks instead of zstd");
    app.add_option("--orbax-tree", orbax_tree_,
                   "Orbax: maxtext (MaxText's tree, shapes and values; default) or plain "
                   "(Kiln's own names and shapes, which MaxText cannot load)")
        ->check(CLI::IsMember({"maxtext", "plain"}));
    app.add_option("--maxtext-layout", maxtext_layout_,
                   "Orbax: MaxText's scanned or unscanned tree (default: as --layout)")
        ->check(CLI::IsMember({"scanned", "unscanned"}));
    app.add_option("--maxtext-vocab", maxtext_vocab_,
                   "Orbax, Gemma: MaxText's vocab_size, the rows of its embedding (zeros "
                   "appended or rows cut off, as MaxText's converters do; default 256128 for "
                   "the stock Gemma 1/2 vocab, 262144 for Gemma 3's, else the model's)")
        ->check(CLI::PositiveNumber);
    app.add_option("--config", config_,
                   "Orbax -> Kiln without Kiln's sidecar (a checkpoint MaxText wrote): the "
                   "model's config.json, which names the family and its MaxText tree");
    app.add_option("--orbax-step", orbax_step_,
                   "Orbax: write CheckpointManager's <output>/<step>/items layout (MaxText)");
  }

  int run() override {
    // Tensors of a layer are allocated and freed again and again. glibc raises its mmap
    // threshold to the largest block freed (up to 32 MiB), after which such tensors come from
    // the heap, whose freed space stays resident (a peak RSS of 221 MB of anonymous memory
    // for llama-3.2-1b to Orbax, 119 MB with this). A fixed threshold gives each large tensor
    // back to the system when it is freed.
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    ConvertOptions options;
    options.layout = layout_;
    options.dtype = dtype_;
    options.keep = keep_;
    options.quantize = quantize_;
    options.head_dtype = head_dtype_;
    check((keep_.empty() && quantize_.empty() && head_dtype_.empty()) ||
              (dtype_ == "int8" || dtype_ == "int4" || dtype_ == "int4-128"),
          "--keep, --quantize and --head-dtype need a quantized --dtype (int8, int4 or "
          "int4-128)");
    check(format_ == "kiln" || !(dtype_ == "int8" || dtype_ == "int4" || dtype_ == "int4-128"),
          "--dtype " + dtype_ +
              ": Orbax export takes float dtypes only (MaxText has no "
              "quantized block formats)");
    options.force = force_;
    options.family = family_;
    Progress progress;
    options.progress = [&](size_t done, size_t total, uint64_t bytes) {
      progress(done, total, bytes);
    };
    if (OrbaxSource::present_in(source_)) {
      // Orbax -> Kiln: layout and dtype are the ones recorded at export.
      check(format_ == "kiln", source_ + ": an Orbax checkpoint converts to --format kiln only");
      const Json config = config_.empty() ? Json::object() : read_json_file(config_);
      import_orbax_to_kiln(source_, output_, {}, force_, config);
      std::fprintf(stderr, "wrote %s (Kiln checkpoint from Orbax)\n", output_.c_str());
      return 0;
    }
    if (format_ == "kiln") {
      convert_hf_to_kiln(source_, output_, options);
      std::fprintf(stderr, "wrote %s (Kiln checkpoint, %s)\n", output_.c_str(), layout_.c_str());
      return 0;
    }
    OrbaxWriteOptions orbax;
    orbax.ocdbt = !orbax_zarr_;
    orbax.zarr.zstd = !orbax_raw_;
    orbax.manager_step = orbax_step_;
    OrbaxExportOptions tree;
    tree.tree = orbax_tree_;
    tree.maxtext_layout = maxtext_layout_;
    tree.maxtext_vocab = maxtext_vocab_;
    if (orbax_tree_ == "maxtext") {
      // MaxText's tree is assembled layer by layer: straight from the source files, each
      // Kiln tensor computed when its array is written (no intermediate checkpoint).
      export_to_orbax(*open_hf_as_kiln(source_, options), output_, orbax, force_, tree);
      std::fprintf(stderr, "wrote %s (Orbax checkpoint, %s)\n", output_.c_str(),
                   orbax_zarr_ ? "zarr files" : "OCDBT");
      return 0;
    }
    // The plain tree stores Kiln's tensors as they are (scanned ones stacked): through an
    // intermediate Kiln checkpoint beside the output (mmap-backed export keeps memory
    // bounded), removed at the end; a rerun replaces a leftover one.
    const fs::path out = fs::path(output_).lexically_normal();
    const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
    const std::string intermediate =
        (parent / (".kiln-convert-" + out.filename().string())).string();
    check(!fs::exists(output_) || force_, output_ + ": already exists (use --force to replace it)");
    options.force = true;
    convert_hf_to_kiln(source_, intermediate, options);
    try {
      export_kiln_to_orbax(intermediate, output_, orbax, force_, tree);
    } catch (...) {
      fs::remove_all(intermediate);
      throw;
    }
    fs::remove_all(intermediate);
    std::fprintf(stderr, "wrote %s (Orbax checkpoint, %s)\n", output_.c_str(),
                 orbax_zarr_ ? "zarr files" : "OCDBT");
    return 0;
  }

 private:
  FamilyChoice family_;
  std::string source_, output_, layout_ = "unscanned", dtype_ = "keep", format_ = "kiln";
  std::string orbax_tree_ = "maxtext", maxtext_layout_, config_;
  bool force_ = false, orbax_zarr_ = false, orbax_raw_ = false;
  std::optional<int64_t> orbax_step_;
  int64_t maxtext_vocab_ = 0;
  std::vector<std::string> keep_, quantize_;
  std::string head_dtype_;
};

}  // namespace
KILN_COMMAND(ConvertCommand, "convert",
             "Convert a HuggingFace folder to a Kiln checkpoint (scanned or unscanned) or Orbax, "
             "and Orbax back to Kiln");
}  // namespace kiln::cli
