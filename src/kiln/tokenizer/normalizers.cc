#include "kiln/tokenizer/normalizers.h"

#include <nlohmann/json.hpp>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/tokenizer/pattern.h"

namespace kiln::tok {
namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size() + text.size() / 4);
    pattern_.replace_all(text, content_, out);
    text = std::move(out);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// Prepends a string to non-empty text.
class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const Json& spec, const std::string& where) {
  if (spec.is_null()) return nullptr;
  const std::string type = type_field(spec, where);
  if (type == "Sequence") {
    const Json& list = required_field(spec, "normalizers", where);
    if (!list.is_array()) throw Error(child_where(where, "normalizers") + ": expected an array");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = make_normalizer(list[i], child_where(child_where(where, "normalizers"), i));
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Replace") {
    return std::make_unique<ReplaceNormalizer>(
        Pattern::from_json(required_field(spec, "pattern", where), child_where(where, "pattern")),
        string_field(spec, "content", where));
  }
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(string_field(spec, "prepend", where));
  }
  throw Error(child_where(where, "type") + ": unsupported normalizer '" + type + "'");
}

}  // namespace kiln::tok
