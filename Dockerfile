# ipam-apiserver image: build with cargo, run as non-root on a minimal base.
#   docker build -t ghcr.io/miloapis/ipam-apiserver:latest .
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin ipam-apiserver \
 && cp target/release/ipam-apiserver /ipam-apiserver

# glibc + CA certificates, no shell; uid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ipam-apiserver /usr/local/bin/ipam-apiserver
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/ipam-apiserver"]
CMD ["serve", "--data-dir=/var/lib/ipam"]
