// The `attnforge` command against bad arguments and a broken cache (issue 15,
// kinds 3 and 7): every row must end (no hang, no crash) with its exit code
// (0 ok, 1 failed, 2 usage) and a message naming what was wrong.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cuda/kernel_cache.h"
#include "doctor/process.h"

namespace {

using af::doctor::ProcessResult;

ProcessResult cli(std::vector<std::string> args) {
  args.insert(args.begin(), AF_CLI_PATH);
  return af::doctor::run_process(args, 60);
}

std::string describe(const ProcessResult& r) {
  return "exit " + std::to_string(r.exit_code) + ", signal " + std::to_string(r.signal) +
         (r.timed_out ? " (timed out)" : "") + "\nstdout: " + r.output + "\nstderr: " + r.errors;
}

struct Row {
  std::vector<std::string> args;
  int exit_code;
  const char* message;  // a substring of stderr
};

TEST(Cli, BadArgumentsAreUsageErrors) {
  const std::vector<Row> rows = {
      {{"bench", "--iters", "2147483648"}, 2, "bad value '2147483648' for --iters"},
      {{"bench", "--iters", "-1"}, 2, "for --iters"},
      {{"bench", "--iters", "0"}, 2, "for --iters"},
      {{"bench", "--warmup", "4294967297"}, 2, "for --warmup"},
      {{"bench", "--threads", "4294967297"}, 2, "for --threads"},
      {{"bench", "--threads", "5000"}, 2, "for --threads"},
      {{"bench", "--batch", "99999999999999999999"}, 2, "for --batch"},
      {{"bench", "--seqlen", "12abc"}, 2, "for --seqlen"},
      {{"bench", "--head-dim", " 64"}, 2, "for --head-dim"},
      {{"bench", "--window", "1"}, 2, "for --window"},
      {{"bench", "--window", "4294967296,0"}, 2, "for --window"},
      {{"bench", "--window", "-2,0"}, 2, "for --window"},
      {{"bench", "--softcap", "nan"}, 2, "for --softcap"},
      {{"bench", "--dtype", "int8"}, 2, "for --dtype"},
      {{"bench", "--iters"}, 2, "--iters needs a value"},
      {{"bench", "--batch", "2147483647", "--seqlen", "2147483647"}, 2, "more than 1 TiB"},
      {{"bench", "--frobnicate"}, 2, "unknown option '--frobnicate'"},
      {{"cache"}, 2, "usage: attnforge cache"},
      {{"cache", "list", "--bogus"}, 2, "unexpected argument '--bogus'"},
      {{"cache", "clear", "--json"}, 2, "unexpected argument '--json'"},
      {{"cache", "dir", "x"}, 2, "unexpected argument 'x'"},
      {{"cache", "purge"}, 2, "unknown option 'purge'"},
      {{"warmup", "--arch", "evil;80"}, 2, "--arch 'evil;80' is not an architecture"},
      {{"warmup", "--arch", "sm_80 "}, 2, "is not an architecture"},
      {{"warmup", "--arch", "sm_8"}, 2, "is not an architecture"},
      {{"warmup", "--arch", "compute_80a"}, 2, "is not an architecture"},
      {{"warmup", "--arch"}, 2, "--arch needs a value"},
      {{"info", "--verbose"}, 2, "unknown option '--verbose'"},
  };
  for (const Row& row : rows) {
    std::string joined;
    for (const std::string& a : row.args) joined += " " + a;
    SCOPED_TRACE("attnforge" + joined);
    const ProcessResult r = cli(row.args);
    ASSERT_TRUE(r.started);
    EXPECT_EQ(r.signal, 0) << describe(r);
    EXPECT_EQ(r.exit_code, row.exit_code) << describe(r);
    EXPECT_NE(r.errors.find(row.message), std::string::npos) << describe(r);
  }
}

TEST(Cli, SmallBenchRuns) {
  const ProcessResult r = cli({"bench", "--seqlen", "33", "--heads", "2", "--head-dim", "16", "--iters", "2",
                               "--warmup", "0", "--window", "8,-1", "--json"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_NE(r.output.find("\"iters\":2"), std::string::npos) << describe(r);
  EXPECT_NE(r.output.find("\"window\":[8,-1]"), std::string::npos) << describe(r);
}

TEST(Cli, DoctorOnAFifoDoesNotHang) {
  char pattern[] = "/tmp/af-cli-fifo-XXXXXX";
  ASSERT_NE(mkdtemp(pattern), nullptr);
  const std::string fifo = std::string(pattern) + "/ext.so";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const ProcessResult r = cli({"doctor", "so", fifo});
  unlink(fifo.c_str());
  rmdir(pattern);
  EXPECT_FALSE(r.timed_out) << describe(r);
  EXPECT_EQ(r.signal, 0) << describe(r);
  EXPECT_NE(r.exit_code, 0) << describe(r);
  EXPECT_NE((r.output + r.errors).find("not a regular file"), std::string::npos) << describe(r);
}

// A fresh directory for each test; ATTNFORGE_CACHE_DIR (inherited by the CLI) points into it.
class CliCache : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/af-cli-cache-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
    dir_ = root_ + "/cache";
    setenv("ATTNFORGE_CACHE_DIR", dir_.c_str(), 1);
  }
  void TearDown() override {
    unsetenv("ATTNFORGE_CACHE_DIR");
    std::system(("rm -rf '" + root_ + "'").c_str());
  }
  std::string root_, dir_;
};

// Kind 3: nothing is reported done that was not done.
TEST_F(CliCache, CachePathThatIsAFileFailsWarmupListAndClear) {
  std::ofstream(dir_) << "a file, not a directory";
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"warmup", "--arch", "sm_80"}, {"cache", "list"}, {"cache", "list", "--json"}, {"cache", "clear"}}) {
    SCOPED_TRACE(args[0] + " " + args[1]);
    const ProcessResult r = cli(args);
    EXPECT_EQ(r.exit_code, 1) << describe(r);
    EXPECT_NE(r.errors.find(dir_ + " is not a directory"), std::string::npos) << describe(r);
    EXPECT_EQ(r.output.find("ready"), std::string::npos) << describe(r);
    EXPECT_EQ(r.output.find("empty"), std::string::npos) << describe(r);
    EXPECT_EQ(r.output.find("cleared"), std::string::npos) << describe(r);
  }
}

