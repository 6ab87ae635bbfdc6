# syntax=docker/dockerfile:1
#
# The ICOM router image: icom-server and icom-certs on Debian bookworm-slim,
# run as the unprivileged user icom (uid/gid 10001).
#
#   docker build -t icom .
#   docker compose up -d          # compose.yaml: certificates, then the router
#
# Layout inside the image:
#   /etc/icom/icom-server.toml   the configuration (deploy/docker/icom-server.toml)
#   /etc/icom/certs/             ca.pem, crl.pem, router.pem, router.key (mount them here)
#   /etc/icom/ca/                the CA directory of the compose `certs` service
#   /var/lib/icom/               the router's database and reset.key (VOLUME: keep it across restarts)
#   /usr/local/bin/              icom-server, icom-certs, icom-mint-certs, icom-healthcheck
#
# server/tests/deploy.rs runs the ENTRYPOINT, CMD, ENV, HEALTHCHECK and
# STOPSIGNAL below, as written, against the real binary; scripts/test.d/20-deploy
# lints this file with hadolint.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
# .dockerignore keeps the context to the workspace's sources.
COPY . .
# The caches keep the registry and the target directory between builds; the
# binaries are copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p icom-server -p icom-certs \
    && install -D -m 0755 -t /out target/release/icom-server target/release/icom-certs \
    && strip --strip-debug /out/icom-server /out/icom-certs

FROM debian:bookworm-slim

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="icom-server" \
      org.opencontainers.image.description="ICOM router: QUIC + mutual-TLS event routing between Arma 3 servers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/icom-router/icom" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# A fixed uid/gid, so volumes and bind mounts can be given to it in advance
# (chown 10001:10001). New named volumes take the ownership of these folders.
RUN groupadd --system --gid 10001 icom \
    && useradd --system --uid 10001 --gid icom --home-dir /var/lib/icom \
        --no-create-home --shell /usr/sbin/nologin icom \
    && install -d -o root -g icom -m 0750 /etc/icom \
    && install -d -o icom -g icom -m 0750 /etc/icom/certs /var/lib/icom \
    && install -d -o icom -g icom -m 0700 /etc/icom/ca

COPY --from=builder /out/icom-server /out/icom-certs /usr/local/bin/
COPY --chmod=0755 deploy/docker/mint-certs.sh /usr/local/bin/icom-mint-certs
COPY --chmod=0755 deploy/docker/healthcheck.sh /usr/local/bin/icom-healthcheck
COPY --chown=root:icom --chmod=0640 deploy/docker/icom-server.toml /etc/icom/icom-server.toml
COPY --chmod=0644 config/icom-server.example.toml config/policy.example.toml /usr/share/doc/icom/

# Plain log lines for `docker logs` and log shippers (no ANSI colours);
# ICOM_LOG__FORMAT=json gives one JSON object per line instead.
ENV NO_COLOR=1

USER 10001:10001
WORKDIR /var/lib/icom
VOLUME ["/var/lib/icom"]
EXPOSE 9090/udp

# SIGTERM: the router closes every connection with `shutdown`, flushes its
# store and exits 0. SIGHUP (docker kill -s SIGHUP) reloads the config, CA,
# CRL and router certificate.
STOPSIGNAL SIGTERM

# A command that is in the image (deploy/docker/healthcheck.sh): the config
# and its files still load, the router's UDP port is bound, and /readyz on
# the router's loopback metrics address answers 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["icom-healthcheck", "/etc/icom/icom-server.toml"]

ENTRYPOINT ["icom-server"]
CMD ["--config", "/etc/icom/icom-server.toml"]
