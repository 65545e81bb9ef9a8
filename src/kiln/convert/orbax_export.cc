#include "kiln/convert/orbax_export.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "kiln/convert/atomic_output.h"
#include "kiln/convert/maxtext_tree.h"
#include "kiln/core/error.h"
#include "kiln/core/page_release.h"
#include "kiln/io/json.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

constexpr const char* kTreePrefix = "params/params/";
constexpr const char* kResidualPrefix = "kiln_residual/";
constexpr const char* kDroppedPrefix = "kiln_dropped_rows/";
constexpr const char* kEmbedding = "token_embedder/embedding";
constexpr const char* kSidecar = "kiln_manifest.json";

// The axis MaxText stacks layers on: 1, after the first dimension of each per-layer array
// (0 for per-layer scalars).
int maxtext_layer_axis(int per_layer_rank) {
  return per_layer_rank >= 1 ? 1 : 0;
}

bool any_nonzero(const Tensor& t) {
  const Tensor c = t.contiguous();
  const auto* bytes = static_cast<const char*>(c.raw());
  return std::any_of(bytes, bytes + c.nbytes(), [](char b) { return b != 0; });
}

// The Kiln tensors of `source` as (layer, per-layer name) keys: "<i>|<param>" for layer
// tensors of either layout, the full name for top-level ones.
std::set<std::string> kiln_keys(const KilnTensorSet& source) {
  const Json& manifest = source.manifest();
  std::set<std::string> keys;
  const Json groups = manifest.value("layer_groups", Json::object());
  for (const std::string& name : source.names()) {
    const size_t slash = name.find('/', 8);
    if (name.rfind("decoder/", 0) == 0 && slash != std::string::npos) {
      const std::string group = name.substr(8, slash - 8);
      const std::string param = name.substr(slash + 1);
      if (groups.contains(group)) {
        for (const Json& layer : groups[group])
          keys.insert(std::to_string(layer.get<int64_t>()) + "|" + param);
        continue;
      }
      if (group.rfind("layers_", 0) == 0 &&
          group.find_first_not_of("0123456789", 7) == std::string::npos && group.size() > 7) {
        keys.insert(group.substr(7) + "|" + param);
        continue;
      }
    }
    keys.insert(name);
  }
  return keys;
}

// Drops the pages of a read-only mapped view once used (any strides: the span from its first
// to its last element), so that export keeps the resident set to about one layer. Tensors
// that own their memory are left alone.
void release_view(const Tensor& t) {
  if (!t.defined() || t.writable() || t.numel() == 0) return;
  int64_t last = 0;
  for (int d = 0; d < t.ndim(); ++d) last += (t.dim(d) - 1) * t.strides()[d];
  release_mapped_pages(t.raw(), static_cast<size_t>(last + 1) * dtype_size(t.dtype()));
}

void export_plain(const KilnTensorSet& source, OrbaxWriter& writer) {
  for (const std::string& name : source.names()) writer.add(kTreePrefix + name, source.get(name));
}

// A top-level matrix that MaxText transposes or rescales (Llama's unembedding [V, E] ->
// [E, V], Gemma's scaled embedding) is built in blocks of source rows when it is larger than
// a few chunks, each block one zarr chunk: the transposed block is a block of columns
// ([E, n], chunks with extent n along axis 1), the rescaled one a block of rows. So the source
// is read once, front to back, and only one block is held (a whole transposed copy of an 8B
// model's unembedding was 1 GB, plus its 1 GB of mapped source pages).
int64_t source_row_block(const MaxTextArraySpec& a, DType dtype, size_t max_chunk_bytes) {
  const MaxTextTransform& t = a.transform;
  if (a.stacked || !a.layers.empty() || a.kiln_shape.size() != 2 || t.rope_pairs ||
      (a.maxtext_rows > 0 && a.maxtext_rows != a.kiln_shape[0]) || a.kiln_shape[0] < 2)
    return 0;
  if (t.reshape != MaxTextReshape::kTransposed &&
      !(t.reshape == MaxTextReshape::kSame && t.op != MaxTextValueOp::kNone))
    return 0;
  if (is_quantized(dtype)) return 0;
  const size_t row_bytes = static_cast<size_t>(a.kiln_shape[1]) * dtype_size(dtype);
  if (row_bytes * static_cast<size_t>(a.kiln_shape[0]) <= 2 * max_chunk_bytes) return 0;
  return std::max<int64_t>(1, static_cast<int64_t>(max_chunk_bytes / row_bytes));
}

