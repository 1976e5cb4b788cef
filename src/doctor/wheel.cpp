#include "doctor/wheel.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "doctor/process.h"
#include "doctor/pyimports.h"
#include "doctor/tags.h"
#include "doctor/zip.h"

namespace af::doctor {
namespace {

// Compiled members analysed per wheel (each costs a full `so` analysis); past it the report says so.
constexpr size_t kMaxCompiledMembers = 1024;
// Text members (METADATA, WHEEL, RECORD, Python sources) read into memory.
constexpr uint64_t kMaxTextMember = uint64_t(64) << 20;

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}
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

// Creates the directories above `path` and opens it for writing.
FILE* open_for_writing(const std::string& path) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos; slash = path.find('/', slash + 1)) {
    mkdir(path.substr(0, slash).c_str(), 0700);
  }
  return std::fopen(path.c_str(), "wb");
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
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"')
        fields.back() += '"', ++i;
      else if (c == '"')
        quoted = false;
      else
        fields.back() += c;
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

}  // namespace

bool python_module_of(const std::string& path, std::string& module, bool& is_package) {
  is_package = false;
  if (ends_with(path, "/__init__.py")) {
    module = path.substr(0, path.size() - 12);
    is_package = true;
  } else if (ends_with(path, ".py")) {
    module = path.substr(0, path.size() - 3);
  } else if (is_compiled_member(path)) {
    module = path.substr(0, path.find('.', path.rfind('/') + 1));
  } else {
    return false;
  }
  if (starts_with(path, "../") || module.find(".data/") != std::string::npos ||
      module.find(".dist-info/") != std::string::npos || module.find('.') != std::string::npos) {
    return false;
  }
  std::replace(module.begin(), module.end(), '/', '.');
  return !module.empty();
}

std::vector<MissingModule> missing_extensions(const std::vector<PythonSource>& sources,
                                              const std::set<std::string>& modules, const std::string& distribution,
                                              const PythonFacts* python) {
  ImportScan scan = scan_imports(sources, modules);
  std::set<std::string> packages_with_source;
  for (const PythonSource& source : sources) packages_with_source.insert(source.module);
  std::vector<MissingModule> absent;
  std::vector<std::string> ask_interpreter;
  for (const MissingModule& m : scan.missing) {
    // A namespace package (no __init__.py) may be completed by other distributions: ask the interpreter.
    std::string top = m.module.substr(0, m.module.find('.'));
    if (packages_with_source.count(top))
      absent.push_back(m);
    else
      ask_interpreter.push_back(m.module);
  }
  // Top-level modules named after the distribution (flash_attn -> flash_attn_2_cuda)
  // imported at import time but provided neither by the wheel nor by the interpreter.
  std::string dist_prefix = distribution;
  std::transform(dist_prefix.begin(), dist_prefix.end(), dist_prefix.begin(),
                 [](char c) { return c == '-' || c == '.' ? '_' : char(std::tolower(c)); });
  std::map<std::string, std::string> importer_of;
  for (const auto& [top, importer] : scan.external) {
    if (!dist_prefix.empty() && starts_with(top, dist_prefix) && importer_of.emplace(top, importer).second)
      ask_interpreter.push_back(top);
  }
  if (python && !ask_interpreter.empty()) {
    std::vector<std::string> argv = {python->executable, "-c",
                                     "import importlib.util, sys\n"
                                     "for n in sys.argv[1:]:\n"
                                     "    try:\n"
                                     "        found = importlib.util.find_spec(n) is not None\n"
                                     "    except Exception:\n"
                                     "        found = False\n"
                                     "    if not found: print(n)\n"};
    argv.insert(argv.end(), ask_interpreter.begin(), ask_interpreter.end());
    ProcessResult run = run_process(argv, 60);
    for (const std::string& missing : lines_of(std::vector<uint8_t>(run.output.begin(), run.output.end()))) {
      if (missing.empty()) continue;
      auto known = std::find_if(scan.missing.begin(), scan.missing.end(),
                                [&](const MissingModule& m) { return m.module == missing; });
      absent.push_back(known != scan.missing.end() ? *known : MissingModule{missing, importer_of[missing], true});
    }
  }
  std::stable_partition(absent.begin(), absent.end(), [](const MissingModule& m) { return m.reached; });
  return absent;
}

