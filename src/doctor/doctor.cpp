#include "doctor/doctor.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "attnforge/attnforge.h"
#include "doctor/analysis.h"
#include "doctor/gpu.h"
#include "doctor/ld_cache.h"
#include "doctor/probe.h"
#include "doctor/process.h"
#include "doctor/tags.h"
#include "doctor/wheel.h"

namespace af::doctor {
namespace {

constexpr int kExitHealthy = 0, kExitProblems = 1, kExitUsage = 2;
constexpr const char* kSchema = "attnforge-doctor/1";
constexpr size_t kMaxInstalledBinaries = 20000;

constexpr const char* kHelpEnvironment =
    "usage: attnforge doctor [--python PATH] [--gpu X.Y] [--json] [-v]\n"
    "       attnforge doctor so FILE.so... [--python PATH | --no-python] [--gpu X.Y] [--json] [-v]\n"
    "       attnforge doctor so FILE... --portability manylinux_2_28 [--json]\n"
    "       attnforge doctor wheel FILE.whl... [--python PATH] [--gpu X.Y] [--json] [-v]\n"
    "       attnforge doctor tags [--python PATH]\n"
    "\n"
    "Explains why compiled Python extensions (flash-attn, xformers, torchvision, ...) fail to load,\n"
    "reading the binaries directly (no nm, readelf, cuobjdump, unzip or pip needed).\n"
    "\n"
    "  doctor         the environment of a Python interpreter (default: first python3 on PATH) and a\n"
    "                 one-line verdict for every ELF file its installed packages ship\n"
    "  doctor so      one binary: libraries, symbols, dual C++ ABI, torch drift, CUDA, Python, glibc,\n"
    "                 load order and GPU architecture, each with evidence and the fix\n"
    "  doctor wheel   a wheel without installing it: tags, RECORD hashes, missing compiled modules, and\n"
    "                 `so` on every compiled member\n"
    "  doctor tags    the interpreter's supported wheel tags, most preferred first\n"
    "\n"
    "options:\n"
    "  --python PATH  the interpreter whose environment is judged\n"
    "  --no-python    judge `so` without an interpreter (loader view only)\n"
    "  --gpu X.Y      judge GPU code against compute capability X.Y instead of the detected GPUs\n"
    "  --portability manylinux_2_M   policy check: glibc <= 2.M, no GLIBCXX/CXXABI, allow-listed DT_NEEDED\n"
    "  --json         machine-readable output (schema: docs/doctor-json-schema.md)\n"
    "  -v, --verbose  evidence, resolved libraries and GPU code for every binary\n"
    "\n"
    "exit status: 0 healthy, 1 problems found, 2 usage or internal error\n";

struct Options {
  std::string command;  // "", "so", "wheel", "tags"
  std::vector<std::string> files;
  std::string python;
  bool no_python = false;
  bool json = false;
  bool verbose = false;
  std::string gpu;
  int portability_glibc_minor = -1;
};

bool parse_gpu_option(const std::string& text, GpuFacts& gpu) {
  std::string digits = text;
  if (digits.compare(0, 3, "sm_") == 0) digits = digits.substr(3);
  if (std::sscanf(digits.c_str(), "%d.%d", &gpu.major, &gpu.minor) == 2) return gpu.major > 0;
  int packed = std::atoi(digits.c_str());
  if (packed < 10) return false;
  gpu.major = packed / 10;
  gpu.minor = packed % 10;
  return true;
}

bool parse_options(int argc, char** argv, Options& options, std::string& error, bool& help) {
  int i = 1;
  if (i < argc && (std::strcmp(argv[i], "so") == 0 || std::strcmp(argv[i], "wheel") == 0 ||
                   std::strcmp(argv[i], "tags") == 0 || std::strcmp(argv[i], "env") == 0)) {
    options.command = argv[i++];
    if (options.command == "env") options.command.clear();
  }
  for (; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= argc) {
        error = arg + " needs a value";
        return false;
      }
      out = argv[++i];
      return true;
    };
    if (arg == "-h" || arg == "--help")
      help = true;
    else if (arg == "--json")
      options.json = true;
    else if (arg == "-v" || arg == "--verbose")
      options.verbose = true;
    else if (arg == "--no-python")
      options.no_python = true;
    else if (arg == "--python") {
      if (!value(options.python)) return false;
    } else if (arg == "--gpu") {
      if (!value(options.gpu)) return false;
    } else if (arg == "--portability") {
      std::string policy;
      if (!value(policy)) return false;
      int major = 0, minor = 0;
      if (std::sscanf(policy.c_str(), "manylinux_%d_%d", &major, &minor) != 2 || major != 2) {
        error = "--portability takes manylinux_2_M (e.g. manylinux_2_28)";
        return false;
      }
      options.portability_glibc_minor = minor;
    } else if (!arg.empty() && arg[0] == '-') {
      error = "unknown option " + arg;
      return false;
    } else {
      options.files.push_back(arg);
    }
  }
  if (help) return true;
  GpuFacts gpu;
  if (!options.gpu.empty() && !parse_gpu_option(options.gpu, gpu)) {
    error = "--gpu takes a compute capability such as 8.6, 86 or sm_86";
    return false;
  }
  for (const std::string& file : options.files) {
    if (access(file.c_str(), R_OK) != 0) {
      error = "cannot read " + file;
      return false;
    }
  }
  if ((options.command == "so" || options.command == "wheel") && options.files.empty()) {
    error = "doctor " + options.command + " needs at least one file";
    return false;
  }
  if ((options.command.empty() || options.command == "tags") && !options.files.empty()) {
    error = "unexpected argument " + options.files.front();
    return false;
  }
  if (options.portability_glibc_minor >= 0 && options.command != "so") {
    error = "--portability applies to `doctor so`";
    return false;
  }
  return true;
}

