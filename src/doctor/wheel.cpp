#include "doctor/wheel.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "doctor/process.h"
#include "doctor/tags.h"
#include "doctor/zip.h"

namespace af::doctor {
namespace {

constexpr size_t kMaxCompiledMembers = 256;

bool starts_with(const std::string& text, const std::string& prefix) { return text.compare(0, prefix.size(), prefix) == 0; }
bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_compiled_member(const std::string& name) {
  return ends_with(name, ".so") || name.find(".so.") != std::string::npos;
}

// A member name is safe to extract when it stays inside the scratch directory.
bool is_safe_member_name(const std::string& name) {
  if (name.empty() || name[0] == '/' || name.find('\\') != std::string::npos) return false;
  std::stringstream parts(name);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part == "..") return false;
  }
  return true;
}

bool write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos; slash = path.find('/', slash + 1)) {
    mkdir(path.substr(0, slash).c_str(), 0700);
  }
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

std::vector<std::string> lines_of(const std::vector<uint8_t>& bytes) {
  std::vector<std::string> lines;
  std::string line;
  for (uint8_t c : bytes) {
    if (c == '\n') {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      lines.push_back(line);
      line.clear();
    } else {
      line += char(c);
    }
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}

// RECORD rows are CSV: path,hash,size (paths may be quoted when they hold commas).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') fields.back() += '"', ++i;
      else if (c == '"') quoted = false;
      else fields.back() += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.emplace_back();
    } else {
      fields.back() += c;
    }
  }
  return fields;
}

// Modules a Python file imports: absolute names and relative ones resolved against `package`.
std::vector<std::string> imported_modules(const std::vector<std::string>& lines, const std::string& package) {
  std::vector<std::string> modules;
  for (std::string line : lines) {
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos) continue;
    line = line.substr(start);
    std::istringstream words(line);
    std::string keyword, name, third;
    words >> keyword >> name >> third;
    if (keyword == "import") {
      name = name.substr(0, name.find(','));
      modules.push_back(name);
    } else if (keyword == "from" && third == "import") {
      size_t dots = name.find_first_not_of('.');
      if (dots == 0) {
        modules.push_back(name);
        continue;
      }
      std::string base = package;
      for (size_t d = 1; d < (dots == std::string::npos ? name.size() : dots); ++d) base = base.substr(0, base.rfind('.'));
      std::string rest = dots == std::string::npos ? "" : name.substr(dots);
      if (rest.empty()) {
        // "from . import _C": each imported name may be a module.
        std::string imported;
        std::getline(words, imported);
        std::istringstream names(imported);
        std::string item;
        while (std::getline(names, item, ',')) {
          size_t a = item.find_first_not_of(" \t("), b = item.find_first_of(" \t)", a);
          if (a != std::string::npos) modules.push_back(base + "." + item.substr(a, b == std::string::npos ? b : b - a));
        }
      } else {
        modules.push_back(base + "." + rest);
      }
    }
  }
  return modules;
}

}  // namespace

bool WheelReport::healthy() const {
  if (!readable) return false;
  for (const Finding& f : findings) {
    if (f.severity == Severity::kError) return false;
  }
  for (const BinaryReport& b : binaries) {
    if (!b.healthy()) return false;
  }
  return true;
}

