//! What the dashboard plots, sampled every few seconds for the last hour, in memory: tasks
//! started per interval, each queue's depth (visible + in flight) and each service's running
//! tasks. A restarted controller starts a new hour (the durable record is the task history
//! and the event log; this is a view).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::core::Core;

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How many are kept (an hour's worth).
const KEEP: usize = 720;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub t_ms: i64,
    /// Tasks that reached RUNNING since the previous sample.
    pub started: u64,
    /// Visible + in-flight messages, by queue.
    pub queues: BTreeMap<String, u64>,
    /// Running tasks, by service.
    pub services: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Series {
    samples: Mutex<VecDeque<Sample>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub interval_seconds: u64,
    pub samples: Vec<Sample>,
}

impl Series {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            interval_seconds: INTERVAL.as_secs(),
            samples: self.samples.lock().unwrap().iter().cloned().collect(),
        }
    }

    fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap();
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// Samples every `INTERVAL` until the task is dropped (with the HTTP listener).
    pub async fn run(self: Arc<Series>, core: Arc<Core>) {
        let mut last_started = core.store.metrics.started.get();
        loop {
            core.clock.sleep(INTERVAL).await;
            let started = core.store.metrics.started.get();
            let core2 = core.clone();
            let depths = tokio::task::spawn_blocking(move || sample(&core2)).await;
            let (queues, services) = match depths {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "dashboard sample");
                    continue;
                }
                Err(_) => continue,
            };
            self.push(Sample {
                t_ms: core.clock.now_ms(),
                started: started.saturating_sub(last_started),
                queues,
                services,
            });
            last_started = started;
        }
    }
}

type Depths = (BTreeMap<String, u64>, BTreeMap<String, u64>);

fn sample(core: &Core) -> Result<Depths, crate::core::CoreError> {
    let mut queues = BTreeMap::new();
    for q in core.store.queues.list()? {
        let (_, c) = crate::queues::describe(core, &q.name)?;
        queues.insert(q.name, c.visible + c.in_flight);
    }
    let mut services = BTreeMap::new();
    for st in core.store.service_states.list()? {
        services.insert(st.name.clone(), st.tasks.len() as u64);
    }
    Ok((queues, services))
}
