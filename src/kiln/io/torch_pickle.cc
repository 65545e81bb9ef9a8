#include "kiln/io/torch_pickle.h"

#include <cstring>
#include <map>
#include <memory>
#include <optional>

#include "kiln/core/error.h"

namespace kiln {
namespace {

// The values a torch state-dict pickle can build. Containers are shared so that memoized
// dicts and lists are mutated in place, as the pickle protocol requires.
struct Value;
using ValuePtr = std::shared_ptr<Value>;
struct Value {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kBytes,
    kTuple,
    kList,
    kDict,
    kGlobal,
    kStorage,
    kTensor
  };
  Kind kind = Kind::kNone;
  int64_t integer = 0;                                 // kBool, kInt
  double real = 0;                                     // kFloat
  std::string text;                                    // kString, kBytes, kGlobal ("module.name")
  std::vector<ValuePtr> items;                         // kTuple, kList
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // kDict, in insertion order
  TorchTensorRecord tensor;                            // kStorage (key, dtype, numel), kTensor
};

ValuePtr make(Value::Kind kind) {
  auto v = std::make_shared<Value>();
  v->kind = kind;
  return v;
}

// torch.<Name>Storage classes and the element types they hold.
std::optional<DType> storage_dtype(const std::string& global) {
  static const std::map<std::string, DType> kStorages = {
      {"torch.FloatStorage", DType::F32}, {"torch.DoubleStorage", DType::F64},
      {"torch.HalfStorage", DType::F16},  {"torch.BFloat16Storage", DType::BF16},
      {"torch.LongStorage", DType::I64},  {"torch.IntStorage", DType::I32},
      {"torch.ShortStorage", DType::I16}, {"torch.CharStorage", DType::I8},
      {"torch.ByteStorage", DType::U8},   {"torch.BoolStorage", DType::BOOL}};
  auto it = kStorages.find(global);
  if (it == kStorages.end()) return std::nullopt;
  return it->second;
}

const char* const kOrderedDict = "collections.OrderedDict";
const char* const kRebuildTensorV2 = "torch._utils._rebuild_tensor_v2";
const char* const kRebuildTensor = "torch._utils._rebuild_tensor";
const char* const kRebuildParameter = "torch._utils._rebuild_parameter";

bool allowed_global(const std::string& name) {
  return name == kOrderedDict || name == kRebuildTensorV2 || name == kRebuildTensor ||
         name == kRebuildParameter || storage_dtype(name).has_value();
}

class Unpickler {
 public:
  Unpickler(const std::byte* data, size_t size, const std::string& where)
      : data_(reinterpret_cast<const uint8_t*>(data)), size_(size), where_(where) {}

  ValuePtr run();

