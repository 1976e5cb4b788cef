// Doctor readers (ELF, fatbin, zip/inflate/SHA-256, ld.so.cache, tags): known
// answers, and robustness on damaged input (every prefix and random byte
// flips must parse or fail cleanly). Also writes the fuzzers' seed corpus.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "doctor/analysis.h"
#include "doctor/elf.h"
#include "doctor/fatbin.h"
#include "doctor/ld_cache.h"
#include "doctor/tags.h"
#include "doctor/zip.h"

using namespace af::doctor;

namespace {

// A zip made by Python's zipfile: demo/stored.txt (stored), demo/words.txt
// (deflate, dynamic Huffman: see words_text()), demo/short.txt (deflate, fixed Huffman).
const std::vector<uint8_t> kTestZip = {
    0x50, 0x4b, 0x03, 0x04, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x21, 0x00, 0xea, 0x59, 0x06, 0x6c, 0x0d,
    0x00, 0x00, 0x00, 0x0d, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x00, 0x64, 0x65, 0x6d, 0x6f, 0x2f, 0x73, 0x74, 0x6f,
    0x72, 0x65, 0x64, 0x2e, 0x74, 0x78, 0x74, 0x73, 0x74, 0x6f, 0x72, 0x65, 0x64, 0x20, 0x62, 0x79, 0x74, 0x65, 0x73,
    0x0a, 0x50, 0x4b, 0x03, 0x04, 0x14, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x21, 0x00, 0xaa, 0x35, 0x01, 0xe0,
    0xa3, 0x01, 0x00, 0x00, 0x42, 0x07, 0x00, 0x00, 0x0e, 0x00, 0x00, 0x00, 0x64, 0x65, 0x6d, 0x6f, 0x2f, 0x77, 0x6f,
    0x72, 0x64, 0x73, 0x2e, 0x74, 0x78, 0x74, 0x6d, 0x55, 0x51, 0x76, 0x83, 0x30, 0x0c, 0xbb, 0x0a, 0x57, 0x83, 0x90,
    0x15, 0xde, 0x28, 0xec, 0x51, 0xd8, 0x5e, 0x6f, 0x3f, 0x12, 0x29, 0x8d, 0x04, 0x7c, 0xb4, 0x69, 0x62, 0x5b, 0x96,
    0x65, 0x27, 0x0d, 0x7b, 0x37, 0xce, 0xcd, 0xeb, 0xfd, 0xec, 0x96, 0xa9, 0xd9, 0xda, 0x47, 0xb3, 0x2d, 0x6b, 0x18,
    0xf8, 0xfd, 0xd5, 0x6e, 0xc9, 0x3a, 0x2d, 0x6d, 0x1f, 0xd7, 0x66, 0x8d, 0x61, 0x59, 0xfb, 0xe2, 0xfb, 0x37, 0xc4,
    0x38, 0x35, 0x61, 0xef, 0xdb, 0x62, 0xe7, 0x12, 0x32, 0xa2, 0x3b, 0xb7, 0xdd, 0xc8, 0x80, 0xef, 0xb8, 0xce, 0x11,
    0x07, 0xf4, 0xa7, 0x4b, 0x46, 0x7a, 0x2e, 0xfd, 0x3e, 0xc5, 0xe6, 0x31, 0x8d, 0x5d, 0xf8, 0x64, 0x48, 0x70, 0x0c,
    0x4b, 0x04, 0x61, 0x64, 0x14, 0x03, 0x2a, 0x71, 0xb8, 0x67, 0x30, 0xb2, 0x07, 0xcc, 0x6f, 0x5c, 0x5f, 0xe3, 0x32,
    0xdf, 0x1f, 0x26, 0x36, 0x39, 0x04, 0xc7, 0x09, 0x8d, 0xe4, 0x92, 0x05, 0x09, 0x7f, 0xde, 0xdb, 0x70, 0xb8, 0x22,
    0x0b, 0x37, 0x70, 0xc7, 0x37, 0x8f, 0xa4, 0x3e, 0x72, 0xe3, 0x62, 0xe5, 0x03, 0x92, 0x39, 0x60, 0x51, 0x19, 0x2e,
    0x72, 0xd1, 0x53, 0x75, 0x01, 0xe7, 0x54, 0x8b, 0xf1, 0x63, 0x00, 0x2c, 0x57, 0x95, 0xe1, 0x4b, 0x11, 0x6c, 0x83,
    0xc2, 0xa4, 0x6c, 0x46, 0xc8, 0x68, 0x5c, 0xe1, 0x7c, 0x29, 0x4d, 0x52, 0x24, 0x2e, 0x45, 0x69, 0xd8, 0xca, 0xce,
    0x7a, 0x5b, 0x5a, 0x69, 0x1e, 0x1c, 0x23, 0x30, 0x4d, 0xf9, 0xcb, 0xa7, 0xf4, 0xb9, 0xd6, 0x61, 0x73, 0x51, 0x15,
    0x94, 0x8a, 0xa4, 0xaf, 0x59, 0x66, 0xfa, 0xf2, 0x88, 0x02, 0x02, 0x92, 0xa2, 0x78, 0x0b, 0x61, 0xe2, 0xc6, 0x04,
    0xb5, 0xb6, 0x8a, 0x62, 0x32, 0x0d, 0xae, 0x11, 0xf1, 0x8b, 0xf6, 0x87, 0xab, 0x69, 0x61, 0xf3, 0xf1, 0x69, 0xe9,
    0x41, 0xd9, 0xd5, 0x31, 0x0e, 0x15, 0xc4, 0x06, 0xca, 0xba, 0x01, 0x7b, 0xbe, 0x2d, 0xc7, 0x87, 0xd9, 0xeb, 0xac,
    0x58, 0x9d, 0x94, 0x3e, 0xa7, 0x35, 0x6d, 0xe8, 0x25, 0x57, 0xb2, 0xa6, 0xae, 0xbf, 0xfc, 0x01, 0xe0, 0xf2, 0xc1,
    0x94, 0xe2, 0xc1, 0xde, 0xca, 0xcf, 0x39, 0xad, 0xf5, 0x8e, 0xa6, 0xd7, 0x9b, 0xd4, 0x7c, 0x2e, 0x50, 0x34, 0xd1,
    0x4e, 0xb3, 0x64, 0xea, 0x18, 0x7a, 0x8a, 0x27, 0xaa, 0x8c, 0xba, 0x75, 0xf8, 0x86, 0x87, 0xf4, 0x19, 0x69, 0xa9,
    0x8f, 0xd5, 0x2a, 0xa3, 0x77, 0x6a, 0x9e, 0x8c, 0x48, 0x7d, 0xdd, 0xac, 0x11, 0xa6, 0x93, 0xb1, 0x21, 0xa2, 0x3e,
    0xd9, 0x94, 0xe3, 0x6e, 0x70, 0xa5, 0xbc, 0xc2, 0xa1, 0xde, 0x2b, 0xa9, 0xdb, 0x21, 0x12, 0xa9, 0xd3, 0xe3, 0x69,
    0xb4, 0x58, 0x26, 0x83, 0xb4, 0x99, 0xb4, 0xf8, 0xc8, 0xd2, 0x4f, 0x5f, 0x5e, 0x2d, 0xcc, 0x5f, 0x86, 0xba, 0xbb,
    0xfc, 0xcb, 0x5c, 0x28, 0x55, 0x0f, 0x93, 0xd0, 0x6f, 0xab, 0x73, 0x2e, 0xa3, 0xcb, 0xad, 0x0e, 0xbc, 0x78, 0xd8,
    0xec, 0x53, 0x78, 0xcc, 0x10, 0xb0, 0xff, 0x01, 0x50, 0x4b, 0x03, 0x04, 0x14, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00,
    0x00, 0x21, 0x00, 0x30, 0x26, 0x74, 0x7a, 0x07, 0x00, 0x00, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x00, 0x00,
    0x64, 0x65, 0x6d, 0x6f, 0x2f, 0x73, 0x68, 0x6f, 0x72, 0x74, 0x2e, 0x74, 0x78, 0x74, 0xcb, 0xc8, 0x54, 0xc8, 0x80,
    0x22, 0x00, 0x50, 0x4b, 0x01, 0x02, 0x14, 0x03, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x21, 0x00, 0xea,
    0x59, 0x06, 0x6c, 0x0d, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x80, 0x01, 0x00, 0x00, 0x00, 0x00, 0x64, 0x65, 0x6d, 0x6f, 0x2f, 0x73, 0x74, 0x6f, 0x72,
    0x65, 0x64, 0x2e, 0x74, 0x78, 0x74, 0x50, 0x4b, 0x01, 0x02, 0x14, 0x03, 0x14, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00,
    0x00, 0x21, 0x00, 0xaa, 0x35, 0x01, 0xe0, 0xa3, 0x01, 0x00, 0x00, 0x42, 0x07, 0x00, 0x00, 0x0e, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x01, 0x3a, 0x00, 0x00, 0x00, 0x64, 0x65, 0x6d, 0x6f, 0x2f,
    0x77, 0x6f, 0x72, 0x64, 0x73, 0x2e, 0x74, 0x78, 0x74, 0x50, 0x4b, 0x01, 0x02, 0x14, 0x03, 0x14, 0x00, 0x00, 0x00,
    0x08, 0x00, 0x00, 0x00, 0x21, 0x00, 0x30, 0x26, 0x74, 0x7a, 0x07, 0x00, 0x00, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x0e,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x01, 0x09, 0x02, 0x00, 0x00, 0x64, 0x65,
    0x6d, 0x6f, 0x2f, 0x73, 0x68, 0x6f, 0x72, 0x74, 0x2e, 0x74, 0x78, 0x74, 0x50, 0x4b, 0x05, 0x06, 0x00, 0x00, 0x00,
    0x00, 0x03, 0x00, 0x03, 0x00, 0xb5, 0x00, 0x00, 0x00, 0x3c, 0x02, 0x00, 0x00, 0x00, 0x00};

// The 300 pseudo-random words stored in demo/words.txt (same generator as the Python that made kTestZip).
std::string words_text() {
  static const char* const kWords[] = {"kernel", "cubin", "wheel", "record", "tag",    "symbol", "version", "loader",
                                       "torch",  "cuda",  "glibc", "abi",    "python", "module", "fatbin"};
  uint64_t x = 12345;
  std::string out;
  for (int i = 0; i < 300; ++i) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    out += (i ? " " : "") + std::string(kWords[x % 15]);
  }
  return out;
}

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void put_u16(std::vector<uint8_t>& b, size_t at, uint16_t v) { std::memcpy(&b[at], &v, 2); }
void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) { std::memcpy(&b[at], &v, 4); }
void put_u64(std::vector<uint8_t>& b, size_t at, uint64_t v) { std::memcpy(&b[at], &v, 8); }

