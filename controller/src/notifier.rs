//! What sends notifications: the webhook client, the SMTP transport and the outbox's
//! bookkeeping (what is in flight, what was delivered). The runtime holds one; `notify.rs`
//! (publishing and the outbox loop) uses it. A leaf below the runtime: it imports no `Core`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

/// Deliveries in flight at once.
const CONCURRENT_DELIVERIES: usize = 64;

/// How the controller sends mail. The URL is lettre's: `smtp://host:587?tls=required`
/// (STARTTLS), `smtps://host:465` (TLS), `smtp://host:25` (opportunistic STARTTLS), with
/// `user:password@` for AUTH.
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    pub url: String,
    pub from: String,
    /// Trust this CA (PEM) for the SMTP server, besides the public roots.
    pub ca_file: Option<PathBuf>,
}

pub(crate) struct Mailer {
    pub(crate) transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    pub(crate) from: lettre::message::Mailbox,
}

/// What delivers notifications: the HTTP client, the mailer, and the outbox loop's
/// bookkeeping.
pub struct Notifier {
    pub(crate) http: reqwest::Client,
    pub(crate) mailer: Option<Mailer>,
    /// Where confirmation links point (the controller's HTTP listener, as users reach it).
    pub public_url: String,
    pub(crate) in_flight: Mutex<HashSet<String>>,
    /// Deliveries done since start, per subscription.
    pub(crate) delivered: Mutex<HashMap<String, u64>>,
    pub(crate) limit: Arc<Semaphore>,
    /// Set when a pass left due deliveries behind because every sender was busy.
    pub(crate) backlog: AtomicBool,
}

impl Notifier {
    pub fn new(smtp: Option<&SmtpConfig>, public_url: String) -> Result<Notifier, String> {
        let http = crate::outbound::client(|b| {
            b.connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
        })
        .map_err(|e| format!("webhook client: {e}"))?;
        Ok(Notifier {
            http,
            mailer: smtp.map(mailer).transpose()?,
            public_url,
            in_flight: Mutex::new(HashSet::new()),
            delivered: Mutex::new(HashMap::new()),
            limit: Arc::new(Semaphore::new(CONCURRENT_DELIVERIES)),
            backlog: AtomicBool::new(false),
        })
    }

    /// Whether e-mail can be sent (an SMTP server is configured).
    pub fn can_mail(&self) -> bool {
        self.mailer.is_some()
    }

    pub fn delivered(&self, subscription: &str) -> u64 {
        self.delivered
            .lock()
            .expect("counter lock")
            .get(subscription)
            .copied()
            .unwrap_or(0)
    }
}

fn mailer(cfg: &SmtpConfig) -> Result<Mailer, String> {
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    let from = cfg
        .from
        .parse()
        .map_err(|e| format!("smtp from: {:?}: {e}", cfg.from))?;
    let url = url::Url::parse(&cfg.url).map_err(|e| format!("smtp url: {e}"))?;
    let mut builder = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(&cfg.url)
        .map_err(|e| format!("smtp url: {e}"))?
        .timeout(Some(Duration::from_secs(20)));
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("smtp ca file {}: {e}", ca.display()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| format!("smtp ca file {}: {e}", ca.display()))?;
        let host = url.host_str().unwrap_or_default().to_string();
        let params = TlsParameters::builder(host)
            .add_root_certificate(cert)
            .build_rustls()
            .map_err(|e| format!("smtp tls: {e}"))?;
        let tls_mode = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        builder = builder.tls(match (url.scheme(), tls_mode.as_deref()) {
            ("smtps", _) => Tls::Wrapper(params),
            (_, Some("required")) => Tls::Required(params),
            _ => Tls::Opportunistic(params),
        });
    }
    Ok(Mailer {
        transport: builder.build(),
        from,
    })
}