 private:
  [[noreturn]] void fail(const std::string& message) const {
    throw Error(where_ + ": " + message + " (at byte " + std::to_string(pos_) + ")");
  }
  const uint8_t* take(size_t n) {
    if (n > size_ - pos_) fail("pickle ends in the middle of an opcode");
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  template <typename T>
  T read() {
    T value;
    std::memcpy(&value, take(sizeof(T)), sizeof(T));
    return value;
  }
  std::string read_string(size_t n) {
    return std::string(reinterpret_cast<const char*>(take(n)), n);
  }
  std::string read_line() {
    std::string line;
    for (;;) {
      char c = static_cast<char>(*take(1));
      if (c == '\n') return line;
      line += c;
    }
  }
  void push(ValuePtr v) { stack_.push_back(std::move(v)); }
  ValuePtr pop() {
    if (stack_.size() <= floor()) fail("pickle pops from an empty stack");
    ValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  ValuePtr& top() {
    if (stack_.size() <= floor()) fail("pickle reads an empty stack");
    return stack_.back();
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  // Pops everything above the latest MARK, and the mark.
  std::vector<ValuePtr> pop_mark() {
    if (marks_.empty()) fail("pickle has no MARK to pop to");
    size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }
  void push_int(int64_t v) {
    ValuePtr p = make(Value::Kind::kInt);
    p->integer = v;
    push(p);
  }
  void push_text(Value::Kind kind, std::string s) {
    ValuePtr p = make(kind);
    p->text = std::move(s);
    push(p);
  }
  void push_tuple(std::vector<ValuePtr> items) {
    ValuePtr p = make(Value::Kind::kTuple);
    p->items = std::move(items);
    push(p);
  }
  void push_global(const std::string& module, const std::string& name) {
    std::string full = module + "." + name;
    if (!allowed_global(full))
      fail("refusing to load global '" + full +
           "': a checkpoint pickle may only rebuild tensors, storages and OrderedDict");
    push_text(Value::Kind::kGlobal, full);
  }
  void set_items(const ValuePtr& dict, const std::vector<ValuePtr>& kv) {
    if (dict->kind != Value::Kind::kDict) fail("SETITEM on a value that is not a dict");
    for (size_t i = 0; i + 1 < kv.size(); i += 2) dict->entries.emplace_back(kv[i], kv[i + 1]);
  }
  void memo_put(uint64_t index) { memo_[index] = top(); }
  void memo_get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end())
      fail("pickle reads memo entry " + std::to_string(index) + " before it is set");
    push(it->second);
  }
  ValuePtr persistent_load(const ValuePtr& pid);
  ValuePtr reduce(const ValuePtr& callable, const ValuePtr& args);
  ValuePtr rebuild_tensor(const std::vector<ValuePtr>& args);
  int64_t as_int(const ValuePtr& v, const char* what) const {
    if (v->kind != Value::Kind::kInt) fail(std::string(what) + " is not an integer");
    return v->integer;
  }
  Shape as_int_tuple(const ValuePtr& v, const char* what) const {
    if (v->kind != Value::Kind::kTuple && v->kind != Value::Kind::kList)
      fail(std::string(what) + " is not a tuple");
    Shape out;
    for (const ValuePtr& item : v->items) out.push_back(as_int(item, what));
    return out;
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& where_;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, ValuePtr> memo_;
};

ValuePtr Unpickler::persistent_load(const ValuePtr& pid) {
  // torch.save's persistent id: ('storage', storage_type, key, location, numel).
  if (pid->kind != Value::Kind::kTuple || pid->items.size() != 5 ||
      pid->items[0]->kind != Value::Kind::kString || pid->items[0]->text != "storage")
    fail("persistent id is not a torch storage reference");
  const ValuePtr& type = pid->items[1];
  if (type->kind != Value::Kind::kGlobal || !storage_dtype(type->text))
    fail("persistent id names no storage type");
  if (pid->items[2]->kind != Value::Kind::kString) fail("storage key is not a string");
  ValuePtr storage = make(Value::Kind::kStorage);
  storage->tensor.dtype = *storage_dtype(type->text);
  storage->tensor.storage_key = pid->items[2]->text;
  storage->tensor.storage_numel = as_int(pid->items[4], "storage size");
  return storage;
}

ValuePtr Unpickler::rebuild_tensor(const std::vector<ValuePtr>& args) {
  if (args.size() < 4) fail("tensor rebuild with " + std::to_string(args.size()) + " arguments");
  if (args[0]->kind != Value::Kind::kStorage) fail("tensor rebuild without a storage");
  ValuePtr tensor = make(Value::Kind::kTensor);
  tensor->tensor = args[0]->tensor;
  tensor->tensor.storage_offset = as_int(args[1], "storage offset");
  tensor->tensor.shape = as_int_tuple(args[2], "tensor size");
  tensor->tensor.strides = as_int_tuple(args[3], "tensor stride");
  if (tensor->tensor.shape.size() != tensor->tensor.strides.size())
    fail("tensor size and stride have different lengths");
  return tensor;
}

ValuePtr Unpickler::reduce(const ValuePtr& callable, const ValuePtr& args) {
  if (callable->kind != Value::Kind::kGlobal) fail("REDUCE of a value that is not a global");
  if (args->kind != Value::Kind::kTuple) fail("REDUCE arguments are not a tuple");
  const std::string& name = callable->text;
  if (name == kOrderedDict) {
    if (!args->items.empty()) fail("OrderedDict called with arguments");
    return make(Value::Kind::kDict);
  }
  if (name == kRebuildTensorV2 || name == kRebuildTensor) return rebuild_tensor(args->items);
  if (name == kRebuildParameter) {
    if (args->items.empty() || args->items[0]->kind != Value::Kind::kTensor)
      fail("parameter rebuild without a tensor");
    return args->items[0];
  }
  fail("global '" + name + "' cannot be called");
}

ValuePtr Unpickler::run() {
  for (;;) {
    const uint8_t op = *take(1);
    switch (op) {
      case 0x80:
        take(1);
        break;  // PROTO
      case 0x95:
        take(8);
        break;  // FRAME
      case '.':
        return pop();  // STOP
      case '(':
        marks_.push_back(stack_.size());
        break;  // MARK
      case '}':
        push(make(Value::Kind::kDict));
        break;  // EMPTY_DICT
      case ']':
        push(make(Value::Kind::kList));
        break;  // EMPTY_LIST
      case ')':
        push_tuple({});
        break;  // EMPTY_TUPLE
      case 't':
        push_tuple(pop_mark());
        break;      // TUPLE
      case 0x85: {  // TUPLE1
        ValuePtr a = pop();
        push_tuple({a});
        break;
      }
      case 0x86: {  // TUPLE2
        ValuePtr b = pop(), a = pop();
        push_tuple({a, b});
        break;
      }
      case 0x87: {  // TUPLE3
        ValuePtr c = pop(), b = pop(), a = pop();
        push_tuple({a, b, c});
        break;
      }
      case 'l': {  // LIST
        ValuePtr list = make(Value::Kind::kList);
        list->items = pop_mark();
        push(list);
        break;
      }
      case 'd': {  // DICT
        ValuePtr dict = make(Value::Kind::kDict);
        set_items(dict, pop_mark());
        push(dict);
        break;
      }
      case 'q':
        memo_put(read<uint8_t>());
        break;  // BINPUT
      case 'r':
        memo_put(read<uint32_t>());
        break;  // LONG_BINPUT
      case 0x94:
        memo_put(memo_.size());
        break;  // MEMOIZE
      case 'h':
        memo_get(read<uint8_t>());
        break;  // BINGET
      case 'j':
        memo_get(read<uint32_t>());
        break;  // LONG_BINGET
      case 'J':
        push_int(read<int32_t>());
        break;  // BININT
      case 'K':
        push_int(read<uint8_t>());
        break;  // BININT1
      case 'M':
        push_int(read<uint16_t>());
        break;      // BININT2
      case 0x8a: {  // LONG1
        const uint8_t n = read<uint8_t>();
        if (n > 8) fail("integer wider than 64 bits");
        const uint8_t* bytes = take(n);
        uint64_t v = 0;
        for (uint8_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(bytes[i]) << (8 * i);
        if (n > 0 && n < 8 && (bytes[n - 1] & 0x80)) v |= ~uint64_t{0} << (8 * n);  // sign
        push_int(static_cast<int64_t>(v));
        break;
      }
      case 'N':
        push(make(Value::Kind::kNone));
        break;      // NONE
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        ValuePtr b = make(Value::Kind::kBool);
        b->integer = op == 0x88;
        push(b);
        break;
      }
      case 'G': {  // BINFLOAT (big-endian double)
        const uint8_t* bytes = take(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | bytes[i];
        ValuePtr f = make(Value::Kind::kFloat);
        std::memcpy(&f->real, &bits, 8);
        push(f);
        break;
      }
      case 0x8c:
        push_text(Value::Kind::kString, read_string(read<uint8_t>()));
        break;
      case 'X':
        push_text(Value::Kind::kString, read_string(read<uint32_t>()));
        break;
      case 0x8d:
        push_text(Value::Kind::kString, read_string(read<uint64_t>()));
        break;
      case 'U':
        push_text(Value::Kind::kBytes, read_string(read<uint8_t>()));
        break;
      case 'T':
        push_text(Value::Kind::kBytes, read_string(read<uint32_t>()));
        break;
      case 'C':
        push_text(Value::Kind::kBytes, read_string(read<uint8_t>()));
        break;
      case 'B':
        push_text(Value::Kind::kBytes, read_string(read<uint32_t>()));
        break;
      case 'c': {  // GLOBAL "module\nname\n"
        std::string module = read_line();
        push_global(module, read_line());
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        ValuePtr name = pop(), module = pop();
        if (module->kind != Value::Kind::kString || name->kind != Value::Kind::kString)
          fail("STACK_GLOBAL of values that are not strings");
        push_global(module->text, name->text);
        break;
      }
      case 'Q':
        push(persistent_load(pop()));
        break;     // BINPERSID
      case 'R': {  // REDUCE
        ValuePtr args = pop(), callable = pop();
        push(reduce(callable, args));
        break;
      }
      case 'b': {  // BUILD: only the attribute dict of a state dict (`_metadata`), dropped.
        pop();
        if (top()->kind != Value::Kind::kDict) fail("BUILD on a value that is not a dict");
        break;
      }
      case 's': {  // SETITEM
        ValuePtr value = pop(), key = pop();
        set_items(top(), {key, value});
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<ValuePtr> kv = pop_mark();
        set_items(top(), kv);
        break;
      }
      case 'a': {  // APPEND
        ValuePtr value = pop();
        if (top()->kind != Value::Kind::kList) fail("APPEND to a value that is not a list");
        top()->items.push_back(value);
        break;
      }
      case 'e': {  // APPENDS
        std::vector<ValuePtr> values = pop_mark();
        if (top()->kind != Value::Kind::kList) fail("APPENDS to a value that is not a list");
        for (auto& v : values) top()->items.push_back(v);
        break;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof(hex), "0x%02x", op);
        fail(std::string("unsupported pickle opcode ") + hex);
      }
    }
  }
}

void flatten(const Value& dict, const std::string& prefix, const std::string& where, int depth,
             std::vector<std::pair<std::string, TorchTensorRecord>>& out) {
  // A dict can contain itself through the memo; real state dicts nest a few levels.
  if (depth > 32) throw Error(where + ": dicts nested deeper than 32 levels");
  for (const auto& [key, value] : dict.entries) {
    if (key->kind != Value::Kind::kString) throw Error(where + ": a dict key is not a string");
    const std::string name = prefix + key->text;
    if (value->kind == Value::Kind::kTensor)
      out.emplace_back(name, value->tensor);
    else if (value->kind == Value::Kind::kDict)
      flatten(*value, name + ".", where, depth + 1, out);
    else
      throw Error(where + ": entry '" + name + "' is not a tensor");
  }
}

}  // namespace

std::vector<std::pair<std::string, TorchTensorRecord>> parse_torch_pickle(
    const std::byte* data, size_t size, const std::string& where) {
  ValuePtr root = Unpickler(data, size, where).run();
  if (root->kind != Value::Kind::kDict) throw Error(where + ": the pickle does not hold a dict");
  std::vector<std::pair<std::string, TorchTensorRecord>> out;
  flatten(*root, "", where, 0, out);
  return out;
}

}  // namespace kiln
