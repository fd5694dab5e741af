// care.vision.v1.VisionService on gRPC's callback API: a thin translation from RPCs onto
// the frontend (server/api/frontend.h). No thread is held while a request waits: decoding
// runs on the preprocessing pool, inference on the engine threads, and the answer is sent
// from whichever thread finishes the work.
#pragma once

#include "care/vision/v1/vision.grpc.pb.h"
#include "server/api/frontend.h"

namespace careserve {

class VisionService final : public care::vision::v1::VisionService::CallbackService {
 public:
  // `frontend` must outlive the service.
  explicit VisionService(Frontend* frontend) : frontend_(frontend) {}

  grpc::ServerUnaryReactor* Classify(grpc::CallbackServerContext* context,
                                     const care::vision::v1::ClassifyRequest* request,
                                     care::vision::v1::ClassifyResponse* response) override;
  grpc::ServerUnaryReactor* Detect(grpc::CallbackServerContext* context,
                                   const care::vision::v1::DetectRequest* request,
                                   care::vision::v1::DetectResponse* response) override;
  grpc::ServerUnaryReactor* Segment(grpc::CallbackServerContext* context,
                                    const care::vision::v1::SegmentRequest* request,
                                    care::vision::v1::SegmentResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const care::vision::v1::ListModelsRequest* request,
                                       care::vision::v1::ListModelsResponse* response) override;

 private:
  GrpcCall* NewCall(grpc::CallbackServerContext* context, const char* method);

  Frontend* const frontend_;
};

}  // namespace careserve
