#include "doctor/elf.h"

#include <algorithm>
#include <map>

namespace af::doctor {
namespace {

// ELF64 layouts (System V gABI), read field by field through ByteView.
constexpr uint32_t kPtLoad = 1, kPtDynamic = 2, kPtInterp = 3;
constexpr uint32_t kShtDynsym = 11, kShtNobits = 8;
constexpr int64_t kDtNull = 0, kDtNeeded = 1, kDtHash = 4, kDtStrtab = 5, kDtSymtab = 6, kDtStrsz = 10, kDtSyment = 11,
                  kDtSoname = 14, kDtRpath = 15, kDtRunpath = 29, kDtGnuHash = 0x6ffffef5, kDtVersym = 0x6ffffff0,
                  kDtVerdef = 0x6ffffffc, kDtVerdefnum = 0x6ffffffd, kDtVerneed = 0x6ffffffe,
                  kDtVerneednum = 0x6fffffff;
constexpr uint64_t kSymbolSize = 24;
// Caps that keep hostile counts from turning into huge loops or allocations.
constexpr uint64_t kMaxSymbols = 4u << 20;
constexpr uint64_t kMaxVersionEntries = 1u << 16;
constexpr uint64_t kMaxDynamicEntries = 1u << 16;

struct Segment {
  uint64_t vaddr, filesz, offset;
};

std::vector<std::string> split_path_list(const std::string& s) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= s.size()) {
    size_t colon = s.find(':', start);
    if (colon == std::string::npos) colon = s.size();
    if (colon > start) parts.push_back(s.substr(start, colon - start));
    start = colon + 1;
  }
  return parts;
}

class ElfParser {
 public:
  ElfParser(ByteView image, ElfFile& out) : image_(image), out_(out) {}

  bool run(std::string& error) {
    uint8_t ident[16];
    for (int i = 0; i < 16; ++i) {
      if (!image_.read(i, ident[i])) return fail(error, "file too small for an ELF header");
    }
    if (ident[0] != 0x7f || ident[1] != 'E' || ident[2] != 'L' || ident[3] != 'F')
      return fail(error, "not an ELF file");
    if (ident[4] != 2) return fail(error, "only 64-bit ELF is supported");
    if (ident[5] != 1) return fail(error, "only little-endian ELF is supported");
    uint64_t phoff = 0, shoff = 0;
    uint16_t phentsize = 0, phnum = 0, shentsize = 0, shnum = 0, shstrndx = 0;
    if (!image_.read(16, out_.type) || !image_.read(18, out_.machine) || !image_.read(32, phoff) ||
        !image_.read(40, shoff) || !image_.read(48, out_.flags) || !image_.read(54, phentsize) ||
        !image_.read(56, phnum) || !image_.read(58, shentsize) || !image_.read(60, shnum) ||
        !image_.read(62, shstrndx)) {
      return fail(error, "truncated ELF header");
    }
    read_sections(shoff, shentsize, shnum, shstrndx);
    read_program_headers(phoff, phentsize, phnum);
    if (dynamic_offset_found_) read_dynamic();
    return true;
  }

 private:
  bool fail(std::string& error, const char* message) {
    error = message;
    return false;
  }
  void warn(const std::string& message) { out_.warnings.push_back(message); }
  void truncated(const std::string& what) {
    if (out_.truncation.size() < 16) {
      out_.truncation.push_back(what + " ends past the end of the file (" + std::to_string(image_.size()) + " bytes)");
    }
  }

