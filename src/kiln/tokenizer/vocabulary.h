// A token vocabulary: strings <-> dense ids, with lookups by string_view.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kiln/tokenizer/json_fields.h"

namespace kiln::tok {

class Vocabulary {
 public:
  // Reads {"token": id, ...}. Throws Error naming `where` for non-integer or negative ids and
  // for two tokens with one id.
  static Vocabulary from_json(const Json& object, const std::string& where);

  // Adds `token` with `id`; returns false when the token or the id is already present.
  bool add(std::string token, int32_t id);

  std::optional<int32_t> find(std::string_view token) const {
    const auto it = ids_.find(token);
    if (it == ids_.end()) return std::nullopt;
    return it->second;
  }
  // The token of `id`, or nullptr.
  const std::string* token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || !present_[id]) return nullptr;
    return &tokens_[id];
  }
  // One past the largest id.
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  size_t count() const { return ids_.size(); }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int32_t, Hash, std::equal_to<>> ids_;
  std::vector<std::string> tokens_;  // [size()], empty where no token has that id
  std::vector<bool> present_;        // [size()]
};

}  // namespace kiln::tok
