# careserve image: care-server with the default model repository baked in.
#
#   docker build -t careserve .
#   docker run -p 50051:50051 -p 9091:9091 -p 8000:8000 careserve
#   docker run -v /path/to/repo:/models:ro careserve          # your models instead
#   docker build --build-arg CHECKPOINT_DIR=checkpoints -t careserve .   # authors' weights
#
# The build stage runs the same dependency script and make targets as CI (.ci/run ->
# make test -> make build); the runtime stage carries only runtime libraries.

# ---- build ------------------------------------------------------------------------
FROM debian:bookworm-slim AS build
WORKDIR /src
COPY . .
# scripts/deps.sh: the Debian packages CI installs (make deps runs it).
RUN bash scripts/deps.sh
# The binaries, as CI builds them.
RUN make build BUILD_DIR=build
# The default model repository (random weights unless CHECKPOINT_DIR holds checkpoints
# inside the build context).
ARG CHECKPOINT_DIR=
RUN make repository MODEL_REPOSITORY=/models CHECKPOINT_DIR=${CHECKPOINT_DIR}

# ---- runtime ----------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# Runtime libraries only: LibTorch and its BLAS (OpenBLAS; care-server links its OpenMP
# build), tcmalloc, gRPC, protobuf, OpenCV's core, imgproc and imgcodecs, libjpeg-turbo,
# prometheus-cpp core, Abseil, cpp-httplib (the HTTP API), zlib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtorch1.13 libopenblas0-pthread libopenblas0-openmp libgomp1 libtcmalloc-minimal4 libgrpc++1.51 libgrpc29 libprotobuf32 \
      libopencv-core406 libopencv-imgproc406 libopencv-imgcodecs406 libjpeg62-turbo \
      libprometheus-cpp-core1.0 libabsl20220623 libcpp-httplib0.11 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin careserve
COPY --from=build /src/build/care-server /src/build/care-client /usr/local/bin/
# torchvision's operator library (nms, roi_align: Mask R-CNN models), without Python:
# it links only LibTorch. care-server's --torchvision_ops=auto finds it here.
COPY --from=build /usr/lib/python3/dist-packages/torchvision/_C.cpython-311-x86_64-linux-gnu.so \
     /usr/lib/careserve/torchvision_ops.so
COPY --from=build --chown=10001:10001 /models /models
USER 10001
# gRPC (care.vision.v1 and the Open Inference Protocol), metrics, HTTP (Open Inference Protocol)
EXPOSE 50051 9091 8000
# /models may be replaced by a volume holding another repository.
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["care-client", "health", "--server=localhost:50051", "--timeout=2"]
ENTRYPOINT ["care-server", "--model_repository=/models", "--port=50051", "--metrics_port=9091", "--http_port=8000"]
