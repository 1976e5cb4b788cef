#include "doctor/tags.h"

#include <cstdio>

namespace af::doctor {
namespace {

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t at = text.find(separator, start);
    parts.push_back(text.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) return parts;
    start = at + 1;
  }
}

}  // namespace

std::vector<std::string> WheelName::tags() const {
  std::vector<std::string> out;
  for (const std::string& py : python_tags) {
    for (const std::string& abi : abi_tags) {
      for (const std::string& plat : platform_tags) out.push_back(py + "-" + abi + "-" + plat);
    }
  }
  return out;
}

bool parse_wheel_filename(const std::string& file_name, WheelName& out, std::string& error) {
  std::string base = file_name.substr(file_name.rfind('/') == std::string::npos ? 0 : file_name.rfind('/') + 1);
  if (base.size() < 5 || base.compare(base.size() - 4, 4, ".whl") != 0) {
    error = "not a .whl file name: " + base;
    return false;
  }
  std::vector<std::string> parts = split(base.substr(0, base.size() - 4), '-');
  if (parts.size() != 5 && parts.size() != 6) {
    error = "wheel name must be {dist}-{version}(-{build})?-{python}-{abi}-{platform}.whl: " + base;
    return false;
  }
  out = WheelName();
  out.distribution = parts[0];
  out.version = parts[1];
  size_t tag_index = parts.size() == 6 ? 3 : 2;
  if (parts.size() == 6) out.build = parts[2];
  out.python_tags = split(parts[tag_index], '.');
  out.abi_tags = split(parts[tag_index + 1], '.');
  out.platform_tags = split(parts[tag_index + 2], '.');
  for (const auto* set : {&out.python_tags, &out.abi_tags, &out.platform_tags}) {
    for (const std::string& tag : *set) {
      if (tag.empty()) {
        error = "empty tag in " + base;
        return false;
      }
    }
  }
  return true;
}

std::vector<std::string> linux_platform_tags(const std::string& glibc_version, const std::string& machine,
                                             bool linux_first) {
  std::vector<std::string> tags;
  std::string native = "linux_" + machine;
  if (linux_first) tags.push_back(native);
  int major = 0, minor = 0;
  if (std::sscanf(glibc_version.c_str(), "%d.%d", &major, &minor) == 2 && major == 2) {
    // x86_64 and i686 go back to manylinux1 (glibc 2.5); other architectures start at 2.17.
    int oldest = machine == "x86_64" || machine == "i686" ? 5 : 17;
    for (int m = minor; m >= oldest; --m) {
      tags.push_back("manylinux_2_" + std::to_string(m) + "_" + machine);
      if (m == 17) tags.push_back("manylinux2014_" + machine);
      if (m == 12 && oldest == 5) tags.push_back("manylinux2010_" + machine);
      if (m == 5) tags.push_back("manylinux1_" + machine);
    }
  }
  if (!linux_first) tags.push_back(native);
  return tags;
}

std::vector<std::string> supported_tags(const PythonFacts& python, bool linux_first) {
  std::vector<std::string> tags;
  std::vector<std::string> platforms = linux_platform_tags(python.glibc_version, python.machine, linux_first);
  std::string version = std::to_string(python.major) + std::to_string(python.minor);
  std::string interpreter = "cp" + version;
  // _cpython_abis: cpXY with 'd' (debug) / 't' (free-threaded); a debug build also takes the plain ABI.
  std::vector<std::string> abis;
  std::string flags = std::string(python.free_threaded ? "t" : "") + (python.debug_build ? "d" : "");
  if (python.minor < 8 && python.major == 3) flags += "m";
  abis.push_back("cp" + version + flags);
  if (python.debug_build && !(python.major == 3 && python.minor < 8))
    abis.push_back("cp" + version + (python.free_threaded ? "t" : ""));
  // cpython_tags
  for (const std::string& abi : abis) {
    for (const std::string& plat : platforms) tags.push_back(interpreter + "-" + abi + "-" + plat);
  }
  if (!python.free_threaded) {
    for (const std::string& plat : platforms) tags.push_back(interpreter + "-abi3-" + plat);
  }
  for (const std::string& plat : platforms) tags.push_back(interpreter + "-none-" + plat);
  if (!python.free_threaded && python.major == 3) {
    for (int minor = python.minor - 1; minor >= 2; --minor) {
      for (const std::string& plat : platforms) tags.push_back("cp3" + std::to_string(minor) + "-abi3-" + plat);
    }
  }
  // compatible_tags: py3X, py3, py3(X-1)..py30 with every platform, then cpXY-none-any, then the same py list with any.
  std::vector<std::string> py_versions = {"py" + version, "py" + std::to_string(python.major)};
  for (int minor = python.minor - 1; minor >= 0; --minor)
    py_versions.push_back("py" + std::to_string(python.major) + std::to_string(minor));
  for (const std::string& py : py_versions) {
    for (const std::string& plat : platforms) tags.push_back(py + "-none-" + plat);
  }
  tags.push_back(interpreter + "-none-any");
  for (const std::string& py : py_versions) tags.push_back(py + "-none-any");
  return tags;
}

}  // namespace af::doctor
