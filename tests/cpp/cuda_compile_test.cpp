// Every kernel variant compiles with NVRTC for every supported architecture, without spills.
// Needs NVRTC, not a GPU; prints registers, shared memory and spills per variant.
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "attnforge/attnforge.h"
#include "common/sha256.h"
#include "cuda/compiler.h"
#include "cuda/cuda_backend.h"
#include "cuda/driver_api.h"
#include "cuda/families.h"
#include "cuda/modules.h"
#include "cuda/plan.h"

namespace af::cuda {
namespace {

TEST(CudaKernelSource, EveryFamilyIncludesNoHeaders) {
  for (int id = 0; id < kFamilyCount; ++id) {
    const Family& f = family(FamilyId(id));
    EXPECT_EQ(module_source(f.id).find("#include"), std::string::npos) << f.name;
    EXPECT_NE(module_source(f.id).find(f.entry), std::string::npos) << f.name;
    if (f.combine_entry != nullptr) EXPECT_NE(module_source(f.id).find(f.combine_entry), std::string::npos) << f.name;
  }
}

TEST(CudaVariants, TableIsConsistent) {
  const auto& list = variants();
  ASSERT_LE(list.size(), size_t(kMaxVariants));
  int per_family[kFamilyCount] = {};
  for (size_t i = 0; i < list.size(); ++i) {
    ++per_family[list[i].family];
    EXPECT_EQ(find_variant(list[i].family, list[i].dtype, list[i].head_dim, list[i].extras, list[i].schedule,
                           list[i].family == kFamilyFwdSm90 ? list[i].tiles[kSmem227K].block_m() : kSm90BlockM,
                           list[i].decode_tile),
              int(i))
        << list[i].name;
    const DecodeTile kind = list[i].decode_tile;
    EXPECT_TRUE(kind == kDecodeTileDefault ||
                (list[i].family == kFamilyDecode &&
                 (list[i].head_dim == 128 || (list[i].head_dim == 64 && !list[i].extras && kind == kDecodeTileWide))))
        << list[i].name;
    if (list[i].compiles_for("sm_86"))
      EXPECT_LE(list[i].total_smem_bytes(86), 99 * 1024) << list[i].name << " does not fit sm_86/sm_89 shared memory";
    if (list[i].compiles_for("sm_80"))
      EXPECT_LE(list[i].total_smem_bytes(80), 163 * 1024) << list[i].name << " does not fit sm_80 shared memory";
    EXPECT_LE(list[i].total_smem_bytes(90), 227 * 1024) << list[i].name << " does not fit sm_90 shared memory";
  }
  for (int id = 0; id < kFamilyCount; ++id) EXPECT_GT(per_family[id], 0) << family(FamilyId(id)).name;
  EXPECT_EQ(compiled_head_dim(kFamilyFwdSm80, 80), 96);
  EXPECT_EQ(compiled_head_dim(kFamilyDecode, 80), 128);
  EXPECT_EQ(compiled_head_dim(kFamilyFwdSm80, 257), 0);
  EXPECT_EQ(find_variant(kFamilyFwdSm80, AF_DTYPE_FLOAT32, 64, false), -1);
  EXPECT_EQ(compiled_head_dim(kFamilyFwdSm90, 72), 128);
  EXPECT_EQ(compiled_head_dim(kFamilyFwdSm90, 136), 256);
  EXPECT_EQ(compiled_head_dim(kFamilyFwdSm90, 264), 0);
  EXPECT_EQ(find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 64, true), -1) << "v0 has no extras variant";
  EXPECT_GE(find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 64, true, kSm90PingPongPersistent), 0)
      << "windows and softcap run on fwd_sm90's extras variants";
  EXPECT_EQ(find_variant(kFamilyFwdSm80, AF_DTYPE_BFLOAT16, 64, false, kSm90Overlap), -1) << "overlap is fwd_sm90's";
  for (const Variant& v : list)
    EXPECT_EQ(v.compiles_for("sm_80"), v.family != kFamilyFwdSm90 && v.decode_tile == kDecodeTileDefault)
        << v.name << ": wgmma and setmaxnreg need sm_90a; the wide-grid decode tile is the 227 KB class's";
}

std::string real_path(const std::string& path) {
  char* resolved = realpath(path.c_str(), nullptr);
  if (resolved == nullptr) return path;
  std::string result = resolved;
  std::free(resolved);
  return result;
}

// body(0) .. body(count - 1) on two threads (CI has two cores; NVRTC compiles independent programs
// concurrently).
void on_two_threads(size_t count, const std::function<void(size_t)>& body) {
  std::mutex mutex;
  size_t next = 0;
  auto worker = [&] {
    for (;;) {
      size_t i;
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (next == count) return;
        i = next++;
      }
      body(i);
    }
  };
  std::thread a(worker), b(worker);
  a.join();
  b.join();
}

