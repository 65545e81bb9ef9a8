// PyTorch `.bin` checkpoints in torch.save's zip format: single files and sharded folders
// (pytorch_model.bin.index.json), read through a restricted unpickler and exposed as a
// TensorSource.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/io/torch_pickle.h"
#include "kiln/io/zip_archive.h"
#include "kiln/models/family.h"

namespace kiln {

// One torch.save zip file. open() parses `<archive>/data.pkl` with the restricted
// unpickler (anything but tensors is refused, nothing is executed) and checks that every
// tensor view lies inside its storage entry. get() returns a read-only view into the mapped
// file when the tensor is contiguous and aligned, else a contiguous copy.
class TorchBinFile {
 public:
  static TorchBinFile open(const std::string& path);

  const std::string& path() const { return zip_->path(); }
  // Tensor names in pickle order.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return records_.count(name) != 0; }
  // Throws Error naming the file and tensor when absent.
  Tensor get(const std::string& name) const;
  DType dtype_of(const std::string& name) const { return record(name).dtype; }
  const Shape& shape_of(const std::string& name) const { return record(name).shape; }

 private:
  const TorchTensorRecord& record(const std::string& name) const;
  std::shared_ptr<ZipArchive> zip_;
  std::string prefix_;  // "<archive>/" of every entry
  std::map<std::string, TorchTensorRecord> records_;
  std::vector<std::string> names_;
};

// The `.bin` weights of a model: a single file, a folder with pytorch_model.bin, or a
// folder with pytorch_model.bin.index.json (every listed shard must exist and hold the
// tensors the index says).
class TorchBinSource : public TensorSource {
 public:
  explicit TorchBinSource(const std::string& path);
  // True when `dir` holds pytorch_model.bin or pytorch_model.bin.index.json.
  static bool present_in(const std::string& dir);

  std::vector<std::string> names() const override;
  bool contains(const std::string& name) const override { return location_.count(name) != 0; }
  Tensor get(const std::string& name) const override { return file_for(name).get(name); }
  Shape shape_of(const std::string& name) const override { return file_for(name).shape_of(name); }
  DType dtype_of(const std::string& name) const override { return file_for(name).dtype_of(name); }
  std::string where() const override { return path_; }

 private:
  void add_file(const std::string& file);
  const TorchBinFile& file_for(const std::string& name) const;
  std::string path_;
  std::vector<TorchBinFile> files_;
  std::map<std::string, size_t> location_;
};

}  // namespace kiln
