// care.vision.v1's Classify, Detect and Segment made over the Open Inference Protocol
// (inference.GRPCInferenceService): the vision request becomes a ModelInferRequest and the
// answer a vision response, so that care-client and care-bench print, draw and count the
// same things whichever protocol carried them. What the protocol does not carry is left
// empty: detection and segmentation class labels (the class index is there).
#pragma once

#include <string>

#include "care/vision/v1/vision.pb.h"
#include "grpcpp/grpcpp.h"
#include "inference/grpc_service.grpc.pb.h"

namespace careserve {

// The request for one image: `image` BYTES (encoded) or `pixels` UINT8 (raw pixels, any
// format converted to RGB), in raw contents. INVALID_ARGUMENT without a model name: the
// protocol has no default model.
grpc::Status OipClassifyRequest(const care::vision::v1::ClassifyRequest& request, inference::ModelInferRequest* out);
grpc::Status OipDetectRequest(const care::vision::v1::DetectRequest& request, inference::ModelInferRequest* out);
grpc::Status OipSegmentRequest(const care::vision::v1::SegmentRequest& request, inference::ModelInferRequest* out);

// The answer to one image; an error when the response lacks what the task returns.
grpc::Status VisionClassifyResponse(const inference::ModelInferResponse& response,
                                    care::vision::v1::ClassifyResponse* out);
grpc::Status VisionDetectResponse(const inference::ModelInferResponse& response, care::vision::v1::DetectResponse* out);
grpc::Status VisionSegmentResponse(const inference::ModelInferResponse& response,
                                   care::vision::v1::SegmentResponse* out);

}  // namespace careserve
