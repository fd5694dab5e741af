// The Open Inference Protocol (KServe v2) over HTTP/REST, end to end: an HTTP client
// (cpp-httplib's) and JSON built in the test from the published protocol, against a real
// care-server: every route, every task's answers equal to care.vision.v1's, N-image
// requests, JSON and binary tensor data both ways, base64 BYTES, and the HTTP status of
// every kind of bad request, a full queue, a deadline and the drain.
#include <httplib.h>

#include <nlohmann/json.hpp>
#include <numeric>

#include "absl/strings/escaping.h"
#include "clients/draw.h"
#include "tests/cpp/integration/server_harness.h"

namespace careserve {
namespace {

using json = nlohmann::json;

// An answer: status, the JSON header, and the binary data of each output that came binary.
struct Answer {
  int status = 0;
  json body;
  std::map<std::string, std::string> binary;

  const json& Output(const std::string& name) const {
    for (const json& o : body["outputs"]) {
      if (o["name"] == name) return o;
    }
    static const json none;
    ADD_FAILURE() << "no output " << name << " in " << body.dump();
    return none;
  }
  std::vector<int64_t> Shape(const std::string& name) const { return Output(name)["shape"].get<std::vector<int64_t>>(); }
  template <typename T>
  std::vector<T> Values(const std::string& name) const {
    auto it = binary.find(name);
    if (it == binary.end()) return Output(name)["data"].get<std::vector<T>>();
    std::vector<T> values(it->second.size() / sizeof(T));
    std::memcpy(values.data(), it->second.data(), values.size() * sizeof(T));
    return values;
  }
  std::string error() const { return body.contains("error") ? body["error"].get<std::string>() : ""; }
};

class HttpTest : public ServerTest {
 protected:
  std::unique_ptr<httplib::Client> Client() {
    auto client = std::make_unique<httplib::Client>("127.0.0.1", server_->http_port());
    client->set_read_timeout(120, 0);
    client->set_write_timeout(120, 0);
    return client;
  }

  Answer Get(const std::string& path) {
    auto response = Client()->Get(path.c_str());
    Answer answer;
    if (!response) {
      ADD_FAILURE() << "GET " << path << ": " << httplib::to_string(response.error());
      return answer;
    }
    answer.status = response->status;
    answer.body = json::parse(response->body, nullptr, false);
    return answer;
  }

  // POSTs `header` (JSON) and `binary` (the inputs' binary data, if any) to the route.
  Answer Post(const std::string& path, const json& header, const std::string& binary = "",
              const httplib::Headers& headers = {}) {
    const std::string text = header.dump();
    httplib::Headers all = headers;
    std::string body = text;
    if (!binary.empty()) {
      all.emplace("Inference-Header-Content-Length", std::to_string(text.size()));
      body += binary;
    }
    auto response = Client()->Post(path.c_str(), all, body, binary.empty() ? "application/json" : "application/octet-stream");
    Answer answer;
    if (!response) {
      ADD_FAILURE() << "POST " << path << ": " << httplib::to_string(response.error());
      return answer;
    }
    answer.status = response->status;
    std::string head = response->body;
    if (response->has_header("Inference-Header-Content-Length")) {
      const size_t length = std::stoul(response->get_header_value("Inference-Header-Content-Length"));
      head = response->body.substr(0, length);
      size_t at = length;
      answer.body = json::parse(head, nullptr, false);
      for (const json& o : answer.body["outputs"]) {
        if (!o.contains("parameters") || !o["parameters"].contains("binary_data_size")) continue;
        const size_t size = o["parameters"]["binary_data_size"].get<size_t>();
        answer.binary[o["name"].get<std::string>()] = response->body.substr(at, size);
        at += size;
      }
      EXPECT_EQ(at, response->body.size()) << "binary data left over";
      return answer;
    }
    answer.body = json::parse(head, nullptr, false);
    EXPECT_FALSE(answer.body.is_discarded()) << head;
    return answer;
  }

  // An infer request for `images` as binary data (length-prefixed BYTES).
  static json ImagesHeader(const std::vector<std::string>& images) {
    return json{{"id", "req-7"},
                {"inputs",
                 {{{"name", "image"},
                   {"datatype", "BYTES"},
                   {"shape", {images.size()}},
                   {"parameters", {{"binary_data_size", LengthPrefixed(images).size()}}}}}}};
  }

