// The index of a HuggingFace sharded checkpoint (model.safetensors.index.json,
// pytorch_model.bin.index.json): which shard file holds each tensor.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kiln {

struct ShardIndex {
  std::string path;                 // the index file
  std::vector<std::string> shards;  // distinct shard file names, in first-seen order
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> shard file name
};

// Reads `index_path`. Throws Error naming the file when it is malformed, has no
// `weight_map`, or names a shard that is not a plain file name in the same folder.
ShardIndex read_shard_index(const std::string& index_path);

}  // namespace kiln