  void read_sections(uint64_t shoff, uint16_t shentsize, uint16_t shnum, uint16_t shstrndx) {
    if (shnum == 0 || shoff == 0) return;
    if (shentsize < 64) return warn("section header entries smaller than 64 bytes; ignoring sections");
    uint64_t table_size;
    if (!checked_mul(shnum, shentsize, table_size) || !image_.contains(shoff, table_size)) {
      return truncated("section header table (offset " + std::to_string(shoff) + ", " + std::to_string(table_size) +
                       " bytes)");
    }
    uint64_t names_offset = 0, names_size = 0;
    if (shstrndx < shnum) {
      uint64_t entry = shoff + uint64_t(shstrndx) * shentsize;
      image_.read(entry + 24, names_offset);
      image_.read(entry + 32, names_size);
    }
    ByteView names;
    bool have_names = image_.slice(names_offset, names_size, names);
    for (uint16_t i = 0; i < shnum; ++i) {
      uint64_t entry = shoff + uint64_t(i) * shentsize;
      uint32_t name_index = 0;
      ElfSection section;
      uint64_t entsize = 0;
      image_.read(entry + 0, name_index);
      image_.read(entry + 4, section.type);
      image_.read(entry + 16, section.address);
      image_.read(entry + 24, section.offset);
      image_.read(entry + 32, section.size);
      image_.read(entry + 56, entsize);
      if (have_names) names.c_string(name_index, section.name);
      if (section.type == kShtDynsym && entsize == kSymbolSize) dynsym_section_count_ = section.size / kSymbolSize;
      if (section.type != kShtNobits && section.type != 0 && !image_.contains(section.offset, section.size)) {
        truncated("section " + (section.name.empty() ? "#" + std::to_string(i) : section.name) + " (offset " +
                  std::to_string(section.offset) + ", " + std::to_string(section.size) + " bytes)");
      }
      out_.sections.push_back(section);
    }
  }

  void read_program_headers(uint64_t phoff, uint16_t phentsize, uint16_t phnum) {
    if (phnum == 0) return;
    if (phentsize < 56) return warn("program header entries smaller than 56 bytes");
    uint64_t table_size;
    if (!checked_mul(phnum, phentsize, table_size) || !image_.contains(phoff, table_size)) {
      return truncated("program header table (offset " + std::to_string(phoff) + ", " + std::to_string(table_size) +
                       " bytes)");
    }
    for (uint16_t i = 0; i < phnum; ++i) {
      uint64_t entry = phoff + uint64_t(i) * phentsize;
      uint32_t type = 0;
      Segment segment{};
      image_.read(entry, type);
      image_.read(entry + 8, segment.offset);
      image_.read(entry + 16, segment.vaddr);
      image_.read(entry + 32, segment.filesz);
      if (type == kPtLoad) loads_.push_back(segment);
      if (type == kPtInterp) out_.has_interpreter = true;
      if ((type == kPtLoad || type == kPtDynamic) && !image_.contains(segment.offset, segment.filesz)) {
        truncated(std::string(type == kPtLoad ? "PT_LOAD" : "PT_DYNAMIC") + " segment " + std::to_string(i) +
                  " (offset " + std::to_string(segment.offset) + ", " + std::to_string(segment.filesz) + " bytes)");
      }
      if (type == kPtDynamic && !dynamic_offset_found_) {
        dynamic_ = segment;
        dynamic_offset_found_ = true;
      }
    }
  }

  // File offset of a virtual address through the PT_LOAD segments.
  bool address_to_offset(uint64_t address, uint64_t& offset) const {
    for (const Segment& s : loads_) {
      uint64_t end;
      if (!checked_add(s.vaddr, s.filesz, end)) continue;
      if (address >= s.vaddr && address < end) {
        offset = s.offset + (address - s.vaddr);
        return offset >= s.offset && offset < image_.size();
      }
    }
    return false;
  }

  void read_dynamic() {
    ByteView dynamic;
    if (!image_.slice(dynamic_.offset, dynamic_.filesz, dynamic)) return warn("PT_DYNAMIC outside the file");
    std::map<int64_t, uint64_t> single;
    std::vector<uint64_t> needed_offsets;
    uint64_t rpath = ~0ull, runpath = ~0ull, soname = ~0ull;
    uint64_t count = std::min<uint64_t>(dynamic.size() / 16, kMaxDynamicEntries);
    for (uint64_t i = 0; i < count; ++i) {
      int64_t tag = 0;
      uint64_t value = 0;
      dynamic.read(i * 16, tag);
      dynamic.read(i * 16 + 8, value);
      if (tag == kDtNull) break;
      if (tag == kDtNeeded)
        needed_offsets.push_back(value);
      else if (tag == kDtRpath)
        rpath = value;
      else if (tag == kDtRunpath)
        runpath = value;
      else if (tag == kDtSoname)
        soname = value;
      else
        single.emplace(tag, value);
    }
    uint64_t strtab_offset = 0;
    if (!single.count(kDtStrtab) || !address_to_offset(single[kDtStrtab], strtab_offset)) {
      return warn("no usable DT_STRTAB");
    }
    uint64_t strsz = single.count(kDtStrsz) ? single[kDtStrsz] : 0;
    if (!image_.slice(strtab_offset, std::min<uint64_t>(strsz, image_.size() - strtab_offset), strings_)) {
      return warn("DT_STRTAB outside the file");
    }
    std::string text;
    for (uint64_t offset : needed_offsets) {
      if (strings_.c_string(offset, text))
        out_.needed.push_back(text);
      else
        warn("DT_NEEDED name outside the string table");
    }
    if (soname != ~0ull) strings_.c_string(soname, out_.soname);
    if (rpath != ~0ull && strings_.c_string(rpath, text)) out_.rpath = split_path_list(text);
    if (runpath != ~0ull && strings_.c_string(runpath, text)) out_.runpath = split_path_list(text);

    read_version_definitions(single);
    read_version_needs(single);
    read_symbols(single);
  }

