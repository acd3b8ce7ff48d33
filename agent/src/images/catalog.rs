//! The node's image catalog: which images are present, the names that point at them, their
//! layers and config, and when each was last used (for garbage collection). One JSON file,
//! replaced atomically on every change.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The parts of an image's config that decide how its process runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The manifest's digest: the image's identity.
    pub digest: String,
    /// Names that resolve to this image (`registry/repo:tag`, `oci:/layout:tag`, ...).
    pub references: BTreeSet<String>,
    pub config: ImageConfig,
    pub config_digest: String,
    /// Layer blob digests, lowest first.
    pub layers: Vec<String>,
    /// Sum of the compressed layer sizes, as the registry serves them.
    pub size: u64,
    pub created_ms: i64,
    pub last_used_ms: i64,
}

#[derive(Default, Serialize, Deserialize)]
struct CatalogFile {
    images: BTreeMap<String, ImageRecord>,
    /// Unpacked size of each layer directory.
    #[serde(default)]
    layer_sizes: BTreeMap<String, u64>,
}

pub struct Catalog {
    path: PathBuf,
    file: CatalogFile,
}

impl Catalog {
    pub fn open(path: PathBuf) -> io::Result<Catalog> {
        let file = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => CatalogFile::default(),
            Err(e) => return Err(e),
        };
        Ok(Catalog { path, file })
    }

    fn save(&self) -> io::Result<()> {
        self.write(true)
    }

    /// Replaces the file atomically; `durable` also fsyncs it (a record of what is on disk
    /// must survive a crash; a last-use time may be lost).
    fn write(&self, durable: bool) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.file).map_err(io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        if durable {
            std::fs::File::open(&tmp)?.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }

    pub fn by_reference(&self, reference: &str) -> Option<&ImageRecord> {
        self.file
            .images
            .values()
            .find(|r| r.references.contains(reference))
    }

    pub fn by_digest(&self, digest: &str) -> Option<&ImageRecord> {
        self.file.images.get(digest)
    }

    /// Finds an image by name, by full digest, or by a unique digest prefix (as `docker rmi`).
    pub fn find(&self, name: &str) -> Option<&ImageRecord> {
        if let Some(r) = self.by_reference(name).or_else(|| self.by_digest(name)) {
            return Some(r);
        }
        let hex = name.trim_start_matches("sha256:");
        if hex.len() < 6 {
            return None;
        }
        let mut hits = self
            .file
            .images
            .values()
            .filter(|r| r.digest.trim_start_matches("sha256:").starts_with(hex));
        match (hits.next(), hits.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    pub fn images(&self) -> impl Iterator<Item = &ImageRecord> {
        self.file.images.values()
    }

    /// Records `record` under `reference`, moving the name off any image it named before
    /// (a tag that moved), and persists the catalog.
    pub fn put(&mut self, reference: &str, mut record: ImageRecord) -> io::Result<()> {
        for r in self.file.images.values_mut() {
            r.references.remove(reference);
        }
        if let Some(old) = self.file.images.get(&record.digest) {
            record.references.extend(old.references.iter().cloned());
            record.created_ms = old.created_ms;
        }
        record.references.insert(reference.to_string());
        self.file.images.insert(record.digest.clone(), record);
        self.save()
    }

    /// Records a use (for LRU eviction). Not fsynced: it is on every task start's path, and
    /// a lost last-use time only makes an image look older.
    pub fn touch(&mut self, digest: &str, now_ms: i64) -> io::Result<()> {
        if let Some(r) = self.file.images.get_mut(digest) {
            r.last_used_ms = now_ms;
        }
        self.write(false)
    }

    pub fn remove(&mut self, digest: &str) -> io::Result<Option<ImageRecord>> {
        let r = self.file.images.remove(digest);
        self.save()?;
        Ok(r)
    }

    pub fn set_layer_size(&mut self, layer: &str, size: u64) -> io::Result<()> {
        self.file.layer_sizes.insert(layer.to_string(), size);
        self.save()
    }

    pub fn layer_size(&self, layer: &str) -> u64 {
        self.file.layer_sizes.get(layer).copied().unwrap_or(0)
    }

    pub fn forget_layer(&mut self, layer: &str) -> io::Result<()> {
        self.file.layer_sizes.remove(layer);
        self.save()
    }

    /// Layer and blob digests some image still needs.
    pub fn referenced(&self) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        for r in self.file.images.values() {
            set.insert(r.digest.clone());
            set.insert(r.config_digest.clone());
            set.extend(r.layers.iter().cloned());
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(digest: &str) -> ImageRecord {
        ImageRecord {
            digest: digest.into(),
            references: BTreeSet::new(),
            config: ImageConfig::default(),
            config_digest: format!("{digest}-config"),
            layers: vec![format!("{digest}-layer")],
            size: 1,
            created_ms: 1,
            last_used_ms: 1,
        }
    }

    #[test]
    fn a_moved_tag_leaves_the_old_image_and_the_catalog_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let mut c = Catalog::open(path.clone()).unwrap();
        c.put("reg/app:v1", record("sha256:aaaaaa01")).unwrap();
        c.put("reg/app:latest", record("sha256:aaaaaa01")).unwrap();
        c.put("reg/app:latest", record("sha256:bbbbbb02")).unwrap();
        let c = Catalog::open(path).unwrap();
        assert_eq!(
            c.by_reference("reg/app:latest").unwrap().digest,
            "sha256:bbbbbb02"
        );
        let old = c.by_digest("sha256:aaaaaa01").unwrap();
        assert_eq!(
            old.references.iter().collect::<Vec<_>>(),
            vec!["reg/app:v1"]
        );
        assert_eq!(c.find("aaaaaa").unwrap().digest, "sha256:aaaaaa01");
        assert!(c.find("sha256:").is_none());
        assert!(c.referenced().contains("sha256:bbbbbb02-layer"));
    }
}
