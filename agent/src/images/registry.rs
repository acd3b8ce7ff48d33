//! Pulls from OCI distribution registries through `oci-client` (token and basic auth, plain
//! HTTP only for registries marked insecure). Index → this node's platform; every blob is
//! verified against its digest; a layer download interrupted by a network error is resumed
//! with a range request, a corrupt one is thrown away.

use std::io::Write;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::auth::{self, Credentials};
use super::blobs::BlobError;
use super::catalog::ImageRecord;
use super::manifest::{self, ConfigFile, Descriptor, Manifest};
use super::{ImageError, ImageStore, ProgressEvent};

const ACCEPT: &[&str] = &[
    manifest::OCI_MANIFEST,
    manifest::DOCKER_MANIFEST,
    manifest::OCI_INDEX,
    manifest::DOCKER_LIST,
];

/// How many layers of one image download at once.
const PARALLEL_LAYERS: usize = 3;
/// Bytes between two progress reports of one layer.
const PROGRESS_EVERY: u64 = 256 * 1024;
/// Attempts per blob when the connection fails mid-download (each resumes the last).
const ATTEMPTS: u32 = 4;

/// A registry client, or why none can be made here. oci-client builds a default HTTP client
/// whatever its configuration says, and that panics on a host whose trust store is empty (a
/// minimal edge image without ca-certificates): check the trust store first, so such a node
/// still runs local images and fails only registry pulls, with a message that says why.
pub(super) fn client(insecure: &[String]) -> Result<Client, String> {
    // ring is the binary's one crypto stack; reqwest panics building a client without one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().map_err(|e| {
        let cause = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
        format!(
            "this node cannot pull from registries: {cause} (install the ca-certificates package, or set SSL_CERT_FILE to a CA bundle)"
        )
    })?;
    Ok(Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    }))
}

/// Whether a registry (host[:port]) is on this machine's loopback: 127.0.0.0/8, ::1 or
/// localhost. Docker allows plain HTTP for those without being told; so does skiff.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A TLS client's error when the server answered in plain HTTP ("received corrupt message
/// of type InvalidContentType", rustls's words).
fn plain_http_answered(e: &OciDistributionError) -> bool {
    let chain = super::error_chain(e);
    chain.contains("InvalidContentType") || chain.contains("corrupt message")
}