  // Verdef chain: index -> version name (the VER_FLG_BASE entry names the file itself).
  void read_version_definitions(std::map<int64_t, uint64_t>& single) {
    uint64_t offset;
    if (!single.count(kDtVerdef) || !address_to_offset(single[kDtVerdef], offset)) return;
    uint64_t count = std::min<uint64_t>(single.count(kDtVerdefnum) ? single[kDtVerdefnum] : 0, kMaxVersionEntries);
    for (uint64_t i = 0; i < count; ++i) {
      uint16_t flags = 0, index = 0, aux_count = 0;
      uint32_t aux = 0, next = 0, name = 0;
      if (!image_.read(offset + 2, flags) || !image_.read(offset + 4, index) || !image_.read(offset + 6, aux_count) ||
          !image_.read(offset + 12, aux) || !image_.read(offset + 16, next)) {
        return warn("truncated version definition");
      }
      uint64_t aux_offset;
      std::string version;
      if (aux_count > 0 && checked_add(offset, aux, aux_offset) && image_.read(aux_offset, name) &&
          strings_.c_string(name, version)) {
        version_by_index_[index & 0x7fff] = version;
        if (!(flags & 1)) out_.version_definitions.push_back(version);
      }
      if (next == 0) break;
      if (!checked_add(offset, next, offset)) return warn("version definition chain overflows");
    }
  }

  void read_version_needs(std::map<int64_t, uint64_t>& single) {
    uint64_t offset;
    if (!single.count(kDtVerneed) || !address_to_offset(single[kDtVerneed], offset)) return;
    uint64_t count = std::min<uint64_t>(single.count(kDtVerneednum) ? single[kDtVerneednum] : 0, kMaxVersionEntries);
    uint64_t total_aux = 0;
    for (uint64_t i = 0; i < count; ++i) {
      uint16_t aux_count = 0;
      uint32_t file = 0, aux = 0, next = 0;
      if (!image_.read(offset + 2, aux_count) || !image_.read(offset + 4, file) || !image_.read(offset + 8, aux) ||
          !image_.read(offset + 12, next)) {
        return warn("truncated version need");
      }
      ElfVersionNeed need;
      strings_.c_string(file, need.file);
      uint64_t aux_offset;
      if (!checked_add(offset, aux, aux_offset)) return warn("version need chain overflows");
      for (uint16_t a = 0; a < aux_count && total_aux < kMaxVersionEntries; ++a, ++total_aux) {
        uint16_t other = 0;
        uint32_t name = 0, aux_next = 0;
        if (!image_.read(aux_offset + 6, other) || !image_.read(aux_offset + 8, name) ||
            !image_.read(aux_offset + 12, aux_next)) {
          warn("truncated version need entry");
          break;
        }
        std::string version;
        strings_.c_string(name, version);
        need.versions.push_back(version);
        version_by_index_[other & 0x7fff] = version;
        file_by_index_[other & 0x7fff] = need.file;
        if (aux_next == 0) break;
        if (!checked_add(aux_offset, aux_next, aux_offset)) break;
      }
      out_.version_needs.push_back(need);
      if (next == 0) break;
      if (!checked_add(offset, next, offset)) return warn("version need chain overflows");
    }
  }

