#include "kiln/io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/shard_index.h"

namespace kiln {
namespace fs = std::filesystem;

SafetensorsFile SafetensorsFile::open(const std::string& path, Residency residency) {
  SafetensorsFile st;
  st.file_ = MappedFile::open(path, residency);
  const size_t file_size = st.file_->size();
  check(file_size >= 8, path + ": truncated safetensors file (" + std::to_string(file_size) +
                            " bytes, no header length)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, st.file_->data(), 8);
  check(header_len <= file_size - 8, path + ": header length " + std::to_string(header_len) +
                                         " runs past the end of the file (" +
                                         std::to_string(file_size) + " bytes)");
  const size_t data_start = 8 + header_len;
  std::string header(reinterpret_cast<const char*>(st.file_->data()) + 8, header_len);
  Json json;
  try {
    json = Json::parse(header);
  } catch (const Json::parse_error& e) {
    throw Error(path + ": malformed safetensors header JSON: " + e.what());
  }
  check(json.is_object(), path + ": safetensors header is not a JSON object");
  st.storage_ = Storage::borrow(st.file_, st.file_->data(), file_size);

  struct Range {
    size_t begin, end;
    std::string name;
  };
  std::vector<Range> ranges;
  for (auto it = json.begin(); it != json.end(); ++it) {
    const std::string& name = it.key();
    const Json& value = it.value();
    const std::string where = path + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      check(value.is_object(), path + ": __metadata__ is not an object");
      for (auto m = value.begin(); m != value.end(); ++m) {
        check(m.value().is_string(), path + ": __metadata__ key '" + m.key() + "' is not a string");
        st.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    check(value.is_object(), where + ": entry is not an object");
    check(value.contains("dtype") && value["dtype"].is_string(), where + ": missing 'dtype'");
    check(value.contains("shape") && value["shape"].is_array(), where + ": missing 'shape'");
    check(value.contains("data_offsets") && value["data_offsets"].is_array() &&
              value["data_offsets"].size() == 2,
          where + ": missing or malformed 'data_offsets'");
    std::string dtype_str = value["dtype"].get<std::string>();
    // float8 e4m3fn (fp8 checkpoints) has no compute dtype in Kiln: its bytes read as U8, and
    // io/hf_quantized.h, which finds such tensors from the header, dequantizes them.
    auto dtype =
        dtype_str == "F8_E4M3" ? std::optional<DType>(DType::U8) : dtype_from_name(dtype_str);
    check(dtype.has_value() && !is_quantized(*dtype),
          where + ": unknown dtype '" + dtype_str + "'");
    Entry entry;
    entry.dtype = *dtype;
    // numel saturates at max_numel + 1 so that numel * element size cannot overflow.
    const uint64_t max_numel = (file_size - data_start) / dtype_size(entry.dtype);
    uint64_t numel = 1;
    bool has_zero_dim = false;
    for (const Json& d : value["shape"]) {
      check(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
            where + ": shape entries must be non-negative integers");
      uint64_t dim = d.get<uint64_t>();
      check(dim <= (uint64_t{1} << 62), where + ": shape too large");
      entry.shape.push_back(static_cast<int64_t>(dim));
      if (dim == 0)
        has_zero_dim = true;
      else if (!has_zero_dim)
        numel = numel <= max_numel / dim ? numel * dim : max_numel + 1;
    }
    if (has_zero_dim) numel = 0;
    for (const Json& o : value["data_offsets"])
      check(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0),
            where + ": data_offsets must be non-negative integers");
    uint64_t begin = value["data_offsets"][0].get<uint64_t>();
    uint64_t end = value["data_offsets"][1].get<uint64_t>();
    check(begin <= end, where + ": data_offsets begin > end");
    check(end <= file_size - data_start, where + ": byte range [" + std::to_string(begin) + ", " +
                                             std::to_string(end) +
                                             ") lies outside the file's data section (" +
                                             std::to_string(file_size - data_start) + " bytes)");
    const std::string needed =
        numel > max_numel ? "more than the data section's " + std::to_string(file_size - data_start)
                          : std::to_string(numel * dtype_size(entry.dtype));
    check(numel <= max_numel && end - begin == numel * dtype_size(entry.dtype),
          where + ": shape " + shape_to_string(entry.shape) + " of " + dtype_str + " needs " +
              needed + " bytes but data_offsets span " + std::to_string(end - begin));
    entry.begin = data_start + begin;
    entry.end = data_start + end;
    ranges.push_back({entry.begin, entry.end, name});
    st.entries_.emplace(name, std::move(entry));
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // Empty tensors may share an offset with anything; every other range must start at or
  // after the end of the furthest-reaching non-empty range before it.
  const Range* furthest = nullptr;
  for (const Range& cur : ranges) {
    if (cur.begin == cur.end) continue;
    if (furthest != nullptr)
      check(cur.begin >= furthest->end, path + ": tensors '" + furthest->name + "' and '" +
                                            cur.name + "' have overlapping byte ranges");
    if (furthest == nullptr || cur.end > furthest->end) furthest = &cur;
  }
  for (const Range& r : ranges) st.names_.push_back(r.name);
  return st;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error(path() + ": no tensor named '" + name + "'");
  return it->second;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const Entry& e = entry(name);
  Tensor view = Tensor::view_of(storage_, e.begin, e.dtype, e.shape);
  // The format does not promise aligned data; a misaligned tensor is copied so that
  // typed access stays well-defined.
  if (reinterpret_cast<uintptr_t>(view.raw()) % dtype_size(e.dtype) != 0)
    return view.contiguous(true);
  return view;
}
DType SafetensorsFile::dtype_of(const std::string& name) const {
  return entry(name).dtype;
}
const Shape& SafetensorsFile::shape_of(const std::string& name) const {
  return entry(name).shape;
}

bool SafetensorsSet::present_in(const std::string& dir) {
  return fs::exists(fs::path(dir) / "model.safetensors") ||
         fs::exists(fs::path(dir) / "model.safetensors.index.json");
}

SafetensorsSet SafetensorsSet::open(const std::string& path, Residency residency) {
  SafetensorsSet set;
  set.where_ = path;
  fs::path p(path);
  auto add_file = [&set, residency](const std::string& file) {
    set.files_.push_back(SafetensorsFile::open(file, residency));
    size_t index = set.files_.size() - 1;
    for (const std::string& name : set.files_.back().names()) {
      check(set.location_.emplace(name, index).second,
            file + ": tensor '" + name + "' also appears in another shard");
    }
  };
  if (fs::is_regular_file(p)) {
    add_file(path);
    return set;
  }
  check(fs::is_directory(p), path + ": no such file or directory");
  fs::path index_path = p / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    ShardIndex index = read_shard_index(index_path.string());
    for (const std::string& shard : index.shards) {
      fs::path shard_path = p / shard;
      check(fs::exists(shard_path),
            shard_path.string() + ": shard listed in " + index_path.string() + " does not exist");
      add_file(shard_path.string());
    }
    for (const auto& [name, shard] : index.weight_map) {
      const std::string shard_path = (p / shard).string();
      auto loc = set.location_.find(name);
      check(loc != set.location_.end() && set.files_[loc->second].path() == shard_path,
            shard_path + ": tensor '" + name + "' listed in " + index_path.string() +
                " is not in this shard");
    }
    return set;
  }
  fs::path single = p / "model.safetensors";
  check(fs::exists(single),
        path + ": no model.safetensors or model.safetensors.index.json in this folder");
  add_file(single.string());
  return set;
}

std::vector<std::string> SafetensorsSet::names() const {
  std::vector<std::string> out;
  for (const auto& f : files_)
    for (const auto& n : f.names()) out.push_back(n);
  return out;
}

const SafetensorsFile& SafetensorsSet::file_for(const std::string& name) const {
  auto it = location_.find(name);
  if (it == location_.end()) throw Error(where_ + ": no tensor named '" + name + "'");
  return files_[it->second];
}

Tensor SafetensorsSet::get(const std::string& name) const {
  return file_for(name).get(name);
}
DType SafetensorsSet::dtype_of(const std::string& name) const {
  return file_for(name).dtype_of(name);
}
const Shape& SafetensorsSet::shape_of(const std::string& name) const {
  return file_for(name).shape_of(name);
}
const std::string& SafetensorsSet::file_of(const std::string& name) const {
  return file_for(name).path();
}

std::string safetensors_header(
    const std::vector<std::pair<std::string, std::pair<DType, Shape>>>& specs,
    const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, spec] : specs) {
    check(name != "__metadata__" && !header.contains(name),
          "tensor '" + name + "' appears twice or uses the reserved name __metadata__");
    uint64_t bytes = static_cast<uint64_t>(shape_numel(spec.second)) * dtype_size(spec.first);
    header[name] = {{"dtype", std::string(dtype_name(spec.first))},
                    {"shape", spec.second},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  size_t padded = (8 + json.size() + 63) / 64 * 64 - 8;
  json.append(padded - json.size(), ' ');
  uint64_t len = json.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, 8);
  return out + json;
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Larger elements first: with a 64-byte aligned data section and no holes, every tensor
  // then starts at a multiple of its element size.
  std::vector<std::pair<std::string, Tensor>> ordered = tensors;
  std::stable_sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
    return dtype_size(a.second.dtype()) > dtype_size(b.second.dtype());
  });
  std::vector<std::pair<std::string, std::pair<DType, Shape>>> specs;
  for (const auto& [name, t] : ordered) specs.push_back({name, {t.dtype(), t.shape()}});
  std::string header;
  try {
    header = safetensors_header(specs, metadata);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot open for writing");
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const auto& [name, t] : ordered) {
    Tensor c = t.contiguous();
    out.write(static_cast<const char*>(c.raw()), static_cast<std::streamsize>(c.nbytes()));
  }
  out.flush();
  if (!out) throw Error(path + ": write failed");
}

}  // namespace kiln
