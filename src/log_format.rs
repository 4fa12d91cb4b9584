//! The JSON log line (`--log-format json`): one object per line, the same
//! keys and values as `tracing-subscriber`'s JSON format with the event's
//! fields flattened (`timestamp`, `level`, the fields including `message`,
//! `target`), written straight into one reused buffer.
//!
//! Why not that formatter itself: it streams the object through
//! `serde_json` into an adaptor that turns every small `io::Write` call
//! back into a `&str` (a UTF-8 check and a `fmt::write` per key, quote and
//! value): about 32,000 instructions for a request's line, 11% of a
//! forwarded notification under callgrind (docs/performance.md). This
//! writes each piece once, escaping strings as JSON requires.
//!
//! Spans are not written: callgate opens none.
//!
//! The text line (`--log-format text`, the default), [`TextLine`]: the
//! bytes of `tracing-subscriber`'s default format without colours, for
//! the same reason (its `core::fmt` of each piece cost about 16,000
//! instructions of a forwarded notification's 254,000).

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter of `--log-format json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLine;

thread_local! {
    /// The line being built, reused by each thread's events.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(1024));
    /// The last second written, `YYYY-MM-DDTHH:MM:SS`, and its Unix time.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `now` as `tracing-subscriber`'s `SystemTime` writes it
/// (`2026-12-03T19:02:24.123456Z`, UTC, microseconds). The date and time
/// of day are formatted once a second per thread; each line adds only its
/// microseconds (the formatter's own `write!` of seven numbers cost about
/// 2,400 instructions a line).
fn timestamp(line: &mut String, now: std::time::SystemTime) -> fmt::Result {
    let Ok(since) = now.duration_since(std::time::UNIX_EPOCH) else {
        // Before 1970: not worth a cache.
        return SystemTime.format_time(&mut Writer::new(line));
    };
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let Ok(mut second) = cell.try_borrow_mut() else {
            return SystemTime.format_time(&mut Writer::new(line));
        };
        if second.0 != secs {
            let Some(t) = i64::try_from(secs)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .filter(|t| chrono::Datelike::year(t) <= 9999)
            else {
                return SystemTime.format_time(&mut Writer::new(line));
            };
            second.1.clear();
            write!(second.1, "{}", t.format("%Y-%m-%dT%H:%M:%S"))?;
            second.0 = secs;
        }
        line.push_str(&second.1);
        let micros = since.subsec_micros();
        line.push('.');
        let mut digits = [b'0'; 6];
        let mut n = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        digits.iter().for_each(|&d| line.push(char::from(d)));
        line.push('Z');
        Ok(())
    })
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut write = |line: &mut String| -> fmt::Result {
            line.clear();
            line.push_str("{\"timestamp\":\"");
            timestamp(line, std::time::SystemTime::now())?;
            line.push_str("\",\"level\":\"");
            line.push_str(meta.level().as_str());
            line.push('"');
            let mut fields = Fields {
                line,
                result: Ok(()),
            };
            event.record(&mut fields);
            fields.result?;
            line.push_str(",\"target\":");
            string(line, meta.target());
            line.push_str("}\n");
            writer.write_str(line)
        };
        // A formatter that logs would find the buffer taken: give it its own.
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => write(&mut line),
            Err(_) => write(&mut String::new()),
        })
    }
}

/// The event formatter of `--log-format text` (the default): the bytes
/// `tracing-subscriber`'s default (`Full`) format writes without ANSI
/// colours, built in one reused buffer.
///
/// ```text
/// 2026-12-03T19:02:24.123456Z  INFO callgate::request: request_id="01J…" status=200 duration_ms=1.25 peer=127.0.0.1:4242 notification
/// ```
///
/// The timestamp (`SystemTime`, cached per second as the JSON line's),
/// the level padded to five, the target and `: `, then the fields with a
/// space between them: the message as it is (its ESC, BEL, BS, FF, DEL
/// and C1 controls escaped, as that format sanitizes it), any other field
/// as `name=` and its `Debug` (a `&str` quoted and escaped, a number's
/// digits). The stock formatter writes each piece through `core::fmt`
/// (with a `Debug` of every `&str` and number); this pushes clean strings
/// and numbers as they are.
///
/// What this does not write itself is left to the stock formatter, which
/// it holds: lines with ANSI colours (a terminal), events inside a span
/// (callgate opens none), events carrying `log.` fields (`log` records
/// bridged by `tracing-log`, whose target is a field) and `Error` values
/// recorded as such (their sources list).
#[derive(Debug, Clone, Default)]
pub struct TextLine {
    stock: tracing_subscriber::fmt::format::Format,
}

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() || ctx.event_scope().is_some() {
            return self.stock.format_event(ctx, writer, event);
        }
        let sanitize = writer.sanitizes_ansi_escapes();
        // A formatter that logs would find the buffer taken: give it its own.
        let written = LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => text_line(&mut line, event, sanitize, &mut writer),
            Err(_) => text_line(&mut String::new(), event, sanitize, &mut writer),
        })?;
        if written {
            Ok(())
        } else {
            self.stock.format_event(ctx, writer, event)
        }
    }
}