Json write_array_in_blocks(const Tensor& t, const MaxTextArraySpec& a, int64_t rows,
                           OrbaxWriter& writer, MaxTextScratch& scratch) {
  const std::string array_name = kTreePrefix + a.path;
  const std::string residual_name = kResidualPrefix + a.path;
  check(t.shape() == a.kiln_shape, "tensor '" + a.kiln_param + "' of shape " + t.shape_string() +
                                       ": MaxText's " + a.path + " needs Kiln shape " +
                                       shape_to_string(a.kiln_shape));
  const bool transposed = a.transform.reshape == MaxTextReshape::kTransposed;
  const int axis = transposed ? 1 : 0;
  const int64_t total = a.kiln_shape[0];
  const int64_t blocks = (total + rows - 1) / rows;
  Json record = Json::object();
  bool residual = false;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * rows, r1 = std::min(total, r0 + rows);
    const Tensor part = t.slice(0, r0, r1);
    MaxTextArraySpec block = a;
    block.kiln_shape[0] = r1 - r0;
    block.maxtext_shape = transposed ? Shape{a.kiln_shape[1], r1 - r0} : block.kiln_shape;
    block.maxtext_rows = 0;
    const MaxTextValue v = MaxTextTree::to_maxtext(block, part, &scratch);
    if (b == 0) writer.begin_blocks(array_name, v.array.dtype(), a.stored_shape(), axis, rows);
    writer.add_block(array_name, b, v.array);
    release_view(part);
    if (!v.residual.defined()) continue;
    if (!residual && any_nonzero(v.residual)) {
      // The first nonzero block: earlier blocks are all zero (stored as missing chunks).
      residual = true;
      writer.begin_blocks(residual_name, v.residual.dtype(), a.stored_shape(), axis, rows, false);
      for (int64_t k = 0; k < b; ++k) {
        Shape shape = a.stored_shape();
        shape[axis] = rows;
        writer.add_block(residual_name, k, Tensor::zeros(v.residual.dtype(), shape));
      }
    }
    if (residual) writer.add_block(residual_name, b, v.residual);
  }
  if (residual) record["residual"] = residual_name;
  return record;
}

// Writes one MaxText array, layer by layer when stacked; returns its sidecar record: the
// residual's name when one was written, the side array of Gemma's cut-off vocab rows.
// Writes one unstacked MaxText array (a top-level one, or one layer's in the unscanned tree);
// returns its sidecar record: the residual's name when one was written, the side array of
// Gemma's cut-off vocab rows. Built in `scratch`'s reused buffers (the writer copies each
// chunk out).
Json write_array(const KilnTensorSet& source, const MaxTextArraySpec& a, OrbaxWriter& writer,
                 size_t max_chunk_bytes, MaxTextScratch& scratch) {
  const std::string array_name = kTreePrefix + a.path;
  const std::string residual_name = kResidualPrefix + a.path;
  Json record = Json::object();
  const Tensor t =
      a.layers.empty() ? source.get(a.kiln_param) : source.layer_tensor(a.layers[0], a.kiln_param);
  if (const int64_t rows = source_row_block(a, t.dtype(), max_chunk_bytes); rows > 0)
    return write_array_in_blocks(t, a, rows, writer, scratch);
  const MaxTextValue v = MaxTextTree::to_maxtext(a, t, &scratch);
  writer.add(array_name, v.array);  // may be `t` itself (no change of layout)
  if (v.dropped.defined()) {
    writer.add_side_array(kDroppedPrefix + a.path, v.dropped.contiguous(true));
    record["dropped_rows"] = kDroppedPrefix + a.path;
  }
  release_view(t);
  if (v.residual.defined() && any_nonzero(v.residual)) {
    writer.add_side_array(residual_name, v.residual);
    record["residual"] = residual_name;
  }
  return record;
}

// A stacked array being written layer by layer.
struct StackedProgress {
  bool begun = false;
  bool residual = false;           // its residual side array has been begun
  std::vector<int64_t> positions;  // the layers written so far
};

