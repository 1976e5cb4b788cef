// Kernel cache: concurrent writers, damaged entries, clearing, key coverage. No GPU needed;
// the NVRTC cases run when NVRTC is present and are skipped (with the reason) otherwise.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "attnforge/attnforge.h"
#include "cuda/compiler.h"
#include "cuda/driver_api.h"
#include "cuda/kernel_cache.h"
#include "cuda/families.h"

namespace af::cuda {
namespace {

// A fresh cache directory (below a new temporary directory) for each test.
class CudaCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/af-cache-test-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
    dir_ = root_ + "/nested/attnforge";
    setenv("ATTNFORGE_CACHE_DIR", dir_.c_str(), 1);
  }
  void TearDown() override {
    cache_remove_all();
    rmdir(dir_.c_str());
    rmdir((root_ + "/nested").c_str());
    rmdir(root_.c_str());
    unsetenv("ATTNFORGE_CACHE_DIR");
  }
  std::vector<std::string> files() const {
    std::vector<std::string> names;
    if (DIR* d = opendir(dir_.c_str())) {
      while (const dirent* e = readdir(d))
        if (e->d_name[0] != '.' || std::string(e->d_name).rfind(".afk-tmp-", 0) == 0)
          if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") names.push_back(e->d_name);
      closedir(d);
    }
    return names;
  }
  std::string root_, dir_;
};

// A distinct key per number.
CacheKey key_of(int n) { return make_cache_key("test source " + std::to_string(n), {}, "sm_80", 12, 0); }

std::vector<char> payload_of(size_t size, unsigned seed) {
  std::vector<char> data(size);
  for (size_t i = 0; i < size; ++i) data[i] = char((i * 131u + seed * 7u) >> 3);
  return data;
}

TEST_F(CudaCacheTest, DirectoryIsCreatedPrivate) {
  ASSERT_EQ(cache_store(key_of(1), "label", payload_of(100, 1)), AF_OK);
  struct stat st;
  ASSERT_EQ(stat(dir_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  std::vector<char> back;
  ASSERT_TRUE(cache_load(key_of(1), &back));
  EXPECT_EQ(back, payload_of(100, 1));
}

TEST_F(CudaCacheTest, ConcurrentWritersLeaveOneGoodEntry) {
  const CacheKey key = key_of(2);
  const std::vector<char> payload = payload_of(1 << 20, 3);
  constexpr int kProcesses = 6;
  std::vector<pid_t> children;
  for (int i = 0; i < kProcesses; ++i) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // Each child writes the entry repeatedly and checks that every read sees all or nothing.
      int bad = 0;
      for (int round = 0; round < 10; ++round) {
        if (cache_store(key, "concurrent", payload) != AF_OK) ++bad;
        std::vector<char> back;
        if (cache_load(key, &back) && back != payload) ++bad;
      }
      _exit(bad == 0 ? 0 : 1);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a writer saw a partial entry or failed";
  }
  const std::vector<std::string> names = files();
  ASSERT_EQ(names.size(), 1u) << "temporary files left behind or duplicate entries";
  EXPECT_EQ(names[0], key.hex() + ".afk");
  std::vector<char> back;
  ASSERT_TRUE(cache_load(key, &back));
  EXPECT_EQ(back, payload);
}

TEST_F(CudaCacheTest, TruncatedOrCorruptEntryIsDetected) {
  const CacheKey key = key_of(3);
  const std::vector<char> payload = payload_of(4096, 5);
  ASSERT_EQ(cache_store(key, "x", payload), AF_OK);
  const std::string path = dir_ + "/" + key.hex() + ".afk";
  std::vector<char> back;

  ASSERT_EQ(truncate(path.c_str(), 2000), 0);
  EXPECT_FALSE(cache_load(key, &back)) << "a truncated entry was accepted";

  ASSERT_EQ(cache_store(key, "x", payload), AF_OK);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-10, std::ios::end);
    f.put('\x5a');
  }
  EXPECT_FALSE(cache_load(key, &back)) << "a corrupted payload passed the checksum";

  ASSERT_EQ(cache_store(key, "x", payload), AF_OK);
  ASSERT_TRUE(cache_load(key, &back));
  EXPECT_EQ(back, payload);
}

TEST_F(CudaCacheTest, ClearRemovesOnlyOurFiles) {
  ASSERT_EQ(cache_store(key_of(4), "a", payload_of(10, 1)), AF_OK);
  ASSERT_EQ(cache_store(key_of(5), "b", payload_of(10, 2)), AF_OK);
  const std::string other = dir_ + "/notes.txt";
  std::ofstream(other) << "not ours";
  EXPECT_NE(cache_list().find("\"label\":\"a\""), std::string::npos) << cache_list();
  ASSERT_EQ(cache_remove_all(), AF_OK);
  EXPECT_EQ(access(other.c_str(), F_OK), 0) << "cache clear removed a file it did not write";
  EXPECT_EQ(files().size(), 1u);
  unlink(other.c_str());
}

