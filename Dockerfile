# Build stage: the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
RUN cargo build --release --locked --bin sidecache

# Runtime stage: the binary, CA certificates for TLS to Postgres/Redis, a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home sidecache
COPY --from=build /src/target/release/sidecache /usr/local/bin/sidecache
COPY config.toml /etc/sidecache/config.toml
USER 10001
ENV SIDECACHE_CONFIG=/etc/sidecache/config.toml \
    SIDECACHE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["sidecache"]
CMD ["serve"]