Finding missing_extension_finding(const std::vector<MissingModule>& absent, const Distribution& dist,
                                  const PythonFacts* python) {
  const MissingModule& first = absent.front();
  std::vector<std::string> evidence;
  for (const MissingModule& m : absent) {
    evidence.push_back(m.module + " (imported at module level by " + m.importer +
                       (m.reached ? ", which `import` runs" : "") + ")");
  }
  if (evidence.size() > 16) evidence.resize(16);
  return {"missing_extension", first.reached ? Severity::kError : Severity::kWarning,
          first.reached
              ? "`import " + first.importer.substr(0, first.importer.find('.')) + "` fails: " + first.module +
                    " is imported at module level but exists nowhere, neither as source nor compiled (the compiled "
                    "extension was left out of the build)"
              : first.importer + " imports " + first.module + ", which exists nowhere in " + dist.name +
                    " (only when " + first.importer + " itself is imported)",
          evidence, source_build_command(dist, python, "")};
}

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
    report.findings.push_back(
        {"wheel_name", Severity::kError, error, {}, "wheel files must keep the name pip gave them"});
    return report;
  }
  report.tags = name.tags();
  std::string pip = (python ? python->executable : std::string("python")) + " -m pip";
  std::string release = name.distribution + "==" + name.version;
  MappedFile file;
  std::vector<ZipMember> members;
  if (!file.open(path, error)) {
    report.findings.push_back({"wheel_archive", Severity::kError, error, {}, ""});
    return report;
  }
  if (!parse_zip_directory(file.view(), members, error)) {
    bool hostile = error.find("overlap") != std::string::npos || error.find("limit hit") != std::string::npos;
    report.findings.push_back({"wheel_archive",
                               Severity::kError,
                               error,
                               {},
                               hostile ? "do not install it: no wheel tool writes such an archive"
                                       : "download it again: `" + pip + " download --no-deps " + release + "`"});
    return report;
  }
  report.readable = true;
  ByteView archive = file.view();
  ZipBudget budget{default_zip_budget(archive.size())};
  const uint64_t budget_total = budget.remaining;

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
  Distribution dist;
  if (!dist_info.empty() && by_name.count(dist_info + "/METADATA") &&
      extract_zip_member(archive, *by_name[dist_info + "/METADATA"], bytes, error, kMaxTextMember, &budget)) {
    dist = parse_metadata(std::string(bytes.begin(), bytes.end()));
  }
  if (dist.name.empty()) dist.name = name.distribution;
  if (dist.version.empty()) dist.version = name.version;
  std::string build_fix = matching_build_fix(dist, python);

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
      Finding f{"wheel_tag",
                Severity::kError,
                "not a supported wheel for this interpreter: pip refuses to install it",
                {},
                ""};
      f.evidence.push_back("wheel tags: " + std::to_string(report.tags.size()) + " (" + report.tags.front() +
                           (report.tags.size() > 1 ? ", …)" : ")"));
      f.evidence.push_back("interpreter: CPython " + std::to_string(python->major) + "." +
                           std::to_string(python->minor) + ", glibc " + python->glibc_version + ", " + python->machine +
                           "; " + std::to_string(supported.size()) + " supported tags, most specific " +
                           supported.front());
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
        reasons.push_back("platform " + name.platform_tags.front() +
                          " is not accepted here (newest: " + newest_platform + ")");
      }
      if (python_ok && platform_ok) reasons.push_back("no python/abi/platform combination of the wheel is accepted");
      f.summary += " (" + reasons.front() + ")";
      for (const std::string& r : reasons) f.evidence.push_back(r);
      // A release pinned to another torch needs the release built for this torch, whatever its tags.
      bool other_torch = starts_with(dist.torch_requirement, "==") && python->torch.found &&
                         dist.torch_requirement.substr(2) != public_version(python->torch.version);
      f.fix = other_torch
                  ? build_fix
                  : "`" + pip + " install " + release + "` (pip picks this release's build for CPython " +
                        std::to_string(python->major) + "." + std::to_string(python->minor) + " on " + newest_platform +
                        ", or its source); if it has neither: `" + pip + " install --upgrade " + dist.name + "`";
      report.findings.push_back(f);
    }
  }
  bool linux_only = !name.platform_tags.empty();
  for (const std::string& plat : name.platform_tags) linux_only &= starts_with(plat, "linux_");
  if (linux_only) {
    report.findings.push_back(
        {"wheel_tag",
         Severity::kWarning,
         "platform tag " + name.platform_tags.front() + " makes no glibc/libstdc++ promise (not a manylinux wheel)",
         {},
         "none needed if the checks of its binaries below pass"});
  }

  // dist-info: WHEEL tags and RECORD hashes.
  if (dist_info.empty() || !by_name.count(dist_info + "/WHEEL")) {
    report.findings.push_back({"wheel_metadata",
                               Severity::kError,
                               "no *.dist-info/WHEEL in the archive",
                               {},
                               "download it again: `" + pip + " download --no-deps " + release + "`"});
  } else if (extract_zip_member(archive, *by_name[dist_info + "/WHEEL"], bytes, error, kMaxTextMember, &budget)) {
    std::set<std::string> declared;
    for (const std::string& line : lines_of(bytes)) {
      if (starts_with(line, "Tag: ")) declared.insert(line.substr(5));
    }
    std::set<std::string> from_name(report.tags.begin(), report.tags.end());
    if (!declared.empty() && declared != from_name) {
      report.findings.push_back({"wheel_metadata",
                                 Severity::kWarning,
                                 "WHEEL Tag lines differ from the file name's tags",
                                 {"WHEEL: " + *declared.begin(), "file name: " + *from_name.begin()},
                                 "the file was renamed; use the name its WHEEL file declares"});
    }
  }
  std::set<std::string> recorded;
  if (!dist_info.empty() && by_name.count(dist_info + "/RECORD") &&
      extract_zip_member(archive, *by_name[dist_info + "/RECORD"], bytes, error, kMaxTextMember, &budget)) {
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
      if (budget.exhausted) continue;
      Sha256 sha;
      if (!stream_zip_member(
              archive, *member->second,
              [&](const uint8_t* data, size_t size) {
                sha.update(data, size);
                return true;
              },
              &budget, error)) {
        if (!budget.exhausted) mismatches.push_back(fields[0] + ": " + error);
      } else if (starts_with(fields[1], "sha256=")) {
        std::string actual = record_hash_of_digest(digest_of(sha));
        if (actual != fields[1]) mismatches.push_back(fields[0] + ": RECORD " + fields[1] + ", content " + actual);
      }
    }
    std::vector<std::string> unrecorded;
    for (const ZipMember& m : members) {
      // Directories and signature files are not listed in RECORD (PEP 376 / 427).
      if (m.name.empty() || m.name.back() == '/' || ends_with(m.name, "/RECORD.jws") ||
          ends_with(m.name, "/RECORD.p7s"))
        continue;
      if (!recorded.count(m.name)) unrecorded.push_back(m.name);
    }
    if (!unrecorded.empty()) {
      size_t count = unrecorded.size();
      if (unrecorded.size() > 16) unrecorded.resize(16);
      report.findings.push_back({"record_hash", Severity::kWarning,
                                 std::to_string(count) + " members are not listed in RECORD", unrecorded,
                                 "the wheel was modified after it was built: download it again (`" + pip +
                                     " download --no-deps " + release + "`)"});
    }
    if (!mismatches.empty() || !missing.empty()) {
      Finding f{
          "record_hash",
          Severity::kError,
          std::to_string(mismatches.size()) + " members differ from RECORD, " + std::to_string(missing.size()) +
              " missing",
          {},
          "the wheel was modified or truncated: download it again (`" + pip + " download --no-deps " + release + "`)"};
      for (const std::string& m : mismatches) f.evidence.push_back(m);
      for (const std::string& m : missing) f.evidence.push_back("missing: " + m);
      if (f.evidence.size() > 16) f.evidence.resize(16);
      report.findings.push_back(f);
    }
  } else if (!dist_info.empty()) {
    report.findings.push_back({"record_hash",
                               Severity::kError,
                               "no readable *.dist-info/RECORD",
                               {},
                               "download it again: `" + pip + " download --no-deps " + release + "`"});
  }

  // Compiled modules the package imports at import time but the wheel lacks
  // (flash-attn's py3-none-any wheel built without its CUDA extension).
  std::set<std::string> modules;
  std::vector<PythonSource> sources;
  for (const ZipMember& m : members) {
    std::string module_path;
    bool is_package = false;
    if (!python_module_of(m.name, module_path, is_package)) continue;
    // Every directory above a module is a (possibly namespace) package.
    for (size_t dot = module_path.find('.'); dot != std::string::npos; dot = module_path.find('.', dot + 1)) {
      modules.insert(module_path.substr(0, dot));
    }
    modules.insert(module_path);
    if (ends_with(m.name, ".py") && !budget.exhausted &&
        extract_zip_member(archive, m, bytes, error, kMaxTextMember, &budget)) {
      sources.push_back({module_path, is_package, std::string(bytes.begin(), bytes.end())});
    }
  }
  std::vector<MissingModule> absent = missing_extensions(sources, modules, name.distribution, python);
  if (!absent.empty()) report.findings.push_back(missing_extension_finding(absent, dist, python));

  // Every compiled member, extracted with its relative layout so $ORIGIN paths resolve.
  size_t compiled = 0;
  std::vector<std::pair<std::string, std::string>> extracted;
  for (const ZipMember& m : members) {
    if (!is_compiled_member(m.name)) continue;
    if (++compiled > kMaxCompiledMembers || budget.exhausted) continue;
    if (!is_safe_member_name(m.name)) {
      report.findings.push_back({"wheel_archive",
                                 Severity::kError,
                                 "member name escapes the install directory: " + m.name,
                                 {},
                                 "do not install it"});
      continue;
    }
    std::string target = scratch_dir + "/" + m.name;
    FILE* out = open_for_writing(target);
    bool written = out && stream_zip_member(
                              archive, m,
                              [&](const uint8_t* data, size_t size) { return std::fwrite(data, 1, size, out) == size; },
                              &budget, error);
    if (out && std::fclose(out) != 0) written = false;
    if (!written) {
      if (!budget.exhausted) {
        report.findings.push_back({"wheel_archive",
                                   Severity::kError,
                                   "cannot extract " + m.name + ": " + error,
                                   {},
                                   "download it again: `" + pip + " download --no-deps " + release + "`"});
      }
      continue;
    }
    extracted.emplace_back(target, m.name);
  }
  if (compiled > kMaxCompiledMembers) {
    report.findings.push_back({"wheel_archive",
                               Severity::kWarning,
                               std::to_string(compiled) + " compiled members: the doctor analysed the first " +
                                   std::to_string(kMaxCompiledMembers) + " (limit hit; the rest are not judged)",
                               {},
                               ""});
  }
  if (budget.exhausted) {
    report.findings.push_back(
        {"wheel_archive",
         Severity::kError,
         "the archive expands past the doctor's budget of " + std::to_string(budget_total >> 20) +
             " MiB of uncompressed data for a " + std::to_string(archive.size() >> 10) +
             " KiB file (limit hit: the rest is not judged); real wheels expand 1-5x, zip bombs ~1000x",
         {"members listed: " + std::to_string(members.size())},
         "do not install it unless you know why it is this large"});
  }
  for (const auto& [target, member] : extracted) report.binaries.push_back(analyzer.analyze(target, member, &dist));
  judge_optional_libraries(report.binaries);
  judge_alternatives(report.binaries);
  return report;
}

std::string wheel_json(const WheelReport& r) {
  std::string out =
      "{\"path\":" + json_string(r.path) + ",\"healthy\":" + (r.healthy() ? "true" : "false") +
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
  if (!r.best_tag.empty())
    out += "  matches " + r.best_tag + " (preference " + std::to_string(r.best_tag_index) + ")\n";
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