  std::vector<float> VisionProbabilities(const v1::Image& image) {
    v1::ClassifyRequest request;
    request.set_model("care_s0_cls");
    request.set_top_k(1000);
    *request.mutable_image() = image;
    v1::ClassifyResponse response;
    grpc::ClientContext context;
    EXPECT_TRUE(stub_->Classify(&context, request, &response).ok());
    std::vector<float> probabilities(1000, -1.0f);
    for (const auto& c : response.classes()) probabilities[c.index()] = c.score();
    return probabilities;
  }
};

TEST_F(HttpTest, HealthAndMetadataRoutes) {
  Answer live = Get("/v2/health/live");
  EXPECT_EQ(live.status, 200);
  EXPECT_EQ(live.body["live"], true);
  Answer ready = Get("/v2/health/ready");
  EXPECT_EQ(ready.status, 200);
  EXPECT_EQ(ready.body["ready"], true);
  Answer server = Get("/v2");
  EXPECT_EQ(server.status, 200);
  EXPECT_EQ(server.body["name"], "careserve");
  EXPECT_NE(server.body["extensions"].dump().find("binary_tensor_data"), std::string::npos);
  EXPECT_NE(server.body["extensions"].dump().find("classification"), std::string::npos);

  for (const std::string& path : {std::string("/v2/models/care_s0_seg"), std::string("/v2/models/care_s0_seg/versions/1")}) {
    Answer metadata = Get(path);
    ASSERT_EQ(metadata.status, 200) << path << metadata.body.dump();
    EXPECT_EQ(metadata.body["name"], "care_s0_seg");
    EXPECT_EQ(metadata.body["versions"], json({"1"}));
    EXPECT_EQ(metadata.body["platform"], "careserve_torchscript");
    EXPECT_EQ(metadata.body["outputs"],
              json::parse(R"([{"name": "mask", "datatype": "UINT8", "shape": [-1, -1, -1]}])"));
    EXPECT_EQ(metadata.body["inputs"][2],
              json::parse(R"({"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 96]})"));
  }
  EXPECT_EQ(Get("/v2/models/care_s0_det/ready").status, 200);
  EXPECT_EQ(Get("/v2/models/care_s0_det/versions/1/ready").body["ready"], true);
  Answer broken = Get("/v2/models/broken_model/ready");
  EXPECT_EQ(broken.status, 503);
  EXPECT_EQ(broken.body["ready"], false);
  Answer unknown = Get("/v2/models/no_such_model");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_NE(unknown.error().find("no_such_model"), std::string::npos) << unknown.body.dump();
  EXPECT_EQ(Get("/v2/models/no_such_model/ready").status, 404);
  Answer version = Get("/v2/models/care_s0_det/versions/7");
  EXPECT_EQ(version.status, 404);
  EXPECT_NE(version.error().find("no version 7"), std::string::npos) << version.body.dump();
  Answer route = Get("/v3/anything");
  EXPECT_EQ(route.status, 404);
  EXPECT_NE(route.error().find("/v3/anything"), std::string::npos);
}

TEST_F(HttpTest, ClassificationMatchesVisionInJsonAndBinary) {
  constexpr int kImages = 3;
  const std::vector<cv::Mat> crops = Crops(kImages);
  std::vector<std::string> pngs;
  std::vector<std::vector<float>> expected;
  for (const cv::Mat& crop : crops) {
    pngs.push_back(Png(crop));
    expected.push_back(VisionProbabilities(Encoded(pngs.back())));
  }
  auto check = [&](const Answer& answer, const std::string& how) {
    ASSERT_EQ(answer.status, 200) << how << ": " << answer.body.dump();
    EXPECT_EQ(answer.body["model_name"], "care_s0_cls");
    EXPECT_EQ(answer.body["model_version"], "1");
    EXPECT_EQ(answer.Shape("probabilities"), (std::vector<int64_t>{kImages, 1000}));
    const std::vector<float> probabilities = answer.Values<float>("probabilities");
    ASSERT_EQ(probabilities.size(), static_cast<size_t>(kImages * 1000)) << how;
    for (int i = 0; i < kImages; ++i) {
      for (int c = 0; c < 1000; ++c) ASSERT_NEAR(probabilities[i * 1000 + c], expected[i][c], 1e-4) << how;
    }
  };
  // Binary in, JSON out.
  Answer json_out = Post("/v2/models/care_s0_cls/infer", ImagesHeader(pngs), LengthPrefixed(pngs));
  check(json_out, "binary in, JSON out");
  EXPECT_EQ(json_out.body["id"], "req-7");
  EXPECT_TRUE(json_out.binary.empty());
  // Binary in, binary out (the output's binary_data parameter), version in the path.
  json header = ImagesHeader(pngs);
  header["outputs"] = {{{"name", "probabilities"}, {"parameters", {{"binary_data", true}}}}};
  Answer binary_out = Post("/v2/models/care_s0_cls/versions/1/infer", header, LengthPrefixed(pngs));
  check(binary_out, "binary in, binary out");
  EXPECT_EQ(binary_out.binary.at("probabilities").size(), kImages * 1000 * 4u);
  // JSON in: BYTES as base64 text (content_type base64); binary out for everything.
  json base64 = {{"parameters", {{"binary_data_output", true}}},
                 {"inputs",
                  {{{"name", "image"},
                    {"datatype", "BYTES"},
                    {"shape", {kImages}},
                    {"parameters", {{"content_type", "base64"}}},
                    {"data", json::array()}}}}};
  for (const std::string& png : pngs) {
    std::string text;
    absl::Base64Escape(png, &text);
    base64["inputs"][0]["data"].push_back(text);
  }
  check(Post("/v2/models/care_s0_cls/infer", base64), "base64 JSON in");

  // UINT8 pixels as JSON numbers, nested [N, H, W, 3].
  const cv::Mat small = crops[0](cv::Rect(0, 0, 40, 30)).clone();
  cv::Mat rgb;
  cv::cvtColor(small, rgb, cv::COLOR_BGR2RGB);
  json rows = json::array();
  for (int y = 0; y < 30; ++y) {
    json row = json::array();
    for (int x = 0; x < 40; ++x) {
      const cv::Vec3b p = rgb.at<cv::Vec3b>(y, x);
      row.push_back({p[0], p[1], p[2]});
    }
    rows.push_back(row);
  }
  v1::Image raw;
  raw.mutable_raw()->set_width(40);
  raw.mutable_raw()->set_height(30);
  raw.mutable_raw()->set_format(v1::RGB8);
  raw.mutable_raw()->set_data(rgb.data, rgb.total() * 3);
  const std::vector<float> expected_pixels = VisionProbabilities(raw);
  Answer pixels = Post("/v2/models/care_s0_cls/infer",
                       {{"inputs", {{{"name", "pixels"}, {"datatype", "UINT8"}, {"shape", {1, 30, 40, 3}}, {"data", {rows}}}}}});
  ASSERT_EQ(pixels.status, 200) << pixels.body.dump();
  const std::vector<float> from_pixels = pixels.Values<float>("probabilities");
  ASSERT_EQ(from_pixels.size(), 1000u);
  for (int c = 0; c < 1000; ++c) ASSERT_NEAR(from_pixels[c], expected_pixels[c], 1e-4);

  // The classification extension in JSON.
  json top = ImagesHeader({pngs[0]});
  top["outputs"] = {{{"name", "probabilities"}, {"parameters", {{"classification", 2}}}}};
  Answer classes = Post("/v2/models/care_s0_cls/infer", top, LengthPrefixed({pngs[0]}));
  ASSERT_EQ(classes.status, 200) << classes.body.dump();
  EXPECT_EQ(classes.Output("probabilities")["datatype"], "BYTES");
  const std::vector<std::string> entries = classes.Values<std::string>("probabilities");
  ASSERT_EQ(entries.size(), 2u);
  const int best = static_cast<int>(std::max_element(expected[0].begin(), expected[0].end()) - expected[0].begin());
  EXPECT_EQ(std::stoi(std::vector<std::string>(absl::StrSplit(entries[0], ':'))[1]), best) << entries[0];
}

TEST_F(HttpTest, DetectionAndSegmentationMatchVision) {
  const std::vector<cv::Mat> crops = Crops(2);
  std::vector<std::string> pngs = {Png(crops[0]), Png(crops[1])};
  json header = ImagesHeader(pngs);
  header["parameters"] = {{"score_threshold", 0.2}, {"max_detections", 7}};
  header["outputs"] = {{{"name", "boxes"}, {"parameters", {{"binary_data", true}}}},
                       {{"name", "scores"}},
                       {{"name", "classes"}},
                       {{"name", "num_detections"}}};
  Answer detected = Post("/v2/models/care_s0_det/infer", header, LengthPrefixed(pngs));
  ASSERT_EQ(detected.status, 200) << detected.body.dump();
  const int64_t k = detected.Shape("scores")[1];
  const std::vector<float> boxes = detected.Values<float>("boxes"), scores = detected.Values<float>("scores");
  const std::vector<int32_t> classes = detected.Values<int32_t>("classes"),
                             counts = detected.Values<int32_t>("num_detections");
  ASSERT_EQ(boxes.size(), static_cast<size_t>(2 * k * 4));
  int total = 0;
  for (int i = 0; i < 2; ++i) {
    v1::DetectRequest request;
    request.set_model("care_s0_det");
    *request.mutable_image() = Encoded(pngs[i]);
    request.set_score_threshold(0.2f);
    request.set_max_detections(7);
    v1::DetectResponse expected;
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->Detect(&context, request, &expected).ok());
    ASSERT_EQ(counts[i], expected.detections_size());
    total += counts[i];
    for (int j = 0; j < counts[i]; ++j) {
      const v1::Detection& d = expected.detections(j);
      EXPECT_EQ(classes[i * k + j], d.class_index());
      EXPECT_NEAR(scores[i * k + j], d.score(), 1e-4);
      EXPECT_NEAR(boxes[(i * k + j) * 4], d.box().x_min(), 0.05);
      EXPECT_NEAR(boxes[(i * k + j) * 4 + 3], d.box().y_max(), 0.05);
    }
  }
  EXPECT_GT(total, 0) << "the comparison would be empty";

