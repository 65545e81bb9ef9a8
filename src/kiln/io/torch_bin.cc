#include "kiln/io/torch_bin.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "kiln/core/error.h"
#include "kiln/io/shard_index.h"

namespace kiln {
namespace fs = std::filesystem;

TorchBinFile TorchBinFile::open(const std::string& path) {
  TorchBinFile bin;
  char magic[4] = {};
  std::ifstream(path, std::ios::binary).read(magic, 4);
  check(std::memcmp(magic, "PK\x03\x04", 4) == 0 || !fs::exists(path),
        path + ": not a torch.save zip archive (the pre-1.6 torch.save format is not supported)");
  bin.zip_ = std::make_shared<ZipArchive>(ZipArchive::open(path));
  std::string pickle_name;
  for (const std::string& name : bin.zip_->names()) {
    const size_t slash = name.find('/');
    if (slash != std::string::npos && name.substr(slash) == "/data.pkl") {
      check(pickle_name.empty(), path + ": more than one data.pkl in the archive");
      pickle_name = name;
      bin.prefix_ = name.substr(0, slash + 1);
    }
  }
  check(!pickle_name.empty(), path + ": no <archive>/data.pkl entry; not a torch.save file");
  const std::string byteorder = bin.prefix_ + "byteorder";
  if (bin.zip_->contains(byteorder)) {
    const ZipArchive::Entry& e = bin.zip_->entry(byteorder);
    std::string order(reinterpret_cast<const char*>(bin.zip_->data(byteorder)), e.size);
    check(order == "little", path + ": byte order '" + order + "' is not supported");
  }
  const ZipArchive::Entry& pickle = bin.zip_->entry(pickle_name);
  auto records =
      parse_torch_pickle(bin.zip_->data(pickle_name), pickle.size, path + ": " + pickle_name);
  for (auto& [name, r] : records) {
    const std::string where = path + ": tensor '" + name + "'";
    const std::string entry = bin.prefix_ + "data/" + r.storage_key;
    check(bin.zip_->contains(entry), where + ": storage entry '" + entry + "' is missing");
    const size_t element = dtype_size(r.dtype);
    check(r.storage_numel >= 0 &&
              static_cast<uint64_t>(r.storage_numel) <= bin.zip_->entry(entry).size / element,
          where + ": storage of " + std::to_string(r.storage_numel) +
              " elements does not fit "
              "its entry of " +
              std::to_string(bin.zip_->entry(entry).size) + " bytes");
    // The view reaches elements [offset, offset + sum((size - 1) * stride)] unless empty.
    check(r.storage_offset >= 0, where + ": negative storage offset");
    int64_t last = r.storage_offset;
    bool empty = false;
    for (size_t d = 0; d < r.shape.size(); ++d) {
      check(r.shape[d] >= 0 && r.strides[d] >= 0, where + ": negative size or stride");
      if (r.shape[d] == 0) empty = true;
      check(r.shape[d] <= (int64_t{1} << 40) && r.strides[d] <= (int64_t{1} << 40),
            where + ": size or stride too large");
      if (r.shape[d] > 0) last += (r.shape[d] - 1) * r.strides[d];
    }
    check(empty || last < r.storage_numel, where + ": view " + shape_to_string(r.shape) +
                                               " at offset " + std::to_string(r.storage_offset) +
                                               " runs past its storage of " +
                                               std::to_string(r.storage_numel) + " elements");
    check(bin.records_.emplace(name, r).second, where + ": appears twice");
    bin.names_.push_back(name);
  }
  return bin;
}

const TorchTensorRecord& TorchBinFile::record(const std::string& name) const {
  auto it = records_.find(name);
  if (it == records_.end()) throw Error(path() + ": no tensor named '" + name + "'");
  return it->second;
}

Tensor TorchBinFile::get(const std::string& name) const {
  const TorchTensorRecord& r = record(name);
  const std::string entry = prefix_ + "data/" + r.storage_key;
  const size_t element = dtype_size(r.dtype);
  auto storage =
      Storage::borrow(zip_, zip_->data(entry), static_cast<size_t>(r.storage_numel) * element);
  bool contiguous = true;
  int64_t expected = 1;
  for (size_t d = r.shape.size(); d-- > 0;) {
    if (r.shape[d] != 1 && r.strides[d] != expected) contiguous = false;
    expected *= r.shape[d];
  }
  const bool aligned =
      reinterpret_cast<uintptr_t>(zip_->data(entry) + r.storage_offset * element) % element == 0;
  if (contiguous && aligned)
    return Tensor::view_of(storage, static_cast<size_t>(r.storage_offset) * element, r.dtype,
                           r.shape);
  Tensor out = Tensor::zeros(r.dtype, r.shape);
  // Gathered element by element: strided or misaligned views are rare in checkpoints.
  const std::byte* src = zip_->data(entry);
  std::byte* dst = static_cast<std::byte*>(out.mutable_raw());
  const int64_t numel = out.numel();
  std::vector<int64_t> index(r.shape.size(), 0);
  for (int64_t i = 0; i < numel; ++i) {
    int64_t offset = r.storage_offset;
    for (size_t d = 0; d < index.size(); ++d) offset += index[d] * r.strides[d];
    std::memcpy(dst + i * element, src + offset * element, element);
    for (size_t d = index.size(); d-- > 0;) {
      if (++index[d] < r.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

bool TorchBinSource::present_in(const std::string& dir) {
  return fs::exists(fs::path(dir) / "pytorch_model.bin") ||
         fs::exists(fs::path(dir) / "pytorch_model.bin.index.json");
}

void TorchBinSource::add_file(const std::string& file) {
  files_.push_back(TorchBinFile::open(file));
  for (const std::string& name : files_.back().names())
    check(location_.emplace(name, files_.size() - 1).second,
          file + ": tensor '" + name + "' also appears in another shard");
}

TorchBinSource::TorchBinSource(const std::string& path) : path_(path) {
  fs::path p(path);
  if (fs::is_regular_file(p)) {
    add_file(path);
    return;
  }
  check(fs::is_directory(p), path + ": no such file or directory");
  const fs::path index_path = p / "pytorch_model.bin.index.json";
  if (fs::exists(index_path)) {
    ShardIndex index = read_shard_index(index_path.string());
    for (const std::string& shard : index.shards) {
      const fs::path shard_path = p / shard;
      check(fs::exists(shard_path),
            shard_path.string() + ": shard listed in " + index_path.string() + " does not exist");
      add_file(shard_path.string());
    }
    for (const auto& [name, shard] : index.weight_map) {
      const std::string shard_path = (p / shard).string();
      auto loc = location_.find(name);
      check(loc != location_.end() && files_[loc->second].path() == shard_path,
            shard_path + ": tensor '" + name + "' listed in " + index_path.string() +
                " is not in this shard");
    }
    return;
  }
  const fs::path single = p / "pytorch_model.bin";
  check(fs::exists(single),
        path + ": no pytorch_model.bin or pytorch_model.bin.index.json in this folder");
  add_file(single.string());
}

std::vector<std::string> TorchBinSource::names() const {
  std::vector<std::string> out;
  for (const auto& f : files_)
    for (const auto& n : f.names()) out.push_back(n);
  return out;
}

const TorchBinFile& TorchBinSource::file_for(const std::string& name) const {
  auto it = location_.find(name);
  if (it == location_.end()) throw Error(path_ + ": no tensor named '" + name + "'");
  return files_[it->second];
}

}  // namespace kiln