// Writes layer position `j` of the stacked array `a` (any order; the writer's chunks hold one
// layer each).
void write_stacked_layer(const KilnTensorSet& source, const MaxTextArraySpec& a, size_t j,
                         OrbaxWriter& writer, MaxTextScratch& scratch, StackedProgress& progress) {
  const std::string array_name = kTreePrefix + a.path;
  const std::string residual_name = kResidualPrefix + a.path;
  const int axis = maxtext_layer_axis(static_cast<int>(a.maxtext_shape.size()));
  const Shape stacked = a.stored_shape();
  const Tensor t = source.layer_tensor(a.layers[j], a.kiln_param);
  const MaxTextValue v = MaxTextTree::to_maxtext(a, t, &scratch);
  if (!progress.begun) writer.begin_layers(array_name, v.array.dtype(), stacked, axis);
  progress.begun = true;
  writer.add_layer(array_name, static_cast<int64_t>(j), v.array);
  release_view(t);
  if (v.residual.defined()) {
    if (!progress.residual && any_nonzero(v.residual)) {
      // The first nonzero layer: the layers written before are all zero (missing chunks).
      progress.residual = true;
      writer.begin_layers(residual_name, v.residual.dtype(), stacked, axis, false);
      for (int64_t k : progress.positions)
        writer.add_layer(residual_name, k, Tensor::zeros(v.residual.dtype(), v.residual.shape()));
    }
    if (progress.residual) writer.add_layer(residual_name, static_cast<int64_t>(j), v.residual);
  }
  progress.positions.push_back(static_cast<int64_t>(j));
}

// Writes MaxText's tree; returns each array's sidecar record by path. The top-level arrays
// first, then decoder layer after decoder layer (each layer's tensors of every array, stacked
// or not): the order HuggingFace and Kiln files store them, so the source is read about
// front to back, each tensor once, instead of once per array across all the files.
Json write_tree(const KilnTensorSet& source, const MaxTextTree& tree, OrbaxWriter& writer,
                size_t max_chunk_bytes) {
  const std::vector<MaxTextArraySpec>& specs = tree.arrays();
  struct Item {
    int64_t layer;  // -1: top-level
    size_t array, position;
  };
  std::vector<Item> items;
  for (size_t i = 0; i < specs.size(); ++i) {
    const MaxTextArraySpec& a = specs[i];
    if (!a.stacked) {
      items.push_back({a.layers.empty() ? -1 : a.layers[0], i, 0});
      continue;
    }
    for (size_t j = 0; j < a.layers.size(); ++j) items.push_back({a.layers[j], i, j});
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& x, const Item& y) { return x.layer < y.layer; });
  MaxTextScratch scratch;
  std::vector<StackedProgress> progress(specs.size());
  Json arrays = Json::object();
  for (const Item& item : items) {
    const MaxTextArraySpec& a = specs[item.array];
    if (a.stacked)
      write_stacked_layer(source, a, item.position, writer, scratch, progress[item.array]);
    else
      arrays[a.path] = write_array(source, a, writer, max_chunk_bytes, scratch);
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    if (!specs[i].stacked) continue;
    Json record = Json::object();
    if (progress[i].residual) record["residual"] = kResidualPrefix + specs[i].path;
    arrays[specs[i].path] = record;
  }
  return arrays;
}

bool scanned_tree(const OrbaxSource& source) {
  // Stacked layers (decoder/layers/, DeepSeek's decoder/dense_layers/ and moe_layers/), or
  // Gemma 3's unstacked remainder of a scanned tree.
  const std::string decoder = std::string(kTreePrefix) + "decoder/";
  for (const std::string& name : source.names()) {
    if (name.rfind(decoder, 0) != 0) continue;
    const std::string group =
        name.substr(decoder.size(), name.find('/', decoder.size()) - decoder.size());
    if (group == "layers" || group == "layers_remainder" || group == "dense_layers" ||
        group == "moe_layers")
      return true;
  }
  return false;
}

// MaxText's tree of `config` for an Orbax checkpoint MaxText wrote: Gemma's vocab_size (the
// rows of its embedding) is read from the stored embedding, whatever MaxText was configured
// with; its other shapes come from the config.
MaxTextTree tree_of_source(const OrbaxSource& source, const Json& config, bool scanned) {
  MaxTextTree tree = MaxTextTree::build(config, scanned);
  const std::string name = std::string(kTreePrefix) + kEmbedding;
  if (maxtext_default_vocab(tree.family(), tree.spec().vocab_size) > 0 && source.contains(name)) {
    const Shape shape = source.shape_of(name);
    if (shape.size() == 2 && shape[0] > 0 && shape[0] != tree.maxtext_vocab())
      tree = MaxTextTree::build(config, scanned, shape[0]);
  }
  return tree;
}

