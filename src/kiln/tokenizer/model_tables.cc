#include "kiln/tokenizer/model_tables.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/json.h"

namespace kiln::tok {

void split_merge(std::string_view text, std::string& left, std::string& right,
                 const std::string& where) {
  const size_t space = text.find(' ');
  if (space == std::string_view::npos || text.find(' ', space + 1) != std::string_view::npos) {
    throw Error(where + ": expected \"left right\", found \"" + std::string(text) + "\"");
  }
  left.assign(text.substr(0, space));
  right.assign(text.substr(space + 1));
}

Json read_model_object(JsonReader& reader, ModelTables& tables, const std::string& where) {
  Json model = Json::object();
  reader.expect('{');
  if (reader.consume('}')) return model;
  std::string key;
  do {
    reader.read_string(key);
    reader.expect(':');
    if (key == "vocab") {
      tables.vocab = reader.skip_value();
    } else if (key == "merges") {
      tables.merges = reader.skip_value();
    } else {
      model[key] = parse_json(std::string(reader.skip_value()), child_where(where, key));
    }
  } while (reader.consume(','));
  reader.expect('}');
  return model;
}

}  // namespace kiln::tok
