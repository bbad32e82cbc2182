# mem-cuda agent image. Multi-stage: a Go builder with cgo (the cuda package
# is a dlopen shim, so no CUDA toolkit is needed), and a slim glibc runtime.
# The NVIDIA driver (libcuda.so.1) comes from the node through the NVIDIA
# container runtime (NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -trimpath \
      -ldflags "-s -w -X main.Version=${VERSION} -X github.com/memcuda/memcuda/pkg/server.Software=memcuda-agent/${VERSION}" \
      -o /out/ ./cmd/memcuda-agent ./cmd/memcuda

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/memcuda-agent /out/memcuda /usr/local/bin/
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MEMCUDA_LOG_FORMAT=json
USER 0
ENTRYPOINT ["/usr/local/bin/memcuda-agent"]
