// The engine threads' thread policy on real OpenMP and OpenBLAS: what a batch is given is
// what LibTorch and OpenBLAS then use on that thread.
#include "server/engine/openmp_threads.h"

#include <dlfcn.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace careserve {
namespace {

std::string ThisThreadsName() {
  std::ifstream comm("/proc/self/task/" + std::to_string(syscall(SYS_gettid)) + "/comm");
  std::string name;
  std::getline(comm, name);
  return name;
}

int BlasThreads() {
  using Getter = int (*)();
  static const Getter get = reinterpret_cast<Getter>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get == nullptr ? -1 : get();
}

TEST(OpenMpThreadPolicyTest, AnEngineThreadIsNamedAndComputesWithTheThreadsItIsGiven) {
  OpenMpThreadPolicy policy(1);
  std::thread([&] {
    policy.StartThread(3);
    EXPECT_EQ(ThisThreadsName(), "care-runner-3");
    EXPECT_EQ(omp_get_max_threads(), 1);
    policy.UseThreads(2);
    EXPECT_EQ(omp_get_max_threads(), 2);
    int team = 0;
#pragma omp parallel
    {
#pragma omp single
      team = omp_get_num_threads();
    }
    EXPECT_EQ(team, 2);
    if (BlasThreads() >= 0) EXPECT_EQ(BlasThreads(), 2);  // linked with OpenBLAS
    policy.UseThreads(1);
    EXPECT_EQ(omp_get_max_threads(), 1);
    if (BlasThreads() >= 0) EXPECT_EQ(BlasThreads(), 1);
  }).join();
}

TEST(OpenMpThreadPolicyTest, StayingAwakeEndsWhenWokenOrAtTheLimit) {
  OpenMpThreadPolicy policy(1);
  std::thread([&] {
    policy.StartThread(0);
    const auto start = std::chrono::steady_clock::now();
    policy.StayAwake(2, [] { return false; }, absl::Milliseconds(50));
    const auto waited = std::chrono::steady_clock::now() - start;
    EXPECT_GE(waited, std::chrono::milliseconds(50));
    EXPECT_LT(waited, std::chrono::seconds(5));
    std::atomic<bool> wake{false};
    std::thread waker([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      wake = true;
    });
    const auto again = std::chrono::steady_clock::now();
    policy.StayAwake(2, [&] { return wake.load(); }, absl::Seconds(30));
    EXPECT_LT(std::chrono::steady_clock::now() - again, std::chrono::seconds(10));  // not the 30 s limit
    waker.join();
  }).join();
}

}  // namespace
}  // namespace careserve
