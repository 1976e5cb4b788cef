// Minimal JSON: quoting for the reports the library writes, and a small
// parser for reading reports back (the CLI, probe output).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace af {

// s as a quoted JSON string literal.
std::string json_quote(const std::string& s);

// A parsed JSON value, for reading reports the library or a probe produced.
struct JsonValue {
  enum class Kind { Null, Bool, Number, String, Array, Object } kind = Kind::Null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<JsonValue> array;
  std::vector<std::pair<std::string, JsonValue>> object;  // insertion order kept

  // The member named key, or a Null value when absent or not an object.
  const JsonValue& operator[](const std::string& key) const;
  bool is_null() const { return kind == Kind::Null; }
};

// Parses text; returns false (with *error set) on malformed input. Depth-limited.
bool json_parse(const std::string& text, JsonValue* value, std::string* error);

}  // namespace af
