// Minimal JSON text building for reports (no parsing).
#pragma once

#include <string>

namespace af {

// s as a quoted JSON string literal.
std::string json_quote(const std::string& s);

}  // namespace af
