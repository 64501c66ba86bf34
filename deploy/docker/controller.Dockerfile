# porter-controller. Build from the repository root:
#   docker build -f deploy/docker/controller.Dockerfile -t porter-controller .
# The controller needs no eBPF toolchain: porter-agent (whose build script
# compiles the eBPF object) is not built here.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p porter-controller \
    && install -D target/release/porter-controller /out/porter-controller

# glibc and libgcc only; runs as an unprivileged user (65532, "nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/porter-controller /usr/local/bin/porter-controller
USER 65532:65532
EXPOSE 9190 17900
ENTRYPOINT ["/usr/local/bin/porter-controller"]
