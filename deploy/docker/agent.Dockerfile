# syntax=docker/dockerfile:1
# (BuildKit: the cache mounts below need it.)
# porter-agent. Build from the repository root, with the base images pinned
# by digest (see docs/install.md, "Build the images"):
#   docker build -f deploy/docker/agent.Dockerfile \
#     --build-arg RUST_IMAGE=rust:1.95-bookworm@sha256:<digest> \
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12@sha256:<digest> \
#     -t porter-agent .
# The eBPF object is compiled by porter-agent's build script, which needs the
# nightly pinned in porter-ebpf/rust-toolchain.toml with rust-src, and
# bpf-linker (a pinned version) linked against that nightly's LLVM:
# `cargo xtask build-ebpf` installs exactly that.

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
# --locked here and in the eBPF build: the build fails if a Cargo.lock would
# have to change. build-ebpf installs the eBPF toolchain, then builds
# porter-agent (`cargo build --release --locked -p porter-agent`, whose build
# script compiles the eBPF object): the binary copied below is that build's.
# (A second `cargo build` here, run outside xtask, would compile every
# dependency a second time.)
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo run --locked --package xtask -- build-ebpf --release --locked \
    && install -D target/release/porter-agent /out/porter-agent

# The agent runs as root with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and
# CAP_NET_RAW only (see deploy/porter.yaml); nothing else is in the image.
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/porter-agent /usr/local/bin/porter-agent
EXPOSE 9191
ENTRYPOINT ["/usr/local/bin/porter-agent"]
