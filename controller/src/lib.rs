//! skiff's controller: durable state (sled), the task lifecycle, placement, the agent channel
//! and the public gRPC API. A library, so tests can run it in-process; the `skiff` binary only
//! parses flags and calls [`Controller::serve`].

pub mod agent_link;
pub mod agents;
pub mod api;
pub mod applier;
pub mod apply_sets;
pub mod apply_sets_api;
pub mod auth;
pub mod backlog_poller;
pub mod bus;
pub mod clock;
pub mod combiner;
pub mod convert;
pub mod core;
pub mod credentials;
pub mod dashboard;
pub mod events;
pub mod exec_api;
pub mod history;
pub mod http;
pub mod images_api;
pub mod job_loop;
pub mod keyfile;
pub mod metrics;
// The pure layer, re-exported so `crate::lifecycle` and friends name it (see skiff-model).
pub use skiff_model::{cron, lifecycle, pattern, placement, retry, ruleset, transform, trust};
pub mod model;
pub mod names;
pub mod nodes;
pub mod notifier;
pub mod notify;
pub mod objects;
pub mod outbound;
pub mod pki;
pub mod placer;
pub mod queue_waits;
pub mod queues;
pub mod queues_api;
pub mod registries;
pub mod roles;
pub mod roles_api;
pub mod rules;
pub mod rules_api;
pub mod schedules;
pub mod schedules_api;
pub mod scrape;
pub mod sealing;
pub mod secrets;
pub mod secrets_api;
pub mod service_loop;
pub mod services;
pub mod services_api;
pub mod sources;
pub mod sources_api;
pub mod sqs_api;
pub mod status;
pub mod store;
pub mod task_event;
pub mod task_tokens;
pub mod taskdefs;
pub mod tokens;
pub mod tokens_api;
pub mod topics;
pub mod topics_api;
pub mod wake;
pub mod watcher;
pub mod worker_state;
pub mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use skiff_proto::v1 as pb;
use tokio::net::TcpListener;

pub use crate::core::NodeTiming;

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub timing: NodeTiming,
    /// The clock the controller reads and waits on: `Clock::system()` except in component
    /// tests.
    pub clock: clock::Clock,
    /// Serve TLS (server certificate from the cluster CA, valid for these extra names besides
    /// localhost and 127.0.0.1), and authenticate agents by their node certificates.
    pub tls: Option<Vec<String>>,
    /// Lifetime of node certificates (default 30 days).
    pub node_cert_ttl: Option<std::time::Duration>,
    /// The HTTP listener (object-store notifications, health); None = none.
    pub http_listen: Option<SocketAddr>,
    /// Serve this directory's subdirectories as local buckets, watched (source "local").
    pub local_buckets: Option<PathBuf>,
    /// The mail server for e-mail subscriptions.
    pub smtp: Option<notify::SmtpConfig>,
    /// The HTTP listener's URL as users reach it (e-mail confirmation links); default
    /// http://<http_listen>.
    pub public_url: Option<String>,
    /// How long stopped tasks stay where no retention policy says otherwise (default
    /// `history::DEFAULT_LIMITS`).
    pub task_history: Option<skiff_model::history::Limits>,
    /// How long the event log keeps events every reader has read (default
    /// `history::DEFAULT_EVENT_LIMITS`).
    pub event_log: Option<skiff_model::history::EventLogLimits>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("opening the state store in {path}: {source}")]
    Store {
        path: PathBuf,
        source: store::StoreError,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the key file {path}: {source}")]
    SecretsKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("notifications: {0}")]
    Notify(String),
    #[error("certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

pub struct Controller {
    core: Arc<core::Core>,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    /// The server identity (cert, key PEM) when serving TLS.
    tls_identity: Option<(String, String)>,
    /// Where the first admin token was written, when this start created it.
    bootstrap_token: Option<PathBuf>,
}

