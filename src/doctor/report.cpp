#include "doctor/report.h"

#include <cstdio>

namespace af::doctor {

bool BinaryReport::healthy() const {
  if (!readable) return false;
  for (const Finding& f : findings) {
    if (f.severity == Severity::kError) return false;
  }
  return true;
}

const char* severity_name(Severity severity) {
  switch (severity) {
    case Severity::kInfo: return "info";
    case Severity::kWarning: return "warning";
    default: return "error";
  }
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  size_t i = 0;
  auto escape_byte = [&](unsigned char c) {
    char escaped[8];
    std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
    out += escaped;
  };
  while (i < text.size()) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '"')
      out += "\\\"";
    else if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || c == 0x7f)
      escape_byte(c);
    else if (c < 0x80)
      out += char(c);
    else {
      // Copy a well-formed UTF-8 sequence; escape stray bytes one by one.
      size_t length = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
      bool valid = length > 0 && i + length <= text.size();
      for (size_t k = 1; valid && k < length; ++k) valid = (static_cast<unsigned char>(text[i + k]) >> 6) == 0x2;
      if (valid) {
        out.append(text, i, length);
        i += length;
        continue;
      }
      escape_byte(c);
    }
    ++i;
  }
  return out + "\"";
}

std::string json_string_array(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? "," : "") + json_string(items[i]);
  return out + "]";
}

std::string finding_json(const Finding& f) {
  return "{\"check\":" + json_string(f.check) + ",\"severity\":" + json_string(severity_name(f.severity)) +
         ",\"summary\":" + json_string(f.summary) + ",\"evidence\":" + json_string_array(f.evidence) +
         ",\"fix\":" + json_string(f.fix) + "}";
}

std::string binary_json(const BinaryReport& r) {
  std::string out = "{\"path\":" + json_string(r.path) + ",\"name\":" + json_string(r.display_name) +
                    ",\"healthy\":" + (r.healthy() ? "true" : "false") +
                    ",\"readable\":" + (r.readable ? "true" : "false") + ",\"role\":" + json_string(r.role) +
                    ",\"cxx11_abi\":" + (r.cxx11_abi < 0 ? std::string("null") : std::to_string(r.cxx11_abi)) +
                    ",\"undefined_symbols\":" + std::to_string(r.undefined_symbols) +
                    ",\"unresolved_symbols\":" + std::to_string(r.unresolved_symbols) + ",\"needed\":[";
  for (size_t i = 0; i < r.needed.size(); ++i) {
    const LibraryResolution& n = r.needed[i];
    out += std::string(i ? "," : "") + "{\"name\":" + json_string(n.name) +
           ",\"path\":" + (n.path.empty() ? std::string("null") : json_string(n.path)) +
           ",\"found_by\":" + json_string(n.found_by) + "}";
  }
  out += "],\"fatbin\":";
  out += r.has_fatbin
             ? "{\"cubins\":" + json_string_array(r.fatbin.cubins) + ",\"ptx\":" + json_string_array(r.fatbin.ptx) + "}"
             : std::string("null");
  out += ",\"findings\":[";
  for (size_t i = 0; i < r.findings.size(); ++i) out += (i ? "," : "") + finding_json(r.findings[i]);
  return out + "]}";
}

std::string binary_text(const BinaryReport& r, bool verbose) {
  const std::string& name = r.display_name.empty() ? r.path : r.display_name;
  const Finding* worst = nullptr;
  for (const Finding& f : r.findings) {
    if (!worst || int(f.severity) > int(worst->severity)) worst = &f;
  }
  std::string out;
  if (r.healthy()) {
    out = "  ok      " + name;
    if (worst && worst->severity == Severity::kWarning) out += "  (warning: " + worst->summary + ")";
    if (worst && worst->severity == Severity::kInfo) out += "  (" + worst->summary + ")";
  } else {
    out = "  BROKEN  " + name + ": " + (worst ? worst->summary : "unreadable");
  }
  out += "\n";
  // The headline finding's evidence and fix come first, right under the headline;
  // every other finding is printed under its own [severity] line.
  auto details = [&](const Finding& f) {
    if (verbose) {
      for (const std::string& e : f.evidence) out += "            evidence: " + e + "\n";
    }
    if (!f.fix.empty()) out += "            fix: " + f.fix + "\n";
  };
  if (worst && (verbose || worst->severity == Severity::kError)) details(*worst);
  for (const Finding& f : r.findings) {
    bool show = verbose || f.severity == Severity::kError;
    if (!show || &f == worst) continue;
    out += std::string("          [") + severity_name(f.severity) + "] " + f.summary + "\n";
    details(f);
  }
  if (verbose) {
    for (const LibraryResolution& n : r.needed) {
      out += "          needs " + n.name + " -> " +
             (n.path.empty() ? std::string("NOT FOUND") : n.path + " (" + n.found_by + ")") + "\n";
    }
    if (r.has_fatbin) {
      std::string list;
      for (const std::string& c : r.fatbin.cubins) list += " " + c;
      for (const std::string& p : r.fatbin.ptx) list += " " + p;
      out += "          GPU code:" + list + "\n";
    }
  }
  return out;
}

}  // namespace af::doctor