std::vector<std::string> split_colon(const char* text) {
  std::vector<std::string> parts;
  if (!text) return parts;
  std::string s = text;
  size_t start = 0;
  while (start <= s.size()) {
    size_t colon = s.find(':', start);
    if (colon == std::string::npos) colon = s.size();
    // An empty LD_LIBRARY_PATH element means the current directory.
    parts.push_back(colon > start ? s.substr(start, colon - start) : ".");
    start = colon + 1;
  }
  return parts;
}

std::vector<LdCacheEntry> read_ld_cache() {
  std::vector<LdCacheEntry> entries;
  MappedFile cache;
  std::string error;
  if (cache.open("/etc/ld.so.cache", error)) parse_ld_cache(cache.view(), entries, error);
  return entries;
}

// The GPUs to judge against: --gpu, else the driver, else what torch saw.
void choose_gpus(const Options& options, const PythonFacts* python, const DriverFacts& driver,
                 AnalysisContext& context) {
  GpuFacts forced;
  if (!options.gpu.empty() && parse_gpu_option(options.gpu, forced)) {
    forced.name = "GPU";
    context.gpus = {forced};
    context.gpu_source = "--gpu";
  } else if (!driver.gpus.empty()) {
    context.gpus = driver.gpus;
    context.gpu_source = "libcuda";
  } else if (python && !python->torch.gpus.empty()) {
    context.gpus = python->torch.gpus;
    context.gpu_source = "torch";
  }
}

std::string scratch_directory() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/attnforge-doctor-XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  return mkdtemp(buffer.data()) ? std::string(buffer.data()) : "";
}

void remove_tree(const std::string& path) {
  if (DIR* dir = opendir(path.c_str())) {
    while (dirent* entry = readdir(dir)) {
      std::string name = entry->d_name;
      if (name == "." || name == "..") continue;
      std::string child = path + "/" + name;
      struct stat info {};
      if (lstat(child.c_str(), &info) == 0 && S_ISDIR(info.st_mode))
        remove_tree(child);
      else
        unlink(child.c_str());
    }
    closedir(dir);
  }
  rmdir(path.c_str());
}

