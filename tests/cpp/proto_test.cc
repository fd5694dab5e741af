// The generated API carries the names the service contract fixes.
#include "care/vision/v1/vision.grpc.pb.h"
#include "gtest/gtest.h"

namespace {

TEST(ProtoTest, ServiceHasTheContractMethods) {
  const auto* service =
      care::vision::v1::ClassifyRequest::descriptor()->file()->FindServiceByName("VisionService");
  ASSERT_NE(service, nullptr);
  EXPECT_EQ(service->full_name(), "care.vision.v1.VisionService");
  for (const char* method : {"Classify", "Detect", "Segment", "ListModels"}) {
    EXPECT_NE(service->FindMethodByName(method), nullptr) << method;
  }
  EXPECT_EQ(service->method_count(), 4);
}

TEST(ProtoTest, ClassifyRequestRoundTrips) {
  care::vision::v1::ClassifyRequest request;
  request.set_model("care_s0_imagenet");
  request.set_top_k(3);
  auto* raw = request.mutable_image()->mutable_raw();
  raw->set_width(2);
  raw->set_height(1);
  raw->set_format(care::vision::v1::RGB8);
  raw->set_data(std::string("\x01\x02\x03\x04\x05\x06", 6));
  care::vision::v1::ClassifyRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(request.SerializeAsString()));
  EXPECT_EQ(parsed.model(), "care_s0_imagenet");
  EXPECT_EQ(parsed.top_k(), 3);
  EXPECT_EQ(parsed.image().source_case(), care::vision::v1::Image::kRaw);
  EXPECT_EQ(parsed.image().raw().data().size(), 6u);
}

}  // namespace