pub(super) async fn pull(
    store: &ImageStore,
    image: &str,
    r: &Reference,
    creds: Option<&Credentials>,
) -> Result<ImageRecord, ImageError> {
    let registry = r.resolve_registry().to_string();
    if let Some(c) = creds {
        let (theirs, ours) = (
            auth::normalize_registry(&c.server),
            auth::normalize_registry(r.registry()),
        );
        if theirs != ours {
            return Err(ImageError::Invalid {
                image: image.into(),
                problem: format!(
                    "the task's registry credentials are for {theirs}, not {ours}; they were not sent"
                ),
            });
        }
    }
    let auth = match creds {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => match &store.cfg.docker_config {
            Some(path) => match auth::from_docker_config(path, r.registry()) {
                Ok(Some(c)) => RegistryAuth::Basic(c.username, c.password),
                Ok(None) => RegistryAuth::Anonymous,
                Err(problem) => {
                    return Err(ImageError::Invalid {
                        image: image.into(),
                        problem,
                    })
                }
            },
            None => RegistryAuth::Anonymous,
        },
    };
    // oci-client remembers one auth per registry: a task's own credentials get a client of
    // their own so they never leak into another task's pull.
    let not_here = |problem| ImageError::Registry {
        image: image.into(),
        registry: registry.clone(),
        detail: problem,
    };
    // A loopback registry not named insecure is tried in plain HTTP first (as Docker does
    // for 127.0.0.0/8), then with TLS.
    let loopback = is_loopback(r.registry())
        && !store
            .cfg
            .insecure_registries
            .iter()
            .any(|i| i == r.registry());
    let mut client = if creds.is_some() || loopback {
        let mut insecure = store.cfg.insecure_registries.clone();
        if loopback {
            insecure.push(r.registry().to_string());
        }
        client(&insecure).map_err(not_here)?
    } else {
        store.shared_client().map_err(not_here)?
    };
    let fail = |e| classify(image, &registry, e);

    let first = client.pull_manifest_raw(r, &auth, ACCEPT).await;
    let first = match first {
        Err(e) if loopback => {
            tracing::debug!(error = %super::error_chain(&e), "plain HTTP to a loopback registry failed; trying TLS");
            client = if creds.is_some() {
                self::client(&store.cfg.insecure_registries).map_err(not_here)?
            } else {
                store.shared_client().map_err(not_here)?
            };
            client.pull_manifest_raw(r, &auth, ACCEPT).await
        }
        other => other,
    };
    let client = &client;
    let (bytes, digest) = first.map_err(|e| {
        if plain_http_answered(&e) {
            ImageError::Registry {
                image: image.into(),
                registry: registry.clone(),
                detail: format!(
                    "the registry answered in plain HTTP, not TLS; if it has no TLS, name it on the agent with --insecure-registry {} ({})",
                    r.registry(),
                    super::error_chain(&e)
                ),
            }
        } else {
            fail(e)
        }
    })?;
    let mut m: Manifest = parse(image, "manifest", &bytes)?;
    let (mut bytes, mut digest) = (bytes, digest);
    if m.is_index() {
        let want = manifest::this_platform();
        let entry = manifest::pick_platform(&m, &want)
            .map_err(|offered| ImageError::NoMatchingPlatform {
                image: image.into(),
                want: want.to_string(),
                offered: offered.join(", "),
            })?
            .clone();
        let by_digest = Reference::with_digest(
            r.registry().to_string(),
            r.repository().to_string(),
            entry.digest.clone(),
        );
        (bytes, digest) = client
            .pull_manifest_raw(&by_digest, &auth, ACCEPT)
            .await
            .map_err(fail)?;
        m = parse(image, "manifest", &bytes)?;
    }
    let blob_err = |e| store.blob_error(image, e);
    if let Some(rec) = store.present(&digest) {
        return Ok(rec);
    }
    let config_desc = m.config.clone().ok_or_else(|| ImageError::Invalid {
        image: image.into(),
        problem: format!("manifest {digest} has no config"),
    })?;
    store.blobs.put(&digest, &bytes).map_err(blob_err)?;
    if !store.blobs.has(&config_desc.digest) {
        let mut config = Vec::new();
        client
            .pull_blob(r, &oci_desc(&config_desc), &mut config)
            .await
            .map_err(fail)?;
        store
            .blobs
            .put(&config_desc.digest, &config)
            .map_err(blob_err)?;
    }
    let config: ConfigFile = parse(
        image,
        "config",
        &store.blobs.read(&config_desc.digest).map_err(blob_err)?,
    )?;

    // Boxed so the layer futures have one concrete type (and no higher-ranked closure
    // lifetimes leak into the task's future).
    type LayerPull<'a> =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ImageError>> + Send + 'a>>;
    let mut pulls: Vec<LayerPull<'_>> = Vec::new();
    for layer in &m.layers {
        let registry = registry.as_str();
        pulls.push(Box::pin(store.ensure_layer(
            image,
            &layer.digest,
            move || download(store, client, image, registry, r, layer),
        )));
    }
    futures::stream::iter(pulls)
        .buffer_unordered(PARALLEL_LAYERS)
        .try_collect::<Vec<()>>()
        .await?;

    Ok(super::new_record(
        digest,
        &config,
        config_desc.digest,
        &m.layers,
    ))
}

fn oci_desc(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        ..Default::default()
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    image: &str,
    what: &str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Invalid {
        image: image.into(),
        problem: format!("the {what} is not valid JSON of its kind: {e}"),
    })
}

