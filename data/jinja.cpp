#include "data/jinja.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <map>
#include <optional>

namespace ftune::data::jinja {
namespace {

// ---------------------------------------------------------------------------------------------
// Unicode helpers: Python strings are sequences of code points.

std::u32string Decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    char32_t cp;
    int n;
    if (c < 0x80) {
      cp = c, n = 1;
    } else if ((c >> 5) == 6) {
      cp = c & 0x1f, n = 2;
    } else if ((c >> 4) == 14) {
      cp = c & 0x0f, n = 3;
    } else {
      cp = c & 0x07, n = 4;
    }
    for (int k = 1; k < n && i + k < s.size(); ++k) {
      cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
    }
    out.push_back(cp);
    i += n;
  }
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

std::string Encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) AppendUtf8(c, &out);
  return out;
}

bool IsAscii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

// Python's str.isspace() (White_Space plus the information separators).
bool IsPySpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
         c == 0x202f || c == 0x205f || c == 0x3000;
}

int64_t CodePointLength(std::string_view s) {
  int64_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xc0) != 0x80;
  return n;
}

// Python's repr() of a float: the shortest digits that round-trip, in exponent form when the
// decimal exponent is < -4 or >= 16, with ".0" on integral values.
std::string FloatRepr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // d[.ddd]e[+-]XX
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::stoi(sci.substr(e + 1));
  bool neg = false;
  if (mant[0] == '-') neg = true, mant.erase(0, 1);
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits += c;
  }
  std::string out;
  if (exp < -4 || exp >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  } else if (exp < 0) {
    out = "0." + std::string(-exp - 1, '0') + digits;
  } else if (size_t(exp) + 1 >= digits.size()) {
    out = digits + std::string(exp + 1 - digits.size(), '0') + ".0";
  } else {
    out = digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
  }
  return neg ? "-" + out : out;
}

// Python's str.isprintable() for the characters chat data holds: false for controls (Cc),
// separators other than the space (Zs, Zl, Zp), the common format characters (Cf), surrogates
// and private use. (Unassigned code points, also unprintable for Python, are printed.)
bool IsPyPrintable(char32_t c) {
  if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad) return false;
  if (c == 0x1680 || (c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) ||
      (c >= 0x205f && c <= 0x2064) || (c >= 0x2066 && c <= 0x206f) || c == 0x3000) {
    return false;
  }
  if ((c >= 0x600 && c <= 0x605) || c == 0x61c || c == 0x6dd || c == 0x70f || c == 0x180e ||
      c == 0xfeff || (c >= 0xfff9 && c <= 0xfffb) || c == 0x110bd ||
      (c >= 0x1d173 && c <= 0x1d17a) || c == 0xe0001 || (c >= 0xe0020 && c <= 0xe007f)) {
    return false;
  }
  if ((c >= 0xd800 && c <= 0xf8ff) || c >= 0xf0000) return false;  // surrogates, private use
  return true;
}

// Python's repr() of a str.
std::string StringRepr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char q = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, q);
  for (char32_t c : Decode(s)) {
    if (c == static_cast<char32_t>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (!IsPyPrintable(c)) {
      if (c < 0x100) {
        out += fmt::format("\\x{:02x}", static_cast<unsigned>(c));
      } else if (c < 0x10000) {
        out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
      } else {
        out += fmt::format("\\U{:08x}", static_cast<unsigned>(c));
      }
    } else {
      AppendUtf8(c, &out);
    }
  }
  out += q;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Values.

struct Value;
struct Interp;
using List = std::vector<Value>;
struct Dict;
struct Args;
using NativeFn = std::function<Value(Interp&, Args&)>;

enum class Type {
  kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kTuple, kDict, kNamespace, kCallable
};

struct Callable {
  std::string name;
  NativeFn fn;
};

struct Value {
  Type type = Type::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                  // kString; kUndefined: the name that was undefined (for hints)
  std::shared_ptr<List> list;     // kList, kTuple
  std::shared_ptr<Dict> dict;     // kDict, kNamespace (mutable only through set ns.x)
  std::shared_ptr<Callable> call; // kCallable

  static Value Undefined(std::string hint = "") {
    Value v;
    v.s = std::move(hint);
    return v;
  }
  static Value None() {
    Value v;
    v.type = Type::kNone;
    return v;
  }
  static Value Bool(bool x) {
    Value v;
    v.type = Type::kBool;
    v.b = x;
    return v;
  }
  static Value Int(int64_t x) {
    Value v;
    v.type = Type::kInt;
    v.i = x;
    return v;
  }
  static Value Float(double x) {
    Value v;
    v.type = Type::kFloat;
    v.f = x;
    return v;
  }
  static Value Str(std::string x) {
    Value v;
    v.type = Type::kString;
    v.s = std::move(x);
    return v;
  }
  static Value MakeList(List items, Type t = Type::kList) {
    Value v;
    v.type = t;
    v.list = std::make_shared<List>(std::move(items));
    return v;
  }
  static Value MakeDict(std::shared_ptr<Dict> d, Type t = Type::kDict) {
    Value v;
    v.type = t;
    v.dict = std::move(d);
    return v;
  }
  static Value Fn(std::string name, NativeFn fn) {
    Value v;
    v.type = Type::kCallable;
    v.call = std::make_shared<Callable>(Callable{std::move(name), std::move(fn)});
    return v;
  }

  bool undefined() const { return type == Type::kUndefined; }
  bool is_seq() const { return type == Type::kList || type == Type::kTuple; }
  bool is_number() const {
    return type == Type::kInt || type == Type::kFloat || type == Type::kBool;
  }
};

struct Dict {
  std::vector<std::pair<Value, Value>> items;
  const Value* Find(const Value& key) const;
  Value* Find(const Value& key) { return const_cast<Value*>(std::as_const(*this).Find(key)); }
  void Set(Value key, Value v) {
    if (Value* old = Find(key)) {
      *old = std::move(v);
    } else {
      items.emplace_back(std::move(key), std::move(v));
    }
  }
};

std::shared_ptr<Dict> NewDict() { return std::make_shared<Dict>(); }

const char* TypeName(const Value& v) {
  switch (v.type) {
    case Type::kUndefined: return "Undefined";
    case Type::kNone: return "NoneType";
    case Type::kBool: return "bool";
    case Type::kInt: return "int";
    case Type::kFloat: return "float";
    case Type::kString: return "str";
    case Type::kList: return "list";
    case Type::kTuple: return "tuple";
    case Type::kDict: return "dict";
    case Type::kNamespace: return "Namespace";
    case Type::kCallable: return "function";
  }
  return "?";
}

bool Truthy(const Value& v) {
  switch (v.type) {
    case Type::kUndefined:
    case Type::kNone: return false;
    case Type::kBool: return v.b;
    case Type::kInt: return v.i != 0;
    case Type::kFloat: return v.f != 0;
    case Type::kString: return !v.s.empty();
    case Type::kList:
    case Type::kTuple: return !v.list->empty();
    case Type::kDict: return !v.dict->items.empty();
    case Type::kNamespace:
    case Type::kCallable: return true;
  }
  return false;
}

double AsDouble(const Value& v) {
  if (v.type == Type::kFloat) return v.f;
  if (v.type == Type::kBool) return v.b ? 1 : 0;
  return static_cast<double>(v.i);
}
int64_t AsInt(const Value& v) { return v.type == Type::kBool ? (v.b ? 1 : 0) : v.i; }

bool Equal(const Value& a, const Value& b);

const Value* Dict::Find(const Value& key) const {
  for (const auto& [k, v] : items) {
    if (Equal(k, key)) return &v;
  }
  return nullptr;
}

bool Equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.type == Type::kFloat || b.type == Type::kFloat) return AsDouble(a) == AsDouble(b);
    return AsInt(a) == AsInt(b);
  }
  if (a.is_seq() && b.is_seq()) {
    if (a.type != b.type || a.list->size() != b.list->size()) return false;
    for (size_t k = 0; k < a.list->size(); ++k) {
      if (!Equal((*a.list)[k], (*b.list)[k])) return false;
    }
    return true;
  }
  if (a.type != b.type) return false;
  switch (a.type) {
    case Type::kUndefined:
    case Type::kNone: return true;
    case Type::kString: return a.s == b.s;
    case Type::kDict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* o = b.dict->Find(k);
        if (!o || !Equal(v, *o)) return false;
      }
      return true;
    }
    case Type::kNamespace: return a.dict == b.dict;
    case Type::kCallable: return a.call == b.call;
    default: return false;
  }
}

std::string Repr(const Value& v);

// Python's str() as Jinja prints it ({{ x }}); undefined prints as "".
std::string ToStr(const Value& v) {
  switch (v.type) {
    case Type::kUndefined: return "";
    case Type::kNone: return "None";
    case Type::kBool: return v.b ? "True" : "False";
    case Type::kInt: return std::to_string(v.i);
    case Type::kFloat: return FloatRepr(v.f);
    case Type::kString: return v.s;
    case Type::kList:
    case Type::kTuple:
    case Type::kDict: return Repr(v);
    case Type::kNamespace:
      throw TemplateError("printing a namespace() object is not supported");
    case Type::kCallable:
      throw TemplateError(fmt::format("printing the function '{}' is not supported", v.call->name));
  }
  return "";
}

std::string Repr(const Value& v) {
  switch (v.type) {
    case Type::kString: return StringRepr(v.s);
    case Type::kUndefined:
      throw TemplateError("repr() of an undefined value is not supported");
    case Type::kList:
    case Type::kTuple: {
      std::string out = v.type == Type::kList ? "[" : "(";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        out += Repr((*v.list)[k]);
      }
      if (v.type == Type::kTuple && v.list->size() == 1) out += ",";
      return out + (v.type == Type::kList ? "]" : ")");
    }
    case Type::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, x] : v.dict->items) {
        if (!first) out += ", ";
        first = false;
        out += Repr(k) + ": " + Repr(x);
      }
      return out + "}";
    }
    default: return ToStr(v);
  }
}

Value FromJson(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null: return Value::None();
    case Json::value_t::boolean: return Value::Bool(j.get<bool>());
    case Json::value_t::number_integer: return Value::Int(j.get<int64_t>());
    case Json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      if (u > uint64_t(INT64_MAX)) throw TemplateError(fmt::format("integer {} is too large", u));
      return Value::Int(static_cast<int64_t>(u));
    }
    case Json::value_t::number_float: return Value::Float(j.get<double>());
    case Json::value_t::string: return Value::Str(j.get<std::string>());
    case Json::value_t::array: {
      List l;
      l.reserve(j.size());
      for (const auto& x : j) l.push_back(FromJson(x));
      return Value::MakeList(std::move(l));
    }
    case Json::value_t::object: {
      auto d = NewDict();
      d->items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) {
        d->items.emplace_back(Value::Str(it.key()), FromJson(it.value()));
      }
      return Value::MakeDict(std::move(d));
    }
    default: throw TemplateError("unsupported JSON value in the template's context");
  }
}

// json.dumps(v, ensure_ascii=False, indent=indent, separators=..., sort_keys=...)
struct JsonDumpOptions {
  int indent = -1;  // -1 = None
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};

void JsonString(const std::string& s, std::string* out, bool ensure_ascii = false) {
  *out += '"';
  for (char32_t c : Decode(s)) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default:
        if (c < 0x20 || (ensure_ascii && c >= 0x7f && c < 0x10000)) {
          if (c == 0x7f) {
            *out += static_cast<char>(c);
          } else {
            *out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
          }
        } else if (ensure_ascii && c >= 0x10000) {
          const unsigned v = static_cast<unsigned>(c) - 0x10000;
          *out += fmt::format("\\u{:04x}\\u{:04x}", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
        } else {
          AppendUtf8(c, out);
        }
    }
  }
  *out += '"';
}

bool Less(const Value& a, const Value& b);

void JsonDump(const Value& v, const JsonDumpOptions& o, int level, std::string* out) {
  auto newline = [&](int lvl) {
    if (o.indent >= 0) *out += "\n" + std::string(size_t(o.indent) * size_t(lvl), ' ');
  };
  switch (v.type) {
    case Type::kNone: *out += "null"; return;
    case Type::kBool: *out += v.b ? "true" : "false"; return;
    case Type::kInt: *out += std::to_string(v.i); return;
    case Type::kFloat:
      if (std::isnan(v.f)) {
        *out += "NaN";
      } else if (std::isinf(v.f)) {
        *out += v.f < 0 ? "-Infinity" : "Infinity";
      } else {
        *out += FloatRepr(v.f);
      }
      return;
    case Type::kString: JsonString(v.s, out, o.ensure_ascii); return;
    case Type::kList:
    case Type::kTuple: {
      if (v.list->empty()) {
        *out += "[]";
        return;
      }
      *out += "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) *out += o.item_sep;
        newline(level + 1);
        JsonDump((*v.list)[k], o, level + 1, out);
      }
      newline(level);
      *out += "]";
      return;
    }
    case Type::kDict: {
      if (v.dict->items.empty()) {
        *out += "{}";
        return;
      }
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (o.sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](auto* x, auto* y) { return Less(x->first, y->first); });
      }
      *out += "{";
      bool first = true;
      for (const auto* kv : items) {
        if (!first) *out += o.item_sep;
        first = false;
        newline(level + 1);
        const Value& k = kv->first;
        if (k.type == Type::kString) {
          JsonString(k.s, out, o.ensure_ascii);
        } else if (k.type == Type::kInt || k.type == Type::kFloat || k.type == Type::kBool ||
                   k.type == Type::kNone) {
          std::string ks;
          JsonDump(k, JsonDumpOptions{}, 0, &ks);
          JsonString(ks, out);
        } else {
          throw TemplateError(fmt::format("tojson: keys must be str, not {}", TypeName(k)));
        }
        *out += o.key_sep;
        JsonDump(kv->second, o, level + 1, out);
      }
      newline(level);
      *out += "}";
      return;
    }
    default:
      throw TemplateError(fmt::format("tojson: Object of type {} is not JSON serializable",
                                      TypeName(v)));
  }
}

