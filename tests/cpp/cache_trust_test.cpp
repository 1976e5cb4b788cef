// The kernel cache trusts only what nobody else can write (issue 15, kind 2): a
// directory or entry that another user could have written, a symbolic link, a
// FIFO named like an entry, or a relative directory is never used; warmup,
// list and clear fail, saying why, when the cache cannot do their work
// (kind 3). Also SHA-256 against the FIPS 180-4 examples (the cache's keys).
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "attnforge/attnforge.h"
#include "common/sha256.h"
#include "cuda/kernel_cache.h"

namespace af {
namespace {

TEST(Sha256, FipsExamples) {
  EXPECT_EQ(Sha256().update("abc").hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256().hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256().update("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").hex(),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256().update(std::string(1000000, 'a')).hex(),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PiecewiseUpdatesMatchOneUpdate) {
  std::string text;
  for (int i = 0; i < 1000; ++i) text += char('a' + i * 7 % 26);
  const std::string whole = Sha256().update(text).hex();
  for (size_t piece : {1u, 3u, 55u, 63u, 64u, 65u, 200u}) {
    Sha256 h;
    for (size_t at = 0; at < text.size(); at += piece) h.update(text.substr(at, piece));
    EXPECT_EQ(h.hex(), whole) << "pieces of " << piece;
  }
}

}  // namespace
}  // namespace af

namespace af::cuda {
namespace {

CacheKey key_of(int n) { return make_cache_key("trust test " + std::to_string(n), {}, "sm_80", 12, 0); }
const std::vector<char> kPayload(3000, 'x');
constexpr uid_t kNobody = 65534;

// Runs body in a child under alarm(): "" when it returned true, else what happened.
std::string in_child(const std::function<bool()>& body) {
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(20);
    _exit(body() ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) return WTERMSIG(status) == SIGALRM ? "hung" : "died of a signal";
  return WEXITSTATUS(status) == 0 ? "" : "returned the wrong answer";
}

class CacheTrust : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/af-trust-test-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
    dir_ = root_ + "/cache";
    setenv("ATTNFORGE_CACHE_DIR", dir_.c_str(), 1);
  }
  void TearDown() override {
    unsetenv("ATTNFORGE_CACHE_DIR");
    std::system(("rm -rf '" + root_ + "'").c_str());
  }
  std::string entry(int n) const { return dir_ + "/" + key_of(n).hex() + ".afk"; }
  // A valid entry for key n, then the directory left as the test wants it.
  void store(int n) { ASSERT_EQ(cache_store(key_of(n), "label", kPayload), AF_OK) << af_last_error_message(); }
  bool loads(int n) {
    std::vector<char> back;
    return cache_load(key_of(n), &back) && back == kPayload;
  }
  std::string root_, dir_;
};

TEST_F(CacheTrust, PrivateDirectoryAndEntriesAreUsed) {
  store(1);
  EXPECT_TRUE(loads(1));
  EXPECT_EQ(cache_refusal(), "");
  EXPECT_EQ(key_of(1).hex().size(), 64u);
}

TEST_F(CacheTrust, GroupOrOtherWritableDirectoryIsNotUsed) {
  store(1);
  for (mode_t mode : {0770, 0707, 0777}) {
    SCOPED_TRACE(mode);
    ASSERT_EQ(chmod(dir_.c_str(), mode), 0);
    EXPECT_FALSE(loads(1)) << "an entry in a directory others can write was loaded";
    EXPECT_EQ(cache_store(key_of(2), "label", kPayload), AF_ERR_IO);
    EXPECT_NE(std::string(af_last_error_message()).find("writable by group or others"), std::string::npos)
        << af_last_error_message();
    EXPECT_NE(cache_refusal().find(dir_), std::string::npos);
    std::string json;
    EXPECT_EQ(cache_list(&json), AF_ERR_IO);
    EXPECT_EQ(cache_remove_all(), AF_ERR_IO);
  }
  ASSERT_EQ(chmod(dir_.c_str(), 0700), 0);
  EXPECT_TRUE(loads(1));
  EXPECT_EQ(access(entry(2).c_str(), F_OK), -1) << "an entry was written into the refused directory";
}

TEST_F(CacheTrust, DirectoryOwnedByAnotherUserIsNotUsed) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give the directory to another user (CI runs as root)";
  store(1);
  ASSERT_EQ(chown(dir_.c_str(), kNobody, kNobody), 0);
  EXPECT_FALSE(loads(1));
  EXPECT_EQ(cache_store(key_of(2), "label", kPayload), AF_ERR_IO);
  EXPECT_NE(std::string(af_last_error_message()).find("owned by uid 65534"), std::string::npos)
      << af_last_error_message();
  EXPECT_EQ(af_warmup(nullptr, 0, nullptr, nullptr), AF_ERR_IO);
}

TEST_F(CacheTrust, SymbolicLinkDirectoryIsNotUsed) {
  store(1);
  const std::string real = root_ + "/real";
  ASSERT_EQ(rename(dir_.c_str(), real.c_str()), 0);
  ASSERT_EQ(symlink(real.c_str(), dir_.c_str()), 0);
  EXPECT_FALSE(loads(1));
  EXPECT_NE(cache_refusal().find("symbolic link"), std::string::npos) << cache_refusal();
  EXPECT_EQ(cache_store(key_of(1), "label", kPayload), AF_ERR_IO);
  setenv("ATTNFORGE_CACHE_DIR", (dir_ + "//").c_str(), 1);  // a trailing slash must not follow the link
  EXPECT_FALSE(loads(1));
  EXPECT_NE(cache_refusal().find("symbolic link"), std::string::npos) << cache_refusal();
}