// A .nv_fatbin section with one container: a cubin entry for sm_80 (carrying a
// minimal EM_CUDA ELF header whose e_flags say sm_80) and a PTX entry for compute_90.
std::vector<uint8_t> synthetic_fatbin() {
  const size_t cubin_payload = 64, ptx_payload = 16;
  const size_t entries = (64 + cubin_payload) + (80 + ptx_payload);
  std::vector<uint8_t> b(16 + entries, 0);
  put_u32(b, 0, 0xBA55ED50);
  put_u16(b, 4, 1);
  put_u16(b, 6, 16);
  put_u64(b, 8, entries);
  size_t e = 16;
  put_u16(b, e, 2);  // cubin
  put_u32(b, e + 4, 64);
  put_u64(b, e + 8, cubin_payload);
  put_u32(b, e + 28, 80);
  put_u64(b, e + 40, 0x11);
  size_t elf = e + 64;
  b[elf] = 0x7f, b[elf + 1] = 'E', b[elf + 2] = 'L', b[elf + 3] = 'F', b[elf + 4] = 2;
  put_u16(b, elf + 18, kElfMachineCuda);
  put_u32(b, elf + 48, 0x5005004);
  e = elf + cubin_payload;
  put_u16(b, e, 1);  // PTX, compressed, with a longer header as CUDA 13 writes
  put_u32(b, e + 4, 80);
  put_u64(b, e + 8, ptx_payload);
  put_u32(b, e + 28, 90);
  put_u64(b, e + 40, 0x8011);
  return b;
}

