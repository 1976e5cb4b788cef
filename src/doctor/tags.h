// PEP 425 / 600 compatibility tags: the ordered list of tags an interpreter
// accepts (as packaging.tags.sys_tags() computes it for CPython on glibc
// Linux) and wheel file name parsing (PEP 427).
#pragma once

#include <string>
#include <vector>

#include "doctor/probe.h"

namespace af::doctor {

struct WheelName {
  std::string distribution, version, build;
  std::vector<std::string> python_tags, abi_tags, platform_tags;  // each a '.'-separated set in the name
  // The Cartesian product "py-abi-plat".
  std::vector<std::string> tags() const;
};

bool parse_wheel_filename(const std::string& file_name, WheelName& out, std::string& error);

// Platform tags, most specific first: manylinux_2_M..manylinux_2_5 (with the
// legacy aliases after 2_17, 2_12 and 2_5) and linux_<arch>. `linux_first`
// selects packaging >= 26.3's order (native linux tag first) over the older one (last).
std::vector<std::string> linux_platform_tags(const std::string& glibc_version, const std::string& machine,
                                             bool linux_first);

// packaging.tags.sys_tags() for a CPython interpreter, in preference order.
std::vector<std::string> supported_tags(const PythonFacts& python, bool linux_first = true);

}  // namespace af::doctor