std::string python_json(const PythonFacts* p) {
  if (!p) return "null";
  if (!p->ok) return "{\"ok\":false,\"error\":" + json_string(p->error) + "}";
  std::string gpus = "[";
  for (size_t i = 0; i < p->torch.gpus.size(); ++i) {
    gpus += std::string(i ? "," : "") + "{\"name\":" + json_string(p->torch.gpus[i].name) + ",\"compute_capability\":" +
            json_string(std::to_string(p->torch.gpus[i].major) + "." + std::to_string(p->torch.gpus[i].minor)) + "}";
  }
  gpus += "]";
  return "{\"ok\":true,\"executable\":" + json_string(p->executable) + ",\"version\":" +
         json_string(std::to_string(p->major) + "." + std::to_string(p->minor) + "." + std::to_string(p->micro)) +
         ",\"soabi\":" + json_string(p->soabi) + ",\"extension_suffixes\":" + json_string_array(p->extension_suffixes) +
         ",\"glibc\":" + json_string(p->glibc_version) + ",\"machine\":" + json_string(p->machine) +
         ",\"torch\":{\"found\":" + (p->torch.found ? "true" : "false") +
         ",\"imported\":" + (p->torch.imported ? "true" : "false") +
         ",\"import_error\":" + json_string(p->torch.import_error) + ",\"version\":" + json_string(p->torch.version) +
         ",\"cuda\":" + json_string(p->torch.cuda_version) + ",\"reported_cxx11_abi\":" +
         (p->torch.reported_cxx11_abi < 0 ? std::string("null") : std::to_string(p->torch.reported_cxx11_abi)) +
         ",\"package_dir\":" + json_string(p->torch.package_dir) + ",\"gpus\":" + gpus + "}}";
}

// ---------------------------------------------------------------------------
// doctor so / doctor wheel / doctor tags

int run_so(const Options& options, const PythonFacts* python, AnalysisContext context) {
  Analyzer analyzer(context);
  std::vector<BinaryReport> reports;
  for (const std::string& file : options.files) {
    reports.push_back(options.portability_glibc_minor >= 0
                          ? analyzer.check_portability(file, options.portability_glibc_minor)
                          : analyzer.analyze(file));
  }
  bool healthy = true;
  for (const BinaryReport& r : reports) healthy &= r.healthy();
  if (options.json) {
    std::string out = std::string("{\"schema\":\"") + kSchema +
                      "\",\"command\":\"so\",\"healthy\":" + (healthy ? "true" : "false") +
                      ",\"python\":" + python_json(python) + ",\"binaries\":[";
    for (size_t i = 0; i < reports.size(); ++i) out += (i ? "," : "") + binary_json(reports[i]);
    std::printf("%s]}\n", out.c_str());
  } else {
    for (const BinaryReport& r : reports) {
      std::string text = binary_text(r, options.verbose || reports.size() == 1);
      std::fputs(text.c_str(), stdout);
    }
  }
  return healthy ? kExitHealthy : kExitProblems;
}

int run_wheel(const Options& options, const PythonFacts* python, AnalysisContext context) {
  Analyzer analyzer(context);
  bool healthy = true;
  std::string json = std::string("{\"schema\":\"") + kSchema + "\",\"command\":\"wheel\",";
  std::string wheels;
  for (const std::string& file : options.files) {
    std::string scratch = scratch_directory();
    if (scratch.empty()) {
      std::fprintf(stderr, "attnforge doctor: cannot create a scratch directory\n");
      return kExitUsage;
    }
    WheelReport report = analyze_wheel(file, python, analyzer, scratch);
    remove_tree(scratch);
    healthy &= report.healthy();
    if (options.json)
      wheels += (wheels.empty() ? "" : ",") + wheel_json(report);
    else
      std::fputs(wheel_text(report, options.verbose).c_str(), stdout);
  }
  if (options.json) {
    std::printf("%s\"healthy\":%s,\"python\":%s,\"wheels\":[%s]}\n", json.c_str(), healthy ? "true" : "false",
                python_json(python).c_str(), wheels.c_str());
  }
  return healthy ? kExitHealthy : kExitProblems;
}

int run_tags(const PythonFacts& python) {
  for (const std::string& tag : supported_tags(python)) std::printf("%s\n", tag.c_str());
  return kExitHealthy;
}

// ---------------------------------------------------------------------------
// doctor (environment)

struct Fact {
  std::string name, value;
};

std::string newest_version(const ElfFile& elf, const std::string& family) {
  std::string best;
  std::vector<int> best_numbers;
  for (const std::string& v : elf.version_definitions) {
    std::string f;
    std::vector<int> n;
    if (parse_symbol_version(v, f, n) && f == family) {
      bool newer = best.empty();
      for (size_t i = 0; !newer && i < std::max(n.size(), best_numbers.size()); ++i) {
        int a = i < n.size() ? n[i] : 0, b = i < best_numbers.size() ? best_numbers[i] : 0;
        if (a != b) {
          newer = a > b;
          break;
        }
      }
      if (newer) {
        best = v;
        best_numbers = n;
      }
    }
  }
  return best;
}