// Every prefix, then random single-byte corruptions: the parser must return
// (true or false) without crashing; under the fuzz/ASan builds this is also
// checked for out-of-bounds reads.
template <typename Parse>
void survives_damage(const std::vector<uint8_t>& good, Parse parse, int flips) {
  for (size_t n = 0; n < good.size(); n += 1 + good.size() / 512) {
    std::vector<uint8_t> prefix(good.begin(), good.begin() + n);
    parse(ByteView(prefix));
  }
  std::random_device device;
  unsigned seed = device();
  std::mt19937 random(seed);
  SCOPED_TRACE("random seed " + std::to_string(seed));
  for (int i = 0; i < flips; ++i) {
    std::vector<uint8_t> damaged = good;
    for (int k = 0; k < 4; ++k) damaged[random() % damaged.size()] = uint8_t(random());
    parse(ByteView(damaged));
  }
}

}  // namespace

TEST(DoctorElf, ReadsDynamicSectionOfRealLibrary) {
  std::vector<uint8_t> image = read_all(AF_CLI_PATH);
  ASSERT_FALSE(image.empty());
  ElfFile elf;
  std::string error;
  ASSERT_TRUE(parse_elf(ByteView(image), elf, error)) << error;
  EXPECT_EQ(elf.machine, kElfMachineX86_64);
  EXPECT_NE(std::find(elf.needed.begin(), elf.needed.end(), "libc.so.6"), elf.needed.end());
  bool versioned_libc_reference = false;
  for (const ElfSymbol& s : elf.dynamic_symbols)
    versioned_libc_reference |= !s.defined && s.version.rfind("GLIBC_", 0) == 0;
  EXPECT_TRUE(versioned_libc_reference);
  ASSERT_FALSE(elf.version_needs.empty());
}

