// The Jinja lexer and parser: template text -> syntax tree, with jinja2's whitespace rules
// for trim_blocks and lstrip_blocks and its operator precedence.
#include <charconv>
#include <set>

#include "kiln/chat/jinja_internal.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::jinja {
namespace {

constexpr int kMaxNesting = 200;  // nested blocks and expressions

struct Token {
  enum class Type : uint8_t {
    kText,
    kVarBegin,
    kVarEnd,
    kBlockBegin,
    kBlockEnd,
    kName,
    kString,
    kInt,
    kFloat,
    kOp,
    kEof
  };
  Type type;
  int line;
  std::string text;  // text, name, operator, decoded string literal
  int64_t int_value = 0;
  double float_value = 0;
};

// Python's str.isspace over ASCII (jinja2 strips with str.rstrip/lstrip).
bool is_space(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
}

class Lexer {
 public:
  Lexer(std::string source, const std::string& name) : src_(std::move(source)), name_(name) {}

  std::vector<Token> run() {
    size_t pos = 0;
    while (pos < src_.size()) {
      size_t tag = src_.find('{', pos);
      while (tag != std::string::npos && tag + 1 < src_.size() && src_[tag + 1] != '{' &&
             src_[tag + 1] != '%' && src_[tag + 1] != '#')
        tag = src_.find('{', tag + 1);
      if (tag == std::string::npos || tag + 1 >= src_.size()) {
        emit_text(pos, src_.size());
        break;
      }
      const char kind = src_[tag + 1];
      const char sign = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      size_t text_end = tag;
      if (sign == '-') {
        while (text_end > pos && is_space(src_[text_end - 1])) --text_end;
      } else if (kind != '{' && sign != '+') {
        // lstrip_blocks: spaces and tabs between the start of a line and a block tag.
        size_t j = tag;
        while (j > pos && (src_[j - 1] == ' ' || src_[j - 1] == '\t')) --j;
        if (j == 0 || src_[j - 1] == '\n') text_end = j;
      }
      emit_text(pos, text_end);
      size_t body = tag + 2 + (sign == '-' || sign == '+' ? 1 : 0);
      if (kind == '#') {
        const size_t close = src_.find("#}", body);
        if (close == std::string::npos) error(line_at(tag), "comment not closed ('#}' missing)");
        pos = after_tag(close + 2, close > body && src_[close - 1] == '-',
                        close > body && src_[close - 1] == '+', true);
        continue;
      }
      const bool block = kind == '%';
      push(block ? Token::Type::kBlockBegin : Token::Type::kVarBegin, tag, "");
      pos = lex_inside(body, block);
      if (block) pos = maybe_raw(pos);
    }
    push(Token::Type::kEof, src_.size(), "");
    return std::move(tokens_);
  }

 private:
  int line_at(size_t pos) {
    for (; line_pos_ < pos && line_pos_ < src_.size(); ++line_pos_)
      if (src_[line_pos_] == '\n') ++line_;
    return line_;
  }

  [[noreturn]] void error(int line, const std::string& message) {
    throw TemplateError(name_, line, message);
  }

  void push(Token::Type type, size_t pos, std::string text) {
    tokens_.push_back(Token{type, line_at(pos), std::move(text)});
  }

  void emit_text(size_t begin, size_t end) {
    if (end > begin) push(Token::Type::kText, begin, src_.substr(begin, end - begin));
  }

  // Position after a tag's closing delimiter, applying `-` (strip all whitespace) or
  // trim_blocks (drop one newline after block tags and comments, unless `+`).
  size_t after_tag(size_t pos, bool strip, bool plus, bool block) {
    if (strip) {
      while (pos < src_.size() && is_space(src_[pos])) ++pos;
    } else if (block && !plus && pos < src_.size() && src_[pos] == '\n') {
      ++pos;
    }
    return pos;
  }