std::string find_loaded(const std::vector<std::string>& loaded, const std::string& stem) {
  for (const std::string& path : loaded) {
    std::string base = path.substr(path.rfind('/') + 1);
    if (base.compare(0, stem.size(), stem) == 0) return path;
  }
  return "";
}

std::string find_in_cache(const std::vector<LdCacheEntry>& cache, const std::string& stem) {
  for (const LdCacheEntry& e : cache) {
    if (e.x86_64 && e.name.compare(0, stem.size(), stem) == 0) return e.path;
  }
  return "";
}

// Counts torch-namespace exports of libc10 by string flavour: the ABI torch was really built with.
int proven_torch_abi(const std::string& libc10, std::string& evidence) {
  MappedFile file;
  ElfFile elf;
  std::string error;
  if (libc10.empty() || !file.open(libc10, error) || !parse_elf(file.view(), elf, error)) return -1;
  int new_abi = 0, old_abi = 0;
  for (const ElfSymbol& s : elf.dynamic_symbols) {
    if (!s.defined || s.name.find("3c10") == std::string::npos) continue;
    std::string text = demangle(s.name);
    if (text.empty() || !in_torch_namespace(text)) continue;
    if (text.find("std::__cxx11::") != std::string::npos || text.find("[abi:cxx11]") != std::string::npos)
      ++new_abi;
    else if (text.find("std::string") != std::string::npos || text.find("std::basic_string<") != std::string::npos)
      ++old_abi;
  }
  evidence =
      std::to_string(new_abi) + " std::__cxx11 vs " + std::to_string(old_abi) + " old std::string exports in " + libc10;
  if (new_abi == 0 && old_abi == 0) return -1;
  return new_abi > old_abi ? 1 : 0;
}

int gxx_default_abi(std::string& compiler) {
  compiler = find_on_path("g++");
  if (compiler.empty()) return -1;
  std::string source = scratch_directory();
  if (source.empty()) return -1;
  std::string file = source + "/probe.cpp";
  if (FILE* f = std::fopen(file.c_str(), "w")) {
    std::fputs("#include <string>\n", f);
    std::fclose(f);
  }
  ProcessResult run = run_process({compiler, "-x", "c++", "-dM", "-E", file}, 30);
  remove_tree(source);
  size_t at = run.output.find("#define _GLIBCXX_USE_CXX11_ABI ");
  if (at == std::string::npos) return -1;
  return std::atoi(run.output.c_str() + at + 31);
}

std::string nvcc_release(std::string& nvcc) {
  nvcc = find_on_path("nvcc");
  const char* cuda_home = std::getenv("CUDA_HOME");
  if (nvcc.empty() && cuda_home && access((std::string(cuda_home) + "/bin/nvcc").c_str(), X_OK) == 0)
    nvcc = std::string(cuda_home) + "/bin/nvcc";
  if (nvcc.empty() && access("/usr/local/cuda/bin/nvcc", X_OK) == 0) nvcc = "/usr/local/cuda/bin/nvcc";
  if (nvcc.empty()) return "";
  ProcessResult run = run_process({nvcc, "--version"}, 30);
  size_t at = run.output.find("release ");
  if (at == std::string::npos) return "";
  return run.output.substr(at + 8, run.output.find(',', at) - at - 8);
}

bool starts_with_elf_magic(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  unsigned char magic[4] = {};
  bool elf = read(fd, magic, 4) == 4 && magic[0] == 0x7f && magic[1] == 'E' && magic[2] == 'L' && magic[3] == 'F';
  close(fd);
  return elf;
}

std::set<std::string> site_roots(const PythonFacts& python) {
  std::set<std::string> roots;
  for (const std::string& dir : python.site_dirs) roots.insert(dir);
  for (const std::string& dir : python.sys_path) {
    if (dir.find("-packages") != std::string::npos) roots.insert(dir);
  }
  return roots;
}

// The `*.dist-info` directories of a site directory, as paths, sorted (none when it cannot be read).
std::vector<std::string> dist_info_dirs(const std::string& site) {
  std::vector<std::string> infos;
  DIR* handle = opendir(site.c_str());
  if (!handle) return infos;
  while (dirent* entry = readdir(handle)) {
    std::string name = entry->d_name;
    if (name.size() > 10 && name.compare(name.size() - 10, 10, ".dist-info") == 0) infos.push_back(site + "/" + name);
  }
  closedir(handle);
  std::sort(infos.begin(), infos.end());
  return infos;
}