// Checks that `source` holds exactly the arrays of `tree` with their shapes.
void check_tree(const OrbaxSource& source, const MaxTextTree& tree) {
  std::set<std::string> expected;
  for (const MaxTextArraySpec& a : tree.arrays()) {
    const std::string name = kTreePrefix + a.path;
    expected.insert(name);
    check(source.contains(name), source.where() + ": MaxText's " + tree.family() + " tree (" +
                                     (tree.scanned() ? "scanned" : "unscanned") +
                                     ") needs the array '" + name + "', which is missing");
    const Shape shape = source.shape_of(name);
    const Shape want = a.stored_shape();
    if (shape != want) {
      auto text = [](const Shape& s) {
        std::string t = "[";
        for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
        return t + "]";
      };
      throw Error(source.where() + ": array '" + name + "' has shape " + text(shape) +
                  ", but the config's " + tree.family() + " model needs " + text(want) + " (from " +
                  a.source + ")");
    }
  }
  for (const std::string& name : source.names())
    check(name.rfind(kTreePrefix, 0) != 0 || expected.count(name),
          source.where() + ": array '" + name + "' is not part of MaxText's " + tree.family() +
              " tree for this config");
}

}  // namespace

namespace {

// A Kiln checkpoint on disk as a KilnTensorSet.
class CheckpointTensors : public KilnTensorSet {
 public:
  explicit CheckpointTensors(const std::string& dir) : checkpoint_(dir) {}
  const Json& manifest() const override { return checkpoint_.manifest(); }
  std::vector<std::string> names() const override { return checkpoint_.names(); }
  Tensor get(const std::string& name) const override { return checkpoint_.get(name); }
  Tensor layer_tensor(int64_t layer, const std::string& param) const override {
    return checkpoint_.layer_tensor(layer, param);
  }
  std::string where() const override { return checkpoint_.where(); }

 private:
  KilnCheckpoint checkpoint_;
};

}  // namespace

void export_kiln_to_orbax(const std::string& kiln_dir, const std::string& orbax_dir,
                          const OrbaxWriteOptions& options, bool force,
                          const OrbaxExportOptions& export_options) {
  export_to_orbax(CheckpointTensors(kiln_dir), orbax_dir, options, force, export_options);
}

