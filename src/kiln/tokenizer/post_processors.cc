#include "kiln/tokenizer/post_processors.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"

namespace kiln::tok {
namespace {

// Adds nothing (ByteLevel only trims offsets, which Kiln does not track).
class NoOpProcessor : public PostProcessor {
 public:
  void add_special_tokens(std::vector<int32_t>&) const override {}
};

// Surrounds the sequence with fixed ids: prefix + ids + suffix.
class WrapProcessor : public PostProcessor {
 public:
  WrapProcessor(std::vector<int32_t> prefix, std::vector<int32_t> suffix)
      : prefix_(std::move(prefix)), suffix_(std::move(suffix)) {}
  void add_special_tokens(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), prefix_.begin(), prefix_.end());
    ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  }

 private:
  std::vector<int32_t> prefix_;
  std::vector<int32_t> suffix_;
};

class SequenceProcessor : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  void add_special_tokens(std::vector<int32_t>& ids) const override {
    for (const auto& step : steps_) step->add_special_tokens(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

// TemplateProcessing's "single" template: SpecialToken items before and after the one
// Sequence item; their ids come from the template's "special_tokens" table.
std::unique_ptr<PostProcessor> make_template(const Json& spec, const std::string& where) {
  const std::string single_where = child_where(where, "single");
  const Json& single = required_field(spec, "single", where);
  if (!single.is_array()) throw Error(single_where + ": expected an array");
  const Json& table = required_field(spec, "special_tokens", where);
  std::vector<int32_t> prefix, suffix;
  bool seen_sequence = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const std::string item_where = child_where(single_where, i);
    const Json& item = single[i];
    if (has_field(item, "Sequence")) {
      seen_sequence = true;
      continue;
    }
    const Json& special = required_field(item, "SpecialToken", item_where);
    const std::string name = string_field(special, "id", child_where(item_where, "SpecialToken"));
    const std::string entry_where = child_where(child_where(where, "special_tokens"), name);
    if (!table.is_object() || !table.contains(name)) throw Error(entry_where + ": missing");
    const Json& ids = required_field(table[name], "ids", entry_where);
    if (!ids.is_array()) throw Error(child_where(entry_where, "ids") + ": expected an array");
    for (const Json& id : ids) {
      if (!id.is_number_integer()) throw Error(child_where(entry_where, "ids") + ": bad id");
      (seen_sequence ? suffix : prefix).push_back(id.get<int32_t>());
    }
  }
  return std::make_unique<WrapProcessor>(std::move(prefix), std::move(suffix));
}

// BertProcessing / RobertaProcessing: "cls": [token, id], "sep": [token, id].
int32_t token_pair_id(const Json& spec, std::string_view key, const std::string& where) {
  const Json& pair = required_field(spec, key, where);
  if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer()) {
    throw Error(child_where(where, key) + ": expected [token, id]");
  }
  return pair[1].get<int32_t>();
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const Json& spec, const std::string& where) {
  if (spec.is_null()) return nullptr;
  const std::string type = type_field(spec, where);
  if (type == "ByteLevel") return std::make_unique<NoOpProcessor>();
  if (type == "TemplateProcessing") return make_template(spec, where);
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    return std::make_unique<WrapProcessor>(std::vector<int32_t>{token_pair_id(spec, "cls", where)},
                                           std::vector<int32_t>{token_pair_id(spec, "sep", where)});
  }
  if (type == "Sequence") {
    const std::string list_where = child_where(where, "processors");
    const Json& list = required_field(spec, "processors", where);
    if (!list.is_array()) throw Error(list_where + ": expected an array");
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = make_post_processor(list[i], child_where(list_where, i));
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceProcessor>(std::move(steps));
  }
  throw Error(child_where(where, "type") + ": unsupported post-processor '" + type + "'");
}

}  // namespace kiln::tok
