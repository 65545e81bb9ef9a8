#include "kiln/tokenizer/vocabulary.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"

namespace kiln::tok {

bool Vocabulary::add(std::string token, int32_t id) {
  if (static_cast<size_t>(id) < present_.size() && present_[id]) return false;
  if (!ids_.emplace(token, id).second) return false;
  if (static_cast<size_t>(id) >= tokens_.size()) {
    tokens_.resize(id + 1);
    present_.resize(id + 1, false);
  }
  tokens_[id] = std::move(token);
  present_[id] = true;
  return true;
}

Vocabulary Vocabulary::from_json(const Json& object, const std::string& where) {
  if (!object.is_object()) throw Error(where + ": expected an object of token: id");
  Vocabulary vocab;
  vocab.ids_.reserve(object.size());
  for (auto it = object.begin(); it != object.end(); ++it) {
    const Json& id = it.value();
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      throw Error(child_where(where, "\"" + it.key() + "\"") + ": expected a non-negative id");
    }
    if (!vocab.add(it.key(), static_cast<int32_t>(id.get<int64_t>()))) {
      throw Error(child_where(where, "\"" + it.key() + "\"") + ": id " +
                  std::to_string(id.get<int64_t>()) + " is used twice");
    }
  }
  return vocab;
}

}  // namespace kiln::tok
