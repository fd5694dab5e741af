// The Open Inference Protocol (KServe v2) over gRPC, inference.GRPCInferenceService, on
// the same port and frontend as care.vision.v1: every image of a ModelInfer joins the
// model's batch queue with every other request's images, whichever API they came by.
// What the models take and return: docs/service.md, "Open Inference Protocol".
#pragma once

#include "inference/grpc_service.grpc.pb.h"
#include "server/api/frontend.h"

namespace careserve {

// The version careserve reports in ServerMetadata.
const char* CareserveVersion();

// The protocol's operations, for every transport (gRPC here; HTTP/JSON converts to and
// from these messages).
// ModelInfer: validates `request`, runs its images and fills `response`, then answers
// `call`. `request` and `response` must live until the call is answered. Outputs come
// raw when the request's inputs did, or always with `raw_outputs` (HTTP, which writes
// binary data or JSON from the raw bytes).
void OipInfer(Frontend* frontend, PendingCall* call, const inference::ModelInferRequest* request,
              inference::ModelInferResponse* response, bool raw_outputs = false);
absl::StatusOr<inference::ModelMetadataResponse> OipModelMetadata(const Frontend& frontend, const std::string& name,
                                                                  const std::string& version);
// NOT_FOUND for an unknown model or version; false for one that failed to load, or while
// the server loads or drains.
absl::StatusOr<bool> OipModelReady(const Frontend& frontend, const std::string& name, const std::string& version);
inference::ServerMetadataResponse OipServerMetadata();

class OipService final : public inference::GRPCInferenceService::CallbackService {
 public:
  // `frontend` must outlive the service.
  explicit OipService(Frontend* frontend) : frontend_(frontend) {}

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context, const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context, const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context, const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override;

 private:
  GrpcCall* NewCall(grpc::CallbackServerContext* context, const char* method);

  Frontend* const frontend_;
};

}  // namespace careserve
