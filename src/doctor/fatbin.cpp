#include "doctor/fatbin.h"

#include "doctor/elf.h"

namespace af::doctor {
namespace {

constexpr uint32_t kContainerMagic = 0xBA55ED50;
constexpr uint64_t kContainerHeaderSize = 16;
constexpr uint64_t kEntryHeaderMinSize = 64;
constexpr uint16_t kKindPtx = 1, kKindCubin = 2;
// Compression bits seen in entry flags: 0x2000 (CUDA 11/12, LZ4) and 0x8000 (CUDA 13, ZSTD).
constexpr uint64_t kCompressedFlags = 0x2000 | 0x8000;
constexpr uint64_t kArchSpecificFlag = 0x100000, kFamilySpecificFlag = 0x200000;
constexpr size_t kMaxEntries = 1 << 16;

uint32_t sm_of_embedded_cubin(ByteView payload) {
  uint8_t magic[4] = {};
  uint16_t machine = 0;
  uint32_t flags = 0;
  for (int i = 0; i < 4; ++i) payload.read(i, magic[i]);
  if (magic[0] != 0x7f || magic[1] != 'E' || magic[2] != 'L' || magic[3] != 'F') return 0;
  uint8_t elf_class = 0;
  payload.read(4, elf_class);
  // e_machine at 18; e_flags at 48 (ELF64) or 36 (ELF32).
  if (!payload.read(18, machine) || machine != kElfMachineCuda) return 0;
  if (!payload.read(elf_class == 2 ? 48 : 36, flags)) return 0;
  return cubin_sm_from_flags(flags);
}

}  // namespace

namespace {

// Offset of the next container magic at or after `from` whose address is 8-byte
// aligned (data[0] is at `address`), or data.size() when none.
uint64_t next_container(ByteView data, uint64_t address, uint64_t from) {
  uint64_t skew = (8 - address % 8) % 8;  // first offset whose address is aligned
  uint64_t first = from <= skew ? skew : skew + ((from - skew + 7) & ~uint64_t(7));
  for (uint64_t at = first; at >= from && at + 4 <= data.size(); at += 8) {
    uint32_t magic = 0;
    data.read(at, magic);
    if (magic == kContainerMagic) return at;
  }
  return data.size();
}

// Reads containers from data. In a .nv_fatbin section (scanning == false) a
// damaged container is an error; in other data (scanning == true) a magic
// number followed by a header that does not fit is ordinary data, skipped.
// Either way the whole range is searched: containers of separately compiled
// objects follow each other with padding or unrelated data in between.
bool read_containers(ByteView data, uint64_t address, bool scanning, std::vector<FatbinEntry>& entries,
                     std::string& error) {
  bool any_container = false;
  for (uint64_t container = next_container(data, address, 0); container + kContainerHeaderSize <= data.size();) {
    uint16_t version = 0, header_size = 0;
    uint64_t payload_size = 0;
    data.read(container + 4, version);
    data.read(container + 6, header_size);
    data.read(container + 8, payload_size);
    uint64_t entries_begin, entries_end;
    if (header_size < kContainerHeaderSize || (scanning && (version != 1 || header_size != kContainerHeaderSize)) ||
        !checked_add(container, header_size, entries_begin) || !checked_add(entries_begin, payload_size, entries_end) ||
        entries_end > data.size()) {
      if (scanning) {
        container = next_container(data, address, container + 8);
        continue;
      }
      error = "fatbin container at offset " + std::to_string(container) + " runs past the section";
      return any_container && !entries.empty();
    }
    any_container = true;
    uint64_t entry = entries_begin;
    while (entry + kEntryHeaderMinSize <= entries_end) {
      if (entries.size() >= kMaxEntries) return true;
      uint16_t kind = 0;
      uint32_t entry_header_size = 0, arch = 0;
      uint64_t entry_payload_size = 0, flags = 0;
      data.read(entry, kind);
      data.read(entry + 4, entry_header_size);
      data.read(entry + 8, entry_payload_size);
      data.read(entry + 28, arch);
      data.read(entry + 40, flags);
      uint64_t payload_begin, next;
      if (entry_header_size < kEntryHeaderMinSize || !checked_add(entry, entry_header_size, payload_begin) ||
          !checked_add(payload_begin, entry_payload_size, next) || next > entries_end) {
        error = "fatbin entry at offset " + std::to_string(entry) + " runs past its container";
        return !entries.empty();
      }
      FatbinEntry parsed;
      parsed.kind = kind == kKindPtx     ? FatbinEntry::Kind::kPtx
                    : kind == kKindCubin ? FatbinEntry::Kind::kCubin
                                         : FatbinEntry::Kind::kUnknown;
      parsed.arch = arch;
      parsed.compressed = (flags & kCompressedFlags) != 0;
      parsed.arch_specific = (flags & kArchSpecificFlag) != 0;
      parsed.family_specific = (flags & kFamilySpecificFlag) != 0;
      ByteView payload;
      if (parsed.kind == FatbinEntry::Kind::kCubin && !parsed.compressed &&
          data.slice(payload_begin, entry_payload_size, payload)) {
        parsed.cubin_sm = sm_of_embedded_cubin(payload);
      }
      entries.push_back(parsed);
      entry = next;
    }
    container = next_container(data, address, entries_end);
  }
  if (!any_container && !scanning) {
    error = "no fatbin container (magic 0xBA55ED50) in the section";
    return false;
  }
  return true;
}

}  // namespace

bool parse_fatbin(ByteView section, std::vector<FatbinEntry>& entries, std::string& error) {
  entries.clear();
  return read_containers(section, 0, false, entries, error);
}

bool find_fatbin_containers(ByteView data, uint64_t address, std::vector<FatbinEntry>& entries, std::string& error) {
  return read_containers(data, address, true, entries, error);
}

std::string fatbin_entry_label(const FatbinEntry& entry) {
  std::string suffix = entry.arch_specific ? "a" : entry.family_specific ? "f" : "";
  switch (entry.kind) {
    case FatbinEntry::Kind::kPtx: return "compute_" + std::to_string(entry.arch) + suffix;
    case FatbinEntry::Kind::kCubin: return "sm_" + std::to_string(entry.arch) + suffix;
    default: return "unknown_" + std::to_string(entry.arch) + suffix;
  }
}

bool fatbin_entry_runs_on(const FatbinEntry& entry, int major, int minor) {
  if (major < 0 || minor < 0) return false;
  uint32_t cc = uint32_t(major * 10 + minor);
  if (entry.arch_specific) return entry.kind != FatbinEntry::Kind::kUnknown && entry.arch == cc;
  bool same_major_newer = entry.arch / 10 == uint32_t(major) && entry.arch % 10 <= uint32_t(minor);
  if (entry.kind == FatbinEntry::Kind::kCubin || entry.family_specific) {
    return entry.kind != FatbinEntry::Kind::kUnknown && same_major_newer;
  }
  return entry.kind == FatbinEntry::Kind::kPtx && entry.arch <= cc;
}

}  // namespace af::doctor
