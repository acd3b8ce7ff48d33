//! Images from local sources, named like skopeo transports:
//! `dir:/path/to/rootfs` (used as is, read-only) and `oci:/path/to/layout[:tag]` (an OCI image
//! layout whose layers are verified against their digests and unpacked once into a cache keyed
//! by manifest digest, honouring whiteouts). Registry pulls come with the image issue.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image:?}: {problem}")]
    Invalid { image: String, problem: String },
    #[error("image {image:?}: {path}: {source}")]
    Io {
        image: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// The parts of an image's config that decide how its process runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// A resolved image: a read-only root filesystem and its config.
#[derive(Debug, Clone)]
pub struct Image {
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

pub struct ImageStore {
    cache: PathBuf,
}

impl ImageStore {
    pub fn new(cache: PathBuf) -> ImageStore {
        ImageStore { cache }
    }

    /// Resolves an image reference, unpacking it into the cache if needed. Blocking.
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        if let Some(path) = reference.strip_prefix("dir:") {
            let rootfs = PathBuf::from(path);
            if !rootfs.is_dir() {
                return Err(invalid(reference, format!("{path} is not a directory")));
            }
            Ok(Image {
                rootfs,
                config: ImageConfig::default(),
            })
        } else if let Some(rest) = reference.strip_prefix("oci:") {
            let (layout, tag) = split_tag(rest);
            self.unpack_oci(reference, Path::new(layout), tag)
        } else {
            Err(invalid(
                reference,
                "unsupported image source; use dir:/path or oci:/path[:tag]".into(),
            ))
        }
    }

    fn unpack_oci(
        &self,
        image: &str,
        layout: &Path,
        tag: Option<&str>,
    ) -> Result<Image, ImageError> {
        let io_err = |path: &Path| {
            let image = image.to_string();
            let path = path.to_path_buf();
            move |source| ImageError::Io {
                image,
                path,
                source,
            }
        };
        let index_path = layout.join("index.json");
        let index: Index = read_json(image, &index_path)?;
        let desc = pick_manifest(image, &index, tag)?;
        let manifest_bytes = read_blob(image, layout, &desc.digest)?;
        let mut manifest: Manifest = parse_json(image, "manifest", &manifest_bytes)?;
        if manifest
            .media_type
            .as_deref()
            .is_some_and(|m| m.contains("index"))
            || (!manifest.manifests.is_empty() && manifest.layers.is_empty())
        {
            // A nested index (multi-platform): pick this machine's platform.
            let nested: Index = parse_json(image, "index", &manifest_bytes)?;
            let d = pick_platform(image, &nested)?;
            manifest = parse_json(image, "manifest", &read_blob(image, layout, &d.digest)?)?;
        }
        let config: ConfigFile = parse_json(
            image,
            "config",
            &read_blob(image, layout, &manifest.config.digest)?,
        )?;
        let c = config.config.unwrap_or_default();
        let config = ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        };

        let key = desc.digest.replace(':', "-");
        let dest = self.cache.join(&key).join("rootfs");
        if dest.is_dir() {
            return Ok(Image {
                rootfs: dest,
                config,
            });
        }
        // Unpack into a scratch dir and rename: a crash never leaves a half-unpacked image
        // where a later task would use it.
        let scratch = self
            .cache
            .join(format!(".tmp-{key}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
        for layer in &manifest.layers {
            let blob = blob_path(image, layout, &layer.digest)?;
            verify_digest(image, &blob, &layer.digest)?;
            let file = File::open(&blob).map_err(io_err(&blob))?;
            let reader: Box<dyn Read> = match layer.media_type.as_str() {
                m if m.ends_with("gzip") => Box::new(flate2::read::GzDecoder::new(file)),
                m if m.ends_with("tar") || m.ends_with(".tar") || m.ends_with("diff.tar") => {
                    Box::new(file)
                }
                m => {
                    return Err(invalid(
                        image,
                        format!("layer {} has unsupported media type {m}", layer.digest),
                    ))
                }
            };
            apply_layer(reader, &scratch).map_err(io_err(&blob))?;
        }
        let parent = dest.parent().expect("dest has a parent");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        match fs::rename(&scratch, &dest) {
            Ok(()) => {}
            // Another task unpacked it meanwhile: use theirs.
            Err(_) if dest.is_dir() => {
                let _ = fs::remove_dir_all(&scratch);
            }
            Err(e) => return Err(io_err(&dest)(e)),
        }
        Ok(Image {
            rootfs: dest,
            config,
        })
    }
}

fn invalid(image: &str, problem: String) -> ImageError {
    ImageError::Invalid {
        image: image.to_string(),
        problem,
    }
}

/// `path:tag` → (path, Some(tag)); a colon inside the path (before a slash) is not a tag.
fn split_tag(s: &str) -> (&str, Option<&str>) {
    match s.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !t.is_empty() => (p, Some(t)),
        _ => (s, None),
    }
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default = "missing_config")]
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