  const cv::Mat a = crops[0](cv::Rect(0, 0, 150, 100)).clone();
  v1::SegmentRequest request;
  request.set_model("care_s0_seg");
  *request.mutable_image() = Encoded(Png(a));
  v1::SegmentResponse expected;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->Segment(&context, request, &expected).ok());
  const cv::Mat expected_mask = cv::imdecode(
      std::vector<uchar>(expected.mask_png().begin(), expected.mask_png().end()), cv::IMREAD_UNCHANGED);
  for (bool binary : {false, true}) {
    json seg = ImagesHeader({Png(a)});
    if (binary) seg["outputs"] = {{{"name", "mask"}, {"parameters", {{"binary_data", true}}}}};
    Answer segmented = Post("/v2/models/care_s0_seg/infer", seg, LengthPrefixed({Png(a)}));
    ASSERT_EQ(segmented.status, 200) << segmented.body.dump();
    EXPECT_EQ(segmented.Shape("mask"), (std::vector<int64_t>{1, 100, 150}));
    const std::vector<uint8_t> mask = segmented.Values<uint8_t>("mask");
    ASSERT_EQ(mask.size(), 15000u);
    const cv::Mat got(100, 150, CV_8UC1, const_cast<uint8_t*>(mask.data()));
    EXPECT_GE(1.0 - cv::countNonZero(got != expected_mask) / 15000.0, 0.999) << (binary ? "binary" : "JSON");
  }
}

