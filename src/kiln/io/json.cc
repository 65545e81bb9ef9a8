#include "kiln/io/json.h"

#include <fstream>
#include <sstream>

#include "kiln/core/error.h"

namespace kiln {

Json parse_json(const std::string& text, const std::string& what) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {  // parse errors, and numbers that overflow a double
    throw Error(what + ": malformed JSON: " + e.what());
  }
}

Json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return parse_json(buffer.str(), path);
}

void write_json_file(const std::string& path, const Json& value) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot open for writing");
  out << value.dump(2) << "\n";
  if (!out) throw Error(path + ": write failed");
}

}  // namespace kiln
