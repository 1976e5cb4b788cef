#include "doctor/analysis.h"

#include <cxxabi.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <set>

#include "doctor/fatbin.h"

namespace af::doctor {

// ---------------------------------------------------------------------------
// Names and versions

std::string demangle(const std::string& mangled) {
  if (mangled.compare(0, 2, "_Z") != 0) return "";
  int status = 0;
  char* text = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
  std::string out = status == 0 && text ? text : "";
  std::free(text);
  return out;
}

namespace {

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  size_t at = 0;
  while ((at = text.find(from, at)) != std::string::npos) {
    text.replace(at, from.size(), to);
    at += to.size();
  }
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}
bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string basename_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string dirname_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string absolute_path(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) return path;
  return std::string(cwd) + "/" + path;
}

std::string real_path(const std::string& path) {
  char* resolved = realpath(path.c_str(), nullptr);
  if (!resolved) return path;
  std::string out = resolved;
  std::free(resolved);
  return out;
}

bool is_regular_file(const std::string& path) {
  struct stat info {};
  return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

// The qualified name of a demangled function without its parameter list:
// "c10::cuda::SetDevice(signed char, bool)" -> "c10::cuda::SetDevice".
std::string function_base_name(const std::string& signature) {
  int depth = 0;
  for (size_t i = 0; i < signature.size(); ++i) {
    if (signature.compare(i, 8, "operator") == 0) {
      i += 8;
      if (signature.compare(i, 2, "()") == 0)
        ++i;
      else
        while (i + 1 < signature.size() && std::strchr("<>=!+-*/%^&|~[],", signature[i + 1])) ++i;
      continue;
    }
    char c = signature[i];
    if (c == '<')
      ++depth;
    else if (c == '>')
      --depth;
    else if (c == '(' && depth == 0)
      return signature.substr(0, i);
  }
  return signature;
}

int version_compare(const std::vector<int>& a, const std::vector<int>& b) {
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    int x = i < a.size() ? a[i] : 0, y = i < b.size() ? b[i] : 0;
    if (x != y) return x < y ? -1 : 1;
  }
  return 0;
}

// Numbers after a library's ".so." ("libcudart.so.12" -> 12); -1 when none.
int soname_major(const std::string& name, const std::string& stem) {
  if (!starts_with(name, stem + ".so.")) return -1;
  return std::atoi(name.c_str() + stem.size() + 4);
}

// ABI evidence carried by one demangled torch-namespace symbol: 1 new (std::__cxx11), 0 old, -1 none.
int abi_of_demangled(const std::string& demangled) {
  if (demangled.find("std::__cxx11::") != std::string::npos || demangled.find("[abi:cxx11]") != std::string::npos) {
    return 1;
  }
  if (demangled.find("std::string") != std::string::npos || demangled.find("std::basic_string<") != std::string::npos ||
      demangled.find("std::list<") != std::string::npos) {
    return 0;
  }
  return -1;
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

// The libraries `import torch` maps (so a module that needs them loads only after it).
bool is_torch_library(const std::string& name) {
  static const char* const kNames[] = {
      "libc10.so",          "libc10_cuda.so",         "libtorch.so", "libtorch_cpu.so", "libtorch_cuda.so",
      "libtorch_python.so", "libtorch_global_deps.so"};
  for (const char* n : kNames) {
    if (name == n || starts_with(name, std::string(n) + ".")) return true;
  }
  return false;
}

std::string module_name_of(const std::string& path) {
  std::string base = basename_of(path);
  return base.substr(0, base.find('.'));
}

}  // namespace

std::string read_text_file(const std::string& path, size_t max_bytes) {
  std::string text;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    char buffer[65536];
    size_t got;
    while (text.size() < max_bytes && (got = std::fread(buffer, 1, sizeof buffer, f)) > 0) text.append(buffer, got);
    std::fclose(f);
  }
  return text;
}

namespace {

std::string shell_quote(const std::string& text) {
  for (char c : text) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && !std::strchr("@%+=:,./-_", c)) {
      std::string out = "'";
      for (char d : text) out += d == '\'' ? std::string("'\\''") : std::string(1, d);
      return out + "'";
    }
  }
  return text;
}

constexpr const char* kAttnforgeAlternative =
    "or, for attention kernels, use attnforge (`pip install attnforge`: no C++ ABI, one wheel for every "
    "torch/CUDA/Python)";

}  // namespace

