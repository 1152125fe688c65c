# Durable's image: the `processor`, `projector` and `durable` binaries on a slim base, run as a
# non-root user. Build: docker build -t durable:0.1.0 .   (compose/compose.yaml builds it too)

# --- build -------------------------------------------------------------------------------------
FROM rust:1.88-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config python3 perl zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p durable-processor --bin processor \
                                   -p durable-projector --bin projector \
                                   -p durable-cli --bin durable \
 && mkdir -p /out \
 && cp target/release/processor target/release/projector target/release/durable /out/

# --- run ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS run
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin durable
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
EXPOSE 9464 9465
CMD ["processor", "--help"]
