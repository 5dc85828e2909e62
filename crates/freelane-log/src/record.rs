//! The compact record a caller captures, and its rendering as one JSON line on the drainer.
//!
//! A record is a timestamp, the event's `&'static Metadata` (level, target and field names cost
//! nothing to capture) and a byte buffer with the field values in a small binary encoding; the
//! buffer lives in a ring slot and is reused, so capturing allocates nothing in steady state.
//! Only `Debug`/`Display` values (the message, `?x` fields) are formatted on the caller, straight
//! into that buffer; JSON escaping, number formatting and the timestamp are done by the drainer.

use std::fmt::{self, Write as _};

use tracing_core::field::{Field, Visit};
use tracing_core::{Level, Metadata};

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    /// Bytes written through the `MakeWriter` front door, written out verbatim.
    #[default]
    Raw,
    /// A tracing event captured by the layer, rendered as JSON by the drainer.
    Event,
    /// A capture whose code panicked (e.g. a field's `Debug` impl) after its ring slot was
    /// claimed: the slot is still published so the ring keeps moving, and the drainer skips it
    /// and counts it as failed.
    Abandoned,
}

/// A captured event or raw write.
#[derive(Default)]
pub(crate) struct Record {
    pub(crate) kind: Kind,
    /// Nanoseconds since the Unix epoch (events only).
    pub(crate) timestamp: u64,
    pub(crate) meta: Option<&'static Metadata<'static>>,
    /// Raw bytes, or the encoded fields and spans of an event.
    pub(crate) buf: Vec<u8>,
}

impl Record {
    /// Resets the record for reuse, keeping the buffer's allocation.
    pub(crate) fn clear(&mut self) {
        self.kind = Kind::Raw;
        self.timestamp = 0;
        self.meta = None;
        self.buf.clear();
    }
}

// Encoding tags.
const FIELD: u8 = b'f';
const SPAN: u8 = b'S';
const V_I64: u8 = b'i';
const V_U64: u8 = b'u';
const V_F64: u8 = b'd';
const V_BOOL: u8 = b'b';
const V_STR: u8 = b's';

/// Appends a length-prefixed byte string.
fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&bytes[..len as usize]);
}

/// `fmt::Write` into a byte buffer (formatting `Debug` values without an intermediate String).
struct BufWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Records an event's fields into a record buffer.
pub(crate) struct Encoder<'a> {
    pub(crate) buf: &'a mut Vec<u8>,
}

impl Encoder<'_> {
    fn field(&mut self, field: &Field, tag: u8) {
        self.buf.push(FIELD);
        self.buf
            .push(u8::try_from(field.index()).unwrap_or(u8::MAX));
        self.buf.push(tag);
    }

    /// Appends one span of the event's scope: its name and its pre-rendered JSON fields.
    pub(crate) fn span(&mut self, name: &str, fields_json: &str) {
        self.buf.push(SPAN);
        put_bytes(self.buf, name.as_bytes());
        put_bytes(self.buf, fields_json.as_bytes());
    }
}

impl Visit for Encoder<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, V_I64);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, V_U64);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, V_F64);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, V_BOOL);
        self.buf.push(u8::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, V_STR);
        put_bytes(self.buf, value.as_bytes());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, V_STR);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        let _ = write!(BufWriter(self.buf), "{value:?}");
        let len = u32::try_from(self.buf.len() - at - 4).unwrap_or(u32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Renders span fields as the inside of a JSON object (`"a":1,"b":"x"`), appending to `out`.
/// Used when a span is created or records values; the result is copied into each event record.
pub(crate) struct JsonFields<'a> {
    pub(crate) out: &'a mut String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        if !self.out.is_empty() {
            self.out.push(',');
        }
        json_str_into_string(self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            let _ = write!(self.out, "\"{value}\"");
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_str_into_string(self.out, value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        json_str_into_string(self.out, &format!("{value:?}"));
    }
}

fn json_str_into_string(out: &mut String, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 2);
    json_str_utf8(&mut v, s.as_bytes());
    // The escaper only emits valid UTF-8 for valid UTF-8 input.
    out.push_str(&String::from_utf8_lossy(&v));
}

/// The bytes the JSON string writer escapes (`"`, `\`, control characters); the rest are
/// copied as they are. Bytes of multi-byte UTF-8 sequences are all >= 0x80, so escaping byte by
/// byte is correct for any valid UTF-8.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends `s` as a JSON string literal (quoted and escaped). Invalid UTF-8 is replaced.
pub(crate) fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    // Valid UTF-8 (every string the encoder stores, unless a capacity cut split a character) is
    // escaped in place; only invalid input pays for the lossy copy. ASCII is checked first: it is
    // the common case and a cheaper test than full validation.
    if s.is_ascii() || std::str::from_utf8(s).is_ok() {
        json_str_utf8(out, s);
    } else {
        json_str_utf8(out, String::from_utf8_lossy(s).as_bytes());
    }
}