fn missing_config() -> Descriptor {
    Descriptor {
        media_type: String::new(),
        digest: String::new(),
        annotations: Default::default(),
        platform: None,
    }
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    config: Option<ContainerConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

fn pick_manifest<'a>(
    image: &str,
    index: &'a Index,
    tag: Option<&str>,
) -> Result<&'a Descriptor, ImageError> {
    const REF: &str = "org.opencontainers.image.ref.name";
    match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF).map(String::as_str) == Some(t))
            .ok_or_else(|| {
                let tags: Vec<&str> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.annotations.get(REF))
                    .map(String::as_str)
                    .collect();
                invalid(
                    image,
                    format!("no tag {t:?} in the layout (tags: {tags:?})"),
                )
            }),
        None => match index.manifests.as_slice() {
            [one] => Ok(one),
            [] => Err(invalid(
                image,
                "the layout's index.json lists no manifests".into(),
            )),
            _ => Err(invalid(
                image,
                "the layout holds several images; name one with :tag".into(),
            )),
        },
    }
}

fn pick_platform<'a>(image: &str, index: &'a Index) -> Result<&'a Descriptor, ImageError> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    index
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .ok_or_else(|| invalid(image, format!("no manifest for platform linux/{arch}")))
}

fn blob_path(image: &str, layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let (algo, hex) = digest
        .split_once(':')
        .filter(|(a, h)| {
            *a == "sha256" && h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .ok_or_else(|| invalid(image, format!("{digest:?} is not a sha256 digest")))?;
    Ok(layout.join("blobs").join(algo).join(hex))
}

fn read_blob(image: &str, layout: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(image, layout, digest)?;
    let bytes = fs::read(&path).map_err(|source| ImageError::Io {
        image: image.into(),
        path: path.clone(),
        source,
    })?;
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if got != digest {
        return Err(invalid(
            image,
            format!("blob {digest} is corrupt: its content hashes to {got}"),
        ));
    }
    Ok(bytes)
}

fn verify_digest(image: &str, path: &Path, digest: &str) -> Result<(), ImageError> {
    let mut f = File::open(path).map_err(|source| ImageError::Io {
        image: image.into(),
        path: path.into(),
        source,
    })?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(|source| ImageError::Io {
        image: image.into(),
        path: path.into(),
        source,
    })?;
    let got = format!("sha256:{}", hex::encode(h.finalize()));
    if got != digest {
        return Err(invalid(
            image,
            format!("layer {digest} is corrupt: its content hashes to {got}"),
        ));
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(image: &str, path: &Path) -> Result<T, ImageError> {
    let bytes = fs::read(path).map_err(|source| ImageError::Io {
        image: image.into(),
        path: path.into(),
        source,
    })?;
    parse_json(image, &path.display().to_string(), &bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    image: &str,
    what: &str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| invalid(image, format!("{what} is not valid: {e}")))
}

/// Unpacks one layer tar onto `dest`, applying OCI whiteouts: `.wh.NAME` deletes NAME from
/// the layers below, `.wh..wh..opq` empties its directory of what the layers below put there.
pub fn apply_layer(reader: impl Read, dest: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    // Paths this layer itself wrote: an opaque marker must not delete them.
    let mut written: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let rel: PathBuf = path
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == ".wh..wh..opq" {
            let dir = dest.join(&parent);
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children.flatten() {
                    let child_rel = parent.join(child.file_name());
                    if !written.contains(&child_rel) {
                        remove_any(&child.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(target) = name.strip_prefix(".wh.") {
            remove_any(&dest.join(&parent).join(target))?;
            continue;
        }
        // A file replacing a directory (or the reverse) from a lower layer.
        let target = dest.join(&rel);
        if let Ok(meta) = fs::symlink_metadata(&target) {
            let is_dir_entry = entry.header().entry_type().is_dir();
            if meta.is_dir() != is_dir_entry || meta.file_type().is_symlink() {
                remove_any(&target)?;
            }
        }
        entry.unpack_in(dest)?;
        written.insert(rel);
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match content {
                Some(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *data).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        apply_layer(
            &layer(&[
                ("etc/", None),
                ("etc/a", Some(b"a")),
                ("etc/b", Some(b"b")),
                ("var/", None),
                ("var/old", Some(b"x")),
                ("keep", Some(b"k")),
            ])[..],
            root,
        )
        .unwrap();
        apply_layer(
            &layer(&[
                ("etc/.wh.a", Some(b"")),
                ("var/", None),
                ("var/.wh..wh..opq", Some(b"")),
                ("var/new", Some(b"n")),
                ("etc/b", Some(b"b2")),
            ])[..],
            root,
        )
        .unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(fs::read(root.join("etc/b")).unwrap(), b"b2");
        assert!(!root.join("var/old").exists());
        assert_eq!(fs::read(root.join("var/new")).unwrap(), b"n");
        assert!(root.join("keep").exists());
        assert!(!root.join("etc/.wh.a").exists());
    }

    #[test]
    fn tags_split_only_at_the_end() {
        assert_eq!(split_tag("/x/layout:v1"), ("/x/layout", Some("v1")));
        assert_eq!(split_tag("/x/layout"), ("/x/layout", None));
        assert_eq!(split_tag("/x:y/layout"), ("/x:y/layout", None));
    }

    #[test]
    fn dir_images_must_exist() {
        let store = ImageStore::new(tempfile::tempdir().unwrap().keep());
        let e = store.resolve("dir:/definitely/not/here").unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
