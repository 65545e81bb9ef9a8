// The Jinja renderer: statements, expressions, and the globals of a HF chat-template
// environment. Filters, tests and methods are in jinja_builtins.cc.
#include <chrono>
#include <cmath>
#include <ctime>

#include "kiln/chat/jinja_builtins.h"

namespace kiln::jinja {
namespace {

constexpr int64_t kMaxRange = 100000;  // the sandbox's MAX_RANGE
// Nested evaluation (expressions within statements within macro calls) is bounded so that
// the C++ stack, not only the macro depth, stays small.
constexpr int kMaxEvalNesting = 1000;

enum class Flow { kNormal, kBreak, kContinue };

struct Scope {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Scope> parent;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get())
      for (const auto& [k, v] : s->vars)
        if (k == name) return &v;
    return nullptr;
  }
  void set(const std::string& name, Value value) {
    for (auto& [k, v] : vars)
      if (k == name) {
        v = std::move(value);
        return;
      }
    vars.emplace_back(name, std::move(value));
  }
};
using ScopePtr = std::shared_ptr<Scope>;

ScopePtr child_of(const ScopePtr& parent) {
  auto scope = std::make_shared<Scope>();
  scope->parent = parent;
  return scope;
}

class Renderer : public Context {
 public:
  Renderer(const Template::Impl& tpl, const RenderLimits& limits) : tpl_(tpl), limits_(limits) {}

  std::string run(const nlohmann::ordered_json& context) {
    try {
      auto globals = std::make_shared<Scope>();
      if (context.is_object())
        for (const auto& [key, item] : context.items()) globals->set(key, Value::from_json(item));
      top_ = child_of(globals);
      exec_body(tpl_.body, top_);
    } catch (const Failure& f) {
      throw TemplateError(tpl_.name, line_, f.message);
    }
    top_.reset();
    return std::move(out_);
  }

  // Context (for builtins).
  Value call(const Value& callee, Args& args) override {
    if (callee.kind != Value::Kind::kFunction)
      fail(callee.is_undefined() ? callee.s : "'" + type_name(callee) + "' object is not callable");
    return (*callee.fn)(args);
  }
  void check_size(size_t bytes) const override {
    if (bytes > limits_.max_output_bytes)
      fail("output larger than the limit of " + std::to_string(limits_.max_output_bytes) +
           " bytes");
  }

 private:
  void write(std::string_view text) {
    check_size(out_.size() + text.size());
    out_ += text;
  }

