//! Imports from local sources into the content store: OCI image layouts (a directory or an
//! `oci-archive` tar of one) and `docker save` tars. Every blob is verified on the way in, and
//! the layers land in the same shared, unpacked form as pulled ones.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::blobs::{sha256_file, sha256_of, Blobs};
use super::catalog::ImageRecord;
use super::manifest::{self, ConfigFile, Manifest};
use super::source::Source;
use super::{ImageError, ImageStore};

pub(super) async fn import(
    store: &ImageStore,
    image: &str,
    source: &Source,
) -> Result<ImageRecord, ImageError> {
    match source {
        Source::OciLayout { path, tag } => from_layout(store, image, path, tag.as_deref()).await,
        Source::OciArchive { path, tag } => {
            let scratch = store.unpack_archive(image, path).await?;
            let r = from_layout(store, image, scratch.path(), tag.as_deref()).await;
            drop(scratch);
            r
        }
        Source::DockerArchive { path, name } => {
            let scratch = store.unpack_archive(image, path).await?;
            let r = from_docker_save(store, image, scratch.path(), name.as_deref()).await;
            drop(scratch);
            r
        }
        Source::Dir(_) | Source::Registry(_) => unreachable!("not a local import"),
    }
}

fn invalid(image: &str, problem: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        image: image.into(),
        problem: problem.into(),
    }
}

fn io(image: &str, path: &Path, source: std::io::Error) -> ImageError {
    ImageError::Io {
        image: image.into(),
        path: path.into(),
        source,
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    image: &str,
    what: &str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| invalid(image, format!("{what} is not valid: {e}")))
}

/// A blob of an OCI layout, read and checked against its digest.
fn layout_blob(image: &str, layout: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let hex = super::blobs::digest_hex(digest).map_err(|e| invalid(image, e.to_string()))?;
    let path = layout.join("blobs/sha256").join(hex);
    let bytes = fs::read(&path).map_err(|e| io(image, &path, e))?;
    let actual = sha256_of(&bytes);
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            image: image.into(),
            detail: format!("blob {digest} of the layout hashes to {actual}"),
        });
    }
    Ok(bytes)
}

/// Copies a file into the content store as `digest`, verifying it, off the async threads.
async fn import_file(
    store: &ImageStore,
    image: &str,
    blobs: Arc<Blobs>,
    path: PathBuf,
    digest: String,
) -> Result<(), ImageError> {
    let p = path.clone();
    let d = digest.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut f = fs::File::open(&p).map_err(|e| super::blobs::BlobError::Io {
            path: p.clone(),
            source: e,
        })?;
        blobs.import(&d, &mut f)
    })
    .await
    .map_err(|e| invalid(image, format!("import task failed: {e}")))?;
    result.map_err(|e| store.blob_error(image, e))
}