// The importable modules and Python sources an installed distribution's RECORD lists;
// `module_by_path` (when given) maps each module file's absolute path to its dotted name.
void read_distribution_modules(const std::string& site, const std::string& info, std::set<std::string>& modules,
                               std::vector<PythonSource>& sources, std::map<std::string, std::string>* module_by_path) {
  std::string record = read_text_file(info + "/RECORD", 64 << 20);
  for (size_t start = 0; start < record.size();) {
    size_t end = record.find('\n', start);
    if (end == std::string::npos) end = record.size();
    std::string row = record.substr(start, end - start);
    start = end + 1;
    std::string path =
        !row.empty() && row[0] == '"' ? row.substr(1, row.find('"', 1) - 1) : row.substr(0, row.find(','));
    std::string module;
    bool is_package = false;
    if (!python_module_of(path, module, is_package)) continue;
    for (size_t dot = module.find('.'); dot != std::string::npos; dot = module.find('.', dot + 1))
      modules.insert(module.substr(0, dot));
    modules.insert(module);
    if (module_by_path) (*module_by_path)[site + "/" + path] = module;
    if (path.size() > 3 && path.compare(path.size() - 3, 3, ".py") == 0) {
      sources.push_back({module, is_package, read_text_file(site + "/" + path, 16 << 20)});
    }
  }
}

// An extension module that fails only for want of a library (cupy's cutensor
// without libcutensor.so.2, numba's tbbpool without libtbb.so.12) and that its
// distribution's import does not run (no module-level import outside try blocks
// and functions reaches it from the top-level packages) is an optional plugin:
// the package imports without it, and only the feature it backs fails. Its
// errors become warnings. Evidence: the scan of the distribution's sources.
void judge_optional_extensions(const PythonFacts& python, std::vector<BinaryReport>& reports) {
  auto only_missing_libraries = [](const BinaryReport& r) {
    bool any = false;
    for (const Finding& f : r.findings) {
      if (f.severity != Severity::kError) continue;
      if (f.check != "missing_library" && f.check != "unresolved_symbol") return false;
      any = true;
    }
    return any;
  };
  std::vector<BinaryReport*> candidates;
  for (BinaryReport& r : reports) {
    if (r.role == "extension module" && only_missing_libraries(r)) candidates.push_back(&r);
  }
  if (candidates.empty()) return;
  std::map<std::string, std::pair<std::string, std::set<std::string>>> reached_by_path;  // path -> module, reached
  for (const std::string& site : site_roots(python)) {
    const std::vector<std::string> infos = dist_info_dirs(site);
    for (const std::string& info : infos) {
      std::set<std::string> modules;
      std::vector<PythonSource> sources;
      std::map<std::string, std::string> module_by_path;
      // Read sources only for distributions that own a candidate.
      std::string record = read_text_file(info + "/RECORD", 64 << 20);
      bool owns = std::any_of(candidates.begin(), candidates.end(), [&](const BinaryReport* r) {
        return r->path.compare(0, site.size() + 1, site + "/") == 0 &&
               record.find(r->path.substr(site.size() + 1)) != std::string::npos;
      });
      if (!owns) continue;
      read_distribution_modules(site, info, modules, sources, &module_by_path);
      ImportScan scan = scan_imports(sources, modules);
      for (const BinaryReport* r : candidates) {
        auto module = module_by_path.find(r->path);
        if (module != module_by_path.end()) reached_by_path[r->path] = {module->second, scan.reached};
      }
    }
  }
  for (BinaryReport* r : candidates) {
    auto found = reached_by_path.find(r->path);
    if (found == reached_by_path.end() || found->second.second.count(found->second.first)) continue;
    for (Finding& f : r->findings) {
      if (f.severity != Severity::kError) continue;
      f.severity = Severity::kWarning;
      f.summary = "optional plugin (importing its package does not import " + found->second.first + "): " + f.summary;
    }
  }
}

