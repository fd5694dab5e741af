// care-engine-bench: the engine ceiling. Runs a repository's TorchScript in process with
// the server's own executor code (server/engine: optimize_for_inference, thread settings,
// denormal flushing), no gRPC, no preprocessing, at the given batch sizes.
//
//   care-engine-bench --model_dir=REPO/care_s0_imagenet --batch_sizes=1,4,8,16,32 --seconds=5 --json
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "server/common/cpus.h"
#include "server/common/memory.h"
#include "server/common/startup_env.h"
#include "server/engine/openmp_threads.h"
#include "server/engine/torch_model.h"
#include "server/preprocess/image.h"
#include "server/preprocess/resize.h"
#include "server/repository/model_config.h"

ABSL_FLAG(std::string, model_dir, "", "A model directory of a repository (config.json, <version>/model.pt).");
ABSL_FLAG(int, version, 1, "Model version.");
ABSL_FLAG(std::string, batch_sizes, "1,4,8,16,32", "Batch sizes to measure.");
ABSL_FLAG(double, seconds, 5, "Measured seconds per batch size (at least 3 batches).");
ABSL_FLAG(int, warmup_runs, 3, "Unmeasured batches first, per batch size.");
ABSL_FLAG(int, intra_op_threads, 0, "LibTorch intra-op threads (0: one per core), as care-server.");
ABSL_FLAG(int, instances, 1,
          "Batches running at the same time (as care-server's --engine_runners), each with "
          "intra_op_threads / instances threads; throughput is their sum.");
ABSL_FLAG(bool, keep_freed_memory, true,
          "glibc's malloc keeps freed activations for the next batch (false: its defaults); no effect when "
          "linked with tcmalloc (care-engine-bench; care-engine-bench-glibc is not), which keeps them "
          "through TCMALLOC_RELEASE_RATE=0 as care-server does.");
ABSL_FLAG(bool, optimize_for_inference, true, "As care-server's flag of the same name.");
ABSL_FLAG(int, lone_batch_spin_us, 5000,
          "As care-server's flag of the same name: with one instance on several threads, its threads stay "
          "awake this long after a batch for the next one (0: they sleep at once).");
ABSL_FLAG(double, idle_ms, 0,
          "Sleep this long between an executor's batches, as a server's engine idles between "
          "requests at low load (0: back to back).");
ABSL_FLAG(std::string, image, "",
          "An image file to feed every batch row, preprocessed as care-server does (default: "
          "standard-normal noise).");
ABSL_FLAG(bool, json, false, "One JSON object per batch size, one per line.");

namespace {

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(rank), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

}  // namespace