bool Less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.type == Type::kFloat || b.type == Type::kFloat) return AsDouble(a) < AsDouble(b);
    return AsInt(a) < AsInt(b);
  }
  if (a.type == Type::kString && b.type == Type::kString) {
    return Decode(a.s) < Decode(b.s);  // code point order, as Python compares
  }
  if (a.is_seq() && a.type == b.type) {
    const size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      if (!Equal((*a.list)[k], (*b.list)[k])) return Less((*a.list)[k], (*b.list)[k]);
    }
    return a.list->size() < b.list->size();
  }
  throw TemplateError(fmt::format("'<' not supported between instances of '{}' and '{}'",
                                  TypeName(a), TypeName(b)));
}

// ---------------------------------------------------------------------------------------------
// Lexer.

enum class Tok {
  kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof
};

struct Token {
  Tok type;
  std::string value;  // text, name, string value, number text or operator
  size_t pos = 0;     // byte offset in the (newline-normalised) source
};

struct Source {
  std::string name;
  std::string text;
  std::string Where(size_t pos) const {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < pos && k < text.size(); ++k) {
      if (text[k] == '\n') {
        ++line;
        col = 1;
      } else if ((static_cast<unsigned char>(text[k]) & 0xc0) != 0x80) {
        ++col;
      }
    }
    return fmt::format("{}:{}:{}", name, line, col);
  }
  [[noreturn]] void Fail(size_t pos, const std::string& msg) const {
    if (msg.find("not supported") != std::string::npos) {
      throw TemplateUnsupported(Where(pos) + ": " + msg);
    }
    throw TemplateError(Where(pos) + ": " + msg);
  }
};

// Jinja's newline handling: splitlines() + "\n".join, which also drops one trailing newline
// (keep_trailing_newline is off in transformers' environment).
std::string NormalizeNewlines(std::string_view src) {
  std::string out;
  out.reserve(src.size());
  std::vector<std::string> lines(1);
  for (size_t k = 0; k < src.size(); ++k) {
    const unsigned char c = static_cast<unsigned char>(src[k]);
    size_t brk = 0;  // bytes of a line break at k
    if (c == '\r') {
      brk = (k + 1 < src.size() && src[k + 1] == '\n') ? 2 : 1;
    } else if (c == '\n' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e) {
      brk = 1;
    } else if (c == 0xc2 && k + 1 < src.size() && static_cast<unsigned char>(src[k + 1]) == 0x85) {
      brk = 2;
    } else if (c == 0xe2 && k + 2 < src.size() && static_cast<unsigned char>(src[k + 1]) == 0x80 &&
               (static_cast<unsigned char>(src[k + 2]) == 0xa8 ||
                static_cast<unsigned char>(src[k + 2]) == 0xa9)) {
      brk = 3;
    }
    if (brk) {
      lines.emplace_back();
      k += brk - 1;
    } else {
      lines.back() += src[k];
    }
  }
  if (lines.size() > 1 && lines.back().empty()) lines.pop_back();  // splitlines drops it
  for (size_t k = 0; k < lines.size(); ++k) {
    if (k) out += '\n';
    out += lines[k];
  }
  return out;
}

size_t RStripPySpace(const std::string& s) {  // length of s.rstrip()
  std::u32string u = Decode(s);
  size_t n = u.size();
  while (n > 0 && IsPySpace(u[n - 1])) --n;
  return Encode(u.substr(0, n)).size();
}

size_t LStripPySpaceAt(const std::string& s, size_t pos) {  // pos after leading whitespace
  while (pos < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[pos]);
    if (c < 0x80) {
      if (!IsPySpace(c)) break;
      ++pos;
      continue;
    }
    size_t n = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
    const std::u32string u = Decode(std::string_view(s).substr(pos, n));
    if (u.empty() || !IsPySpace(u[0])) break;
    pos += n;
  }
  return pos;
}

class Lexer {
 public:
  explicit Lexer(const Source& src) : src_(src), s_(src.text) {}

  std::vector<Token> Run() {
    bool line_starting = true;
    while (pos_ < s_.size()) {
      // Text up to the next tag.
      size_t tag = pos_;
      while (true) {
        tag = s_.find('{', tag);
        if (tag == std::string::npos || tag + 1 >= s_.size()) {
          tag = std::string::npos;
          break;
        }
        const char n = s_[tag + 1];
        if (n == '{' || n == '%' || n == '#') break;
        ++tag;
      }
      if (tag == std::string::npos) {
        Emit(Tok::kText, s_.substr(pos_), pos_);
        pos_ = s_.size();
        break;
      }
      std::string text = s_.substr(pos_, tag - pos_);
      const char kind = s_[tag + 1];
      const char sign = tag + 2 < s_.size() ? s_[tag + 2] : 0;
      if (sign == '-') {
        text.resize(RStripPySpace(text));
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: spaces/tabs between the line start and a block or comment tag.
        const size_t l_pos = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
        if (l_pos > 0 || line_starting) {
          if (text.find_first_not_of(" \t", l_pos) == std::string::npos) text.resize(l_pos);
        }
      }
      if (!text.empty()) Emit(Tok::kText, text, pos_);
      pos_ = tag + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      if (kind == '#') {
        line_starting = Comment(tag);
      } else if (kind == '%' && IsRaw()) {
        line_starting = Raw(tag);
      } else {
        line_starting = Tag(tag, kind == '{');
      }
    }
    Emit(Tok::kEof, "", s_.size());
    return std::move(tokens_);
  }

 private:
  void Emit(Tok t, std::string v, size_t pos) { tokens_.push_back({t, std::move(v), pos}); }

  // After a tag end at pos_ (just past the delimiter): whitespace control. Returns whether
  // what it consumed ends a line (Jinja's line_starting for the next lstrip).
  bool AfterEnd(char sign, bool block) {
    if (sign == '-') {
      const size_t end = LStripPySpaceAt(s_, pos_);
      const bool nl = end > pos_ && s_[end - 1] == '\n';
      pos_ = end;
      return nl;
    }
    if (sign != '+' && block && pos_ < s_.size() && s_[pos_] == '\n') {  // trim_blocks
      ++pos_;
      return true;
    }
    return false;
  }

  bool Comment(size_t begin) {
    const size_t end = s_.find("#}", pos_);
    if (end == std::string::npos) src_.Fail(begin, "unclosed comment: missing '#}'");
    const char sign = end > pos_ && (s_[end - 1] == '-' || s_[end - 1] == '+') ? s_[end - 1] : 0;
    pos_ = end + 2;
    return AfterEnd(sign, true);
  }

  bool IsRaw() const {
    size_t p = pos_;
    while (p < s_.size() && (s_[p] == ' ' || s_[p] == '\t' || s_[p] == '\n')) ++p;
    if (s_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < s_.size() && (s_[p] == ' ' || s_[p] == '\t' || s_[p] == '\n')) ++p;
    return s_.compare(p, 2, "%}") == 0 || s_.compare(p, 3, "-%}") == 0;
  }

  bool Raw(size_t begin) {
    size_t p = s_.find("%}", pos_);
    const char open_sign = s_[p - 1] == '-' ? '-' : 0;
    pos_ = p + 2;
    AfterEnd(open_sign, true);
    // {% endraw %}, with optional whitespace control
    size_t search = pos_;
    while (true) {
      const size_t t = s_.find("{%", search);
      if (t == std::string::npos) src_.Fail(begin, "unclosed raw block: missing '{% endraw %}'");
      size_t q = t + 2;
      const char sign = q < s_.size() && (s_[q] == '-' || s_[q] == '+') ? s_[q] : 0;
      if (sign) ++q;
      while (q < s_.size() && (s_[q] == ' ' || s_[q] == '\t' || s_[q] == '\n')) ++q;
      if (s_.compare(q, 6, "endraw") != 0) {
        search = t + 2;
        continue;
      }
      q += 6;
      while (q < s_.size() && (s_[q] == ' ' || s_[q] == '\t' || s_[q] == '\n')) ++q;
      char end_sign = 0;
      if (q < s_.size() && (s_[q] == '-' || s_[q] == '+')) end_sign = s_[q++];
      if (s_.compare(q, 2, "%}") != 0) src_.Fail(t, "expected '%}' after endraw");
      std::string body = s_.substr(pos_, t - pos_);
      if (sign == '-') body.resize(RStripPySpace(body));
      if (!body.empty()) Emit(Tok::kText, body, pos_);
      pos_ = q + 2;
      return AfterEnd(end_sign, true);
    }
  }

  // The tokens of one {{ }} or {% %} tag; pos_ is just past the opening delimiter.
  bool Tag(size_t begin, bool var) {
    Emit(var ? Tok::kVarBegin : Tok::kBlockBegin, "", begin);
    const char close = var ? '}' : '%';
    while (true) {
      while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' ||
                                  s_[pos_] == '\r')) {
        ++pos_;
      }
      if (pos_ >= s_.size()) {
        src_.Fail(begin, var ? "unclosed '{{': missing '}}'" : "unclosed '{%': missing '%}'");
      }
      char sign = 0;
      size_t p = pos_;
      if ((s_[p] == '-' || s_[p] == '+') && p + 1 < s_.size() && s_[p + 1] == close &&
          p + 2 < s_.size() && s_[p + 2] == '}') {
        sign = s_[p];
        ++p;
      }
      if (s_[p] == close && p + 1 < s_.size() && s_[p + 1] == '}') {
        Emit(var ? Tok::kVarEnd : Tok::kBlockEnd, "", p);
        pos_ = p + 2;
        return AfterEnd(sign, !var);
      }
      Expression();
    }
  }

  void Expression() {
    const size_t start = pos_;
    const char c = s_[pos_];
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      while (pos_ < s_.size() &&
             (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_')) {
        ++pos_;
      }
      Emit(Tok::kName, s_.substr(start, pos_ - start), start);
      return;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      Number();
      return;
    }
    if (c == '\'' || c == '"') {
      String();
      return;
    }
    static const char* kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%",
                                 "~",  "<",  ">",  "=",  "(",  ")",  "[", "]", "{", "}", ",",
                                 ".",  ":",  "|",  ";"};
    for (const char* op : kOps) {
      const size_t n = std::char_traits<char>::length(op);
      if (s_.compare(pos_, n, op) == 0) {
        Emit(Tok::kOp, op, start);
        pos_ += n;
        return;
      }
    }
    src_.Fail(pos_, fmt::format("unexpected character '{}'", c));
  }

  void Number() {
    const size_t start = pos_;
    auto digits = [&] {
      while (pos_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_])) ||
                                  (s_[pos_] == '_' && pos_ + 1 < s_.size() &&
                                   std::isdigit(static_cast<unsigned char>(s_[pos_ + 1]))))) {
        ++pos_;
      }
    };
    digits();
    bool is_float = false;
    if (pos_ + 1 < s_.size() && s_[pos_] == '.' &&
        std::isdigit(static_cast<unsigned char>(s_[pos_ + 1]))) {
      is_float = true;
      ++pos_;
      digits();
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      size_t p = pos_ + 1;
      if (p < s_.size() && (s_[p] == '+' || s_[p] == '-')) ++p;
      if (p < s_.size() && std::isdigit(static_cast<unsigned char>(s_[p]))) {
        is_float = true;
        pos_ = p;
        digits();
      }
    }
    std::string text;
    for (size_t k = start; k < pos_; ++k) {
      if (s_[k] != '_') text += s_[k];
    }
    Emit(is_float ? Tok::kFloat : Tok::kInt, text, start);
  }

  void String() {
    const size_t start = pos_;
    const char q = s_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) src_.Fail(start, "unterminated string literal");
      const char c = s_[pos_];
      if (c == q) {
        ++pos_;
        break;
      }
      if (c != '\\') {
        out += c;
        ++pos_;
        continue;
      }
      if (pos_ + 1 >= s_.size()) src_.Fail(start, "unterminated string literal");
      const char e = s_[pos_ + 1];
      pos_ += 2;
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '\n': break;  // line continuation
        case 'x':
        case 'u':
        case 'U': {
          const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          if (pos_ + n > s_.size()) src_.Fail(start, "truncated \\x/\\u escape");
          uint32_t cp = 0;
          for (size_t k = 0; k < n; ++k) {
            const char h = s_[pos_ + k];
            if (!std::isxdigit(static_cast<unsigned char>(h))) {
              src_.Fail(start, "invalid \\x/\\u escape");
            }
            cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                                     ? h - '0'
                                                     : std::tolower(h) - 'a' + 10);
          }
          if (cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) {
            src_.Fail(start, "escape names no Unicode scalar value");
          }
          AppendUtf8(cp, &out);
          pos_ += n;
          break;
        }
        default:
          if (e >= '0' && e <= '7') src_.Fail(start, "octal escapes are not supported");
          if (e == 'N') src_.Fail(start, "\\N{...} escapes are not supported");
          out += '\\';  // Python keeps unknown escapes as they are
          out += e;
      }
    }
    Emit(Tok::kString, std::move(out), start);
  }

  const Source& src_;
  const std::string& s_;
  size_t pos_ = 0;
  std::vector<Token> tokens_;
};

// ---------------------------------------------------------------------------------------------
// AST.

struct Node;
using NodePtr = std::unique_ptr<Node>;

enum class N {
  // expressions
  kLiteral, kName, kGetAttr, kGetItem, kSlice, kCall, kFilter, kTest, kUnary, kBinary,
  kCompare, kAnd, kOr, kNot, kCondExpr, kListLit, kTupleLit, kDictLit, kConcat,
  // statements
  kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue, kGeneration,
  kFilterBlock, kBody
};

struct Node {
  N kind;
  size_t pos = 0;
  std::string str;             // name, operator, attribute, filter/test name
  Value literal;               // kLiteral
  std::vector<NodePtr> kids;   // operands, body, ...
  std::vector<std::string> names;  // kw names of call args (parallel to kids[1..]; "" = positional)
  bool negate = false;         // kTest "is not"
  // kIf: kids = [cond, body, else]; kFor: targets in names, kids = [iter, cond|null, body, else]
};

