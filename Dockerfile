# syntax=docker/dockerfile:1
#
# Shunt's image: the `shunt` binary (agent + its eBPF object, embedded at build time) on a
# minimal runtime. Build: `docker build -t shunt .`
# The demo app used by deploy/kind/e2e.sh is another target: `docker build --target demo-app .`
#
# The eBPF object needs the pinned nightly with rust-src and bpf-linker built against that
# nightly's libLLVM; `cargo xtask setup` installs exactly those (../shared/TOOLCHAIN.md), so the
# builder runs it rather than repeating the recipe here.

# --- toolchains: the pinned stable + nightly and bpf-linker (cached until xtask or a manifest
# changes). Only the manifests and xtask are copied, with empty stand-ins for the other crates'
# sources, so editing the agent does not rebuild bpf-linker (about 70 s).
FROM rust:1-bookworm AS toolchains
ENV RUSTUP_AUTO_SELF_UPDATE=disable \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY rust-toolchain.toml Cargo.toml Cargo.lock ./
COPY .cargo/ .cargo/
COPY xtask/ xtask/
COPY agent/Cargo.toml agent/
COPY agent-common/Cargo.toml agent-common/
COPY agent-ebpf/Cargo.toml agent-ebpf/
COPY tests/Cargo.toml tests/
RUN for crate in agent agent-common agent-ebpf tests; do \
        mkdir -p "$crate/src" && touch "$crate/src/lib.rs" "$crate/src/main.rs"; \
    done \
    # rustup does not install the toolchain rust-toolchain.toml pins by itself here.
    && rustup toolchain install \
    && cargo xtask setup \
    && rm -rf agent agent-common agent-ebpf tests target

# --- the agent
FROM toolchains AS build
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked -p agent \
    && cp target/release/shunt /shunt

# --- the demo app (frontend, reviews, ratings in deploy/kind/e2e.sh); not part of a release
FROM toolchains AS build-demo-app
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked -p tests --bin demo-app \
    && cp target/release/demo-app /demo-app

FROM gcr.io/distroless/cc-debian12 AS demo-app
COPY --from=build-demo-app /demo-app /usr/local/bin/demo-app
ENTRYPOINT ["/usr/local/bin/demo-app"]

# --- runtime (the default target): glibc and libgcc from distroless, and the one binary.
# Runs as root with only the capabilities the DaemonSet adds (deploy/base/daemonset.yaml).
FROM gcr.io/distroless/cc-debian12 AS shunt
COPY --from=build /shunt /usr/local/bin/shunt
ENTRYPOINT ["/usr/local/bin/shunt"]
CMD ["run", "--help"]