void export_to_orbax(const KilnTensorSet& source, const std::string& orbax_dir,
                     const OrbaxWriteOptions& options, bool force,
                     const OrbaxExportOptions& export_options) {
  const std::string kiln_dir = source.where();
  const Json& manifest = source.manifest();
  const Json& entries = manifest["tensors"];
  check(export_options.tree == "maxtext" || export_options.tree == "plain",
        "orbax export: unknown tree '" + export_options.tree + "' (maxtext or plain)");
  const bool plain = export_options.tree == "plain";
  std::optional<MaxTextTree> tree;
  if (!plain) {
    const std::string layout = export_options.maxtext_layout.empty()
                                   ? manifest.value("layout", "unscanned")
                                   : export_options.maxtext_layout;
    check(layout == "scanned" || layout == "unscanned",
          "orbax export: unknown MaxText layout '" + layout + "'");
    check(manifest.contains("source_config") && manifest["source_config"].is_object() &&
              !manifest["source_config"].empty(),
          kiln_dir +
              ": no source_config in the manifest, so the family and MaxText's tree are "
              "unknown (export with the plain tree instead)");
    tree = MaxTextTree::build(manifest["source_config"], layout == "scanned",
                              export_options.maxtext_vocab);
    // Every Kiln tensor has a place in the tree, and nothing else is asked for.
    std::set<std::string> keys = kiln_keys(source);
    for (const MaxTextArraySpec& a : tree->arrays()) {
      if (a.layers.empty()) {
        check(keys.erase(a.kiln_param) == 1, kiln_dir + ": MaxText's " + tree->family() +
                                                 " tree needs tensor '" + a.kiln_param +
                                                 "', which the checkpoint lacks");
        continue;
      }
      for (int64_t layer : a.layers)
        check(keys.erase(std::to_string(layer) + "|" + a.kiln_param) == 1,
              kiln_dir + ": MaxText's " + tree->family() + " tree needs layer " +
                  std::to_string(layer) + "'s '" + a.kiln_param + "', which the checkpoint lacks");
    }
    if (!keys.empty()) {
      std::string name = *keys.begin();
      const size_t bar = name.find('|');
      if (bar != std::string::npos)
        name = "decoder/layers_" + name.substr(0, bar) + "/" + name.substr(bar + 1);
      throw Error(kiln_dir + ": tensor '" + name + "' has no place in MaxText's " + tree->family() +
                  " tree");
    }
  }
  AtomicOutputDir output(orbax_dir, force);
  OrbaxWriteOptions write_options = options;
  write_options.release_borrowed_inputs = true;  // the sources' tensors are views of mappings
  OrbaxWriter writer(output.path(), write_options);
  Json arrays = Json::object();
  if (plain) {
    export_plain(source, writer);
  } else {
    arrays = write_tree(source, *tree, writer, write_options.zarr.max_chunk_bytes);
  }
  writer.add("step", Tensor::zeros(DType::I32, {}));  // MaxText's TrainState.step
  writer.finish();
  Json sidecar = manifest;
  sidecar.erase("tensors");
  sidecar.erase("files");
  sidecar.erase("tokenizer_files");
  Json kiln_tensors = Json::object();
  for (const auto& [name, entry] : entries.items()) {
    Json t = {{"shape", entry["shape"]}, {"dtype", entry["dtype"]}};
    if (entry.contains("layer_axis")) {
      t["layer_axis"] = entry["layer_axis"];
      t["layer_group"] = entry["layer_group"];
    }
    kiln_tensors[name] = t;
  }
  sidecar["kiln_tensors"] = kiln_tensors;
  if (tree)
    sidecar["maxtext"] = {{"family", tree->family()},
                          {"scanned", tree->scanned()},
                          {"vocab", tree->maxtext_vocab()},
                          {"arrays", arrays}};
  write_json_file((fs::path(writer.item_dir()) / kSidecar).string(), sidecar);
  output.commit();
}

