# syntax=docker/dockerfile:1
# Herald: one image with `dispatcher` (every role) and `loadgen`.
#   docker build -t herald .
#   docker run --rm herald --help
# Stage 1 builds dependencies from the manifests alone, so source edits reuse that layer.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY dispatcher/Cargo.toml dispatcher/
COPY loadgen/Cargo.toml loadgen/
COPY benches/Cargo.toml benches/
# Stub every target the manifests name, build the dependency graph, drop the stubs.
RUN mkdir -p dispatcher/src loadgen/src \
 && echo 'fn main() {}' > dispatcher/src/main.rs && touch dispatcher/src/lib.rs \
 && echo 'fn main() {}' > loadgen/src/main.rs && touch loadgen/src/lib.rs \
 && for f in bare202 recorder scheduler codec ingest; do echo 'fn main() {}' > benches/$f.rs; done \
 && cargo build --release --locked -p dispatcher -p loadgen \
 && rm -rf dispatcher/src loadgen/src benches/*.rs
COPY . .
# The real sources are newer than the stub build's fingerprints.
RUN touch dispatcher/src/lib.rs dispatcher/src/main.rs loadgen/src/lib.rs loadgen/src/main.rs \
 && cargo build --release --locked -p dispatcher -p loadgen --bin dispatcher --bin loadgen \
 && cp target/release/dispatcher target/release/loadgen /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home herald
COPY --from=build /usr/local/bin/dispatcher /usr/local/bin/loadgen /usr/local/bin/
USER herald
# 8080: the ingress; 9091 / 9092: health and metrics of `deliver` / `record`.
EXPOSE 8080 9091 9092
# Inside a container the ingress must listen on every interface, or a published port
# reaches nothing (the binary's default, 127.0.0.1:8080, is for a host).
ENV HERALD_LISTEN=0.0.0.0:8080
# HERALD_HEALTH_URL lets each role point the check at its own health endpoint.
ENV HERALD_HEALTH_URL=http://127.0.0.1:8080/healthz
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
  CMD curl -fsS "$HERALD_HEALTH_URL" >/dev/null || exit 1
ENTRYPOINT ["dispatcher"]
CMD ["run"]