NodePtr MakeNode(N kind, size_t pos, std::string str = "") {
  auto n = std::make_unique<Node>();
  n->kind = kind;
  n->pos = pos;
  n->str = std::move(str);
  return n;
}

class Parser {
 public:
  Parser(const Source& src, std::vector<Token> tokens) : src_(src), t_(std::move(tokens)) {}

  NodePtr ParseTemplate() {
    auto body = ParseBody({});
    if (Cur().type != Tok::kEof) src_.Fail(Cur().pos, "unexpected tag");
    return body;
  }

  std::vector<std::string> literals;
  bool has_generation = false;

 private:
  const Token& Cur() const { return t_[i_]; }
  const Token& Peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool IsOp(const char* op) const { return Cur().type == Tok::kOp && Cur().value == op; }
  bool IsName(const char* n) const { return Cur().type == Tok::kName && Cur().value == n; }
  void Expect(const char* op) {
    if (!IsOp(op)) src_.Fail(Cur().pos, fmt::format("expected '{}'", op));
    ++i_;
  }
  std::string ExpectName() {
    if (Cur().type != Tok::kName) src_.Fail(Cur().pos, "expected a name");
    return t_[i_++].value;
  }
  void ExpectBlockEnd() {
    if (Cur().type != Tok::kBlockEnd) src_.Fail(Cur().pos, "expected '%}'");
    ++i_;
  }

  // Statements up to (not including) a block tag whose keyword is in `ends`; i_ is left at that
  // tag's keyword (just past its {%).
  NodePtr ParseBody(const std::vector<std::string>& ends) {
    auto body = MakeNode(N::kBody, Cur().pos);
    while (true) {
      const Token& tk = Cur();
      if (tk.type == Tok::kEof) {
        if (!ends.empty()) {
          src_.Fail(tk.pos, fmt::format("unexpected end of template: missing '{{% {} %}}'",
                                        ends.front()));
        }
        return body;
      }
      if (tk.type == Tok::kText) {
        auto n = MakeNode(N::kText, tk.pos, tk.value);
        literals.push_back(tk.value);
        body->kids.push_back(std::move(n));
        ++i_;
      } else if (tk.type == Tok::kVarBegin) {
        ++i_;
        auto n = MakeNode(N::kOutput, tk.pos);
        n->kids.push_back(ParseTuple());
        if (Cur().type != Tok::kVarEnd) src_.Fail(Cur().pos, "expected '}}'");
        ++i_;
        body->kids.push_back(std::move(n));
      } else if (tk.type == Tok::kBlockBegin) {
        const Token& kw = Peek();
        if (kw.type != Tok::kName) src_.Fail(kw.pos, "expected a statement name after '{%'");
        if (std::find(ends.begin(), ends.end(), kw.value) != ends.end()) {
          ++i_;
          return body;
        }
        ++i_;
        body->kids.push_back(ParseStatement());
      } else {
        src_.Fail(tk.pos, "unexpected token");
      }
    }
  }

  NodePtr ParseStatement() {
    const Token kw = t_[i_++];
    const std::string& k = kw.value;
    if (k == "if") return ParseIf(kw.pos);
    if (k == "for") return ParseFor(kw.pos);
    if (k == "set") return ParseSet(kw.pos);
    if (k == "macro") return ParseMacro(kw.pos);
    if (k == "break" || k == "continue") {
      if (loop_depth_ == 0) src_.Fail(kw.pos, fmt::format("'{}' outside a for loop", k));
      ExpectBlockEnd();
      return MakeNode(k == "break" ? N::kBreak : N::kContinue, kw.pos);
    }
    if (k == "generation") {
      ExpectBlockEnd();
      has_generation = true;
      auto n = MakeNode(N::kGeneration, kw.pos);
      n->kids.push_back(ParseBody({"endgeneration"}));
      ++i_;
      ExpectBlockEnd();
      return n;
    }
    if (k == "filter") {
      auto n = MakeNode(N::kFilterBlock, kw.pos);
      auto f = ParseFilterCall(nullptr);
      ExpectBlockEnd();
      n->kids.push_back(std::move(f));
      n->kids.push_back(ParseBody({"endfilter"}));
      ++i_;
      ExpectBlockEnd();
      return n;
    }
    src_.Fail(kw.pos, fmt::format("the statement '{}' is not supported in chat templates", k));
  }

  NodePtr ParseIf(size_t pos) {
    auto n = MakeNode(N::kIf, pos);
    n->kids.push_back(ParseTuple());
    ExpectBlockEnd();
    n->kids.push_back(ParseBody({"elif", "else", "endif"}));
    const std::string kw = t_[i_++].value;
    if (kw == "elif") {
      auto inner = MakeNode(N::kBody, Cur().pos);
      inner->kids.push_back(ParseIf(t_[i_ - 1].pos));
      n->kids.push_back(std::move(inner));
      return n;
    }
    if (kw == "else") {
      ExpectBlockEnd();
      n->kids.push_back(ParseBody({"endif"}));
      ++i_;
    }
    ExpectBlockEnd();
    return n;
  }

  std::vector<std::string> ParseTargets() {
    std::vector<std::string> names;
    const bool paren = IsOp("(");
    if (paren) ++i_;
    names.push_back(ExpectName());
    while (IsOp(",")) {
      ++i_;
      if (Cur().type != Tok::kName) break;
      names.push_back(ExpectName());
    }
    if (paren) Expect(")");
    return names;
  }

  NodePtr ParseFor(size_t pos) {
    auto n = MakeNode(N::kFor, pos);
    n->names = ParseTargets();
    if (!IsName("in")) src_.Fail(Cur().pos, "expected 'in' in the for statement");
    ++i_;
    n->kids.push_back(ParseTuple(/*with_condexpr=*/false));
    if (IsName("if")) {
      ++i_;
      n->kids.push_back(ParseExpression());
    } else {
      n->kids.push_back(nullptr);
    }
    if (IsName("recursive")) src_.Fail(Cur().pos, "recursive for loops are not supported");
    ExpectBlockEnd();
    ++loop_depth_;
    n->kids.push_back(ParseBody({"else", "endfor"}));
    --loop_depth_;
    const std::string kw = t_[i_++].value;
    if (kw == "else") {
      ExpectBlockEnd();
      n->kids.push_back(ParseBody({"endfor"}));
      ++i_;
    } else {
      n->kids.push_back(nullptr);
    }
    ExpectBlockEnd();
    return n;
  }

  NodePtr ParseSet(size_t pos) {
    // {% set a = x %}, {% set a, b = x %}, {% set ns.attr = x %}, {% set a %}...{% endset %}
    std::vector<std::string> names;
    std::string attr;
    names.push_back(ExpectName());
    if (IsOp(".")) {
      ++i_;
      attr = ExpectName();
    } else {
      while (IsOp(",")) {
        ++i_;
        names.push_back(ExpectName());
      }
    }
    if (Cur().type == Tok::kBlockEnd || IsOp("|")) {
      if (!attr.empty() || names.size() != 1) src_.Fail(pos, "a block set takes one name");
      auto n = MakeNode(N::kSetBlock, pos, names[0]);
      NodePtr filter;
      if (IsOp("|")) {
        ++i_;
        filter = ParseFilterCall(nullptr);
      }
      ExpectBlockEnd();
      n->kids.push_back(ParseBody({"endset"}));
      n->kids.push_back(std::move(filter));
      ++i_;
      ExpectBlockEnd();
      return n;
    }
    Expect("=");
    auto n = MakeNode(N::kSet, pos, attr);
    n->names = std::move(names);
    n->kids.push_back(ParseTuple());
    ExpectBlockEnd();
    return n;
  }

  NodePtr ParseMacro(size_t pos) {
    auto n = MakeNode(N::kMacro, pos, ExpectName());
    // kids: [body, default_0, default_1, ...]; names = parameter names
    std::vector<NodePtr> defaults;
    Expect("(");
    while (!IsOp(")")) {
      n->names.push_back(ExpectName());
      if (IsOp("=")) {
        ++i_;
        defaults.push_back(ParseExpression());
      } else {
        if (!defaults.empty() && defaults.back()) {
          src_.Fail(Cur().pos, "non-default argument follows default argument");
        }
        defaults.push_back(nullptr);
      }
      if (!IsOp(",")) break;
      ++i_;
    }
    Expect(")");
    ExpectBlockEnd();
    ++macro_depth_;
    const int saved_loop = loop_depth_;
    loop_depth_ = 0;
    n->kids.push_back(ParseBody({"endmacro"}));
    loop_depth_ = saved_loop;
    --macro_depth_;
    ++i_;
    ExpectBlockEnd();
    for (auto& d : defaults) n->kids.push_back(std::move(d));
    return n;
  }

  // Expressions ------------------------------------------------------------------------------

  NodePtr ParseTuple(bool with_condexpr = true) {
    const size_t pos = Cur().pos;
    auto first = with_condexpr ? ParseExpression() : ParseOr();
    if (!IsOp(",")) return first;
    auto t = MakeNode(N::kTupleLit, pos);
    t->kids.push_back(std::move(first));
    while (IsOp(",")) {
      ++i_;
      if (Cur().type == Tok::kBlockEnd || Cur().type == Tok::kVarEnd || IsOp(")")) break;
      t->kids.push_back(with_condexpr ? ParseExpression() : ParseOr());
    }
    return t;
  }

  NodePtr ParseExpression() {
    auto expr = ParseOr();
    while (IsName("if")) {
      const size_t pos = Cur().pos;
      ++i_;
      auto cond = ParseOr();
      NodePtr other;
      if (IsName("else")) {
        ++i_;
        other = ParseExpression();
      }
      auto n = MakeNode(N::kCondExpr, pos);
      n->kids.push_back(std::move(cond));
      n->kids.push_back(std::move(expr));
      n->kids.push_back(std::move(other));
      expr = std::move(n);
    }
    return expr;
  }

  NodePtr ParseOr() {
    auto left = ParseAnd();
    while (IsName("or")) {
      auto n = MakeNode(N::kOr, Cur().pos);
      ++i_;
      n->kids.push_back(std::move(left));
      n->kids.push_back(ParseAnd());
      left = std::move(n);
    }
    return left;
  }

  NodePtr ParseAnd() {
    auto left = ParseNot();
    while (IsName("and")) {
      auto n = MakeNode(N::kAnd, Cur().pos);
      ++i_;
      n->kids.push_back(std::move(left));
      n->kids.push_back(ParseNot());
      left = std::move(n);
    }
    return left;
  }

  NodePtr ParseNot() {
    if (IsName("not")) {
      auto n = MakeNode(N::kNot, Cur().pos);
      ++i_;
      n->kids.push_back(ParseNot());
      return n;
    }
    return ParseCompare();
  }

  // a < b <= c ... is one node: kids = operands, names = operators (Python's chaining).
  NodePtr ParseCompare() {
    auto first = ParseMath1();
    NodePtr n;
    while (true) {
      std::string op;
      const size_t pos = Cur().pos;
      if (Cur().type == Tok::kOp && (Cur().value == "==" || Cur().value == "!=" ||
                                     Cur().value == "<" || Cur().value == "<=" ||
                                     Cur().value == ">" || Cur().value == ">=")) {
        op = Cur().value;
        ++i_;
      } else if (IsName("in")) {
        op = "in";
        ++i_;
      } else if (IsName("not") && Peek().type == Tok::kName && Peek().value == "in") {
        op = "notin";
        i_ += 2;
      } else {
        return n ? std::move(n) : std::move(first);
      }
      if (!n) {
        n = MakeNode(N::kCompare, pos);
        n->kids.push_back(std::move(first));
      }
      n->names.push_back(op);
      n->kids.push_back(ParseMath1());
    }
  }

  NodePtr Binary(NodePtr left, const std::string& op, size_t pos, NodePtr right) {
    auto n = MakeNode(N::kBinary, pos, op);
    n->kids.push_back(std::move(left));
    n->kids.push_back(std::move(right));
    return n;
  }