void import_orbax_to_kiln(const std::string& orbax_dir, const std::string& kiln_dir,
                          const KilnCheckpointWriter::Options& options, bool force,
                          const Json& config) {
  const OrbaxSource source(orbax_dir);
  const std::string sidecar_path = (fs::path(source.where()) / kSidecar).string();
  const bool has_sidecar = fs::exists(sidecar_path);
  const Json sidecar = has_sidecar ? read_json_file(sidecar_path) : Json::object();
  KilnCheckpointInfo info;
  std::vector<KilnTensorPlan> plan;
  std::optional<MaxTextTree> tree;
  Json arrays = Json::object();
  try {
    info.model_spec = sidecar.value("model_spec", Json::object());
    info.source_config = sidecar.value("source_config", Json::object());
    info.layout = sidecar.value("layout", "unscanned");
    info.dtype = sidecar.value("dtype", "keep");
    info.provenance = sidecar.value("provenance", Json::object());
    if (sidecar.contains("layer_groups"))
      info.layer_groups =
          sidecar["layer_groups"].get<std::map<std::string, std::vector<int64_t>>>();
    if (sidecar.contains("maxtext")) {
      tree = MaxTextTree::build(info.source_config, sidecar["maxtext"].at("scanned").get<bool>(),
                                sidecar["maxtext"].value("vocab", int64_t{0}));
      arrays = sidecar["maxtext"].at("arrays");
    }
    if (has_sidecar) {
      check(sidecar.contains("kiln_tensors"),
            sidecar_path + ": no kiln_tensors (written by an older Kiln; re-export it)");
      for (const auto& [name, t] : sidecar["kiln_tensors"].items()) {
        KilnTensorPlan p;
        p.name = name;
        const std::optional<DType> dtype = dtype_from_name(t.at("dtype").get<std::string>());
        check(dtype.has_value(), sidecar_path + ": tensor '" + name + "' has an unknown dtype");
        p.dtype = *dtype;
        p.shape = t.at("shape").get<Shape>();
        p.layer_axis = t.value("layer_axis", -1);
        p.layer_group = t.value("layer_group", "");
        plan.push_back(p);
      }
    }
  } catch (const Json::exception& e) {
    throw Error(sidecar_path + ": malformed: " + e.what());
  }
  const std::string prefix = kTreePrefix;
  if (!has_sidecar) {
    const bool scanned = scanned_tree(source);
    if (config.is_object() && !config.empty()) {
      tree = tree_of_source(source, config, scanned);
      check_tree(source, *tree);
      info.source_config = config;
      info.model_spec = tree->spec().to_json();
      Json lossy = Json::array();
      const DType dtype = source.dtype_of(prefix + tree->arrays().front().path);
      for (const std::string& step : tree->lossy_steps(dtype)) lossy.push_back(step);
      info.provenance = {{"maxtext",
                          {{"family", tree->family()},
                           {"scanned", tree->scanned()},
                           {"source", orbax_dir},
                           {"lossy_value_changes", lossy}}}};
      // Gemma's padding rows: zeros as MaxText's converters write them; anything else (a
      // trained MaxText model's rows past the vocab) is dropped all the same, and said.
      const MaxTextArraySpec& embedding = tree->arrays().front();
      if (embedding.maxtext_rows > embedding.kiln_shape[0]) {
        const Tensor rows = source.get(prefix + embedding.path)
                                .slice(0, embedding.kiln_shape[0], embedding.maxtext_rows);
        int64_t nonzero = 0;
        const int64_t row_bytes = static_cast<int64_t>(rows.nbytes()) / rows.dim(0);
        const auto* bytes = static_cast<const unsigned char*>(rows.contiguous().raw());
        for (int64_t r = 0; r < rows.dim(0); ++r)
          for (int64_t b = 0; b < row_bytes; ++b)
            if (bytes[r * row_bytes + b] != 0 &&
                (bytes[r * row_bytes + b] != 0x80 || (b + 1) % dtype_size(rows.dtype()) != 0)) {
              ++nonzero;  // not +0 or -0
              break;
            }
        info.provenance["maxtext"]["padding_rows"] = rows.dim(0);
        info.provenance["maxtext"]["nonzero_padding_rows"] = nonzero;
      }
      for (const MaxTextArraySpec& a : tree->arrays()) {
        const DType dtype = source.dtype_of(prefix + a.path);
        if (a.layers.empty()) {
          plan.push_back({a.kiln_param, dtype, a.kiln_shape, -1, ""});
          continue;
        }
        for (int64_t layer : a.layers)
          plan.push_back({"decoder/layers_" + std::to_string(layer) + "/" + a.kiln_param, dtype,
                          a.kiln_shape, -1, ""});
      }
    } else {
      bool any = false;
      for (const std::string& array : source.names()) any = any || array.rfind(prefix, 0) == 0;
      check(any, source.where() + ": no arrays under " + prefix);
      throw Error(source.where() + ": no " + kSidecar +
                  " (not written by Kiln), so the family and the layout of its arrays are "
                  "unknown: pass the model's config.json (--config) to read it as MaxText's " +
                  (scanned ? "scanned" : "unscanned") + " tree");
    }
  }
  check(!plan.empty(), source.where() + ": no arrays under " + prefix);
  // Where layer `layer`'s `param` goes in the Kiln layout: (tensor name, position or -1).
  std::map<int64_t, std::pair<std::string, int64_t>> position;
  for (const auto& [group, layers] : info.layer_groups)
    for (size_t j = 0; j < layers.size(); ++j)
      position[layers[j]] = {group, static_cast<int64_t>(j)};
  AtomicOutputDir output(kiln_dir, force);
  KilnCheckpointWriter writer(output.path(), info, plan, options);
  auto write_kiln = [&](const MaxTextArraySpec& a, size_t j, const Tensor& t) {
    if (a.layers.empty()) return writer.write(a.kiln_param, t);
    const int64_t layer = a.layers[j];
    if (info.layout == "scanned") {
      const auto it = position.find(layer);
      check(it != position.end(),
            sidecar_path + ": layer " + std::to_string(layer) + " is in no layer group");
      return writer.write_layer("decoder/" + it->second.first + "/" + a.kiln_param,
                                it->second.second, t);
    }
    writer.write("decoder/layers_" + std::to_string(layer) + "/" + a.kiln_param, t);
  };
  if (!tree) {
    for (const KilnTensorPlan& p : plan) {
      const Tensor array = source.get(prefix + p.name);
      check(array.shape() == p.shape,
            source.where() + ": array '" + prefix + p.name + "' does not match " + kSidecar);
      writer.write(p.name, array);
    }
  } else {
    for (const MaxTextArraySpec& a : tree->arrays()) {
      const std::string name = prefix + a.path;
      check(source.contains(name), source.where() + ": missing array '" + name + "'");
      const Tensor array = source.get(name);
      check(array.shape() == a.stored_shape(),
            source.where() + ": array '" + name + "' does not have MaxText's shape");
      auto side_array = [&](const char* key) {
        Tensor t;
        if (arrays.contains(a.path) && arrays[a.path].contains(key)) {
          t = source.get_side_array(arrays[a.path][key].get<std::string>());
          check(t.defined(), source.where() + ": missing side array " + arrays[a.path][key].dump());
        }
        return t;
      };
      const Tensor residual = side_array("residual");
      if (!a.stacked) {
        write_kiln(a, 0, MaxTextTree::from_maxtext(a, array, residual, side_array("dropped_rows")));
        continue;
      }
      const int axis = maxtext_layer_axis(static_cast<int>(a.maxtext_shape.size()));
      for (size_t j = 0; j < a.layers.size(); ++j)
        write_kiln(
            a, j,
            MaxTextTree::from_maxtext(
                a, array.select(axis, static_cast<int64_t>(j)),
                residual.defined() ? residual.select(axis, static_cast<int64_t>(j)) : Tensor()));
    }
  }
  writer.finish();
  output.commit();
}