// Mask R-CNN over JSON: `masks` holds one COCO RLE JSON text per detection, the masks
// care.vision.v1's Detect answers (99.5% of pixels: batches differ); a COCO tool reads it
// after json.loads.
TEST_F(HttpTest, MaskRcnnMasksAreCocoRleJson) {
  const std::vector<cv::Mat> crops = Crops(1);
  const std::string png = Png(crops[0]);
  v1::DetectRequest request;
  request.set_model("care_s0_mask");
  *request.mutable_image() = Encoded(png);
  request.set_score_threshold(0.6f);  // well-separated scores (tests/tools/make_test_checkpoints.py)
  v1::DetectResponse expected;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->Detect(&context, request, &expected).ok());
  ASSERT_GT(expected.detections_size(), 0);
  json header = ImagesHeader({png});
  header["parameters"] = {{"score_threshold", 0.6}};
  Answer answer = Post("/v2/models/care_s0_mask/infer", header, LengthPrefixed({png}));
  ASSERT_EQ(answer.status, 200) << answer.body.dump();
  EXPECT_EQ(answer.Output("masks")["datatype"], "BYTES");
  const std::vector<std::string> masks = answer.Values<std::string>("masks");
  ASSERT_EQ(static_cast<int>(masks.size()), expected.detections_size());
  for (int j = 0; j < expected.detections_size(); ++j) {
    const json rle = json::parse(masks[j]);
    EXPECT_EQ(rle["size"], json::array({crops[0].rows, crops[0].cols}));
    v1::CocoRle got;
    got.add_size(rle["size"][0].get<int>());
    got.add_size(rle["size"][1].get<int>());
    got.set_counts(rle["counts"].get<std::string>());
    const cv::Mat got_mask = DecodeInstanceMask(got), want_mask = DecodeInstanceMask(expected.detections(j).mask());
    ASSERT_FALSE(got_mask.empty()) << masks[j];
    EXPECT_GE(1.0 - cv::countNonZero(got_mask != want_mask) / static_cast<double>(got_mask.total()), 0.995) << j;
  }
}

TEST_F(HttpTest, BadRequestsGetTheirHttpStatus) {
  const std::string png = Png(Crops(1)[0]);
  const std::string infer = "/v2/models/care_s0_cls/infer";
  struct Case {
    std::string what, path;
    json header;
    std::string binary;
    int status;
    std::string message;
  };
  json wrong_type = ImagesHeader({png});
  wrong_type["inputs"][0]["datatype"] = "UINT8";
  json unknown_input = ImagesHeader({png});
  unknown_input["inputs"][0]["name"] = "images";
  json shape = ImagesHeader({png});
  shape["inputs"][0]["shape"] = {2};
  json too_big = ImagesHeader({png});
  too_big["inputs"][0]["parameters"]["binary_data_size"] = 10 << 20;
  json fp32_text = {{"inputs", {{{"name", "input"}, {"datatype", "FP32"}, {"shape", {1, 3, 64, 64}}, {"data", {"x"}}}}}};
  json unknown_output = ImagesHeader({png});
  unknown_output["outputs"] = {{{"name", "logits"}}};
  const std::vector<Case> cases = {
      {"unknown model", "/v2/models/nope/infer", ImagesHeader({png}), LengthPrefixed({png}), 404, "nope"},
      {"unknown version", "/v2/models/care_s0_cls/versions/9/infer", ImagesHeader({png}), LengthPrefixed({png}), 404,
       "no version 9"},
      {"model that failed to load", "/v2/models/broken_model/infer", ImagesHeader({png}), LengthPrefixed({png}), 400,
       "broken_model"},
      {"unknown input", infer, unknown_input, LengthPrefixed({png}), 400, "unknown input \"images\""},
      {"wrong datatype", infer, wrong_type, LengthPrefixed({png}), 400, "must be BYTES"},
      {"shape and contents disagree", infer, shape, LengthPrefixed({png}), 400, "element"},
      {"bad image", infer, ImagesHeader({"not an image at all"}), LengthPrefixed({"not an image at all"}), 400,
       "not a JPEG"},
      {"binary_data_size past the body", infer, too_big, LengthPrefixed({png}), 400, "binary_data_size"},
      {"binary data left over", infer, ImagesHeader({png}), LengthPrefixed({png}) + "xx", 400, "after the last input"},
      {"text for FP32", infer, fp32_text, "", 400, "is not a number"},
      {"unknown output", infer, unknown_output, LengthPrefixed({png}), 400, "unknown output"},
      {"no inputs", infer, json::object(), "", 400, "inputs"},
  };
  for (const Case& c : cases) {
    Answer answer = Post(c.path, c.header, c.binary);
    EXPECT_EQ(answer.status, c.status) << c.what << ": " << answer.body.dump();
    EXPECT_NE(answer.error().find(c.message), std::string::npos)
        << c.what << ": \"" << answer.error() << "\" does not say \"" << c.message << "\"";
  }
  // Not JSON at all.
  auto client = Client();
  auto garbage = client->Post(infer.c_str(), "{not json", "application/json");
  ASSERT_TRUE(garbage);
  EXPECT_EQ(garbage->status, 400);
  EXPECT_NE(garbage->body.find("not a JSON object"), std::string::npos) << garbage->body;
  // A deadline that has passed before the work: 504.
  Answer late = Post(infer, ImagesHeader({png}), LengthPrefixed({png}), {{"Inference-Timeout", "0.000001"}});
  EXPECT_EQ(late.status, 504) << late.body.dump();
  EXPECT_NE(late.error().find("deadline"), std::string::npos) << late.body.dump();
  EXPECT_EQ(Post(infer, ImagesHeader({png}), LengthPrefixed({png}), {{"Inference-Timeout", "soon"}}).status, 400);
  // A body over --max_message_bytes (32 MiB): 413, before it is read.
  const std::string huge(33 << 20, 'x');
  auto oversized = client->Post(infer.c_str(), huge, "application/json");
  ASSERT_TRUE(oversized);
  EXPECT_EQ(oversized->status, 413);
  EXPECT_NE(oversized->body.find("larger than the server's limit"), std::string::npos) << oversized->body;
  // And the server still answers.
  EXPECT_EQ(Post(infer, ImagesHeader({png}), LengthPrefixed({png})).status, 200);
}