TEST(CudaCacheKey, CoversSourceOptionsTargetAndNvrtcVersion) {
  const std::vector<std::string> options = {"-DA=1"};
  const std::string base = make_cache_key("src", options, "sm_80", 12, 4).hex();
  EXPECT_NE(base, make_cache_key("src ", options, "sm_80", 12, 4).hex());
  EXPECT_NE(base, make_cache_key("src", {"-DA=2"}, "sm_80", 12, 4).hex());
  EXPECT_NE(base, make_cache_key("src", options, "sm_86", 12, 4).hex());
  EXPECT_NE(base, make_cache_key("src", options, "sm_80", 12, 5).hex());
  EXPECT_EQ(base, make_cache_key("src", options, "sm_80", 12, 4).hex());
}

// Real NVRTC: processes compiling the same variant at once, then a damaged entry rebuilt.
TEST_F(CudaCacheTest, ConcurrentCompilesAndRebuildWithNvrtc) {
  if (!nvrtc().ok) GTEST_SKIP() << "NVRTC not found: " << nvrtc().failure;
  const Variant& v = variants()[find_variant(kFamilyFwdSm80, AF_DTYPE_BFLOAT16, 64, false)];
  std::vector<pid_t> children;
  for (int i = 0; i < 3; ++i) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      CompiledKernel k;
      _exit(compile_variant(v, "sm_80", true, &k) == AF_OK && !k.binary.empty() ? 0 : 1);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  ASSERT_EQ(files().size(), 1u);
  CompiledKernel cached;
  ASSERT_EQ(compile_variant(v, "sm_80", true, &cached), AF_OK);
  EXPECT_TRUE(cached.from_cache);

  const std::string path = dir_ + "/" + files()[0];
  ASSERT_EQ(truncate(path.c_str(), 100), 0);
  CompiledKernel rebuilt;
  ASSERT_EQ(compile_variant(v, "sm_80", true, &rebuilt), AF_OK);
  EXPECT_FALSE(rebuilt.from_cache) << "a truncated entry was used";
  EXPECT_EQ(rebuilt.binary, cached.binary);
  CompiledKernel again;
  ASSERT_EQ(compile_variant(v, "sm_80", true, &again), AF_OK);
  EXPECT_TRUE(again.from_cache) << "the rebuilt entry was not stored";
}

}  // namespace
}  // namespace af::cuda

namespace af::cuda {
namespace {

struct Progress {
  int calls = 0, last_done = 0, total = 0;
  std::string last_item;
};

void record_progress(void* user, int32_t done, int32_t total, const char* item) {
  Progress* p = static_cast<Progress*>(user);
  ++p->calls;
  p->last_done = done;
  p->total = total;
  p->last_item = item;
}

// af_warmup without a GPU: every variant for one arch lands in the cache, with progress,
// and a second warmup is served from the cache.
TEST_F(CudaCacheTest, WarmupFillsTheCacheWithoutAGpu) {
  if (!nvrtc().ok) GTEST_SKIP() << "NVRTC not found: " << nvrtc().failure;
  const char* archs[] = {"sm_86"};
  size_t for_sm86 = 0;  // fwd_sm90 compiles for sm_90a only: warmup reports it and compiles nothing
  for (const Variant& v : variants()) for_sm86 += v.compiles_for("sm_86");
  ASSERT_LT(for_sm86, variants().size());
  Progress first;
  ASSERT_EQ(af_warmup(archs, 1, record_progress, &first), AF_OK) << af_last_error_message();
  EXPECT_EQ(first.calls, int(variants().size()));
  EXPECT_EQ(first.last_done, first.total);
  EXPECT_NE(first.last_item.find("sm_86"), std::string::npos);
  EXPECT_EQ(files().size(), for_sm86);
  const std::string list = cache_list();
  EXPECT_EQ(list.find("\"valid\":false"), std::string::npos) << list;

  const auto start = std::chrono::steady_clock::now();
  Progress second;
  ASSERT_EQ(af_warmup(archs, 1, record_progress, &second), AF_OK);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 2.0) << "the second warmup recompiled instead of reading the cache";
  EXPECT_EQ(files().size(), for_sm86);
}

TEST(CudaWarmup, RejectsUnknownArchitectures) {
  if (!nvrtc().ok) GTEST_SKIP() << "NVRTC not found: " << nvrtc().failure;
  const char* archs[] = {"sm_70"};
  EXPECT_EQ(af_warmup(archs, 1, nullptr, nullptr), AF_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(af_last_error_message()).find("sm_70"), std::string::npos);
  EXPECT_EQ(normalise_target("sm_90a"), "sm_90a");
  EXPECT_EQ(normalise_target("89"), "sm_89");
  EXPECT_EQ(normalise_target("banana"), "");
}

}  // namespace
}  // namespace af::cuda