TEST(CudaCompile, EveryVariantForEveryArchWithoutSpills) {
  // scripts/nvrtc_matrix.sh names each NVRTC under test in ATTNFORGE_NVRTC: the loader would
  // fall back to another one if it did not load, so check that it is the one in use.
  const char* wanted = std::getenv("ATTNFORGE_NVRTC");
  if (wanted != nullptr && *wanted != 0) {
    ASSERT_TRUE(nvrtc().ok) << "ATTNFORGE_NVRTC=" << wanted << ": " << nvrtc().failure;
    ASSERT_EQ(real_path(nvrtc().library), real_path(wanted)) << "ATTNFORGE_NVRTC did not load; another NVRTC did";
  }
  if (!nvrtc().ok) GTEST_SKIP() << "NVRTC not found: " << nvrtc().failure;
  std::printf("NVRTC %d.%d from %s\n", nvrtc().major, nvrtc().minor, nvrtc().library.c_str());
  const std::vector<std::string> archs = {"sm_80", "sm_86", "sm_89", "sm_90a"};
  struct Row {
    std::string arch;
    const Variant* variant;
    af_status status;
    CompiledKernel kernel;
    std::string error;
  };
  std::vector<Row> rows;
  for (const std::string& arch : archs)
    for (const Variant& v : variants())
      if (v.compiles_for(arch)) rows.push_back({arch, &v, AF_OK, {}, ""});
  // Every fwd_sm90 variant is in the sm_90a rows (the family's whole point is that target): 2 dtypes x
  // 3 head dims of each schedule in 128-row tiles, and 2 dtypes of each schedule's d64 192-row form;
  // the extras variants (windows, softcap) 2 dtypes x 3 head dims of pingpong and pingpong-persistent.
  int sm90_rows[kSm90Schedules] = {}, sm90_wide_rows[kSm90Schedules] = {}, sm90_extras_rows[kSm90Schedules] = {};
  for (const Row& r : rows)
    if (r.variant->family == kFamilyFwdSm90 && r.arch == "sm_90a")
      ++(r.variant->extras                                      ? sm90_extras_rows
         : r.variant->tile_for(90).block_m() == kSm90WideBlockM ? sm90_wide_rows
                                                                : sm90_rows)[r.variant->schedule];
  for (int s = 0; s < kSm90Schedules; ++s) {
    EXPECT_EQ(sm90_rows[s], 6) << sm90_schedule_name(Sm90Schedule(s));
    EXPECT_EQ(sm90_wide_rows[s], 2) << sm90_schedule_name(Sm90Schedule(s));
    EXPECT_EQ(sm90_extras_rows[s], sm90_has_extras(Sm90Schedule(s)) ? 6 : 0) << sm90_schedule_name(Sm90Schedule(s));
  }
  on_two_threads(rows.size(), [&](size_t i) {
    rows[i].status = compile_variant(*rows[i].variant, rows[i].arch, false, &rows[i].kernel);
    if (rows[i].status != AF_OK) rows[i].error = af_last_error_message();
  });
  std::printf("%-7s %-28s %5s %8s %6s %11s %13s %7s\n", "arch", "variant", "regs", "smem", "stack", "spill st/ld",
              "tile", "time");
  for (const Row& r : rows) {
    const Variant& v = *r.variant;
    char tile[32];
    const int arch = target_arch(r.arch);
    const TileConfig& t = v.tile_for(arch);
    std::snprintf(tile, sizeof tile, "%dx%d/%dw/%ds", t.block_m(), t.block_n, t.warps, t.stages);
    std::printf("%-7s %-28s %5d %8d %6d %5d/%-5d %13s %6.2fs\n", r.arch.c_str(), v.name.c_str(), r.kernel.registers,
                v.smem_bytes(arch), r.kernel.stack_bytes, r.kernel.spill_store_bytes, r.kernel.spill_load_bytes, tile,
                r.kernel.seconds);
    EXPECT_EQ(r.status, AF_OK) << r.arch << " " << v.name << ": " << r.error;
    if (r.status != AF_OK) continue;
    EXPECT_GT(r.kernel.registers, 0) << "no ptxas resource report for " << v.name << ":\n" << r.kernel.log;
    EXPECT_EQ(r.kernel.spill_store_bytes, 0) << r.arch << " " << v.name << " spills";
    EXPECT_EQ(r.kernel.spill_load_bytes, 0) << r.arch << " " << v.name << " spills";
    // ptxas serialises wgmma (waits after each issue) where it cannot keep an accumulator in flight,
    // which would undo the overlap schedule: it says so in the log.
    EXPECT_EQ(r.kernel.log.find("wgmma.mma_async instructions are serialized"), std::string::npos)
        << r.arch << " " << v.name << ":\n"
        << r.kernel.log;
  }
}