// Installed pure distributions (WHEEL: Root-Is-Purelib: true) whose import needs a
// module that exists nowhere: flash-attn's py3-none-any wheel built without its extension.
std::vector<Finding> check_pure_distributions(const PythonFacts& python) {
  std::vector<Finding> findings;
  for (const std::string& site : site_roots(python)) {
    const std::vector<std::string> infos = dist_info_dirs(site);
    for (const std::string& info : infos) {
      if (read_text_file(info + "/WHEEL", 1 << 16).find("Root-Is-Purelib: true") == std::string::npos) continue;
      Distribution dist = parse_metadata(read_text_file(info + "/METADATA", 4 << 20));
      std::set<std::string> modules;
      std::vector<PythonSource> sources;
      read_distribution_modules(site, info, modules, sources, nullptr);
      std::vector<MissingModule> absent = missing_extensions(sources, modules, dist.name, &python);
      if (absent.empty() || !absent.front().reached) continue;
      Finding f = missing_extension_finding(absent, dist, &python);
      f.summary = dist.name + " " + dist.version + ": " + f.summary;
      findings.push_back(f);
    }
  }
  return findings;
}

// Every ELF file below the interpreter's site directories, whatever its name:
// extension modules (`_C.so` as much as `_C.cpython-311-x86_64-linux-gnu.so`),
// libraries loaded with torch.ops.load_library or ctypes, and executables.
std::vector<std::string> find_installed_binaries(const PythonFacts& python) {
  std::vector<std::string> found;
  std::set<std::string> roots = site_roots(python);
  std::set<std::string> visited;
  std::vector<std::pair<std::string, int>> stack;
  for (const std::string& r : roots) stack.emplace_back(r, 0);
  while (!stack.empty() && found.size() < kMaxInstalledBinaries) {
    auto [dir, depth] = stack.back();
    stack.pop_back();
    char* real = realpath(dir.c_str(), nullptr);
    if (!real) continue;
    bool fresh = visited.insert(real).second;
    std::free(real);
    if (!fresh) continue;
    DIR* handle = opendir(dir.c_str());
    if (!handle) continue;
    while (dirent* entry = readdir(handle)) {
      std::string name = entry->d_name;
      if (name == "." || name == ".." || name == "__pycache__") continue;
      std::string path = dir + "/" + name;
      struct stat info {};
      if (lstat(path.c_str(), &info) != 0) continue;
      if (S_ISDIR(info.st_mode)) {
        if (depth < 12) stack.emplace_back(path, depth + 1);
        continue;
      }
      if (S_ISREG(info.st_mode) && info.st_size >= 64 && starts_with_elf_magic(path)) found.push_back(path);
    }
    closedir(handle);
  }
  std::sort(found.begin(), found.end());
  return found;
}

