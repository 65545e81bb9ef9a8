#include "kiln/tokenizer/json_fields.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"

namespace kiln::tok {
namespace {

const char* kind_name(const Json& value) {
  return value.type_name();
}

}  // namespace

std::string child_where(const std::string& where, std::string_view key) {
  return where + (where.ends_with(": ") ? "" : ".") + std::string(key);
}

std::string child_where(const std::string& where, size_t index) {
  return where + "[" + std::to_string(index) + "]";
}

bool has_field(const Json& object, std::string_view key) {
  if (!object.is_object()) return false;
  const auto it = object.find(key);
  return it != object.end() && !it->is_null();
}

const Json& required_field(const Json& object, std::string_view key, const std::string& where) {
  if (!object.is_object()) throw Error(where + ": expected an object, found " + kind_name(object));
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) throw Error(child_where(where, key) + ": missing");
  return *it;
}

std::string string_field(const Json& object, std::string_view key, const std::string& where) {
  const Json& value = required_field(object, key, where);
  if (!value.is_string()) {
    throw Error(child_where(where, key) + ": expected a string, found " + kind_name(value));
  }
  return value.get<std::string>();
}

std::string string_field_or(const Json& object, std::string_view key, const std::string& where,
                            const std::string& fallback) {
  return has_field(object, key) ? string_field(object, key, where) : fallback;
}

bool bool_field_or(const Json& object, std::string_view key, const std::string& where,
                   bool fallback) {
  if (!has_field(object, key)) return fallback;
  const Json& value = object[std::string(key)];
  if (!value.is_boolean()) {
    throw Error(child_where(where, key) + ": expected true or false, found " + kind_name(value));
  }
  return value.get<bool>();
}

int64_t int_field(const Json& object, std::string_view key, const std::string& where) {
  const Json& value = required_field(object, key, where);
  if (!value.is_number_integer()) {
    throw Error(child_where(where, key) + ": expected an integer, found " + kind_name(value));
  }
  return value.get<int64_t>();
}

double number_field_or(const Json& object, std::string_view key, const std::string& where,
                       double fallback) {
  if (!has_field(object, key)) return fallback;
  const Json& value = object[std::string(key)];
  if (!value.is_number()) {
    throw Error(child_where(where, key) + ": expected a number, found " + kind_name(value));
  }
  return value.get<double>();
}

std::string type_field(const Json& object, const std::string& where) {
  return string_field(object, "type", where);
}

}  // namespace kiln::tok
