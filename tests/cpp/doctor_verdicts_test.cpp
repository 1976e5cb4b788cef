// Doctor verdict logic on the kinds of issue 14: truncated ELF files are errors;
// arch-specific cubins run only on their exact compute capability; hostile zips
// (overlapping members, zip bombs) are refused or stopped within a budget while
// zip64 archives read; Python imports in docstrings, comments, functions and of
// plain names are not missing modules; per-CUDA alternatives; METADATA pins;
// the headline finding's evidence prints under the headline.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "doctor/analysis.h"
#include "doctor/elf.h"
#include "doctor/fatbin.h"
#include "doctor/pyimports.h"
#include "doctor/report.h"
#include "doctor/zip.h"

using namespace af::doctor;

namespace {

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void put16(std::vector<uint8_t>& b, uint16_t v) { b.insert(b.end(), {uint8_t(v), uint8_t(v >> 8)}); }
void put32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(uint8_t(v >> (8 * i)));
}
void put64(std::vector<uint8_t>& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(uint8_t(v >> (8 * i)));
}

struct RawMember {
  std::string name;
  std::vector<uint8_t> stored;       // stored (method 0) content
  uint64_t offset_override = ~0ull;  // local header offset written in the directory
};

// A zip with stored members; `zip64` writes the zip64 end record and locator
// (with 0xffff / 0xffffffff in the classic record) as writers do for > 65535 members.
std::vector<uint8_t> make_zip(const std::vector<RawMember>& members, bool zip64) {
  std::vector<uint8_t> z;
  std::vector<uint64_t> offsets;
  for (const RawMember& m : members) {
    offsets.push_back(z.size());
    put32(z, 0x04034b50);
    put16(z, 20), put16(z, 0), put16(z, 0), put16(z, 0), put16(z, 0);
    put32(z, crc32_of(ByteView(m.stored)));
    put32(z, uint32_t(m.stored.size())), put32(z, uint32_t(m.stored.size()));
    put16(z, uint16_t(m.name.size())), put16(z, 0);
    z.insert(z.end(), m.name.begin(), m.name.end());
    z.insert(z.end(), m.stored.begin(), m.stored.end());
  }
  uint64_t directory = z.size();
  for (size_t i = 0; i < members.size(); ++i) {
    const RawMember& m = members[i];
    put32(z, 0x02014b50);
    put16(z, 20), put16(z, 20), put16(z, 0), put16(z, 0), put16(z, 0), put16(z, 0);
    put32(z, crc32_of(ByteView(m.stored)));
    put32(z, uint32_t(m.stored.size())), put32(z, uint32_t(m.stored.size()));
    put16(z, uint16_t(m.name.size())), put16(z, 0), put16(z, 0), put16(z, 0), put16(z, 0);
    put32(z, 0);
    put32(z, uint32_t(m.offset_override != ~0ull ? m.offset_override : offsets[i]));
    z.insert(z.end(), m.name.begin(), m.name.end());
  }
  uint64_t directory_size = z.size() - directory;
  if (zip64) {
    uint64_t record = z.size();
    put32(z, 0x06064b50);
    put64(z, 44);
    put16(z, 45), put16(z, 45), put32(z, 0), put32(z, 0);
    put64(z, members.size()), put64(z, members.size()), put64(z, directory_size), put64(z, directory);
    put32(z, 0x07064b50), put32(z, 0), put64(z, record), put32(z, 1);
  }
  put32(z, 0x06054b50);
  put16(z, 0), put16(z, 0);
  put16(z, zip64 ? 0xffff : uint16_t(members.size())), put16(z, zip64 ? 0xffff : uint16_t(members.size()));
  put32(z, zip64 ? 0xffffffff : uint32_t(directory_size)), put32(z, zip64 ? 0xffffffff : uint32_t(directory));
  put16(z, 0);
  return z;
}

std::vector<uint8_t> bytes_of(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

}  // namespace

// --- kind 3: truncated binaries ------------------------------------------------------------

