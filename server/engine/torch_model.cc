#include "server/engine/torch_model.h"

#include <dlfcn.h>

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <exception>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/strings/str_join.h"
#include "server/common/thread_name.h"
#include "torch/script.h"
#include "ATen/Parallel.h"
#include <omp.h>
#include "torch/version.h"

namespace careserve {

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

RowOutputs CopyRow(const BatchOutputs& outputs, int row) {
  RowOutputs rows;
  rows.reserve(outputs.tensors.size());
  for (const TensorView& t : outputs.tensors) {
    OutputRow r;
    r.dtype = t.dtype;
    r.shape.assign(t.shape.begin() + 1, t.shape.end());
    int64_t n = 1;
    for (int64_t d : r.shape) n *= d;
    if (t.dtype == DType::kFloat32) {
      r.f32.assign(t.f32() + row * n, t.f32() + (row + 1) * n);
    } else {
      r.i64.assign(t.i64() + row * n, t.i64() + (row + 1) * n);
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

namespace {

// The intra-op thread count of the calling thread only. LibTorch (OpenMP build) sizes each
// parallel region from the calling thread's OpenMP nthreads ICV, set once per thread from
// the process value on first use; oneDNN reads the same ICV. Initialise first so that the
// lazy initialisation cannot undo this.
void SetThreadIntraOpThreads(int threads) {
  (void)at::get_num_threads();
  omp_set_num_threads(threads);
}

// Every LibTorch computation of the process (loading, optimising, running batches) runs on
// a fixed set of runner threads, `runners` of them with `threads` intra-op threads each.
//
// Why: GNU OpenMP keeps one thread team per thread that starts parallel work, and once its
// threads outnumber the CPUs it stops spinning between parallel regions in every team and
// wakes workers through futexes instead. One team per model executor (three models) plus
// the loading thread's made every batch ~30% slower (CARE-S0 224 batch 8 on 2 cores: 44
// img/s from a second thread vs 60 from the only one). Runners keep the teams to
// runners x (threads - 1) workers, and they also stop models from oversubscribing the
// cores against each other: at most `runners` batches run at once, whatever the models.
class Runners {
 public:
  static Runners& Get() {
    static Runners* runners = new Runners();  // never destroyed: threads live for the process
    return *runners;
  }

  void Configure(int runners, int threads, int lone_threads, int lone_spin_us) {
    absl::MutexLock lock(&mu_);
    if (!threads_.empty()) return;  // already running
    count_ = std::max(1, runners);
    per_runner_threads_ = std::max(1, threads);
    lone_threads_ = std::max(per_runner_threads_, lone_threads);
    lone_spin_us_ = std::max(0, lone_spin_us);
  }

  // Runs `f` on a runner and returns when it has run.
  void Call(absl::FunctionRef<void()> f) {
    absl::Notification done;
    Job job{&f, &done};
    {
      absl::MutexLock lock(&mu_);
      // Under mu_: a runner deciding to spin reads it under mu_ too, so a job submitted
      // before that decision is one it sees (queued), and any later one ends the spin.
      calls_.fetch_add(1, std::memory_order_release);
      if (threads_.empty()) {
        slots_ = std::vector<Slot>(count_);
        for (int i = 0; i < count_; ++i) threads_.emplace_back([this, i] { Loop(i); });
        for (std::thread& t : threads_) t.detach();
      }
      if (!idle_.empty()) {
        // The runner that went idle last: its core's caches still hold this work's
        // activations and allocations (CARE-S0 224 batch 1: ~1.2 ms less per batch than
        // letting whichever runner wakes first take it). A lone job goes to runner 0,
        // the one that may use every core (see Loop).
        auto pick = idle_.end() - 1;
        if (Busy() == 0 && lone_threads_ > per_runner_threads_) {
          if (auto zero = std::find(idle_.begin(), idle_.end(), 0); zero != idle_.end()) pick = zero;
        }
        Slot& slot = slots_[*pick];
        idle_.erase(pick);
        slot.job = job;
        slot.full = true;
      } else {
        queue_.push_back(job);
      }
    }
    done.WaitForNotification();
  }

 private:
  struct Job {
    absl::FunctionRef<void()>* f;
    absl::Notification* done;
  };
  struct Slot {
    Job job{};
    bool full = false;
  };

  void Loop(int index) {
    int threads;
    int lone_spin_us;
    {
      absl::MutexLock lock(&mu_);
      threads = per_runner_threads_;
      lone_spin_us = lone_spin_us_;
    }
    at::globalContext().setFlushDenormal(true);  // MXCSR is per thread
    // Named for `top -H` and perf; its OpenMP team threads inherit the name.
    NameThisThread(absl::StrCat("care-runner-", index));
    SetThreadIntraOpThreads(threads);
    int current = threads;
    Job job;
    bool have;  // a job taken from the queue, to run next
    {
      // Jobs queue only while no runner is idle; one may have come before this runner.
      absl::MutexLock lock(&mu_);
      have = TakeQueuedOrGoIdle(index, &job);
    }
    for (;;) {
      int want;
      {
        absl::MutexLock lock(&mu_);
        if (!have) {
          Slot& slot = slots_[index];
          mu_.Await(absl::Condition(&slot.full));
          job = slot.job;
          slot.full = false;
        }
        // A lone job (no other runner busy, nothing waiting) on runner 0 gets every core:
        // with one request at a time the other runners' cores would sit idle. Only runner
        // 0 ever has a bigger OpenMP team, so the teams' threads stay within the cores
        // (GNU OpenMP stops spinning between parallel regions beyond that). A job that
        // arrives meanwhile starts on another runner at once and shares the cores until
        // this one ends.
        want = index == 0 && Busy() == 1 && queue_.empty() ? lone_threads_ : per_runner_threads_;
        SetBlasThreads(want);
      }
      if (want != current) {
        omp_set_num_threads(want);
        current = want;
      }
      (*job.f)();
      absl::Notification* done = job.done;
      bool spin = false;
      uint64_t calls = 0;
      {
        // Idle again (or on to the next queued job) before the caller hears of this one:
        // its next job must find this runner idle.
        absl::MutexLock lock(&mu_);
        have = TakeQueuedOrGoIdle(index, &job);
        // A lone batch on several threads, and still nothing else to do: see SpinAwake.
        spin = !have && lone_spin_us > 0 && current > 1 && current == lone_threads_ && Busy() == 0 && !spinning_;
        calls = calls_.load(std::memory_order_acquire);
        spinning_ = spin;
      }
      done->Notify();
      if (spin) {
        SpinAwake(current, calls, lone_spin_us);
        absl::MutexLock lock(&mu_);
        spinning_ = false;
      }
    }
  }

  // After a lone batch (e.g. each request at concurrency 1): this runner and its OpenMP
  // team stay awake, spinning in a parallel region and yielding to any other thread, until
  // the next job is submitted to any runner or `micros` pass; then they leave it at once,
  // and the team thread is still spinning in libgomp (GOMP_SPINCOUNT) when the runner's
  // next batch starts its first parallel region. Otherwise the team thread sleeps between
  // requests and its vCPU halts, and the next batch first wakes both.
  // Measured (docs/service.md, "Staying awake after a lone batch"): concurrency 1 p50
  // -0.2 to -0.6 ms, concurrency 2 and 4 unchanged. libgomp's own longer spinning
  // (GOMP_SPINCOUNT=300000) gained as much at concurrency 1 but cost ~2 ms at 2 and 4:
  // it spins after every parallel region, whether or not a batch on another runner needs
  // the core; this ends as soon as any job is submitted.
  // One runner at a time (spinning_); its team reads only the atomics below. Nothing of
  // this frame is shared with the team: libgomp hands shared variables over through
  // synchronisation ThreadSanitizer cannot see, atomics it sees.
  void SpinAwake(int threads, uint64_t calls, int micros) {
    spin_calls_.store(calls, std::memory_order_relaxed);
    spin_deadline_ns_.store(NowNanos() + int64_t{micros} * 1000, std::memory_order_relaxed);
    spin_stop_.store(false, std::memory_order_release);
#pragma omp parallel num_threads(threads)
    SpinAwakeInTeam();
  }

  static void SpinAwakeInTeam() {
    Runners& r = Get();
    if (omp_get_thread_num() == 0) {
      while (r.calls_.load(std::memory_order_acquire) == r.spin_calls_.load(std::memory_order_relaxed) &&
             NowNanos() < r.spin_deadline_ns_.load(std::memory_order_relaxed)) {
        sched_yield();
      }
      r.spin_stop_.store(true, std::memory_order_release);
    } else {
      while (!r.spin_stop_.load(std::memory_order_acquire)) sched_yield();
    }
  }

  static int64_t NowNanos() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // The next queued job into *job (true), or else runner `index` joins the idle ones.
  bool TakeQueuedOrGoIdle(int index, Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (queue_.empty()) {
      idle_.push_back(index);
      return false;
    }
    *job = queue_.front();
    queue_.pop_front();
    return true;
  }

  // Runners not idle: running a job, or handed one and waking up.
  int Busy() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return count_ - static_cast<int>(idle_.size()); }

  // OpenBLAS (LibTorch's BLAS here, for matrix products) runs a product on as many threads
  // as its process-wide count says. The server links its OpenMP build (CMakeLists.txt,
  // care_use_openmp_blas), which takes those threads from the calling runner's OpenMP
  // team. A batch sets the count to the threads it has: one normally, all of a lone
  // batch's. The count is process-wide, so the batch that starts last sets it (a lone batch
  // joined by another continues single-threaded). With the pthread build (the system's
  // usual libblas.so.3), OpenBLAS keeps a pool of its own whose idle workers spin for ~0.1 s
  // after each product. Measured (care-engine-bench, CARE-S0 224, two runs each, pthread
  // build): 2 runners x 1 thread, batch 8: 91.8/87.8 img/s with OpenBLAS's default count,
  // 104.8/99.3 with one thread; one runner x 2 threads, batch 1: p50 20.5/20.1 ms with two,
  // 22.3/22.3 with one. docs/service.md (OpenBLAS threads) has the OpenMP build's numbers.
  void SetBlasThreads(int threads) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    using Setter = void (*)(int);
    static const Setter set = reinterpret_cast<Setter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (set == nullptr) return;  // another BLAS
    if (threads == blas_threads_) return;
    set(threads);
    blas_threads_ = threads;
  }

  std::atomic<uint64_t> calls_{0};  // jobs submitted, ever (SpinAwake watches it)
  std::atomic<uint64_t> spin_calls_{0};       // SpinAwake's: calls_ when it began,
  std::atomic<int64_t> spin_deadline_ns_{0};  // when it ends at the latest (steady clock),
  std::atomic<bool> spin_stop_{false};        // and the team thread's signal to leave
  absl::Mutex mu_;
  int blas_threads_ ABSL_GUARDED_BY(mu_) = 0;
  int count_ ABSL_GUARDED_BY(mu_) = 1;
  int per_runner_threads_ ABSL_GUARDED_BY(mu_) = 1;
  int lone_threads_ ABSL_GUARDED_BY(mu_) = 1;     // a lone job's intra-op threads, on runner 0
  int lone_spin_us_ ABSL_GUARDED_BY(mu_) = 0;     // SpinAwake's limit after a lone job
  bool spinning_ ABSL_GUARDED_BY(mu_) = false;    // a runner is in SpinAwake
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);     // jobs no runner has taken yet
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);   // a job handed to an idle runner
  std::vector<int> idle_ ABSL_GUARDED_BY(mu_);     // idle runners, the last one idle last
};

}  // namespace