impl Controller {
    /// Opens the state store and binds the listener (so the address is known before serving).
    pub async fn bind(cfg: ControllerConfig) -> Result<Controller, ControllerError> {
        let path = cfg.data_dir.join("state");
        let store =
            store::Store::open(&path).map_err(|source| ControllerError::Store { path, source })?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| ControllerError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let bootstrap_token = tokens::bootstrap(&store, &cfg.data_dir, cfg.clock.now_ms())
            .await
            .map_err(|source| ControllerError::Store {
                path: cfg.data_dir.clone(),
                source,
            })?;
        let sealer = sealing::SecretBox::open(&cfg.data_dir).map_err(|source| {
            ControllerError::SecretsKey {
                path: cfg.data_dir.join(sealing::KEY_FILE),
                source,
            }
        })?;
        let task_keys = task_tokens::TaskTokenKey::open(&cfg.data_dir).map_err(|source| {
            ControllerError::SecretsKey {
                path: cfg.data_dir.join(task_tokens::KEY_FILE),
                source,
            }
        })?;
        let (pki, tls_identity) = match &cfg.tls {
            Some(names) => {
                let mut pki = pki::Pki::load_or_create(&cfg.data_dir)?;
                if let Some(ttl) = cfg.node_cert_ttl {
                    pki.node_cert_ttl = ttl;
                }
                // 169.254.170.2: bridge tasks reach the API through their agent's relay.
                let mut all = vec![
                    "localhost".to_string(),
                    "127.0.0.1".to_string(),
                    "169.254.170.2".to_string(),
                ];
                if !cfg.listen.ip().is_unspecified() {
                    all.push(cfg.listen.ip().to_string());
                }
                all.extend(names.iter().cloned());
                all.dedup();
                let identity = pki.server_identity(&all)?;
                (Some(pki), Some(identity))
            }
            None => (None, None),
        };
        let http_listener = match cfg.http_listen {
            Some(addr) => Some(
                http::bind(addr)
                    .await
                    .map_err(|source| ControllerError::Listen { addr, source })?,
            ),
            None => None,
        };
        let mut core = core::Core::new(store, cfg.timing, cfg.clock.clone(), sealer, task_keys);
        core.pki = pki;
        core.history_limits = cfg.task_history.unwrap_or(history::DEFAULT_LIMITS);
        core.event_limits = cfg.event_log.unwrap_or(history::DEFAULT_EVENT_LIMITS);
        core.http_port = http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        let public_url = cfg.public_url.clone().unwrap_or_else(|| {
            let addr = http_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map_or_else(|| "127.0.0.1:7480".to_string(), |a| a.to_string());
            format!("http://{addr}")
        });
        core.notifier = notify::Notifier::new(cfg.smtp.as_ref(), public_url)
            .map_err(ControllerError::Notify)?;
        if let Some(dir) = &cfg.local_buckets {
            local_source(&core, dir)
                .await
                .map_err(|source| ControllerError::Store {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(Controller {
            core: Arc::new(core),
            listener,
            http_listener,
            tls_identity,
            bootstrap_token,
        })
    }

    /// The controller's shared state, for in-process tests that look beneath the API.
    pub fn core(&self) -> Arc<core::Core> {
        self.core.clone()
    }

    /// The cluster CA certificate (PEM) when serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.core.pki.as_ref().map(|p| p.ca_pem.as_str())
    }

    /// The admin token file this start wrote (first start only).
    pub fn bootstrap_token(&self) -> Option<&std::path::Path> {
        self.bootstrap_token.as_deref()
    }

    /// The HTTP listener's address, when there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves the API and runs the background loops until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ControllerError> {
        let core = self.core;
        let workers = workers::Workers::start(&core);
        let http_server = self.http_listener.map(|l| {
            let core = core.clone();
            tokio::spawn(async move {
                if let Err(e) = http::serve(core, l).await {
                    tracing::warn!(error = %e, "the HTTP listener stopped");
                }
            })
        });

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<pb::tasks_server::TasksServer<api::TasksApi>>()
            .await;
        health.set_serving::<pb::task_definitions_server::TaskDefinitionsServer<api::TaskDefinitionsApi>>().await;
        health
            .set_serving::<pb::nodes_server::NodesServer<api::NodesApi>>()
            .await;
        health
            .set_serving::<pb::events_server::EventsServer<api::EventsApi>>()
            .await;
        health
            .set_serving::<pb::agent_channel_server::AgentChannelServer<agents::AgentService>>()
            .await;
        health
            .set_serving::<pb::images_server::ImagesServer<images_api::ImagesApi>>()
            .await;
        health
            .set_serving::<pb::tokens_server::TokensServer<tokens_api::TokensApi>>()
            .await;
        health
            .set_serving::<pb::secrets_server::SecretsServer<secrets_api::SecretsApi>>()
            .await;
        health
            .set_serving::<pb::queues_server::QueuesServer<queues_api::QueuesApi>>()
            .await;
        health
            .set_serving::<pb::services_server::ServicesServer<services_api::ServicesApi>>()
            .await;
        health
            .set_serving::<pb::registry_credentials_server::RegistryCredentialsServer<
                images_api::RegistryCredentialsApi,
            >>()
            .await;
        health
            .set_serving::<pb::roles_server::RolesServer<roles_api::RolesApi>>()
            .await;
        health
            .set_serving::<pb::rules_server::RulesServer<rules_api::RulesApi>>()
            .await;
        health
            .set_serving::<pb::sources_server::SourcesServer<sources_api::SourcesApi>>()
            .await;
        health
            .set_serving::<pb::schedules_server::SchedulesServer<schedules_api::SchedulesApi>>()
            .await;
        health
            .set_serving::<pb::topics_server::TopicsServer<topics_api::TopicsApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let mut builder = tonic::transport::Server::builder();
        if let (Some((cert, key)), Some(pki)) = (&self.tls_identity, &core.pki) {
            // Client certificates are optional at the TLS layer (the CLI and apps have none);
            // the agent channel insists on a node certificate itself.
            builder = builder.tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key))
                    .client_ca_root(tonic::transport::Certificate::from_pem(&pki.ca_pem))
                    .client_auth_optional(true),
            )?;
        }
        // On the signal every long-lived stream ends (`api::until_stopping`), so the graceful
        // shutdown finishes what is in flight and returns; a call still open after
        // STOP_GRACE is cut off.
        let shutdown = {
            let core = core.clone();
            async move {
                shutdown.await;
                core.begin_stopping();
            }
        };
        let server = builder
            .tcp_nodelay(true)
            .layer(auth::AuthLayer { core: core.clone() })
            .add_service(health_service)
            .add_service(reflection)
            .add_service(pb::tasks_server::TasksServer::new(api::TasksApi {
                core: core.clone(),
            }))
            .add_service(pb::task_definitions_server::TaskDefinitionsServer::new(
                api::TaskDefinitionsApi { core: core.clone() },
            ))
            .add_service(pb::nodes_server::NodesServer::new(api::NodesApi {
                core: core.clone(),
            }))
            .add_service(pb::events_server::EventsServer::new(api::EventsApi::new(
                core.clone(),
            )))
            .add_service(pb::secrets_server::SecretsServer::new(
                secrets_api::SecretsApi { core: core.clone() },
            ))
            .add_service(pb::apply_sets_server::ApplySetsServer::new(
                apply_sets_api::ApplySetsApi { core: core.clone() },
            ))
            .add_service(pb::roles_server::RolesServer::new(roles_api::RolesApi {
                core: core.clone(),
            }))
            .add_service(pb::rules_server::RulesServer::new(rules_api::RulesApi {
                core: core.clone(),
            }))
            .add_service(pb::sources_server::SourcesServer::new(
                sources_api::SourcesApi { core: core.clone() },
            ))
            .add_service(pb::schedules_server::SchedulesServer::new(
                schedules_api::SchedulesApi { core: core.clone() },
            ))
            .add_service(pb::topics_server::TopicsServer::new(
                topics_api::TopicsApi { core: core.clone() },
            ))
            .add_service(pb::queues_server::QueuesServer::new(
                queues_api::QueuesApi { core: core.clone() },
            ))
            .add_service(pb::services_server::ServicesServer::new(
                services_api::ServicesApi { core: core.clone() },
            ))
            .add_service(pb::tokens_server::TokensServer::new(
                tokens_api::TokensApi { core: core.clone() },
            ))
            .add_service(pb::images_server::ImagesServer::new(
                images_api::ImagesApi { core: core.clone() },
            ))
            .add_service(
                pb::registry_credentials_server::RegistryCredentialsServer::new(
                    images_api::RegistryCredentialsApi { core: core.clone() },
                ),
            )
            .add_service(pb::agent_channel_server::AgentChannelServer::new(
                agents::AgentService::new(core.clone()),
            ))
            // Accepted sockets need TCP_NODELAY themselves (the builder's setting only covers
            // listeners tonic binds): Nagle + delayed ACK adds ~40 ms to every agent message.
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown,
            );
        let result = tokio::select! {
            result = server => result,
            _ = async {
                core.stopped().await;
                clock::Clock::real_sleep(STOP_GRACE).await;
            } => {
                tracing::warn!("calls still open {STOP_GRACE:?} after the stop signal: cut off");
                Ok(())
            }
        };
        // Each loop finishes its pass; one still going after the deadline is cut short (what
        // it did is durable or redone, as after a crash).
        let aborted = workers.stop(std::time::Duration::from_secs(5)).await;
        if !aborted.is_empty() {
            tracing::warn!(?aborted, "background loops cut short at shutdown");
        }
        if let Some(h) = http_server {
            h.abort();
        }
        // Make sure everything acknowledged is on disk before the process ends.
        let _ = core.store.commit().await;
        Ok(result?)
    }
}

/// Makes sure the local-buckets source exists: every directory under `dir` is a bucket, listed
/// every second.
async fn local_source(core: &core::Core, dir: &std::path::Path) -> Result<(), store::StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| store::StoreError::Rejected(format!("{}: {e}", dir.display())))?;
    let path = dir.to_string_lossy().into_owned();
    let wanted = model::SourceKind::Local { path };
    if let Some(s) = core.store.sources.get(LOCAL_SOURCE)? {
        if s.kind == wanted {
            return Ok(());
        }
    }
    let now = core.clock.now_ms();
    core.store
        .sources
        .put(&model::Source {
            name: LOCAL_SOURCE.into(),
            kind: wanted,
            bucket: String::new(),
            prefix: String::new(),
            poll_interval_secs: 1,
            created_ms: now,
            updated_ms: now,
        })
        .await
}

/// How long a stopping controller lets calls in flight finish.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The name of `skiff dev`'s local-buckets source.
pub const LOCAL_SOURCE: &str = "local";
