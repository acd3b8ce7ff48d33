//! The node's images: where they come from ([`source`]), the content store of verified blobs
//! ([`blobs`]), layers unpacked once and shared by every image and task that uses them
//! ([`layer`]), the catalog of names → images ([`catalog`]), registry pulls ([`registry`]),
//! local imports ([`local`]), and garbage collection under a disk budget.
//!
//! Invariant: a blob or layer directory that exists is complete and verified — both are
//! written under a temporary name and renamed into place. Concurrent pulls of the same
//! content share one download (a lock per digest). Garbage collection never removes a layer
//! that a running task has mounted, nor one a pull in progress is about to mount.

pub mod auth;
pub mod blobs;
pub mod catalog;
pub mod layer;
mod local;
pub mod manifest;
mod registry;
pub mod source;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use auth::Credentials;
use blobs::{BlobError, Blobs};
use catalog::Catalog;
pub use catalog::{ImageConfig, ImageRecord};
use source::Source;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image:?}: not found at {registry} ({detail})")]
    NotFound {
        image: String,
        registry: String,
        detail: String,
    },
    #[error(
        "image {image:?}: unauthorized at {registry}: check the registry credentials ({detail})"
    )]
    Unauthorized {
        image: String,
        registry: String,
        detail: String,
    },
    #[error("image {image:?}: digest mismatch: {detail}")]
    DigestMismatch { image: String, detail: String },
    #[error(
        "image {image:?}: no matching platform: this node is {want}, the image offers {offered}"
    )]
    NoMatchingPlatform {
        image: String,
        want: String,
        offered: String,
    },
    #[error("image {image:?} is not present on this node and its pull policy is \"never\"")]
    NotPresent { image: String },
    #[error("image {image:?}: {problem}")]
    Invalid { image: String, problem: String },
    #[error("image {image:?}: registry {registry}: {detail}")]
    Registry {
        image: String,
        registry: String,
        detail: String,
    },
    #[error("image {image:?}: {path}: {source}")]
    Io {
        image: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no image {name:?} on this node")]
    Unknown { name: String },
}

/// When to contact the image's source (ECS/Kubernetes semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Resolve the name at the source every time (a moved tag is followed).
    Always,
    /// Use the node's copy if it has one.
    #[default]
    IfNotPresent,
    /// Never contact the source; fail if the image is not on the node.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<PullPolicy, String> {
        match s {
            "" | "if-not-present" | "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "always" | "Always" => Ok(PullPolicy::Always),
            "never" | "Never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "unknown pull policy {other:?}; use always, if-not-present or never"
            )),
        }
    }
}

/// A resolved image: its layer directories (lowest first) and its config.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
    /// The manifest digest (None for `dir:` images).
    pub digest: Option<String>,
    /// Keeps garbage collection away until the task's rootfs is mounted.
    _hold: Option<Arc<tokio::sync::OwnedRwLockReadGuard<()>>>,
}

/// Bytes of one layer downloaded so far.
#[derive(Debug, Clone)]
pub struct ProgressEvent {
    pub image: String,
    pub layer: String,
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone)]
pub struct ImageStoreConfig {
    pub root: PathBuf,
    /// A docker-style config.json with registry credentials for this node.
    pub docker_config: Option<PathBuf>,
    /// Registries (host[:port]) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Garbage-collect unused images, least recently used first, above this many bytes.
    pub disk_budget: Option<u64>,
}

/// One image as `skiff images ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    pub digest: String,
    pub references: Vec<String>,
    /// Compressed size, as pulled.
    pub size: u64,
    /// Unpacked size of its layers (shared layers counted in full for each image).
    pub unpacked_size: u64,
    pub in_use: bool,
    pub created_ms: i64,
    pub last_used_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub images_removed: Vec<String>,
    pub layers_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskUsage {
    /// Unpacked layers, each counted once however many images and tasks share it.
    pub layers: u64,
    /// Manifests, configs and layer downloads not yet unpacked.
    pub blobs: u64,
    pub budget: Option<u64>,
}

