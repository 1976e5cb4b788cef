#include "doctor/pyimports.h"

#include <cctype>
#include <deque>
#include <map>

namespace af::doctor {
namespace {

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

std::string trim(const std::string& text) {
  size_t a = text.find_first_not_of(" \t");
  if (a == std::string::npos) return "";
  size_t b = text.find_last_not_of(" \t");
  return text.substr(a, b - a + 1);
}

bool is_identifier(const std::string& text) {
  if (text.empty() || std::isdigit(static_cast<unsigned char>(text[0]))) return false;
  for (char c : text) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == separator) {
      parts.push_back(text.substr(start, i - start));
      start = i + 1;
    }
  }
  return parts;
}

std::string parent_of(const std::string& module) {
  size_t dot = module.rfind('.');
  return dot == std::string::npos ? "" : module.substr(0, dot);
}

// One `import` or `from ... import` statement.
struct ImportStatement {
  bool from = false;
  std::string module;  // resolved absolute module ("" when it reaches above the top)
  std::vector<std::pair<std::string, std::string>> names;  // (name, bound as); for `import a.b`: ("a.b", "a")
  bool star = false;
};

// Parses one simple statement; false when it is not an import.
bool parse_import(const std::string& statement, const PythonSource& source, ImportStatement& out) {
  if (starts_with(statement, "import ")) {
    for (const std::string& item : split(statement.substr(7), ',')) {
      std::string text = trim(item);
      size_t as = text.find(" as ");
      std::string name = trim(text.substr(0, as));
      if (name.empty()) continue;
      std::string bound = as == std::string::npos ? name.substr(0, name.find('.')) : trim(text.substr(as + 4));
      out.names.emplace_back(name, bound);
    }
    return !out.names.empty();
  }
  if (!starts_with(statement, "from ")) return false;
  size_t import_at = statement.find(" import ");
  if (import_at == std::string::npos) return false;
  out.from = true;
  std::string target = trim(statement.substr(5, import_at - 5));
  size_t dots = 0;
  while (dots < target.size() && target[dots] == '.') ++dots;
  if (dots == 0) {
    out.module = target;
  } else {
    std::string base = source.is_package ? source.module : parent_of(source.module);
    for (size_t d = 1; d < dots && !base.empty(); ++d) base = parent_of(base);
    if (base.empty()) return true;  // reaches above the wheel's top level: not judged
    std::string rest = target.substr(dots);
    out.module = rest.empty() ? base : base + "." + rest;
  }
  std::string names = statement.substr(import_at + 8);
  for (char& c : names) {
    if (c == '(' || c == ')') c = ' ';
  }
  for (const std::string& item : split(names, ',')) {
    std::string text = trim(item);
    if (text == "*") {
      out.star = true;
      continue;
    }
    size_t as = text.find(" as ");
    std::string name = trim(text.substr(0, as));
    if (!is_identifier(name)) continue;
    out.names.emplace_back(name, as == std::string::npos ? name : trim(text.substr(as + 4)));
  }
  return true;
}

std::vector<std::string> simple_statements(const std::string& line) {
  std::vector<std::string> out;
  for (const std::string& part : split(line, ';')) {
    std::string text = trim(part);
    if (!text.empty()) out.push_back(text);
  }
  return out;
}

// Names a module's source binds anywhere (module level or in blocks), or
// `unknown` when it can bind names the reader cannot see.
struct Bindings {
  std::set<std::string> names;
  bool unknown = false;
};

