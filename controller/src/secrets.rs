//! Secrets at rest: sealed with AES-256-GCM under a key the controller keeps in its data dir
//! (`secrets.key`, mode 0600, created on first start), apart from the sled database, so a copy
//! of the database alone reveals nothing. Values are opened only to start a task, and go only
//! to the agent that runs it. The Secrets API stores and lists them, never returns a value.

use std::path::Path;
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::model::{now_ms, SealedSecret};
use crate::validate;

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
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                use std::io::Read;
                std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
                crate::tokens_api::write_secret_bytes(&path, &key)?;
                key.to_vec()
            }
            Err(e) => return Err(e),
        };
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

fn info(s: &SealedSecret) -> pb::SecretInfo {
    pb::SecretInfo {
        name: s.name.clone(),
        version: s.version,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        size: s.size,
    }
}

pub struct SecretsApi {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::secrets_server::Secrets for SecretsApi {
    async fn put(
        &self,
        req: Request<pb::PutSecretRequest>,
    ) -> Result<Response<pb::SecretInfo>, Status> {
        let r = req.into_inner();
        validate::check_name("name", &r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.value.len() > MAX_SECRET_BYTES {
            return Err(Status::invalid_argument(format!(
                "value: {} bytes is more than the maximum {MAX_SECRET_BYTES}",
                r.value.len()
            )));
        }
        let (nonce, ciphertext) = self.core.secrets.seal(&r.name, &r.value);
        let old = self.core.store.secret(&r.name)?;
        let now = now_ms();
        let sealed = SealedSecret {
            name: r.name.clone(),
            version: old.as_ref().map_or(1, |o| o.version + 1),
            nonce,
            ciphertext,
            size: r.value.len() as u64,
            created_ms: old.as_ref().map_or(now, |o| o.created_ms),
            updated_ms: now,
        };
        self.core.store.put_secret(&sealed).await?;
        Ok(Response::new(info(&sealed)))
    }

    async fn list(
        &self,
        _: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let secrets = self.core.store.all_secrets()?.iter().map(info).collect();
        Ok(Response::new(pb::ListSecretsResponse { secrets }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::SecretInfo>, Status> {
        let name = &req.get_ref().name;
        match self.core.store.delete_secret(name).await? {
            Some(s) => Ok(Response::new(info(&s))),
            None => Err(Status::not_found(format!("name: no secret {name:?}"))),
        }
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