  NodePtr ParseMath1() {
    auto left = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      const Token op = t_[i_++];
      left = Binary(std::move(left), op.value, op.pos, ParseConcat());
    }
    return left;
  }

  NodePtr ParseConcat() {
    auto left = ParseMath2();
    if (!IsOp("~")) return left;
    auto n = MakeNode(N::kConcat, Cur().pos);
    n->kids.push_back(std::move(left));
    while (IsOp("~")) {
      ++i_;
      n->kids.push_back(ParseMath2());
    }
    return n;
  }

  NodePtr ParseMath2() {
    auto left = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token op = t_[i_++];
      left = Binary(std::move(left), op.value, op.pos, ParsePow());
    }
    return left;
  }

  NodePtr ParsePow() {
    auto left = ParseUnary(true);
    while (IsOp("**")) {
      const Token op = t_[i_++];
      left = Binary(std::move(left), op.value, op.pos, ParseUnary(true));
    }
    return left;
  }

  NodePtr ParseUnary(bool with_filter) {
    NodePtr node;
    if (IsOp("-") || IsOp("+")) {
      node = MakeNode(N::kUnary, Cur().pos, Cur().value);
      ++i_;
      node->kids.push_back(ParseUnary(false));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  NodePtr ParsePrimary() {
    const Token& tk = Cur();
    switch (tk.type) {
      case Tok::kName: {
        ++i_;
        const std::string& v = tk.value;
        if (v == "true" || v == "True") return Lit(Value::Bool(true), tk.pos);
        if (v == "false" || v == "False") return Lit(Value::Bool(false), tk.pos);
        if (v == "none" || v == "None") return Lit(Value::None(), tk.pos);
        return MakeNode(N::kName, tk.pos, v);
      }
      case Tok::kString: {
        std::string s;
        while (Cur().type == Tok::kString) s += t_[i_++].value;
        literals.push_back(s);
        return Lit(Value::Str(std::move(s)), tk.pos);
      }
      case Tok::kInt: {
        ++i_;
        int64_t v = 0;
        const auto r = std::from_chars(tk.value.data(), tk.value.data() + tk.value.size(), v);
        if (r.ec != std::errc()) src_.Fail(tk.pos, "integer literal out of range");
        return Lit(Value::Int(v), tk.pos);
      }
      case Tok::kFloat: {
        ++i_;
        return Lit(Value::Float(std::strtod(tk.value.c_str(), nullptr)), tk.pos);
      }
      case Tok::kOp: {
        if (tk.value == "(") {
          ++i_;
          if (IsOp(")")) {
            ++i_;
            return MakeNode(N::kTupleLit, tk.pos);
          }
          auto e = ParseTuple();
          Expect(")");
          return e;
        }
        if (tk.value == "[") {
          ++i_;
          auto n = MakeNode(N::kListLit, tk.pos);
          while (!IsOp("]")) {
            n->kids.push_back(ParseExpression());
            if (!IsOp(",")) break;
            ++i_;
          }
          Expect("]");
          return n;
        }
        if (tk.value == "{") {
          ++i_;
          auto n = MakeNode(N::kDictLit, tk.pos);
          while (!IsOp("}")) {
            n->kids.push_back(ParseExpression());
            Expect(":");
            n->kids.push_back(ParseExpression());
            if (!IsOp(",")) break;
            ++i_;
          }
          Expect("}");
          return n;
        }
        break;
      }
      default: break;
    }
    src_.Fail(tk.pos, tk.type == Tok::kVarEnd || tk.type == Tok::kBlockEnd
                          ? std::string("expected an expression")
                          : fmt::format("unexpected '{}'", tk.value));
  }

  NodePtr Lit(Value v, size_t pos) {
    auto n = MakeNode(N::kLiteral, pos);
    n->literal = std::move(v);
    return n;
  }

  NodePtr ParsePostfix(NodePtr node) {
    while (true) {
      if (IsOp(".")) {
        const size_t pos = Cur().pos;
        ++i_;
        if (Cur().type == Tok::kInt) {
          auto n = MakeNode(N::kGetItem, pos);
          n->kids.push_back(std::move(node));
          n->kids.push_back(Lit(Value::Int(std::stoll(Cur().value)), Cur().pos));
          ++i_;
          node = std::move(n);
          continue;
        }
        auto n = MakeNode(N::kGetAttr, pos, ExpectName());
        n->kids.push_back(std::move(node));
        node = std::move(n);
      } else if (IsOp("[")) {
        node = ParseSubscript(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  NodePtr ParseSubscript(NodePtr node) {
    const size_t pos = Cur().pos;
    Expect("[");
    // [a], [a:b], [a:b:c] with any part empty
    NodePtr parts[3];
    int colons = 0;
    if (!IsOp(":")) parts[0] = ParseExpression();
    while (IsOp(":") && colons < 2) {
      ++i_;
      ++colons;
      if (!IsOp(":") && !IsOp("]")) parts[colons] = ParseExpression();
    }
    Expect("]");
    if (colons == 0) {
      auto n = MakeNode(N::kGetItem, pos);
      n->kids.push_back(std::move(node));
      n->kids.push_back(std::move(parts[0]));
      return n;
    }
    auto n = MakeNode(N::kSlice, pos);
    n->kids.push_back(std::move(node));
    for (auto& p : parts) n->kids.push_back(std::move(p));
    return n;
  }

  // Call arguments into n->kids[first..] with n->names.
  void ParseArgs(Node* n) {
    Expect("(");
    while (!IsOp(")")) {
      if (IsOp("*") || IsOp("**")) src_.Fail(Cur().pos, "*args and **kwargs are not supported");
      if (Cur().type == Tok::kName && Peek().type == Tok::kOp && Peek().value == "=") {
        n->names.push_back(Cur().value);
        i_ += 2;
      } else {
        if (!n->names.empty() && !n->names.back().empty()) {
          src_.Fail(Cur().pos, "positional argument follows keyword argument");
        }
        n->names.push_back("");
      }
      n->kids.push_back(ParseExpression());
      if (!IsOp(",")) break;
      ++i_;
    }
    Expect(")");
  }

  NodePtr ParseCall(NodePtr callee) {
    auto n = MakeNode(N::kCall, Cur().pos);
    n->kids.push_back(std::move(callee));
    ParseArgs(n.get());
    return n;
  }

  // `name[(args)]` after '|'; kids[0] = the filtered value (may be null for filter blocks).
  NodePtr ParseFilterCall(NodePtr value) {
    const size_t pos = Cur().pos;
    std::string name = ExpectName();
    while (IsOp(".")) {
      ++i_;
      name += "." + ExpectName();
    }
    auto n = MakeNode(N::kFilter, pos, name);
    n->kids.push_back(std::move(value));
    if (IsOp("(")) ParseArgs(n.get());
    return n;
  }

  NodePtr ParseFilterExpr(NodePtr node) {
    while (true) {
      if (IsOp("|")) {
        ++i_;
        node = ParseFilterCall(std::move(node));
      } else if (IsName("is")) {
        const size_t pos = Cur().pos;
        ++i_;
        bool negate = false;
        if (IsName("not")) {
          negate = true;
          ++i_;
        }
        std::string name = ExpectName();
        while (IsOp(".")) {
          ++i_;
          name += "." + ExpectName();
        }
        auto n = MakeNode(N::kTest, pos, name);
        n->negate = negate;
        n->kids.push_back(std::move(node));
        if (IsOp("(")) {
          ParseArgs(n.get());
        } else if ((Cur().type == Tok::kName || Cur().type == Tok::kString ||
                    Cur().type == Tok::kInt || Cur().type == Tok::kFloat || IsOp("[") ||
                    IsOp("{")) &&
                   !(IsName("else") || IsName("or") || IsName("and") || IsName("if"))) {
          auto arg = ParsePostfix(ParsePrimary());
          n->names.push_back("");
          n->kids.push_back(std::move(arg));
        }
        node = std::move(n);
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  const Source& src_;
  std::vector<Token> t_;
  size_t i_ = 0;
  int loop_depth_ = 0;
  int macro_depth_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Evaluation.

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  size_t at = 0;  // source position of the call, for errors

  // Positional index `k` or keyword `name`, else `def`.
  Value Get(size_t k, const char* name, Value def = Value::Undefined()) {
    for (auto& [n, v] : kw) {
      if (n == name) return v;
    }
    return k < pos.size() ? pos[k] : def;
  }
  bool Has(size_t k, const char* name) const {
    for (auto& [n, v] : kw) {
      if (n == name) return true;
    }
    return k < pos.size();
  }
};

struct Frame {
  Frame* parent = nullptr;
  std::vector<std::pair<std::string, Value>> vars;
  const Value* Lookup(const std::string& name) const {
    for (const Frame* f = this; f; f = f->parent) {
      for (auto it = f->vars.rbegin(); it != f->vars.rend(); ++it) {
        if (it->first == name) return &it->second;
      }
    }
    return nullptr;
  }
  void Set(const std::string& name, Value v) {
    for (auto& [n, x] : vars) {
      if (n == name) {
        x = std::move(v);
        return;
      }
    }
    vars.emplace_back(name, std::move(v));
  }
};

enum class Flow { kNormal, kBreak, kContinue };

struct Interp {
  const Source& src;
  const RenderOptions& options;
  RenderResult* result = nullptr;  // the root output (generation spans are tracked there)
  std::string* out = nullptr;      // where text goes now (the root or a capture)
  int depth = 0;

  [[noreturn]] void Fail(size_t pos, const std::string& msg) const { src.Fail(pos, msg); }

  Value Eval(const Node& n, Frame& f);
  Flow Exec(const Node& n, Frame& f);
  Flow ExecBody(const Node& body, Frame& f) {
    for (const auto& k : body.kids) {
      const Flow fl = Exec(*k, f);
      if (fl != Flow::kNormal) return fl;
    }
    return Flow::kNormal;
  }
  // The output of `body` as a string (macros, set blocks, filter blocks).
  std::string CaptureNoSpans(const Node& body, Frame& f, size_t pos) {
    std::string buf;
    std::string* saved = out;
    out = &buf;
    const Flow fl = ExecBody(body, f);
    out = saved;
    if (fl != Flow::kNormal) Fail(pos, "break/continue outside their loop");
    return buf;
  }
  // Errors thrown below a node without a location get the node's.
  template <class F>
  auto At(size_t pos, F&& fn) -> decltype(fn()) {
    try {
      return fn();
    } catch (const TemplateRaised&) {
      throw;
    } catch (const TemplateError& e) {
      const std::string msg = e.what();
      if (msg.compare(0, src.name.size() + 1, src.name + ":") == 0) throw;
      Fail(pos, msg);
    }
  }
  std::string ToStrAt(const Value& v, size_t pos) {
    return At(pos, [&] { return ToStr(v); });
  }

  Value Filter(const std::string& name, Value v, Args& a, size_t pos);
  bool Test(const std::string& name, const Value& v, Args& a, size_t pos);
  Value GetAttr(const Value& obj, const std::string& name, size_t pos);
  Value GetItem(const Value& obj, const Value& key, size_t pos);
  Value Call(const Value& fn, Args& a, size_t pos);
  Args EvalArgs(const Node& n, size_t first, Frame& f);
};

std::vector<Value> Iterate(const Value& v, Interp& in, size_t pos) {
  switch (v.type) {
    case Type::kUndefined: return {};
    case Type::kList:
    case Type::kTuple: return *v.list;
    case Type::kDict: {
      std::vector<Value> keys;
      for (const auto& [k, x] : v.dict->items) keys.push_back(k);
      return keys;
    }
    case Type::kString: {
      std::vector<Value> chars;
      for (char32_t c : Decode(v.s)) chars.push_back(Value::Str(Encode(std::u32string(1, c))));
      return chars;
    }
    default: in.Fail(pos, fmt::format("'{}' object is not iterable", TypeName(v)));
  }
}

int64_t Length(const Value& v, Interp& in, size_t pos) {
  switch (v.type) {
    case Type::kUndefined: return 0;
    case Type::kString: return CodePointLength(v.s);
    case Type::kList:
    case Type::kTuple: return int64_t(v.list->size());
    case Type::kDict: return int64_t(v.dict->items.size());
    default: in.Fail(pos, fmt::format("object of type '{}' has no len()", TypeName(v)));
  }
}

void RequireDefined(const Value& v, Interp& in, size_t pos, const char* what) {
  if (v.undefined()) {
    in.Fail(pos, v.s.empty() ? fmt::format("{} of an undefined value", what)
                             : fmt::format("'{}' is undefined", v.s));
  }
}

int64_t CheckedInt(bool overflow, int64_t r, Interp& in, size_t pos) {
  if (overflow) in.Fail(pos, "integer overflow (Python integers are unbounded; ftune's are 64-bit)");
  return r;
}

Value Arith(const std::string& op, const Value& a, const Value& b, Interp& in, size_t pos) {
  RequireDefined(a, in, pos, "arithmetic");
  RequireDefined(b, in, pos, "arithmetic");
  if (op == "+") {
    if (a.type == Type::kString && b.type == Type::kString) return Value::Str(a.s + b.s);
    if (a.is_seq() && a.type == b.type) {
      List l = *a.list;
      l.insert(l.end(), b.list->begin(), b.list->end());
      return Value::MakeList(std::move(l), a.type);
    }
  }
  if (op == "*" && (a.type == Type::kString || a.is_seq() || b.type == Type::kString ||
                    b.is_seq())) {
    const Value& seq = (a.type == Type::kString || a.is_seq()) ? a : b;
    const Value& cnt = (&seq == &a) ? b : a;
    if (cnt.type != Type::kInt && cnt.type != Type::kBool) {
      in.Fail(pos, fmt::format("can't multiply sequence by non-int of type '{}'", TypeName(cnt)));
    }
    const int64_t n = std::max<int64_t>(0, AsInt(cnt));
    if (n > (1 << 20)) in.Fail(pos, "sequence repetition too large");
    if (seq.type == Type::kString) {
      std::string s;
      for (int64_t k = 0; k < n; ++k) s += seq.s;
      return Value::Str(std::move(s));
    }
    List l;
    for (int64_t k = 0; k < n; ++k) l.insert(l.end(), seq.list->begin(), seq.list->end());
    return Value::MakeList(std::move(l), seq.type);
  }
  if (!a.is_number() || !b.is_number()) {
    in.Fail(pos, fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op,
                             TypeName(a), TypeName(b)));
  }
  const bool fl = a.type == Type::kFloat || b.type == Type::kFloat;
  if (op == "/") {
    if (AsDouble(b) == 0) in.Fail(pos, "division by zero");
    return Value::Float(AsDouble(a) / AsDouble(b));
  }
  if (fl) {
    const double x = AsDouble(a), y = AsDouble(b);
    if (op == "+") return Value::Float(x + y);
    if (op == "-") return Value::Float(x - y);
    if (op == "*") return Value::Float(x * y);
    if (op == "**") return Value::Float(std::pow(x, y));
    if (y == 0) in.Fail(pos, "float division by zero");
    if (op == "//") return Value::Float(std::floor(x / y));
    if (op == "%") {
      double r = std::fmod(x, y);
      if (r != 0 && ((r < 0) != (y < 0))) r += y;
      return Value::Float(r);
    }
  }
  const int64_t x = AsInt(a), y = AsInt(b);
  int64_t r = 0;
  if (op == "+") {
    const bool o = __builtin_add_overflow(x, y, &r);
    return Value::Int(CheckedInt(o, r, in, pos));
  }
  if (op == "-") {
    const bool o = __builtin_sub_overflow(x, y, &r);
    return Value::Int(CheckedInt(o, r, in, pos));
  }
  if (op == "*") {
    const bool o = __builtin_mul_overflow(x, y, &r);
    return Value::Int(CheckedInt(o, r, in, pos));
  }
  if (op == "**") {
    if (y < 0) return Value::Float(std::pow(double(x), double(y)));
    int64_t acc = 1;
    for (int64_t k = 0; k < y; ++k) {
      const bool o = __builtin_mul_overflow(acc, x, &r);
      acc = CheckedInt(o, r, in, pos);
      if (acc == 0 || (acc == 1 && x == 1)) break;
    }
    return Value::Int(acc);
  }
  if (y == 0) in.Fail(pos, "integer division or modulo by zero");
  int64_t q = x / y, m = x % y;
  if (m != 0 && ((m < 0) != (y < 0))) {
    q -= 1;
    m += y;
  }
  if (op == "//") return Value::Int(q);
  if (op == "%") return Value::Int(m);
  in.Fail(pos, "unknown operator " + op);
}

bool Contains(const Value& container, const Value& item, Interp& in, size_t pos) {
  switch (container.type) {
    case Type::kString:
      if (item.type != Type::kString) {
        in.Fail(pos, fmt::format("'in <string>' requires string as left operand, not {}",
                                 TypeName(item)));
      }
      return container.s.find(item.s) != std::string::npos;
    case Type::kList:
    case Type::kTuple:
      for (const auto& x : *container.list) {
        if (Equal(x, item)) return true;
      }
      return false;
    case Type::kDict: return container.dict->Find(item) != nullptr;
    case Type::kUndefined: return false;
    default:
      in.Fail(pos, fmt::format("argument of type '{}' is not iterable", TypeName(container)));
  }
}

// Python slicing on a sequence of n items: the indices selected by [start:stop:step].
std::vector<int64_t> SliceIndices(int64_t n, const Value& a, const Value& b, const Value& c,
                                  Interp& in, size_t pos) {
  auto get = [&](const Value& v, bool* given) -> int64_t {
    *given = !(v.undefined() || v.type == Type::kNone);
    if (!*given) return 0;
    if (v.type != Type::kInt && v.type != Type::kBool) {
      in.Fail(pos, "slice indices must be integers or None");
    }
    return AsInt(v);
  };
  bool has_start, has_stop, has_step;
  int64_t start = get(a, &has_start), stop = get(b, &has_stop), step = get(c, &has_step);
  if (!has_step) step = 1;
  if (step == 0) in.Fail(pos, "slice step cannot be zero");
  auto clamp = [&](int64_t v, int64_t lo, int64_t hi) {
    if (v < 0) v += n;
    return std::max(lo, std::min(hi, v));
  };
  if (step > 0) {
    start = has_start ? clamp(start, 0, n) : 0;
    stop = has_stop ? clamp(stop, 0, n) : n;
  } else {
    start = has_start ? clamp(start, -1, n - 1) : n - 1;
    stop = has_stop ? clamp(stop, -1, n - 1) : -1;
  }
  std::vector<int64_t> idx;
  for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) idx.push_back(k);
  return idx;
}

// Python's str.split(sep=None, maxsplit=-1) and rsplit.
List SplitString(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right) {
  List out;
  if (sep.undefined() || sep.type == Type::kNone) {
    const std::u32string u = Decode(s);
    std::vector<std::pair<size_t, size_t>> words;
    size_t k = 0;
    while (k < u.size()) {
      while (k < u.size() && IsPySpace(u[k])) ++k;
      if (k >= u.size()) break;
      size_t e = k;
      while (e < u.size() && !IsPySpace(u[e])) ++e;
      words.emplace_back(k, e);
      k = e;
    }
    if (maxsplit >= 0 && int64_t(words.size()) > maxsplit + 1) {
      if (!from_right) {
        // the last piece runs from the start of word maxsplit to the end, right-stripped
        std::vector<std::pair<size_t, size_t>> w(words.begin(), words.begin() + maxsplit);
        w.emplace_back(words[maxsplit].first, words.back().second);
        words = w;
      } else {
        const size_t keep = words.size() - maxsplit;
        std::vector<std::pair<size_t, size_t>> w;
        w.emplace_back(words.front().first, words[keep - 1].second);
        w.insert(w.end(), words.begin() + keep, words.end());
        words = w;
      }
    }
    for (auto [b, e] : words) out.push_back(Value::Str(Encode(u.substr(b, e - b))));
    return out;
  }
  const std::string& d = sep.s;
  if (d.empty()) throw TemplateError("split(): empty separator");
  std::vector<std::string> parts;
  if (!from_right) {
    size_t start = 0;
    int64_t n = 0;
    while (maxsplit < 0 || n < maxsplit) {
      const size_t at = s.find(d, start);
      if (at == std::string::npos) break;
      parts.push_back(s.substr(start, at - start));
      start = at + d.size();
      ++n;
    }
    parts.push_back(s.substr(start));
  } else {
    size_t end = s.size();
    int64_t n = 0;
    while (maxsplit < 0 || n < maxsplit) {
      if (end < d.size()) break;
      const size_t at = s.rfind(d, end - d.size());
      if (at == std::string::npos) break;
      parts.insert(parts.begin(), s.substr(at + d.size(), end - at - d.size()));
      end = at;
      ++n;
    }
    parts.insert(parts.begin(), s.substr(0, end));
  }
  for (auto& p : parts) out.push_back(Value::Str(std::move(p)));
  return out;
}

std::string Strip(const std::string& s, const Value& chars, bool left, bool right) {
  const std::u32string u = Decode(s);
  std::u32string set;
  const bool ws = chars.undefined() || chars.type == Type::kNone;
  if (!ws) set = Decode(chars.s);
  auto strip = [&](char32_t c) {
    return ws ? IsPySpace(c) : set.find(c) != std::u32string::npos;
  };
  size_t b = 0, e = u.size();
  if (left) {
    while (b < e && strip(u[b])) ++b;
  }
  if (right) {
    while (e > b && strip(u[e - 1])) --e;
  }
  return Encode(u.substr(b, e - b));
}

std::string AsciiCase(const std::string& s, int mode, Interp& in, size_t pos) {
  // mode 0 lower, 1 upper, 2 capitalize (str.capitalize), 3 title (Jinja's title filter)
  // 4 title (str.title)
  if (!IsAscii(s)) {
    in.Fail(pos, "changing the case of non-ASCII text is not supported (ftune has no Unicode "
                 "case tables); the template would render it differently in Python");
  }
  std::string r = s;
  auto lower = [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); };
  auto upper = [](char c) { return static_cast<char>(std::toupper(static_cast<unsigned char>(c))); };
  if (mode == 0) {
    std::transform(r.begin(), r.end(), r.begin(), lower);
  } else if (mode == 1) {
    std::transform(r.begin(), r.end(), r.begin(), upper);
  } else if (mode == 2) {
    std::transform(r.begin(), r.end(), r.begin(), lower);
    if (!r.empty()) r[0] = upper(r[0]);
  } else if (mode == 3) {
    // Jinja: each piece after a run of [-\s({\[<] gets its first character upper-cased,
    // the rest lower-cased.
    bool start = true;
    for (char& c : r) {
      const bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' ||
                       std::isspace(static_cast<unsigned char>(c));
      if (sep) {
        start = true;
      } else {
        c = start ? upper(c) : lower(c);
        start = false;
      }
    }
  } else {
    bool prev_cased = false;
    for (char& c : r) {
      const bool alpha = std::isalpha(static_cast<unsigned char>(c));
      c = alpha ? (prev_cased ? lower(c) : upper(c)) : c;
      prev_cased = alpha;
    }
  }
  return r;
}

std::string ExpectStr(const Value& v, Interp& in, size_t pos, const char* what) {
  if (v.type != Type::kString) {
    in.Fail(pos, fmt::format("{} expects a string, not {}", what, TypeName(v)));
  }
  return v.s;
}

Value StringMethod(const Value& self, const std::string& name, Args& a, Interp& in,
                   size_t pos) {
  const std::string& s = self.s;
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    return Value::Str(Strip(s, a.Get(0, "chars"), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    const Value m = a.Get(1, "maxsplit", Value::Int(-1));
    return Value::MakeList(SplitString(s, a.Get(0, "sep"), AsInt(m), name == "rsplit"));
  }
  if (name == "startswith" || name == "endswith") {
    const Value p = a.Get(0, "prefix");
    std::vector<std::string> options;
    if (p.type == Type::kTuple) {
      for (const auto& x : *p.list) options.push_back(ExpectStr(x, in, pos, name.c_str()));
    } else {
      options.push_back(ExpectStr(p, in, pos, name.c_str()));
    }
    if (a.pos.size() > 1) in.Fail(pos, name + "() with start/end arguments is not supported");
    for (const auto& o : options) {
      if (name == "startswith" ? s.compare(0, o.size(), o) == 0
                               : (s.size() >= o.size() &&
                                  s.compare(s.size() - o.size(), o.size(), o) == 0)) {
        return Value::Bool(true);
      }
    }
    return Value::Bool(false);
  }
  if (name == "upper") return Value::Str(AsciiCase(s, 1, in, pos));
  if (name == "lower") return Value::Str(AsciiCase(s, 0, in, pos));
  if (name == "capitalize") return Value::Str(AsciiCase(s, 2, in, pos));
  if (name == "title") return Value::Str(AsciiCase(s, 4, in, pos));
  if (name == "replace") {
    const std::string from = ExpectStr(a.Get(0, "old"), in, pos, "replace()");
    const std::string to = ExpectStr(a.Get(1, "new"), in, pos, "replace()");
    int64_t count = AsInt(a.Get(2, "count", Value::Int(-1)));
    if (from.empty()) {  // Python inserts `to` around every character
      std::string r;
      const std::u32string u = Decode(s);
      int64_t k = 0;
      for (; k < int64_t(u.size()) && count != 0; ++k, --count) {
        r += to;
        AppendUtf8(u[size_t(k)], &r);
      }
      if (count != 0) return Value::Str(r + to);
      return Value::Str(r + Encode(std::u32string_view(u).substr(size_t(k))));
    }
    std::string r;
    size_t start = 0;
    while (count != 0) {
      const size_t at = s.find(from, start);
      if (at == std::string::npos) break;
      r += s.substr(start, at - start) + to;
      start = at + from.size();
      --count;
    }
    return Value::Str(r + s.substr(start));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" ||
      name == "count") {
    const std::string sub = ExpectStr(a.Get(0, "sub"), in, pos, name.c_str());
    if (a.pos.size() > 1) in.Fail(pos, name + "() with start/end arguments is not supported");
    if (name == "count") {
      if (sub.empty()) return Value::Int(CodePointLength(s) + 1);
      int64_t n = 0;
      for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) {
        ++n;
      }
      return Value::Int(n);
    }
    const size_t at = (name[0] == 'r') ? s.rfind(sub) : s.find(sub);
    if (at == std::string::npos) {
      if (name == "index" || name == "rindex") in.Fail(pos, "substring not found");
      return Value::Int(-1);
    }
    return Value::Int(CodePointLength(std::string_view(s).substr(0, at)));
  }
  if (name == "join") {
    std::string r;
    bool first = true;
    for (const auto& x : Iterate(a.Get(0, "iterable"), in, pos)) {
      if (!first) r += s;
      first = false;
      r += ExpectStr(x, in, pos, "join()");
    }
    return Value::Str(r);
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" ||
      name == "islower" || name == "isupper") {
    if (!IsAscii(s) && name != "isspace") in.Fail(pos, name + "() of non-ASCII text is not supported");
    if (s.empty()) return Value::Bool(false);
    if (name == "isspace") {
      for (char32_t c : Decode(s)) {
        if (!IsPySpace(c)) return Value::Bool(false);
      }
      return Value::Bool(true);
    }
    bool any_cased = false;
    for (char c : s) {
      const auto u = static_cast<unsigned char>(c);
      if (name == "isdigit" && !std::isdigit(u)) return Value::Bool(false);
      if (name == "isalpha" && !std::isalpha(u)) return Value::Bool(false);
      if (name == "isalnum" && !std::isalnum(u)) return Value::Bool(false);
      if (name == "islower" && std::isupper(u)) return Value::Bool(false);
      if (name == "isupper" && std::islower(u)) return Value::Bool(false);
      any_cased |= std::isalpha(u) != 0;
    }
    if ((name == "islower" || name == "isupper") && !any_cased) return Value::Bool(false);
    return Value::Bool(true);
  }
  in.Fail(pos, fmt::format("the string method '{}' is not supported", name));
}

Value DictMethod(const Value& self, const std::string& name, Args& a, Interp& in, size_t pos) {
  const Dict& d = *self.dict;
  if (name == "items" || name == "keys" || name == "values") {
    List l;
    for (const auto& [k, v] : d.items) {
      if (name == "items") {
        l.push_back(Value::MakeList({k, v}, Type::kTuple));
      } else {
        l.push_back(name == "keys" ? k : v);
      }
    }
    return Value::MakeList(std::move(l));
  }
  if (name == "get") {
    const Value* v = d.Find(a.Get(0, "key"));
    if (v) return *v;
    return a.Has(1, "default") ? a.Get(1, "default") : Value::None();
  }
  in.Fail(pos, fmt::format("the dict method '{}' is not supported (templates run in an "
                           "immutable sandbox)", name));
}

Value BoundMethod(const Value& self, const std::string& name) {
  return Value::Fn(name, [self, name](Interp& in, Args& a) -> Value {
    if (self.type == Type::kString) return StringMethod(self, name, a, in, a.at);
    if (self.type == Type::kDict) return DictMethod(self, name, a, in, a.at);
    if (self.is_seq() && (name == "index" || name == "count")) {
      const Value x = a.Get(0, "value");
      int64_t n = 0;
      for (size_t k = 0; k < self.list->size(); ++k) {
        if (Equal((*self.list)[k], x)) {
          if (name == "index") return Value::Int(int64_t(k));
          ++n;
        }
      }
      if (name == "index") in.Fail(a.at, "value is not in list");
      return Value::Int(n);
    }
    in.Fail(a.at, fmt::format("the {} method '{}' is not supported (templates run in an "
                              "immutable sandbox)", TypeName(self), name));
  });
}

bool IsStringMethod(const std::string& n) {
  static const char* kNames[] = {"strip", "lstrip", "rstrip", "split", "rsplit", "startswith",
                                 "endswith", "upper", "lower", "capitalize", "title", "replace",
                                 "find", "rfind", "index", "rindex", "count", "join", "isdigit",
                                 "isalpha", "isalnum", "isspace", "islower", "isupper",
                                 "format", "encode", "splitlines", "zfill", "center", "ljust",
                                 "rjust", "partition", "rpartition", "casefold", "swapcase",
                                 "expandtabs", "isnumeric", "isdecimal", "istitle",
                                 "isidentifier", "isprintable", "removeprefix", "removesuffix"};
  return std::find(std::begin(kNames), std::end(kNames), n) != std::end(kNames);
}

bool IsDictMethod(const std::string& n) {
  static const char* kNames[] = {"items", "keys", "values", "get", "pop", "popitem", "update",
                                 "setdefault", "clear", "copy", "fromkeys"};
  return std::find(std::begin(kNames), std::end(kNames), n) != std::end(kNames);
}

bool IsListMethod(const std::string& n) {
  static const char* kNames[] = {"append", "extend", "insert", "pop", "remove", "reverse",
                                 "sort", "clear", "copy", "index", "count"};
  return std::find(std::begin(kNames), std::end(kNames), n) != std::end(kNames);
}

Value Interp::GetAttr(const Value& obj, const std::string& name, size_t pos) {
  switch (obj.type) {
    case Type::kUndefined:
      Fail(pos, obj.s.empty() ? fmt::format("attribute '{}' of an undefined value", name)
                              : fmt::format("'{}' is undefined", obj.s));
    case Type::kDict:
      if (IsDictMethod(name)) return BoundMethod(obj, name);
      if (const Value* v = obj.dict->Find(Value::Str(name))) return *v;
      return Value::Undefined();
    case Type::kNamespace:
      if (const Value* v = obj.dict->Find(Value::Str(name))) return *v;
      return Value::Undefined();
    case Type::kString:
      if (IsStringMethod(name)) return BoundMethod(obj, name);
      return Value::Undefined();
    case Type::kList:
    case Type::kTuple:
      if (IsListMethod(name)) return BoundMethod(obj, name);
      return Value::Undefined();
    default: return Value::Undefined();
  }
}

Value Interp::GetItem(const Value& obj, const Value& key, size_t pos) {
  switch (obj.type) {
    case Type::kUndefined:
      Fail(pos, obj.s.empty() ? std::string("subscript of an undefined value")
                              : fmt::format("'{}' is undefined", obj.s));
    case Type::kDict:
    case Type::kNamespace:
      if (const Value* v = obj.dict->Find(key)) return *v;
      if (key.type == Type::kString && obj.type == Type::kDict && IsDictMethod(key.s)) {
        return BoundMethod(obj, key.s);
      }
      return Value::Undefined();
    case Type::kList:
    case Type::kTuple:
    case Type::kString: {
      if (key.type == Type::kString) return GetAttr(obj, key.s, pos);
      if (key.type != Type::kInt && key.type != Type::kBool) {
        Fail(pos, fmt::format("{} indices must be integers, not {}", TypeName(obj),
                              TypeName(key)));
      }
      int64_t k = AsInt(key);
      if (obj.type == Type::kString) {
        const std::u32string u = Decode(obj.s);
        if (k < 0) k += int64_t(u.size());
        if (k < 0 || k >= int64_t(u.size())) return Value::Undefined();
        return Value::Str(Encode(u.substr(size_t(k), 1)));
      }
      const int64_t n = int64_t(obj.list->size());
      if (k < 0) k += n;
      if (k < 0 || k >= n) return Value::Undefined();
      return (*obj.list)[size_t(k)];
    }
    default: return Value::Undefined();
  }
}

Args Interp::EvalArgs(const Node& n, size_t first, Frame& f) {
  Args a;
  a.at = n.pos;
  for (size_t k = first; k < n.kids.size(); ++k) {
    const std::string& name = n.names[k - first];
    Value v = Eval(*n.kids[k], f);
    if (name.empty()) {
      a.pos.push_back(std::move(v));
    } else {
      a.kw.emplace_back(name, std::move(v));
    }
  }
  return a;
}

Value Interp::Call(const Value& fn, Args& a, size_t pos) {
  if (fn.type != Type::kCallable) {
    if (fn.undefined()) {
      Fail(pos, fn.s.empty() ? std::string("call of an undefined value")
                             : fmt::format("'{}' is undefined", fn.s));
    }
    Fail(pos, fmt::format("'{}' object is not callable", TypeName(fn)));
  }
  a.at = pos;
  if (++depth > 200) Fail(pos, "recursion too deep");
  Value r = fn.call->fn(*this, a);
  --depth;
  return r;
}

// Jinja's attribute lookup for filters (map/selectattr/sort...): "a.b" or "0".
Value AttrPath(Interp& in, const Value& v, const std::string& path, size_t pos) {
  Value cur = v;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? dot : dot - start);
    if (!part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) {
      cur = in.GetItem(cur, Value::Int(std::stoll(part)), pos);
    } else {
      cur = cur.type == Type::kDict ? in.GetItem(cur, Value::Str(part), pos)
                                    : in.GetAttr(cur, part, pos);
    }
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

Value Interp::Eval(const Node& n, Frame& f) {
  switch (n.kind) {
    case N::kLiteral: return n.literal;
    case N::kName: {
      if (const Value* v = f.Lookup(n.str)) return *v;
      return Value::Undefined(n.str);
    }
    case N::kGetAttr: return GetAttr(Eval(*n.kids[0], f), n.str, n.pos);
    case N::kGetItem: return GetItem(Eval(*n.kids[0], f), Eval(*n.kids[1], f), n.pos);
    case N::kSlice: {
      const Value obj = Eval(*n.kids[0], f);
      Value p[3];
      for (int k = 0; k < 3; ++k) {
        if (n.kids[k + 1]) p[k] = Eval(*n.kids[k + 1], f);
      }
      if (obj.type == Type::kString) {
        const std::u32string u = Decode(obj.s);
        std::u32string r;
        for (int64_t k : SliceIndices(int64_t(u.size()), p[0], p[1], p[2], *this, n.pos)) {
          r += u[size_t(k)];
        }
        return Value::Str(Encode(r));
      }
      if (obj.is_seq()) {
        List r;
        for (int64_t k : SliceIndices(int64_t(obj.list->size()), p[0], p[1], p[2], *this, n.pos)) {
          r.push_back((*obj.list)[size_t(k)]);
        }
        return Value::MakeList(std::move(r), obj.type);
      }
      RequireDefined(obj, *this, n.pos, "slice");
      Fail(n.pos, fmt::format("'{}' object is not subscriptable", TypeName(obj)));
    }
    case N::kCall: {
      const Value fn = Eval(*n.kids[0], f);
      Args a = EvalArgs(n, 1, f);
      return At(n.pos, [&] { return Call(fn, a, n.pos); });
    }
    case N::kFilter: {
      Value v = Eval(*n.kids[0], f);
      Args a = EvalArgs(n, 1, f);
      return At(n.pos, [&] { return Filter(n.str, std::move(v), a, n.pos); });
    }
    case N::kTest: {
      // `x is defined` must not fail on an undefined attribute chain's last step only.
      const Value v = Eval(*n.kids[0], f);
      Args a = EvalArgs(n, 1, f);
      return Value::Bool(Test(n.str, v, a, n.pos) != n.negate);
    }
    case N::kUnary: {
      const Value v = Eval(*n.kids[0], f);
      if (!v.is_number()) {
        RequireDefined(v, *this, n.pos, "unary operator");
        Fail(n.pos, fmt::format("bad operand type for unary {}: '{}'", n.str, TypeName(v)));
      }
      if (n.str == "+") return v.type == Type::kBool ? Value::Int(AsInt(v)) : v;
      if (v.type == Type::kFloat) return Value::Float(-v.f);
      if (AsInt(v) == INT64_MIN) Fail(n.pos, "integer overflow");
      return Value::Int(-AsInt(v));
    }
    case N::kBinary: return Arith(n.str, Eval(*n.kids[0], f), Eval(*n.kids[1], f), *this, n.pos);
    case N::kConcat: {
      std::string s;
      for (const auto& k : n.kids) s += ToStr(Eval(*k, f));
      return Value::Str(std::move(s));
    }
    case N::kCompare: {
      Value a = Eval(*n.kids[0], f);
      for (size_t k = 0; k < n.names.size(); ++k) {
        Value b = Eval(*n.kids[k + 1], f);
        const std::string& op = n.names[k];
        const bool ok = At(n.pos, [&] {
          if (op == "==") return Equal(a, b);
          if (op == "!=") return !Equal(a, b);
          if (op == "in") return Contains(b, a, *this, n.pos);
          if (op == "notin") return !Contains(b, a, *this, n.pos);
          if (op == "<") return Less(a, b);
          if (op == ">") return Less(b, a);
          if (op == "<=") return !Less(b, a);
          return !Less(a, b);
        });
        if (!ok) return Value::Bool(false);
        a = std::move(b);
      }
      return Value::Bool(true);
    }
    case N::kAnd: {
      Value a = Eval(*n.kids[0], f);
      return Truthy(a) ? Eval(*n.kids[1], f) : a;
    }
    case N::kOr: {
      Value a = Eval(*n.kids[0], f);
      return Truthy(a) ? a : Eval(*n.kids[1], f);
    }
    case N::kNot: return Value::Bool(!Truthy(Eval(*n.kids[0], f)));
    case N::kCondExpr: {
      if (Truthy(Eval(*n.kids[0], f))) return Eval(*n.kids[1], f);
      if (n.kids[2]) return Eval(*n.kids[2], f);
      return Value::Undefined();
    }
    case N::kListLit:
    case N::kTupleLit: {
      List l;
      for (const auto& k : n.kids) l.push_back(Eval(*k, f));
      return Value::MakeList(std::move(l), n.kind == N::kListLit ? Type::kList : Type::kTuple);
    }
    case N::kDictLit: {
      auto d = NewDict();
      for (size_t k = 0; k + 1 < n.kids.size(); k += 2) {
        d->Set(Eval(*n.kids[k], f), Eval(*n.kids[k + 1], f));
      }
      return Value::MakeDict(std::move(d));
    }
    default: Fail(n.pos, "not an expression");
  }
}

void Unpack(Interp& in, Frame& f, const std::vector<std::string>& names, const Value& v,
            size_t pos) {
  if (names.size() == 1) {
    f.Set(names[0], v);
    return;
  }
  const std::vector<Value> items = Iterate(v, in, pos);
  if (items.size() != names.size()) {
    in.Fail(pos, fmt::format("cannot unpack {} values into {} names", items.size(),
                             names.size()));
  }
  for (size_t k = 0; k < names.size(); ++k) f.Set(names[k], items[k]);
}

Flow Interp::Exec(const Node& n, Frame& f) {
  switch (n.kind) {
    case N::kText: *out += n.str; return Flow::kNormal;
    case N::kOutput: *out += ToStrAt(Eval(*n.kids[0], f), n.pos); return Flow::kNormal;
    case N::kBody: return ExecBody(n, f);
    case N::kIf:
      if (Truthy(Eval(*n.kids[0], f))) return ExecBody(*n.kids[1], f);
      if (n.kids.size() > 2) return ExecBody(*n.kids[2], f);
      return Flow::kNormal;
    case N::kFor: {
      const Value seq = Eval(*n.kids[0], f);
      std::vector<Value> items = Iterate(seq, *this, n.kids[0]->pos);
      if (n.kids[1]) {  // for x in xs if cond: filter first, so loop.length counts the kept
        std::vector<Value> kept;
        for (auto& it : items) {
          Frame probe{&f, {}};
          Unpack(*this, probe, n.names, it, n.pos);
          if (Truthy(Eval(*n.kids[1], probe))) kept.push_back(std::move(it));
        }
        items = std::move(kept);
      }
      // Jinja sets "iterated" at the end of the body: an else block runs unless some
      // iteration ran to its end (a break or continue skips the mark).
      bool iterated = false;
      const int64_t len = int64_t(items.size());
      for (int64_t k = 0; k < len; ++k) {
        Frame iter{&f, {}};
        auto loop = NewDict();
        loop->Set(Value::Str("index"), Value::Int(k + 1));
        loop->Set(Value::Str("index0"), Value::Int(k));
        loop->Set(Value::Str("revindex"), Value::Int(len - k));
        loop->Set(Value::Str("revindex0"), Value::Int(len - k - 1));
        loop->Set(Value::Str("first"), Value::Bool(k == 0));
        loop->Set(Value::Str("last"), Value::Bool(k == len - 1));
        loop->Set(Value::Str("length"), Value::Int(len));
        loop->Set(Value::Str("depth"), Value::Int(1));
        loop->Set(Value::Str("depth0"), Value::Int(0));
        loop->Set(Value::Str("previtem"), k > 0 ? items[size_t(k - 1)] : Value::Undefined());
        loop->Set(Value::Str("nextitem"), k + 1 < len ? items[size_t(k + 1)] : Value::Undefined());
        loop->Set(Value::Str("cycle"), Value::Fn("cycle", [k](Interp& in, Args& a) -> Value {
                    if (a.pos.empty()) in.Fail(a.at, "no items for cycling given");
                    return a.pos[size_t(k) % a.pos.size()];
                  }));
        iter.Set("loop", Value::MakeDict(loop));
        Unpack(*this, iter, n.names, items[size_t(k)], n.pos);
        const Flow fl = ExecBody(*n.kids[2], iter);
        if (fl == Flow::kNormal) iterated = true;
        if (fl == Flow::kBreak) break;
      }
      if (!iterated && n.kids[3]) return ExecBody(*n.kids[3], f);
      return Flow::kNormal;
    }
    case N::kSet: {
      const Value v = Eval(*n.kids[0], f);
      if (!n.str.empty()) {  // set ns.attr = v
        const Value* ns = f.Lookup(n.names[0]);
        if (!ns || ns->type != Type::kNamespace) {
          Fail(n.pos, fmt::format("can only set attributes of namespace() objects; '{}' is not "
                                  "one", n.names[0]));
        }
        ns->dict->Set(Value::Str(n.str), v);
        return Flow::kNormal;
      }
      Unpack(*this, f, n.names, v, n.pos);
      return Flow::kNormal;
    }
    case N::kSetBlock: {
      Value v = Value::Str(CaptureNoSpans(*n.kids[0], f, n.pos));
      if (n.kids[1]) {
        Args a = EvalArgs(*n.kids[1], 1, f);
        v = Filter(n.kids[1]->str, std::move(v), a, n.kids[1]->pos);
      }
      f.Set(n.str, std::move(v));
      return Flow::kNormal;
    }
    case N::kFilterBlock: {
      Value v = Value::Str(CaptureNoSpans(*n.kids[1], f, n.pos));
      Args a = EvalArgs(*n.kids[0], 1, f);
      *out += ToStrAt(Filter(n.kids[0]->str, std::move(v), a, n.kids[0]->pos), n.pos);
      return Flow::kNormal;
    }
    case N::kMacro: {
      const Node* macro = &n;
      Frame* def = &f;
      f.Set(n.str, Value::Fn(n.str, [macro, def](Interp& in, Args& a) -> Value {
              Frame local{def, {}};
              const size_t np = macro->names.size();
              if (a.pos.size() > np) {
                in.Fail(a.at, fmt::format("macro '{}' takes not more than {} argument(s)",
                                          macro->str, np));
              }
              for (size_t k = 0; k < np; ++k) {
                const std::string& pname = macro->names[k];
                Value v;
                bool given = false;
                if (k < a.pos.size()) {
                  v = a.pos[k];
                  given = true;
                }
                for (auto& [kn, kv] : a.kw) {
                  if (kn == pname) {
                    v = kv;
                    given = true;
                  }
                }
                if (!given && macro->kids[k + 1]) v = in.Eval(*macro->kids[k + 1], local);
                if (!given && !macro->kids[k + 1]) v = Value::Undefined(pname);
                local.Set(pname, v);
              }
              for (auto& [kn, kv] : a.kw) {
                if (std::find(macro->names.begin(), macro->names.end(), kn) ==
                    macro->names.end()) {
                  in.Fail(a.at, fmt::format("macro '{}' takes no keyword argument '{}'",
                                            macro->str, kn));
                }
              }
              return Value::Str(in.CaptureNoSpans(*macro->kids[0], local, macro->pos));
            }));
      return Flow::kNormal;
    }
    case N::kBreak: return Flow::kBreak;
    case N::kContinue: return Flow::kContinue;
    case N::kGeneration: {
      if (out != &result->text) {
        Fail(n.pos, "{% generation %} inside a macro, set block or filter block is not "
                    "supported");
      }
      const size_t begin = out->size();
      const Flow fl = ExecBody(*n.kids[0], f);
      result->generation.emplace_back(begin, out->size());
      return fl;
    }
    default: Fail(n.pos, "not a statement");
  }
}

}  // namespace

namespace {

std::string ReplaceAll(const std::string& s, const std::string& from, const std::string& to) {
  std::string r;
  size_t start = 0;
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, start)) {
    r += s.substr(start, at - start) + to;
    start = at + from.size();
  }
  return r + s.substr(start);
}

// Lines of `s` split on "\n" alone; any other of Python's line breaks is refused.
std::vector<std::string> SplitLinesStrict(const std::string& s, Interp& in, size_t pos) {
  for (char32_t c : Decode(s)) {
    if (c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e ||
        c == 0x85 || c == 0x2028 || c == 0x2029) {
      in.Fail(pos, "indent of text with line breaks other than \\n is not supported");
    }
  }
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < s.size()) {
    const size_t nl = s.find('\n', start);
    if (nl == std::string::npos) {
      lines.push_back(s.substr(start));
      break;
    }
    lines.push_back(s.substr(start, nl - start));
    start = nl + 1;
  }
  return lines;
}

// Python int(str): optional whitespace and sign, digits with single underscores between them.
std::optional<int64_t> ParsePyInt(const std::string& text) {
  const std::string t = Strip(text, Value::Undefined(), true, true);
  size_t k = 0;
  bool neg = false;
  if (k < t.size() && (t[k] == '+' || t[k] == '-')) neg = t[k++] == '-';
  std::string digits;
  for (; k < t.size(); ++k) {
    if (std::isdigit(static_cast<unsigned char>(t[k]))) {
      digits += t[k];
    } else if (t[k] == '_' && !digits.empty() && k + 1 < t.size() &&
               std::isdigit(static_cast<unsigned char>(t[k + 1]))) {
      continue;
    } else {
      return std::nullopt;
    }
  }
  if (digits.empty()) return std::nullopt;
  int64_t v = 0;
  if (std::from_chars(digits.data(), digits.data() + digits.size(), v).ec != std::errc()) {
    return std::nullopt;
  }
  return neg ? -v : v;
}

std::optional<double> ParsePyFloat(const std::string& text) {
  const std::string t = Strip(text, Value::Undefined(), true, true);
  if (t.empty()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size()) return std::nullopt;
  return v;
}

Value SortKey(const Value& v, bool case_sensitive, Interp& in, size_t pos) {
  if (v.type == Type::kString && !case_sensitive) return Value::Str(AsciiCase(v.s, 0, in, pos));
  return v;
}

}  // namespace

namespace {

Value Interp::Filter(const std::string& name, Value v, Args& a, size_t pos) {
  auto str = [&](const Value& x) { return ToStr(x); };
  if (name == "trim") return Value::Str(Strip(str(v), a.Get(0, "chars"), true, true));
  if (name == "length" || name == "count") return Value::Int(Length(v, *this, pos));
  if (name == "string") return Value::Str(str(v));
  if (name == "safe") return v;
  if (name == "upper") return Value::Str(AsciiCase(str(v), 1, *this, pos));
  if (name == "lower") return Value::Str(AsciiCase(str(v), 0, *this, pos));
  if (name == "capitalize") return Value::Str(AsciiCase(str(v), 2, *this, pos));
  if (name == "title") return Value::Str(AsciiCase(str(v), 3, *this, pos));
  if (name == "default" || name == "d") {
    const bool boolean = Truthy(a.Get(1, "boolean", Value::Bool(false)));
    if (v.undefined() || (boolean && !Truthy(v))) return a.Get(0, "default_value", Value::Str(""));
    return v;
  }
  if (name == "first" || name == "last") {
    const auto items = Iterate(v, *this, pos);
    if (items.empty()) return Value::Undefined();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value::MakeList(Iterate(v, *this, pos));
  if (name == "items") {
    if (v.undefined()) return Value::MakeList({});
    if (v.type != Type::kDict) Fail(pos, fmt::format("items of a {}: expected a mapping", TypeName(v)));
    List l;
    for (const auto& [k, x] : v.dict->items) l.push_back(Value::MakeList({k, x}, Type::kTuple));
    return Value::MakeList(std::move(l));
  }
  if (name == "join") {
    const Value sep = a.Get(0, "d", Value::Str(""));
    const Value attr = a.Get(1, "attribute", Value::None());
    std::string r;
    bool first = true;
    for (const auto& x : Iterate(v, *this, pos)) {
      if (!first) r += str(sep);
      first = false;
      r += str(attr.type == Type::kNone ? x : AttrPath(*this, x, str(attr), pos));
    }
    return Value::Str(r);
  }
  if (name == "replace") {
    const std::string s = str(v);
    const std::string from = str(a.Get(0, "old")), to = str(a.Get(1, "new"));
    const Value count = a.Get(2, "count", Value::None());
    Args m;
    m.at = pos;
    m.pos = {Value::Str(from), Value::Str(to)};
    if (count.type != Type::kNone) m.pos.push_back(count);
    return StringMethod(Value::Str(s), "replace", m, *this, pos);
  }
  if (name == "int") {
    const Value def = a.Get(0, "default", Value::Int(0));
    if (a.Has(1, "base") && AsInt(a.Get(1, "base")) != 10) Fail(pos, "int(base=...) is not supported");
    switch (v.type) {
      case Type::kInt: return v;
      case Type::kBool: return Value::Int(AsInt(v));
      case Type::kFloat:
        if (!std::isfinite(v.f) || std::fabs(v.f) > 9.2e18) return def;
        return Value::Int(static_cast<int64_t>(std::trunc(v.f)));
      case Type::kString: {
        if (auto i = ParsePyInt(v.s)) return Value::Int(*i);
        if (auto d = ParsePyFloat(v.s); d && std::isfinite(*d) && std::fabs(*d) < 9.2e18) {
          return Value::Int(static_cast<int64_t>(std::trunc(*d)));
        }
        return def;
      }
      default: return def;
    }
  }
  if (name == "float") {
    const Value def = a.Get(0, "default", Value::Float(0.0));
    if (v.is_number()) return Value::Float(AsDouble(v));
    if (v.type == Type::kString) {
      if (auto d = ParsePyFloat(v.s)) return Value::Float(*d);
    }
    return def;
  }
  if (name == "abs") {
    if (v.type == Type::kFloat) return Value::Float(std::fabs(v.f));
    if (v.type == Type::kInt || v.type == Type::kBool) return Value::Int(std::llabs(AsInt(v)));
    Fail(pos, fmt::format("bad operand type for abs(): '{}'", TypeName(v)));
  }
  if (name == "round") {
    if (!v.is_number()) Fail(pos, "round of a non-number");
    const int64_t prec = AsInt(a.Get(0, "precision", Value::Int(0)));
    const std::string method = str(a.Get(1, "method", Value::Str("common")));
    if (prec < 0 || prec > 15) Fail(pos, "round: precision 0-15 is supported");
    const double x = AsDouble(v);
    if (method == "common" && v.type != Type::kFloat) return Value::Int(AsInt(v));  // int.__round__
    if (method == "common") {
      if (prec == 0) return Value::Float(std::nearbyint(x));
      return Value::Float(std::strtod(fmt::format("{:.{}f}", x, prec).c_str(), nullptr));
    }
    if (method != "ceil" && method != "floor") Fail(pos, "round: method must be common, ceil or floor");
    const double scale = std::pow(10.0, double(prec));
    const double r = method == "ceil" ? std::ceil(x * scale) : std::floor(x * scale);
    return Value::Float(r / scale);
  }
  if (name == "reverse") {
    if (v.type == Type::kString) {
      std::u32string u = Decode(v.s);
      std::reverse(u.begin(), u.end());
      return Value::Str(Encode(u));
    }
    auto items = Iterate(v, *this, pos);
    std::reverse(items.begin(), items.end());
    return Value::MakeList(std::move(items));
  }
  if (name == "tojson") {
    // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
    JsonDumpOptions o;
    o.ensure_ascii = Truthy(a.Get(0, "ensure_ascii", Value::Bool(false)));
    const Value indent = a.Get(1, "indent", Value::None());
    if (indent.type == Type::kInt) {
      o.indent = static_cast<int>(std::max<int64_t>(0, indent.i));
      o.item_sep = ",";
    } else if (indent.type != Type::kNone) {
      Fail(pos, "tojson: indent must be an integer or None");
    }
    const Value seps = a.Get(2, "separators", Value::None());
    if (seps.type != Type::kNone) {
      if (!seps.is_seq() || seps.list->size() != 2) Fail(pos, "tojson: separators must be a pair");
      o.item_sep = ExpectStr((*seps.list)[0], *this, pos, "tojson separators");
      o.key_sep = ExpectStr((*seps.list)[1], *this, pos, "tojson separators");
    }
    o.sort_keys = Truthy(a.Get(3, "sort_keys", Value::Bool(false)));
    std::string out;
    JsonDump(v, o, 0, &out);
    return Value::Str(out);
  }
  if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
    const bool by_attr = name == "selectattr" || name == "rejectattr";
    const bool keep_if = name == "selectattr" || name == "select";
    size_t k = 0;
    std::string attr;
    if (by_attr) {
      if (a.pos.empty()) Fail(pos, name + " needs an attribute name");
      attr = str(a.pos[k++]);
    }
    std::string test;
    if (k < a.pos.size()) test = str(a.pos[k++]);
    Args targs;
    targs.at = pos;
    targs.pos.assign(a.pos.begin() + std::min(k, a.pos.size()), a.pos.end());
    List kept;
    for (const auto& x : Iterate(v, *this, pos)) {
      const Value item = by_attr ? AttrPath(*this, x, attr, pos) : x;
      const bool ok = test.empty() ? Truthy(item) : Test(test, item, targs, pos);
      if (ok == keep_if) kept.push_back(x);
    }
    return Value::MakeList(std::move(kept));
  }
  if (name == "map") {
    List out;
    bool by_attr = false;
    std::string attr;
    Value def = Value::Undefined();
    for (auto& [kn, kv] : a.kw) {
      if (kn == "attribute") {
        by_attr = true;
        attr = str(kv);
      } else if (kn == "default") {
        def = kv;
      } else {
        Fail(pos, fmt::format("map: unsupported keyword '{}'", kn));
      }
    }
    if (!by_attr && a.pos.empty()) Fail(pos, "map needs a filter name or attribute=");
    for (const auto& x : Iterate(v, *this, pos)) {
      if (by_attr) {
        Value r = AttrPath(*this, x, attr, pos);
        out.push_back(r.undefined() && !def.undefined() ? def : r);
      } else {
        Args fargs;
        fargs.at = pos;
        fargs.pos.assign(a.pos.begin() + 1, a.pos.end());
        out.push_back(Filter(str(a.pos[0]), x, fargs, pos));
      }
    }
    return Value::MakeList(std::move(out));
  }
  if (name == "unique") {
    const bool cs = Truthy(a.Get(0, "case_sensitive", Value::Bool(false)));
    const Value attr = a.Get(1, "attribute", Value::None());
    List out;
    std::vector<Value> seen;
    for (const auto& x : Iterate(v, *this, pos)) {
      Value key = attr.type == Type::kNone ? x : AttrPath(*this, x, str(attr), pos);
      key = SortKey(key, cs, *this, pos);
      bool dup = false;
      for (const auto& s : seen) dup |= Equal(s, key);
      if (!dup) {
        seen.push_back(key);
        out.push_back(x);
      }
    }
    return Value::MakeList(std::move(out));
  }
  if (name == "sort" || name == "min" || name == "max") {
    const bool is_sort = name == "sort";
    const bool reverse = is_sort && Truthy(a.Get(0, "reverse", Value::Bool(false)));
    const bool cs = Truthy(a.Get(is_sort ? 1 : 0, "case_sensitive", Value::Bool(false)));
    const Value attr = a.Get(is_sort ? 2 : 1, "attribute", Value::None());
    auto items = Iterate(v, *this, pos);
    std::vector<std::pair<Value, Value>> keyed;
    for (auto& x : items) {
      Value key = attr.type == Type::kNone ? x : AttrPath(*this, x, str(attr), pos);
      keyed.emplace_back(SortKey(key, cs, *this, pos), x);
    }
    At(pos, [&] {
      std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& p, const auto& q) {
        return reverse ? Less(q.first, p.first) : Less(p.first, q.first);
      });
      return 0;
    });
    if (!is_sort) {
      if (keyed.empty()) return Value::Undefined();
      // min: the first smallest; max: the first largest (Python's max keeps the first)
      if (name == "min") return keyed.front().second;
      size_t best = keyed.size() - 1;
      while (best > 0 && !Less(keyed[best - 1].first, keyed[best].first)) --best;
      return keyed[best].second;
    }
    List out;
    for (auto& kv : keyed) out.push_back(kv.second);
    return Value::MakeList(std::move(out));
  }
  if (name == "dictsort") {
    if (v.type != Type::kDict) Fail(pos, "dictsort expects a mapping");
    const bool cs = Truthy(a.Get(0, "case_sensitive", Value::Bool(false)));
    const std::string by = str(a.Get(1, "by", Value::Str("key")));
    const bool reverse = Truthy(a.Get(2, "reverse", Value::Bool(false)));
    std::vector<std::pair<Value, Value>> items = v.dict->items;
    const bool by_key = by == "key";
    if (!by_key && by != "value") Fail(pos, "dictsort: by must be 'key' or 'value'");
    At(pos, [&] {
      std::stable_sort(items.begin(), items.end(), [&](const auto& p, const auto& q) {
        const Value x = SortKey(by_key ? p.first : p.second, cs, *this, pos);
        const Value y = SortKey(by_key ? q.first : q.second, cs, *this, pos);
        return reverse ? Less(y, x) : Less(x, y);
      });
      return 0;
    });
    List out;
    for (auto& [k, x] : items) out.push_back(Value::MakeList({k, x}, Type::kTuple));
    return Value::MakeList(std::move(out));
  }
  if (name == "sum") {
    const Value attr = a.Get(0, "attribute", Value::None());
    Value acc = a.Get(1, "start", Value::Int(0));
    for (const auto& x : Iterate(v, *this, pos)) {
      acc = Arith("+", acc, attr.type == Type::kNone ? x : AttrPath(*this, x, str(attr), pos),
                  *this, pos);
    }
    return acc;
  }
  if (name == "indent") {
    const Value width = a.Get(0, "width", Value::Int(4));
    const bool first = Truthy(a.Get(1, "first", Value::Bool(false)));
    const bool blank = Truthy(a.Get(2, "blank", Value::Bool(false)));
    const std::string ind = width.type == Type::kString ? width.s
                                                        : std::string(size_t(std::max<int64_t>(0, AsInt(width))), ' ');
    const auto lines = SplitLinesStrict(str(v) + "\n", *this, pos);
    std::string r;
    if (blank) {
      for (size_t k = 0; k < lines.size(); ++k) r += (k ? "\n" + ind : "") + lines[k];
    } else {
      r = lines.empty() ? "" : lines[0];
      for (size_t k = 1; k < lines.size(); ++k) r += "\n" + (lines[k].empty() ? "" : ind + lines[k]);
    }
    return Value::Str(first ? ind + r : r);
  }
  if (name == "center") {
    const std::string s = str(v);
    const int64_t width = AsInt(a.Get(0, "width", Value::Int(80)));
    const int64_t len = CodePointLength(s);
    if (width <= len) return Value::Str(s);
    // Python's str.center: the extra space goes left when the margin is odd and width odd.
    const int64_t marg = width - len;
    const int64_t left = marg / 2 + (marg & width & 1);
    return Value::Str(std::string(size_t(left), ' ') + s + std::string(size_t(marg - left), ' '));
  }
  if (name == "batch") {
    const int64_t size = AsInt(a.Get(0, "linecount"));
    if (size <= 0) Fail(pos, "batch: linecount must be positive");
    const Value fill = a.Get(1, "fill_with", Value::None());
    List out, cur;
    for (const auto& x : Iterate(v, *this, pos)) {
      cur.push_back(x);
      if (int64_t(cur.size()) == size) {
        out.push_back(Value::MakeList(std::move(cur)));
        cur.clear();
      }
    }
    if (!cur.empty()) {
      if (fill.type != Type::kNone) {
        while (int64_t(cur.size()) < size) cur.push_back(fill);
      }
      out.push_back(Value::MakeList(std::move(cur)));
    }
    return Value::MakeList(std::move(out));
  }
  if (name == "wordcount") {
    const std::string s = str(v);
    if (!IsAscii(s)) Fail(pos, "wordcount of non-ASCII text is not supported");
    int64_t n = 0;
    bool in_word = false;
    for (char c : s) {
      const bool w = std::isalnum(static_cast<unsigned char>(c)) || c == '_';
      n += w && !in_word;
      in_word = w;
    }
    return Value::Int(n);
  }
  if (name == "escape" || name == "e" || name == "forceescape") {
    std::string s = ReplaceAll(str(v), "&", "&amp;");
    s = ReplaceAll(s, "<", "&lt;");
    s = ReplaceAll(s, ">", "&gt;");
    s = ReplaceAll(s, "\"", "&#34;");
    return Value::Str(ReplaceAll(s, "'", "&#39;"));
  }
  Fail(pos, fmt::format("the filter '{}' is not supported", name));
}