int main(int argc, char** argv) {
  careserve::ReexecWith(argv, {careserve::OpenMpSpinCount(), careserve::TcmallocReleaseRate()});  // as care-server
  absl::SetProgramUsageMessage("care-engine-bench --model_dir=DIR [--batch_sizes=1,4,8,16,32]");
  absl::ParseCommandLine(argc, argv);
  careserve::TurnOffAbseilDeadlockDetection();  // as care-server does
  const std::string dir = absl::GetFlag(FLAGS_model_dir);
  auto spec = careserve::ReadModelSpec(dir);
  if (!spec.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(spec.status().message()).c_str());
    return 1;
  }
  const int threads = absl::GetFlag(FLAGS_intra_op_threads) > 0 ? absl::GetFlag(FLAGS_intra_op_threads)
                                                                : careserve::DetectUsableCpus().count;
  const int instances = std::max(1, absl::GetFlag(FLAGS_instances));
  const int per_instance = std::max(1, threads / instances);
  if (absl::GetFlag(FLAGS_keep_freed_memory)) careserve::KeepFreedMemory();
  careserve::ConfigureTorch(per_instance, 1);
  // Each executor is set up as one of care-server's engine threads.
  careserve::OpenMpThreadPolicy policy(per_instance);
  const absl::Duration spin = absl::Microseconds(std::max(0, absl::GetFlag(FLAGS_lone_batch_spin_us)));
  careserve::EngineOptions options;
  options.optimize = absl::GetFlag(FLAGS_optimize_for_inference);
  const std::string path = absl::StrCat(dir, "/", absl::GetFlag(FLAGS_version), "/model.pt");
  absl::StatusOr<std::unique_ptr<careserve::TorchModel>> model;
  std::thread([&] {  // as care-server loads: on a thread set up like an engine thread
    policy.StartThread(0);
    model = careserve::TorchModel::Load(path, options);
  }).join();
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const int h = spec->input.height, w = spec->input.width;
  const double idle_ms = absl::GetFlag(FLAGS_idle_ms);
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (const auto& text : absl::StrSplit(absl::GetFlag(FLAGS_batch_sizes), ',')) {
    int batch = 0;
    if (!absl::SimpleAtoi(text, &batch) || batch < 1) {
      std::fprintf(stderr, "error: bad batch size \"%s\"\n", std::string(text).c_str());
      return 64;
    }
    // A normalised-photo-like input: values of the right range (random weights and
    // all-zero inputs can take slow denormal paths a real input never does).
    std::vector<float> input(static_cast<size_t>(batch) * 3 * h * w);
    for (float& v : input) v = normal(rng);
    if (!absl::GetFlag(FLAGS_image).empty()) {
      std::ifstream file(absl::GetFlag(FLAGS_image), std::ios::binary);
      care::vision::v1::Image image;
      image.set_encoded(std::string(std::istreambuf_iterator<char>(file), {}));
      auto decoded = careserve::DecodeForInput(image, careserve::DecodeLimits{}, spec->input);
      if (!decoded.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(decoded.status().message()).c_str());
        return 1;
      }
      const careserve::ResizedImage resized =
          careserve::ResizeForInput(decoded->rgb, spec->input, decoded->source_width, decoded->source_height);
      for (int i = 0; i < batch; ++i) careserve::NormalizeInto(resized, spec->input, input.data() + i * 3 * h * w);
    }
    std::vector<std::vector<double>> per(instances);
    std::vector<std::string> errors(instances);
    std::chrono::steady_clock::time_point start;
    std::atomic<int> ready{0};
    auto executor = [&](int i) {
      policy.StartThread(i);
      policy.UseThreads(per_instance);
      for (int r = 0; r < absl::GetFlag(FLAGS_warmup_runs); ++r) (void)(*model)->Run(input.data(), batch, h, w);
      // Measure from when every executor is warm.
      if (ready.fetch_add(1) + 1 == instances) start = std::chrono::steady_clock::now();
      while (ready.load() < instances) std::this_thread::yield();
      const auto begin = std::chrono::steady_clock::now();
      while (per[i].size() < 3 ||
             std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count() < absl::GetFlag(FLAGS_seconds)) {
        const auto t = std::chrono::steady_clock::now();
        auto outputs = (*model)->Run(input.data(), batch, h, w);
        if (!outputs.ok()) {
          errors[i] = std::string(outputs.status().message());
          return;
        }
        per[i].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
        if (idle_ms > 0) {
          // As care-server after a lone batch: its threads stay awake up to the spin limit.
          const auto idle_end = std::chrono::steady_clock::now() + std::chrono::duration<double, std::milli>(idle_ms);
          if (instances == 1 && per_instance > 1 && spin > absl::ZeroDuration()) {
            policy.StayAwake(
                per_instance, [&] { return std::chrono::steady_clock::now() >= idle_end; }, spin);
          }
          std::this_thread::sleep_until(idle_end);
        }
      }
    };
    std::vector<std::thread> pool;
    for (int i = 0; i < instances; ++i) pool.emplace_back(executor, i);
    for (std::thread& t : pool) t.join();
    for (const std::string& e : errors) {
      if (!e.empty()) {
        std::fprintf(stderr, "error: %s\n", e.c_str());
        return 1;
      }
    }
    std::vector<double> ms;
    for (const auto& v : per) ms.insert(ms.end(), v.begin(), v.end());
    const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double throughput = ms.size() * batch / total_s;
    if (absl::GetFlag(FLAGS_json)) {
      std::printf("{\"model\": \"%s\", \"batch\": %d, \"threads\": %d, \"instances\": %d, \"optimize\": %s, \"batches\": %zu, "
                  "\"throughput_ips\": %.3f, \"idle_ms\": %.3f, \"batch_ms\": {\"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"min\": %.3f}}\n",
                  spec->name.c_str(), batch, threads, instances, options.optimize ? "true" : "false", ms.size(), throughput,
                  idle_ms, std::accumulate(ms.begin(), ms.end(), 0.0) / ms.size(), Percentile(ms, 50), Percentile(ms, 90), Percentile(ms, 99), *std::min_element(ms.begin(), ms.end()));
    } else {
      std::printf("%s batch %2d: %8.2f img/s, batch latency p50 %.2f ms p99 %.2f ms (%zu batches, %d threads, %d instances)\n",
                  spec->name.c_str(), batch, throughput, Percentile(ms, 50), Percentile(ms, 99), ms.size(), threads, instances);
    }
    std::fflush(stdout);
  }
  return 0;
}
