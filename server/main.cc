// care-server: serves a model repository over gRPC (care.vision.v1.VisionService, the Open
// Inference Protocol's inference.GRPCInferenceService, health, reflection) with dynamic
// batching, and Prometheus metrics over HTTP.
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "opencv2/core.hpp"
#include "server/api/open_streams.h"
#include "server/api/http_service.h"
#include "server/api/oip_service.h"
#include "server/api/vision_service.h"
#include "server/common/cpus.h"
#include "server/common/log.h"
#include "server/common/startup_env.h"
#include "server/common/thread_pool.h"
#include "server/common/tls.h"
#include "server/engine/openmp_threads.h"
#include "server/engine/torch_model.h"
#include "server/metrics/metrics.h"
#include "server/metrics/metrics_endpoint.h"
#include "server/preprocess/image.h"
#include "server/repository/model_repository.h"
#include "server/scheduler/batch_scheduler.h"

ABSL_FLAG(std::string, model_repository, "", "Model repository directory (one folder per model; see docs/service.md).");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on for gRPC and metrics.");
ABSL_FLAG(int, port, 50051, "gRPC port (0: any free port, logged at startup).");
ABSL_FLAG(int, http_port, 8000,
          "Open Inference Protocol (KServe v2) HTTP/REST port (0: any free port, logged at startup; -1: no HTTP).");
ABSL_FLAG(int, http_threads, 128,
          "HTTP handler threads: each serves one connection at a time (waiting for its request's answer, and for "
          "the next request of a keep-alive connection for up to 5 s); further connections wait for one.");
ABSL_FLAG(bool, http_console, true,
          "Serve the web console at / on --http_port (docs/console.md): the models, their live "
          "request rate and latency, and any model tried on a dropped image, through the HTTP API.");
ABSL_FLAG(int, metrics_port, 9091, "Prometheus /metrics port (0: any free port; -1: no metrics endpoint).");
ABSL_FLAG(int, engine_runners, 0,
          "Batches computed at the same time, across all models: the shared scheduler's engine threads, on which "
          "all LibTorch work runs (0: one per usable CPU, each batch on one core: the most throughput; 1 with all cores "
          "per batch). A model's batching.instances caps its own batches at once.");
ABSL_FLAG(std::string, batch_policy, "adaptive",
          "How batches are formed: adaptive (a free engine thread never waits; it sizes the batch from the queue "
          "and the model's measured batch times so that what is queued is done soonest) or fixed_delay (wait up "
          "to batching.max_queue_delay_us for batching.max_batch_size requests, as TF Serving and Triton do).");
ABSL_FLAG(int, intra_op_threads, 0,
          "LibTorch intra-op threads per batch (0: the usable CPUs divided among --engine_runners, at least one). "
          "LibTorch's own default here is 1.");
ABSL_FLAG(int, lone_batch_threads, 0,
          "Intra-op threads for a batch that runs alone (no other batch running or waiting), e.g. every "
          "request at concurrency 1 (0: one per usable CPU, for the models whose warm-up measured that faster; N: N "
          "threads for every model; 1, or at most --intra_op_threads: the same as any batch).");
ABSL_FLAG(int, lone_batch_spin_us, 5000,
          "After a batch that ran alone, its engine thread (and its OpenMP team) stay awake (spinning, yielding "
          "to any other thread) until the next batch is submitted or this many microseconds pass, instead of "
          "sleeping at once: a concurrency-1 request then starts on awake cores (0: off; it costs idle CPU "
          "time, so consider 0 under a CPU limit below the cores; at most 1000000).");
ABSL_FLAG(int, inter_op_threads, 1, "LibTorch inter-op threads (the models here have no parallel branches).");
ABSL_FLAG(int, preprocess_threads, 0,
          "Worker threads: decoding and resizing images, dense-task answers (0: half the usable CPUs, at least one; "
          "they share the cores with LibTorch's intra-op threads).");
ABSL_FLAG(bool, reduced_jpeg_decode, true,
          "Decode JPEGs much larger than a model's input at 1/2, 1/4 or 1/8 size (libjpeg-turbo DCT scaling), "
          "keeping twice the resized image's pixels (docs/service.md).");
ABSL_FLAG(int, max_message_bytes, 32 << 20,
          "Largest request or response message, in bytes; larger requests get RESOURCE_EXHAUSTED from gRPC "
          "before they are read.");