/// Appends `s`, which must be valid UTF-8 (a `str`'s bytes), as a JSON string literal.
#[inline]
pub(crate) fn json_str_utf8(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if NEEDS_ESCAPE[b as usize] {
            out.extend_from_slice(&s[start..i]);
            push_escape(out, b);
            start = i + 1;
        }
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

#[cold]
fn push_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(b >> 4) as usize],
            HEX[(b & 0xf) as usize],
        ]),
    }
}

/// Two-digit pairs "00".."99" for the integer writers.
const DIGITS2: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends `n` in decimal (as `Display` does), without going through `fmt`.
pub(crate) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n >= 100 {
        let r = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[r..r + 2]);
    }
    if n >= 10 {
        let r = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[r..r + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `n` in decimal (as `Display` does), without going through `fmt`.
pub(crate) fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

/// Appends an `f64` as JSON: finite values as `Display` writes them, others as a string.
pub(crate) fn write_f64(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        let _ = write!(BufWriter(out), "\"{v}\"");
    } else if !write_f64_short(out, v) {
        let _ = write!(BufWriter(out), "{v}");
    }
}

/// The exact fast path of [`write_f64`] for values that are a decimal with at most 6 fractional
/// digits and an integer part below about 10^9 (`0.5`, `12.5`, `1024`): writes what `Display`
/// writes and returns `true`, or writes nothing and returns `false`.
///
/// `Display` writes the shortest decimal that parses back to `v`. Let `k` be the fewest
/// fractional digits for which `m = round(|v| * 10^k)` satisfies `m / 10^k == |v|` (exact
/// operands, correctly rounded division: that decimal parses back to `v`). No decimal with fewer
/// fractional digits parses back to `v` (for `m < 2^50` the rounded product is within 1/4 of the
/// exact one, so `m` is the only candidate at each `k`), and at `k` it is the only one (the
/// values that round to `v` span less than 1/2 at that scale), so it is the shortest. A trailing
/// zero would contradict the minimal `k`; it sends the value to `Display` instead.
fn write_f64_short(out: &mut Vec<u8>, v: f64) -> bool {
    const POW10: [f64; 7] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6];
    const LIMIT: f64 = (1u64 << 50) as f64;
    if v == 0.0 {
        out.extend_from_slice(if v.is_sign_negative() { b"-0" } else { b"0" });
        return true;
    }
    let a = v.abs();
    for (k, &p) in POW10.iter().enumerate() {
        let m = (a * p).round();
        if m >= LIMIT {
            return false;
        }
        if m / p != a {
            continue;
        }
        let m = m as u64;
        let scale = 10u64.pow(k as u32);
        let (int, frac) = (m / scale, m % scale);
        if k > 0 && frac % 10 == 0 {
            return false;
        }
        if v < 0.0 {
            out.push(b'-');
        }
        write_u64(out, int);
        if k > 0 {
            out.push(b'.');
            let mut digits = [b'0'; 6];
            let mut f = frac;
            for d in digits[..k].iter_mut().rev() {
                *d = b'0' + (f % 10) as u8;
                f /= 10;
            }
            out.extend_from_slice(&digits[..k]);
        }
        return true;
    }
    false
}

/// A cursor over an encoded buffer; every read is bounds-checked (a malformed buffer ends the
/// rendering of that record early instead of panicking).
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.at)?;
        self.at += 1;
        Some(b)
    }
    fn eight(&mut self) -> Option<[u8; 8]> {
        let s = self.buf.get(self.at..self.at + 8)?;
        self.at += 8;
        s.try_into().ok()
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.buf.get(self.at..self.at + 4)?.try_into().ok()?);
        self.at += 4;
        let s = self.buf.get(self.at..self.at + len as usize)?;
        self.at += len as usize;
        Some(s)
    }
}

fn level_str(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        _ => "TRACE",
    }
}

/// Renders `rec` into `out` as one line (events as JSON; raw bytes verbatim, a newline is not
/// added). Returns `true` when something was rendered.
pub(crate) fn render(rec: &Record, out: &mut Vec<u8>, r: &mut Renderer) {
    match rec.kind {
        Kind::Raw => out.extend_from_slice(&rec.buf),
        Kind::Event => render_event(rec, out, r),
        Kind::Abandoned => {}
    }
}