TEST(DoctorTruncation, PrefixesOfARealLibraryAreTruncated) {
  std::vector<uint8_t> image = read_all(AF_LIBRARY_PATH);
  ASSERT_GT(image.size(), 8192u);
  ElfFile whole;
  std::string error;
  ASSERT_TRUE(parse_elf(ByteView(image), whole, error)) << error;
  EXPECT_TRUE(whole.truncation.empty());
  for (size_t size : {size_t(4096), image.size() / 2, image.size() - 1}) {
    ElfFile part;
    ASSERT_TRUE(parse_elf(ByteView(image.data(), size), part, error)) << size;
    EXPECT_FALSE(part.truncation.empty()) << "prefix of " << size << " bytes passed";
  }
}

TEST(DoctorTruncation, AnalyzerReportsAnError) {
  std::vector<uint8_t> image = read_all(AF_LIBRARY_PATH);
  std::string path = std::string(AF_BINARY_DIR) + "/doctor_truncated_4k.so";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(image.data()), 4096);
  Analyzer analyzer(AnalysisContext{});
  BinaryReport report = analyzer.analyze(path);
  EXPECT_FALSE(report.healthy());
  ASSERT_FALSE(report.findings.empty());
  bool truncated = false;
  for (const Finding& f : report.findings) truncated |= f.check == "truncated" && f.severity == Severity::kError;
  EXPECT_TRUE(truncated);
}

// --- kind 7: arch-specific cubins ------------------------------------------------------------

TEST(DoctorFatbinArch, ArchSpecificRunsOnlyOnItsExactCapability) {
  FatbinEntry sm100a{FatbinEntry::Kind::kCubin, 100, 0, false, true, false};
  EXPECT_EQ(fatbin_entry_label(sm100a), "sm_100a");
  EXPECT_TRUE(fatbin_entry_runs_on(sm100a, 10, 0));
  EXPECT_FALSE(fatbin_entry_runs_on(sm100a, 10, 3));
  FatbinEntry sm100f{FatbinEntry::Kind::kCubin, 100, 0, false, false, true};
  EXPECT_EQ(fatbin_entry_label(sm100f), "sm_100f");
  EXPECT_TRUE(fatbin_entry_runs_on(sm100f, 10, 3));
  EXPECT_FALSE(fatbin_entry_runs_on(sm100f, 12, 0));
  FatbinEntry sm80{FatbinEntry::Kind::kCubin, 80, 0, false, false, false};
  EXPECT_TRUE(fatbin_entry_runs_on(sm80, 8, 6));
  EXPECT_FALSE(fatbin_entry_runs_on(sm80, 9, 0));
  FatbinEntry ptx90a{FatbinEntry::Kind::kPtx, 90, 0, false, true, false};
  EXPECT_EQ(fatbin_entry_label(ptx90a), "compute_90a");
  EXPECT_TRUE(fatbin_entry_runs_on(ptx90a, 9, 0));
  EXPECT_FALSE(fatbin_entry_runs_on(ptx90a, 10, 0));
  FatbinEntry ptx90{FatbinEntry::Kind::kPtx, 90, 0, false, false, false};
  EXPECT_TRUE(fatbin_entry_runs_on(ptx90, 12, 0));
}

TEST(DoctorFatbinArch, ReadsTheArchSpecificFlag) {
  // One container, one cubin entry for sm_90 with nvcc 13's flags for "sm_90a" (0x100011).
  std::vector<uint8_t> b;
  put32(b, 0xBA55ED50), put16(b, 1), put16(b, 16), put64(b, 64);
  std::vector<uint8_t> entry(64, 0);
  entry[0] = 2;
  entry[4] = 64;
  entry[28] = 90;
  uint64_t flags = 0x100011;
  std::memcpy(&entry[40], &flags, 8);
  b.insert(b.end(), entry.begin(), entry.end());
  std::vector<FatbinEntry> entries;
  std::string error;
  ASSERT_TRUE(parse_fatbin(ByteView(b), entries, error)) << error;
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(fatbin_entry_label(entries[0]), "sm_90a");
}

// --- kind 6: untrusted archives ------------------------------------------------------------