ABSL_FLAG(int64_t, max_image_pixels, 40'000'000, "Largest image accepted, in pixels (width x height).");
ABSL_FLAG(int, warmup_runs, 2, "Warm-up passes per model version (batch 1 and max_batch_size) before serving.");
ABSL_FLAG(bool, optimize_for_inference, true, "Run torch::jit::optimize_for_inference on every model after loading.");
ABSL_FLAG(std::string, torchvision_ops, "auto",
          "torchvision's operator library (nms, roi_align) for Mask R-CNN models: auto (Debian's "
          "python3-torchvision, or the container's copy), a path, or empty for none.");
ABSL_FLAG(bool, strict, false, "Exit if any model or version fails to load (default: report it and serve the rest).");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(10),
          "On SIGTERM/SIGINT: health turns NOT_SERVING, new requests get UNAVAILABLE, and requests in flight "
          "have this long to finish before they are cancelled and the server exits (0).");
ABSL_FLAG(std::string, log_level, "info", "debug | info | warning | error.");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS (with --tls_key). Default: plaintext.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: mutual TLS, clients must present a certificate it signed (needs --tls_cert).");

namespace careserve {
namespace {

int Run() {
  TurnOffAbseilDeadlockDetection();  // before the first lock of ours or gRPC's
  LogLevel level;
  if (!ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::fprintf(stderr, "--log_level must be debug, info, warning or error\n");
    return 2;
  }
  SetLogLevel(level);
  const std::string repository_dir = absl::GetFlag(FLAGS_model_repository);
  if (repository_dir.empty()) {
    Log(LogLevel::kError, "--model_repository is required");
    return 2;
  }
  // The default thread counts follow the CPUs this process may use (affinity mask, cgroup CPU
  // quota: a container's limit), not the node's cores.
  const UsableCpus cpus = DetectUsableCpus();
  const int runners = absl::GetFlag(FLAGS_engine_runners) > 0 ? absl::GetFlag(FLAGS_engine_runners) : cpus.count;
  if (absl::GetFlag(FLAGS_engine_runners) < 0 || runners > 64) {
    Log(LogLevel::kError, "--engine_runners must be between 0 and 64",
        {{"engine_runners", std::to_string(absl::GetFlag(FLAGS_engine_runners))}});
    return 2;
  }
  const int intra = absl::GetFlag(FLAGS_intra_op_threads) > 0 ? absl::GetFlag(FLAGS_intra_op_threads)
                                                             : std::max(1, cpus.count / runners);
  // Half the cores: the pool runs while the runners compute earlier batches. Measured on 2
  // cores, CARE-S0 224 at concurrency 64: 1 thread 92.2/91.3 img/s, 2 threads 84.9/88.7
  // (docs/service.md).
  const int pre = absl::GetFlag(FLAGS_preprocess_threads) > 0 ? absl::GetFlag(FLAGS_preprocess_threads)
                                                               : std::max(1, cpus.count / 2);
  const int64_t max_pixels = absl::GetFlag(FLAGS_max_image_pixels);
  if (max_pixels < 1) {
    Log(LogLevel::kError, "--max_image_pixels must be positive");
    return 2;
  }

  // SIGINT/SIGTERM are taken by sigwait below; every thread started from here inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const int lone = absl::GetFlag(FLAGS_lone_batch_threads) > 0 ? absl::GetFlag(FLAGS_lone_batch_threads)
                                                               : cpus.count;
  const int lone_spin_us = absl::GetFlag(FLAGS_lone_batch_spin_us);
  if (lone_spin_us < 0 || lone_spin_us > 1'000'000) {
    Log(LogLevel::kError, "--lone_batch_spin_us must be between 0 and 1000000",
        {{"lone_batch_spin_us", std::to_string(lone_spin_us)}});
    return 2;
  }
  absl::StatusOr<BatchPolicy> batch_policy = ParseBatchPolicy(absl::GetFlag(FLAGS_batch_policy));
  if (!batch_policy.ok()) {
    Log(LogLevel::kError, "--batch_policy must be adaptive or fixed_delay",
        {{"batch_policy", absl::GetFlag(FLAGS_batch_policy)}});
    return 2;
  }
  ConfigureTorch(intra, absl::GetFlag(FLAGS_inter_op_threads));
  std::string ops_error;
  const std::string ops_library = LoadTorchvisionOps(absl::GetFlag(FLAGS_torchvision_ops), &ops_error);
  if (ops_library.empty() && absl::GetFlag(FLAGS_torchvision_ops) != "auto" &&
      !absl::GetFlag(FLAGS_torchvision_ops).empty()) {
    Log(LogLevel::kError, "cannot load --torchvision_ops", {{"error", ops_error}});
    return 2;
  }
  OpenMpThreadPolicy thread_policy(intra);
  SchedulerOptions scheduler_options;
  scheduler_options.engine_threads = runners;
  scheduler_options.threads_per_batch = intra;
  scheduler_options.lone_batch_threads = std::max(lone, intra);
  scheduler_options.lone_batch_where_faster = absl::GetFlag(FLAGS_lone_batch_threads) == 0;
  scheduler_options.lone_batch_spin = absl::Microseconds(lone_spin_us);
  SharedBatchScheduler scheduler(scheduler_options, &thread_policy);
  cv::setNumThreads(0);  // requests are decoded in parallel on our pool, each on one thread

  ServerMetrics metrics;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint;
  int metrics_port = -1;
  if (absl::GetFlag(FLAGS_metrics_port) >= 0) {
    auto endpoint = MetricsEndpoint::Start(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port),
                                           {metrics.registry(), MakeProcessCollector()});
    if (!endpoint.ok()) {
      Log(LogLevel::kError, "cannot serve metrics", {{"error", std::string(endpoint.status().message())}});
      return 1;
    }
    metrics_endpoint = std::move(*endpoint);
    metrics_port = metrics_endpoint->port();
  }