  // Lexes the expression tokens of a {{ }} or {% %} tag starting at `pos`; returns the
  // position after the tag.
  size_t lex_inside(size_t pos, bool block) {
    const size_t open = pos;
    int depth = 0;  // open brackets: end delimiters inside them are operators
    while (true) {
      while (pos < src_.size() && is_space(src_[pos])) ++pos;
      if (pos >= src_.size())
        error(line_at(open),
              std::string("tag not closed ('") + (block ? "%}" : "}}") + "' missing)");
      const char end_char = block ? '%' : '}';
      if (depth == 0) {
        for (char sign : {'-', '+', '\0'}) {
          if (sign == '+' && !block) continue;  // "+}}" is not an end; "+%}" is
          size_t at = pos + (sign ? 1 : 0);
          if (sign && (pos >= src_.size() || src_[pos] != sign)) continue;
          if (at + 1 < src_.size() && src_[at] == end_char && src_[at + 1] == '}') {
            push(block ? Token::Type::kBlockEnd : Token::Type::kVarEnd, pos, "");
            return after_tag(at + 2, sign == '-', sign == '+', block);
          }
        }
      }
      const char c = src_[pos];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t end = pos;
        while (end < src_.size() &&
               (std::isalnum(static_cast<unsigned char>(src_[end])) || src_[end] == '_'))
          ++end;
        push(Token::Type::kName, pos, src_.substr(pos, end - pos));
        pos = end;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        pos = lex_number(pos);
      } else if (c == '\'' || c == '"') {
        pos = lex_string(pos);
      } else {
        static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*",
                                           "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                           "]",  "{",  "}",  ",",  ".",  ":",  "|"};
        bool found = false;
        for (const char* op : kOps) {
          const std::string_view o(op);
          if (src_.compare(pos, o.size(), o) == 0) {
            if (o == "(" || o == "[" || o == "{") ++depth;
            if ((o == ")" || o == "]" || o == "}") && depth > 0) --depth;
            push(Token::Type::kOp, pos, std::string(o));
            pos += o.size();
            found = true;
            break;
          }
        }
        if (!found) error(line_at(pos), std::string("unexpected character '") + c + "'");
      }
    }
  }

  // Numbers as jinja2 reads them: a float is digits with a fraction and/or an exponent
  // (leading zeros allowed); an integer is [1-9] digits or zeros only ("02" is 0 then 2).
  // Underscores may separate digits.
  size_t lex_number(size_t pos) {
    const size_t start = pos;
    const auto digits_end = [&](size_t p) {
      while (p < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[p])) ||
                                 (src_[p] == '_' && p + 1 < src_.size() &&
                                  std::isdigit(static_cast<unsigned char>(src_[p + 1])))))
        ++p;
      return p;
    };
    const auto is_digit_at = [&](size_t p) {
      return p < src_.size() && std::isdigit(static_cast<unsigned char>(src_[p]));
    };
    size_t end = digits_end(pos);
    bool is_float = false;
    if (end < src_.size() && src_[end] == '.' && is_digit_at(end + 1)) {
      is_float = true;
      end = digits_end(end + 1);
    }
    if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
      size_t q = end + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (is_digit_at(q)) {
        is_float = true;
        end = digits_end(q);
      }
    }
    if (!is_float && src_[start] == '0') {
      end = start + 1;
      while (end < src_.size() && (src_[end] == '0' || (src_[end] == '_' && end + 1 < src_.size() &&
                                                        src_[end + 1] == '0')))
        ++end;
    }
    std::string digits;
    for (size_t k = start; k < end; ++k)
      if (src_[k] != '_') digits += src_[k];
    Token token{is_float ? Token::Type::kFloat : Token::Type::kInt, line_at(start), digits};
    if (is_float) {
      token.float_value = std::strtod(digits.c_str(), nullptr);
    } else {
      const auto result =
          std::from_chars(digits.data(), digits.data() + digits.size(), token.int_value);
      if (result.ec != std::errc()) error(line_at(start), "integer literal too large");
    }
    tokens_.push_back(std::move(token));
    return end;
  }

  size_t lex_string(size_t pos) {
    const size_t start = pos;
    const char quote = src_[pos++];
    std::string out;
    while (true) {
      if (pos >= src_.size()) error(line_at(start), "unterminated string literal");
      const char c = src_[pos++];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos >= src_.size()) error(line_at(start), "unterminated string literal");
      const char e = src_[pos++];
      const auto hex = [&](int n) {
        if (pos + size_t(n) > src_.size()) error(line_at(start), "truncated \\x/\\u escape");
        uint32_t v = 0;
        for (int k = 0; k < n; ++k) {
          const char h = src_[pos++];
          v <<= 4;
          if (h >= '0' && h <= '9') {
            v |= uint32_t(h - '0');
          } else if (h >= 'a' && h <= 'f') {
            v |= uint32_t(h - 'a' + 10);
          } else if (h >= 'A' && h <= 'F') {
            v |= uint32_t(h - 'A' + 10);
          } else {
            error(line_at(start), "truncated \\x/\\u escape");
          }
        }
        if (v > 0x10FFFF) error(line_at(start), "invalid \\U escape (beyond U+10FFFF)");
        tok::append_utf8(out, char32_t(v));
      };
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '0':
          out += '\0';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\\':
        case '\'':
        case '"':
          out += e;
          break;
        case '\n':
          break;
        case 'x':
          hex(2);
          break;
        case 'u':
          hex(4);
          break;
        case 'U':
          hex(8);
          break;
        default:
          out += '\\';
          out += e;
      }
    }
    push(Token::Type::kString, start, std::move(out));
    return pos;
  }

  // After a block tag: `{% raw %}` takes everything up to `{% endraw %}` as text.
  size_t maybe_raw(size_t pos) {
    const size_t n = tokens_.size();
    if (n < 3 || tokens_[n - 1].type != Token::Type::kBlockEnd ||
        tokens_[n - 2].type != Token::Type::kName || tokens_[n - 2].text != "raw" ||
        tokens_[n - 3].type != Token::Type::kBlockBegin)
      return pos;
    const int line = tokens_[n - 3].line;
    tokens_.resize(n - 3);
    for (size_t search = pos;;) {
      const size_t tag = src_.find("{%", search);
      if (tag == std::string::npos) error(line, "'raw' block not closed ('{% endraw %}' missing)");
      size_t q = tag + 2;
      const bool strip_before = q < src_.size() && src_[q] == '-';
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) ++q;
      while (q < src_.size() && is_space(src_[q])) ++q;
      if (src_.compare(q, 6, "endraw") != 0) {
        search = tag + 2;
        continue;
      }
      q += 6;
      while (q < src_.size() && is_space(src_[q])) ++q;
      const bool strip_after = q < src_.size() && src_[q] == '-';
      const bool plus = q < src_.size() && src_[q] == '+';
      if (strip_after || plus) ++q;
      if (src_.compare(q, 2, "%}") != 0) {
        search = tag + 2;
        continue;
      }
      size_t text_end = tag;
      if (strip_before) {
        while (text_end > pos && is_space(src_[text_end - 1])) --text_end;
      } else {
        size_t j = tag;
        while (j > pos && (src_[j - 1] == ' ' || src_[j - 1] == '\t')) --j;
        if (j == 0 || src_[j - 1] == '\n') text_end = j;
      }
      emit_text(pos, text_end);
      return after_tag(q + 2, strip_after, plus, true);
    }
  }

  std::string src_;
  const std::string& name_;
  std::vector<Token> tokens_;
  size_t line_pos_ = 0;
  int line_ = 1;
};

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& name)
      : tokens_(std::move(tokens)), name_(name) {}

  Body parse() {
    Body body = parse_body({});
    if (peek().type != Token::Type::kEof) error(peek().line, "unexpected tag");
    return body;
  }

 private:
  struct DepthGuard {
    explicit DepthGuard(Parser& p) : parser(p) {
      if (++parser.depth_ > kMaxNesting)
        parser.error(parser.peek().line, "template nested too deeply");
    }
    ~DepthGuard() { --parser.depth_; }
    Parser& parser;
  };

  const Token& peek(size_t ahead = 0) const {
    return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)];
  }
  const Token& next() {
    const Token& t = peek();
    if (pos_ < tokens_.size() - 1) ++pos_;
    return t;
  }
  [[noreturn]] void error(int line, const std::string& message) const {
    throw TemplateError(name_, line, message);
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Token::Type::kEof:
        return "end of template";
      case Token::Type::kBlockEnd:
        return "end of statement block";
      case Token::Type::kVarEnd:
        return "end of print statement";
      case Token::Type::kName:
        return "'" + t.text + "'";
      case Token::Type::kOp:
        return "'" + t.text + "'";
      case Token::Type::kString:
        return "string";
      case Token::Type::kInt:
      case Token::Type::kFloat:
        return "number";
      default:
        return "template data";
    }
  }
  bool at_op(std::string_view op, size_t ahead = 0) const {
    return peek(ahead).type == Token::Type::kOp && peek(ahead).text == op;
  }
  bool at_name(std::string_view name, size_t ahead = 0) const {
    return peek(ahead).type == Token::Type::kName && peek(ahead).text == name;
  }
  void expect_op(std::string_view op) {
    if (!at_op(op))
      error(peek().line, "expected '" + std::string(op) + "', got " + describe(peek()));
    next();
  }
  std::string expect_name() {
    if (peek().type != Token::Type::kName)
      error(peek().line, "expected a name, got " + describe(peek()));
    return next().text;
  }
  void expect_block_end() {
    if (peek().type != Token::Type::kBlockEnd)
      error(peek().line, "expected end of statement block, got " + describe(peek()));
    next();
  }

  // Statements up to (not including) a block tag whose name is in `ends`.
  Body parse_body(const std::set<std::string>& ends) {
    DepthGuard guard(*this);
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.type == Token::Type::kEof) return body;
      if (t.type == Token::Type::kText) {
        auto node = make_node(Node::Kind::kText, t.line);
        node->text = t.text;
        body.push_back(std::move(node));
        next();
      } else if (t.type == Token::Type::kVarBegin) {
        next();
        auto node = make_node(Node::Kind::kOutput, t.line);
        node->expr = parse_tuple(true);
        if (peek().type != Token::Type::kVarEnd)
          error(peek().line, "expected end of print statement, got " + describe(peek()));
        next();
        body.push_back(std::move(node));
      } else if (t.type == Token::Type::kBlockBegin) {
        if (peek(1).type == Token::Type::kName && ends.count(peek(1).text)) return body;
        next();
        body.push_back(parse_statement());
      } else {
        error(t.line, "unexpected " + describe(t));
      }
    }
  }

  static NodePtr make_node(Node::Kind kind, int line) {
    auto node = std::make_unique<Node>();
    node->kind = kind;
    node->line = line;
    return node;
  }

  // Parses the body of a block up to one of `ends`; consumes `{% end` and returns its name.
  std::string parse_until(Body& body, const std::set<std::string>& ends, const std::string& tag,
                          int line) {
    body = parse_body(ends);
    if (peek().type == Token::Type::kEof) {
      std::string expected;
      for (const auto& e : ends) expected += (expected.empty() ? "'" : " or '") + e + "'";
      error(peek().line, "unexpected end of template: tag '" + tag + "' opened on line " +
                             std::to_string(line) + " needs " + expected);
    }
    next();  // block begin
    return next().text;
  }

  NodePtr parse_statement() {
    const Token& t = peek();
    if (t.type != Token::Type::kName) error(t.line, "expected a tag name, got " + describe(t));
    const std::string tag = t.text;
    const int line = t.line;
    next();
    if (tag == "if") return parse_if(line);
    if (tag == "for") return parse_for(line);
    if (tag == "set") return parse_set(line);
    if (tag == "macro") return parse_macro(line);
    if (tag == "break" || tag == "continue") {
      expect_block_end();
      if (loop_depth_ == 0) error(line, "'" + tag + "' outside of a loop");
      return make_node(tag == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, line);
    }
    if (tag == "filter") {
      auto node = make_node(Node::Kind::kFilterBlock, line);
      node->expr = parse_filter_chain(nullptr);
      expect_block_end();
      parse_until(node->body, {"endfilter"}, tag, line);
      expect_block_end();
      return node;
    }
    if (tag == "generation") {
      auto node = make_node(Node::Kind::kScope, line);
      expect_block_end();
      parse_until(node->body, {"endgeneration"}, tag, line);
      expect_block_end();
      return node;
    }
    if (tag.starts_with("end") || tag == "elif" || tag == "else")
      error(line, "unexpected '" + tag + "' (no open block it can end)");
    error(line, "unknown tag '" + tag + "'");
  }

  NodePtr parse_if(int line) {
    auto node = make_node(Node::Kind::kIf, line);
    ExprPtr cond = parse_tuple(false);
    while (true) {
      expect_block_end();
      Body body;
      const std::string end = parse_until(body, {"elif", "else", "endif"}, "if", line);
      node->branches.emplace_back(std::move(cond), std::move(body));
      if (end == "elif") {
        cond = parse_tuple(false);
        continue;
      }
      if (end == "else") {
        expect_block_end();
        Body else_body;
        parse_until(else_body, {"endif"}, "if", line);
        node->branches.emplace_back(nullptr, std::move(else_body));
      }
      expect_block_end();
      return node;
    }
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    const bool paren = at_op("(");
    if (paren) next();
    names.push_back(expect_name());
    while (at_op(",")) {
      next();
      if (peek().type != Token::Type::kName) break;
      names.push_back(expect_name());
    }
    if (paren) expect_op(")");
    return names;
  }

  NodePtr parse_for(int line) {
    auto node = make_node(Node::Kind::kFor, line);
    node->targets = parse_targets();
    if (!at_name("in")) error(peek().line, "expected 'in', got " + describe(peek()));
    next();
    node->expr = parse_tuple(true, /*allow_condexpr=*/false);
    if (at_name("if")) {
      next();
      node->cond = parse_expression(true);
    }
    if (at_name("recursive")) error(peek().line, "recursive loops are not supported");
    expect_block_end();
    ++loop_depth_;
    const std::string end = parse_until(node->body, {"endfor", "else"}, "for", line);
    --loop_depth_;
    if (end == "else") {
      expect_block_end();
      parse_until(node->else_body, {"endfor"}, "for", line);
    }
    expect_block_end();
    return node;
  }

  NodePtr parse_set(int line) {
    std::vector<std::string> targets;
    std::string attr;
    if (peek().type == Token::Type::kName && at_op(".", 1)) {
      targets.push_back(next().text);
      next();
      attr = expect_name();
    } else {
      targets = parse_targets();
    }
    if (at_op("=")) {
      next();
      auto node = make_node(Node::Kind::kSet, line);
      node->targets = std::move(targets);
      node->attr = std::move(attr);
      node->expr = parse_tuple(true);
      expect_block_end();
      return node;
    }
    if (targets.size() != 1 || !attr.empty()) error(line, "a block 'set' assigns a single name");
    auto node = make_node(Node::Kind::kSetBlock, line);
    node->targets = std::move(targets);
    if (at_op("|")) node->expr = parse_filter_chain(nullptr);
    expect_block_end();
    parse_until(node->body, {"endset"}, "set", line);
    expect_block_end();
    return node;
  }

  NodePtr parse_macro(int line) {
    auto node = make_node(Node::Kind::kMacro, line);
    node->text = expect_name();
    expect_op("(");
    while (!at_op(")")) {
      if (!node->params.empty()) expect_op(",");
      if (at_op(")")) break;
      std::string param = expect_name();
      ExprPtr fallback;
      if (at_op("=")) {
        next();
        fallback = parse_expression(true);
      }
      node->params.emplace_back(std::move(param), std::move(fallback));
    }
    next();
    expect_block_end();
    const int saved_loops = loop_depth_;
    loop_depth_ = 0;
    parse_until(node->body, {"endmacro"}, "macro", line);
    loop_depth_ = saved_loops;
    expect_block_end();
    return node;
  }

  static ExprPtr make_expr(Expr::Kind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  // An expression, or a tuple of them without parentheses ("a, b").
  ExprPtr parse_tuple(bool allow_tuple, bool allow_condexpr = true) {
    const int line = peek().line;
    ExprPtr first = parse_expression(allow_condexpr);
    if (!allow_tuple || !at_op(",")) return first;
    auto tuple = make_expr(Expr::Kind::kTuple, line);
    tuple->args.push_back(std::move(first));
    while (at_op(",")) {
      next();
      if (peek().type == Token::Type::kBlockEnd || peek().type == Token::Type::kVarEnd ||
          at_op(")"))
        break;
      tuple->args.push_back(parse_expression(allow_condexpr));
    }
    return tuple;
  }

  ExprPtr parse_expression(bool allow_condexpr) {
    DepthGuard guard(*this);
    if (!allow_condexpr) return parse_or();
    ExprPtr expr = parse_or();
    while (at_name("if")) {
      const int line = next().line;
      auto cond = make_expr(Expr::Kind::kCond, line);
      cond->args.push_back(std::move(expr));
      cond->args.push_back(parse_or());
      if (at_name("else")) {
        next();
        cond->args.push_back(parse_expression(true));
      } else {
        cond->args.push_back(nullptr);
      }
      expr = std::move(cond);
    }
    return expr;
  }

  ExprPtr binary(Expr::Kind kind, const std::string& op, ExprPtr left, ExprPtr right, int line) {
    auto e = make_expr(kind, line);
    e->name = op;
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (at_name("or")) {
      const int line = next().line;
      left = binary(Expr::Kind::kOr, "or", std::move(left), parse_and(), line);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (at_name("and")) {
      const int line = next().line;
      left = binary(Expr::Kind::kAnd, "and", std::move(left), parse_not(), line);
    }
    return left;
  }

  ExprPtr parse_not() {
    if (at_name("not")) {
      DepthGuard guard(*this);
      const int line = next().line;
      auto e = make_expr(Expr::Kind::kUnary, line);
      e->name = "not";
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr first = parse_math1();
    ExprPtr compare;
    while (true) {
      const Token& t = peek();
      std::string op;
      if (t.type == Token::Type::kOp && (t.text == "==" || t.text == "!=" || t.text == "<" ||
                                         t.text == "<=" || t.text == ">" || t.text == ">=")) {
        op = t.text;
        next();
      } else if (at_name("in")) {
        op = "in";
        next();
      } else if (at_name("not") && at_name("in", 1)) {
        op = "not in";
        next();
        next();
      } else {
        return compare ? std::move(compare) : std::move(first);
      }
      if (!compare) {
        compare = make_expr(Expr::Kind::kCompare, t.line);
        compare->args.push_back(std::move(first));
      }
      compare->ops.push_back(op);
      compare->args.push_back(parse_math1());
    }
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (at_op("+") || at_op("-")) {
      const Token& t = next();
      left = binary(Expr::Kind::kBinary, t.text, std::move(left), parse_concat(), t.line);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (at_op("~")) {
      const Token& t = next();
      left = binary(Expr::Kind::kBinary, "~", std::move(left), parse_math2(), t.line);
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
      const Token& t = next();
      left = binary(Expr::Kind::kBinary, t.text, std::move(left), parse_pow(), t.line);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (at_op("**")) {
      const Token& t = next();
      left = binary(Expr::Kind::kBinary, "**", std::move(left), parse_unary(true), t.line);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this);
    ExprPtr node;
    if (at_op("-") || at_op("+")) {
      const Token& t = next();
      node = make_expr(Expr::Kind::kUnary, t.line);
      node->name = t.text;
      node->args.push_back(parse_unary(false));
    } else {
      node = parse_postfix(parse_primary());
    }
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    switch (t.type) {
      case Token::Type::kName: {
        next();
        if (t.text == "true" || t.text == "True") return constant(Value::boolean(true), t.line);
        if (t.text == "false" || t.text == "False") return constant(Value::boolean(false), t.line);
        if (t.text == "none" || t.text == "None") return constant(Value::none(), t.line);
        auto e = make_expr(Expr::Kind::kName, t.line);
        e->name = t.text;
        return e;
      }
      case Token::Type::kString: {
        std::string text;
        const int line = t.line;
        while (peek().type == Token::Type::kString) text += next().text;
        return constant(Value::string(std::move(text)), line);
      }
      case Token::Type::kInt:
        next();
        return constant(Value::integer(t.int_value), t.line);
      case Token::Type::kFloat:
        next();
        return constant(Value::number(t.float_value), t.line);
      case Token::Type::kOp:
        if (t.text == "(") {
          next();
          if (at_op(")")) {
            next();
            auto e = make_expr(Expr::Kind::kTuple, t.line);
            return e;
          }
          ExprPtr first = parse_expression(true);
          if (at_op(")")) {
            next();
            return first;
          }
          auto tuple = make_expr(Expr::Kind::kTuple, t.line);
          tuple->args.push_back(std::move(first));
          while (at_op(",")) {
            next();
            if (at_op(")")) break;
            tuple->args.push_back(parse_expression(true));
          }
          expect_op(")");
          return tuple;
        }
        if (t.text == "[") {
          next();
          auto list = make_expr(Expr::Kind::kList, t.line);
          while (!at_op("]")) {
            if (!list->args.empty()) expect_op(",");
            if (at_op("]")) break;
            list->args.push_back(parse_expression(true));
          }
          next();
          return list;
        }
        if (t.text == "{") {
          next();
          auto dict = make_expr(Expr::Kind::kDict, t.line);
          while (!at_op("}")) {
            if (!dict->args.empty()) expect_op(",");
            if (at_op("}")) break;
            dict->args.push_back(parse_expression(true));
            expect_op(":");
            dict->args.push_back(parse_expression(true));
          }
          next();
          return dict;
        }
        break;
      default:
        break;
    }
    error(t.line, "unexpected " + describe(t));
  }

  static ExprPtr constant(Value v, int line) {
    auto e = make_expr(Expr::Kind::kConst, line);
    e->value = std::move(v);
    return e;
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (at_op(".")) {
        const int line = next().line;
        if (peek().type == Token::Type::kInt) {
          auto item = make_expr(Expr::Kind::kItem, line);
          item->args.push_back(std::move(node));
          item->args.push_back(constant(Value::integer(next().int_value), line));
          node = std::move(item);
          continue;
        }
        auto attr = make_expr(Expr::Kind::kAttr, line);
        attr->name = expect_name();
        attr->args.push_back(std::move(node));
        node = std::move(attr);
      } else if (at_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (at_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr target) {
    const int line = next().line;  // [
    std::vector<ExprPtr> parts(1);
    bool slice = false;
    if (!at_op(":")) parts[0] = parse_expression(true);
    while (at_op(":")) {
      slice = true;
      next();
      parts.emplace_back();
      if (!at_op(":") && !at_op("]")) parts.back() = parse_expression(true);
    }
    if (parts.size() > 3) error(line, "a slice has at most three parts");
    if (!slice && at_op(",")) {  // a[1, 2]: a tuple index
      auto tuple = make_expr(Expr::Kind::kTuple, line);
      tuple->args.push_back(std::move(parts[0]));
      while (at_op(",")) {
        next();
        if (at_op("]")) break;
        tuple->args.push_back(parse_expression(true));
      }
      parts[0] = std::move(tuple);
    }
    expect_op("]");
    auto e = make_expr(slice ? Expr::Kind::kSlice : Expr::Kind::kItem, line);
    e->args.push_back(std::move(target));
    parts.resize(slice ? 3 : 1);
    for (auto& part : parts) e->args.push_back(std::move(part));
    return e;
  }

  // Call arguments after '(': positional, then name=value.
  void parse_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!at_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (at_op(")")) break;
      if (peek().type == Token::Type::kName && at_op("=", 1)) {
        std::string key = next().text;
        next();
        e.keywords.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e.keywords.empty()) error(peek().line, "positional argument follows keyword argument");
        e.args.push_back(parse_expression(true));
      }
    }
    next();
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto call = make_expr(Expr::Kind::kCall, peek().line);
    call->args.push_back(std::move(callee));
    parse_args(*call);
    return call;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (at_op("|")) {
        node = parse_filter_chain(std::move(node));
      } else if (at_name("is")) {
        node = parse_test(std::move(node));
      } else if (at_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  // One or more `| name(args)` applied to `node` (null in filter blocks).
  ExprPtr parse_filter_chain(ExprPtr node) {
    bool first = true;
    while (at_op("|") || (first && !node)) {
      if (at_op("|")) next();
      first = false;
      const int line = peek().line;
      std::string name = expect_name();
      while (at_op(".")) {
        next();
        name += "." + expect_name();
      }
      if (!is_filter(name)) error(line, "no filter named '" + name + "'");
      auto filter = make_expr(Expr::Kind::kFilter, line);
      filter->name = std::move(name);
      filter->args.push_back(std::move(node));
      if (at_op("(")) parse_args(*filter);
      node = std::move(filter);
    }
    return node;
  }

  ExprPtr parse_test(ExprPtr node) {
    const int line = next().line;  // is
    auto test = make_expr(Expr::Kind::kTest, line);
    if (at_name("not")) {
      next();
      test->negated = true;
    }
    test->name = expect_name();
    while (at_op(".")) {
      next();
      test->name += "." + expect_name();
    }
    if (!is_test(test->name)) error(line, "no test named '" + test->name + "'");
    test->args.push_back(std::move(node));
    const Token& t = peek();
    if (at_op("(")) {
      parse_args(*test);
    } else if ((t.type == Token::Type::kName || t.type == Token::Type::kString ||
                t.type == Token::Type::kInt || t.type == Token::Type::kFloat || at_op("[") ||
                at_op("{")) &&
               !at_name("else") && !at_name("or") && !at_name("and")) {
      if (at_name("is")) error(t.line, "you cannot chain multiple tests with 'is'");
      test->args.push_back(parse_postfix(parse_primary()));
    }
    return test;
  }

  std::vector<Token> tokens_;
  const std::string& name_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse_template(std::string_view source, const std::string& name) {
  // As jinja2: every newline sequence becomes "\n", and one trailing newline is dropped.
  std::string text;
  text.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      text += '\n';
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      text += source[k];
    }
  }
  if (!text.empty() && text.back() == '\n') text.pop_back();
  Lexer lexer(std::move(text), name);
  Parser parser(lexer.run(), name);
  return parser.parse();
}

}  // namespace kiln::jinja
