//! Counters the controller's loops keep for `GET /metrics` (`scrape.rs` renders them with
//! the store's own, `store::StoreMetrics`, and what it reads at each scrape). A leaf: the
//! loops count here without importing what renders.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryOutcome {
    pub topic: String,
    /// `delivered`, `retrying` (failed, another attempt scheduled) or `dead_lettered`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceAction {
    pub service: String,
    /// What the service loop did: `start`, `replace`, `scale-out`, `scale-in`, …
    pub action: String,
}

/// Counters kept by the controller's loops.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Notification attempts by topic and outcome.
    pub deliveries: Family<DeliveryOutcome, Counter>,
    /// Service actions (each also a `Service Action` event), autoscaler decisions among them.
    pub service_actions: Family<ServiceAction, Counter>,
}

impl Metrics {
    pub fn delivery(&self, topic: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&DeliveryOutcome {
                topic: topic.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn service_action(&self, service: &str, action: &str) {
        self.service_actions
            .get_or_create(&ServiceAction {
                service: service.to_string(),
                action: action.to_string(),
            })
            .inc();
    }

    /// Adds these counters (shared, not copied) to a scrape's registry.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "skiff_deliveries",
            "Notification delivery attempts since the controller started, by topic and outcome",
            self.deliveries.clone(),
        );
        reg.register(
            "skiff_service_actions",
            "Service actions (starts, replacements, autoscaler scale-out and scale-in) since the controller started",
            self.service_actions.clone(),
        );
    }
}