fn render_event(rec: &Record, out: &mut Vec<u8>, r: &mut Renderer) {
    let Some(meta) = rec.meta else {
        return;
    };
    out.extend_from_slice(b"{\"timestamp\":\"");
    r.clock.write_rfc3339(out, rec.timestamp);
    let site = r.sites.get(meta);
    out.extend_from_slice(b"\",\"level\":\"");
    out.extend_from_slice(level_str(meta.level()).as_bytes());
    out.extend_from_slice(b"\",\"fields\":{");
    let mut c = Cursor {
        buf: &rec.buf,
        at: 0,
    };
    let mut first = true;
    // Spans are listed twice (the innermost as "span", then all as "spans"), so remember where
    // the first one starts and which is the last, and walk them again below (no allocation).
    let mut spans_at = None;
    let mut spans = 0usize;
    let mut last_span: Option<(&[u8], &[u8])> = None;
    while let Some(tag) = c.u8() {
        match tag {
            FIELD => {
                let (Some(idx), Some(vt)) = (c.u8(), c.u8()) else {
                    break;
                };
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(site.key(idx));
                let ok = match vt {
                    V_I64 => c.eight().map(|b| write_i64(out, i64::from_le_bytes(b))),
                    V_U64 => c.eight().map(|b| write_u64(out, u64::from_le_bytes(b))),
                    V_F64 => c.eight().map(|b| write_f64(out, f64::from_le_bytes(b))),
                    V_BOOL => c.u8().map(|b| {
                        out.extend_from_slice(if b != 0 { b"true" } else { b"false" });
                    }),
                    V_STR => c.bytes().map(|s| json_str(out, s)),
                    _ => None,
                };
                if ok.is_none() {
                    out.extend_from_slice(b"null");
                    break;
                }
            }
            SPAN => {
                let at = c.at - 1;
                let (Some(name), Some(fields)) = (c.bytes(), c.bytes()) else {
                    break;
                };
                spans_at.get_or_insert(at);
                spans += 1;
                last_span = Some((name, fields));
            }
            _ => break,
        }
    }
    out.extend_from_slice(b"},\"target\":");
    out.extend_from_slice(&site.target);
    if let (Some((name, fields)), Some(at)) = (last_span, spans_at) {
        out.extend_from_slice(b",\"span\":");
        span_obj(out, name, fields);
        out.extend_from_slice(b",\"spans\":[");
        let mut c = Cursor { buf: &rec.buf, at };
        let mut i = 0;
        // The encoder writes spans after all fields, so the `spans` complete entries seen above
        // are the consecutive entries from `at`; anything else ends the list.
        while i < spans {
            let (Some(SPAN), Some(name), Some(fields)) = (c.u8(), c.bytes(), c.bytes()) else {
                break;
            };
            if i > 0 {
                out.push(b',');
            }
            span_obj(out, name, fields);
            i += 1;
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}\n");
}

fn span_obj(out: &mut Vec<u8>, name: &[u8], fields: &[u8]) {
    out.push(b'{');
    out.extend_from_slice(fields);
    if !fields.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"\"name\":");
    json_str(out, name);
    out.push(b'}');
}

/// The drainer's rendering state: the timestamp cache and the callsite cache.
#[derive(Default)]
pub(crate) struct Renderer {
    clock: ClockCache,
    sites: Sites,
}

/// The JSON pieces of one callsite that never change: each field's key (`"name":`) and the
/// target (`"app::gpu"`), escaped once instead of for every line.
struct Site {
    meta: &'static Metadata<'static>,
    /// The keys, back to back; `ends[i]` is where key `i` ends.
    keys: Vec<u8>,
    ends: Vec<usize>,
    target: Vec<u8>,
}

impl Site {
    fn new(meta: &'static Metadata<'static>) -> Self {
        let mut keys = Vec::new();
        let mut ends = Vec::new();
        for f in meta.fields() {
            json_str_utf8(&mut keys, f.name().as_bytes());
            keys.push(b':');
            ends.push(keys.len());
        }
        let mut target = Vec::new();
        json_str_utf8(&mut target, meta.target().as_bytes());
        Self {
            meta,
            keys,
            ends,
            target,
        }
    }

    /// The key of field `idx` (`"?":` for an index the callsite does not have).
    fn key(&self, idx: u8) -> &[u8] {
        let i = idx as usize;
        match self.ends.get(i) {
            Some(&end) => &self.keys[if i == 0 { 0 } else { self.ends[i - 1] }..end],
            None => b"\"?\":",
        }
    }
}

/// A direct-mapped cache of [`Site`]s keyed by the callsite's `&'static Metadata` address (a
/// collision replaces the entry; it is rebuilt when that callsite comes back). Bounded: at most
/// `SITES` entries.
#[derive(Default)]
struct Sites {
    slots: Vec<Option<Box<Site>>>,
}

const SITES: usize = 256;

