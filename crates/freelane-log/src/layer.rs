//! The `tracing_subscriber::Layer` front door.

use std::fmt;

use tracing_core::span::{Attributes, Id, Record as SpanValues};
use tracing_core::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::logger::Logger;
use crate::record::{now_nanos, Encoder, JsonFields, Kind};

/// A span's fields, rendered once as the inside of a JSON object when the span is created (and
/// extended when it records more values), then copied into each event inside it.
struct SpanFields(String);

/// A [`Layer`](tracing_subscriber::Layer) that captures each event into the logger's ring; the
/// logger's thread renders it as one JSON line:
///
/// ```text
/// {"timestamp":"2026-01-01T00:00:00.000001Z","level":"INFO","fields":{"message":"hi","n":1},
///  "target":"app","span":{"user":"ann","name":"req"},"spans":[{"user":"ann","name":"req"}]}
/// ```
/// (one line; `span`/`spans` only inside spans, with the spans' own fields).
///
/// Caller-side work: a clock read, the field values copied (and `Debug` values formatted) into
/// the slot's reusable buffer, the enclosing spans' pre-rendered fields copied, one ring push.
#[derive(Clone)]
pub struct JsonLayer {
    logger: Logger,
}

impl JsonLayer {
    /// A layer feeding `logger`.
    pub fn new(logger: Logger) -> Self {
        Self { logger }
    }
}

impl fmt::Debug for JsonLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLayer")
            .field("logger", &self.logger)
            .finish()
    }
}

impl<S> tracing_subscriber::Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut s = String::new();
        attrs.record(&mut JsonFields { out: &mut s });
        span.extensions_mut().insert(SpanFields(s));
    }

    fn on_record(&self, id: &Id, values: &SpanValues<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<SpanFields>() {
            values.record(&mut JsonFields { out: &mut fields.0 });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        self.logger.shared.submit(Some(*meta.level()), |rec| {
            rec.clear();
            rec.kind = Kind::Event;
            rec.timestamp = now_nanos();
            rec.meta = Some(meta);
            let mut enc = Encoder { buf: &mut rec.buf };
            event.record(&mut enc);
            if let Some(scope) = ctx.event_scope(event) {
                for span in scope.from_root() {
                    let ext = span.extensions();
                    let fields = ext.get::<SpanFields>().map_or("", |f| f.0.as_str());
                    enc.span(span.name(), fields);
                }
            }
        });
    }
}