/// Builds `event`'s text line in `line` and writes it to `writer`; false,
/// writing nothing, when the stock formatter is to write it.
fn text_line(
    line: &mut String,
    event: &Event<'_>,
    sanitize: bool,
    writer: &mut Writer<'_>,
) -> Result<bool, fmt::Error> {
    let meta = event.metadata();
    line.clear();
    if timestamp(line, std::time::SystemTime::now()).is_err() {
        // As the stock formatter: say so, don't fail the line.
        line.push_str("<unknown time>");
    }
    line.push_str(match *meta.level() {
        tracing::Level::TRACE => " TRACE ",
        tracing::Level::DEBUG => " DEBUG ",
        tracing::Level::INFO => "  INFO ",
        tracing::Level::WARN => "  WARN ",
        tracing::Level::ERROR => " ERROR ",
    });
    line.push_str(meta.target());
    line.push_str(": ");
    let mut fields = TextFields {
        line,
        first: true,
        sanitize,
        result: Ok(()),
        stock: false,
    };
    event.record(&mut fields);
    if fields.stock {
        return Ok(false);
    }
    fields.result?;
    line.push('\n');
    writer.write_str(line)?;
    Ok(true)
}

/// Writes the fields of a text line, a space between two.
struct TextFields<'a> {
    line: &'a mut String,
    first: bool,
    /// Whether the message's terminal controls are escaped.
    sanitize: bool,
    result: fmt::Result,
    /// A field this does not write as the stock formatter does was seen.
    stock: bool,
}