// The fwd_sm90 forms that $ATTNFORGE_SM90_BLOCK_N / $ATTNFORGE_SM90_STAGES / $ATTNFORGE_SM90_DEFERRED_MAX (tuning
// runs) give the table:
//   ATTNFORGE_SM90_BLOCK_N="128:176;256:80" ./attnforge_tests --gtest_filter=CudaCompile.Sm90Tuned*
// every variant whose tile is not the untuned one (128 keys, 64 at d256; 2 stages; the softmax's order of
// sm90_deferred_max_default) compiles
// for sm_90a without spills, stack or serialized wgmmas; prints registers and a digest of the cubin. Skipped when
// no knob is set (the matrix test above covers the untuned table).
TEST(CudaCompile, Sm90TunedFormsWithoutSpillsStackOrSerializedWgmma) {
  if (std::getenv("ATTNFORGE_SM90_BLOCK_N") == nullptr && std::getenv("ATTNFORGE_SM90_STAGES") == nullptr &&
      std::getenv("ATTNFORGE_SM90_DEFERRED_MAX") == nullptr)
    GTEST_SKIP() << "none of ATTNFORGE_SM90_BLOCK_N, ATTNFORGE_SM90_STAGES and ATTNFORGE_SM90_DEFERRED_MAX is set";
  if (!nvrtc().ok) GTEST_SKIP() << "NVRTC not found: " << nvrtc().failure;
  std::vector<const Variant*> tuned;
  for (const Variant& v : variants()) {
    const TileConfig& t = v.tile_for(90);
    if (v.family == kFamilyFwdSm90 &&
        (t.block_n != (v.head_dim == 256 ? 64 : 128) || t.stages != 2 ||
         t.deferred_max != sm90_deferred_max_default(v.head_dim, v.extras, v.schedule, t)))
      tuned.push_back(&v);
  }
  ASSERT_FALSE(tuned.empty()) << "the knobs changed no fwd_sm90 tile";
  std::vector<CompiledKernel> kernels(tuned.size());
  std::vector<af_status> status(tuned.size(), AF_OK);
  on_two_threads(tuned.size(), [&](size_t i) { status[i] = compile_variant(*tuned[i], "sm_90a", false, &kernels[i]); });
  std::printf("%-44s %13s %5s %8s %6s %11s %16s\n", "variant", "tile", "regs", "smem", "stack", "spill st/ld",
              "cubin sha256");
  for (size_t i = 0; i < tuned.size(); ++i) {
    const Variant& v = *tuned[i];
    const TileConfig& t = v.tile_for(90);
    const CompiledKernel& k = kernels[i];
    char tile[32];
    std::snprintf(tile, sizeof tile, "%dx%d/%ds", t.block_m(), t.block_n, t.stages);
    std::printf("%-44s %13s %5d %8d %6d %5d/%-5d %16s\n", v.name.c_str(), tile, k.registers, v.smem_bytes(90),
                k.stack_bytes, k.spill_store_bytes, k.spill_load_bytes,
                Sha256().update(k.binary.data(), k.binary.size()).hex().substr(0, 16).c_str());
    EXPECT_EQ(status[i], AF_OK) << v.name;
    if (status[i] != AF_OK) continue;
    EXPECT_GT(k.registers, 0) << "no ptxas resource report for " << v.name << ":\n" << k.log;
    EXPECT_EQ(k.spill_store_bytes, 0) << v.name << " spills";
    EXPECT_EQ(k.spill_load_bytes, 0) << v.name << " spills";
    EXPECT_EQ(k.stack_bytes, 0) << v.name << " uses a stack frame";
    EXPECT_EQ(k.log.find("wgmma.mma_async instructions are serialized"), std::string::npos) << v.name << ":\n" << k.log;
  }
}

TEST(CudaChoose, RejectsWithReasons) {
  AttentionProblem p;
  p.device_type = AF_DEVICE_CUDA;
  p.dtype = AF_DTYPE_FLOAT32;
  p.head_dim = 64;
  Choice choice;
  EXPECT_EQ(choose(p, &choice), AF_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(af_last_error_message()).find("float32"), std::string::npos) << af_last_error_message();
  p.dtype = AF_DTYPE_BFLOAT16;
  p.head_dim = 320;
  EXPECT_EQ(choose(p, &choice), AF_ERR_UNSUPPORTED);
}

TEST(CudaReport, SaysWhichStepFailedOrWhatWasFound) {
  const std::string json = report_json();
  EXPECT_NE(json.find("\"driver\""), std::string::npos);
  EXPECT_NE(json.find("\"nvrtc\""), std::string::npos);
  if (!driver().ok) {
    EXPECT_NE(json.find("\"available\":false"), std::string::npos) << json;
    EXPECT_NE(json.find("libcuda"), std::string::npos) << json;
  }
}

}  // namespace
}  // namespace af::cuda
