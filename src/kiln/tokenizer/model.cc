#include "kiln/tokenizer/model.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/tokenizer/bpe.h"
#include "kiln/tokenizer/unigram.h"
#include "kiln/tokenizer/wordpiece.h"

namespace kiln::tok {

std::unique_ptr<Model> make_model(const Json& spec, const ModelTables& tables,
                                  const std::string& where) {
  // Old files omit the type of BPE models.
  const std::string type = has_field(spec, "type") ? type_field(spec, where) : "BPE";
  if (type == "BPE") return BpeModel::from_json(spec, tables, where);
  if (type == "Unigram") return UnigramModel::from_json(spec, tables, where);
  if (type == "WordPiece") return WordPieceModel::from_json(spec, tables, where);
  throw Error(child_where(where, "type") + ": unsupported model '" + type + "'");
}

}  // namespace kiln::tok