Bindings bindings_of(const PythonSource& source, const std::vector<PythonLine>& lines) {
  Bindings b;
  static const char* const kDynamic[] = {"def __getattr__", "__getattr__ =", "sys.modules[", "globals()",
                                         "_LazyModule",     "lazy_loader",   "LazyModule",   "setattr(sys.modules"};
  for (const PythonLine& line : lines) {
    for (const char* marker : kDynamic) {
      if (line.text.find(marker) != std::string::npos) b.unknown = true;
    }
    for (const std::string& statement : simple_statements(line.text)) {
      ImportStatement import;
      if (parse_import(statement, source, import)) {
        if (import.star) b.unknown = true;
        // `from . import name` inside the package itself binds name only by importing the submodule.
        if (import.from && import.module == source.module) continue;
        for (const auto& [name, bound] : import.names) b.names.insert(bound);
        continue;
      }
      // def/class anywhere (also after `if x:` on one line), and every name written
      // just before a lone '=' (assignments; keyword arguments too, which only errs
      // towards "bound").
      for (const char* keyword : {"def ", "class "}) {
        for (size_t at = statement.find(keyword); at != std::string::npos; at = statement.find(keyword, at + 1)) {
          if (at > 0 && (std::isalnum(static_cast<unsigned char>(statement[at - 1])) || statement[at - 1] == '_'))
            continue;
          std::string rest = statement.substr(at + std::string(keyword).size());
          b.names.insert(rest.substr(0, rest.find_first_of("(:[ ")));
        }
      }
      for (size_t at = statement.find('='); at != std::string::npos; at = statement.find('=', at + 1)) {
        char after = at + 1 < statement.size() ? statement[at + 1] : ' ';
        char before = at ? statement[at - 1] : ' ';
        if (after == '=' || std::string("=!<>").find(before) != std::string::npos) {
          if (after == '=') ++at;
          continue;
        }
        size_t end = at;
        while (end > 0 && statement[end - 1] == ' ') --end;
        size_t begin = end;
        while (begin > 0 &&
               (std::isalnum(static_cast<unsigned char>(statement[begin - 1])) || statement[begin - 1] == '_'))
          --begin;
        if (begin < end) b.names.insert(statement.substr(begin, end - begin));
      }
      if (starts_with(statement, "for ")) {
        size_t in = statement.find(" in ");
        for (const std::string& t : split(statement.substr(4, in == std::string::npos ? 0 : in - 4), ','))
          b.names.insert(trim(t));
      }
      for (size_t as = statement.find(" as "); as != std::string::npos; as = statement.find(" as ", as + 4)) {
        std::string rest = statement.substr(as + 4);
        b.names.insert(rest.substr(0, rest.find_first_of(" :,)")));
      }
      // Assignment targets: every segment before the last top-level '=' (a = b = value, a, b = pair, x: int = 0).
      int depth = 0;
      size_t segment_start = 0;
      for (size_t i = 0; i < statement.size(); ++i) {
        char c = statement[i];
        if (c == '(' || c == '[' || c == '{')
          ++depth;
        else if (c == ')' || c == ']' || c == '}')
          --depth;
        else if (c == '=' && depth == 0) {
          char before = i ? statement[i - 1] : ' ', after = i + 1 < statement.size() ? statement[i + 1] : ' ';
          if (after == '=' || std::string("=!<>").find(before) != std::string::npos) {
            if (after == '=') ++i;
            continue;
          }
          std::string target = statement.substr(segment_start, i - segment_start);
          if (!target.empty() && std::string("+-*/%&|^@").find(target.back()) != std::string::npos) target.pop_back();
          target = target.substr(0, target.find(':'));
          for (std::string t : split(target, ',')) {
            for (char& ch : t) {
              if (ch == '(' || ch == ')' || ch == '[' || ch == ']' || ch == '*') ch = ' ';
            }
            t = trim(t);
            if (is_identifier(t)) b.names.insert(t);
          }
          segment_start = i + 1;
        }
      }
    }
  }
  return b;
}

}  // namespace

std::vector<PythonLine> python_logical_lines(const std::string& s) {
  std::vector<PythonLine> lines;
  std::string current;
  int indent = 0, depth = 0;
  bool line_start = true;
  auto emit = [&] {
    std::string text = trim(current);
    if (!text.empty()) lines.push_back({indent, text});
    current.clear();
  };
  size_t i = 0, n = s.size();
  while (i < n) {
    char c = s[i];
    if (line_start) {
      int column = 0;
      while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\f')) column += s[i++] == '\t' ? 8 - column % 8 : 1;
      indent = column;
      line_start = false;
      continue;
    }
    if (c == '#') {
      while (i < n && s[i] != '\n') ++i;
      continue;
    }
    if (c == '\\' && i + 1 < n && (s[i + 1] == '\n' || (s[i + 1] == '\r' && i + 2 < n && s[i + 2] == '\n'))) {
      i += s[i + 1] == '\n' ? 2 : 3;
      current += ' ';
      continue;
    }
    if (c == '"' || c == '\'') {
      bool triple = i + 2 < n && s[i + 1] == c && s[i + 2] == c;
      i += triple ? 3 : 1;
      while (i < n) {
        if (s[i] == '\\') {
          i += 2;
          continue;
        }
        if (triple ? (s[i] == c && i + 2 < n && s[i + 1] == c && s[i + 2] == c) : s[i] == c) {
          i += triple ? 3 : 1;
          break;
        }
        if (!triple && s[i] == '\n') break;  // unterminated: the tokenizer would stop here too
        ++i;
      }
      current += "\"\"";
      continue;
    }
    if (c == '(' || c == '[' || c == '{') ++depth;
    if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
    if (c == '\n') {
      ++i;
      if (depth > 0) {
        current += ' ';
        continue;
      }
      emit();
      line_start = true;
      continue;
    }
    if (c != '\r') current += c;
    ++i;
  }
  emit();
  return lines;
}