int run_environment(const Options& options, const PythonFacts& python, const DriverFacts& driver,
                    AnalysisContext context) {
  std::vector<Fact> facts;
  std::vector<Finding> findings;
  const TorchFacts& torch = python.torch;
  facts.push_back({"python", python.executable + " (" + std::to_string(python.major) + "." +
                                 std::to_string(python.minor) + "." + std::to_string(python.micro) + ", " +
                                 python.soabi + ")"});
  std::vector<std::string> tags = supported_tags(python);
  facts.push_back(
      {"wheel tags", std::to_string(tags.size()) + " supported, most preferred " + tags.front() +
                         (python.has_manylinux_module ? " (a _manylinux module may veto some; not evaluated)" : "")});
  facts.push_back({"glibc", python.glibc_version.empty() ? "unknown" : python.glibc_version});
  std::vector<std::string> loaded = torch.imported ? torch.loaded_libraries : python.loaded_libraries;
  std::string libstdcxx = find_loaded(loaded, "libstdc++.so");
  if (libstdcxx.empty()) libstdcxx = find_in_cache(context.ld_cache, "libstdc++.so.6");
  {
    MappedFile file;
    ElfFile elf;
    std::string error;
    if (!libstdcxx.empty() && file.open(libstdcxx, error) && parse_elf(file.view(), elf, error)) {
      facts.push_back({"libstdc++", libstdcxx + " (newest " + newest_version(elf, "GLIBCXX") + ", " +
                                        newest_version(elf, "CXXABI") + ")"});
    }
  }
  std::string libc10;
  int proven_abi = -1;
  if (!torch.found) {
    facts.push_back({"torch", "not installed"});
  } else {
    libc10 = find_loaded(torch.loaded_libraries, "libc10.so");
    if (libc10.empty()) libc10 = torch.package_dir + "/lib/libc10.so";
    std::string evidence;
    proven_abi = proven_torch_abi(libc10, evidence);
    if (!torch.imported) {
      findings.push_back(
          {"torch_import",
           Severity::kError,
           torch.import_error,
           {"torch package: " + torch.package_dir},
           "run `" + python.executable + " -c 'import torch'` and fix that first; then rerun `attnforge doctor`"});
      facts.push_back({"torch", torch.package_dir + " (import fails)"});
    } else {
      facts.push_back(
          {"torch", torch.version +
                        (torch.cuda_version.empty() ? " (CPU only)" : " (CUDA " + torch.cuda_version + ")") + " at " +
                        torch.package_dir});
    }
    facts.push_back(
        {"torch C++ ABI", std::string("reports _GLIBCXX_USE_CXX11_ABI=") +
                              (torch.reported_cxx11_abi < 0 ? "?" : std::to_string(torch.reported_cxx11_abi)) +
                              ", libc10 exports prove " + (proven_abi < 0 ? "?" : std::to_string(proven_abi)) +
                              (evidence.empty() ? "" : " (" + evidence + ")")});
    if (torch.reported_cxx11_abi >= 0 && proven_abi >= 0 && torch.reported_cxx11_abi != proven_abi) {
      findings.push_back(
          {"torch_abi_flag",
           Severity::kWarning,
           "torch reports _GLIBCXX_USE_CXX11_ABI=" + std::to_string(torch.reported_cxx11_abi) +
               " but its libc10 was built with " + std::to_string(proven_abi),
           {evidence},
           "build extensions with -D_GLIBCXX_USE_CXX11_ABI=" + std::to_string(proven_abi) + " (the libraries decide)"});
    }
  }
  if (!driver.driver_found) {
    facts.push_back({"GPU driver", driver.error});
  } else {
    facts.push_back({"GPU driver", "libcuda " + std::to_string(driver.driver_version / 1000) + "." +
                                       std::to_string(driver.driver_version % 1000 / 10) +
                                       (driver.error.empty() ? "" : ": " + driver.error)});
  }
  for (const GpuFacts& gpu : context.gpus) {
    facts.push_back({"GPU", gpu.name + " compute capability " + std::to_string(gpu.major) + "." +
                                std::to_string(gpu.minor) + " (" + context.gpu_source + ")"});
  }
  std::string nvrtc = find_loaded(loaded, "libnvrtc.so");
  if (nvrtc.empty()) nvrtc = find_in_cache(context.ld_cache, "libnvrtc.so");
  facts.push_back({"NVRTC", nvrtc.empty() ? "not found" : nvrtc});
  std::string nvcc;
  std::string release = nvcc_release(nvcc);
  facts.push_back({"nvcc", nvcc.empty() ? "not found" : nvcc + " (CUDA " + release + ")"});
  if (!release.empty() && !torch.cuda_version.empty() &&
      std::atoi(release.c_str()) != std::atoi(torch.cuda_version.c_str())) {
    findings.push_back(
        {"nvcc_mismatch",
         Severity::kWarning,
         "nvcc is CUDA " + release + " but torch uses CUDA " + torch.cuda_version +
             ": extensions built here will need another CUDA runtime",
         {nvcc},
         "put CUDA " + torch.cuda_version + "'s nvcc first on PATH (CUDA_HOME) before building extensions"});
  }
  std::string gxx;
  int gxx_abi = gxx_default_abi(gxx);
  facts.push_back(
      {"g++ default ABI",
       gxx.empty() ? "no g++" : gxx + ": _GLIBCXX_USE_CXX11_ABI=" + (gxx_abi < 0 ? "?" : std::to_string(gxx_abi))});
  if (gxx_abi >= 0 && proven_abi >= 0 && gxx_abi != proven_abi) {
    findings.push_back({"compiler_abi",
                        Severity::kWarning,
                        "g++ defaults to _GLIBCXX_USE_CXX11_ABI=" + std::to_string(gxx_abi) + " but torch uses " +
                            std::to_string(proven_abi),
                        {gxx},
                        "pass -D_GLIBCXX_USE_CXX11_ABI=" + std::to_string(proven_abi) +
                            " to builds that do not use torch.utils.cpp_extension"});
  }
  af_status cuda = af_backend_available(AF_BACKEND_CUDA);
  facts.push_back({"attnforge GPU path",
                   cuda == AF_OK ? std::string("available") : std::string("unavailable: ") + af_last_error_message()});

  Analyzer analyzer(context);
  std::vector<BinaryReport> extensions;
  std::vector<std::string> binaries = find_installed_binaries(python);
  if (binaries.size() >= kMaxInstalledBinaries) {
    findings.push_back(
        {"scan_limit",
         Severity::kWarning,
         "more than " + std::to_string(kMaxInstalledBinaries) + " binaries installed: the rest are not judged",
         {binaries.back()},
         ""});
  }
  for (const std::string& path : binaries) {
    Distribution owner = analyzer.owner_of(path);
    extensions.push_back(analyzer.analyze(
        path, owner.name.empty() ? path : "[" + owner.name + " " + owner.version + "] " + path, &owner));
  }
  judge_optional_libraries(extensions);
  judge_alternatives(extensions);
  judge_optional_extensions(python, extensions);
  for (Finding& f : check_pure_distributions(python)) findings.push_back(std::move(f));
  bool healthy = true;
  for (const Finding& f : findings) healthy &= f.severity != Severity::kError;
  for (const BinaryReport& r : extensions) healthy &= r.healthy();

  if (options.json) {
    std::string out = std::string("{\"schema\":\"") + kSchema +
                      "\",\"command\":\"environment\",\"healthy\":" + (healthy ? "true" : "false") +
                      ",\"python\":" + python_json(&python) + ",\"facts\":{";
    for (size_t i = 0; i < facts.size(); ++i)
      out += (i ? "," : "") + json_string(facts[i].name) + ":" + json_string(facts[i].value);
    out += "},\"torch_proven_cxx11_abi\":" + (proven_abi < 0 ? std::string("null") : std::to_string(proven_abi)) +
           ",\"findings\":[";
    for (size_t i = 0; i < findings.size(); ++i) out += (i ? "," : "") + finding_json(findings[i]);
    out += "],\"binaries\":[";
    for (size_t i = 0; i < extensions.size(); ++i) out += (i ? "," : "") + binary_json(extensions[i]);
    std::printf("%s]}\n", out.c_str());
  } else {
    for (const Fact& f : facts) std::printf("%-20s %s\n", f.name.c_str(), f.value.c_str());
    for (const Finding& f : findings) {
      std::printf("[%s] %s\n", severity_name(f.severity), f.summary.c_str());
      if (!f.fix.empty()) std::printf("    fix: %s\n", f.fix.c_str());
    }
    std::printf("installed binaries: %zu\n", extensions.size());
    for (const BinaryReport& r : extensions) std::fputs(binary_text(r, options.verbose).c_str(), stdout);
    std::printf("%s\n", healthy ? "healthy" : "problems found");
  }
  return healthy ? kExitHealthy : kExitProblems;
}