  Flow exec_body(const Body& body, const ScopePtr& scope) {
    for (const NodePtr& node : body) {
      const Flow flow = exec(*node, scope);
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  // Counts evaluation steps and nesting for the limits.
  struct Step {
    explicit Step(Renderer& r) : renderer(r) {
      if (++renderer.steps_ > renderer.limits_.max_steps)
        fail("more than " + std::to_string(renderer.limits_.max_steps) + " evaluation steps");
      if (++renderer.nesting_ > kMaxEvalNesting) {
        --renderer.nesting_;
        fail("evaluation nested deeper than " + std::to_string(kMaxEvalNesting) + " levels");
      }
    }
    ~Step() { --renderer.nesting_; }
    Step(const Step&) = delete;
    Step& operator=(const Step&) = delete;
    Renderer& renderer;
  };

  Flow exec(const Node& node, const ScopePtr& scope) {
    line_ = node.line;
    Step step(*this);
    switch (node.kind) {
      case Node::Kind::kText:
        write(node.text);
        return Flow::kNormal;
      case Node::Kind::kOutput:
        write(to_str(eval(*node.expr, scope)));
        return Flow::kNormal;
      case Node::Kind::kIf:
        for (const auto& [cond, body] : node.branches) {
          if (cond && !eval(*cond, scope).truthy()) continue;
          return exec_body(body, scope);
        }
        return Flow::kNormal;
      case Node::Kind::kFor:
        exec_for(node, scope);
        return Flow::kNormal;
      case Node::Kind::kSet: {
        Value value = eval(*node.expr, scope);
        line_ = node.line;
        if (!node.attr.empty()) {
          const Value* target = scope->find(node.targets[0]);
          if (!target || target->kind != Value::Kind::kDict ||
              target->dict->flavor != DictData::Flavor::kNamespace)
            fail("cannot assign attribute on non-namespace object");
          target->dict->set(node.attr, std::move(value));
        } else {
          assign(node.targets, std::move(value), *scope);
        }
        return Flow::kNormal;
      }
      case Node::Kind::kSetBlock: {
        Value value = Value::string(capture(node.body, scope));
        if (node.expr) value = eval_filter_chain(*node.expr, std::move(value), scope);
        scope->set(node.targets[0], std::move(value));
        return Flow::kNormal;
      }
      case Node::Kind::kMacro:
        scope->set(node.text, make_macro(node, scope));
        return Flow::kNormal;
      case Node::Kind::kBreak:
        return Flow::kBreak;
      case Node::Kind::kContinue:
        return Flow::kContinue;
      case Node::Kind::kFilterBlock: {
        Value value = Value::string(capture(node.body, scope));
        write(to_str(eval_filter_chain(*node.expr, std::move(value), scope)));
        return Flow::kNormal;
      }
      case Node::Kind::kScope:
        return exec_body(node.body, scope);
    }
    return Flow::kNormal;
  }

  std::string capture(const Body& body, const ScopePtr& scope) {
    std::string saved;
    std::swap(saved, out_);
    try {
      exec_body(body, scope);
    } catch (...) {
      std::swap(saved, out_);
      throw;
    }
    std::swap(saved, out_);
    return saved;
  }

  void assign(const std::vector<std::string>& targets, Value value, Scope& scope) {
    if (targets.size() == 1) {
      scope.set(targets[0], std::move(value));
      return;
    }
    std::vector<Value> items = iterate(value);
    if (items.size() != targets.size())
      fail(items.size() < targets.size()
               ? "not enough values to unpack (expected " + std::to_string(targets.size()) +
                     ", got " + std::to_string(items.size()) + ")"
               : "too many values to unpack (expected " + std::to_string(targets.size()) + ")");
    for (size_t k = 0; k < targets.size(); ++k) scope.set(targets[k], std::move(items[k]));
  }

  void exec_for(const Node& node, const ScopePtr& scope) {
    std::vector<Value> items = iterate(eval(*node.expr, scope));
    if (node.cond) {
      std::vector<Value> kept;
      for (Value& item : items) {
        auto probe = child_of(scope);
        assign(node.targets, item, *probe);
        if (eval(*node.cond, probe).truthy()) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    const int64_t length = int64_t(items.size());
    for (int64_t k = 0; k < length; ++k) {
      Step step(*this);
      auto body_scope = child_of(scope);
      Value loop = Value::make_dict();
      loop.dict->flavor = DictData::Flavor::kObject;
      auto& e = loop.dict->entries;
      e.emplace_back("index", Value::integer(k + 1));
      e.emplace_back("index0", Value::integer(k));
      e.emplace_back("revindex", Value::integer(length - k));
      e.emplace_back("revindex0", Value::integer(length - k - 1));
      e.emplace_back("first", Value::boolean(k == 0));
      e.emplace_back("last", Value::boolean(k == length - 1));
      e.emplace_back("length", Value::integer(length));
      e.emplace_back("depth", Value::integer(1));
      e.emplace_back("depth0", Value::integer(0));
      e.emplace_back("previtem",
                     k > 0 ? items[size_t(k - 1)] : Value::undefined("there is no previous item"));
      e.emplace_back("nextitem", k + 1 < length ? items[size_t(k + 1)]
                                                : Value::undefined("there is no next item"));
      e.emplace_back("cycle", Value::function([k](Args& args) {
                       if (args.positional.empty()) fail("no items for cycling given");
                       return args.positional[size_t(k) % args.positional.size()];
                     }));
      body_scope->set("loop", std::move(loop));
      assign(node.targets, items[size_t(k)], *body_scope);
      if (exec_body(node.body, body_scope) == Flow::kBreak) break;
    }
    if (length == 0) exec_body(node.else_body, child_of(scope));
  }

  Value make_macro(const Node& node, const ScopePtr& defining_scope) {
    const Node* macro = &node;
    std::weak_ptr<Scope> weak_scope = defining_scope;
    return Value::function([this, macro, weak_scope](Args& args) -> Value {
      ScopePtr parent = weak_scope.lock();
      if (!parent) parent = top_;
      if (++depth_ > limits_.max_depth) {
        --depth_;
        fail("macro calls nested deeper than " + std::to_string(limits_.max_depth));
      }
      struct Restore {
        Renderer& r;
        ~Restore() { --r.depth_; }
      } restore{*this};
      const int call_line = line_;
      auto scope = child_of(parent);
      const auto& params = macro->params;
      if (args.positional.size() > params.size())
        fail("macro '" + macro->text + "' takes not more than " + std::to_string(params.size()) +
             " argument(s)");
      std::vector<bool> bound(params.size(), false);
      for (size_t k = 0; k < args.positional.size(); ++k) {
        scope->set(params[k].first, args.positional[k]);
        bound[k] = true;
      }
      for (auto& [key, value] : args.keywords) {
        size_t k = 0;
        while (k < params.size() && params[k].first != key) ++k;
        if (k == params.size())
          fail("macro '" + macro->text + "' takes no keyword argument '" + key + "'");
        scope->set(key, value);
        bound[k] = true;
      }
      for (size_t k = 0; k < params.size(); ++k) {
        if (bound[k]) continue;
        scope->set(params[k].first,
                   params[k].second ? eval(*params[k].second, scope)
                                    : Value::undefined("'" + params[k].first + "' is undefined"));
      }
      Value result = Value::string(capture(macro->body, scope));
      line_ = call_line;
      return result;
    });
  }

  Value eval_filter_chain(const Expr& chain, Value input, const ScopePtr& scope) {
    // chain: filter(filter(null, ...), ...): apply innermost first.
    if (chain.args[0]) input = eval_filter_chain(*chain.args[0], std::move(input), scope);
    Args args = eval_args(chain, scope);
    line_ = chain.line;
    return apply_filter(*this, chain.name, std::move(input), args);
  }

  Args eval_args(const Expr& e, const ScopePtr& scope) {
    Args args;
    for (size_t k = 1; k < e.args.size(); ++k) args.positional.push_back(eval(*e.args[k], scope));
    for (const auto& [key, value] : e.keywords)
      args.keywords.emplace_back(key, eval(*value, scope));
    return args;
  }

  Value lookup(const std::string& name, const ScopePtr& scope) {
    if (const Value* v = scope->find(name)) return *v;
    if (name == "range") return Value::function(range);
    if (name == "namespace") return Value::function(make_namespace);
    if (name == "dict") return Value::function(make_dict);
    if (name == "raise_exception")
      return Value::function([this](Args& args) -> Value {
        throw RaisedError(tpl_.name,
                          args.positional.empty() ? std::string() : to_str(args.positional[0]));
      });
    if (name == "strftime_now") return Value::function(strftime_now);
    return Value::undefined("'" + name + "' is undefined");
  }

  static Value range(Args& args) {
    std::vector<int64_t> n;
    for (const Value& v : args.positional) {
      if (!v.is_integral())
        fail("'" + type_name(v) + "' object cannot be interpreted as an integer");
      n.push_back(v.as_int());
    }
    if (n.empty() || n.size() > 3) fail("range expected 1 to 3 arguments");
    const int64_t start = n.size() > 1 ? n[0] : 0, stop = n.size() > 1 ? n[1] : n[0];
    const int64_t step = n.size() > 2 ? n[2] : 1;
    if (step == 0) fail("range() arg 3 must not be zero");
    std::vector<Value> items;
    for (int64_t v = start; step > 0 ? v < stop : v > stop;) {
      if (int64_t(items.size()) >= kMaxRange)
        fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
      items.push_back(Value::integer(v));
      if (__builtin_add_overflow(v, step, &v)) break;
    }
    Value range = Value::make_list(std::move(items));
    range.list->repr = "range(" + std::to_string(start) + ", " + std::to_string(stop) +
                       (step != 1 ? ", " + std::to_string(step) : "") + ")";
    return range;
  }

  static Value make_namespace(Args& args) {
    Value ns = Value::make_dict();
    ns.dict->flavor = DictData::Flavor::kNamespace;
    for (const Value& v : args.positional) {
      if (!v.is_dict()) fail("namespace() takes mappings or keyword arguments");
      for (const auto& [key, item] : v.dict->entries) ns.dict->set(key, item);
    }
    for (auto& [key, item] : args.keywords) ns.dict->set(key, item);
    return ns;
  }

  static Value make_dict(Args& args) {
    Value d = Value::make_dict();
    for (auto& [key, item] : args.keywords) d.dict->set(key, item);
    return d;
  }

  static Value strftime_now(Args& args) {
    const std::string format = args.positional.empty() ? "" : to_str(args.positional[0]);
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    // strftime returns 0 both for an empty result and for a small buffer: grow, then give up.
    for (size_t size = format.size() * 4 + 64; size <= (size_t{1} << 20); size *= 4) {
      std::string out(size, '\0');
      const size_t n = std::strftime(out.data(), out.size(), format.c_str(), &local);
      if (n > 0 || size >= (size_t{1} << 20)) {
        out.resize(n);
        return Value::string(out);
      }
    }
    return Value::string("");
  }

  Value eval(const Expr& e, const ScopePtr& scope) {
    line_ = e.line;
    Step step(*this);
    switch (e.kind) {
      case Expr::Kind::kConst:
        return e.value;
      case Expr::Kind::kName:
        return lookup(e.name, scope);
      case Expr::Kind::kList:
      case Expr::Kind::kTuple: {
        std::vector<Value> items;
        for (const auto& arg : e.args) items.push_back(eval(*arg, scope));
        return Value::make_list(std::move(items), e.kind == Expr::Kind::kTuple);
      }
      case Expr::Kind::kDict: {
        Value d = Value::make_dict();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          Value key = eval(*e.args[k], scope);
          d.dict->set(key.is_string() ? key.s : to_str(key), eval(*e.args[k + 1], scope));
        }
        return d;
      }
      case Expr::Kind::kAttr: {
        Value object = eval(*e.args[0], scope);
        line_ = e.line;
        return get_attr(*this, object, e.name);
      }
      case Expr::Kind::kItem: {
        Value object = eval(*e.args[0], scope);
        Value key = eval(*e.args[1], scope);
        line_ = e.line;
        return get_item(*this, object, key);
      }
      case Expr::Kind::kSlice: {
        Value object = eval(*e.args[0], scope);
        Value parts[3];
        for (int k = 0; k < 3; ++k)
          parts[k] = e.args[size_t(k) + 1] ? eval(*e.args[size_t(k) + 1], scope) : Value::none();
        line_ = e.line;
        return slice(object, parts[0], parts[1], parts[2]);
      }
      case Expr::Kind::kCall: {
        Value callee = eval(*e.args[0], scope);
        Args args = eval_args(e, scope);
        line_ = e.line;
        return call(callee, args);
      }
      case Expr::Kind::kFilter: {
        Value input = eval(*e.args[0], scope);
        Args args = eval_args(e, scope);
        line_ = e.line;
        return apply_filter(*this, e.name, std::move(input), args);
      }
      case Expr::Kind::kTest: {
        Value input = eval(*e.args[0], scope);
        Args args = eval_args(e, scope);
        line_ = e.line;
        return Value::boolean(apply_test(*this, e.name, input, args) != e.negated);
      }
      case Expr::Kind::kUnary: {
        Value v = eval(*e.args[0], scope);
        line_ = e.line;
        if (e.name == "not") return Value::boolean(!v.truthy());
        if (!v.is_number())
          fail("bad operand type for unary " + e.name + ": '" + type_name(v) + "'");
        if (e.name == "+") return v.kind == Value::Kind::kBool ? Value::integer(v.b) : v;
        if (v.kind == Value::Kind::kFloat) return Value::number(-v.f);
        if (v.as_int() == INT64_MIN) fail("integer overflow");
        return Value::integer(-v.as_int());
      }
      case Expr::Kind::kAnd: {
        Value left = eval(*e.args[0], scope);
        return left.truthy() ? eval(*e.args[1], scope) : left;
      }
      case Expr::Kind::kOr: {
        Value left = eval(*e.args[0], scope);
        return left.truthy() ? left : eval(*e.args[1], scope);
      }
      case Expr::Kind::kCond:
        if (eval(*e.args[1], scope).truthy()) return eval(*e.args[0], scope);
        if (e.args[2]) return eval(*e.args[2], scope);
        return Value::undefined("the inline if-expression on line " + std::to_string(e.line) +
                                " evaluated to false and no else section was defined.");
      case Expr::Kind::kCompare: {
        Value left = eval(*e.args[0], scope);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = eval(*e.args[k + 1], scope);
          line_ = e.line;
          if (!binary_op(*this, e.ops[k], left, right).truthy()) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case Expr::Kind::kBinary: {
        Value left = eval(*e.args[0], scope);
        Value right = eval(*e.args[1], scope);
        line_ = e.line;
        return binary_op(*this, e.name, left, right);
      }
    }
    return Value::undefined();
  }

  const Template::Impl& tpl_;
  const RenderLimits& limits_;
  std::string out_;
  ScopePtr top_;
  int line_ = 1;
  int depth_ = 0;
  int nesting_ = 0;
  int64_t steps_ = 0;
};

}  // namespace

Template::Template(std::string_view source, std::string name) : impl_(std::make_unique<Impl>()) {
  impl_->name = std::move(name);
  impl_->body = parse_template(source, impl_->name);
}

Template::~Template() = default;

std::string Template::render(const nlohmann::ordered_json& context,
                             const RenderLimits& limits) const {
  Renderer renderer(*impl_, limits);
  return renderer.run(context);
}

}  // namespace kiln::jinja
