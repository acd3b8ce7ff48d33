//! Wake-ups of the background loops. A change that gives a loop work (a task created or
//! stopped, a rule put, a source or schedule changed, a notification enqueued) wakes that loop
//! by name; only the loop itself waits on its wake-up. Between wake-ups each loop also runs at
//! the moment it computed (`Clock::sleep_until`).

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The loops that can be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loop {
    Placer,
    Rules,
    Watchers,
    Schedules,
    Notifications,
    Services,
    History,
}

/// One wake-up per loop (a wake-up while the loop is busy is kept for its next wait).
#[derive(Default)]
pub struct Wakeups {
    placer: Notify,
    rules: Notify,
    watchers: Notify,
    schedules: Notify,
    notifications: Notify,
    services: Notify,
    history: Notify,
}

impl Wakeups {
    /// Gives `l` a reason to run a pass now.
    pub fn wake(&self, l: Loop) {
        self.of(l).notify_one();
    }

    /// What loop `l` waits on between passes.
    pub fn woken(&self, l: Loop) -> Notified<'_> {
        self.of(l).notified()
    }

    fn of(&self, l: Loop) -> &Notify {
        match l {
            Loop::Placer => &self.placer,
            Loop::Rules => &self.rules,
            Loop::Watchers => &self.watchers,
            Loop::Schedules => &self.schedules,
            Loop::Notifications => &self.notifications,
            Loop::Services => &self.services,
            Loop::History => &self.history,
        }
    }
}