bool Interp::Test(const std::string& name, const Value& v, Args& a, size_t pos) {
  const Value arg = a.pos.empty() ? Value::Undefined() : a.pos[0];
  if (name == "defined") return !v.undefined();
  if (name == "undefined") return v.undefined();
  if (name == "none") return v.type == Type::kNone;
  if (name == "boolean") return v.type == Type::kBool;
  if (name == "true") return v.type == Type::kBool && v.b;
  if (name == "false") return v.type == Type::kBool && !v.b;
  if (name == "integer") return v.type == Type::kInt;
  if (name == "float") return v.type == Type::kFloat;
  if (name == "number") return v.is_number();
  if (name == "string") return v.type == Type::kString;
  if (name == "mapping") return v.type == Type::kDict;
  if (name == "iterable" || name == "sequence") {
    return v.type == Type::kString || v.is_seq() || v.type == Type::kDict || v.undefined();
  }
  if (name == "callable") return v.type == Type::kCallable;
  if (name == "sameas") {
    if (v.type != arg.type) return false;
    switch (v.type) {
      case Type::kNone:
      case Type::kUndefined: return true;
      case Type::kBool: return v.b == arg.b;
      case Type::kInt:
        if (v.i >= -5 && v.i <= 256) return v.i == arg.i;  // CPython's cached small ints
        Fail(pos, "'sameas' of large integers depends on Python's object identity");
      case Type::kList:
      case Type::kTuple: return v.list == arg.list;
      case Type::kDict:
      case Type::kNamespace: return v.dict == arg.dict;
      default: Fail(pos, "'sameas' of strings and numbers depends on Python's object identity");
    }
  }
  if (name == "escaped") return false;
  if (name == "in") return Contains(arg, v, *this, pos);
  if (name == "eq" || name == "equalto" || name == "==") return Equal(v, arg);
  if (name == "ne" || name == "!=") return !Equal(v, arg);
  if (name == "lt" || name == "lessthan" || name == "<") return At(pos, [&] { return Less(v, arg); });
  if (name == "gt" || name == "greaterthan" || name == ">") return At(pos, [&] { return Less(arg, v); });
  if (name == "le" || name == "<=") return At(pos, [&] { return !Less(arg, v); });
  if (name == "ge" || name == ">=") return At(pos, [&] { return !Less(v, arg); });
  if (name == "even" || name == "odd" || name == "divisibleby") {
    if (v.type != Type::kInt && v.type != Type::kBool) Fail(pos, fmt::format("'{}' test of a {}", name, TypeName(v)));
    const int64_t x = AsInt(v);
    if (name == "even") return x % 2 == 0;
    if (name == "odd") return x % 2 != 0;
    const int64_t d = AsInt(arg);
    if (d == 0) Fail(pos, "divisibleby 0");
    return x % d == 0;
  }
  if (name == "lower" || name == "upper") {
    Args none;
    none.at = pos;
    return Truthy(StringMethod(Value::Str(ToStr(v)), name == "lower" ? "islower" : "isupper",
                               none, *this, pos));
  }
  Fail(pos, fmt::format("the test '{}' is not supported", name));
}

