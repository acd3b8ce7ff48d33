//! A real SMTP server for the tests: aiosmtpd (from PyPI, installed by `scripts/deps test`)
//! started by `tests/smtp_server.py` on 127.0.0.1, requiring STARTTLS (with a certificate from
//! a CA the test makes) and AUTH, writing what it accepts to a directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The CA that signed the server's certificate (PEM file), for skiff to trust.
    pub ca_file: PathBuf,
    maildir: PathBuf,
}

/// A message the server accepted.
#[derive(Clone, Debug)]
pub struct Mail {
    /// mail_from, rcpt_tos, tls (bool), auth_user.
    pub meta: serde_json::Value,
    pub raw: String,
}

impl Mail {
    /// A header's value (unfolded).
    pub fn header(&self, name: &str) -> String {
        let (head, _) = self.raw.split_once("\r\n\r\n").unwrap_or((&self.raw, ""));
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    }

    /// The body, with quoted-printable soft line breaks and escapes undone.
    pub fn body(&self) -> String {
        let (_, body) = self.raw.split_once("\r\n\r\n").unwrap_or(("", &self.raw));
        if !self
            .header("Content-Transfer-Encoding")
            .eq_ignore_ascii_case("quoted-printable")
        {
            return body.replace("\r\n", "\n");
        }
        let joined = body.replace("=\r\n", "");
        let mut out = Vec::new();
        let bytes = joined.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).replace("\r\n", "\n")
    }
}

impl SmtpServer {
    pub fn start(dir: &Path) -> SmtpServer {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "skiff test mail CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (ca_file, cert_file, key_file) = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let maildir = dir.join("mail");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_server.py");
        let (user, password) = ("skiff-mailer".to_string(), "mail-pass-7".to_string());
        let mut child = Command::new(crate::moto::venv().join("bin/python"))
            .arg(&script)
            .args(["--maildir", maildir.to_str().unwrap()])
            .args(["--cert", cert_file.to_str().unwrap()])
            .args(["--key", key_file.to_str().unwrap()])
            .args(["--user", &user, "--password", &password])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the SMTP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the SMTP server did not start: {line:?}"));
        SmtpServer {
            child,
            port,
            user,
            password,
            ca_file,
            maildir,
        }
    }

    /// skiff's --smtp-url for this server: STARTTLS required, with AUTH.
    pub fn url(&self) -> String {
        format!(
            "smtp://{}:{}@127.0.0.1:{}?tls=required",
            self.user, self.password, self.port
        )
    }

    /// Every message accepted so far, in order.
    pub fn mails(&self) -> Vec<Mail> {
        let mut out = Vec::new();
        for n in 1.. {
            let eml = self.maildir.join(format!("{n}.eml"));
            let Ok(raw) = std::fs::read_to_string(&eml) else {
                break;
            };
            let meta = std::fs::read_to_string(self.maildir.join(format!("{n}.json")))
                .ok()
                .and_then(|m| serde_json::from_str(&m).ok())
                .unwrap_or_default();
            out.push(Mail { meta, raw });
        }
        out
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
