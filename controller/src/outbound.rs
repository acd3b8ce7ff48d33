//! HTTP clients for the controller's outbound calls (webhooks, STS). TLS is verified against
//! the system's roots; a host with none (a minimal edge image without /etc/ssl/certs) gets the
//! Mozilla roots compiled in, instead of a controller that cannot start.

/// Makes ring the process's TLS crypto provider unless one is set: the binary links no other
/// (reqwest and object_store are built without aws-lc, to keep the binary small), and reqwest
/// and object_store's S3 client panic when building a client with none installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a client from `configure`d builder, falling back to the bundled roots when the
/// system's cannot be loaded.
pub fn client(
    configure: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    configure(reqwest::Client::builder()).build().or_else(|_| {
        let bundled = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der).ok());
        configure(reqwest::Client::builder())
            .tls_certs_only(bundled)
            .build()
    })
}
