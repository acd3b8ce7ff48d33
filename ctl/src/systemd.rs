//! Living under systemd (the units in deploy/systemd/): a `Type=notify` unit learns that the
//! process serves (READY=1, once its listeners are bound and its state is open) and that it
//! is stopping (STOPPING=1), and its watchdog is fed (WATCHDOG=1 at half of `WatchdogSec`)
//! only while the process is healthy, so systemd restarts a controller whose background loops
//! died, or a process whose runtime stopped turning. Outside systemd (no NOTIFY_SOCKET)
//! every call does nothing. Logs go to journald as plain lines with its priority prefixes
//! (see `init_logs`).

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

/// Tells systemd the process serves.
pub fn ready(status: &str) {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]) {
        warn!(error = %e, "telling systemd we are ready failed");
    }
}

/// Tells systemd the process is stopping (so a slow shutdown is not taken for a hang).
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// Feeds the unit's watchdog from the runtime at half its interval while `healthy()` holds;
/// nothing without `WatchdogSec`.
pub fn keep_watchdog(healthy: impl Fn() -> bool + Send + 'static) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut said = false;
        loop {
            tick.tick().await;
            if healthy() {
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                said = false;
            } else if !said {
                warn!("not feeding systemd's watchdog: a background loop stopped (see /healthz)");
                said = true;
            }
        }
    });
}

/// Whether standard error goes to the journal (systemd sets JOURNAL_STREAM to its device and
/// inode): then log lines carry no colour and no time (journald stamps them) and start with
/// the syslog priority journald reads (`<3>` error … `<7>` debug).
pub fn logs_to_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// A log line for journald: the syslog priority of its level, then the line as `inner`
/// formats it.
pub struct JournalFormat<F>(pub F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
