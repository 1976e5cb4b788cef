// Reader for the `.nv_fatbin` section nvcc embeds in CUDA binaries: lists the
// cubins (SASS for one SM) and PTX it carries. No spec exists; the layout is the
// one described in shared/reference/ABI_FAILURES.md section 3 and checked on nvcc 13 output.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "doctor/bytes.h"

namespace af::doctor {

struct FatbinEntry {
  enum class Kind { kPtx, kCubin, kUnknown };
  Kind kind = Kind::kUnknown;
  uint32_t arch = 0;      // 80 for sm_80 / compute_80
  uint32_t cubin_sm = 0;  // from the embedded cubin's own ELF e_flags (uncompressed cubins only), 0 if unread
  bool compressed = false;
  // Arch-specific ("sm_90a": runs only on exactly that compute capability) and
  // family-specific ("sm_100f": same major, equal or higher minor) code, from
  // the entry flags (0x100000 and 0x200000 in nvcc 12.9/13 output).
  bool arch_specific = false;
  bool family_specific = false;
};

// Whether code of this entry runs on compute capability major.minor: a cubin on
// the same major with an equal or higher minor (exactly equal for "a"); PTX on
// any equal or newer device (same major for "f", exactly equal for "a"), by JIT.
bool fatbin_entry_runs_on(const FatbinEntry& entry, int major, int minor);

// Parses every container in a .nv_fatbin section, searching past padding and
// other bytes between containers. Returns false with error when nothing
// sensible could be read; entries read before a damaged one are kept.
bool parse_fatbin(ByteView section, std::vector<FatbinEntry>& entries, std::string& error);

// Appends the entries of every container at an 8-byte-aligned address (data[0]
// is at `address`; the sections' own start need not be aligned) found in other data
// (x86-64 large-model .ldata/.lrodata, where the linker puts the fatbins of
// objects built with -mcmodel=medium, as in nvidia-cufft's libcufft.so.12).
// A magic number whose header does not fit is skipped as ordinary data; false
// with error only for a damaged entry inside a well-formed container.
bool find_fatbin_containers(ByteView data, uint64_t address, std::vector<FatbinEntry>& entries, std::string& error);

// "sm_80", "sm_90a", "compute_100f".
std::string fatbin_entry_label(const FatbinEntry& entry);

}  // namespace af::doctor