WheelReport analyze_wheel(const std::string& path, const PythonFacts* python, Analyzer& analyzer,
                          const std::string& scratch_dir) {
  WheelReport report;
  report.path = path;
  WheelName name;
  std::string error;
  if (!parse_wheel_filename(path, name, error)) {
    report.findings.push_back({"wheel_name", Severity::kError, error, {}, "wheel files must keep the name pip gave them"});
    return report;
  }
  report.tags = name.tags();
  MappedFile file;
  std::vector<ZipMember> members;
  if (!file.open(path, error) || !parse_zip_directory(file.view(), members, error)) {
    report.findings.push_back({"wheel_archive", Severity::kError, error, {}, "download the wheel again"});
    return report;
  }
  report.readable = true;
  ByteView archive = file.view();

  // Tags against the interpreter.
  if (python) {
    std::vector<std::string> supported = supported_tags(*python);
    for (const std::string& tag : report.tags) {
      auto at = std::find(supported.begin(), supported.end(), tag);
      if (at != supported.end() && (report.best_tag_index < 0 || at - supported.begin() < report.best_tag_index)) {
        report.best_tag_index = at - supported.begin();
        report.best_tag = tag;
      }
    }
    std::string cp = std::to_string(python->major) + std::to_string(python->minor);
    std::string newest_platform = linux_platform_tags(python->glibc_version, python->machine, false).front();
    if (report.best_tag.empty()) {
      Finding f{"wheel_tag", Severity::kError, "not a supported wheel for this interpreter: pip refuses to install it", {}, ""};
      f.evidence.push_back("wheel tags: " + std::to_string(report.tags.size()) + " (" + report.tags.front() + (report.tags.size() > 1 ? ", …)" : ")"));
      f.evidence.push_back("interpreter: CPython " + std::to_string(python->major) + "." + std::to_string(python->minor) +
                           ", glibc " + python->glibc_version + ", " + python->machine + "; " +
                           std::to_string(supported.size()) + " supported tags, most specific " + supported.front());
      std::vector<std::string> reasons;
      bool python_ok = false, platform_ok = false;
      for (const std::string& tag : report.tags) {
        std::string py = tag.substr(0, tag.find('-'));
        std::string plat = tag.substr(tag.rfind('-') + 1);
        for (const std::string& s : supported) {
          if (s.compare(0, py.size() + 1, py + "-") == 0) python_ok = true;
          if (ends_with(s, "-" + plat)) platform_ok = true;
        }
      }
      if (!python_ok) reasons.push_back("built for another Python (" + name.python_tags.front() + "), this is cp" + cp);
      if (!platform_ok) {
        reasons.push_back("platform " + name.platform_tags.front() + " is not accepted here (newest: " + newest_platform + ")");
      }
      if (python_ok && platform_ok) reasons.push_back("no python/abi/platform combination of the wheel is accepted");
      f.summary += " (" + reasons.front() + ")";
      for (const std::string& r : reasons) f.evidence.push_back(r);
      f.fix = "get the build named " + name.distribution + "-" + name.version + "-cp" + cp + "-cp" + cp + "-" +
              (platform_ok ? name.platform_tags.front() : newest_platform) + ".whl (or any wheel whose tags include one of `attnforge doctor tags`)";
      report.findings.push_back(f);
    }
  }
  bool linux_only = !name.platform_tags.empty();
  for (const std::string& plat : name.platform_tags) linux_only &= starts_with(plat, "linux_");
  if (linux_only) {
    report.findings.push_back({"wheel_tag", Severity::kWarning,
                               "platform tag " + name.platform_tags.front() + " makes no glibc/libstdc++ promise (not a manylinux wheel)",
                               {}, "prefer a manylinux wheel; the `so` checks below say whether this one loads here"});
  }

  // dist-info: WHEEL tags and RECORD hashes.
  std::string dist_info;
  std::map<std::string, const ZipMember*> by_name;
  for (const ZipMember& m : members) {
    by_name[m.name] = &m;
    size_t slash = m.name.find('/');
    if (slash != std::string::npos && ends_with(m.name.substr(0, slash), ".dist-info") && dist_info.empty()) {
      dist_info = m.name.substr(0, slash);
    }
  }
  std::vector<uint8_t> bytes;
  if (dist_info.empty() || !by_name.count(dist_info + "/WHEEL")) {
    report.findings.push_back({"wheel_metadata", Severity::kError, "no *.dist-info/WHEEL in the archive", {}, "rebuild the wheel"});
  } else if (extract_zip_member(archive, *by_name[dist_info + "/WHEEL"], bytes, error)) {
    std::set<std::string> declared;
    for (const std::string& line : lines_of(bytes)) {
      if (starts_with(line, "Tag: ")) declared.insert(line.substr(5));
    }
    std::set<std::string> from_name(report.tags.begin(), report.tags.end());
    if (!declared.empty() && declared != from_name) {
      report.findings.push_back({"wheel_metadata", Severity::kWarning, "WHEEL Tag lines differ from the file name's tags",
                                 {"WHEEL: " + *declared.begin(), "file name: " + *from_name.begin()},
                                 "the file was renamed; use the name its WHEEL file declares"});
    }
  }
  std::set<std::string> recorded;
  if (!dist_info.empty() && by_name.count(dist_info + "/RECORD") &&
      extract_zip_member(archive, *by_name[dist_info + "/RECORD"], bytes, error)) {
    std::vector<std::string> mismatches, missing;
    for (const std::string& line : lines_of(bytes)) {
      std::vector<std::string> fields = csv_fields(line);
      if (fields.empty() || fields[0].empty()) continue;
      recorded.insert(fields[0]);
      if (fields.size() < 2 || fields[1].empty()) continue;
      auto member = by_name.find(fields[0]);
      if (member == by_name.end()) {
        missing.push_back(fields[0]);
        continue;
      }
      std::vector<uint8_t> content;
      if (!extract_zip_member(archive, *member->second, content, error)) {
        mismatches.push_back(fields[0] + ": " + error);
      } else if (starts_with(fields[1], "sha256=") && record_hash_of(ByteView(content)) != fields[1]) {
        mismatches.push_back(fields[0] + ": RECORD " + fields[1] + ", content " + record_hash_of(ByteView(content)));
      }
    }
    std::vector<std::string> unrecorded;
    for (const ZipMember& m : members) {
      // Directories and signature files are not listed in RECORD (PEP 376 / 427).
      if (m.name.empty() || m.name.back() == '/' || ends_with(m.name, "/RECORD.jws") || ends_with(m.name, "/RECORD.p7s")) continue;
      if (!recorded.count(m.name)) unrecorded.push_back(m.name);
    }
    if (!unrecorded.empty()) {
      if (unrecorded.size() > 16) unrecorded.resize(16);
      report.findings.push_back({"record_hash", Severity::kWarning, std::to_string(unrecorded.size()) + " members are not listed in RECORD",
                                 unrecorded, "the wheel was modified after it was built: download it again"});
    }
    if (!mismatches.empty() || !missing.empty()) {
      Finding f{"record_hash", Severity::kError,
                std::to_string(mismatches.size()) + " members differ from RECORD, " + std::to_string(missing.size()) + " missing",
                {}, "the wheel was modified or truncated: download it again"};
      for (const std::string& m : mismatches) f.evidence.push_back(m);
      for (const std::string& m : missing) f.evidence.push_back("missing: " + m);
      if (f.evidence.size() > 16) f.evidence.resize(16);
      report.findings.push_back(f);
    }
  } else if (!dist_info.empty()) {
    report.findings.push_back({"record_hash", Severity::kError, "no readable *.dist-info/RECORD", {}, "rebuild the wheel"});
  }

  // A pure wheel that imports an in-package module it does not contain (the
  // compiled extension was left out of the build).
  std::set<std::string> modules;
  bool has_compiled = false;
  for (const ZipMember& m : members) {
    std::string module_path = m.name;
    if (is_compiled_member(m.name)) has_compiled = true;
    if (ends_with(module_path, "/__init__.py")) module_path = module_path.substr(0, module_path.size() - 12);
    else if (ends_with(module_path, ".py")) module_path = module_path.substr(0, module_path.size() - 3);
    else if (ends_with(module_path, ".so")) module_path = module_path.substr(0, module_path.find('.', module_path.rfind('/') + 1));
    else continue;
    std::replace(module_path.begin(), module_path.end(), '/', '.');
    modules.insert(module_path);
  }
  std::set<std::string> top_packages;
  for (const std::string& m : modules) top_packages.insert(m.substr(0, m.find('.')));
  std::vector<std::string> absent;
  std::map<std::string, std::string> outside_imports;  // top-level name the wheel lacks -> importing member
  for (const ZipMember& m : members) {
    if (!ends_with(m.name, ".py") || !extract_zip_member(archive, m, bytes, error)) continue;
    std::string package = m.name.substr(0, m.name.rfind('/') == std::string::npos ? 0 : m.name.rfind('/'));
    std::replace(package.begin(), package.end(), '/', '.');
    for (const std::string& imported : imported_modules(lines_of(bytes), package)) {
      std::string top = imported.substr(0, imported.find('.'));
      if (!top_packages.count(top) && !top.empty() && top[0] != '.') outside_imports.emplace(top, m.name);
      if (!top_packages.count(top) || modules.count(imported)) continue;
      // "pkg.sub.name" may import a name from pkg.sub rather than a module: only flag when the parent exists.
      std::string parent = imported.substr(0, imported.rfind('.'));
      if (imported.find('.') != std::string::npos && !modules.count(parent)) continue;
      if (std::find(absent.begin(), absent.end(), imported) == absent.end()) absent.push_back(imported + " (imported by " + m.name + ")");
    }
  }
  // Top-level modules named after the distribution (flash_attn -> flash_attn_2_cuda)
  // that neither the wheel nor the interpreter provides: the wheel's missing extension.
  std::string dist_prefix = name.distribution;
  std::transform(dist_prefix.begin(), dist_prefix.end(), dist_prefix.begin(), [](char c) { return c == '-' ? '_' : char(std::tolower(c)); });
  std::vector<std::string> candidates;
  for (const auto& [top, importer] : outside_imports) {
    if (starts_with(top, dist_prefix)) candidates.push_back(top);
  }
  if (python && !candidates.empty()) {
    std::vector<std::string> argv = {python->executable, "-c",
                                     "import importlib.util, sys\n"
                                     "for n in sys.argv[1:]:\n"
                                     "    if importlib.util.find_spec(n) is None: print(n)\n"};
    argv.insert(argv.end(), candidates.begin(), candidates.end());
    ProcessResult run = run_process(argv, 60);
    for (const std::string& missing : lines_of(std::vector<uint8_t>(run.output.begin(), run.output.end()))) {
      if (!missing.empty()) absent.push_back(missing + " (imported by " + outside_imports[missing] + ")");
    }
  }
  if (!absent.empty()) {
    bool pure = std::find(name.abi_tags.begin(), name.abi_tags.end(), "none") != name.abi_tags.end() &&
                std::find(name.platform_tags.begin(), name.platform_tags.end(), "any") != name.platform_tags.end();
    report.findings.push_back({"missing_extension", pure && !has_compiled ? Severity::kError : Severity::kWarning,
                               std::string(pure && !has_compiled ? "pure (py3-none-any) wheel " : "") + "imports " +
                                   absent.front().substr(0, absent.front().find(' ')) + ", which the wheel does not contain" +
                                   (pure && !has_compiled ? ": the compiled extension was left out; import will fail" : ""),
                               absent,
                               "install a platform wheel of " + name.distribution + " (cpXY-cpXY-manylinux…) or build it from "
                               "source: `pip install --no-binary " + name.distribution + " --no-build-isolation " + name.distribution + "`"});
  }

  // Every compiled member, extracted with its relative layout so $ORIGIN paths resolve.
  size_t analyzed = 0;
  std::vector<std::pair<std::string, std::string>> extracted;
  for (const ZipMember& m : members) {
    if (!is_compiled_member(m.name) || analyzed >= kMaxCompiledMembers) continue;
    if (!is_safe_member_name(m.name)) {
      report.findings.push_back({"wheel_archive", Severity::kError, "member name escapes the install directory: " + m.name, {}, ""});
      continue;
    }
    ++analyzed;
    std::string target = scratch_dir + "/" + m.name;
    if (!extract_zip_member(archive, m, bytes, error) || !write_file(target, bytes)) {
      report.findings.push_back({"wheel_archive", Severity::kError, "cannot extract " + m.name + ": " + error, {}, ""});
      continue;
    }
    extracted.emplace_back(target, m.name);
  }
  for (const auto& [target, member] : extracted) report.binaries.push_back(analyzer.analyze(target, member));
  return report;
}