pub struct ImageStore {
    cfg: ImageStoreConfig,
    blobs: Arc<Blobs>,
    catalog: Mutex<Catalog>,
    /// Made at the first registry pull (a node without a trust store still runs local images).
    client: std::sync::OnceLock<oci_client::Client>,
    layers_dir: PathBuf,
    tmp_dir: PathBuf,
    /// Pulls hold it shared until their task's rootfs is mounted; GC holds it exclusively.
    gc_lock: Arc<tokio::sync::RwLock<()>>,
    progress: tokio::sync::broadcast::Sender<ProgressEvent>,
}

/// An error with its sources, as one line ("failed to unpack x: No space left on device").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        source = inner.source();
    }
    s
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The catalog record of a freshly stored image (no names yet: the caller adds its own).
pub(crate) fn new_record(
    digest: String,
    config: &manifest::ConfigFile,
    config_digest: String,
    layers: &[manifest::Descriptor],
) -> ImageRecord {
    ImageRecord {
        digest,
        references: Default::default(),
        config: image_config(config),
        config_digest,
        layers: layers.iter().map(|l| l.digest.clone()).collect(),
        size: layers.iter().map(|l| l.size).sum(),
        created_ms: now_ms(),
        last_used_ms: now_ms(),
    }
}

pub(crate) fn image_config(c: &manifest::ConfigFile) -> ImageConfig {
    let c = c.config.as_ref();
    ImageConfig {
        entrypoint: c.and_then(|c| c.entrypoint.clone()).unwrap_or_default(),
        cmd: c.and_then(|c| c.cmd.clone()).unwrap_or_default(),
        env: c.and_then(|c| c.env.clone()).unwrap_or_default(),
        working_dir: c.and_then(|c| c.working_dir.clone()).unwrap_or_default(),
        user: c.and_then(|c| c.user.clone()).unwrap_or_default(),
    }
}

/// The lower-layer lists (top first, as in the mount options) of this machine's overlay mounts.
fn overlay_lowers() -> Vec<Vec<PathBuf>> {
    crate::mountinfo::read()
        .unwrap_or_default()
        .iter()
        .filter(|m| m.fstype == "overlay")
        .filter_map(|m| m.option("lowerdir"))
        .map(|l| l.split(':').map(PathBuf::from).collect())
        .collect()
}