TEST_F(CacheTrust, RelativeDirectoryIsRefused) {
  setenv("ATTNFORGE_CACHE_DIR", "af-relative-cache", 1);
  char cwd[4096];
  ASSERT_NE(getcwd(cwd, sizeof cwd), nullptr);
  ASSERT_EQ(chdir(root_.c_str()), 0);
  EXPECT_EQ(cache_store(key_of(1), "label", kPayload), AF_ERR_IO);
  EXPECT_NE(std::string(af_last_error_message()).find("absolute path"), std::string::npos) << af_last_error_message();
  EXPECT_FALSE(loads(1));
  EXPECT_EQ(access((root_ + "/af-relative-cache").c_str(), F_OK), -1) << "a relative cache directory was created";
  ASSERT_EQ(chdir(cwd), 0);
}

TEST_F(CacheTrust, SymbolicLinkEntryIsNotFollowed) {
  store(1);
  const std::string elsewhere = root_ + "/planted.afk";
  ASSERT_EQ(rename(entry(1).c_str(), elsewhere.c_str()), 0);
  ASSERT_EQ(symlink(elsewhere.c_str(), entry(1).c_str()), 0);
  EXPECT_FALSE(loads(1));
  std::string json;
  ASSERT_EQ(cache_list(&json), AF_OK);
  EXPECT_NE(json.find("\"problem\":\"a symbolic link\""), std::string::npos) << json;
}

TEST_F(CacheTrust, FifoNamedLikeAnEntryNeverBlocks) {
  store(2);  // creates the directory
  ASSERT_EQ(mkfifo(entry(1).c_str(), 0600), 0);
  EXPECT_EQ(in_child([&] { return !loads(1); }), "");
  EXPECT_EQ(in_child([&] {
              std::string json;
              return cache_list(&json) == AF_OK && json.find("not a regular file") != std::string::npos;
            }),
            "");
  EXPECT_EQ(in_child([&] { return cache_store(key_of(1), "label", kPayload) == AF_OK && loads(1); }), "")
      << "a FIFO in the way must be replaced by the real entry";
}

TEST_F(CacheTrust, GroupWritableOrForeignEntryIsNotUsed) {
  store(1);
  ASSERT_EQ(chmod(entry(1).c_str(), 0620), 0);
  EXPECT_FALSE(loads(1));
  std::string json;
  ASSERT_EQ(cache_list(&json), AF_OK);
  EXPECT_NE(json.find("writable by group or others"), std::string::npos) << json;
  ASSERT_EQ(chmod(entry(1).c_str(), 0600), 0);
  EXPECT_TRUE(loads(1));
  if (geteuid() == 0) {
    ASSERT_EQ(chown(entry(1).c_str(), kNobody, kNobody), 0);
    EXPECT_FALSE(loads(1));
  }
}

// Kind 3: warmup, list and clear do not report success for work not done.
TEST_F(CacheTrust, CachePathThatIsAFileFailsEveryOperation) {
  std::ofstream(dir_) << "not a directory";
  EXPECT_EQ(af_warmup(nullptr, 0, nullptr, nullptr), AF_ERR_IO);
  EXPECT_NE(std::string(af_last_error_message()).find(dir_), std::string::npos) << af_last_error_message();
  char buffer[256];
  size_t needed = 0;
  EXPECT_EQ(af_cache_list(buffer, sizeof buffer, &needed), AF_ERR_IO);
  EXPECT_NE(std::string(af_last_error_message()).find("is not a directory"), std::string::npos);
  EXPECT_EQ(af_cache_clear(), AF_ERR_IO);
  EXPECT_EQ(cache_store(key_of(1), "label", kPayload), AF_ERR_IO);
}

TEST_F(CacheTrust, StoreFailuresAreCountedForWarmup) {
  std::ofstream(dir_) << "not a directory";
  std::string last;
  const uint64_t before = cache_store_failures(nullptr);
  EXPECT_EQ(cache_store(key_of(1), "label", kPayload), AF_ERR_IO);
  EXPECT_EQ(cache_store_failures(&last), before + 1);
  EXPECT_NE(last.find("not a directory"), std::string::npos) << last;
}

TEST_F(CacheTrust, MissingDirectoryListsEmptyAndClearsNothing) {
  char buffer[64];
  EXPECT_EQ(af_cache_list(buffer, sizeof buffer, nullptr), AF_OK) << af_last_error_message();
  EXPECT_STREQ(buffer, "[]");
  EXPECT_EQ(af_cache_clear(), AF_OK);
  EXPECT_EQ(access(dir_.c_str(), F_OK), -1) << "clear created the directory";
}

// A message recorded along the way (a failed list) does not outlive a later success.
TEST_F(CacheTrust, NoStaleErrorAfterASuccessfulCall) {
  std::ofstream(dir_) << "not a directory";
  char buffer[64];
  ASSERT_EQ(af_cache_list(buffer, sizeof buffer, nullptr), AF_ERR_IO);
  ASSERT_STRNE(af_last_error_message(), "");
  ASSERT_EQ(unlink(dir_.c_str()), 0);
  ASSERT_EQ(af_cache_list(buffer, sizeof buffer, nullptr), AF_OK);
  EXPECT_STREQ(af_last_error_message(), "");
}

}  // namespace
}  // namespace af::cuda
