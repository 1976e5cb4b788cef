// libFuzzer target: the .nv_fatbin reader.
#include "doctor/fatbin.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<af::doctor::FatbinEntry> entries;
  std::string error;
  af::doctor::parse_fatbin(af::doctor::ByteView(data, size), entries, error);
  for (const af::doctor::FatbinEntry& e : entries) af::doctor::fatbin_entry_label(e);
  return 0;
}