TEST_F(HttpTest, AFullQueueIs429AndRequestsAreCountedByApi) {
  const std::string png = Png(Crops(1)[0]);
  constexpr int kBurst = 24;
  std::vector<int> statuses(kBurst, 0);
  std::vector<std::string> errors(kBurst);
  std::vector<std::thread> threads;
  for (int i = 0; i < kBurst; ++i) {
    threads.emplace_back([&, i] {
      Answer a = Post("/v2/models/care_s0_queue1/infer", ImagesHeader({png}), LengthPrefixed({png}));
      statuses[i] = a.status;
      errors[i] = a.error();
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, full = 0;
  for (int i = 0; i < kBurst; ++i) {
    ok += statuses[i] == 200;
    if (statuses[i] == 429) {
      ++full;
      EXPECT_NE(errors[i].find("queue full"), std::string::npos) << errors[i];
    }
  }
  EXPECT_GT(ok, 0);
  EXPECT_GT(full, 0);
  EXPECT_EQ(ok + full, kBurst);
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_GE(Sample(metrics, R"(care_requests_total{api="oip_http",code="OK",method="ModelInfer",model="care_s0_queue1"})"),
            ok);
  EXPECT_GE(Sample(metrics,
                   R"(care_requests_total{api="oip_http",code="RESOURCE_EXHAUSTED",method="ModelInfer",model="care_s0_queue1"})"),
            full);
}

TEST_F(HttpTest, TheReadmesCurlCommandClassifiesAnImage) {
  // The README's one-liner, with the test server's port.
  int status = 0;
  const std::string out = RunCommand(
      "cd " + std::string(CARE_SOURCE_DIR) +
          " && (printf '{\"inputs\":[{\"name\":\"image\",\"datatype\":\"BYTES\",\"shape\":[1],"
          "\"parameters\":{\"content_type\":\"base64\"},\"data\":[\"'; base64 -w0 docs/demo/ankle_boot.png; "
          "printf '\"]}],\"outputs\":[{\"name\":\"probabilities\",\"parameters\":{\"classification\":3}}]}') "
          "| curl -s -d @- localhost:" + std::to_string(server_->http_port()) + "/v2/models/care_s0_cls/infer",
      &status);
  ASSERT_EQ(status, 0) << out;
  const json answer = json::parse(out, nullptr, false);
  ASSERT_FALSE(answer.is_discarded()) << out;
  EXPECT_EQ(answer["outputs"][0]["shape"], json({1, 3})) << out;
  v1::ClassifyRequest request;
  request.set_model("care_s0_cls");
  request.set_top_k(1);
  *request.mutable_image() = Encoded(ReadFile(std::string(CARE_SOURCE_DIR) + "/docs/demo/ankle_boot.png"));
  v1::ClassifyResponse expected;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->Classify(&context, request, &expected).ok());
  const std::string first = answer["outputs"][0]["data"][0];
  EXPECT_NE(first.find(absl::StrCat(":", expected.classes(0).index(), ":", expected.classes(0).label())),
            std::string::npos)
      << first;
}

TEST_F(HttpTest, MixedLoadOfAllThreeProtocolsSharesBatchesAndTheClientsAgree) {
  const std::string servers = "--server=127.0.0.1:" + std::to_string(server_->grpc_port()) +
                              " --http_server=127.0.0.1:" + std::to_string(server_->http_port());
  const std::string before = HttpGet(server_->metrics_port(), "/metrics");
  int status = 0;
  const std::string report = RunCommand(Env("CARE_BENCH") + " " + servers +
                                            " --model=care_s0_cls --protocol=vision,oip-grpc,oip-http --concurrency=24 "
                                            "--duration=2 --warmup=0.5 --generate=96x80 --json",
                                        &status);
  ASSERT_EQ(status, 0) << report;
  EXPECT_NE(report.find("\"errors\": {}"), std::string::npos) << report;
  const std::string after = HttpGet(server_->metrics_port(), "/metrics");
  auto delta = [&](const std::string& series) { return Sample(after, series) - std::max(0.0, Sample(before, series)); };
  for (const auto& [api, method] : std::vector<std::pair<std::string, std::string>>{
           {"vision", "Classify"}, {"oip_grpc", "ModelInfer"}, {"oip_http", "ModelInfer"}}) {
    EXPECT_GT(delta(absl::StrFormat(R"(care_requests_total{api="%s",code="OK",method="%s",model="care_s0_cls"})", api,
                                    method)),
              10)
        << api;
  }
  const double images = delta(R"(care_batch_size_sum{model="care_s0_cls"})");
  const double batches = delta(R"(care_batch_size_count{model="care_s0_cls"})");
  EXPECT_GT(images / batches, 1.5) << "24 calls in flight over three protocols share batches";

  // And each answer is its own image's: HTTP calls of four images from eight threads while
  // a burst of Classify calls with four others runs, all in the same batch queue.
  const std::vector<cv::Mat> crops = Crops(8);
  std::vector<std::string> pngs;
  std::vector<std::vector<float>> expected;
  for (const cv::Mat& crop : crops) {
    pngs.push_back(Png(crop));
    expected.push_back(VisionProbabilities(Encoded(pngs.back())));
  }
  std::vector<v1::Image> vision_images;
  for (int i = 4; i < 8; ++i) vision_images.push_back(Encoded(pngs[i]));
  Burst burst(stub_.get(), 32, "care_s0_cls", vision_images);
  std::vector<std::vector<float>> got(24);
  std::vector<int> got_status(24, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 3; ++k) {
        const int call = t * 3 + k, image = call % 4;
        Answer a = Post("/v2/models/care_s0_cls/infer", ImagesHeader({pngs[image]}), LengthPrefixed({pngs[image]}));
        got_status[call] = a.status;
        if (a.status == 200) got[call] = a.Values<float>("probabilities");
      }
    });
  }
  for (auto& thread : threads) thread.join();
  burst.Wait();
  for (int call = 0; call < 24; ++call) {
    ASSERT_EQ(got_status[call], 200) << call;
    ASSERT_EQ(got[call].size(), 1000u);
    for (int c = 0; c < 1000; ++c) ASSERT_NEAR(got[call][c], expected[call % 4][c], 1e-4) << call << "/" << c;
  }
  ASSERT_EQ(burst.Count(StatusCode::OK), 32);
  for (int i = 0; i < 32; ++i) {
    const auto& top = burst.responses[i].classes(0);
    EXPECT_NEAR(top.score(), expected[4 + i % 4][top.index()], 1e-4) << i;
    EXPECT_NEAR(top.score(), *std::max_element(expected[4 + i % 4].begin(), expected[4 + i % 4].end()), 1e-4) << i;
  }

  // care-client over HTTP prints what it prints over care.vision.v1.
  const std::string image = std::string(CARE_SOURCE_DIR) + "/docs/demo/ankle_boot.png";
  int vision_status = 0, http_status = 0;
  const std::string by_vision = RunCommand(Env("CARE_CLIENT") + " classify " + servers +
                                               " --model=care_s0_cls --top_k=4 --image=" + image, &vision_status);
  const std::string by_http = RunCommand(Env("CARE_CLIENT") + " classify " + servers +
                                             " --model=care_s0_cls --top_k=4 --protocol=oip-http --image=" + image,
                                         &http_status);
  ASSERT_EQ(vision_status, 0) << by_vision;
  ASSERT_EQ(http_status, 0) << by_http;
  EXPECT_EQ(by_http, by_vision);
  int segment_status = 0;
  const std::string segmented = RunCommand(Env("CARE_CLIENT") + " segment " + servers +
                                               " --model=care_s0_seg --protocol=oip-http --raw --image=" + image,
                                           &segment_status);
  EXPECT_EQ(segment_status, 0) << segmented;
  EXPECT_NE(segmented.find("care_s0_seg version 1: 28x28 mask"), std::string::npos) << segmented;
  int ready_status = 0;
  const std::string ready = RunCommand(Env("CARE_CLIENT") + " health --protocol=oip-http --model=broken_model " +
                                           servers, &ready_status);
  EXPECT_EQ(WEXITSTATUS(ready_status), 1) << ready;
  EXPECT_EQ(ready, "NOT_READY\n");
  int missing_status = 0;
  const std::string missing = RunCommand(Env("CARE_CLIENT") + " classify --protocol=oip-http --model=nope " + servers +
                                             " --image=" + image + " 2>&1",
                                         &missing_status);
  EXPECT_EQ(WEXITSTATUS(missing_status), static_cast<int>(StatusCode::NOT_FOUND)) << missing;
  EXPECT_NE(missing.find("error: NOT_FOUND: model \"nope\""), std::string::npos) << missing;
}

