// care.vision.v1's Classify, Detect and Segment made over the Open Inference Protocol
// (inference.GRPCInferenceService): the vision request becomes a ModelInferRequest and the
// answer a vision response, so that care-client and care-bench print, draw and count the
// same things whichever protocol carried them. What the protocol does not carry is left
// empty: detection and segmentation class labels (the class index is there).
#pragma once

#include <memory>
#include <string>

#include "care/vision/v1/vision.pb.h"
#include "grpcpp/grpcpp.h"
#include "inference/grpc_service.grpc.pb.h"

namespace httplib {
class Client;
}

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

// An HTTP/REST client of the protocol for `host_port` ("host:port"): HTTPS with `tls`
// (trusting `ca`, or the system's CAs; a client certificate with `cert` and `key`).
struct HttpTls;
std::unique_ptr<httplib::Client> MakeOipHttpClient(const std::string& host_port, const HttpTls& tls);

// ModelInfer over HTTP/REST: `request` sent with the binary tensor data extension, every
// output asked for as binary data, and the answer read back into `response` (raw
// outputs). The server's HTTP errors come back as their gRPC codes with its message;
// `timeout_seconds` goes in the Inference-Timeout header and bounds the wait.
grpc::Status OipHttpInfer(httplib::Client* client, const inference::ModelInferRequest& request,
                          inference::ModelInferResponse* response, double timeout_seconds);

}  // namespace careserve