int run(int argc, char** argv) {
  Options options;
  std::string error;
  bool help = false;
  if (!parse_options(argc, argv, options, error, help)) {
    std::fprintf(stderr, "attnforge doctor: %s\n\n%s", error.c_str(), kHelpEnvironment);
    return kExitUsage;
  }
  if (help) {
    std::fputs(kHelpEnvironment, stdout);
    return kExitHealthy;
  }
  AnalysisContext context;
  context.ld_library_path = split_colon(std::getenv("LD_LIBRARY_PATH"));
  if (!std::getenv("LD_LIBRARY_PATH")) context.ld_library_path.clear();
  context.ld_cache = read_ld_cache();
  if (options.command == "so" && options.portability_glibc_minor >= 0) return run_so(options, nullptr, context);

  PythonFacts python;
  bool use_python = !options.no_python;
  if (use_python) {
    python = probe_python(options.python, options.command != "tags");
    if (!python.ok) {
      std::fprintf(stderr, "attnforge doctor: %s\n", python.error.c_str());
      return kExitUsage;
    }
  }
  if (options.command == "tags") return run_tags(python);
  DriverFacts driver = query_cuda_driver();
  const PythonFacts* facts = use_python ? &python : nullptr;
  choose_gpus(options, facts, driver, context);
  context.python = facts;
  if (options.command == "so") return run_so(options, facts, context);
  if (options.command == "wheel") return run_wheel(options, facts, context);
  if (!use_python) {
    std::fprintf(stderr, "attnforge doctor: the environment check needs an interpreter\n");
    return kExitUsage;
  }
  return run_environment(options, python, driver, context);
}

}  // namespace

int run_doctor_command(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attnforge doctor: internal error: %s\n", e.what());
    return kExitUsage;
  }
}

}  // namespace af::doctor