  // Number of dynamic symbols: the .dynsym section when present, else DT_HASH's
  // nchain, else one past the highest index reachable through DT_GNU_HASH.
  uint64_t symbol_count(std::map<int64_t, uint64_t>& single) {
    if (dynsym_section_count_) return dynsym_section_count_;
    uint64_t offset;
    if (single.count(kDtHash) && address_to_offset(single[kDtHash], offset)) {
      uint32_t nchain = 0;
      if (image_.read(offset + 4, nchain)) return nchain;
    }
    if (single.count(kDtGnuHash) && address_to_offset(single[kDtGnuHash], offset)) {
      uint32_t nbuckets = 0, symoffset = 0, bloom_size = 0;
      if (!image_.read(offset, nbuckets) || !image_.read(offset + 4, symoffset) ||
          !image_.read(offset + 8, bloom_size)) {
        return 0;
      }
      uint64_t buckets = offset + 16 + uint64_t(bloom_size) * 8;
      uint64_t chains = buckets + uint64_t(nbuckets) * 4;
      uint32_t highest = 0;
      for (uint32_t b = 0; b < nbuckets && b < kMaxSymbols; ++b) {
        uint32_t start = 0;
        if (!image_.read(buckets + uint64_t(b) * 4, start)) return 0;
        highest = std::max(highest, start);
      }
      if (highest < symoffset) return symoffset;
      for (uint64_t index = highest; index < kMaxSymbols; ++index) {
        uint32_t hash = 0;
        if (!image_.read(chains + (index - symoffset) * 4, hash)) return index;
        if (hash & 1) return index + 1;
      }
    }
    return 0;
  }

  void read_symbols(std::map<int64_t, uint64_t>& single) {
    uint64_t symtab;
    if (!single.count(kDtSymtab) || !address_to_offset(single[kDtSymtab], symtab)) return;
    uint64_t count = std::min(symbol_count(single), kMaxSymbols);
    uint64_t versym = 0;
    bool have_versym = single.count(kDtVersym) && address_to_offset(single[kDtVersym], versym);
    for (uint64_t i = 1; i < count; ++i) {  // entry 0 is the reserved null symbol
      uint64_t entry = symtab + i * kSymbolSize;
      uint32_t name = 0;
      uint8_t info = 0;
      uint16_t shndx = 0;
      if (!image_.read(entry, name) || !image_.read(entry + 4, info) || !image_.read(entry + 6, shndx)) {
        warn("dynamic symbol table runs past the end of the file");
        break;
      }
      ElfSymbol symbol;
      if (!strings_.c_string(name, symbol.name) || symbol.name.empty()) continue;
      symbol.defined = shndx != 0;
      symbol.weak = (info >> 4) == 2;
      uint16_t version_index = 0;
      if (have_versym && image_.read(versym + i * 2, version_index)) {
        symbol.hidden_version = (version_index & 0x8000) != 0;
        auto found = version_by_index_.find(version_index & 0x7fff);
        if ((version_index & 0x7fff) > 1 && found != version_by_index_.end()) {
          symbol.version = found->second;
          auto file = file_by_index_.find(version_index & 0x7fff);
          if (file != file_by_index_.end()) symbol.version_file = file->second;
        }
      }
      out_.dynamic_symbols.push_back(std::move(symbol));
    }
  }

  ByteView image_;
  ElfFile& out_;
  std::vector<Segment> loads_;
  Segment dynamic_{};
  bool dynamic_offset_found_ = false;
  ByteView strings_;
  uint64_t dynsym_section_count_ = 0;
  std::map<uint32_t, std::string> version_by_index_;
  std::map<uint32_t, std::string> file_by_index_;
};

}  // namespace

const ElfSection* ElfFile::find_section(const std::string& name) const {
  for (const ElfSection& s : sections) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

bool parse_elf(ByteView image, ElfFile& out, std::string& error) {
  out = ElfFile();
  return ElfParser(image, out).run(error);
}

uint32_t cubin_sm_from_flags(uint32_t e_flags) {
  // CUDA >= 12 cubins keep the SM in bits 8..15 (0x5005a04 -> 0x5a = 90); older ones in bits 0..7.
  uint32_t high = (e_flags >> 8) & 0xff;
  if (high >= 20) return high;
  uint32_t low = e_flags & 0xff;
  return low >= 20 ? low : 0;
}

}  // namespace af::doctor