TEST_F(CliCache, GroupWritableCacheIsRefused) {
  ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
  ASSERT_EQ(chmod(dir_.c_str(), 0777), 0);
  const ProcessResult list = cli({"cache", "list"});
  EXPECT_EQ(list.exit_code, 1) << describe(list);
  EXPECT_NE(list.errors.find("writable by group or others"), std::string::npos) << describe(list);
  const ProcessResult info = cli({"info"});
  EXPECT_EQ(info.exit_code, 0) << describe(info);
  EXPECT_NE(info.output.find("(not used: " + dir_ + " is writable by group or others"), std::string::npos)
      << describe(info);
}

// Kind 7: the two-call buffer protocol holds while another process keeps adding entries.
TEST_F(CliCache, ListWhileAnotherProcessWritesSucceeds) {
  const std::vector<char> payload(64, 'p');
  // Enough entries that the list outgrows the CLI's first buffer (4 KiB).
  for (int i = 0; i < 60; ++i)
    ASSERT_EQ(af::cuda::cache_store(af::cuda::make_cache_key("first " + std::to_string(i), {}, "sm_80", 12, 0), "first",
                                    payload),
              AF_OK);
  const pid_t writer = fork();
  ASSERT_GE(writer, 0);
  if (writer == 0) {
    alarm(60);
    for (int i = 0; i < 4000; ++i)
      af::cuda::cache_store(af::cuda::make_cache_key(std::to_string(i), {}, "sm_80", 12, 0), "writer", payload);
    _exit(0);
  }
  int failures = 0, lists = 0;
  for (; lists < 30; ++lists) {
    const ProcessResult r = cli({"cache", "list", "--json"});
    if (r.exit_code != 0) {
      ++failures;
      ADD_FAILURE() << describe(r);
    }
  }
  kill(writer, SIGKILL);
  waitpid(writer, nullptr, 0);
  EXPECT_EQ(failures, 0) << "of " << lists << " lists";
}

}  // namespace