struct TorchModel::Impl {
  torch::jit::Module module;
};

TorchModel::TorchModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TorchModel::~TorchModel() = default;

namespace {

// c10::Error messages carry a C++ backtrace after the first line; keep the first.
std::string FirstLine(const char* what) {
  std::string text(what);
  const size_t end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

absl::Status AddOutput(const c10::IValue& value, std::vector<torch::Tensor>* tensors) {
  if (!value.isTensor()) {
    return absl::InternalError(absl::StrCat("the model returned a ", value.tagKind(), " where a tensor was expected"));
  }
  torch::Tensor t = value.toTensor();
  if (t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kInt64) {
    tensors->push_back(t.contiguous());
  } else if (t.is_floating_point()) {
    tensors->push_back(t.to(torch::kFloat32).contiguous());
  } else {
    tensors->push_back(t.to(torch::kInt64).contiguous());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TorchModel>> TorchModel::Load(const std::string& path, const EngineOptions& options) {
  auto impl = std::make_unique<Impl>();
  absl::Status status;
  Runners::Get().Call([&] {
    try {
      impl->module = torch::jit::load(path, torch::kCPU);
      impl->module.eval();
      if (options.optimize) impl->module = torch::jit::optimize_for_inference(impl->module);
    } catch (const std::exception& e) {
      status = absl::InvalidArgumentError(absl::StrCat("cannot load TorchScript ", path, ": ", FirstLine(e.what())));
    }
  });
  if (!status.ok()) return status;
  return std::unique_ptr<TorchModel>(new TorchModel(std::move(impl)));
}

absl::StatusOr<BatchOutputs> TorchModel::Run(float* input, int batch, int height, int width) const {
  absl::StatusOr<BatchOutputs> result;
  Runners::Get().Call([&] { result = RunHere(input, batch, height, width); });
  return result;
}

absl::StatusOr<BatchOutputs> TorchModel::RunHere(float* input, int batch, int height, int width) const {
  try {
    c10::InferenceMode inference;
    torch::Tensor x = torch::from_blob(input, {batch, 3, height, width}, torch::kFloat32);
    c10::IValue result = impl_->module.forward({x});
    auto tensors = std::make_shared<std::vector<torch::Tensor>>();
    if (result.isTuple()) {
      for (const c10::IValue& element : result.toTupleRef().elements()) {
        absl::Status status = AddOutput(element, tensors.get());
        if (!status.ok()) return status;
      }
    } else {
      absl::Status status = AddOutput(result, tensors.get());
      if (!status.ok()) return status;
    }
    BatchOutputs out;
    out.intra_op_threads = at::get_num_threads();
    for (const torch::Tensor& t : *tensors) {
      TensorView view;
      view.data = t.data_ptr();
      view.dtype = t.scalar_type() == torch::kInt64 ? DType::kInt64 : DType::kFloat32;
      view.shape.assign(t.sizes().begin(), t.sizes().end());
      out.tensors.push_back(std::move(view));
    }
    out.storage = std::move(tensors);
    return out;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("inference failed on a batch of ", batch, " at ", height, "x", width,
                                            ": ", FirstLine(e.what())));
  }
}

void ConfigureTorch(int intra_op_threads, int runners, int inter_op_threads, int lone_threads, int lone_spin_us) {
  at::globalContext().setFlushDenormal(true);
  // The process value: what threads that first use LibTorch outside the runners start with.
  if (intra_op_threads > 0) at::set_num_threads(intra_op_threads);
  Runners::Get().Configure(runners, intra_op_threads, lone_threads, lone_spin_us);
  // Settable once, before any inter-op work has started.
  if (inter_op_threads > 0) {
    try {
      at::set_num_interop_threads(inter_op_threads);
    } catch (const std::exception&) {
    }
  }
}

std::string TorchVersion() { return TORCH_VERSION; }

std::string BlasLibrary() {
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info info{};
  const std::string file = sgemm != nullptr && dladdr(sgemm, &info) != 0 && info.dli_fname != nullptr
                               ? info.dli_fname
                               : "-";
  using Parallel = int (*)();
  const auto parallel = reinterpret_cast<Parallel>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
  if (parallel == nullptr) return absl::StrCat("unknown ", file);
  switch (parallel()) {
    case 0: return absl::StrCat("openblas-sequential ", file);
    case 1: return absl::StrCat("openblas-pthreads ", file);
    case 2: return absl::StrCat("openblas-openmp ", file);
  }
  return absl::StrCat("openblas ", file);
}

}  // namespace careserve
