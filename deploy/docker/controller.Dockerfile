# syntax=docker/dockerfile:1
# (BuildKit: the cache mounts below need it.)
# porter-controller. Build from the repository root, with the base images
# pinned by digest (see docs/install.md, "Build the images"):
#   docker build -f deploy/docker/controller.Dockerfile \
#     --build-arg RUST_IMAGE=rust:1.95-bookworm@sha256:<digest> \
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:<digest> \
#     -t porter-controller .
# The controller needs no eBPF toolchain: porter-agent (whose build script
# compiles the eBPF object) is not built here.

# No defaults: a tag can be moved to other bytes, a digest cannot, so the
# build refuses to start without both (and the build stage checks they are
# digests). `cargo xtask images` passes bases it makes from Debian packages
# (a debootstrap system with cc, and distroless' packages), pinned by their
# local digests, and builds this file with buildah (docs/install.md).
ARG RUST_IMAGE
ARG RUNTIME_IMAGE

FROM ${RUST_IMAGE} AS build
ARG RUST_IMAGE
ARG RUNTIME_IMAGE
RUN for image in "$RUST_IMAGE" "$RUNTIME_IMAGE"; do \
      case "$image" in *@sha256:*) ;; \
        *) echo "base image '$image' is not pinned by digest: pass name:tag@sha256:..." >&2; exit 1 ;; \
      esac; \
    done
WORKDIR /src
COPY . .
# --locked: the build fails if Cargo.lock would have to change.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p porter-controller \
    && install -D target/release/porter-controller /out/porter-controller

# glibc and libgcc only; runs as an unprivileged user (65532, "nonroot").
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/porter-controller /usr/local/bin/porter-controller
USER 65532:65532
EXPOSE 9190 17900
ENTRYPOINT ["/usr/local/bin/porter-controller"]
