//! Event operations in the core layer: apps' events put on the bus (PutEvents), each with its
//! id, in one durable batch; the dispatcher is woken.

use crate::core::{Core, CoreError};
use crate::model::Event;

/// Appends checked events (their ids are assigned here, in order) with one flush; returns
/// them as stored.
pub async fn put(core: &Core, events: Vec<Event>) -> Result<Vec<Event>, CoreError> {
    let makers: Vec<Box<dyn FnOnce(String) -> Event + Send>> = events
        .into_iter()
        .map(|ev| {
            Box::new(move |id: String| Event { id, ..ev })
                as Box<dyn FnOnce(String) -> Event + Send>
        })
        .collect();
    let stored = core.store.append_events(makers).await?;
    core.events_appended();
    Ok(stored)
}