  ThreadPool preprocess(pre, "care-preprocess");
  DecodeLimits decode_limits;
  decode_limits.max_pixels = max_pixels;
  decode_limits.reduced_jpeg_decode = absl::GetFlag(FLAGS_reduced_jpeg_decode);
  Frontend frontend(&metrics, &preprocess, decode_limits);
  VisionService service(&frontend);
  OipService oip(&frontend);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  const ServerTls tls{absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_client_ca)};
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeServerCredentials(tls);
  if (!credentials.ok()) {
    Log(LogLevel::kError, "cannot set up TLS", {{"error", std::string(credentials.status().message())}});
    return 2;
  }
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port)), *credentials,
                           &grpc_port);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.SetMaxSendMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.RegisterService(&service);
  builder.RegisterService(&oip);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    Log(LogLevel::kError, "cannot listen for gRPC", {{"port", std::to_string(absl::GetFlag(FLAGS_port))}});
    return 1;
  }
  std::unique_ptr<HttpService> http;
  if (absl::GetFlag(FLAGS_http_port) >= 0) {
    HttpOptions http_options;
    http_options.host = absl::GetFlag(FLAGS_host);
    http_options.port = absl::GetFlag(FLAGS_http_port);
    http_options.threads = absl::GetFlag(FLAGS_http_threads);
    http_options.console = absl::GetFlag(FLAGS_http_console);
    http_options.max_body_bytes = absl::GetFlag(FLAGS_max_message_bytes);
    http_options.tls_cert = tls.cert;
    http_options.tls_key = tls.key;
    http_options.tls_client_ca = tls.client_ca;
    absl::StatusOr<std::unique_ptr<HttpService>> started = HttpService::Start(&frontend, http_options);
    if (!started.ok()) {
      Log(LogLevel::kError, "cannot serve HTTP", {{"error", std::string(started.status().message())}});
      server->Shutdown();
      return 1;
    }
    http = std::move(*started);
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  // NOT_SERVING until every model is loaded and warm, for the server ("") and the service.
  health->SetServingStatus(care::vision::v1::VisionService::service_full_name(), false);
  health->SetServingStatus(inference::GRPCInferenceService::service_full_name(), false);
  health->SetServingStatus(false);
  // "liveness": SERVING whenever the process answers at all (Kubernetes liveness probes);
  // "" and the service name say whether requests can be served (readiness).
  health->SetServingStatus("liveness", true);
  metrics.SetReady(false);
  Log(LogLevel::kInfo, "listening",
      {{"grpc_port", std::to_string(grpc_port)},
       {"metrics_port", std::to_string(metrics_port)},
       {"http_port", std::to_string(http != nullptr ? http->port() : -1)},
       {"tls", ServerTlsMode(tls)},
       {"cpus", std::to_string(cpus.count)},
       {"cpus_from", cpus.source},
       {"engine_runners", std::to_string(runners)},
       {"intra_op_threads", std::to_string(intra)},
       {"lone_batch_threads", std::to_string(std::max(lone, intra))},
       {"lone_batch_spin_us", std::to_string(lone_spin_us)},
       {"preprocess_threads", std::to_string(pre)},
       {"batch_policy", BatchPolicyName(*batch_policy)},
       {"torch", TorchVersion()},
       {"blas", BlasLibrary()},
       {"torchvision_ops", ops_library.empty() ? "none" : ops_library}});

  RepositoryOptions options;
  options.strict = absl::GetFlag(FLAGS_strict);
  options.warmup_runs = absl::GetFlag(FLAGS_warmup_runs);
  options.scheduler = &scheduler;
  options.batch_policy = *batch_policy;
  options.engine.optimize = absl::GetFlag(FLAGS_optimize_for_inference);
  options.engine.torchvision_ops = absl::GetFlag(FLAGS_torchvision_ops);
  const absl::Time load_start = absl::Now();
  absl::StatusOr<std::unique_ptr<ModelRepository>> repository = ModelRepository::Load(repository_dir, options, &metrics);
  if (!repository.ok()) {
    Log(LogLevel::kError, "cannot serve the model repository", {{"error", std::string(repository.status().message())}});
    server->Shutdown();
    return 1;
  }
  int ready = 0, failed = 0;
  for (const auto& m : (*repository)->models()) (m->ready() ? ready : failed)++;
  frontend.SetRepository(repository->get());
  health->SetServingStatus(true);
  metrics.SetReady(true);
  Log(LogLevel::kInfo, "serving",
      {{"models_ready", std::to_string(ready)},
       {"models_failed", std::to_string(failed)},
       {"load_ms", std::to_string(absl::ToInt64Milliseconds(absl::Now() - load_start))}});

  int signal = 0;
  sigwait(&signals, &signal);
  const absl::Time drain_deadline = absl::Now() + absl::GetFlag(FLAGS_drain_timeout);
  Log(LogLevel::kInfo, "draining", {{"signal", strsignal(signal)},
                                    {"drain_timeout", absl::FormatDuration(absl::GetFlag(FLAGS_drain_timeout))}});
  // Readiness goes first, and the server keeps accepting RPCs meanwhile: health checks
  // see NOT_SERVING (rather than a refused connection) and new requests get UNAVAILABLE
  // with a reason, while those in flight finish.
  health->SetServingStatus(false);
  metrics.SetReady(false);
  frontend.StartDraining();
  // Until every call is answered, those whose request is still arriving included (gRPC's
  // Shutdown cancels those: the client would see CANCELLED, not retryable), and no new call
  // has begun for `quiet`: a call that begins just as Shutdown starts is cancelled too, and
  // clients stop sending once readiness fails, so the quiet comes. A slow client can pause
  // between calls for longer than a fraction of a second.
  const absl::Duration quiet = std::min(absl::Seconds(1), absl::GetFlag(FLAGS_drain_timeout) / 4);
  int unfinished = 0, arriving = 0;
  absl::Time quiet_since = absl::InfiniteFuture();
  for (;;) {
    unfinished = frontend.InFlight();
    arriving = OpenServerStreams();
    const absl::Time now = absl::Now();
    if (unfinished > 0 || arriving > 0) {
      quiet_since = absl::InfiniteFuture();
    } else if (quiet_since == absl::InfiniteFuture()) {
      quiet_since = now;
    } else if (now - quiet_since >= quiet) {
      break;
    }
    if (now >= drain_deadline) break;
    absl::SleepFor(absl::Milliseconds(2));
  }
  if (unfinished > 0 || arriving > 0) {
    Log(LogLevel::kWarning, "drain timeout: cancelling requests in flight",
        {{"requests", std::to_string(unfinished)}, {"open_streams", std::to_string(arriving)}});
  }
  server->Shutdown(absl::ToChronoTime(drain_deadline));  // cancels what is left once it has passed
  (*repository)->Stop();
  // After the repository ran what was queued: the HTTP handlers still waiting have their
  // answers, and stopping waits for them to be sent.
  if (http != nullptr) http->Stop();
  server->Wait();
  Log(LogLevel::kInfo, "stopped");
  return 0;
}

}  // namespace
}  // namespace careserve

int main(int argc, char** argv) {
  const std::vector<char*> arguments(argv, argv + argc + 1);  // as given, for a re-exec
  absl::SetProgramUsageMessage(
      "Serves CARE / CAS-ViT models over gRPC.\n"
      "  care-server --model_repository=DIR [--port=50051] [--metrics_port=9091]");
  absl::ParseCommandLine(argc, argv);
  // libgomp, tcmalloc and OpenCV read these when they are loaded: set, they take a re-exec.
  if (!careserve::ReexecWith(const_cast<char**>(arguments.data()),
                             {careserve::OpenMpSpinCount(), careserve::TcmallocReleaseRate(),
                              careserve::OpenCvPixelCap(absl::GetFlag(FLAGS_max_image_pixels))})) {
    careserve::Log(careserve::LogLevel::kWarning,
                   "cannot re-execute with GOMP_SPINCOUNT, TCMALLOC_RELEASE_RATE and OPENCV_IO_MAX_IMAGE_PIXELS set");
  }
  return careserve::Run();
}