TEST_F(HttpTest, RepositoryIndexListsEveryModelAndWhyOneFailed) {
  v1::ListModelsResponse listed;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->ListModels(&context, v1::ListModelsRequest(), &listed).ok());
  auto response = Client()->Post("/v2/repository/index", "", "application/json");
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200) << response->body;
  const json index = json::parse(response->body);
  std::map<std::string, json> by_name;
  for (const json& entry : index) by_name[entry["name"]] = entry;
  ASSERT_EQ(by_name.size(), static_cast<size_t>(listed.models_size())) << index.dump();
  for (const auto& m : listed.models()) {
    ASSERT_TRUE(by_name.count(m.name())) << m.name() << " missing from " << index.dump();
    const json& entry = by_name[m.name()];
    if (m.ready()) {
      EXPECT_EQ(entry["state"], "READY") << entry.dump();
      EXPECT_EQ(entry["version"], std::to_string(m.versions(m.versions_size() - 1))) << entry.dump();
    } else {
      // The server's own reason, as ListModels gives it.
      EXPECT_EQ(entry["state"], "UNAVAILABLE") << entry.dump();
      EXPECT_EQ(entry["reason"], m.error()) << entry.dump();
      EXPECT_FALSE(m.error().empty());
    }
  }
  EXPECT_EQ(by_name["broken_model"]["state"], "UNAVAILABLE");
  auto ready = Client()->Post("/v2/repository/index", R"({"ready": true})", "application/json");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->body.find("broken_model"), std::string::npos) << ready->body;
  EXPECT_NE(ready->body.find("care_s0_cls"), std::string::npos) << ready->body;
  Answer bad = Post("/v2/repository/index", json{{"ready", "yes"}});
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.error().find("\"ready\" a boolean"), std::string::npos) << bad.body.dump();
}