TEST(DoctorZipHostile, OverlappingMembersAreRefused) {
  std::vector<RawMember> members = {{"a.so", bytes_of(std::string(1000, 'x'))}, {"b.so", bytes_of("tiny")}};
  members[1].offset_override = 0;  // b's directory entry points at a's local header
  std::vector<uint8_t> zip = make_zip(members, false);
  std::vector<ZipMember> parsed;
  std::string error;
  EXPECT_FALSE(parse_zip_directory(ByteView(zip), parsed, error));
  EXPECT_NE(error.find("overlap"), std::string::npos) << error;
}

TEST(DoctorZipHostile, Zip64ArchivesRead) {
  std::vector<RawMember> members;
  for (int i = 0; i < 3; ++i)
    members.push_back({"pkg/m" + std::to_string(i) + ".py", bytes_of("x = " + std::to_string(i) + "\n")});
  std::vector<uint8_t> zip = make_zip(members, true);
  std::vector<ZipMember> parsed;
  std::string error;
  ASSERT_TRUE(parse_zip_directory(ByteView(zip), parsed, error)) << error;
  ASSERT_EQ(parsed.size(), 3u);
  std::vector<uint8_t> out;
  ASSERT_TRUE(extract_zip_member(ByteView(zip), parsed[2], out, error)) << error;
  EXPECT_EQ(std::string(out.begin(), out.end()), "x = 2\n");
}

TEST(DoctorZipHostile, BudgetStopsReadsAndSaysSo) {
  std::vector<RawMember> members = {{"a.bin", bytes_of(std::string(3000, 'a'))},
                                    {"b.bin", bytes_of(std::string(3000, 'b'))}};
  std::vector<uint8_t> zip = make_zip(members, false);
  std::vector<ZipMember> parsed;
  std::string error;
  ASSERT_TRUE(parse_zip_directory(ByteView(zip), parsed, error)) << error;
  ZipBudget budget{4000};
  std::vector<uint8_t> out;
  EXPECT_TRUE(extract_zip_member(ByteView(zip), parsed[0], out, error, 1 << 20, &budget)) << error;
  EXPECT_FALSE(extract_zip_member(ByteView(zip), parsed[1], out, error, 1 << 20, &budget));
  EXPECT_TRUE(budget.exhausted);
  EXPECT_NE(error.find("limit hit"), std::string::npos) << error;
  EXPECT_EQ(default_zip_budget(3 << 20), uint64_t(256) << 20);
  EXPECT_EQ(default_zip_budget(uint64_t(1) << 30), uint64_t(8) << 30);
}

TEST(DoctorZipHostile, StreamingInflateMatchesWholeAndKeepsMemorySmall) {
  // A stored DEFLATE block of 70000 bytes followed by back-references is not
  // needed: a long run of fixed-Huffman copies (distance 1) inflates 1 MiB from
  // a few hundred bytes. Build it with the bit writer below.
  std::vector<uint8_t> stream;
  uint64_t bits = 0;
  int count = 0;
  auto emit = [&](uint32_t value, int n) {
    bits |= uint64_t(value) << count;
    count += n;
    while (count >= 8) stream.push_back(uint8_t(bits)), bits >>= 8, count -= 8;
  };
  auto reversed = [](uint32_t code, int n) {
    uint32_t r = 0;
    for (int i = 0; i < n; ++i) r |= ((code >> i) & 1) << (n - 1 - i);
    return r;
  };
  emit(1, 1), emit(1, 2);            // final block, fixed Huffman
  emit(reversed(0x30 + 'z', 8), 8);  // literal 'z'
  const int copies = 4096;           // each copies 258 bytes at distance 1
  for (int i = 0; i < copies; ++i) {
    emit(reversed(0xc5, 8), 8);  // length symbol 285 (258): code 11000101
    emit(reversed(0, 5), 5);     // distance symbol 0 (distance 1)
  }
  emit(0, 7);  // end of block (symbol 256: 0000000)
  if (count) stream.push_back(uint8_t(bits));
  const uint64_t expected = 1 + uint64_t(copies) * 258;
  std::vector<uint8_t> whole;
  std::string error;
  ASSERT_TRUE(inflate_raw(ByteView(stream), whole, expected, error)) << error;
  ASSERT_EQ(whole.size(), expected);
  EXPECT_EQ(std::count(whole.begin(), whole.end(), 'z'), std::ptrdiff_t(expected));
  size_t largest_chunk = 0, total = 0;
  af::Sha256 streamed;
  ASSERT_TRUE(inflate_stream(
      ByteView(stream),
      [&](const uint8_t* data, size_t size) {
        largest_chunk = std::max(largest_chunk, size);
        total += size;
        streamed.update(data, size);
        return true;
      },
      expected, error))
      << error;
  EXPECT_EQ(total, expected);
  EXPECT_LE(largest_chunk, size_t(256 << 10) + 258);
  EXPECT_EQ(digest_of(streamed), sha256_of(ByteView(whole)));
  // Declared smaller than the stream: stopped, not grown.
  EXPECT_FALSE(inflate_raw(ByteView(stream), whole, expected - 1, error));
}