/// Downloads one layer blob into the content store, resuming a partial download.
async fn download(
    store: &ImageStore,
    client: &Client,
    image: &str,
    registry: &str,
    r: &Reference,
    layer: &Descriptor,
) -> Result<(), ImageError> {
    let digest = &layer.digest;
    let desc = oci_desc(layer);
    let blob_err = |e| store.blob_error(image, e);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let offset = store.blobs.partial_len(digest).map_err(blob_err)?;
        let response = if offset > 0 && offset < layer.size {
            client
                .pull_blob_stream_partial(r, &desc, offset, None)
                .await
        } else {
            store.blobs.discard_partial(digest);
            client
                .pull_blob_stream(r, &desc)
                .await
                .map(BlobResponse::Full)
        };
        let response = response.map_err(|e| classify(image, registry, e))?;
        let full_response = matches!(response, BlobResponse::Full(_));
        let (mut stream, mut file, mut done) = match response {
            BlobResponse::Full(s) => (s, store.blobs.partial_writer(digest, true), 0),
            BlobResponse::Partial(s) => (s, store.blobs.partial_writer(digest, false), offset),
        };
        let file = file.as_mut().map_err(|e| {
            store.blob_error(
                image,
                BlobError::Io {
                    path: store.blobs.partial_path(digest).unwrap_or_default(),
                    source: std::io::Error::other(e.to_string()),
                },
            )
        })?;
        let mut failure = None;
        let mut reported = done;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if let Err(e) = file.write_all(&bytes) {
                        failure = Some(e);
                        break;
                    }
                    done += bytes.len() as u64;
                    if done - reported < PROGRESS_EVERY && done < layer.size {
                        continue;
                    }
                    reported = done;
                    store.progress(ProgressEvent {
                        image: image.into(),
                        layer: digest.clone(),
                        done,
                        total: layer.size,
                    });
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let verification_failed = failure.as_ref().is_some_and(|e| {
            e.get_ref()
                .is_some_and(|inner| inner.to_string().to_lowercase().contains("digest"))
        });
        let resumed = offset > 0 && done > offset && !full_response;
        // All bytes arrived, or the stream's own verification failed: the store checks the
        // digest (and drops a corrupt partial). A resumed download whose whole does not check
        // out may have had a bad prefix: it is fetched once more, from zero.
        let Some(e) = failure.filter(|_| !verification_failed) else {
            match store.blobs.commit(digest) {
                Err(BlobError::Mismatch { .. }) if resumed && attempt < ATTEMPTS => {
                    tracing::warn!(%image, layer = %digest,
                        "resumed download does not match its digest; downloading it again");
                    continue;
                }
                r => return r.map_err(blob_err),
            }
        };
        if attempt >= ATTEMPTS {
            return Err(ImageError::Registry {
                image: image.into(),
                registry: registry.into(),
                detail: format!(
                    "downloading layer {digest}: {e} (after {ATTEMPTS} attempts; {done} bytes kept to resume)"
                ),
            });
        }
        tracing::warn!(%image, layer = %digest, bytes = done, error = %e,
            "layer download interrupted; resuming");
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
}

/// Turns a registry client error into the reason a user reads.
fn classify(image: &str, registry: &str, e: OciDistributionError) -> ImageError {
    let (image, registry) = (image.to_string(), registry.to_string());
    let detail = super::error_chain(&e);
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => ImageError::Unauthorized {
            image,
            registry,
            detail,
        },
        OciDistributionError::ImageManifestNotFoundError(_) => ImageError::NotFound {
            image,
            registry,
            detail,
        },
        OciDistributionError::RegistryError { ref envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let messages: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect();
            let detail = messages.join("; ");
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                ImageError::NotFound {
                    image,
                    registry,
                    detail,
                }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Unauthorized {
                    image,
                    registry,
                    detail,
                }
            } else {
                ImageError::Registry {
                    image,
                    registry,
                    detail,
                }
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => ImageError::NotFound {
            image,
            registry,
            detail,
        },
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => ImageError::Unauthorized {
            image,
            registry,
            detail,
        },
        OciDistributionError::DigestError(d) => ImageError::DigestMismatch {
            image,
            detail: d.to_string(),
        },
        _ => ImageError::Registry {
            image,
            registry,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for r in [
            "127.0.0.1:5000",
            "127.3.4.5",
            "localhost:5000",
            "LOCALHOST",
            "[::1]:5000",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "registry.lan:5000",
            "10.0.0.1:5000",
            "docker.io",
            "[2001:db8::1]:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