TEST(DoctorElf, ReadsVersionDefinitionsAndSoname) {
  std::vector<LdCacheEntry> cache;
  std::string error;
  MappedFile file;
  ASSERT_TRUE(file.open("/etc/ld.so.cache", error)) << error;
  ASSERT_TRUE(parse_ld_cache(file.view(), cache, error)) << error;
  std::string libc;
  for (const LdCacheEntry& e : cache) {
    if (e.name == "libc.so.6" && e.x86_64) libc = e.path;
  }
  ASSERT_FALSE(libc.empty()) << "libc.so.6 not in the loader cache";
  MappedFile libc_file;
  ElfFile elf;
  ASSERT_TRUE(libc_file.open(libc, error) && parse_elf(libc_file.view(), elf, error)) << error;
  EXPECT_EQ(elf.soname, "libc.so.6");
  EXPECT_NE(std::find(elf.version_definitions.begin(), elf.version_definitions.end(), "GLIBC_2.2.5"),
            elf.version_definitions.end());
  size_t defined = 0;
  for (const ElfSymbol& s : elf.dynamic_symbols) defined += s.defined;
  EXPECT_GT(defined, 1000u);
}

TEST(DoctorElf, ReadsSymbolsWithoutSectionHeaders) {
  // Stripped section headers: the symbol count must come from DT_GNU_HASH / DT_HASH, as the loader does it.
  std::vector<uint8_t> image = read_all("/lib/x86_64-linux-gnu/libstdc++.so.6");
  ASSERT_FALSE(image.empty());
  ElfFile with_sections, without_sections;
  std::string error;
  ASSERT_TRUE(parse_elf(ByteView(image), with_sections, error)) << error;
  put_u64(image, 40, 0);  // e_shoff
  put_u16(image, 60, 0);  // e_shnum
  ASSERT_TRUE(parse_elf(ByteView(image), without_sections, error)) << error;
  EXPECT_TRUE(without_sections.sections.empty());
  ASSERT_GT(with_sections.dynamic_symbols.size(), 1000u);
  EXPECT_EQ(without_sections.dynamic_symbols.size(), with_sections.dynamic_symbols.size());
  EXPECT_EQ(without_sections.version_definitions, with_sections.version_definitions);
  EXPECT_EQ(without_sections.soname, "libstdc++.so.6");
}

TEST(DoctorElf, SurvivesDamagedInput) {
  std::vector<uint8_t> image = read_all("/lib/x86_64-linux-gnu/libdl.so.2");
  ASSERT_FALSE(image.empty());
  survives_damage(
      image,
      [](ByteView v) {
        ElfFile e;
        std::string err;
        parse_elf(v, e, err);
      },
      2000);
}

TEST(DoctorFatbin, ListsCubinsAndPtx) {
  std::vector<uint8_t> fatbin = synthetic_fatbin();
  std::vector<FatbinEntry> entries;
  std::string error;
  ASSERT_TRUE(parse_fatbin(ByteView(fatbin), entries, error)) << error;
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(fatbin_entry_label(entries[0]), "sm_80");
  EXPECT_EQ(entries[0].cubin_sm, 80u);
  EXPECT_FALSE(entries[0].compressed);
  EXPECT_EQ(fatbin_entry_label(entries[1]), "compute_90");
  EXPECT_TRUE(entries[1].compressed);
  EXPECT_EQ(cubin_sm_from_flags(0x5005a04), 90u);
}

