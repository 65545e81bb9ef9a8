#include "kiln/io/shard_index.h"

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/io/json.h"

namespace kiln {

ShardIndex read_shard_index(const std::string& index_path) {
  ShardIndex index;
  index.path = index_path;
  Json json = read_json_file(index_path);
  check(json.is_object() && json.contains("weight_map") && json["weight_map"].is_object(),
        index_path + ": missing key 'weight_map'");
  for (auto it = json["weight_map"].begin(); it != json["weight_map"].end(); ++it) {
    check(it.value().is_string(),
          index_path + ": weight_map entry '" + it.key() + "' is not a file name");
    std::string shard = it.value().get<std::string>();
    check(!shard.empty() && shard.find('/') == std::string::npos && shard != "." && shard != "..",
          index_path + ": shard name '" + shard + "' is not a plain file name");
    if (std::find(index.shards.begin(), index.shards.end(), shard) == index.shards.end())
      index.shards.push_back(shard);
    index.weight_map.emplace_back(it.key(), std::move(shard));
  }
  return index;
}

}  // namespace kiln