TEST(DoctorZipHostile, IncrementalSha256MatchesOneShot) {
  std::mt19937 random(7);
  std::vector<uint8_t> data(10000);
  for (uint8_t& b : data) b = uint8_t(random());
  for (size_t step : {size_t(1), size_t(63), size_t(64), size_t(65), size_t(4097)}) {
    af::Sha256 sha;
    for (size_t at = 0; at < data.size(); at += step) sha.update(data.data() + at, std::min(step, data.size() - at));
    EXPECT_EQ(digest_of(sha), sha256_of(ByteView(data))) << step;
  }
}

// --- kind 2: pure-Python wheels ---------------------------------------------------------------

namespace {
ImportScan scan(const std::vector<PythonSource>& sources, std::set<std::string> extra_modules = {}) {
  std::set<std::string> modules = std::move(extra_modules);
  for (const PythonSource& s : sources) {
    modules.insert(s.module);
    for (size_t dot = s.module.find('.'); dot != std::string::npos; dot = s.module.find('.', dot + 1)) {
      modules.insert(s.module.substr(0, dot));
    }
  }
  return scan_imports(sources, modules);
}
}  // namespace

TEST(DoctorPythonImports, NamesFunctionsAndVersionAreNotModules) {
  ImportScan result = scan({
      {"pkg", true, "from .version import __version__\nfrom . import helper, Config\nfrom .core import run\n"},
      {"pkg.version", false, "__version__ = '1.0'\n"},
      {"pkg.core", false, "from . import __version__\ndef run():\n    pass\n"},
  });
  // helper and Config are bound nowhere: pkg's own `from . import` binds them only by importing submodules.
  std::vector<std::string> missing;
  for (const MissingModule& m : result.missing) missing.push_back(m.module);
  EXPECT_EQ(missing, (std::vector<std::string>{"pkg.helper", "pkg.Config"}));
  result = scan({
      {"pkg", true,
       "from .version import __version__\nfrom .core import run\nclass Config: pass\ndef helper(): pass\n"},
      {"pkg.version", false, "__version__ = '1.0'\n"},
      {"pkg.core", false, "from . import __version__, Config\nfrom pkg import helper\ndef run():\n    pass\n"},
  });
  EXPECT_TRUE(result.missing.empty()) << result.missing.front().module;
}

TEST(DoctorPythonImports, DocstringsCommentsAndFunctionLevelImportsDoNotCount) {
  ImportScan result = scan({{"pkg", true,
                             "\"\"\"Usage:\n\nimport pkg._missing_doc\nfrom pkg import _nothing\n\"\"\"\n"
                             "# from ._commented import x\n"
                             "x = '''\nfrom ._in_string import y\n'''\n"
                             "def f():\n    from ._lazy import z\n    import pkg._lazy2\n"
                             "try:\n    from ._optional import w\nexcept ImportError:\n    w = None\n"
                             "if False:\n    import pkg._never\n"}});
  EXPECT_TRUE(result.missing.empty()) << result.missing.front().module;
}

