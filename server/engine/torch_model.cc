#include "server/engine/torch_model.h"

#include <dlfcn.h>
#include <glob.h>

#include <algorithm>
#include <exception>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "torch/csrc/jit/ir/constants.h"
#include "torch/script.h"
#include "ATen/Parallel.h"
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

struct TorchModel::Impl {
  torch::jit::Module module;
  std::string precision;
  std::set<std::string> weight_types;
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

constexpr const char* kTorchvisionOpsCandidates[] = {
    "/usr/lib/careserve/torchvision_ops.so",  // the container image's copy
    "/usr/lib/python3/dist-packages/torchvision/_C*.so",  // Debian's python3-torchvision
};

struct OpsLibrary {
  std::string path;
  std::string error;
};

OpsLibrary OpenOpsLibrary(const std::string& requested) {
  if (requested.empty()) return {"", "not loaded (--torchvision_ops is empty)"};
  std::vector<std::string> paths;
  if (requested == "auto") {
    for (const char* pattern : kTorchvisionOpsCandidates) {
      glob_t found{};
      if (glob(pattern, 0, nullptr, &found) == 0) {
        for (size_t i = 0; i < found.gl_pathc; ++i) paths.emplace_back(found.gl_pathv[i]);
      }
      globfree(&found);
    }
    if (paths.empty()) {
      return {"", absl::StrCat("not found (looked for ", absl::StrJoin(kTorchvisionOpsCandidates, ", "),
                               "; install python3-torchvision or pass --torchvision_ops=PATH)")};
    }
  } else {
    paths.push_back(requested);
  }
  // Kept loaded for the process's life: it registers the operators with LibTorch.
  if (dlopen(paths[0].c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* error = dlerror();
    return {"", absl::StrCat("cannot load ", paths[0], ": ", error != nullptr ? error : "dlopen failed")};
  }
  return {paths[0], ""};
}

const OpsLibrary& LoadOpsOnce(const std::string& requested) {
  static const OpsLibrary library = OpenOpsLibrary(requested);
  return library;
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

// Elements of the weight tensors by type: the graph's tensor constants (a frozen module's
// weights) and the module's own parameters and buffers (an unfrozen one's). Quantized
// graphs keep their weights in packed objects; their quantized:: operators mark them.
void CountWeights(torch::jit::Block* block, std::map<std::string, int64_t>* elements) {
  for (torch::jit::Node* node : block->nodes()) {
    if (node->kind().is_prim() && node->kind() == c10::prim::Constant &&
        node->output()->type()->kind() == c10::TypeKind::TensorType) {
      c10::optional<c10::IValue> value = torch::jit::toIValue(node->output());
      if (value.has_value() && value->isTensor()) {
        (*elements)[c10::toString(value->toTensor().scalar_type())] += value->toTensor().numel();
      }
    } else if (std::string(node->kind().toQualString()).rfind("quantized::", 0) == 0) {
      (*elements)["QInt8"] += 1 << 30;
    }
    for (torch::jit::Block* inner : node->blocks()) CountWeights(inner, elements);
  }
}

// (the type holding most of the weights, every type found), in careserve's names ("fp32",
// "fp16", "bf16", "int8"); quantized operators count as int8.
std::pair<std::string, std::set<std::string>> WeightPrecision(const torch::jit::Module& module) {
  std::map<std::string, int64_t> elements;
  for (const torch::Tensor& t : module.parameters()) elements[c10::toString(t.scalar_type())] += t.numel();
  for (const torch::Tensor& t : module.buffers()) elements[c10::toString(t.scalar_type())] += t.numel();
  if (module.find_method("forward")) CountWeights(module.get_method("forward").graph()->block(), &elements);
  static const std::map<std::string, std::string> kNames = {
      {"Float", "fp32"}, {"Double", "fp64"}, {"Half", "fp16"}, {"BFloat16", "bf16"}, {"QInt8", "int8"},
      {"QUInt8", "int8"}};
  std::string best;
  std::set<std::string> found;
  int64_t most = 0;
  for (const auto& [type, n] : elements) {
    auto it = kNames.find(type);
    if (it == kNames.end()) continue;
    found.insert(it->second);
    if (n > most) {
      best = it->second;
      most = n;
    }
  }
  return {best, found};
}

}  // namespace

absl::StatusOr<std::unique_ptr<TorchModel>> TorchModel::Load(const std::string& path, const EngineOptions& options) {
  const OpsLibrary& ops = LoadOpsOnce(options.torchvision_ops);
  // int8 exports are quantized for oneDNN (carevision/precision.py), and loading re-packs
  // their weights for the engine selected at that moment; Debian's LibTorch has no fbgemm.
  static std::once_flag qengine;
  std::call_once(qengine, [] {
    for (at::QEngine engine : at::globalContext().supportedQEngines()) {
      if (engine == at::QEngine::ONEDNN) at::globalContext().setQEngine(at::QEngine::ONEDNN);
    }
  });
  auto impl = std::make_unique<Impl>();
  try {
    impl->module = torch::jit::load(path, torch::kCPU);
    impl->module.eval();
    std::tie(impl->precision, impl->weight_types) = WeightPrecision(impl->module);
    if (options.optimize) impl->module = torch::jit::optimize_for_inference(impl->module);
  } catch (const std::exception& e) {
    const std::string first = FirstLine(e.what());
    const std::string hint = first.find("torchvision::") != std::string::npos && ops.path.empty()
                                 ? absl::StrCat(" (the model calls torchvision's operators; their library: ", ops.error, ")")
                                 : "";
    return absl::InvalidArgumentError(absl::StrCat("cannot load TorchScript ", path, ": ", first, hint));
  }
  return std::unique_ptr<TorchModel>(new TorchModel(std::move(impl)));
}

const std::string& TorchModel::precision() const { return impl_->precision; }
const std::set<std::string>& TorchModel::weight_types() const { return impl_->weight_types; }

absl::StatusOr<BatchOutputs> TorchModel::Run(float* input, int batch, int height, int width,
                                              const std::vector<int64_t>* image_sizes) const {
  try {
    c10::InferenceMode inference;
    torch::Tensor x = torch::from_blob(input, {batch, 3, height, width}, torch::kFloat32);
    std::vector<c10::IValue> arguments{x};
    if (image_sizes != nullptr) {
      arguments.emplace_back(torch::tensor(*image_sizes, torch::kInt64).reshape({batch, 2}));
    }
    c10::IValue result = impl_->module.forward(std::move(arguments));
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

void ConfigureTorch(int intra_op_threads, int inter_op_threads) {
  at::globalContext().setFlushDenormal(true);
  // The process value: what a thread that first uses LibTorch starts with.
  if (intra_op_threads > 0) at::set_num_threads(intra_op_threads);
  // Settable once, before any inter-op work has started.
  if (inter_op_threads > 0) {
    try {
      at::set_num_interop_threads(inter_op_threads);
    } catch (const std::exception&) {
    }
  }
}

std::string TorchVersion() { return TORCH_VERSION; }

std::string LoadTorchvisionOps(const std::string& requested, std::string* why) {
  const OpsLibrary& library = LoadOpsOnce(requested);
  if (why != nullptr) *why = library.error;
  return library.path;
}

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
