// Typed access to the fields of tokenizer.json objects; every error names the file and key
// (`where` is a path such as "tokenizer.json: pre_tokenizer.pretokenizers[1]").
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

namespace kiln {
using Json = nlohmann::json;
}

namespace kiln::tok {

// `where` extended by ".key" or "[index]".
std::string child_where(const std::string& where, std::string_view key);
std::string child_where(const std::string& where, size_t index);

// The member `key` of `object`; throws Error("<where>.<key>: missing") when absent or null.
const Json& required_field(const Json& object, std::string_view key, const std::string& where);
// True when `object` has a non-null member `key`.
bool has_field(const Json& object, std::string_view key);

std::string string_field(const Json& object, std::string_view key, const std::string& where);
std::string string_field_or(const Json& object, std::string_view key, const std::string& where,
                            const std::string& fallback);
bool bool_field_or(const Json& object, std::string_view key, const std::string& where,
                   bool fallback);
int64_t int_field(const Json& object, std::string_view key, const std::string& where);
double number_field_or(const Json& object, std::string_view key, const std::string& where,
                       double fallback);
// The member "type" of a component object.
std::string type_field(const Json& object, const std::string& where);

}  // namespace kiln::tok