impl Sites {
    fn get(&mut self, meta: &'static Metadata<'static>) -> &Site {
        if self.slots.is_empty() {
            self.slots.resize_with(SITES, || None);
        }
        let addr = (meta as *const Metadata<'static>).addr();
        let i = (addr / std::mem::align_of::<Metadata<'static>>()) % SITES;
        let slot = &mut self.slots[i];
        if slot.as_ref().is_some_and(|s| !std::ptr::eq(s.meta, meta)) {
            *slot = None;
        }
        slot.get_or_insert_with(|| Box::new(Site::new(meta)))
    }
}

/// Caches the formatted date-and-time of the current second, so rendering a timestamp is mostly
/// a copy plus six digits.
#[derive(Default)]
pub(crate) struct ClockCache {
    second: u64,
    prefix: [u8; 20], // "YYYY-MM-DDTHH:MM:SS."
    valid: bool,
}

impl ClockCache {
    /// Writes `nanos` since the epoch as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (UTC).
    pub(crate) fn write_rfc3339(&mut self, out: &mut Vec<u8>, nanos: u64) {
        let secs = nanos / 1_000_000_000;
        if !self.valid || secs != self.second {
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days as i64);
            let s = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            let b = s.as_bytes();
            let n = b.len().min(20);
            self.prefix = [b'0'; 20];
            self.prefix[..n].copy_from_slice(&b[..n]);
            self.second = secs;
            self.valid = true;
        }
        out.extend_from_slice(&self.prefix);
        let micros = ((nanos % 1_000_000_000) / 1_000) as usize; // < 1_000_000
        let (a, b, c) = (
            micros / 10_000 * 2,
            micros / 100 % 100 * 2,
            micros % 100 * 2,
        );
        out.extend_from_slice(&[
            DIGITS2[a],
            DIGITS2[a + 1],
            DIGITS2[b],
            DIGITS2[b + 1],
            DIGITS2[c],
            DIGITS2[c + 1],
            b'Z',
        ]);
    }
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Nanoseconds since the Unix epoch now (0 if the clock is before 1970).
///
/// Under miri (whose isolation has no wall clock) a fixed instant, 2026-01-01T00:00:00Z.
#[inline]
pub(crate) fn now_nanos() -> u64 {
    if cfg!(miri) {
        return 1_767_225_600_000_000_000;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut out = Vec::new();
        json_str(&mut out, b"a\"b\\c\nd\x01e");
        assert_eq!(out, br#""a\"b\\c\nd\u0001e""#);
    }

    proptest::proptest! {
        #[test]
        #[cfg_attr(miri, ignore)] // proptest needs the file system (isolation)
        fn integers_render_as_display_does(u: u64, i: i64, small in 0u64..1000) {
            for n in [u, small] {
                let mut out = Vec::new();
                write_u64(&mut out, n);
                proptest::prop_assert_eq!(out, n.to_string().into_bytes());
            }
            let mut out = Vec::new();
            write_i64(&mut out, i);
            proptest::prop_assert_eq!(out, i.to_string().into_bytes());
        }

        #[test]
        #[cfg_attr(miri, ignore)] // proptest needs the file system (isolation)
        fn short_decimals_render_as_display_does(
            m in 0u64..10_000_000_000_000,
            k in 0u32..9,
            neg: bool,
            bits: u64,
            x in -1e10f64..1e10,
        ) {
            let d = m as f64 / 10f64.powi(k as i32);
            let d = if neg { -d } else { d };
            for v in [d, f64::from_bits(bits), x, (x * 1000.0).round() / 1000.0] {
                let mut out = Vec::new();
                write_f64(&mut out, v);
                let want = if v.is_finite() { format!("{v}") } else { format!("\"{v}\"") };
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), want, "{:?}", v);
            }
        }

        #[test]
        #[cfg_attr(miri, ignore)] // proptest needs the file system (isolation)
        fn microseconds_render_with_six_digits(nanos in 0u64..4_102_444_800_000_000_000) {
            let mut out = Vec::new();
            ClockCache::default().write_rfc3339(&mut out, nanos);
            let micros = nanos % 1_000_000_000 / 1_000;
            let want = format!("{micros:06}Z");
            proptest::prop_assert_eq!(&out[20..], want.as_bytes());
        }
    }

    #[test]
    fn timestamps_render_as_rfc3339_utc() {
        let mut c = ClockCache::default();
        let mut out = Vec::new();
        // 2021-01-01T00:00:00.123456Z
        c.write_rfc3339(&mut out, 1_609_459_200_123_456_789);
        assert_eq!(out, b"2021-01-01T00:00:00.123456Z");
        out.clear();
        c.write_rfc3339(&mut out, 951_782_400_000_000_000); // 2000-02-29
        assert_eq!(out, b"2000-02-29T00:00:00.000000Z");
    }
}
