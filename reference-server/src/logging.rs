//! Logging set-up: `tracing` events written through the lock-free freelane-log backend.
//!
//! - `--log-format json`: freelane-log's [`JsonLayer`](freelane_log::JsonLayer) (events are
//!   captured into the ring on the caller and rendered as JSON on the logger's thread).
//! - `--log-format text`: `tracing_subscriber::fmt` formats on the caller and writes through
//!   freelane-log's [`NonBlocking`](freelane_log::NonBlocking) writer.
//!
//! Both write to stderr from the logger's background thread. Callers never block on a full
//! ring: the event is dropped and counted (`freelane_log_dropped_total`), except ERROR events,
//! which are written synchronously instead. The returned guard flushes everything on drop.

use std::sync::OnceLock;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

static LOGGER: OnceLock<freelane_log::Logger> = OnceLock::new();

/// Keeps the logger alive; dropping it flushes every accepted line to stderr.
#[derive(Debug)]
pub struct LogGuard {
    guard: Option<freelane_log::Guard>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            if let Err(e) = g.shutdown(std::time::Duration::from_secs(10)) {
                eprintln!("freelane-server: log not fully flushed: {e}");
            }
        }
    }
}

/// Installs the global subscriber writing through freelane-log. Errors if a global subscriber
/// is already installed or the logger thread cannot start.
pub fn init(format: LogFormat, level: tracing::Level) -> Result<LogGuard, String> {
    let builder = freelane_log::Builder::new();
    let filter = LevelFilter::from_level(level);
    let guard = match format {
        LogFormat::Json => {
            let (layer, guard) = builder
                .build_layer(std::io::stderr())
                .map_err(|e| e.to_string())?;
            tracing_subscriber::registry()
                .with(layer.with_filter(filter))
                .try_init()
                .map_err(|e| e.to_string())?;
            guard
        }
        LogFormat::Text => {
            let (writer, guard) = builder
                .build_non_blocking(std::io::stderr())
                .map_err(|e| e.to_string())?;
            tracing_subscriber::fmt()
                .with_writer(writer)
                .with_max_level(filter)
                .with_ansi(false)
                .try_init()
                .map_err(|e| e.to_string())?;
            guard
        }
    };
    let _ = LOGGER.set(guard.logger());
    Ok(LogGuard { guard: Some(guard) })
}

/// Log events dropped so far because the log ring was full (0 when no logger is installed, e.g.
/// in tests that build the app in-process).
pub fn dropped() -> u64 {
    LOGGER.get().map_or(0, |l| l.stats().dropped)
}
