// A fork()ed child gets a working CPU thread pool (issue 15, kind 1): after a
// first multi-threaded call the parent's workers do not exist in the child,
// which used to wait for them forever. Each child runs under alarm(), so a
// hang shows as a failure instead of a stuck test.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "attnforge/attnforge.h"
#include "common/thread_pool.h"

namespace {

constexpr int kChildSeconds = 30;

// Runs body in a forked child; "" when it returned true, else what went wrong.
std::string in_child(const std::function<bool()>& body) {
  const pid_t pid = fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    alarm(kChildSeconds);
    _exit(body() ? 0 : 1);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return "waitpid failed";
  if (WIFSIGNALED(status))
    return WTERMSIG(status) == SIGALRM ? "the child hung (no answer in 30 s)"
                                       : "the child died of signal " + std::to_string(WTERMSIG(status));
  return WEXITSTATUS(status) == 0 ? "" : "the child computed a wrong answer";
}

// Causal fp32 attention, B = 2, S = 257, H = 4, D = 64: large enough to use every worker.
struct Problem {
  static constexpr int64_t B = 2, S = 257, H = 4, D = 64;
  std::vector<float> q, k, v;
  Problem() : q(B * S * H * D), k(q.size()), v(q.size()) {
    std::mt19937 rng(15);
    std::normal_distribution<float> normal;
    for (std::vector<float>* x : {&q, &k, &v})
      for (float& e : *x) e = normal(rng);
  }
  af_status run(std::vector<float>* out) const {
    out->assign(q.size(), std::nanf(""));
    af_tensor t[4]{};
    const void* data[4] = {q.data(), k.data(), v.data(), out->data()};
    for (int i = 0; i < 4; ++i) {
      t[i].data = const_cast<void*>(data[i]);
      t[i].dtype = AF_DTYPE_FLOAT32;
      t[i].device_type = AF_DEVICE_CPU;
      t[i].rank = 4;
      const int64_t shape[4] = {B, S, H, D}, strides[4] = {S * H * D, H * D, D, 1};
      std::memcpy(t[i].shape, shape, sizeof shape);
      std::memcpy(t[i].strides, strides, sizeof strides);
    }
    af_attention_args args{};
    args.struct_size = sizeof args;
    args.q = &t[0], args.k = &t[1], args.v = &t[2], args.out = &t[3];
    args.causal = 1;
    args.backend = AF_BACKEND_CPU;
    return af_attention_forward(&args);
  }
};

class ThreadPoolFork : public ::testing::Test {
 protected:
  void SetUp() override { threads_ = af_get_num_threads(); }
  void TearDown() override { af_set_num_threads(threads_); }
  int32_t threads_ = 0;
};

TEST_F(ThreadPoolFork, ChildComputesTheParentsAnswerAfterFirstUse) {
  ASSERT_EQ(af_set_num_threads(4), AF_OK);
  const Problem problem;
  std::vector<float> expected;
  ASSERT_EQ(problem.run(&expected), AF_OK) << af_last_error_message();
  const std::string outcome = in_child([&] {
    std::vector<float> out;
    // Twice: the pool the child builds must also serve a second job.
    for (int round = 0; round < 2; ++round)
      if (problem.run(&out) != AF_OK || std::memcmp(out.data(), expected.data(), out.size() * sizeof(float)) != 0)
        return false;
    return af_get_num_threads() == 4;  // the child keeps the parent's setting
  });
  EXPECT_EQ(outcome, "");
  // The parent's pool is unaffected.
  std::vector<float> again;
  ASSERT_EQ(problem.run(&again), AF_OK);
  EXPECT_EQ(std::memcmp(again.data(), expected.data(), again.size() * sizeof(float)), 0);
}

TEST_F(ThreadPoolFork, GrandchildAlsoGetsAWorkingPool) {
  ASSERT_EQ(af_set_num_threads(3), AF_OK);
  auto sum = [] {
    std::atomic<int64_t> total{0};
    af::parallel_for(100000, 1000, [&](int64_t begin, int64_t end) {
      int64_t s = 0;
      for (int64_t i = begin; i < end; ++i) s += i;
      total += s;
    });
    return total.load() == int64_t(100000) * 99999 / 2;
  };
  ASSERT_TRUE(sum());
  EXPECT_EQ(in_child([&] { return sum() && in_child(sum).empty() && sum(); }), "");
}

// fork() from one thread while another keeps the pool busy: the child must not
// inherit a pool that is half-way through a job.
TEST_F(ThreadPoolFork, ForkWhileAnotherThreadRunsAJob) {
  ASSERT_EQ(af_set_num_threads(4), AF_OK);
  const Problem problem;
  std::vector<float> expected;
  ASSERT_EQ(problem.run(&expected), AF_OK);
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    std::vector<float> out;
    while (!stop) problem.run(&out);
  });
  std::string outcome;
  for (int i = 0; i < 5 && outcome.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    outcome = in_child([&] {
      std::vector<float> out;
      return problem.run(&out) == AF_OK && std::memcmp(out.data(), expected.data(), out.size() * sizeof(float)) == 0;
    });
  }
  stop = true;
  busy.join();
  EXPECT_EQ(outcome, "");
}

}  // namespace
