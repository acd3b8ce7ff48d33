//! The controller's certificate authority: created on first start (`<data>/pki/ca.{crt,key}`,
//! the key mode 0600), it signs the controller's server certificate (at every start, for the
//! names it is reached by) and each agent's node certificate from the agent's CSR — the agent's
//! private key never leaves the agent. A node certificate is recognised by the SHA-256 of its
//! DER, recorded when it is issued, so no certificate parsing is needed to know whose it is.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// How long node certificates are valid (agents renew after two thirds of it).
    pub node_cert_ttl: std::time::Duration,
}

/// Default lifetime of node certificates.
pub const NODE_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Pki {
    pub fn load_or_create(data_dir: &Path) -> Result<Pki, PkiError> {
        let dir = data_dir.join("pki");
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if !crt.exists() {
            let key_pair = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "skiff cluster CA");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = time_now() - time::Duration::days(1);
            params.not_after = time_now() + time::Duration::days(3650);
            let cert = params.self_signed(&key_pair)?;
            crate::keyfile::write_secret(&key, &key_pair.serialize_pem()).map_err(io(&key))?;
            crate::keyfile::write_secret(&crt, &cert.pem()).map_err(io(&crt))?;
        }
        let ca_pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
        let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
        let key_pair = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key_pair)?;
        Ok(Pki {
            ca_pem,
            issuer,
            node_cert_ttl: NODE_CERT_TTL,
        })
    }

    /// A server certificate for the controller, valid for `names` (DNS names or IPs).
    pub fn server_identity(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "skiff controller");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = time_now() - time::Duration::hours(1);
        params.not_after = time_now() + time::Duration::days(365);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a node's CSR as a client certificate for `node_id` (whatever the CSR asked for).
    /// Returns the certificate PEM and the SHA-256 (hex) of its DER.
    pub fn sign_node(&self, csr_pem: &str, node_id: &str) -> Result<(String, String), PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        csr.params.distinguished_name = dn;
        csr.params.subject_alt_names = vec![];
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Not backdated: the agent times its renewal from the moment of issue.
        csr.params.not_before = time_now() - time::Duration::seconds(5);
        csr.params.not_after = time_now()
            + time::Duration::try_from(self.node_cert_ttl).unwrap_or(time::Duration::days(30));
        let cert = csr.signed_by(&self.issuer)?;
        let fingerprint = hex::encode(Sha256::digest(cert.der()));
        Ok((cert.pem(), fingerprint))
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// SHA-256 (hex) of a DER certificate: how a presented node certificate is looked up.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}
