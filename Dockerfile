# syntax=docker/dockerfile:1
#
# The `shop` image: one binary, /usr/local/bin/shop, whose first argument picks
# the service (product, order, payment, gateway) or `migrate`.
#
#   docker build -t REGISTRY/shop:TAG .
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.

# The toolchain the project is developed with (Cargo.toml asks for >= 1.85).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# What rdkafka's bundled librdkafka build (its own configure + make) needs.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential \
        libssl-dev \
        perl \
        pkg-config \
        python3 \
        zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Link zlib statically (libz-sys builds its bundled copy): the distroless
# runtime below promises glibc, libgcc and OpenSSL, not libz.so.1.
ENV LIBZ_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never

COPY . .

# The registry and target/ live in BuildKit cache mounts, kept between builds
# on the same builder: a source change recompiles only the workspace crates,
# not the dependencies. The binary is copied out of the cache mount, then
# checked: it must not need libz.so at run time.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git/db,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin shop \
    && install -D -m 0755 target/release/shop /out/shop \
    && if ldd /out/shop | grep -E 'not found|libz\.so'; then \
        echo "shop links a shared library the runtime image lacks" >&2; exit 1; \
    fi

# glibc, libgcc, CA certificates and a `nonroot` user (65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=builder /out/shop /usr/local/bin/shop

USER 65532:65532

# order, product, payment, gateway (each service listens on its own port only).
EXPOSE 8080 8081 8082 8083

ENTRYPOINT ["/usr/local/bin/shop"]
