#include "kiln/io/npy.h"

#include <cstring>

#include "kiln/core/error.h"
#include "kiln/io/zip_archive.h"

namespace kiln {
namespace {

// The text after `'key':` in a .npy header dict, with leading spaces removed.
std::string header_value(const std::string& header, const std::string& key,
                         const std::string& where) {
  const size_t at = header.find("'" + key + "'");
  check(at != std::string::npos, where + ": .npy header has no '" + key + "'");
  size_t pos = header.find(':', at);
  check(pos != std::string::npos, where + ": malformed .npy header");
  ++pos;
  while (pos < header.size() && header[pos] == ' ') ++pos;
  return header.substr(pos);
}

DType npy_dtype(const std::string& descr, const std::string& where) {
  static const std::pair<const char*, DType> kTypes[] = {
      {"<f4", DType::F32}, {"<f2", DType::F16}, {"<f8", DType::F64},
      {"<i8", DType::I64}, {"<i4", DType::I32}, {"<i2", DType::I16},
      {"|i1", DType::I8},  {"|u1", DType::U8},  {"|b1", DType::BOOL}};
  for (const auto& [name, dtype] : kTypes)
    if (descr == name) return dtype;
  throw Error(where + ": unsupported .npy dtype '" + descr + "'");
}

}  // namespace

Tensor parse_npy(const std::byte* data, size_t size, const std::string& where) {
  check(size >= 10 && std::memcmp(data, "\x93NUMPY", 6) == 0, where + ": not a .npy file");
  const uint8_t major = static_cast<uint8_t>(data[6]);
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(data[8]) | static_cast<size_t>(data[9]) << 8;
    header_start = 10;
  } else {
    check(size >= 12 && (major == 2 || major == 3), where + ": unsupported .npy version");
    uint32_t len;
    std::memcpy(&len, data + 8, 4);
    header_len = len;
    header_start = 12;
  }
  check(header_len <= size - header_start, where + ": .npy header runs past the end");
  const std::string header(reinterpret_cast<const char*>(data) + header_start, header_len);
  const std::string descr_text = header_value(header, "descr", where);
  check(descr_text.size() > 2 && descr_text[0] == '\'', where + ": malformed .npy descr");
  const DType dtype = npy_dtype(descr_text.substr(1, descr_text.find('\'', 1) - 1), where);
  check(header_value(header, "fortran_order", where).rfind("False", 0) == 0,
        where + ": Fortran-order .npy arrays are not supported");
  const std::string shape_text = header_value(header, "shape", where);
  check(!shape_text.empty() && shape_text[0] == '(', where + ": malformed .npy shape");
  Shape shape;
  size_t pos = 1;
  while (pos < shape_text.size() && shape_text[pos] != ')') {
    if (std::isdigit(static_cast<unsigned char>(shape_text[pos]))) {
      size_t used = 0;
      shape.push_back(std::stoll(shape_text.substr(pos), &used));
      pos += used;
    } else {
      ++pos;
    }
  }
  Tensor out = Tensor::zeros(dtype, shape);
  const size_t data_start = header_start + header_len;
  check(out.nbytes() <= size - data_start,
        where + ": .npy data shorter than its shape " + shape_to_string(shape));
  if (out.nbytes() > 0) std::memcpy(out.mutable_raw(), data + data_start, out.nbytes());
  return out;
}

std::vector<std::pair<std::string, Tensor>> read_npz(const std::string& path) {
  ZipArchive zip = ZipArchive::open(path);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const std::string& name : zip.names()) {
    if (name.size() < 4 || name.substr(name.size() - 4) != ".npy") continue;
    out.emplace_back(name.substr(0, name.size() - 4),
                     parse_npy(zip.data(name), zip.entry(name).size, path + ": " + name));
  }
  return out;
}

}  // namespace kiln