std::string wheel_json(const WheelReport& r) {
  std::string out = "{\"path\":" + json_string(r.path) + ",\"healthy\":" + (r.healthy() ? "true" : "false") +
                    ",\"readable\":" + (r.readable ? "true" : "false") + ",\"tags\":" + json_string_array(r.tags) +
                    ",\"best_tag\":" + (r.best_tag.empty() ? std::string("null") : json_string(r.best_tag)) +
                    ",\"best_tag_index\":" + (r.best_tag_index < 0 ? std::string("null") : std::to_string(r.best_tag_index)) +
                    ",\"findings\":[";
  for (size_t i = 0; i < r.findings.size(); ++i) out += (i ? "," : "") + finding_json(r.findings[i]);
  out += "],\"binaries\":[";
  for (size_t i = 0; i < r.binaries.size(); ++i) out += (i ? "," : "") + binary_json(r.binaries[i]);
  return out + "]}";
}

std::string wheel_text(const WheelReport& r, bool verbose) {
  std::string out = std::string(r.healthy() ? "ok      " : "BROKEN  ") + r.path + "\n";
  if (!r.best_tag.empty()) out += "  matches " + r.best_tag + " (preference " + std::to_string(r.best_tag_index) + ")\n";
  for (const Finding& f : r.findings) {
    if (!verbose && f.severity == Severity::kInfo) continue;
    out += std::string("  [") + severity_name(f.severity) + "] " + f.summary + "\n";
    if (verbose) {
      for (const std::string& e : f.evidence) out += "      evidence: " + e + "\n";
    }
    if (!f.fix.empty()) out += "      fix: " + f.fix + "\n";
  }
  for (const BinaryReport& b : r.binaries) out += binary_text(b, verbose);
  return out;
}

}  // namespace af::doctor