TEST(DoctorPythonImports, ModuleLevelImportOfAnAbsentModuleIsReached) {
  ImportScan result =
      scan({{"demo", true, "from . import (\n    _C,\n)\n"}, {"demo.extra", false, "import demo._other\n"}});
  ASSERT_EQ(result.missing.size(), 2u);
  EXPECT_EQ(result.missing[0].module, "demo._C");
  EXPECT_TRUE(result.missing[0].reached);
  EXPECT_EQ(result.missing[1].module, "demo._other");
  EXPECT_FALSE(result.missing[1].reached);  // demo.extra is not imported by `import demo`
  // A compiled module present in the wheel satisfies the import.
  EXPECT_TRUE(scan({{"demo", true, "from . import _C\n"}}, {"demo._C"}).missing.empty());
}

TEST(DoctorPythonImports, ExternalTopLevelImportsOfReachedModules) {
  ImportScan result = scan({{"flash_attn", true, "from flash_attn.interface import f\n"},
                            {"flash_attn.interface", false, "import flash_attn_2_cuda as gpu\ndef f(): pass\n"}});
  EXPECT_TRUE(result.missing.empty());
  ASSERT_EQ(result.external.size(), 1u);
  EXPECT_EQ(result.external[0].first, "flash_attn_2_cuda");
  EXPECT_EQ(result.external[0].second, "flash_attn.interface");
}

TEST(DoctorPythonImports, LazyModulesAreNotJudged) {
  ImportScan result = scan({{"transformers", true,
                             "import sys\nfrom .utils import _LazyModule\n"
                             "sys.modules[__name__] = _LazyModule(__name__, globals()['__file__'])\n"},
                            {"transformers.utils", false, "class _LazyModule: pass\n"},
                            {"transformers.models", true, "from transformers import AutoModel\n"}});
  EXPECT_TRUE(result.missing.empty()) << result.missing.front().module;
}

// --- kind 4 and 5: alternatives, METADATA, fixes ----------------------------------------------

TEST(DoctorAlternatives, KeysOfPerCudaBuilds) {
  EXPECT_EQ(alternative_key("libbitsandbytes_cuda121.so"), "libbitsandbytes_{}.so");
  EXPECT_EQ(alternative_key("libbitsandbytes_cpu.so"), "libbitsandbytes_{}.so");
  EXPECT_EQ(alternative_key("_C_cu12.so"), "_C_{}.so");
  EXPECT_EQ(alternative_key("libcudart.so.12"), "");
  EXPECT_EQ(alternative_key("libcpuinfo.so"), "");
  EXPECT_EQ(alternative_key("_C.so"), "");
  EXPECT_EQ(alternative_key("MPI.mpich.cpython-312-x86_64-linux-gnu.so"), "MPI.{}.cpython-312-x86_64-linux-gnu.so");
  EXPECT_EQ(alternative_key("MPI.openmpi.abi3.so"), "MPI.{}.abi3.so");
  EXPECT_EQ(alternative_key("MPI.cpython-312-x86_64-linux-gnu.so"), "");
  EXPECT_EQ(alternative_key("MPI.abi3.so"), "");
  EXPECT_EQ(alternative_key("libfoo.so.1.2"), "");
}

// mpi4py 4.1.2 on the H200 image: MPI.openmpi loads, MPI.mpich lacks libmpi.so.12. With no
// MPI at all, one warning is left; a wrong-Python error is not a missing alternative.
TEST(DoctorAlternatives, ModuleVariantsAreAlternatives) {
  const std::string dir = "/site-packages/mpi4py/";
  Finding no_mpich{"missing_library", Severity::kError, "libmpi.so.12: cannot open shared object file", {}, "fix"};
  Finding no_openmpi{"missing_library", Severity::kError, "libmpi.so.40: cannot open shared object file", {}, "fix"};
  Finding wrong_python{"python_abi", Severity::kError, "5 Python C-API symbols are not provided", {}, "fix"};
  BinaryReport mpich, openmpi;
  mpich.path = dir + "MPI.mpich.cpython-312-x86_64-linux-gnu.so", mpich.readable = true;
  openmpi.path = dir + "MPI.openmpi.cpython-312-x86_64-linux-gnu.so", openmpi.readable = true;
  mpich.findings = {no_mpich};
  std::vector<BinaryReport> reports = {mpich, openmpi};
  judge_alternatives(reports);
  EXPECT_TRUE(reports[0].healthy());
  EXPECT_EQ(reports[0].findings[0].severity, Severity::kInfo);

  openmpi.findings = {no_openmpi};
  reports = {mpich, openmpi};
  judge_alternatives(reports);
  int warnings = 0, errors = 0;
  for (const BinaryReport& r : reports) {
    for (const Finding& f : r.findings) {
      warnings += f.severity == Severity::kWarning;
      errors += f.severity == Severity::kError;
    }
  }
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(warnings, 1);
  EXPECT_NE(reports[0].findings[0].summary.find("none of the per-build variants"), std::string::npos);

  mpich.findings = {no_mpich, wrong_python};
  reports = {mpich, openmpi};
  judge_alternatives(reports);
  EXPECT_EQ(reports[0].findings[1].severity, Severity::kError);
}

