FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
# OpenSSL for TLS and SASL/SCRAM to Kafka; the CA certificates for TLS to managed services.
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home /var/lib/commercex commercex && mkdir -p /var/lib/commercex && chown commercex /var/lib/commercex
COPY --from=build /src/target/release/commercex /usr/local/bin/commercex
COPY config.toml /etc/commercex/config.toml
USER commercex
WORKDIR /var/lib/commercex
ENV COMMERCEX__STORE__DATA_DIR=/var/lib/commercex/data COMMERCEX__LOG__FORMAT=json
EXPOSE 8000
ENTRYPOINT ["commercex", "--config", "/etc/commercex/config.toml"]
