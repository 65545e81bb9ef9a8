// JSON for Kiln: nlohmann::json plus helpers that turn parse and type errors into
// kiln::Error messages naming the file and key.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace kiln {

using Json = nlohmann::json;

// Reads and parses a JSON file. Throws Error("<path>: cannot open ...") or
// Error("<path>: malformed JSON: ...").
Json read_json_file(const std::string& path);
// Parses `text`; `what` names the source in error messages.
Json parse_json(const std::string& text, const std::string& what);
// Writes `value` to `path` (pretty-printed, trailing newline). Throws Error on I/O failure.
void write_json_file(const std::string& path, const Json& value);

}  // namespace kiln