// Containers of separately compiled objects need not be adjacent: the old
// reader stopped at the first non-zero word after a container, and libcufft.so.12
// (nvidia-cufft 12.x for CUDA 13) keeps all but one container in .ldata, which
// starts at an address that is not 8-byte aligned. Every region must be seen.
TEST(DoctorFatbin, ReadsContainersAfterOtherBytes) {
  std::vector<uint8_t> one = synthetic_fatbin();
  std::vector<uint8_t> section = one;
  section.resize(section.size() + 8, 0xcc);  // not padding
  section.insert(section.end(), one.begin(), one.end());
  put_u32(section, one.size() + 8 + 28 + 16, 120);  // second container's cubin: sm_120
  std::vector<FatbinEntry> entries;
  std::string error;
  ASSERT_TRUE(parse_fatbin(ByteView(section), entries, error)) << error;
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(fatbin_entry_label(entries[2]), "sm_120");
}

TEST(DoctorFatbin, FindsContainersInLargeDataAtAlignedAddresses) {
  std::vector<uint8_t> one = synthetic_fatbin();
  const uint64_t address = 0x11d1e57;  // .ldata's address in libcufft.so.12: 1 byte short of 8-aligned
  std::vector<uint8_t> data(1 + 24, 0x11);
  put_u32(data, 1, 0xBA55ED50);  // a decoy magic whose header claims more bytes than there are
  put_u16(data, 1 + 4, 1);
  put_u16(data, 1 + 6, 16);
  put_u64(data, 1 + 8, uint64_t(1) << 40);
  data.insert(data.end(), one.begin(), one.end());  // at address 0x11d1e70
  data.push_back(0x22);
  std::vector<uint8_t> misaligned = one;  // at an odd address: not a container
  put_u32(misaligned, 28 + 16, 100);
  data.insert(data.end(), misaligned.begin(), misaligned.end());
  std::vector<FatbinEntry> entries;
  std::string error;
  ASSERT_TRUE(find_fatbin_containers(ByteView(data), address, entries, error)) << error;
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(fatbin_entry_label(entries[0]), "sm_80");
  EXPECT_EQ(fatbin_entry_label(entries[1]), "compute_90");
  entries.clear();
  ASSERT_TRUE(find_fatbin_containers(ByteView(data), address + 1, entries, error)) << error;
  EXPECT_TRUE(entries.empty());  // shifted by one byte, no container is aligned
}

TEST(DoctorFatbin, SurvivesDamagedInput) {
  survives_damage(
      synthetic_fatbin(),
      [](ByteView v) {
        std::vector<FatbinEntry> e;
        std::string err;
        parse_fatbin(v, e, err);
        find_fatbin_containers(v, 3, e, err);
      },
      5000);
}

TEST(DoctorZip, ExtractsStoredAndDeflatedMembers) {
  std::vector<ZipMember> members;
  std::string error;
  ASSERT_TRUE(parse_zip_directory(ByteView(kTestZip), members, error)) << error;
  ASSERT_EQ(members.size(), 3u);
  std::vector<uint8_t> out;
  ASSERT_TRUE(extract_zip_member(ByteView(kTestZip), members[0], out, error)) << error;
  EXPECT_EQ(std::string(out.begin(), out.end()), "stored bytes\n");
  ASSERT_TRUE(extract_zip_member(ByteView(kTestZip), members[1], out, error)) << error;
  EXPECT_EQ(std::string(out.begin(), out.end()), words_text());
  EXPECT_EQ(record_hash_of(ByteView(out)), "sha256=tzMH6qklYjmUIhiBX4KFoFATMoH6isIE-BPZTScrhvk");
  ASSERT_TRUE(extract_zip_member(ByteView(kTestZip), members[2], out, error)) << error;
  EXPECT_EQ(std::string(out.begin(), out.end()), "hi hi hi hi");
}