std::string DefaultStrftimeNow(const std::string& format) {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[512];
  const size_t n = std::strftime(buf, sizeof buf, format.c_str(), &tm);
  return std::string(buf, n);
}

void AddGlobals(Frame& g, const RenderOptions& options) {
  g.Set("range", Value::Fn("range", [](Interp& in, Args& a) -> Value {
          if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) in.Fail(a.at, "range() takes 1 to 3 integers");
          for (const auto& x : a.pos) {
            if (x.type != Type::kInt && x.type != Type::kBool) in.Fail(a.at, "range() arguments must be integers");
          }
          int64_t start = 0, stop, step = 1;
          if (a.pos.size() == 1) {
            stop = AsInt(a.pos[0]);
          } else {
            start = AsInt(a.pos[0]);
            stop = AsInt(a.pos[1]);
            if (a.pos.size() == 3) step = AsInt(a.pos[2]);
          }
          if (step == 0) in.Fail(a.at, "range() arg 3 must not be zero");
          List l;
          for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
            if (l.size() >= 100000) in.Fail(a.at, "range too big (the sandbox allows 100000 items)");
            l.push_back(Value::Int(k));
          }
          return Value::MakeList(std::move(l));
        }));
  g.Set("dict", Value::Fn("dict", [](Interp& in, Args& a) -> Value {
          auto d = NewDict();
          if (!a.pos.empty()) in.Fail(a.at, "dict() with positional arguments is not supported");
          for (auto& [k, v] : a.kw) d->Set(Value::Str(k), v);
          return Value::MakeDict(std::move(d));
        }));
  g.Set("namespace", Value::Fn("namespace", [](Interp& in, Args& a) -> Value {
          auto d = NewDict();
          for (const auto& p : a.pos) {
            if (p.type != Type::kDict) in.Fail(a.at, "namespace() takes a mapping or keywords");
            for (const auto& kv : p.dict->items) d->Set(kv.first, kv.second);
          }
          for (auto& [k, v] : a.kw) d->Set(Value::Str(k), v);
          return Value::MakeDict(std::move(d), Type::kNamespace);
        }));
  g.Set("raise_exception", Value::Fn("raise_exception", [](Interp& in, Args& a) -> Value {
          const std::string msg = a.pos.empty() ? "" : ToStr(a.pos[0]);
          throw TemplateRaised(in.src.Where(a.at) + ": the template raised an exception: " + msg,
                               msg);
        }));
  auto now = options.strftime_now ? options.strftime_now : DefaultStrftimeNow;
  g.Set("strftime_now", Value::Fn("strftime_now", [now](Interp& in, Args& a) -> Value {
          if (a.pos.size() != 1 || a.pos[0].type != Type::kString) {
            in.Fail(a.at, "strftime_now() takes one format string");
          }
          return Value::Str(now(a.pos[0].s));
        }));
}

}  // namespace