TEST_F(HttpTest, ModelConfigIsWhatTheServerReadFromTheRepository) {
  Answer det = Get("/v2/models/care_s0_det/config");
  ASSERT_EQ(det.status, 200) << det.body.dump();
  EXPECT_EQ(det.body["task"], "detection");
  EXPECT_EQ(det.body["ready"], true);
  EXPECT_EQ(det.body["versions"], json({"1"}));
  const std::string labels = ReadFile(Env("CARE_TEST_REPOSITORY") + "/care_s0_det/labels.txt");
  ASSERT_FALSE(det.body["labels"].empty());
  EXPECT_EQ(labels.substr(0, labels.find('\n')), det.body["labels"][0].get<std::string>());
  EXPECT_EQ(det.body["num_classes"].get<size_t>(), det.body["labels"].size());
  EXPECT_TRUE(det.body["postprocess"]["score_threshold"].is_number()) << det.body.dump();
  EXPECT_TRUE(det.body["input"]["width"].is_number()) << det.body.dump();
  Answer cls = Get("/v2/models/care_s0_cls/config");
  EXPECT_EQ(cls.body["task"], "classification");
  EXPECT_FALSE(cls.body.contains("postprocess")) << cls.body.dump();
  // The exporter writes float32 weights; the engine reads their type from the graph.
  EXPECT_EQ(cls.body["precision"], "fp32") << cls.body.dump();
  // A model that failed to load still has a config, with the reason it is not served.
  Answer broken = Get("/v2/models/broken_model/config");
  ASSERT_EQ(broken.status, 200) << broken.body.dump();
  EXPECT_EQ(broken.body["ready"], false);
  EXPECT_FALSE(broken.body["error"].get<std::string>().empty()) << broken.body.dump();
  EXPECT_FALSE(broken.body.contains("precision")) << broken.body.dump();
  Answer unknown = Get("/v2/models/no_such_model/config");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_NE(unknown.error().find("no_such_model"), std::string::npos) << unknown.body.dump();
}

TEST_F(HttpTest, ModelStatsCountEveryApisRequestsWithTheirLatencyHistogram) {
  auto stats = [&]() {
    Answer a = Get("/v2/models/care_s0_cls/stats");
    EXPECT_EQ(a.status, 200) << a.body.dump();
    EXPECT_EQ(a.body["model_stats"].size(), 1u) << a.body.dump();
    return a.body["model_stats"][0];
  };
  const json before = stats();
  EXPECT_EQ(before["name"], "care_s0_cls");
  // One good and one bad Classify (gRPC), one good ModelInfer (HTTP).
  v1::ClassifyRequest request;
  request.set_model("care_s0_cls");
  *request.mutable_image() = Raw64(3);
  v1::ClassifyResponse response;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->Classify(&context, request, &response).ok());
  }
  request.mutable_image()->set_encoded("not an image");
  {
    grpc::ClientContext context;
    ASSERT_EQ(stub_->Classify(&context, request, &response).error_code(), StatusCode::INVALID_ARGUMENT);
  }
  const std::string png = Png(Crops(1)[0]);
  Answer infer = Post("/v2/models/care_s0_cls/infer", ImagesHeader({png}), LengthPrefixed({png}));
  ASSERT_EQ(infer.status, 200) << infer.body.dump();
  const json after = stats();
  EXPECT_EQ(after["success_count"].get<int64_t>() - before["success_count"].get<int64_t>(), 2) << after.dump();
  EXPECT_EQ(after["fail_count"].get<int64_t>() - before["fail_count"].get<int64_t>(), 1) << after.dump();
  const json& buckets = after["duration_seconds"]["buckets"];
  ASSERT_GE(buckets.size(), 2u);
  EXPECT_EQ(buckets.back()["le"], "+Inf");
  EXPECT_EQ(buckets.back()["count"].get<int64_t>(),
            after["success_count"].get<int64_t>() + after["fail_count"].get<int64_t>());
  for (size_t i = 1; i < buckets.size(); ++i) {
    EXPECT_GE(buckets[i]["count"].get<int64_t>(), buckets[i - 1]["count"].get<int64_t>()) << "not cumulative";
  }
  EXPECT_GT(after["duration_seconds"]["sum"].get<double>(), before["duration_seconds"]["sum"].get<double>());
  // Every model of the repository, and 404 for one that is not.
  Answer all = Get("/v2/models/stats");
  EXPECT_NE(all.body.dump().find("\"broken_model\""), std::string::npos) << all.body.dump();
  EXPECT_EQ(Get("/v2/models/no_such_model/stats").status, 404);
  EXPECT_EQ(Get("/v2/models/care_s0_cls/versions/1/stats").body["model_stats"][0]["name"], "care_s0_cls");
  Answer version = Get("/v2/models/care_s0_cls/versions/7/stats");
  EXPECT_EQ(version.status, 404);
  EXPECT_NE(version.error().find("no version 7"), std::string::npos) << version.body.dump();
}