TEST(DoctorZip, Sha256KnownAnswers) {
  auto hex = [](const std::vector<uint8_t>& d) {
    std::string s;
    char b[3];
    for (uint8_t c : d) std::snprintf(b, 3, "%02x", c), s += b;
    return s;
  };
  std::string abc = "abc";
  EXPECT_EQ(hex(sha256_of(ByteView(reinterpret_cast<const uint8_t*>(abc.data()), abc.size()))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex(sha256_of(ByteView())), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(hex(sha256_of(ByteView(reinterpret_cast<const uint8_t*>(two_blocks.data()), two_blocks.size()))),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(DoctorZip, SurvivesDamagedInput) {
  survives_damage(
      kTestZip,
      [](ByteView v) {
        std::vector<ZipMember> members;
        std::string err;
        if (!parse_zip_directory(v, members, err)) return;
        std::vector<uint8_t> out;
        for (const ZipMember& m : members) extract_zip_member(v, m, out, err, 1 << 20);
      },
      5000);
}

TEST(DoctorTags, MatchesPackagingCountsForCPython311) {
  PythonFacts python;
  python.major = 3, python.minor = 11;
  python.glibc_version = "2.36";
  python.machine = "x86_64";
  std::vector<std::string> tags = supported_tags(python);
  // 36 platforms (manylinux_2_36..2_5, 3 legacy aliases, linux_x86_64): 36 * (1 + 10 + 1 + 13) + 14.
  EXPECT_EQ(tags.size(), 914u);
  EXPECT_EQ(tags.front(), "cp311-cp311-linux_x86_64");
  EXPECT_EQ(tags[1], "cp311-cp311-manylinux_2_36_x86_64");
  EXPECT_EQ(tags.back(), "py30-none-any");
  std::vector<std::string> old_order = supported_tags(python, false);
  EXPECT_EQ(old_order.front(), "cp311-cp311-manylinux_2_36_x86_64");
  EXPECT_EQ(old_order[35], "cp311-cp311-linux_x86_64");
}

TEST(DoctorTags, ParsesWheelNames) {
  WheelName name;
  std::string error;
  ASSERT_TRUE(parse_wheel_filename("x/flash_attn-2.8.3-1-cp311.cp312-cp311-linux_x86_64.whl", name, error)) << error;
  EXPECT_EQ(name.distribution, "flash_attn");
  EXPECT_EQ(name.build, "1");
  EXPECT_EQ(name.tags(), (std::vector<std::string>{"cp311-cp311-linux_x86_64", "cp312-cp311-linux_x86_64"}));
  EXPECT_FALSE(parse_wheel_filename("a-1-py3-none.whl", name, error));
  EXPECT_FALSE(parse_wheel_filename("a-1-py3--any.whl", name, error));
}

TEST(DoctorNames, DemanglesAndNeutralisesTheDualAbi) {
  std::string new_abi =
      demangle("_ZN3c105ErrorC2ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE");
  std::string old_abi = demangle("_ZN3c105ErrorC2ENS_14SourceLocationESs");
  EXPECT_NE(new_abi, old_abi);
  EXPECT_EQ(abi_neutral_key(new_abi), abi_neutral_key(old_abi));
  EXPECT_TRUE(in_torch_namespace(new_abi));
  EXPECT_TRUE(in_torch_namespace(demangle("_ZTVN3c105ErrorE")));
  EXPECT_FALSE(in_torch_namespace(demangle("_ZNSt6vectorIiSaIiEE9push_backERKi")));
  EXPECT_EQ(demangle("PyInit_flash_attn_2_cuda"), "");
}

// Seeds for the libFuzzer targets (tests/doctor/fuzz): written by ctest's
// doctor_fuzz_seed_corpus before the fuzz tests run.
TEST(DoctorFuzzCorpus, WriteSeeds) {
  std::string root = std::string(AF_BINARY_DIR) + "/doctor_fuzz_corpus";
  auto write = [&](const std::string& dir, const std::string& name, const std::vector<uint8_t>& bytes) {
    mkdir(root.c_str(), 0755);
    mkdir((root + "/" + dir).c_str(), 0755);
    std::ofstream out(root + "/" + dir + "/" + name, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    ASSERT_TRUE(out.good());
  };
  write("elf", "libdl.so.2", read_all("/lib/x86_64-linux-gnu/libdl.so.2"));
  write("fatbin", "synthetic", synthetic_fatbin());
  write("zip", "test.zip", kTestZip);
  // A real nvcc fatbin, when the doctor's fixture tests have built one.
  std::string fixture = std::string(AF_BINARY_DIR) + "/doctor_fixtures/fatbin/libfatbin_sm80_sm90_ptx.so";
  std::vector<uint8_t> image = read_all(fixture);
  ElfFile elf;
  std::string error;
  if (!image.empty() && parse_elf(ByteView(image), elf, error)) {
    write("elf", "libfatbin_sm80_sm90_ptx.so", image);
    const ElfSection* s = elf.find_section(".nv_fatbin");
    if (s && s->offset <= image.size() && s->size <= image.size() - s->offset) {
      write("fatbin", "nvcc_sm80_sm90_ptx",
            std::vector<uint8_t>(image.begin() + s->offset, image.begin() + s->offset + s->size));
    }
  }
}