async fn from_layout(
    store: &ImageStore,
    image: &str,
    layout: &Path,
    tag: Option<&str>,
) -> Result<ImageRecord, ImageError> {
    let index_path = layout.join("index.json");
    let index_bytes = fs::read(&index_path).map_err(|e| io(image, &index_path, e))?;
    let index: Manifest = parse(image, "index.json", &index_bytes)?;
    let desc = manifest::pick_tagged(&index, tag).map_err(|p| invalid(image, p))?;
    let mut digest = desc.digest.clone();
    let mut bytes = layout_blob(image, layout, &digest)?;
    let mut m: Manifest = parse(image, "manifest", &bytes)?;
    if m.is_index() {
        let want = manifest::this_platform();
        let entry = manifest::pick_platform(&m, &want).map_err(|offered| {
            ImageError::NoMatchingPlatform {
                image: image.into(),
                want: want.to_string(),
                offered: offered.join(", "),
            }
        })?;
        digest = entry.digest.clone();
        bytes = layout_blob(image, layout, &digest)?;
        m = parse(image, "manifest", &bytes)?;
    }
    let config_desc = m
        .config
        .clone()
        .ok_or_else(|| invalid(image, format!("manifest {digest} has no config")))?;
    let config_bytes = layout_blob(image, layout, &config_desc.digest)?;
    let config: ConfigFile = parse(image, "config", &config_bytes)?;
    let blob_err = |e| store.blob_error(image, e);
    store.blobs.put(&digest, &bytes).map_err(blob_err)?;
    store
        .blobs
        .put(&config_desc.digest, &config_bytes)
        .map_err(blob_err)?;
    for layer in &m.layers {
        let hex =
            super::blobs::digest_hex(&layer.digest).map_err(|e| invalid(image, e.to_string()))?;
        let path = layout.join("blobs/sha256").join(hex);
        store
            .ensure_layer(image, &layer.digest, || {
                import_file(
                    store,
                    image,
                    store.blobs.clone(),
                    path,
                    layer.digest.clone(),
                )
            })
            .await?;
    }
    Ok(super::new_record(
        digest,
        &config,
        config_desc.digest,
        &m.layers,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A path inside the archive, refused if it would leave it.
fn inside(image: &str, root: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(invalid(
            image,
            format!("manifest.json names {rel:?}, outside the archive"),
        ));
    }
    Ok(root.join(p))
}

async fn from_docker_save(
    store: &ImageStore,
    image: &str,
    root: &Path,
    name: Option<&str>,
) -> Result<ImageRecord, ImageError> {
    let mpath = root.join("manifest.json");
    let mbytes = fs::read(&mpath).map_err(|e| io(image, &mpath, e))?;
    let entries: Vec<SaveEntry> = parse(image, "manifest.json", &mbytes)?;
    let entry = match name {
        Some(n) => entries
            .iter()
            .find(|e| {
                e.repo_tags.iter().flatten().any(|t| {
                    t == n
                        || oci_client::Reference::try_from(t.as_str())
                            .ok()
                            .map(|r| r.whole())
                            == oci_client::Reference::try_from(n).ok().map(|r| r.whole())
                })
            })
            .ok_or_else(|| {
                let tags: Vec<&String> = entries
                    .iter()
                    .flat_map(|e| e.repo_tags.iter().flatten())
                    .collect();
                invalid(
                    image,
                    format!("no image named {n:?} in the archive (it holds {tags:?})"),
                )
            })?,
        None => match entries.as_slice() {
            [one] => one,
            [] => return Err(invalid(image, "manifest.json lists no images")),
            _ => {
                return Err(invalid(
                    image,
                    "the archive holds several images; name one with docker-archive:PATH:NAME",
                ))
            }
        },
    };
    let config_path = inside(image, root, &entry.config)?;
    let config_bytes = fs::read(&config_path).map_err(|e| io(image, &config_path, e))?;
    let config: ConfigFile = parse(image, "the image config", &config_bytes)?;
    let config_digest = sha256_of(&config_bytes);
    let blob_err = |e| store.blob_error(image, e);
    store
        .blobs
        .put(&config_digest, &config_bytes)
        .map_err(blob_err)?;
    let mut layers = Vec::new();
    for rel in &entry.layers {
        let path = inside(image, root, rel)?;
        let p = path.clone();
        let (digest, size) = tokio::task::spawn_blocking(move || {
            Ok::<_, std::io::Error>((sha256_file(&p)?, fs::metadata(&p)?.len()))
        })
        .await
        .map_err(|e| invalid(image, format!("hashing task failed: {e}")))?
        .map_err(|e| io(image, &path, e))?;
        store
            .ensure_layer(image, &digest, || {
                import_file(
                    store,
                    image,
                    store.blobs.clone(),
                    path.clone(),
                    digest.clone(),
                )
            })
            .await?;
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
            "digest": digest,
            "size": size,
        }));
    }
    // The archive carries no manifest: write the one a registry push would have made.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).expect("a JSON value serializes");
    let digest = sha256_of(&bytes);
    store.blobs.put(&digest, &bytes).map_err(blob_err)?;
    let descriptors: Vec<manifest::Descriptor> =
        serde_json::from_value(serde_json::Value::Array(layers))
            .map_err(|e| invalid(image, format!("layer descriptors: {e}")))?;
    Ok(super::new_record(
        digest,
        &config,
        config_digest,
        &descriptors,
    ))
}