std::vector<std::string> describe_maxtext_tree(const std::string& orbax_dir, const Json& config) {
  const OrbaxSource source(orbax_dir);
  const std::string sidecar_path = (fs::path(source.where()) / kSidecar).string();
  const bool has_sidecar = fs::exists(sidecar_path);
  std::optional<MaxTextTree> tree;
  try {
    if (has_sidecar) {
      const Json sidecar = read_json_file(sidecar_path);
      if (!sidecar.contains("maxtext")) return {};
      tree = MaxTextTree::build(sidecar.value("source_config", Json::object()),
                                sidecar["maxtext"].value("scanned", false),
                                sidecar["maxtext"].value("vocab", int64_t{0}));
    } else if (config.is_object() && !config.empty()) {
      tree = tree_of_source(source, config, scanned_tree(source));
    }
  } catch (const Error&) {
    return {};
  }
  if (!tree) return {};
  const DType dtype = source.dtype_of(kTreePrefix + tree->arrays().front().path);
  std::vector<std::string> lines;
  lines.push_back(
      "MaxText tree: " + tree->family() + ", " + (tree->scanned() ? "scanned" : "unscanned") +
      ", " + std::to_string(tree->arrays().size()) + " arrays, " + std::string(dtype_name(dtype)));
  const std::vector<MaxTextValueChange> changes = tree->value_changes(dtype);
  if (changes.empty())
    lines.push_back("MaxText value changes: none (HF's weights permuted: exact)");
  for (const MaxTextValueChange& c : changes)
    lines.push_back(std::string("MaxText value change, ") +
                    (!c.lossy      ? "exact"
                     : has_sidecar ? "lossy in MaxText, undone exactly by Kiln's residual arrays"
                                   : "LOSSY (undone by arithmetic only)") +
                    ": " + c.param + ": " + c.what);
  return lines;
}

std::vector<std::string> maxtext_provenance(const Json& manifest) {
  if (!manifest.contains("provenance") || !manifest["provenance"].contains("maxtext")) return {};
  const Json& m = manifest["provenance"]["maxtext"];
  std::vector<std::string> lines;
  lines.push_back("weights read from MaxText's " + m.value("family", std::string("?")) + " tree (" +
                  (m.value("scanned", false) ? "scanned" : "unscanned") + ") at " +
                  m.value("source", std::string("?")) + ", without Kiln's residuals");
  if (m.contains("padding_rows"))
    lines.push_back("MaxText's " + std::to_string(m.value("padding_rows", int64_t{0})) +
                    " vocab padding rows dropped (" +
                    std::to_string(m.value("nonzero_padding_rows", int64_t{0})) +
                    " of them not zero, unlike MaxText's converters write them)");
  const Json lossy = m.value("lossy_value_changes", Json::array());
  if (lossy.empty()) lines.push_back("MaxText value changes: none lossy (exact)");
  for (const Json& step : lossy)
    lines.push_back("MaxText value change, LOSSY (undone by arithmetic only): " +
                    step.get<std::string>());
  return lines;
}

}  // namespace kiln
