//! The content store: blobs (manifests, configs, compressed layers) stored once under their
//! sha256 digest. A blob enters only through a partial file that is verified against its digest
//! and then renamed into place, so a present blob is always a correct one; a partial left by an
//! interrupted download is resumed from where it stopped.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0:?} is not a sha256 digest (sha256:<64 hex digits>)")]
    BadDigest(String),
    #[error("digest mismatch for {expected}: the content hashes to {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The hex part of a `sha256:` digest, validated (it becomes a file name).
pub fn digest_hex(digest: &str) -> Result<&str, BlobError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| BlobError::BadDigest(digest.to_string()))
}

pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The sha256 digest of a file's content.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

pub struct Blobs {
    root: PathBuf,
    /// One async lock per digest being fetched or unpacked: concurrent pulls of the same
    /// content wait for the first instead of downloading it again.
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl Blobs {
    pub fn open(root: PathBuf) -> io::Result<Blobs> {
        fs::create_dir_all(root.join("sha256"))?;
        fs::create_dir_all(root.join("partial"))?;
        Ok(Blobs {
            root,
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        Ok(self.root.join("sha256").join(digest_hex(digest)?))
    }

    pub fn partial_path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        Ok(self.root.join("partial").join(digest_hex(digest)?))
    }

    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// Holds the per-digest lock for `key` (a digest) until the guard drops.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap();
            locks.retain(|_, w| w.strong_count() > 0);
            match locks.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(key.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }

    /// Reads a stored blob, checking it against its digest.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path(digest)?;
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let actual = sha256_of(&bytes);
        if actual != digest {
            return Err(BlobError::Mismatch {
                expected: digest.into(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Stores `bytes` under `digest` after checking that they hash to it.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), BlobError> {
        digest_hex(digest)?;
        let actual = sha256_of(bytes);
        if actual != digest {
            return Err(BlobError::Mismatch {
                expected: digest.into(),
                actual,
            });
        }
        if self.has(digest) {
            return Ok(());
        }
        self.store_whole(digest, &mut &bytes[..])
    }

    /// Copies `reader` into the store under `digest`, verifying it.
    pub fn import(&self, digest: &str, reader: &mut dyn Read) -> Result<(), BlobError> {
        if self.has(digest) {
            return Ok(());
        }
        self.store_whole(digest, reader)
    }

    /// Writes a whole blob under a name of its own (two pulls of one image may store the same
    /// manifest at once, without the per-digest lock), verifies it, and renames it into place.
    fn store_whole(&self, digest: &str, reader: &mut dyn Read) -> Result<(), BlobError> {
        let hex = digest_hex(digest)?;
        let tmp = self
            .root
            .join("partial")
            .join(format!("{hex}.{}", ulid::Ulid::new()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
            io::copy(reader, &mut f).map_err(io_at(&tmp))?;
            f.sync_all().map_err(io_at(&tmp))?;
            drop(f);
            let actual = sha256_file(&tmp).map_err(io_at(&tmp))?;
            if actual != digest {
                return Err(BlobError::Mismatch {
                    expected: digest.into(),
                    actual,
                });
            }
            let dest = self.path(digest)?;
            fs::rename(&tmp, &dest).map_err(io_at(&dest))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// How many bytes of `digest` an earlier, interrupted download left behind.
    pub fn partial_len(&self, digest: &str) -> Result<u64, BlobError> {
        let partial = self.partial_path(digest)?;
        match fs::metadata(&partial) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_at(&partial)(e)),
        }
    }

    /// Opens the partial file of `digest` for appending (or from scratch if `truncate`).
    pub fn partial_writer(&self, digest: &str, truncate: bool) -> Result<File, BlobError> {
        let partial = self.partial_path(digest)?;
        let mut o = OpenOptions::new();
        o.create(true);
        if truncate {
            o.write(true).truncate(true);
        } else {
            o.append(true);
        }
        o.open(&partial).map_err(io_at(&partial))
    }

    /// Verifies the complete partial file of `digest` and moves it into the store. On a
    /// mismatch the partial is deleted: it can never be resumed into a correct blob.
    pub fn commit(&self, digest: &str) -> Result<(), BlobError> {
        let partial = self.partial_path(digest)?;
        let actual = sha256_file(&partial).map_err(io_at(&partial))?;
        if actual != digest {
            let _ = fs::remove_file(&partial);
            return Err(BlobError::Mismatch {
                expected: digest.into(),
                actual,
            });
        }
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&partial))?;
        let dest = self.path(digest)?;
        fs::rename(&partial, &dest).map_err(io_at(&dest))
    }

    pub fn discard_partial(&self, digest: &str) {
        if let Ok(p) = self.partial_path(digest) {
            let _ = fs::remove_file(p);
        }
    }

    pub fn remove(&self, digest: &str) -> Result<(), BlobError> {
        let path = self.path(digest)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Digests of every stored blob.
    pub fn list(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.root.join("sha256")) else {
            return vec![];
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str().map(|h| format!("sha256:{h}")))
            .filter(|d| digest_hex(d).is_ok())
            .collect()
    }

    pub fn size(&self, digest: &str) -> u64 {
        self.path(digest)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// Deletes every partial download.
    pub fn clear_partials(&self) {
        let dir = self.root.join("partial");
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::create_dir_all(&dir);
    }

    /// Bytes held by partial downloads.
    pub fn partial_bytes(&self) -> u64 {
        fs::read_dir(self.root.join("partial")).map_or(0, |rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_same_blob_stored_at_once_by_many_pulls_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(Blobs::open(dir.path().to_path_buf()).unwrap());
        let data = vec![7u8; 1 << 20];
        let d = sha256_of(&data);
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (blobs, data, d) = (blobs.clone(), data.clone(), d.clone());
                std::thread::spawn(move || blobs.put(&d, &data))
            })
            .collect();
        for w in workers {
            w.join().unwrap().unwrap();
        }
        assert_eq!(blobs.read(&d).unwrap(), data);
        assert_eq!(blobs.partial_bytes(), 0, "no scratch left behind");
    }

    #[test]
    fn a_blob_enters_only_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path().to_path_buf()).unwrap();
        let d = sha256_of(b"hello");
        let err = blobs.put(&d, b"hullo").unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
        assert!(!blobs.has(&d));
        blobs.put(&d, b"hello").unwrap();
        assert_eq!(blobs.read(&d).unwrap(), b"hello");
        assert!(matches!(
            blobs.put("sha256:../../etc", b"x").unwrap_err(),
            BlobError::BadDigest(_)
        ));
    }

    #[test]
    fn a_partial_download_resumes_and_a_corrupt_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path().to_path_buf()).unwrap();
        let d = sha256_of(b"0123456789");
        blobs
            .partial_writer(&d, true)
            .unwrap()
            .write_all(b"01234")
            .unwrap();
        assert_eq!(blobs.partial_len(&d).unwrap(), 5);
        blobs
            .partial_writer(&d, false)
            .unwrap()
            .write_all(b"56789")
            .unwrap();
        blobs.commit(&d).unwrap();
        assert_eq!(blobs.read(&d).unwrap(), b"0123456789");
        assert_eq!(blobs.partial_len(&d).unwrap(), 0);

        let d2 = sha256_of(b"abc");
        blobs
            .partial_writer(&d2, true)
            .unwrap()
            .write_all(b"abd")
            .unwrap();
        assert!(blobs.commit(&d2).is_err());
        assert_eq!(
            blobs.partial_len(&d2).unwrap(),
            0,
            "a corrupt partial is deleted"
        );
        assert!(!blobs.has(&d2));
    }
}
