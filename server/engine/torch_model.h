// The model executor: the one place that includes LibTorch. Loads a frozen TorchScript
// file, runs torch::jit::optimize_for_inference on it (PyTorch 1.13 cannot load a file
// saved after that pass, so the exporter saves frozen TorchScript and the server
// optimises), and runs batches from a caller-owned float buffer without copying it.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace careserve {

enum class DType { kFloat32, kInt64 };

// A view of one output tensor, contiguous, on the CPU.
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;

  int64_t numel() const;
  const float* f32() const { return static_cast<const float*>(data); }
  const int64_t* i64() const { return static_cast<const int64_t*>(data); }
};

// The outputs of one batch: one tensor, or the elements of a returned tuple. The views
// stay valid while this object lives.
struct BatchOutputs {
  std::vector<TensorView> tensors;
  std::shared_ptr<void> storage;
  int intra_op_threads = 1;  // the LibTorch threads the batch ran with
};

// One image's slice of every output tensor, copied out of the batch (so that the batch's
// memory can go and the answer can be built on another thread).
struct OutputRow {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;  // without the batch dimension
  std::vector<float> f32;
  std::vector<int64_t> i64;
};
using RowOutputs = std::vector<OutputRow>;

// Row `row` of every tensor of `outputs`.
RowOutputs CopyRow(const BatchOutputs& outputs, int row);

struct EngineOptions {
  // Run torch::jit::optimize_for_inference after loading (conv-BN folding, MKLDNN
  // layouts where they pay). Off only to compare against the plain TorchScript.
  bool optimize = true;
  // torchvision's operator library (nms, roi_align), which Mask R-CNN graphs call:
  // "auto" finds Debian's python3-torchvision (or the container's copy), "" loads none,
  // else a path. Process-wide: the first Load decides.
  std::string torchvision_ops = "auto";
};

// Loads torchvision's operator library once per process (`requested` as
// EngineOptions::torchvision_ops; later calls and TorchModel::Load keep the first
// answer). Returns its path, or "" with the reason in `*why`.
std::string LoadTorchvisionOps(const std::string& requested, std::string* why = nullptr);

class TorchModel {
 public:
  static absl::StatusOr<std::unique_ptr<TorchModel>> Load(const std::string& path, const EngineOptions& options);
  ~TorchModel();

  // Runs the network on `batch` images stored as float32 NCHW at `input` (owned by the
  // caller, not copied, not modified), on the calling thread with its intra-op threads
  // (the scheduler's engine threads: openmp_threads.h). Thread-safe. `image_sizes`, when
  // given, is [batch, 2] (height, width): each image's extent in its letterboxed input,
  // passed to the model as a second argument (Mask R-CNN clips its boxes to it).
  absl::StatusOr<BatchOutputs> Run(float* input, int batch, int height, int width,
                                   const std::vector<int64_t>* image_sizes = nullptr) const;

  // The type of most of the weights as loaded ("fp32", "fp16", "bf16", "int8"), "" if the
  // module has none that can be read; served when config.json declares no precision.
  const std::string& precision() const;
  // Every type found among the weights, in the same names.
  const std::set<std::string>& weight_types() const;

 private:
  struct Impl;
  explicit TorchModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Process-wide LibTorch settings, before any model loads: denormals flushed to zero
// (random or badly scaled weights otherwise run up to 50x slower), the intra-op threads a
// thread starts with, and the inter-op threads.
void ConfigureTorch(int intra_op_threads, int inter_op_threads);

std::string TorchVersion();

// The BLAS LibTorch's matrix products go to: "openblas-openmp <file>" (OpenBLAS's
// OpenMP build, the one the server links), "openblas-pthreads <file>", or "unknown <file>"
// for another BLAS; for the startup log.
std::string BlasLibrary();

}  // namespace careserve