impl ImageStore {
    /// The registry client anonymous and node-credential pulls share (oci-client caches
    /// tokens per registry in it).
    fn shared_client(&self) -> Result<oci_client::Client, String> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let c = registry::client(&self.cfg.insecure_registries)?;
        Ok(self.client.get_or_init(|| c).clone())
    }

    pub fn open(cfg: ImageStoreConfig) -> std::io::Result<ImageStore> {
        let layers_dir = cfg.root.join("layers");
        let tmp_dir = cfg.root.join("tmp");
        std::fs::create_dir_all(layers_dir.join("sha256"))?;
        // Scratch from a previous run is never complete: start clean.
        let _ = std::fs::remove_dir_all(&tmp_dir);
        std::fs::create_dir_all(&tmp_dir)?;
        let blobs = Arc::new(Blobs::open(cfg.root.join("blobs"))?);
        let catalog = Mutex::new(Catalog::open(cfg.root.join("catalog.json"))?);
        Ok(ImageStore {
            blobs,
            catalog,
            client: std::sync::OnceLock::new(),
            layers_dir,
            tmp_dir,
            gc_lock: Arc::new(tokio::sync::RwLock::new(())),
            progress: tokio::sync::broadcast::channel(1024).0,
            cfg,
        })
    }

    pub fn config(&self) -> &ImageStoreConfig {
        &self.cfg
    }

    /// Download progress of every pull on this node.
    pub fn subscribe_progress(&self) -> tokio::sync::broadcast::Receiver<ProgressEvent> {
        self.progress.subscribe()
    }

    fn progress(&self, e: ProgressEvent) {
        let _ = self.progress.send(e);
    }

    fn layer_path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        Ok(self
            .layers_dir
            .join("sha256")
            .join(blobs::digest_hex(digest)?))
    }

    fn blob_error(&self, image: &str, e: BlobError) -> ImageError {
        match e {
            BlobError::Mismatch { expected, actual } => ImageError::DigestMismatch {
                image: image.into(),
                detail: format!("blob {expected} hashes to {actual}"),
            },
            BlobError::BadDigest(d) => ImageError::Invalid {
                image: image.into(),
                problem: format!("{d:?} is not a sha256 digest"),
            },
            BlobError::Io { path, source } => ImageError::Io {
                image: image.into(),
                path,
                source,
            },
        }
    }

    /// The catalog's record of `digest` if every layer of it is on disk.
    fn present(&self, digest: &str) -> Option<ImageRecord> {
        let rec = self.catalog.lock().unwrap().by_digest(digest).cloned()?;
        rec.layers
            .iter()
            .all(|l| self.layer_path(l).is_ok_and(|p| p.is_dir()))
            .then_some(rec)
    }

    fn image_of(
        &self,
        rec: &ImageRecord,
        hold: Arc<tokio::sync::OwnedRwLockReadGuard<()>>,
    ) -> Image {
        Image {
            layers: rec
                .layers
                .iter()
                .filter_map(|l| self.layer_path(l).ok())
                .collect(),
            config: rec.config.clone(),
            digest: Some(rec.digest.clone()),
            _hold: Some(hold),
        }
    }

    /// Makes `reference` available on this node according to `policy` and returns it.
    /// Local sources (`oci:`, archives) are re-read on every call unless the policy is
    /// `never`: reading them is cheap, and already-stored layers are not copied again.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        creds: Option<&Credentials>,
    ) -> Result<Image, ImageError> {
        let source = Source::parse(reference).map_err(|problem| ImageError::Invalid {
            image: reference.into(),
            problem,
        })?;
        if let Source::Dir(path) = &source {
            if !path.is_dir() {
                return Err(ImageError::Invalid {
                    image: reference.into(),
                    problem: format!("{} is not a directory", path.display()),
                });
            }
            return Ok(Image {
                layers: vec![path.clone()],
                config: ImageConfig::default(),
                digest: None,
                _hold: None,
            });
        }
        let hold = Arc::new(self.gc_lock.clone().read_owned().await);
        let name = source.catalog_name(reference);
        let known = {
            let catalog = self.catalog.lock().unwrap();
            match &source {
                Source::Registry(r) => r
                    .digest()
                    .and_then(|d| catalog.by_digest(d))
                    .or_else(|| catalog.by_reference(&name))
                    .map(|r| r.digest.clone()),
                _ => catalog.by_reference(&name).map(|r| r.digest.clone()),
            }
        };
        let known = known.and_then(|d| self.present(&d));
        let use_known = matches!(
            (policy, &source),
            (PullPolicy::Never, _) | (PullPolicy::IfNotPresent, Source::Registry(_))
        );
        if use_known {
            if let Some(rec) = known {
                self.catalog
                    .lock()
                    .unwrap()
                    .touch(&rec.digest, now_ms())
                    .map_err(|e| self.catalog_error(reference, e))?;
                return Ok(self.image_of(&rec, hold));
            }
            if policy == PullPolicy::Never {
                return Err(ImageError::NotPresent {
                    image: reference.into(),
                });
            }
        }
        let rec = match &source {
            Source::Registry(r) => registry::pull(self, reference, r, creds).await?,
            _ => local::import(self, reference, &source).await?,
        };
        let rec = {
            let mut catalog = self.catalog.lock().unwrap();
            let mut rec = rec;
            rec.last_used_ms = now_ms();
            catalog
                .put(&name, rec.clone())
                .map_err(|e| self.catalog_error(reference, e))?;
            catalog.by_digest(&rec.digest).cloned().unwrap_or(rec)
        };
        Ok(self.image_of(&rec, hold))
    }

    fn catalog_error(&self, image: &str, e: std::io::Error) -> ImageError {
        ImageError::Io {
            image: image.into(),
            path: self.cfg.root.join("catalog.json"),
            source: e,
        }
    }

    /// Runs `fetch` (which must put the blob `digest` into the content store) unless the
    /// layer is already unpacked, then unpacks it. One fetch per digest at a time.
    async fn ensure_layer<F, Fut>(
        &self,
        image: &str,
        digest: &str,
        fetch: F,
    ) -> Result<(), ImageError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), ImageError>>,
    {
        let dest = self
            .layer_path(digest)
            .map_err(|e| self.blob_error(image, e))?;
        let _one = self.blobs.lock(digest).await;
        if dest.is_dir() {
            return Ok(());
        }
        if !self.blobs.has(digest) {
            fetch().await?;
        }
        let blob = self
            .blobs
            .path(digest)
            .map_err(|e| self.blob_error(image, e))?;
        let scratch = self.tmp_dir.join(format!("layer-{}", ulid::Ulid::new()));
        let (s, d) = (scratch.clone(), dest.clone());
        let unpacked = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            layer::unpack(layer::open_layer(&blob)?, &s)?;
            let size = layer::disk_usage(&s);
            std::fs::rename(&s, &d)?;
            Ok(size)
        })
        .await
        .map_err(|e| ImageError::Invalid {
            image: image.into(),
            problem: format!("unpack task failed: {e}"),
        })?;
        let size = match unpacked {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(ImageError::Invalid {
                    image: image.into(),
                    problem: format!("unpacking layer {digest}: {}", error_chain(&e)),
                });
            }
        };
        // The unpacked directory is what tasks use; the compressed copy is not kept.
        let _ = self.blobs.remove(digest);
        self.catalog
            .lock()
            .unwrap()
            .set_layer_size(digest, size)
            .map_err(|e| self.catalog_error(image, e))
    }

    /// Unpacks an archive into a scratch directory that is removed when dropped.
    async fn unpack_archive(
        &self,
        image: &str,
        path: &Path,
    ) -> Result<tempfile::TempDir, ImageError> {
        let scratch = tempfile::Builder::new()
            .prefix("archive-")
            .tempdir_in(&self.tmp_dir)
            .map_err(|e| ImageError::Io {
                image: image.into(),
                path: self.tmp_dir.clone(),
                source: e,
            })?;
        let (p, dest) = (path.to_path_buf(), scratch.path().to_path_buf());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut a = tar::Archive::new(layer::open_layer(&p)?);
            a.unpack(&dest)
        })
        .await
        .map_err(|e| ImageError::Invalid {
            image: image.into(),
            problem: format!("unpack task failed: {e}"),
        })?
        .map_err(|e| ImageError::Io {
            image: image.into(),
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(scratch)
    }

    /// Layer digests some overlay mount uses: never collected.
    fn mounted_layers(&self, mounts: &[Vec<PathBuf>]) -> BTreeSet<String> {
        let dir = self.layers_dir.join("sha256");
        mounts
            .iter()
            .flatten()
            .filter(|p| p.parent() == Some(dir.as_path()))
            .filter_map(|p| p.file_name()?.to_str().map(|h| format!("sha256:{h}")))
            .collect()
    }

    /// Whether a task runs `rec`: some overlay is mounted over exactly its layers.
    fn image_in_use(&self, rec: &ImageRecord, mounts: &[Vec<PathBuf>]) -> bool {
        let mut want: Vec<PathBuf> = rec
            .layers
            .iter()
            .filter_map(|l| self.layer_path(l).ok())
            .collect();
        want.reverse();
        !want.is_empty() && mounts.contains(&want)
    }

    pub fn list(&self) -> Vec<ImageSummary> {
        let mounts = overlay_lowers();
        let catalog = self.catalog.lock().unwrap();
        catalog
            .images()
            .map(|r| ImageSummary {
                digest: r.digest.clone(),
                references: r.references.iter().cloned().collect(),
                size: r.size,
                unpacked_size: r.layers.iter().map(|l| catalog.layer_size(l)).sum(),
                in_use: self.image_in_use(r, &mounts),
                created_ms: r.created_ms,
                last_used_ms: r.last_used_ms,
            })
            .collect()
    }

    pub fn disk_usage(&self) -> DiskUsage {
        let catalog = self.catalog.lock().unwrap();
        let layers = std::fs::read_dir(self.layers_dir.join("sha256"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(|h| format!("sha256:{h}")))
                    .map(|d| catalog.layer_size(&d))
                    .sum()
            })
            .unwrap_or(0);
        let blobs = self
            .blobs
            .list()
            .iter()
            .map(|d| self.blobs.size(d))
            .sum::<u64>()
            + self.blobs.partial_bytes();
        DiskUsage {
            layers,
            blobs,
            budget: self.cfg.disk_budget,
        }
    }

    /// Removes an image's record (by name, digest or unique digest prefix) and whatever of
    /// its content nothing else uses. Layers a running task has mounted stay until it ends.
    pub async fn remove(&self, name: &str) -> Result<GcReport, ImageError> {
        let _gc = self.gc_lock.write().await;
        let digest = {
            let catalog = self.catalog.lock().unwrap();
            let full = Source::parse(name)
                .map(|s| s.catalog_name(name))
                .unwrap_or_else(|_| name.to_string());
            catalog
                .find(&full)
                .or_else(|| catalog.find(name))
                .map(|r| r.digest.clone())
                .ok_or_else(|| ImageError::Unknown { name: name.into() })?
        };
        self.catalog
            .lock()
            .unwrap()
            .remove(&digest)
            .map_err(|e| self.catalog_error(name, e))?;
        let mut report = self.collect();
        report.images_removed.push(digest);
        Ok(report)
    }

    /// Removes every image no running task uses, then unreferenced content.
    pub async fn prune(&self) -> GcReport {
        let _gc = self.gc_lock.write().await;
        let mounts = overlay_lowers();
        let victims: Vec<String> = self
            .catalog
            .lock()
            .unwrap()
            .images()
            .filter(|r| !self.image_in_use(r, &mounts))
            .map(|r| r.digest.clone())
            .collect();
        for d in &victims {
            let _ = self.catalog.lock().unwrap().remove(d);
        }
        // No pull is in progress (they hold the lock shared): partial downloads are stale.
        self.blobs.clear_partials();
        let mut report = self.collect();
        report.images_removed = victims;
        report
    }

    /// Keeps disk use under the configured budget by removing unused images, least
    /// recently used first. Does nothing without a budget.
    pub async fn enforce_budget(&self) -> GcReport {
        let Some(budget) = self.cfg.disk_budget else {
            return GcReport::default();
        };
        let _gc = self.gc_lock.write().await;
        let mut report = self.collect();
        let mounts = overlay_lowers();
        let mut candidates: Vec<(i64, String)> = self
            .catalog
            .lock()
            .unwrap()
            .images()
            .filter(|r| !self.image_in_use(r, &mounts))
            .map(|r| (r.last_used_ms, r.digest.clone()))
            .collect();
        candidates.sort();
        for (_, digest) in candidates {
            let usage = self.disk_usage();
            if usage.layers + usage.blobs <= budget {
                break;
            }
            let _ = self.catalog.lock().unwrap().remove(&digest);
            let r = self.collect();
            report.images_removed.push(digest);
            report.layers_removed += r.layers_removed;
            report.blobs_removed += r.blobs_removed;
            report.bytes_freed += r.bytes_freed;
        }
        report
    }

    /// Deletes layers and blobs no image references and no task has mounted. Call with the
    /// GC lock held exclusively.
    fn collect(&self) -> GcReport {
        let used = self.mounted_layers(&overlay_lowers());
        let mut report = GcReport::default();
        let mut catalog = self.catalog.lock().unwrap();
        let referenced = catalog.referenced();
        if let Ok(rd) = std::fs::read_dir(self.layers_dir.join("sha256")) {
            for e in rd.flatten() {
                let Some(d) = e.file_name().to_str().map(|h| format!("sha256:{h}")) else {
                    continue;
                };
                if referenced.contains(&d) || used.contains(&d) {
                    continue;
                }
                let size = catalog.layer_size(&d);
                if std::fs::remove_dir_all(e.path()).is_ok() {
                    let _ = catalog.forget_layer(&d);
                    report.layers_removed += 1;
                    report.bytes_freed += size;
                }
            }
        }
        for d in self.blobs.list() {
            if !referenced.contains(&d) {
                let size = self.blobs.size(&d);
                if self.blobs.remove(&d).is_ok() {
                    report.blobs_removed += 1;
                    report.bytes_freed += size;
                }
            }
        }
        report
    }
}
