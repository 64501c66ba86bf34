# porter-agent. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t porter-agent .
# The eBPF object is compiled by porter-agent's build script, which needs a
# nightly toolchain with rust-src and bpf-linker linked against that
# nightly's LLVM: `cargo xtask build-ebpf` installs exactly that.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo xtask build-ebpf --release \
    && cargo build --release --locked -p porter-agent \
    && install -D target/release/porter-agent /out/porter-agent

# The agent runs as root with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON,
# CAP_SYS_RESOURCE and CAP_NET_RAW only (see deploy/porter.yaml); nothing else
# is in the image.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/porter-agent /usr/local/bin/porter-agent
EXPOSE 9191
ENTRYPOINT ["/usr/local/bin/porter-agent"]