TEST_F(HttpTest, TheConsoleIsServedFromTheServerWithNothingFromElsewhere) {
  auto page = Client()->Get("/");
  ASSERT_TRUE(page);
  ASSERT_EQ(page->status, 200);
  EXPECT_EQ(page->get_header_value("Content-Type").rfind("text/html", 0), 0u);
  const std::string csp = page->get_header_value("Content-Security-Policy");
  EXPECT_NE(csp.find("default-src 'self'"), std::string::npos) << csp;
  EXPECT_NE(csp.find("connect-src 'self'"), std::string::npos) << csp;
  EXPECT_EQ(page->get_header_value("X-Content-Type-Options"), "nosniff");
  EXPECT_EQ(page->body.find("http://"), std::string::npos) << "the page names another origin";
  EXPECT_EQ(page->body.find("https://"), std::string::npos) << "the page names another origin";
  for (const std::string& file : {"console.js", "console.css"}) {
    EXPECT_NE(page->body.find("/console/" + file), std::string::npos) << file;
    auto asset = Client()->Get(("/console/" + file).c_str());
    ASSERT_TRUE(asset);
    EXPECT_EQ(asset->status, 200) << file;
    EXPECT_GT(asset->body.size(), 100u) << file;
    EXPECT_EQ(asset->body, ReadFile(std::string(CARE_SOURCE_DIR) + "/server/console/" + file))
        << file << " served differs from the source";
  }
  Answer missing = Get("/console/nope.js");
  EXPECT_EQ(missing.status, 404);
  EXPECT_NE(missing.error().find("console is at /"), std::string::npos) << missing.body.dump();
}

TEST(HttpConsole, TurnedOffTheRootIs404AndTheApiStillAnswers) {
  Server server;
  server.Start({"--http_console=false"}, "care_server_no_console");
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  httplib::Client client("127.0.0.1", server.http_port());
  auto root = client.Get("/");
  ASSERT_TRUE(root);
  EXPECT_EQ(root->status, 404);
  EXPECT_EQ(root->body.find("console"), std::string::npos) << root->body;
  EXPECT_EQ(client.Get("/console/console.js")->status, 404);
  EXPECT_EQ(client.Get("/v2/health/ready")->status, 200);
  EXPECT_EQ(client.Get("/v2/models/care_s0_cls/stats")->status, 200);
  server.Signal(SIGTERM);
  EXPECT_EQ(server.WaitExit(std::chrono::seconds(30)), 0) << server.log();
}

TEST(HttpDrain, ReadinessAndInferAnswer503WhileTheServerDrains) {
  Server server;
  server.Start({"--drain_timeout=30s"}, "care_server_http_drain");
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  auto vision = v1::VisionService::NewStub(server.channel());
  std::vector<v1::Image> images;
  for (int i = 0; i < 8; ++i) images.push_back(Raw64(i));
  Burst burst(vision.get(), 250, "care_s0_cls", images);
  ASSERT_GE(WaitUntilHeld(server, 20), 20);
  server.Signal(SIGTERM);
  httplib::Client client("127.0.0.1", server.http_port());
  int ready_status = 200;
  for (int i = 0; i < 200 && ready_status == 200; ++i) {
    auto ready = client.Get("/v2/health/ready");
    ASSERT_TRUE(ready);
    ready_status = ready->status;
  }
  EXPECT_EQ(ready_status, 503);
  const std::string png = Png(Crops(1)[0]);
  json header = {{"inputs",
                  {{{"name", "image"},
                    {"datatype", "BYTES"},
                    {"shape", {1}},
                    {"parameters", {{"binary_data_size", png.size() + 4}}}}}}};
  const std::string text = header.dump();
  auto refused = client.Post("/v2/models/care_s0_cls/infer",
                             {{"Inference-Header-Content-Length", std::to_string(text.size())}},
                             text + LengthPrefixed({png}), "application/octet-stream");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503) << refused->body;
  EXPECT_NE(refused->body.find("shutting down"), std::string::npos) << refused->body;
  burst.Wait();
  EXPECT_EQ(server.WaitExit(std::chrono::seconds(60)), 0) << server.log();
}

}  // namespace
}  // namespace careserve