TEST(DoctorFixes, MetadataTorchPinGivesTheReleaseForTheInstalledTorch) {
  Distribution d = parse_metadata(
      "Metadata-Version: 2.1\nName: torchvision\nVersion: 0.16.0\n"
      "Requires-Dist: numpy\nRequires-Dist: torch (==2.1.0)\nRequires-Dist: scipy ; extra == \"scipy\"\n\n"
      "Requires-Dist: torch==9 in the description\n");
  EXPECT_EQ(d.name, "torchvision");
  EXPECT_EQ(d.version, "0.16.0");
  EXPECT_EQ(d.torch_requirement, "==2.1.0");
  PythonFacts python;
  python.executable = "/venv/bin/python";
  python.torch.found = true;
  python.torch.version = "2.15.0+cu132";
  std::string fix = matching_build_fix(d, &python);
  EXPECT_NE(fix.find("/venv/bin/python -m pip install torchvision torch==2.15.0"), std::string::npos) << fix;
  EXPECT_NE(fix.find("torch==2.1.0"), std::string::npos) << fix;
  EXPECT_EQ(fix.find("--no-binary"), std::string::npos) << "no source build for a package that pins torch: " << fix;
  EXPECT_EQ(fix.find('<'), std::string::npos) << fix;
}

TEST(DoctorFixes, FlashAttnSourceBuildIsForcedAndCacheFree) {
  Distribution d{"flash_attn", "2.8.3", ""};
  PythonFacts python;
  python.executable = "/venv/bin/python";
  python.torch.found = true;
  python.torch.version = "2.15.0+cu132";
  python.torch.reported_cxx11_abi = 1;
  std::string fix = matching_build_fix(d, &python);
  for (const char* part :
       {"FLASH_ATTENTION_FORCE_BUILD=TRUE", "FLASH_ATTENTION_FORCE_CXX11_ABI=TRUE", "--no-cache-dir",
        "--force-reinstall", "--no-build-isolation", "--no-binary flash_attn", "flash_attn==2.8.3"}) {
    EXPECT_NE(fix.find(part), std::string::npos) << part << " missing from " << fix;
  }
}

// --- kind 8: reporting --------------------------------------------------------------------------

TEST(DoctorReportText, HeadlineEvidenceFollowsTheHeadline) {
  BinaryReport r;
  r.path = "/x/ext.so";
  r.readable = true;
  r.findings.push_back({"load_order", Severity::kWarning, "warning summary", {"warning evidence"}, "warning fix"});
  r.findings.push_back({"dual_abi", Severity::kError, "error summary", {"error evidence"}, "error fix"});
  std::string text = binary_text(r, true);
  size_t headline = text.find("BROKEN  /x/ext.so: error summary");
  size_t error_evidence = text.find("evidence: error evidence");
  size_t warning_line = text.find("[warning] warning summary");
  size_t warning_evidence = text.find("evidence: warning evidence");
  ASSERT_NE(headline, std::string::npos) << text;
  ASSERT_NE(warning_line, std::string::npos) << text;
  EXPECT_LT(headline, error_evidence) << text;
  EXPECT_LT(error_evidence, warning_line) << text;
  EXPECT_LT(warning_line, warning_evidence) << text;
  EXPECT_EQ(text.find("[error] error summary"), std::string::npos) << "the headline is not repeated: " << text;
}
