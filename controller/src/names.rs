//! Names for services, as every agent's DNS server answers them: the service loop publishes
//! the table after each pass (`skiff_model::names` decides which tasks count) and each agent
//! session forwards it, whole, when the session starts and whenever it changes. A leaf: it
//! knows neither the core nor the wire.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

/// Service name → its ready tasks' addresses (all nodes).
pub type NameTable = Arc<BTreeMap<String, Vec<String>>>;

/// None until the first service pass after a start has published, so a controller that just
/// restarted does not tell agents that no service has a name.
pub struct Names {
    table: watch::Sender<Option<NameTable>>,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            table: watch::channel(None).0,
        }
    }
}

impl Names {
    /// Replaces the table; sessions hear of it only when it differs.
    pub fn publish(&self, table: BTreeMap<String, Vec<String>>) {
        self.table.send_if_modified(|current| {
            if current.as_deref() == Some(&table) {
                return false;
            }
            *current = Some(Arc::new(table));
            true
        });
    }

    /// A receiver that sees the table now and each change.
    pub fn subscribe(&self) -> watch::Receiver<Option<NameTable>> {
        self.table.subscribe()
    }
}