namespace {

// "MPI.mpich.cpython-312-x86_64-linux-gnu.so" -> "MPI.{}.cpython-312-x86_64-linux-gnu.so": an
// extension module with a variant name between the module and its PEP 3149 tag ("" otherwise).
std::string module_variant_key(const std::string& file_name) {
  auto identifier = [](const std::string& text) {
    return !text.empty() && std::all_of(text.begin(), text.end(),
                                        [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
  };
  size_t first = file_name.find('.');
  size_t second = first == std::string::npos ? first : file_name.find('.', first + 1);
  if (second == std::string::npos) return "";
  std::string tag = file_name.substr(second + 1);
  bool extension_tag = (starts_with(tag, "cpython-") || starts_with(tag, "pypy")) && ends_with(tag, ".so");
  if (!extension_tag && tag != "abi3.so") return "";
  if (!identifier(file_name.substr(0, first)) || !identifier(file_name.substr(first + 1, second - first - 1)))
    return "";
  return file_name.substr(0, first) + ".{}." + tag;
}

}  // namespace

std::string alternative_key(const std::string& file_name) {
  std::string variant = module_variant_key(file_name);
  if (!variant.empty()) return variant;
  auto separator = [](char c) { return c == '_' || c == '-' || c == '.'; };
  for (size_t at = 0; at < file_name.size(); ++at) {
    if (at > 0 && !separator(file_name[at - 1])) continue;
    size_t end = at;
    if (file_name.compare(at, 3, "cpu") == 0) {
      end = at + 3;
    } else {
      for (const char* stem : {"cuda", "rocm", "xpu", "cu"}) {
        size_t length = std::strlen(stem);
        if (file_name.compare(at, length, stem) != 0) continue;
        size_t digits = at + length;
        while (digits < file_name.size() &&
               (std::isdigit(static_cast<unsigned char>(file_name[digits])) || file_name[digits] == '.') &&
               !(file_name[digits] == '.' && file_name.compare(digits, 3, ".so") == 0)) {
          ++digits;
        }
        if (digits > at + length) {
          end = digits;
          break;
        }
      }
    }
    if (end > at && (end == file_name.size() || separator(file_name[end]))) {
      return file_name.substr(0, at) + "{}" + file_name.substr(end);
    }
  }
  return "";
}

void judge_optional_libraries(std::vector<BinaryReport>& reports) {
  std::set<std::string> needed;
  for (const BinaryReport& r : reports) {
    for (const LibraryResolution& n : r.needed) needed.insert(n.name);
  }
  for (BinaryReport& r : reports) {
    if ((r.role != "library" && r.role != "executable") || needed.count(basename_of(r.path))) continue;
    for (Finding& f : r.findings) {
      if (f.severity != Severity::kError || f.check == "truncated") continue;
      f.severity = Severity::kWarning;
      f.summary = (r.role == "executable" ? "a program, not loaded by Python: "
                                          : "optional (no module links it: a plugin loaded on demand): ") +
                  f.summary;
    }
  }
}

void judge_alternatives(std::vector<BinaryReport>& reports) {
  std::map<std::string, std::vector<BinaryReport*>> groups;
  for (BinaryReport& r : reports) {
    std::string key = alternative_key(basename_of(r.path));
    if (!key.empty()) groups[dirname_of(r.path) + "/" + key].push_back(&r);
  }
  for (auto& [key, group] : groups) {
    if (group.size() < 2) continue;
    bool module_variants = !module_variant_key(basename_of(group.front()->path)).empty();
    const BinaryReport* chosen = nullptr;
    for (const BinaryReport* r : group) {
      if (r->healthy()) chosen = chosen ? chosen : r;
    }
    if (!chosen && module_variants) {
      // None loads here for want of its libraries (e.g. no MPI installed): one warning for
      // the group, the rest info. Errors of another kind (a wrong Python) stay errors.
      std::vector<std::string> names;
      for (const BinaryReport* r : group) names.push_back(basename_of(r->path));
      bool warned = false;
      for (BinaryReport* r : group) {
        for (Finding& f : r->findings) {
          if (f.severity != Severity::kError || (f.check != "missing_library" && f.check != "unresolved_symbol"))
            continue;
          f.summary = warned ? "alternative: " + f.summary
                             : "none of the per-build variants (" + join(names, ", ") + ") loads here: " + f.summary;
          f.severity = warned ? Severity::kInfo : Severity::kWarning;
          warned = true;
        }
      }
      continue;
    }
    if (!chosen) continue;
    for (BinaryReport* r : group) {
      if (r->healthy()) continue;
      for (Finding& f : r->findings) {
        if (f.severity != Severity::kError) continue;
        f.severity = Severity::kInfo;
        f.summary = "alternative not used here (" + basename_of(chosen->path) + " loads): " + f.summary;
        f.fix = "";
      }
    }
  }
}

Distribution parse_metadata(const std::string& metadata) {
  Distribution d;
  size_t start = 0;
  while (start < metadata.size()) {
    size_t end = metadata.find('\n', start);
    if (end == std::string::npos) end = metadata.size();
    std::string line = metadata.substr(start, end - start);
    start = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) break;  // the body (description) follows the headers
    if (starts_with(line, "Name: "))
      d.name = line.substr(6);
    else if (starts_with(line, "Version: "))
      d.version = line.substr(9);
    else if (starts_with(line, "Requires-Dist: ")) {
      std::string requirement = line.substr(15);
      requirement = requirement.substr(0, requirement.find(';'));  // environment markers
      size_t name_end = requirement.find_first_of(" (<>=!~[");
      std::string name = requirement.substr(0, name_end);
      if (name != "torch" || name_end == std::string::npos) continue;
      std::string spec;
      for (char c : requirement.substr(name_end)) {
        if (c != ' ' && c != '(' && c != ')') spec += c;
      }
      d.torch_requirement = spec;
    }
  }
  return d;
}

std::string public_version(const std::string& version) { return version.substr(0, version.find('+')); }

std::string matching_build_fix(const Distribution& d, const PythonFacts* python) {
  std::string pip = (python && !python->executable.empty() ? shell_quote(python->executable) : std::string("python")) +
                    " -m pip install";
  if (d.name.empty()) return "";
  std::string pinned = d.version.empty() ? d.name : d.name + "==" + d.version;
  const TorchFacts* torch = python && python->torch.found && !python->torch.version.empty() ? &python->torch : nullptr;
  if (starts_with(d.torch_requirement, "==") && !torch) {
    return "`" + pip + " " + shell_quote("torch" + d.torch_requirement) + "`, the torch " + pinned + " was built for";
  }
  if (starts_with(d.torch_requirement, "==")) {
    std::string wanted = d.torch_requirement.substr(2);
    std::string installed = public_version(torch->version);
    if (wanted != installed) {
      return "`" + pip + " " + shell_quote(d.name) + " " + shell_quote("torch==" + installed) + "` installs the " +
             d.name + " release built for your torch " + installed + " (" + d.name + " " + d.version + " pins torch" +
             d.torch_requirement + "); or `" + pip + " " + shell_quote("torch==" + wanted) +
             "`, the torch it was built for";
    }
    return "`" + pip + " --force-reinstall --no-deps --no-cache-dir " + shell_quote(pinned) + "` (the build of " +
           pinned + " for this interpreter and platform)";
  }
  return source_build_command(d, python, "");
}

std::string source_build_command(const Distribution& d, const PythonFacts* python, const std::string& extra_env) {
  if (d.name.empty()) return "";
  std::string pip = (python && !python->executable.empty() ? shell_quote(python->executable) : std::string("python")) +
                    " -m pip install";
  std::string pinned = d.version.empty() ? d.name : d.name + "==" + d.version;
  const TorchFacts* torch = python && python->torch.found && !python->torch.version.empty() ? &python->torch : nullptr;
  std::string lowered = d.name;
  std::transform(lowered.begin(), lowered.end(), lowered.begin(),
                 [](char c) { return c == '_' ? '-' : char(std::tolower(c)); });
  std::string build_env = extra_env;
  if (lowered == "flash-attn") {
    // flash-attn's setup.py downloads a prebuilt wheel unless forced; it does not ask torch for the ABI.
    build_env += "FLASH_ATTENTION_FORCE_BUILD=TRUE ";
    if (torch && torch->reported_cxx11_abi >= 0) {
      build_env += std::string("FLASH_ATTENTION_FORCE_CXX11_ABI=") + (torch->reported_cxx11_abi ? "TRUE " : "FALSE ");
    }
  }
  return "`" + build_env + pip + " --no-build-isolation --no-cache-dir --force-reinstall --no-deps --no-binary " +
         shell_quote(d.name) + " " + shell_quote(pinned) + "` (a source build against the installed torch" +
         (torch ? " " + torch->version : "") + "; --no-cache-dir so that pip does not reuse a cached wheel)";
}

std::string abi_neutral_key(const std::string& demangled) {
  std::string key = demangled;
  replace_all(key, "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >", "std::string");
  replace_all(key, "std::basic_string<char, std::char_traits<char>, std::allocator<char> >", "std::string");
  replace_all(key, "std::__cxx11::", "std::");
  replace_all(key, "[abi:cxx11]", "");
  return key;
}

bool in_torch_namespace(const std::string& demangled) {
  static const char* const kSpecialPrefixes[] = {"vtable for ",      "typeinfo for ",       "typeinfo name for ",
                                                 "VTT for ",         "guard variable for ", "non-virtual thunk to ",
                                                 "virtual thunk to "};
  std::string name = demangled;
  for (const char* prefix : kSpecialPrefixes) {
    if (starts_with(name, prefix)) name = name.substr(std::strlen(prefix));
  }
  static const char* const kNamespaces[] = {"c10::", "at::", "torch::", "caffe2::"};
  // Function templates demangle with their return type first: look at the name before '('.
  std::string head = function_base_name(name);
  for (const char* ns : kNamespaces) {
    if (starts_with(head, ns)) return true;
    size_t space = head.rfind(' ');
    if (space != std::string::npos && starts_with(head.substr(space + 1), ns)) return true;
  }
  return false;
}

bool parse_symbol_version(const std::string& version, std::string& family, std::vector<int>& numbers) {
  size_t underscore = version.find('_');
  if (underscore == std::string::npos) return false;
  family = version.substr(0, underscore);
  numbers.clear();
  const char* p = version.c_str() + underscore + 1;
  while (*p) {
    if (*p < '0' || *p > '9') return false;
    numbers.push_back(std::atoi(p));
    while (*p >= '0' && *p <= '9') ++p;
    if (*p == '.')
      ++p;
    else if (*p)
      return false;
  }
  return !numbers.empty();
}

// ---------------------------------------------------------------------------
// Scopes: what the loader would map, in lookup order

struct Analyzer::Scope {
  std::vector<LoadedLibrary*> objects;           // global scope first, then the target's dependency tree
  std::vector<LibraryResolution> target_needed;  // the target's own DT_NEEDED entries
  std::vector<LibraryResolution> missing;        // every unresolvable DT_NEEDED in the tree
  std::map<std::string, LoadedLibrary*> by_soname;
};

struct Analyzer::TorchIndex {
  std::unordered_map<std::string, std::vector<std::string>> mangled_by_key;  // abi_neutral_key -> mangled
  std::unordered_map<std::string, std::vector<std::string>> keys_by_base;    // base name -> keys
  std::set<std::string> indexed_paths;
};

// Every dynamic symbol torch's own libraries define -> the library's file name.
struct Analyzer::TorchExports {
  std::unordered_map<std::string, std::string> library_by_symbol;
};

Analyzer::Analyzer(AnalysisContext context) : context_(std::move(context)) {}
Analyzer::~Analyzer() = default;

Distribution Analyzer::owner_of(const std::string& path) {
  std::string file = real_path(absolute_path(path));
  std::string dir = dirname_of(file);
  for (int level = 0; level < 8; ++level) {
    auto cached = records_.find(dir);
    if (cached == records_.end()) {
      std::vector<std::pair<Distribution, std::set<std::string>>> entries;
      if (DIR* handle = opendir(dir.c_str())) {
        while (dirent* entry = readdir(handle)) {
          std::string name = entry->d_name;
          if (!ends_with(name, ".dist-info")) continue;
          std::string info = dir + "/" + name;
          Distribution d = parse_metadata(read_text_file(info + "/METADATA", 1 << 20));
          std::set<std::string> paths;
          std::string record = read_text_file(info + "/RECORD", 64 << 20);
          for (size_t start = 0; start < record.size();) {
            size_t end = record.find('\n', start);
            if (end == std::string::npos) end = record.size();
            std::string row = record.substr(start, end - start);
            start = end + 1;
            // RECORD is CSV: a path holding a comma is quoted.
            if (!row.empty() && row[0] == '"')
              paths.insert(row.substr(1, row.find('"', 1) - 1));
            else
              paths.insert(row.substr(0, row.find(',')));
          }
          entries.emplace_back(d, std::move(paths));
        }
        closedir(handle);
      }
      cached = records_.emplace(dir, std::move(entries)).first;
    }
    std::string relative = file.substr(dir == "/" ? 1 : dir.size() + 1);
    for (const auto& [d, paths] : cached->second) {
      if (paths.count(relative)) return d;
    }
    if (dir == "/") break;
    dir = dirname_of(dir);
  }
  return {};
}

LoadedLibrary* Analyzer::load(const std::string& path) {
  std::string key = real_path(path);
  auto found = libraries_.find(key);
  if (found != libraries_.end()) return found->second.get();
  MappedFile file;
  std::string error;
  auto library = std::make_unique<LoadedLibrary>();
  library->path = path;
  if (!file.open(path, error) || !parse_elf(file.view(), library->elf, error)) {
    libraries_[key] = nullptr;
    return nullptr;
  }
  LoadedLibrary* raw = library.get();
  libraries_[key] = std::move(library);
  return raw;
}

namespace {

void index_definitions(LoadedLibrary& library) {
  if (library.symbols_indexed) return;
  library.symbols_indexed = true;
  for (const ElfSymbol& symbol : library.elf.dynamic_symbols) {
    if (symbol.defined) library.definitions[symbol.name].push_back(&symbol);
  }
}

std::vector<std::string> expand_origin(const std::vector<std::string>& dirs, const std::string& origin) {
  std::vector<std::string> out;
  for (std::string dir : dirs) {
    replace_all(dir, "${ORIGIN}", origin);
    replace_all(dir, "$ORIGIN", origin);
    out.push_back(dir);
  }
  return out;
}

constexpr const char* kFoundBesideRequester = "same directory, only if loaded first";

const char* const kDefaultLibraryDirs[] = {
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"};

}  // namespace

// The loader's search for one DT_NEEDED name (glibc order: already loaded by
// soname, DT_RPATH when there is no DT_RUNPATH, LD_LIBRARY_PATH, DT_RUNPATH,
// /etc/ld.so.cache, default directories). Candidates of another ELF class or
// machine are skipped, as the loader does.
std::string Analyzer::find_library(const std::string& name, const LoadedLibrary& requester,
                                   const std::map<std::string, std::string>& preloaded, std::string& found_by) {
  auto acceptable = [&](const std::string& candidate) {
    if (!is_regular_file(candidate)) return false;
    LoadedLibrary* library = load(candidate);
    return library && library->elf.machine == requester.elf.machine;
  };
  if (name.find('/') != std::string::npos) {
    found_by = "path in DT_NEEDED";
    return acceptable(name) ? name : "";
  }
  auto loaded = preloaded.find(name);
  if (loaded != preloaded.end()) {
    found_by = "already loaded";
    return loaded->second;
  }
  std::string origin = dirname_of(absolute_path(requester.path));
  auto search = [&](const std::vector<std::string>& dirs, const char* how) -> std::string {
    for (const std::string& dir : dirs) {
      std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
      if (acceptable(candidate)) {
        found_by = how;
        return candidate;
      }
    }
    return "";
  };
  std::string path;
  if (requester.elf.runpath.empty() && !(path = search(expand_origin(requester.elf.rpath, origin), "RPATH")).empty()) {
    return path;
  }
  if (!(path = search(context_.ld_library_path, "LD_LIBRARY_PATH")).empty()) return path;
  if (!(path = search(expand_origin(requester.elf.runpath, origin), "RUNPATH")).empty()) return path;
  for (const LdCacheEntry& entry : context_.ld_cache) {
    if (entry.name == name && entry.x86_64 == (requester.elf.machine == kElfMachineX86_64) && acceptable(entry.path)) {
      found_by = "ld.so.cache";
      return entry.path;
    }
  }
  std::vector<std::string> defaults(std::begin(kDefaultLibraryDirs), std::end(kDefaultLibraryDirs));
  if (!(path = search(defaults, "default path")).empty()) return path;
  // Not on any search path, but beside the requester: packages such as
  // torchaudio dlopen such siblings themselves before the module that needs them.
  return search({origin}, kFoundBesideRequester);
}

// Breadth-first over DT_NEEDED like the loader: the global scope (the
// interpreter and what it loaded with RTLD_GLOBAL) comes first, then the
// target and its dependencies.
void Analyzer::build_scope(const LoadedLibrary& target, const std::vector<std::string>& preloaded_paths, Scope& scope) {
  std::map<std::string, std::string> preloaded;  // soname or file name -> path
  std::set<std::string> in_scope;
  auto add_object = [&](LoadedLibrary* library) {
    if (!library || !in_scope.insert(real_path(library->path)).second) return false;
    scope.objects.push_back(library);
    if (!library->elf.soname.empty()) scope.by_soname[library->elf.soname] = library;
    scope.by_soname[basename_of(library->path)] = library;
    return true;
  };
  for (const std::string& path : preloaded_paths) {
    LoadedLibrary* library = load(path);
    if (!library) continue;
    preloaded[basename_of(path)] = path;
    if (!library->elf.soname.empty()) preloaded[library->elf.soname] = path;
  }
  // Global scope: the interpreter executable and its dependency tree, plus
  // torch's libtorch_global_deps (loaded RTLD_GLOBAL by `import torch`).
  std::deque<LoadedLibrary*> queue;
  std::vector<std::string> global_roots;
  if (context_.python && !context_.python->binary.empty()) global_roots.push_back(context_.python->binary);
  for (const std::string& path : preloaded_paths) {
    if (basename_of(path) == "libtorch_global_deps.so") global_roots.push_back(path);
  }
  for (const std::string& root : global_roots) {
    LoadedLibrary* library = load(root);
    if (add_object(library)) queue.push_back(library);
  }
  auto walk = [&](bool record_target) {
    while (!queue.empty()) {
      LoadedLibrary* current = queue.front();
      queue.pop_front();
      bool is_target = record_target && current == &target;
      for (const std::string& name : current->elf.needed) {
        std::string how;
        std::string path = find_library(name, *current, preloaded, how);
        LibraryResolution resolution{name, path, path.empty() ? "" : how};
        if (is_target) scope.target_needed.push_back(resolution);
        if (path.empty()) {
          resolution.found_by = "needed by " + basename_of(current->path);
          scope.missing.push_back(resolution);
          continue;
        }
        LoadedLibrary* library = load(path);
        if (add_object(library)) queue.push_back(library);
      }
    }
  };
  walk(false);
  // A library `import torch` already mapped was resolved in torch's own lookup
  // scope (torch._C's dependency tree), which holds every library torch loaded.
  std::string target_real = real_path(target.path);
  bool preloaded_target = false;
  for (const std::string& path : preloaded_paths) preloaded_target |= real_path(path) == target_real;
  if (preloaded_target) {
    for (const std::string& path : preloaded_paths) {
      if (real_path(path) != target_real) add_object(load(path));
    }
  }
  LoadedLibrary* self = const_cast<LoadedLibrary*>(&target);
  if (add_object(self)) queue.push_back(self);
  walk(true);
}

std::vector<LoadedLibrary*> Analyzer::torch_libraries() {
  std::vector<LoadedLibrary*> libraries;
  if (!context_.python || !context_.python->torch.found) return libraries;
  static const char* const kTorchLibraries[] = {"libc10.so",          "libtorch.so",    "libtorch_cpu.so",
                                                "libtorch_python.so", "libc10_cuda.so", "libtorch_cuda.so"};
  for (const char* name : kTorchLibraries) {
    std::string path = context_.python->torch.package_dir + "/lib/" + name;
    if (!is_regular_file(path)) continue;
    if (LoadedLibrary* library = load(path)) libraries.push_back(library);
  }
  return libraries;
}

const Analyzer::TorchExports& Analyzer::torch_exports() {
  if (torch_exports_) return *torch_exports_;
  torch_exports_ = std::make_unique<TorchExports>();
  for (LoadedLibrary* library : torch_libraries()) {
    for (const ElfSymbol& symbol : library->elf.dynamic_symbols) {
      if (symbol.defined) torch_exports_->library_by_symbol.emplace(symbol.name, basename_of(library->path));
    }
  }
  return *torch_exports_;
}

const Analyzer::TorchIndex& Analyzer::torch_index(const Scope& scope) {
  if (!torch_index_) torch_index_ = std::make_unique<TorchIndex>();
  std::vector<LoadedLibrary*> libraries = scope.objects;
  for (LoadedLibrary* library : torch_libraries()) libraries.push_back(library);
  for (LoadedLibrary* library : libraries) {
    if (!library || !torch_index_->indexed_paths.insert(real_path(library->path)).second) continue;
    for (const ElfSymbol& symbol : library->elf.dynamic_symbols) {
      if (!symbol.defined) continue;
      const std::string& m = symbol.name;
      // Cheap filter before demangling: a torch namespace component must appear.
      if (m.find("3c10") == std::string::npos && m.find("2at") == std::string::npos &&
          m.find("5torch") == std::string::npos && m.find("6caffe2") == std::string::npos) {
        continue;
      }
      std::string text = demangle(m);
      if (text.empty() || !in_torch_namespace(text)) continue;
      std::string key = abi_neutral_key(text);
      auto& mangled = torch_index_->mangled_by_key[key];
      if (std::find(mangled.begin(), mangled.end(), m) == mangled.end()) mangled.push_back(m);
      auto& keys = torch_index_->keys_by_base[function_base_name(key)];
      if (keys.size() < 16 && std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
    }
  }
  return *torch_index_;
}

// ---------------------------------------------------------------------------
// The checks

namespace {

bool defined_in_scope(const std::vector<LoadedLibrary*>& objects, const LoadedLibrary* self,
                      const ElfSymbol& reference) {
  for (LoadedLibrary* object : objects) {
    if (object == self) continue;
    index_definitions(*object);
    auto found = object->definitions.find(reference.name);
    if (found == object->definitions.end()) continue;
    for (const ElfSymbol* definition : found->second) {
      // A versioned reference binds to that version; an unversioned one to the default (non-hidden) definition.
      if (reference.version.empty() ? !definition->hidden_version : definition->version == reference.version)
        return true;
    }
  }
  return false;
}

// flash-attn's prebuilt wheel naming (its setup.py): which release asset matches this environment.
std::string flash_attn_wheel_name(const PythonFacts& python, int torch_abi, const std::string& version) {
  const TorchFacts& torch = python.torch;
  int major = 0, minor = 0;
  if (version.empty() || torch.cuda_version.empty() || std::sscanf(torch.version.c_str(), "%d.%d", &major, &minor) != 2)
    return "";
  std::string cp = "cp" + std::to_string(python.major) + std::to_string(python.minor);
  return "flash_attn-" + version + "+cu" + std::to_string(std::atoi(torch.cuda_version.c_str())) + "torch" +
         std::to_string(major) + "." + std::to_string(minor) + "cxx11abi" + (torch_abi ? "TRUE" : "FALSE") + "-" + cp +
         "-" + cp + "-linux_" + python.machine + ".whl";
}

std::string abi_rebuild_fix(int torch_abi, const std::string& build_fix, const Distribution& d,
                            const PythonFacts* python) {
  std::string n = std::to_string(torch_abi);
  std::string fix = build_fix + " (torch.utils.cpp_extension passes torch's -D_GLIBCXX_USE_CXX11_ABI=" + n +
                    " itself; hand-written builds: add it to CXXFLAGS and to nvcc's -Xcompiler flags)";
  if (starts_with(d.name, "flash") && python) {
    std::string wheel = flash_attn_wheel_name(*python, torch_abi, d.version);
    if (!wheel.empty())
      fix += "; or the prebuilt release asset " + wheel + " from github.com/Dao-AILab/flash-attention/releases";
  }
  return fix + "; " + kAttnforgeAlternative;
}

std::string max_version_of_family(const ElfFile& elf, const std::string& family) {
  std::string best;
  std::vector<int> best_numbers;
  for (const std::string& version : elf.version_definitions) {
    std::string f;
    std::vector<int> numbers;
    if (parse_symbol_version(version, f, numbers) && f == family &&
        (best.empty() || version_compare(numbers, best_numbers) > 0)) {
      best = version;
      best_numbers = numbers;
    }
  }
  return best;
}

void check_python_module(const PythonFacts& python, const ElfFile& elf, const std::string& path,
                         const std::string& build_fix, BinaryReport& report) {
  std::string file = basename_of(path);
  std::string module = module_name_of(path);
  bool exports_init = false, exports_own_init = false;
  for (const ElfSymbol& symbol : elf.dynamic_symbols) {
    if (!symbol.defined || !starts_with(symbol.name, "PyInit_")) continue;
    exports_init = true;
    if (symbol.name == "PyInit_" + module) exports_own_init = true;
  }
  // "mod.cpython-312-x86_64-linux-gnu.so": the tag between "cpython-" and the next '-'.
  size_t tag_at = file.find(".cpython-");
  bool looks_like_extension = exports_init || tag_at != std::string::npos || ends_with(file, ".abi3.so");
  if (!looks_like_extension) return;
  bool suffix_ok = false;
  // The import system tries "<module><suffix>" for each suffix: the file is
  // importable only if what precedes a suffix is a plain module name.
  for (const std::string& suffix : python.extension_suffixes) {
    if (ends_with(file, suffix) && file.size() > suffix.size() &&
        file.substr(0, file.size() - suffix.size()).find('.') == std::string::npos) {
      suffix_ok = true;
    }
  }
  std::string interpreter = std::to_string(python.major) + "." + std::to_string(python.minor);
  // "MPI.mpich.cpython-312-x86_64-linux-gnu.so": a per-build variant that the package's own
  // loader imports by file name (mpi4py picks MPI.mpich or MPI.openmpi by the MPI it finds).
  std::string variant_key = module_variant_key(file);
  for (const std::string& suffix : python.extension_suffixes) {
    // The tag after the variant must be one of this interpreter's whole suffixes (not just ".so").
    if (suffix_ok || variant_key.empty() || variant_key.substr(variant_key.find(".{}") + 3) != suffix) continue;
    report.findings.push_back({"python_abi",
                               Severity::kInfo,
                               "per-build variant of module " + module +
                                   ": imported by file name by its package's own loader, not by Python's import system",
                               {"file name: " + file},
                               ""});
    return;
  }
  if (!suffix_ok) {
    Finding f{"python_abi", Severity::kError, "", {}, ""};
    std::string built_for = "another interpreter";
    if (tag_at != std::string::npos) {
      std::string tag = file.substr(tag_at + 9, file.find('-', tag_at + 9) - (tag_at + 9));
      if (tag.size() >= 2) built_for = "CPython " + tag.substr(0, 1) + "." + tag.substr(1);
    }
    f.summary = "built for " + built_for + "; Python " + interpreter +
                " never looks at this file name (import fails with ModuleNotFoundError)";
    f.evidence.push_back("file name: " + file);
    f.evidence.push_back("this interpreter loads: " + join(python.extension_suffixes, " "));
    f.fix = build_fix;
    report.findings.push_back(f);
  }
  if (exports_init && !exports_own_init) {
    report.findings.push_back(
        {"python_abi",
         Severity::kError,
         "does not define PyInit_" + module +
             ": import fails with 'dynamic module does not define "
             "module export function'",
         {"file name module: " + module},
         "rename the file to the module it defines, or rebuild it under the name it is imported as"});
  }
  for (const std::string& needed : elf.needed) {
    int major = 0, minor = 0;
    if (std::sscanf(needed.c_str(), "libpython%d.%d", &major, &minor) == 2 &&
        (major != python.major || minor != python.minor)) {
      report.findings.push_back({"python_abi",
                                 Severity::kError,
                                 "links " + needed + " but the interpreter is Python " + interpreter,
                                 {"DT_NEEDED " + needed},
                                 build_fix});
    }
  }
}

void check_gpu_code(ByteView image, const ElfFile& elf, const AnalysisContext& context, const Distribution& d,
                    BinaryReport& report) {
  const ElfSection* section = elf.find_section(".nv_fatbin");
  if (!section) return;
  ByteView data;
  std::vector<FatbinEntry> entries;
  std::string error;
  if (!image.slice(section->offset, section->size, data) || !parse_fatbin(data, entries, error)) {
    report.findings.push_back({"gpu_arch", Severity::kWarning, "cannot read the embedded GPU code: " + error, {}, ""});
    return;
  }
  // Objects built with the medium/large code model keep their fatbins in the
  // large-data sections instead: every region counts, not only .nv_fatbin's.
  for (const char* large_data : {".lrodata", ".ldata"}) {
    const ElfSection* extra = elf.find_section(large_data);
    ByteView extra_data;
    if (extra && extra->type != kSectionNoBits && image.slice(extra->offset, extra->size, extra_data) &&
        !find_fatbin_containers(extra_data, extra->address, entries, error)) {
      report.findings.push_back(
          {"gpu_arch", Severity::kWarning, "cannot read the embedded GPU code: " + error, {}, ""});
    }
  }
  report.has_fatbin = true;
  std::set<std::string> cubin_labels, ptx_labels;
  for (const FatbinEntry& e : entries) {
    if (e.kind == FatbinEntry::Kind::kCubin && e.cubin_sm != 0 && e.cubin_sm != e.arch) {
      report.findings.push_back({"malformed",
                                 Severity::kWarning,
                                 "fatbin entry says sm_" + std::to_string(e.arch) + " but its cubin was built for sm_" +
                                     std::to_string(e.cubin_sm),
                                 {},
                                 ""});
    }
    if (e.kind == FatbinEntry::Kind::kCubin) cubin_labels.insert(fatbin_entry_label(e));
    if (e.kind == FatbinEntry::Kind::kPtx) ptx_labels.insert(fatbin_entry_label(e));
  }
  // Numeric order: sm_80 before sm_100.
  auto by_arch = [](const std::string& a, const std::string& b) {
    size_t x = a.find('_') + 1, y = b.find('_') + 1;
    int m = std::atoi(a.c_str() + x), n = std::atoi(b.c_str() + y);
    return m != n ? m < n : a < b;
  };
  report.fatbin.cubins.assign(cubin_labels.begin(), cubin_labels.end());
  report.fatbin.ptx.assign(ptx_labels.begin(), ptx_labels.end());
  std::sort(report.fatbin.cubins.begin(), report.fatbin.cubins.end(), by_arch);
  std::sort(report.fatbin.ptx.begin(), report.fatbin.ptx.end(), by_arch);
  std::string listing = "embedded: " + join(report.fatbin.cubins, " ") +
                        (ptx_labels.empty() ? " (no PTX)" : " + PTX " + join(report.fatbin.ptx, " "));
  if (context.gpus.empty()) {
    report.findings.push_back({"gpu_arch",
                               Severity::kInfo,
                               "GPU code for " + listing.substr(10) + "; no GPU to compare with",
                               {listing},
                               ""});
    return;
  }
  for (const GpuFacts& gpu : context.gpus) {
    std::string cc_text = std::to_string(gpu.major) + "." + std::to_string(gpu.minor);
    std::string device = (gpu.name.empty() ? "GPU" : gpu.name) + " (compute capability " + cc_text + ", from " +
                         context.gpu_source + ")";
    bool cubin_fits = false, ptx_fits = false;
    for (const FatbinEntry& e : entries) {
      if (!fatbin_entry_runs_on(e, gpu.major, gpu.minor)) continue;
      cubin_fits |= e.kind == FatbinEntry::Kind::kCubin;
      ptx_fits |= e.kind == FatbinEntry::Kind::kPtx;
    }
    if (cubin_fits) continue;
    std::string arch = std::to_string(gpu.major) + std::to_string(gpu.minor);
    if (ptx_fits) {
      report.findings.push_back(
          {"gpu_arch",
           Severity::kWarning,
           "no sm_" + arch + " cubin: kernels are JIT-compiled from PTX on first use by " + device,
           {listing},
           "none needed (it runs); a build with TORCH_CUDA_ARCH_LIST=\"" + cc_text + "\" skips the JIT"});
      continue;
    }
    report.findings.push_back(
        {"gpu_arch",
         Severity::kError,
         "no kernel image for " + device + ": " + listing.substr(10),
         {listing, "device: " + device},
         (d.name.empty()
              ? "rebuild it for this GPU: TORCH_CUDA_ARCH_LIST=\"" + cc_text +
                    "+PTX\" for torch.utils.cpp_extension builds, nvcc -gencode arch=compute_" + arch + ",code=sm_" +
                    arch
              : "rebuild it for this GPU: " + source_build_command(d, context.python,
                                                                   "TORCH_CUDA_ARCH_LIST=\"" + cc_text +
                                                                       "+PTX\" FLASH_ATTN_CUDA_ARCHS=" + arch + " ")) +
             "; " + kAttnforgeAlternative});
  }
}

std::string torch_label_of(const TorchFacts* torch) {
  return torch ? "torch " + torch->version : "the torch libraries it loads";
}

Finding truncation_finding(const ElfFile& elf, const Distribution& d, const PythonFacts* python) {
  std::string pip = (python && !python->executable.empty() ? shell_quote(python->executable) : std::string("python")) +
                    " -m pip install";
  std::string pinned = d.version.empty() ? d.name : d.name + "==" + d.version;
  return {"truncated", Severity::kError,
          "the file is truncated or damaged: " + elf.truncation.front() +
              "; loading it fails or crashes the process (SIGBUS)",
          elf.truncation,
          d.name.empty() ? "replace it with an intact copy (no *.dist-info/RECORD lists it, so the doctor cannot name "
                           "its distribution)"
                         : "`" + pip + " --force-reinstall --no-deps --no-cache-dir " + shell_quote(pinned) + "`"};
}

const char* const kCudaLibraryStems[] = {"libcudart", "libcublas", "libcublasLt", "libnvrtc"};

}  // namespace

BinaryReport Analyzer::analyze(const std::string& path, const std::string& display_name,
                               const Distribution* distribution) {
  BinaryReport report;
  report.path = path;
  report.display_name = display_name;
  MappedFile file;
  std::string error;
  ElfFile probe_elf;
  if (!file.open(path, error) || !parse_elf(file.view(), probe_elf, error)) {
    report.findings.push_back({"unreadable", Severity::kError, error, {}, ""});
    return report;
  }
  LoadedLibrary* target = load(path);
  if (!target) {
    report.findings.push_back({"unreadable", Severity::kError, "cannot read " + path, {}, ""});
    return report;
  }
  report.readable = true;
  const ElfFile& elf = target->elf;
  const PythonFacts* python = context_.python;
  const TorchFacts* torch = python && python->torch.found ? &python->torch : nullptr;
  std::string module = module_name_of(path);
  Distribution dist = distribution ? *distribution : owner_of(path);
  // flash-attn's compiled modules are top-level (flash_attn_2_cuda, flash_attn_3): a copy outside site-packages still
  // names it.
  if (dist.name.empty() && starts_with(module, "flash_attn")) dist.name = "flash-attn";
  std::string build_fix = matching_build_fix(dist, python);
  if (build_fix.empty()) {
    build_fix = "install the build of " + module + " made for this environment (no *.dist-info/RECORD lists " +
                basename_of(path) + ", so the doctor cannot name its distribution)";
  }
  report.role = "library";
  for (const std::string& needed : elf.needed) {
    if (is_torch_library(needed)) report.role = "torch library";
  }
  if (elf.type == 2 || (elf.has_interpreter && elf.soname.empty())) report.role = "executable";
  for (const ElfSymbol& symbol : elf.dynamic_symbols) {
    if (symbol.defined && starts_with(symbol.name, "PyInit_")) report.role = "extension module";
  }
  for (const std::string& w : elf.warnings) report.findings.push_back({"malformed", Severity::kWarning, w, {}, ""});
  if (!elf.truncation.empty()) report.findings.push_back(truncation_finding(elf, dist, python));

  // Two loads to compare: the interpreter as started, and after `import torch`
  // (the real torch's mapped libraries, or torch/lib when torch cannot be imported).
  std::vector<std::string> cold_preload = python ? python->loaded_libraries : std::vector<std::string>();
  Scope cold, warm;
  build_scope(*target, cold_preload, cold);
  Scope* main = &cold;
  if (torch) {
    std::vector<std::string> torch_preload = torch->loaded_libraries;
    if (!torch->imported) {
      torch_preload = cold_preload;
      std::string lib_dir = torch->package_dir + "/lib";
      if (DIR* dir = opendir(lib_dir.c_str())) {
        while (dirent* entry = readdir(dir)) {
          std::string name = entry->d_name;
          if (name.find(".so") != std::string::npos) torch_preload.push_back(lib_dir + "/" + name);
        }
        closedir(dir);
      }
    }
    build_scope(*target, torch_preload, warm);
    main = &warm;
  }
  report.needed = main->target_needed;

  // Libraries that cannot be found. The driver library is a machine property:
  // without it the binary loads only on a GPU machine.
  for (const LibraryResolution& missing : main->missing) {
    if (missing.name == "libcuda.so.1") {
      report.findings.push_back(
          {"missing_library",
           Severity::kWarning,
           "libcuda.so.1 (the NVIDIA driver) is not installed: loads only on a machine with a GPU driver",
           {missing.found_by},
           "install the NVIDIA driver (on a GPU machine this resolves by itself)"});
      continue;
    }
    Finding f{"missing_library",
              Severity::kError,
              missing.name + ": cannot open shared object file (" + missing.found_by + ")",
              {},
              ""};
    std::vector<std::string> searched;
    if (!context_.ld_library_path.empty()) searched.push_back("LD_LIBRARY_PATH=" + join(context_.ld_library_path, ":"));
    if (!elf.rpath.empty()) searched.push_back("RPATH=" + join(elf.rpath, ":"));
    if (!elf.runpath.empty()) searched.push_back("RUNPATH=" + join(elf.runpath, ":"));
    searched.push_back("/etc/ld.so.cache and the default directories");
    f.evidence.push_back("searched: " + join(searched, "; "));
    int cuda_major = soname_major(missing.name, "libcudart");
    // Wheels that find the CUDA runtime through pip's nvidia packages say so in their RUNPATH.
    bool searches_pip_cuda = false;
    for (const std::string& dir : elf.runpath.empty() ? elf.rpath : elf.runpath) {
      searches_pip_cuda |= dir.find("nvidia/cuda_runtime/lib") != std::string::npos;
    }
    bool torch_is_cpu_only = torch && torch->imported && torch->cuda_version.empty();
    bool cuda_torch_library = missing.name == "libc10_cuda.so" || missing.name == "libtorch_cuda.so";
    if (cuda_major >= 0 && searches_pip_cuda) {
      f.fix = "`" + (python ? shell_quote(python->executable) : std::string("python")) +
              " -m pip install nvidia-cuda-runtime-cu" + std::to_string(cuda_major) + "` (" + module +
              " looks for it there), or " + build_fix;
    } else if (cuda_major >= 0) {
      f.fix = build_fix + " (a build for the CUDA your torch uses)";
    } else if (cuda_torch_library && torch_is_cpu_only &&
               !is_regular_file(torch->package_dir + "/lib/" + missing.name)) {
      f.summary = missing.name + ": not part of " + torch_label_of(torch) +
                  ", a CPU-only build: this is a CUDA build of " + (dist.name.empty() ? module : dist.name) +
                  " beside a CPU-only torch";
      f.fix = "install a CUDA build of torch (pytorch.org's selector gives the index URL) or the CPU build of " +
              (dist.name.empty() ? module : dist.name);
    } else if (is_torch_library(missing.name)) {
      f.fix = "`import torch` before " + module + " (torch loads its libraries), or link it with -Wl,-rpath," +
              (torch ? torch->package_dir + "/lib" : std::string("torch's lib directory"));
    } else {
      f.fix = "install the package that provides " + missing.name + " or add its directory to LD_LIBRARY_PATH";
    }
    report.findings.push_back(f);
  }

  for (const LibraryResolution& n : main->target_needed) {
    if (n.found_by != kFoundBesideRequester) continue;
    report.findings.push_back(
        {"load_order",
         Severity::kWarning,
         n.name + " is not on the loader's search path; it loads only if the package opens it first",
         {"found beside the module: " + n.path},
         "import the package normally (not this file directly), or link with -Wl,-rpath,'$ORIGIN'"});
  }

  // Load order: what changes when the module is imported before torch.
  if (torch && cold.target_needed.size() == warm.target_needed.size()) {
    for (size_t i = 0; i < warm.target_needed.size(); ++i) {
      const LibraryResolution& c = cold.target_needed[i];
      const LibraryResolution& w = warm.target_needed[i];
      if (w.path.empty()) continue;
      if (c.path.empty()) {
        report.findings.push_back(
            {"load_order",
             Severity::kWarning,
             w.name + " is found only after `import torch` loaded it",
             {"after import torch: " + w.path, "without torch: not found"},
             "always `import torch` before " + module + " (or link it with -Wl,-rpath,'" + dirname_of(w.path) + "')"});
      } else if (real_path(c.path) != real_path(w.path)) {
        // A stray torch library breaks the module; another copy of a CUDA library usually only duplicates it.
        report.findings.push_back({"load_order",
                                   is_torch_library(w.name) ? Severity::kWarning : Severity::kInfo,
                                   "a stray " + w.name + " at " + c.path + " (" + c.found_by + ") is loaded if " +
                                       module + " is imported before torch",
                                   {"without torch: " + c.path + " via " + c.found_by, "after import torch: " + w.path},
                                   "`import torch` first, or remove " + dirname_of(c.path) +
                                       " from the search path (LD_LIBRARY_PATH, RPATH, ld.so.conf)"});
      }
    }
  }

  // Symbol versions the resolved libraries do not define.
  std::set<std::string> missing_versions;
  for (const ElfVersionNeed& need : elf.version_needs) {
    auto provider = main->by_soname.find(need.file);
    if (provider == main->by_soname.end()) continue;
    const ElfFile& lib = provider->second->elf;
    for (const std::string& version : need.versions) {
      if (std::find(lib.version_definitions.begin(), lib.version_definitions.end(), version) !=
          lib.version_definitions.end()) {
        continue;
      }
      missing_versions.insert(version);
      std::string family;
      std::vector<int> numbers;
      parse_symbol_version(version, family, numbers);
      std::string newest = max_version_of_family(lib, family);
      Finding f{"symbol_version",
                Severity::kError,
                "version `" + version + "' not found in " + provider->second->path +
                    " (newest: " + (newest.empty() ? std::string("none") : newest) + ")",
                {"required by " + basename_of(path) + " from " + need.file},
                ""};
      for (const ElfSymbol& s : elf.dynamic_symbols) {
        if (!s.defined && s.version == version && s.version_file == need.file && f.evidence.size() < 9) {
          std::string text = demangle(s.name);
          f.evidence.push_back("uses " + s.name + "@" + version + (text.empty() ? "" : " = " + text));
        }
      }
      if (family == "GLIBC") {
        f.fix =
            "this build needs a newer glibc than the system's: install a wheel whose manylinux tag is at most this "
            "system's glibc (" +
            (python && !python->glibc_version.empty() ? python->glibc_version : newest) +
            ") or rebuild on this system (attnforge itself needs only glibc 2.28); " + kAttnforgeAlternative;
      } else {
        f.fix = "this build needs a newer libstdc++ than " + provider->second->path +
                ": rebuild with this system's g++ (or link -static-libstdc++), or load a newer libstdc++.so.6 first "
                "(e.g. `conda install -c conda-forge libstdcxx-ng`)";
      }
      report.findings.push_back(f);
    }
  }

  if (python) check_python_module(*python, elf, path, build_fix, report);

  // Undefined symbols: resolve, then explain the unresolved ones.
  std::vector<const ElfSymbol*> unresolved;
  int new_abi = 0, old_abi = 0;
  for (const ElfSymbol& symbol : elf.dynamic_symbols) {
    if (symbol.defined) continue;
    ++report.undefined_symbols;
    if (starts_with(symbol.name, "_ZN") || starts_with(symbol.name, "_ZNK")) {
      std::string text = demangle(symbol.name);
      if (!text.empty() && in_torch_namespace(text)) {
        int abi = abi_of_demangled(text);
        new_abi += abi == 1;
        old_abi += abi == 0;
      }
    }
    // References to a version already reported missing are explained by that finding.
    if (symbol.weak || missing_versions.count(symbol.version) || defined_in_scope(main->objects, target, symbol))
      continue;
    unresolved.push_back(&symbol);
  }
  report.unresolved_symbols = unresolved.size();
  if (new_abi || old_abi) report.cxx11_abi = new_abi >= old_abi ? 1 : 0;

  std::vector<std::string> dual_evidence, changed_evidence, absent_evidence, python_evidence, other_evidence;
  std::vector<std::string> torch_provided;  // evidence, at most 16
  std::string torch_provided_example;
  size_t torch_provided_count = 0;
  int twin_abi = -1;
  for (const ElfSymbol* symbol : unresolved) {
    const std::string& name = symbol->name;
    std::string versioned = name + (symbol->version.empty() ? "" : "@" + symbol->version);
    if (starts_with(name, "Py") || starts_with(name, "_Py")) {
      // Without an interpreter the C-API provider is unknown: not judged.
      if (python)
        python_evidence.push_back(versioned);
      else
        --report.unresolved_symbols;
      continue;
    }
    std::string text = demangle(name);
    // Defined by a torch library this binary does not link: bound only when
    // that library is already in the global scope (the package loads torch's
    // libraries first, as cuda-core does for its aoti_torch_* tensor bridge).
    if (torch) {
      const auto& exports = torch_exports().library_by_symbol;
      auto exported = exports.find(name);
      if (exported != exports.end()) {
        if (torch_provided.empty()) torch_provided_example = name + " (defined by " + exported->second + ")";
        if (torch_provided.size() < 16)
          torch_provided.push_back(versioned + (text.empty() ? "" : " = " + text) + " (" + exported->second + ")");
        ++torch_provided_count;
        continue;
      }
    }
    if (text.empty() || !in_torch_namespace(text)) {
      other_evidence.push_back(versioned + (text.empty() ? "" : " = " + text));
      continue;
    }
    const TorchIndex& index = torch_index(*main);
    std::string key = abi_neutral_key(text);
    auto twin = index.mangled_by_key.find(key);
    if (twin != index.mangled_by_key.end() && !twin->second.empty()) {
      auto other =
          std::find_if(twin->second.begin(), twin->second.end(), [&](const std::string& m) { return m != name; });
      if (other == twin->second.end()) {
        // The very symbol exists, in a torch library this binary does not load.
        other_evidence.push_back(versioned + " = " + text + " (defined by a torch library this binary does not link)");
        continue;
      }
      if (dual_evidence.size() < 16) {
        dual_evidence.push_back("undefined " + name + " = " + text);
        dual_evidence.push_back("  torch defines " + *other + " = " + demangle(*other));
      }
      int abi = abi_of_demangled(demangle(*other));
      if (abi >= 0) twin_abi = abi;
      continue;
    }
    auto base = index.keys_by_base.find(function_base_name(key));
    if (base != index.keys_by_base.end()) {
      if (changed_evidence.size() < 16) {
        changed_evidence.push_back("undefined " + name + " = " + text);
        for (size_t i = 0; i < base->second.size() && i < 3; ++i)
          changed_evidence.push_back("  torch has " + base->second[i]);
      }
      continue;
    }
    if (absent_evidence.size() < 16) absent_evidence.push_back("undefined " + name + " = " + text);
  }
  auto count_of = [](const std::vector<std::string>& evidence) {
    return std::count_if(evidence.begin(), evidence.end(),
                         [](const std::string& e) { return starts_with(e, "undefined "); });
  };
  std::string torch_label = torch_label_of(torch);
  if (!dual_evidence.empty()) {
    int ext_abi = 1 - twin_abi;
    std::string summary = "C++ dual-ABI mismatch: built with _GLIBCXX_USE_CXX11_ABI=" + std::to_string(ext_abi) + ", " +
                          torch_label + " uses " + std::to_string(twin_abi) + " (" +
                          std::to_string(count_of(dual_evidence)) + " symbols exist only as their other-ABI twin)";
    report.findings.push_back(
        {"dual_abi", Severity::kError, summary, dual_evidence, abi_rebuild_fix(twin_abi, build_fix, dist, python)});
  }
  std::string drift_fix = build_fix + "; " + kAttnforgeAlternative;
  if (!changed_evidence.empty()) {
    report.findings.push_back({"torch_version_drift", Severity::kError,
                               "torch version drift: " + std::to_string(count_of(changed_evidence)) +
                                   " torch functions have another signature in " + torch_label,
                               changed_evidence, drift_fix});
  }
  if (!absent_evidence.empty()) {
    report.findings.push_back({"torch_version_drift", Severity::kError,
                               "torch version drift: " + std::to_string(count_of(absent_evidence)) +
                                   " torch symbols are absent from " + torch_label,
                               absent_evidence, drift_fix});
  }
  if (!python_evidence.empty()) {
    std::string interpreter =
        python ? "Python " + std::to_string(python->major) + "." + std::to_string(python->minor) : "the interpreter";
    python_evidence.resize(std::min<size_t>(python_evidence.size(), 16));
    report.findings.push_back({"python_abi", Severity::kError,
                               std::to_string(python_evidence.size()) + " Python C-API symbols are not provided by " +
                                   interpreter + " (built for another Python version)",
                               python_evidence, "install or rebuild the build for " + interpreter});
  }
  if (torch_provided_count) {
    report.findings.push_back(
        {"load_order", Severity::kWarning,
         "undefined symbol: " + torch_provided_example +
             (torch_provided_count > 1 ? " and " + std::to_string(torch_provided_count - 1) + " more" : "") +
             " of torch's libraries, which this binary does not link: resolved only once torch is loaded "
             "(after `import torch`)",
         torch_provided, "import torch before " + module + " (the package's own loader normally does this)"});
  }
  if (!other_evidence.empty()) {
    size_t total = other_evidence.size();
    other_evidence.resize(std::min<size_t>(total, 16));
    // With a library missing, these are most likely its symbols: the missing
    // library is the error to fix (a missing driver is only a warning).
    bool library_missing = !main->missing.empty();
    report.findings.push_back(
        {"unresolved_symbol", library_missing ? Severity::kWarning : Severity::kError,
         "undefined symbol: " + other_evidence.front().substr(0, other_evidence.front().find(' ')) +
             (total > 1 ? " (and " + std::to_string(total - 1) + " more)" : "") +
             (library_missing ? ", probably from the missing " + main->missing.front().name : ""),
         other_evidence,
         "link the library that defines these symbols, or install the build made for this environment"});
  }

  // CUDA runtime major against torch's.
  int torch_cuda_major = torch && !torch->cuda_version.empty() ? std::atoi(torch->cuda_version.c_str()) : 0;
  for (const std::string& needed : elf.needed) {
    for (const char* stem : kCudaLibraryStems) {
      int major = soname_major(needed, stem);
      if (major <= 0) continue;
      if (torch_cuda_major > 0 && major != torch_cuda_major) {
        // Two CUDA runtimes coexist in one process (each library binds its own
        // soname): the mismatch breaks the load only when this one cannot be found.
        auto resolution = std::find_if(main->target_needed.begin(), main->target_needed.end(),
                                       [&](const LibraryResolution& r) { return r.name == needed; });
        bool resolves = resolution != main->target_needed.end() && !resolution->path.empty();
        report.findings.push_back(
            {"cuda_runtime",
             resolves ? Severity::kWarning : Severity::kError,
             "built for CUDA " + std::to_string(major) + " (" + needed + "), " + torch_label + " uses CUDA " +
                 torch->cuda_version +
                 (resolves ? ": it loads its own CUDA " + std::to_string(major) + " runtime (" + resolution->path +
                                 "), which needs a driver for CUDA " + std::to_string(major)
                           : ""),
             {"DT_NEEDED " + needed, "torch.version.cuda = " + torch->cuda_version},
             resolves ? "none needed while the driver supports CUDA " + std::to_string(major) + "; " + build_fix +
                            " gives a build for CUDA " + std::to_string(torch_cuda_major) + " if not"
                      : build_fix + "; " + kAttnforgeAlternative});
      } else if (torch && torch->imported && torch_cuda_major == 0 && std::string(stem) == "libcudart") {
        report.findings.push_back(
            {"cuda_runtime",
             Severity::kWarning,
             "needs " + needed + " but " + torch_label + " is a CPU-only build",
             {"DT_NEEDED " + needed},
             "install a CUDA build of torch (e.g. from download.pytorch.org/whl/cu" + std::to_string(major) + "x)"});
      }
    }
  }

  check_gpu_code(file.view(), elf, context_, dist, report);
  return report;
}

BinaryReport Analyzer::check_portability(const std::string& path, int max_glibc_minor) {
  BinaryReport report;
  report.path = path;
  MappedFile file;
  std::string error;
  ElfFile elf;
  if (!file.open(path, error) || !parse_elf(file.view(), elf, error)) {
    report.findings.push_back({"unreadable", Severity::kError, error, {}, ""});
    return report;
  }
  report.readable = true;
  if (!elf.truncation.empty()) report.findings.push_back(truncation_finding(elf, Distribution{}, nullptr));
  std::string policy = "manylinux_2_" + std::to_string(max_glibc_minor);
  static const char* const kAllowed[] = {
      "libc.so.6",  "libm.so.6",     "libdl.so.2",           "libpthread.so.0",
      "librt.so.1", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"};
  for (const std::string& needed : elf.needed) {
    if (std::find(std::begin(kAllowed), std::end(kAllowed), needed) == std::end(kAllowed)) {
      report.findings.push_back({"portability",
                                 Severity::kError,
                                 "DT_NEEDED " + needed + " is outside the " + policy + " allow-list",
                                 {"allowed: libc, libm, libdl, libpthread, librt, libgcc_s, ld-linux"},
                                 "link it statically or dlopen it at run time"});
    }
  }
  for (const ElfVersionNeed& need : elf.version_needs) {
    for (const std::string& version : need.versions) {
      std::string family;
      std::vector<int> numbers;
      if (!parse_symbol_version(version, family, numbers)) continue;
      std::vector<std::string> users;
      for (const ElfSymbol& s : elf.dynamic_symbols) {
        if (!s.defined && s.version == version && users.size() < 8) users.push_back(s.name);
      }
      if (family == "GLIBC" && version_compare(numbers, {2, max_glibc_minor}) > 0) {
        report.findings.push_back(
            {"portability",
             Severity::kError,
             "needs " + version + " (" + policy + " allows at most GLIBC_2." + std::to_string(max_glibc_minor) + ")",
             {"symbols: " + join(users, " ")},
             "bind these symbols to an older version (.symver) or keep the code that pulls them out of the link"});
      } else if (family == "GLIBCXX" || family == "CXXABI") {
        report.findings.push_back({"portability",
                                   Severity::kError,
                                   "needs " + version + " from " + need.file,
                                   {"symbols: " + join(users, " ")},
                                   "link libstdc++ statically (-static-libstdc++)"});
      }
    }
  }
  if (report.findings.empty()) {
    report.findings.push_back(
        {"portability", Severity::kInfo, "portable to " + policy, {"DT_NEEDED: " + join(elf.needed, " ")}, ""});
  }
  return report;
}

}  // namespace af::doctor
