# lookout-ingester: build stage, then a slim runtime that runs as a
# non-root user. Build with `docker build -t lookout-ingester .`.

FROM rust:1-bookworm AS build
# protoc for prost-build; OpenSSL headers for the TLS clients.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads (testkit/pulsar-proxy is a workspace member).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
COPY testkit testkit
RUN cargo build --release --locked --bin lookout-ingester

FROM debian:bookworm-slim
# CA certificates for verify-full / pulsar+ssl; libssl for the TLS clients.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/lookout-ingester \
      --create-home --shell /usr/sbin/nologin lookout
COPY --from=build /src/target/release/lookout-ingester /usr/local/bin/lookout-ingester
# A numeric user, so that runtimes enforcing runAsNonRoot can check it.
USER 10001:10001
# The dead-letter spool's default path is relative to the working directory,
# which this user owns.
WORKDIR /var/lib/lookout-ingester
EXPOSE 9002
ENTRYPOINT ["/usr/local/bin/lookout-ingester"]
CMD ["run", "--config", "/etc/lookout-ingester/config.yaml"]