struct Template::Impl {
  Source src;
  NodePtr root;
  bool has_generation = false;
  std::vector<std::string> literals;
};

Template Template::Parse(std::string_view source, std::string name) {
  auto impl = std::make_shared<Impl>();
  impl->src.name = std::move(name);
  impl->src.text = NormalizeNewlines(source);
  Lexer lexer(impl->src);
  Parser parser(impl->src, lexer.Run());
  impl->root = parser.ParseTemplate();
  impl->has_generation = parser.has_generation;
  impl->literals = std::move(parser.literals);
  return Template(std::move(impl));
}

RenderResult Template::Render(const Json& context, const RenderOptions& options) const {
  if (!context.is_object()) throw TemplateError("the template context must be a JSON object");
  RenderResult result;
  Interp in{impl_->src, options};
  in.result = &result;
  in.out = &result.text;
  Frame globals;
  AddGlobals(globals, options);
  Frame root{&globals, {}};
  for (auto it = context.begin(); it != context.end(); ++it) {
    root.Set(it.key(), in.At(0, [&] { return FromJson(it.value()); }));
  }
  in.ExecBody(*impl_->root, root);
  return result;
}

bool Template::has_generation_blocks() const { return impl_->has_generation; }
std::vector<std::string> Template::Literals() const { return impl_->literals; }
const std::string& Template::name() const { return impl_->src.name; }

}  // namespace ftune::data::jinja
