#include "common/json.h"

#include <cstdio>
#include <cstdlib>

namespace af {

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
          out += escaped;
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}

}  // namespace af

namespace af {

namespace {

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : text_(text) {}

  bool parse(JsonValue* value, std::string* error) {
    if (!parse_value(value, 0) || (skip_space(), pos_ != text_.size())) {
      if (error_.empty()) error_ = "trailing characters";
      *error = error_ + " at offset " + std::to_string(pos_);
      return false;
    }
    return true;
  }

 private:
  static constexpr int kMaxDepth = 64;

  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\t' || text_[pos_] == '\r'))
      ++pos_;
  }

  bool expect(const char* word) {
    const size_t n = std::char_traits<char>::length(word);
    if (text_.compare(pos_, n, word) != 0) return error("unexpected token");
    pos_ += n;
    return true;
  }

  bool error(const char* message) {
    if (error_.empty()) error_ = message;
    return false;
  }

  bool parse_value(JsonValue* v, int depth) {
    if (depth > kMaxDepth) return error("nesting too deep");
    skip_space();
    if (pos_ >= text_.size()) return error("unexpected end");
    const char c = text_[pos_];
    if (c == '{') return parse_object(v, depth);
    if (c == '[') return parse_array(v, depth);
    if (c == '"') {
      v->kind = JsonValue::Kind::String;
      return parse_string(&v->string);
    }
    if (c == 't') {
      v->kind = JsonValue::Kind::Bool;
      v->boolean = true;
      return expect("true");
    }
    if (c == 'f') {
      v->kind = JsonValue::Kind::Bool;
      v->boolean = false;
      return expect("false");
    }
    if (c == 'n') {
      v->kind = JsonValue::Kind::Null;
      return expect("null");
    }
    return parse_number(v);
  }

  bool parse_number(JsonValue* v) {
    const char* begin = text_.c_str() + pos_;
    char* end = nullptr;
    v->number = std::strtod(begin, &end);
    if (end == begin) return error("expected a value");
    v->kind = JsonValue::Kind::Number;
    pos_ += size_t(end - begin);
    return true;
  }

  bool parse_string(std::string* out) {
    ++pos_;  // opening quote
    while (pos_ < text_.size()) {
      const char c = text_[pos_++];
      if (c == '"') return true;
      if (c != '\\') {
        *out += c;
        continue;
      }
      if (pos_ >= text_.size()) break;
      const char e = text_[pos_++];
      switch (e) {
        case 'n': *out += '\n'; break;
        case 't': *out += '\t'; break;
        case 'r': *out += '\r'; break;
        case 'b': *out += '\b'; break;
        case 'f': *out += '\f'; break;
        case 'u': {
          if (pos_ + 4 > text_.size()) return error("short \\u escape");
          const unsigned code = unsigned(std::strtoul(text_.substr(pos_, 4).c_str(), nullptr, 16));
          pos_ += 4;
          if (code < 0x80) {
            *out += char(code);
          } else if (code < 0x800) {
            *out += char(0xC0 | (code >> 6));
            *out += char(0x80 | (code & 0x3F));
          } else {
            *out += char(0xE0 | (code >> 12));
            *out += char(0x80 | ((code >> 6) & 0x3F));
            *out += char(0x80 | (code & 0x3F));
          }
          break;
        }
        default: *out += e;
      }
    }
    return error("unterminated string");
  }

  bool parse_array(JsonValue* v, int depth) {
    v->kind = JsonValue::Kind::Array;
    ++pos_;
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return true;
    }
    for (;;) {
      v->array.emplace_back();
      if (!parse_value(&v->array.back(), depth + 1)) return false;
      skip_space();
      if (pos_ >= text_.size()) return error("unterminated array");
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == ']') {
        ++pos_;
        return true;
      }
      return error("expected , or ]");
    }
  }

  bool parse_object(JsonValue* v, int depth) {
    v->kind = JsonValue::Kind::Object;
    ++pos_;
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return true;
    }
    for (;;) {
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] != '"') return error("expected a key");
      std::string key;
      if (!parse_string(&key)) return false;
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] != ':') return error("expected :");
      ++pos_;
      v->object.emplace_back(std::move(key), JsonValue());
      if (!parse_value(&v->object.back().second, depth + 1)) return false;
      skip_space();
      if (pos_ >= text_.size()) return error("unterminated object");
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == '}') {
        ++pos_;
        return true;
      }
      return error("expected , or }");
    }
  }

  const std::string& text_;
  size_t pos_ = 0;
  std::string error_;
};

}  // namespace

const JsonValue& JsonValue::operator[](const std::string& key) const {
  static const JsonValue null_value;
  if (kind != Kind::Object) return null_value;
  for (const auto& member : object)
    if (member.first == key) return member.second;
  return null_value;
}

bool json_parse(const std::string& text, JsonValue* value, std::string* error) {
  *value = JsonValue();
  return JsonParser(text).parse(value, error);
}

}  // namespace af