impl TextFields<'_> {
    /// Starts `field`: the space before it and, but for the message, its
    /// name and `=`. False when it is not to be written here.
    fn start(&mut self, field: &Field) -> bool {
        if self.result.is_err() || self.stock {
            return false;
        }
        let name = field.name();
        if name.starts_with("log.") {
            self.stock = true;
            return false;
        }
        if self.first {
            self.first = false;
        } else {
            self.line.push(' ');
        }
        if name != "message" {
            self.line.push_str(name.strip_prefix("r#").unwrap_or(name));
            self.line.push('=');
        }
        true
    }
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.start(field) {
            return;
        }
        if field.name() == "message" {
            // Its text, not a quoted string.
            if self.sanitize {
                self.result = Sanitizing(self.line).write_str(value);
            } else {
                self.line.push_str(value);
            }
        } else {
            debug_str(self.line, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.start(field) {
            self.line.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.start(field) {
            self.line.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.start(field) {
            float(self.line, value, &mut self.result);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.start(field) {
            self.line.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_error(&mut self, _field: &Field, _value: &(dyn std::error::Error + 'static)) {
        self.stock = true;
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            message(self.line, self.sanitize, value)
        } else {
            write!(self.line, "{value:?}")
        };
    }
}

/// The message: its `Debug` (a message's is its text), with the
/// characters a terminal would act on escaped when `sanitize`.
fn message(line: &mut String, sanitize: bool, value: &dyn fmt::Debug) -> fmt::Result {
    if sanitize {
        write!(Sanitizing(line), "{value:?}")
    } else {
        write!(line, "{value:?}")
    }
}

/// A `fmt::Write` that escapes ESC, BEL, BS, FF, DEL (`\x1b`) and the C1
/// controls (`\u{9b}`), as `tracing-subscriber` sanitizes a message.
struct Sanitizing<'a>(&'a mut String);

impl fmt::Write for Sanitizing<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.bytes()
            .all(|b| b != 0x7f && b != 0xc2 && !matches!(b, 7 | 8 | 0x0c | 0x1b))
        {
            // No such character: C1 controls are 0xc2 0x80..=0x9f in UTF-8.
            self.0.push_str(s);
            return Ok(());
        }
        for c in s.chars() {
            match c {
                '\u{1b}' => self.0.push_str("\\x1b"),
                '\u{7}' => self.0.push_str("\\x07"),
                '\u{8}' => self.0.push_str("\\x08"),
                '\u{c}' => self.0.push_str("\\x0c"),
                '\u{7f}' => self.0.push_str("\\x7f"),
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// `s` as its `Debug` writes it: quoted, and with escapes when it has a
/// quote, a backslash or a character other than printable ASCII (then
/// `Debug` itself writes it: its rules for Unicode are its own).
fn debug_str(line: &mut String, s: &str) {
    if debug_clean(s.as_bytes()) {
        line.push('"');
        line.push_str(s);
        line.push('"');
    } else {
        // Writing to a String fails only if Debug does, and str's does not.
        let _ = write!(line, "{s:?}");
    }
}

/// Whether every byte is printable ASCII (0x20 to 0x7e) other than the
/// quote and the backslash: what `Debug` of a `&str` writes as it is.
/// Eight bytes at a time (the has-a-zero-byte test of `needs_escape`, and
/// any high bit for 0x80 and up), then the rest one by one.
fn debug_clean(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(eight) = <[u8; 8]>::try_from(chunk) else {
            return false;
        };
        let x = u64::from_le_bytes(eight);
        let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH != 0;
        if x & HIGH != 0
            || below(x, 0x20)
            || below(x ^ (ONES * 0x7f), 1)
            || below(x ^ (ONES * u64::from(b'"')), 1)
            || below(x ^ (ONES * u64::from(b'\\')), 1)
        {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// Writes each field as `,"name":value`.
struct Fields<'a> {
    line: &'a mut String,
    result: fmt::Result,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push_str(",\"");
        self.line.push_str(field.name());
        self.line.push_str("\":");
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        string(self.line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if !value.is_finite() {
            // As serde_json: JSON has no NaN or infinity.
            self.line.push_str("null");
        } else if self.result.is_ok() {
            float(self.line, value, &mut self.result);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.line.push('"');
        if self.result.is_ok() {
            self.result = write!(Escaping(self.line), "{value:?}");
        }
        self.line.push('"');
    }
}

/// A finite `value` as its `Debug` writes it (`1.234567`, `3.0`, `1e-7`,
/// `1e16`): the shortest digits that read back as the same number, the
/// closest of them to it. `ryu` writes the same between 1e-4 and 1e4, a
/// fraction of `core::fmt`'s cost; outside that it may not:
/// - below 1e-4 and from 1e16 `Debug` writes an exponent, ryu a decimal
///   from 1e-5 on (`1e-5` against `0.00001`);
/// - when two shortest candidates are exactly as close (a tie: the value is
///   `(2n+1)·5^k / 2^(k+1)` and its spacing is at least 10^-k), `Debug`
///   rounds up and ryu to even (`…797.3` against `…797.2` for
///   -1149636667324797.25). A tie needs both, which puts it at 29,802 or
///   more (the least over `k` of `max(2^52 / 10^k, (5/2)^k / 2)`).
///
/// A request's `duration_ms` is within 1e4 unless it took over 10 seconds.
fn float(line: &mut String, value: f64, result: &mut fmt::Result) {
    if (1e-4..1e4).contains(&value.abs()) {
        line.push_str(ryu::Buffer::new().format_finite(value));
    } else {
        *result = write!(line, "{value:?}");
    }
}

/// `s` as a JSON string.
fn string(line: &mut String, s: &str) {
    line.push('"');
    escape(line, s);
    line.push('"');
}

/// Appends `s` with what JSON requires escaped (RFC 8259: the quote, the
/// backslash and the control characters), in runs between escapes. The
/// run before the first escape is found eight bytes at a time: a log
/// line's strings (ids, names, addresses) seldom have any.
fn escape(line: &mut String, s: &str) {
    let clean = clean_prefix(s.as_bytes());
    if clean == s.len() {
        line.push_str(s);
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate().skip(clean) {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        line.push_str(&s[start..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            line.push_str("\\u00");
            line.push(char::from(HEX[usize::from(b >> 4)]));
            line.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            line.push_str(short);
        }
        start = i + 1;
    }
    line.push_str(&s[start..]);
}

/// How many of `bytes`' first bytes need no escape: all of them, or a
/// multiple of eight at or before the first escape. Eight bytes are
/// checked at a time, the last eight too (overlapping the chunk before
/// them), so that a clean string of eight bytes or more is never read a
/// byte at a time.
fn clean_prefix(bytes: &[u8]) -> usize {
    let mut clean = 0;
    for chunk in bytes.chunks_exact(8) {
        if needs_escape(chunk) {
            return clean;
        }
        clean += 8;
    }
    if clean == bytes.len() || (clean > 0 && !needs_escape(&bytes[bytes.len() - 8..])) {
        bytes.len()
    } else {
        clean
    }
}

/// Whether one of eight bytes is below 0x20, a quote or a backslash: the
/// classic "has a zero byte" test (`(x - 0x01..) & !x & 0x80..`, exact as
/// a yes or no) on the chunk, on it XOR '"' and on it XOR '\\' (and with
/// 0x20.. for "below 0x20"); a byte of 0x80 or more (UTF-8) never sets it.
/// Not eight bytes: yes.
fn needs_escape(chunk: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let Ok(eight) = <[u8; 8]>::try_from(chunk) else {
        return true;
    };
    let x = u64::from_le_bytes(eight);
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH != 0;
    below(x, 0x20)
        || below(x ^ (ONES * u64::from(b'"')), 1)
        || below(x ^ (ONES * u64::from(b'\\')), 1)
}

/// A `fmt::Write` that escapes what it is given, for `Debug` values.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            assert!(text.ends_with('\n'), "{text:?}");
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    fn events() {
        let peer: std::net::SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let hostile = "quote \" backslash \\ newline \n tab \t bell \u{7} nul \0 bs \u{8} ff \u{c} é 中 \u{2028}";
        tracing::info!(
            target: "callgate::request",
            request_id = "01JABC",
            route = hostile,
            status = 200u16,
            delta = -3i64,
            duration_ms = 1.234_567_f64,
            nothing = f64::NAN,
            dry_run = false,
            peer = %peer,
            debugged = ?hostile,
            "notification"
        );
        tracing::info!(
            small = 0u64,
            big = u64::MAX,
            low = i64::MIN,
            high = i64::MAX,
            zero = 0.0f64,
            whole = 3.0f64,
            tiny = 0.000_123_f64,
            huge = 9_999_999_999_999_998.0f64,
            negative = -12.5f64,
            "numbers"
        );
        tracing::warn!(
            reason = hostile,
            "a {} message with {:?}",
            "formatted",
            hostile
        );
        tracing::error!(error = "x");
    }

    /// The cached second and the microseconds: what chrono's RFC 3339 with
    /// microseconds writes (the format of `tracing-subscriber`'s
    /// `SystemTime`), across second, day and year boundaries, with the
    /// cache hit and missed, back in time too.
    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        use std::time::{Duration, UNIX_EPOCH};
        let instants = [
            0u64,
            1,
            59,
            86_399,
            86_400,
            951_782_400, // 2000-02-29
            1_764_790_944,
            1_764_790_944,
            1_764_790_945,
            1_735_689_599, // 2024-12-31T23:59:59
            1_735_689_600,
            253_402_300_799, // 9999-12-31T23:59:59
            1_764_790_944,
        ];
        for secs in instants {
            for micros in [0u32, 1, 9, 10, 999_999, 123_456, 500_000] {
                let t = UNIX_EPOCH + Duration::new(secs, micros * 1000 + 999);
                let mut ours = String::new();
                timestamp(&mut ours, t).unwrap();
                let want = chrono::DateTime::<chrono::Utc>::from(t)
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                assert_eq!(ours, want);
            }
        }
        // And next to the formatter it stands in for, now.
        let mut ours = String::new();
        timestamp(&mut ours, std::time::SystemTime::now()).unwrap();
        let mut theirs = String::new();
        SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
    }

    /// Field for field what `tracing-subscriber`'s JSON format writes, the
    /// timestamp aside (taken a moment apart; same clock format).
    #[test]
    fn lines_are_what_the_json_format_writes() {
        let (ours, theirs) = (Captured::default(), Captured::default());
        let o = ours.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(JsonLine)
            .with_writer(move || o.clone())
            .finish();
        tracing::subscriber::with_default(sub, events);
        let t = theirs.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(move || t.clone())
            .finish();
        tracing::subscriber::with_default(sub, events);
        // Byte for byte, once the timestamps (taken a moment apart) are
        // cut out.
        let text = |c: &Captured| String::from_utf8(c.0.lock().unwrap().clone()).unwrap();
        let untimed = |t: String| -> Vec<String> {
            t.lines()
                .map(|l| {
                    let rest = l.strip_prefix("{\"timestamp\":\"").unwrap();
                    let end = rest.find('"').unwrap();
                    rest[end..].to_owned()
                })
                .collect()
        };
        assert_eq!(untimed(text(&ours)), untimed(text(&theirs)));
        let (mut ours, mut theirs) = (ours.lines(), theirs.lines());
        assert_eq!(ours.len(), 4);
        for (o, t) in ours.iter_mut().zip(theirs.iter_mut()) {
            let (ot, tt) = (
                o.as_object_mut().unwrap().remove("timestamp").unwrap(),
                t.as_object_mut().unwrap().remove("timestamp").unwrap(),
            );
            let (ot, tt) = (ot.as_str().unwrap(), tt.as_str().unwrap());
            assert_eq!(ot.len(), tt.len(), "{ot} / {tt}");
            chrono::DateTime::parse_from_rfc3339(ot).unwrap();
            assert_eq!(o, t);
        }
    }

    /// `duration_ms` and any other float: what `{:?}` wrote before, byte
    /// for byte, inside ryu's range and out of it, at its edges, over
    /// every duration a request can take (nanoseconds to hours) and over
    /// random bit patterns.
    #[test]
    fn floats_are_what_debug_writes() {
        let check = |v: f64| {
            let mut ours = String::new();
            let mut result = Ok(());
            float(&mut ours, v, &mut result);
            result.unwrap();
            assert_eq!(ours, format!("{v:?}"), "{}", v.to_bits());
        };
        let edges = [
            0.0,
            -0.0,
            1e-4,
            1e-5,
            1e16,
            1e15,
            0.1,
            0.3,
            1.0,
            123.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            5e-324,
        ];
        for v in edges {
            for w in [v, f64::from_bits(v.to_bits() + 1), -v] {
                check(w);
                if v.to_bits() > 0 {
                    check(f64::from_bits(v.to_bits() - 1));
                }
            }
        }
        // Ties, every k: (2n+1)·5^k / 2^(k+1), small and large n.
        for k in 1..=22i32 {
            let five = 5f64.powi(k);
            for n in (0u64..2_000).chain((0..2_000).map(|i| (1u64 << 40) / (i + 1))) {
                let v = (2 * n + 1) as f64 * five / 2f64.powi(k + 1);
                check(v);
                check(-v);
            }
        }
        // A tie ryu writes otherwise: -1149636667324797.25.
        check(f64::from_bits(14_055_829_384_065_246_709));
        for n in (0u64..200_000).chain((0..200_000).map(|i| i * 7_919 + 999_000_000)) {
            check(std::time::Duration::from_nanos(n).as_secs_f64() * 1000.0);
        }
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..300_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_finite() {
                check(v);
            }
            // And as many in the range ryu writes.
            check((x >> 11) as f64 / (1u64 << 53) as f64 * 10f64.powi((x % 10) as i32 - 4));
        }
    }

    /// Strings escaped as serde_json escapes them (the JSON format's own
    /// writer), with every escape at every offset of the eight-byte chunks,
    /// after and before multi-byte characters.
    #[test]
    fn strings_are_what_serde_json_writes() {
        let specials: Vec<char> = (0u8..0x20)
            .map(char::from)
            .chain([
                '"', '\\', '\u{7f}', 'é', '中', '\u{2028}', '😀', 'A', '!', ']', '}',
            ])
            .collect();
        for len in 0..20 {
            for at in 0..=len {
                for &c in &specials {
                    let mut s: String = "abcdefghijklmnopqrstuvwxyz".chars().take(len).collect();
                    s.insert(at, c);
                    let mut ours = String::new();
                    string(&mut ours, &s);
                    assert_eq!(ours, serde_json::to_string(&s).unwrap(), "{s:?}");
                }
            }
        }
        // Bytes that sit next to the flagged values: 0x1f/0x20, 0x21-0x23,
        // 0x5b-0x5d, and chunks full of non-ASCII.
        for s in [
            "\u{1f}\u{20}",
            "!\"#",
            "[\\]",
            "ééééééééé\"",
            "        \u{0}",
            "中文中文中文中文",
        ] {
            let mut ours = String::new();
            string(&mut ours, s);
            assert_eq!(ours, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    /// Each write on its own: the formatter writes one line per event.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl io::Write for Writes {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Strings for the text line's escapes: every ASCII byte, what `Debug`
    /// escapes beyond ASCII (controls, unassigned and private-use code
    /// points, separators, grapheme extenders first and after a letter),
    /// what it writes as it is, and what the message's sanitizing escapes.
    fn awkward() -> Vec<String> {
        let mut all: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        for c in [
            '\u{80}',
            '\u{9b}',
            '\u{9f}',
            '\u{a0}',
            '\u{ad}',
            'é',
            '中',
            '😀',
            '\u{200b}',
            '\u{200d}',
            '\u{2028}',
            '\u{2029}',
            '\u{feff}',
            '\u{fffd}',
            '\u{ffff}',
            '\u{e000}',
            '\u{378}',
            '\u{10ffff}',
            '\u{301}',
            '\u{20e3}',
            '\u{1f3fb}',
            '\u{e0100}',
            '\'',
        ] {
            all.push(c.to_string());
            all.push(format!("{c}{c}"));
            all.push(format!("e{c}x"));
            all.push(format!("abcdefgh{c}ijklmnopq"));
        }
        all.extend(
            [
                "",
                " ",
                "plain-ascii_0123456789",
                "exactly8",
                "sixteen-bytes-ok",
                "quote \" backslash \\ newline \n tab \t cr \r nul \0 esc \u{1b}[31m red",
                "\u{1b}]0;title\u{7}",
                "e\u{301}\u{301} a\u{20e3}",
                "\u{301}leading extender",
                "中文商户 订单",
                "/notify/wechat?x=\"1\"&y='2'",
            ]
            .map(String::from),
        );
        all
    }

    fn text_events() {
        let peer: std::net::SocketAddr = "127.0.0.1:4242".parse().unwrap();
        // The request line as `pipeline::finish` writes it, at each level.
        for (i, s) in awkward().iter().enumerate() {
            let s = s.as_str();
            macro_rules! line {
                ($level:ident) => {
                    tracing::$level!(
                        target: "callgate::request",
                        request_id = "01JABCDEFGHJKMNPQRSTVWXYZ",
                        method = "POST",
                        path = s,
                        route = "wechat",
                        provider = "wechat_v3",
                        outcome = "forwarded",
                        status = 200u16,
                        event_id = s,
                        peer = %peer,
                        client = "-",
                        duration_ms = (i as f64) * 0.123_456_7,
                        reason = "",
                        dry_run = s,
                        "notification"
                    )
                };
            }
            match i % 5 {
                0 => line!(info),
                1 => line!(warn),
                2 => line!(error),
                3 => line!(debug),
                _ => line!(trace),
            }
            // The string as the message, formatted and as it is.
            tracing::info!("{}", s);
            tracing::warn!(field = s, "{s} and {s:?}");
            tracing::info!(message = s);
            tracing::info!(message = s, after = s);
            tracing::error!(shown = %s, debugged = ?s);
        }
        tracing::info!(
            small = 0u64,
            big = u64::MAX,
            low = i64::MIN,
            high = i64::MAX,
            wide = u128::MAX,
            narrow = i128::MIN,
            zero = 0.0f64,
            negative_zero = -0.0f64,
            whole = 3.0f64,
            tiny = 0.000_123_f64,
            tinier = 1e-7f64,
            huge = 9_999_999_999_999_998.0f64,
            max = f64::MAX,
            min = f64::MIN_POSITIVE,
            sub = 5e-324f64,
            nan = f64::NAN,
            inf = f64::INFINITY,
            minus_inf = f64::NEG_INFINITY,
            negative = -12.5f64,
            yes = true,
            no = false,
            bytes = &b"\x00\xffab"[..],
            unit = ?(),
            list = ?["a", "b\n"],
            "numbers"
        );
        // Numbers and a Display value as the message; no message at all;
        // raw names; `log.` fields (a bridged `log` record's).
        tracing::info!(message = 42u64, other = 1i64);
        tracing::info!(message = -1.5f64);
        tracing::info!(message = %"displayed \u{1b} message");
        tracing::warn!(only = "field");
        tracing::error!(r#type = "raw", r#mod = 1u64);
        tracing::info!(log.target = "hyper", log.line = 7u64, kept = "x", "bridged");
        tracing::info!(target: "log", kept = 1u64, log.module_path = "rustls", "from log");
        let e = std::io::Error::other("disk \u{1b} full");
        tracing::error!(
            error = &e as &(dyn std::error::Error + 'static),
            "write failed"
        );
        // Inside a span: the stock formatter writes it.
        let span = tracing::info_span!("outer", id = 7u64);
        span.in_scope(|| tracing::info!(inside = true, "in a span"));
        tracing::info!("SIGUSR1 ignored: callgate opens no log file to reopen");
    }

    fn lines(ansi: bool, sanitize: bool, ours: bool) -> Vec<Vec<u8>> {
        let w = Writes::default();
        let writes = w.clone();
        let builder = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(ansi)
            .with_ansi_sanitization(sanitize)
            .with_writer(move || writes.clone());
        if ours {
            let sub = builder.event_format(TextLine::default()).finish();
            tracing::subscriber::with_default(sub, text_events);
        } else {
            tracing::subscriber::with_default(builder.finish(), text_events);
        }
        w.0.lock().unwrap().clone()
    }

    /// Byte for byte what `tracing-subscriber`'s default text format
    /// writes (the timestamps, taken a moment apart, cut out and checked
    /// for their shape), with its sanitizing of messages and without, and
    /// with ANSI colours (there the stock formatter writes).
    #[test]
    fn text_lines_are_what_the_default_format_writes() {
        for (ansi, sanitize) in [(false, true), (false, false), (true, true)] {
            let (ours, theirs) = (lines(ansi, sanitize, true), lines(ansi, sanitize, false));
            assert!(ours.len() > 1000, "{}", ours.len());
            assert_eq!(ours.len(), theirs.len());
            let untimed = |line: &[u8]| -> Vec<u8> {
                let text = std::str::from_utf8(line).unwrap();
                // `YYYY-`, after the colour's escape when there is one.
                let start = text.find('-').unwrap() - 4;
                let stamp = &text[start..start + 27];
                assert!(stamp.ends_with('Z'), "{text:?}");
                chrono::DateTime::parse_from_rfc3339(stamp).unwrap();
                let mut rest = line[..start].to_vec();
                rest.extend_from_slice(&line[start + 27..]);
                rest
            };
            for (o, t) in ours.iter().zip(&theirs) {
                assert_eq!(
                    String::from_utf8_lossy(&untimed(o)),
                    String::from_utf8_lossy(&untimed(t)),
                    "ansi {ansi} sanitize {sanitize}"
                );
                assert_eq!(untimed(o), untimed(t));
            }
        }
    }

    /// The clean test against `Debug` itself, every escape at every offset
    /// of the eight-byte chunks.
    #[test]
    fn debug_strings_are_what_debug_writes() {
        for s in awkward() {
            for len in 0..20 {
                for at in 0..=len {
                    let mut v: String = "abcdefghijklmnopqrstuvwxyz".chars().take(len).collect();
                    v.insert_str(at, &s);
                    let mut ours = String::new();
                    debug_str(&mut ours, &v);
                    assert_eq!(ours, format!("{v:?}"));
                }
            }
        }
    }
}
