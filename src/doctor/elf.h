// ELF64 reader for the doctor: what the dynamic loader will look at (PT_DYNAMIC:
// DT_NEEDED, RPATH/RUNPATH, SONAME, dynamic symbols with their versions) plus
// the section headers (for .nv_fatbin). Tolerates stripped section headers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "doctor/bytes.h"

namespace af::doctor {

constexpr uint16_t kElfMachineX86_64 = 62;
constexpr uint16_t kElfMachineAarch64 = 183;
constexpr uint16_t kElfMachineCuda = 190;
constexpr uint32_t kSectionNoBits = 8;  // SHT_NOBITS: occupies no bytes in the file

struct ElfSection {
  std::string name;
  uint32_t type = 0;
  uint64_t address = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
};

struct ElfSymbol {
  std::string name;
  std::string version;       // "" when unversioned or the base version
  std::string version_file;  // for an undefined symbol: the library its version comes from (vernaux)
  bool defined = false;      // st_shndx != SHN_UNDEF
  bool weak = false;
  bool hidden_version = false;  // "sym@VER" rather than "sym@@VER": not used for unversioned references
};

struct ElfVersionNeed {
  std::string file;                   // e.g. "libstdc++.so.6"
  std::vector<std::string> versions;  // e.g. {"GLIBCXX_3.4.32", "CXXABI_1.3"}
};

struct ElfFile {
  uint16_t machine = 0;
  uint32_t flags = 0;            // e_flags (for CUDA cubins: the SM)
  uint16_t type = 0;             // e_type: 2 ET_EXEC, 3 ET_DYN
  bool has_interpreter = false;  // a PT_INTERP segment: a program (or a PIE that is also a library)
  std::vector<ElfSection> sections;
  std::vector<std::string> needed;
  std::string soname;
  std::vector<std::string> rpath;    // DT_RPATH split on ':'
  std::vector<std::string> runpath;  // DT_RUNPATH split on ':'
  std::vector<ElfSymbol> dynamic_symbols;
  std::vector<ElfVersionNeed> version_needs;
  std::vector<std::string> version_definitions;  // excluding the base (file name) definition
  std::vector<std::string> warnings;             // inconsistencies tolerated while reading
  // Segments, sections or header tables that end past the end of the file (a
  // truncated or damaged copy): the loader fails on it, or the process dies with
  // SIGBUS when it touches the missing pages.
  std::vector<std::string> truncation;

  const ElfSection* find_section(const std::string& name) const;
};

// Parses an ELF64 little-endian image. Returns false with error set when the
// buffer is not a usable ELF; a partially damaged file yields what could be
// read plus warnings.
bool parse_elf(ByteView image, ElfFile& out, std::string& error);

// The SM number a CUDA cubin (e_machine == EM_CUDA) was compiled for, from e_flags; 0 if unknown.
uint32_t cubin_sm_from_flags(uint32_t e_flags);

}  // namespace af::doctor
