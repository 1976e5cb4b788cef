// libFuzzer target: the ELF reader (section headers, PT_DYNAMIC, symbols, versions).
#include "doctor/elf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  af::doctor::ElfFile elf;
  std::string error;
  if (af::doctor::parse_elf(af::doctor::ByteView(data, size), elf, error)) {
    af::doctor::cubin_sm_from_flags(elf.flags);
    elf.find_section(".nv_fatbin");
  }
  return 0;
}
