# syntax=docker/dockerfile:1
# One image with both binaries: `cloudify` (the server and the STAC catalog) and
# `cloudify-operator`. The chart (charts/cloudify) and the operator's built-in DEFAULT_IMAGE
# both use ghcr.io/cloudify/cloudify:<workspace version>:
#   docker build -t ghcr.io/cloudify/cloudify:0.1.0 .
# The server links the netCDF-C and HDF5 C libraries, so builder and runtime are the same
# Debian release: the runtime packages carry exactly the sonames the build linked against.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libnetcdf-dev libhdf5-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --locked: the image builds exactly the dependency versions CI tested.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --locked --release -p cloudify-server -p cloudify-operator

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Runtime halves of libnetcdf-dev/libhdf5-dev (bookworm sonames: libnetcdf.so.19,
# libhdf5_serial.so.103, libhdf5_serial_hl.so.100); ca-certificates for https/S3 sources and
# a TLS catalog.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libnetcdf19 libhdf5-103-1 libhdf5-hl-100 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/cloudify /usr/local/bin/cloudify
COPY --from=builder /src/target/release/cloudify-operator /usr/local/bin/cloudify-operator
# Unprivileged, numeric (so runAsNonRoot can verify it without /etc/passwd): the uid the
# operator's server pods and the chart's pods run as (distroless "nonroot", 65532).
USER 65532:65532
# 9000: `cloudify serve` in operator-made pods; 8080: operator probes/metrics, chart catalog.
EXPOSE 9000 8080
ENTRYPOINT ["cloudify"]
CMD ["--help"]
