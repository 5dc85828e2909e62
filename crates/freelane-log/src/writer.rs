//! The `MakeWriter` front door: a drop-in replacement for `tracing_appender::non_blocking`.

use std::fmt;
use std::io;

use tracing_core::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::logger::Logger;

/// A non-blocking writer: each `write` call becomes one record in the logger's ring, written
/// verbatim by the logger's thread. Use it as `tracing_subscriber::fmt().with_writer(non_blocking)`
/// (the fmt layer formats each event on the caller and writes it with one call).
///
/// With `make_writer_for`, the event's level is known, so never-dropped levels are honoured.
#[derive(Clone)]
pub struct NonBlocking {
    logger: Logger,
}

impl NonBlocking {
    /// A writer feeding `logger`.
    pub fn new(logger: Logger) -> Self {
        Self { logger }
    }

    /// The logger behind this writer (statistics, flush).
    pub fn logger(&self) -> &Logger {
        &self.logger
    }
}

impl fmt::Debug for NonBlocking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonBlocking")
            .field("logger", &self.logger)
            .finish()
    }
}

impl io::Write for NonBlocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.logger.write_raw(None, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer [`NonBlocking`] hands to `tracing_subscriber::fmt` for one event.
pub struct NonBlockingWriter<'a> {
    logger: &'a Logger,
    level: Option<Level>,
}

impl fmt::Debug for NonBlockingWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonBlockingWriter")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl io::Write for NonBlockingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.logger.write_raw(self.level, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = NonBlockingWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        NonBlockingWriter {
            logger: &self.logger,
            level: None,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        NonBlockingWriter {
            logger: &self.logger,
            level: Some(*meta.level()),
        }
    }
}
