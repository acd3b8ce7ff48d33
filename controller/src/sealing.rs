//! Secrets at rest: sealed with AES-256-GCM under a key the controller keeps in its data dir
//! (`secrets.key`, mode 0600, created on first start), apart from the sled database, so a copy
//! of the database alone reveals nothing. A leaf: it knows the key file and the record, not the
//! runtime or the API.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::model::SealedSecret;

pub const KEY_FILE: &str = "secrets.key";
/// Largest secret value accepted (like Kubernetes' 1 MiB).
pub const MAX_SECRET_BYTES: usize = 1 << 20;

pub struct SecretBox {
    key: LessSafeKey,
}

impl SecretBox {
    /// Loads `<data_dir>/secrets.key`, creating it (32 random bytes, mode 0600) if missing.
    pub fn open(data_dir: &Path) -> std::io::Result<SecretBox> {
        let path = data_dir.join(KEY_FILE);
        let bytes = crate::keyfile::read_or_create_key(&path)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", path.display()),
            )
        })?;
        Ok(SecretBox {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Seals `value`; the secret's name is bound in as associated data, so a sealed value
    /// moved under another name does not open.
    pub fn seal(&self, name: &str, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut nonce))
            .expect("/dev/urandom is readable");
        let mut buf = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM sealing of at most 1 MiB cannot fail");
        (nonce.to_vec(), buf)
    }

    pub fn open_sealed(&self, s: &SealedSecret) -> Result<Vec<u8>, String> {
        let nonce = Nonce::try_assume_unique_for_key(&s.nonce)
            .map_err(|_| format!("secret {:?}: stored nonce is damaged", s.name))?;
        let mut buf = s.ciphertext.clone();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(s.name.as_bytes()), &mut buf)
            .map_err(|_| {
                format!(
                    "secret {:?} does not open with this controller's {KEY_FILE}",
                    s.name
                )
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_name_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let b = SecretBox::open(dir.path()).unwrap();
        let (nonce, ciphertext) = b.seal("db", b"hunter2");
        assert!(!ciphertext.windows(7).any(|w| w == b"hunter2"));
        let mut s = SealedSecret {
            name: "db".into(),
            version: 1,
            nonce,
            ciphertext,
            size: 7,
            created_ms: 0,
            updated_ms: 0,
        };
        // The key file persists: a reopened box opens what the first one sealed.
        let again = SecretBox::open(dir.path()).unwrap();
        assert_eq!(again.open_sealed(&s).unwrap(), b"hunter2");
        s.name = "other".into();
        assert!(again.open_sealed(&s).is_err());
        let other_dir = tempfile::tempdir().unwrap();
        s.name = "db".into();
        assert!(SecretBox::open(other_dir.path())
            .unwrap()
            .open_sealed(&s)
            .is_err());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