ImportScan scan_imports(const std::vector<PythonSource>& sources, const std::set<std::string>& modules) {
  std::map<std::string, const PythonSource*> by_module;
  std::map<std::string, std::vector<PythonLine>> lines;
  for (const PythonSource& source : sources) {
    by_module[source.module] = &source;
    lines[source.module] = python_logical_lines(source.text);
  }
  std::set<std::string> tops;
  for (const std::string& m : modules) tops.insert(m.substr(0, m.find('.')));
  std::map<std::string, Bindings> bindings;
  auto bound_in = [&](const std::string& module, const std::string& name) {
    auto source = by_module.find(module);
    if (source == by_module.end()) return true;  // a compiled module or a namespace package: cannot tell
    auto cached = bindings.find(module);
    if (cached == bindings.end()) cached = bindings.emplace(module, bindings_of(*source->second, lines[module])).first;
    return cached->second.unknown || cached->second.names.count(name) > 0;
  };

  ImportScan scan;
  std::set<std::string> reported;
  std::set<std::string> reached;
  std::deque<std::string> queue;
  auto reach = [&](const std::string& module) {
    // Importing a.b.c runs a and a.b first.
    std::string prefix;
    for (const std::string& part : split(module, '.')) {
      prefix += (prefix.empty() ? "" : ".") + part;
      if (modules.count(prefix) && reached.insert(prefix).second) queue.push_back(prefix);
    }
  };
  auto missing = [&](const std::string& module, const std::string& importer, bool from_reached) {
    if (!reported.insert(module).second) {
      for (MissingModule& m : scan.missing) {
        if (m.module == module && from_reached && !m.reached) m = {module, importer, true};
      }
      return;
    }
    scan.missing.push_back({module, importer, from_reached});
  };
  // Follows one module's module-level imports.
  auto visit = [&](const std::string& module, bool from_reached) {
    auto source = by_module.find(module);
    if (source == by_module.end()) return;
    for (const PythonLine& line : lines[module]) {
      if (line.indent != 0) continue;
      for (const std::string& statement : simple_statements(line.text)) {
        ImportStatement import;
        if (!parse_import(statement, *source->second, import) || (import.from && import.module.empty())) continue;
        std::vector<std::string> targets;
        if (import.from)
          targets.push_back(import.module);
        else
          for (const auto& [name, bound] : import.names) targets.push_back(name);
        for (const std::string& target : targets) {
          std::string top = target.substr(0, target.find('.'));
          if (!tops.count(top)) {
            if (from_reached && top != "__future__") scan.external.emplace_back(top, module);
            continue;
          }
          if (!modules.count(target)) {
            missing(target, module, from_reached);
            continue;
          }
          if (from_reached) reach(target);
          if (!import.from) continue;
          for (const auto& [name, bound] : import.names) {
            std::string child = target + "." + name;
            if (modules.count(child)) {
              if (from_reached) reach(child);
            } else if (!bound_in(target, name)) {
              missing(child, module, from_reached);
            }
          }
        }
      }
    }
  };
  for (const PythonSource& source : sources) {
    if (source.module.find('.') == std::string::npos) reach(source.module);
  }
  while (!queue.empty()) {
    std::string module = queue.front();
    queue.pop_front();
    visit(module, true);
  }
  for (const PythonSource& source : sources) {
    if (!reached.count(source.module)) visit(source.module, false);
  }
  scan.reached = std::move(reached);
  return scan;
}

}  // namespace af::doctor
