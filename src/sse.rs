//! Everything about the event-stream format: which requests and responses
//! are event streams, the shutdown frame and the event-boundary tracker.

use crate::config::{DEFAULT_MESSAGE, seconds};
use bytes::{Bytes, BytesMut};
use http::{Request, Response, header};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// True if the request accepts `text/event-stream`: an `EventSource`.
pub(crate) fn accepts_event_stream<B>(req: &Request<B>) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    req.headers().get_all(header::ACCEPT).iter().any(|value| {
        value
            .as_bytes()
            .windows(SSE.len())
            .any(|w| w.eq_ignore_ascii_case(SSE))
    })
}

/// True for a `text/event-stream` response whose bytes are plain SSE and of
/// no declared length: the notice cannot be spliced into a compressed stream,
/// nor into one whose `Content-Length` it would overrun.
pub(crate) fn is_spliceable<B>(res: &Response<B>) -> bool {
    let headers = res.headers();
    let event_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"));
    let plain = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    event_stream && plain && !headers.contains_key(header::CONTENT_LENGTH)
}

/// The shutdown frame, encoded once per drain around the parts that vary
/// between streams: the reconnect delay (and the default message, which
/// names it).
///
/// The frame carries `retry:` (milliseconds) so that a plain `EventSource`
/// reconnects after the delay, and no `id:` so the client's Last-Event-ID
/// survives the notice.
pub(crate) struct NoticeFrame {
    /// The frame with the configured delay: what every stream gets without
    /// jitter, a clone of one buffer.
    base: Bytes,
    /// The frame as text between holes, for a stream's own delay.
    pieces: Vec<Piece>,
}

enum Piece {
    Text(Box<str>),
    /// `retry:` in milliseconds.
    Millis,
    /// The delay in seconds, in the message and as a JSON number: `30`,
    /// `37.215`.
    Seconds,
}

impl NoticeFrame {
    /// Encodes the frame's shared parts; `message` `None` is the default
    /// message, which names each stream's delay.
    pub(crate) fn new(message: Option<&str>, base: Duration, now: SystemTime) -> Self {
        let mut pieces = vec![
            Piece::Text("retry: ".into()),
            Piece::Millis,
            Piece::Text("\nevent: shutdown\ndata: {\"type\":\"shutdown\",\"message\":".into()),
        ];
        match message {
            Some(message) => pieces.push(Piece::Text(json(message).into())),
            None => {
                // The message's JSON string around the seconds: neither part
                // nor a number needs escaping, but encode them all the same.
                let (head, tail) = DEFAULT_MESSAGE;
                let head = json(head);
                let tail = json(tail);
                pieces.push(Piece::Text(head[..head.len() - 1].into()));
                pieces.push(Piece::Seconds);
                pieces.push(Piece::Text(tail[1..].into()));
            }
        }
        pieces.extend([
            Piece::Text(
                format!(
                    r#","timestamp":"{}","reconnect_delay":"#,
                    iso8601_millis(now)
                )
                .into(),
            ),
            Piece::Seconds,
            Piece::Text("}\n\n".into()),
        ]);
        let mut frame = Self {
            base: Bytes::new(),
            pieces,
        };
        frame.base = frame.render(base);
        frame
    }

    /// The frame with the configured delay.
    pub(crate) fn base(&self) -> &Bytes {
        &self.base
    }

    /// The frame for one stream's own delay: the shared parts copied, the
    /// delay written three times.
    pub(crate) fn render(&self, delay: Duration) -> Bytes {
        let mut out = BytesMut::with_capacity(self.base.len() + 24);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                Piece::Millis => out.extend_from_slice(delay.as_millis().to_string().as_bytes()),
                Piece::Seconds => out.extend_from_slice(seconds(delay).as_bytes()),
            }
        }
        out.freeze()
    }
}

/// A string as a JSON string literal.
fn json(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Formats a time as ISO 8601 UTC with milliseconds: `2025-01-02T13:00:00.000Z`.
pub(crate) fn iso8601_millis(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Where the stream written so far stands, in the terms of the WHATWG
/// event-stream grammar.
///
/// A frame may be spliced in only at an event boundary: at the start of a line,
/// with no field line since the last blank line (comment lines do not count:
/// the parser ignores them). Lines end with CRLF, LF or CR; a CR at the end of
/// one chunk may be completed by an LF at the start of the next.
///
/// Four bytes, each a field, so that the hot path's reset (in
/// [`advance`](Self::advance)) is one 32-bit store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(4))]
pub(crate) struct Boundary {
    line: Line,
    /// A field line was seen since the last blank line.
    in_event: bool,
    /// The last byte was a CR: a following LF belongs to the same line end.
    after_cr: bool,
    /// No byte of the stream has passed yet: a byte order mark, which a
    /// client ignores only there, may still lead it.
    fresh: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Line {
    Start,
    Field,
    Comment,
}

impl Default for Boundary {
    fn default() -> Self {
        Self::START
    }
}

impl Boundary {
    /// At the start of a line, no event open: where a stream starts.
    const START: Self = Self {
        line: Line::Start,
        in_event: false,
        after_cr: false,
        fresh: false,
    };

    /// Where a stream starts, before its first byte.
    pub(crate) const FRESH: Self = Self {
        fresh: true,
        ..Self::START
    };

    /// True if a whole event may be inserted here without joining another.
    pub(crate) fn is_boundary(&self) -> bool {
        self.line == Line::Start && !self.in_event
    }

    /// True if no byte of the stream has passed yet.
    pub(crate) fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// True if the stream so far ends with a CR whose LF may still come.
    pub(crate) fn after_cr(&self) -> bool {
        self.after_cr
    }

    /// Advances over `data` and returns the last offset in `1..=data.len()`
    /// at which the stream stands at a boundary, if any.
    ///
    /// An offset is reported after an LF that completes a CRLF, never between
    /// the two, so a split there never separates a CR from its LF.
    ///
    /// Inlined: its first check decides for almost every chunk of the hot
    /// path, and [`scan`](Self::scan) is out of line.
    #[inline]
    pub(crate) fn advance(&mut self, data: &[u8]) -> Option<usize> {
        // Hot path: almost every SSE server writes whole events, so a chunk
        // usually ends with a blank line. Its end state is then known without
        // reading the rest of it (see `ends_with_blank_line`).
        if let Some(after_cr) = ends_with_blank_line(data) {
            // Two stores of a constant, not one of a state built from
            // `after_cr`: the common LF LF end then costs one instruction.
            if after_cr {
                *self = Self {
                    after_cr: true,
                    ..Self::START
                };
            } else {
                *self = Self::START;
            }
            return Some(data.len());
        }
        self.scan(data)
    }

    /// [`advance`](Self::advance) the long way: reads the first byte of each
    /// line and skips from there to the line's end.
    #[inline(never)]
    fn scan(&mut self, data: &[u8]) -> Option<usize> {
        self.fresh &= data.is_empty();
        let mut last = None;
        let mut i = 0;
        while i < data.len() {
            if std::mem::take(&mut self.after_cr) && data[i] == b'\n' {
                // The LF of a CRLF: the line already ended at the CR.
                if self.is_boundary() {
                    last = Some(i + 1);
                }
                i += 1;
                continue;
            }
            if self.line == Line::Start {
                match data[i] {
                    b'\r' | b'\n' => {}
                    b':' => self.line = Line::Comment,
                    _ => self.line = Line::Field,
                }
            }
            // Only a line end changes the state now: skip to it.
            let Some(eol) = data[i..].iter().position(|&b| b == b'\r' || b == b'\n') else {
                break;
            };
            i += eol;
            match self.line {
                Line::Start => self.in_event = false,
                Line::Field => self.in_event = true,
                Line::Comment => {}
            }
            self.line = Line::Start;
            self.after_cr = data[i] == b'\r';
            i += 1;
            if self.is_boundary() {
                last = Some(i);
            }
        }
        last
    }
}

/// If `data` ends with a blank line, whatever came before it, returns whether
/// its last byte is a CR (whose LF may still come).
///
/// A line end (CR, LF or CRLF) right after a CR or LF ends an empty line: the
/// byte before it ended a line (or was the LF of a CRLF whose CR did), so it
/// starts at the start of a line. An empty line leaves the stream at a
/// boundary, with no event open, at the very end of `data`.
#[inline(always)]
fn ends_with_blank_line(data: &[u8]) -> Option<bool> {
    let eol = |b: &u8| matches!(b, b'\r' | b'\n');
    match data {
        [.., b'\r', b'\n'] => {
            let before = data.len().checked_sub(3).map(|i| &data[i]);
            before.is_some_and(eol).then_some(false)
        }
        [.., a, b'\n'] if eol(a) => Some(false),
        [.., a, b'\r'] if eol(a) => Some(true),
        _ => None,
    }
}

/// The reference model the tracker is checked against.
#[cfg(test)]
#[path = "../tests/common/grammar.rs"]
#[allow(unreachable_pub)]
mod grammar;

#[cfg(test)]
mod tests {
    use super::*;

    fn boundaries(chunks: &[&[u8]]) -> Vec<Option<usize>> {
        let mut b = Boundary::default();
        chunks.iter().map(|c| b.advance(c)).collect()
    }

    fn shutdown_frame(message: &str, delay: Duration, now: SystemTime) -> Bytes {
        NoticeFrame::new(Some(message), delay, now).base().clone()
    }

    #[test]
    fn frame_is_byte_exact() {
        let now = UNIX_EPOCH + Duration::from_millis(1_735_822_800_000);
        let expected: &[u8] = b"retry: 30000\nevent: shutdown\ndata: {\"type\":\"shutdown\",\"message\":\"Server restarting, please reconnect in 30s\",\"timestamp\":\"2025-01-02T13:00:00.000Z\",\"reconnect_delay\":30}\n\n";
        let frame = shutdown_frame(
            "Server restarting, please reconnect in 30s",
            Duration::from_secs(30),
            now,
        );
        assert_eq!(&*frame, expected);
        // The default message, encoded once, and rendered again for the
        // same delay, give the same bytes.
        let template = NoticeFrame::new(None, Duration::from_secs(30), now);
        assert_eq!(&**template.base(), expected);
        assert_eq!(&*template.render(Duration::from_secs(30)), expected);
    }

    #[test]
    fn rendered_frame_names_its_own_delay_three_times() {
        let now = UNIX_EPOCH + Duration::from_millis(1_735_822_800_000);
        let template = NoticeFrame::new(None, Duration::from_secs(30), now);
        assert_eq!(
            &*template.render(Duration::from_millis(37_215)),
            b"retry: 37215\nevent: shutdown\ndata: {\"type\":\"shutdown\",\"message\":\"Server restarting, please reconnect in 37.215s\",\"timestamp\":\"2025-01-02T13:00:00.000Z\",\"reconnect_delay\":37.215}\n\n"
        );
        let custom = NoticeFrame::new(Some("bye"), Duration::from_secs(30), now);
        assert_eq!(
            &*custom.render(Duration::from_millis(31_500)),
            b"retry: 31500\nevent: shutdown\ndata: {\"type\":\"shutdown\",\"message\":\"bye\",\"timestamp\":\"2025-01-02T13:00:00.000Z\",\"reconnect_delay\":31.5}\n\n"
        );
    }

    #[test]
    fn frame_escapes_message_and_keeps_fractional_delay() {
        let frame = shutdown_frame("say \"bye\"\n", Duration::from_millis(1500), UNIX_EPOCH);
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(text.starts_with("retry: 1500\n"));
        assert!(text.contains(r#""message":"say \"bye\"\n""#));
        assert!(text.contains(r#""reconnect_delay":1.5}"#));
        assert_eq!(
            text.matches('\n').count(),
            4,
            "message newlines must stay escaped"
        );
    }

    #[test]
    fn timestamps_are_iso8601_millis_utc() {
        let t = |ms| iso8601_millis(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(t(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(t(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(t(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn boundary_after_blank_line_in_every_line_ending() {
        assert_eq!(boundaries(&[b"data: a\n\n"]), [Some(9)]);
        assert_eq!(boundaries(&[b"data: a\r\n\r\n"]), [Some(11)]);
        assert_eq!(boundaries(&[b"data: a\r\r"]), [Some(9)]);
        assert_eq!(boundaries(&[b"data: a\n"]), [None]);
        assert_eq!(boundaries(&[b"data: a\n\ndata: b"]), [Some(9)]);
    }

    #[test]
    fn crlf_split_across_chunks_reports_after_the_lf() {
        let mut b = Boundary::default();
        assert_eq!(b.advance(b"data: a\r\n\r"), Some(10));
        assert!(b.is_boundary() && b.after_cr());
        assert_eq!(b.advance(b"\ndata: b"), Some(1));
        assert!(!b.is_boundary());
    }

    #[test]
    fn comments_do_not_open_an_event() {
        let mut b = Boundary::default();
        assert_eq!(b.advance(b": keep-alive\n"), Some(13));
        assert!(b.is_boundary());
        assert_eq!(b.advance(b"id: 7\n: note\n"), None);
        assert!(!b.is_boundary());
    }

    /// The tracker as first written: one byte at a time, the reference the
    /// fast paths must agree with.
    fn reference(b: &mut Boundary, data: &[u8]) -> Option<usize> {
        let mut last = None;
        for (i, &byte) in data.iter().enumerate() {
            if std::mem::take(&mut b.after_cr) && byte == b'\n' {
                if b.is_boundary() {
                    last = Some(i + 1);
                }
                continue;
            }
            match byte {
                b'\r' | b'\n' => {
                    match b.line {
                        Line::Start => b.in_event = false,
                        Line::Field => b.in_event = true,
                        Line::Comment => {}
                    }
                    b.line = Line::Start;
                    b.after_cr = byte == b'\r';
                    if b.is_boundary() {
                        last = Some(i + 1);
                    }
                }
                b':' if b.line == Line::Start => b.line = Line::Comment,
                _ if b.line == Line::Start => b.line = Line::Field,
                _ => {}
            }
        }
        last
    }

    #[test]
    fn fast_paths_agree_with_the_byte_by_byte_tracker() {
        // Every string of up to 7 bytes over the bytes that matter, as one
        // chunk after every string of up to 3 bytes.
        const ALPHABET: &[u8] = b"a:\r\n";
        let strings = |max: u32| {
            (0..=max).flat_map(|len| {
                (0..4usize.pow(len)).map(move |mut k| {
                    (0..len)
                        .map(|_| {
                            let b = ALPHABET[k % 4];
                            k /= 4;
                            b
                        })
                        .collect::<Vec<u8>>()
                })
            })
        };
        for prefix in strings(3) {
            let mut start = Boundary::default();
            reference(&mut start, &prefix);
            for chunk in strings(7) {
                let (mut fast, mut slow) = (start, start);
                let got = fast.advance(&chunk);
                let want = reference(&mut slow, &chunk);
                assert_eq!((got, fast), (want, slow), "{prefix:?} then {chunk:?}");
            }
        }
    }

    #[test]
    fn event_split_byte_by_byte() {
        let mut b = Boundary::default();
        let event = b"event: x\r\ndata: y\r\n\r\n";
        let at: Vec<usize> = (0..event.len())
            .filter(|&i| b.advance(&event[i..=i]).is_some())
            .collect();
        // At the blank line's CR, and again after its LF; never inside.
        assert_eq!(at, [event.len() - 2, event.len() - 1]);
    }

    #[test]
    fn reference_model_examples() {
        let at = |s: &[u8]| {
            grammar::boundaries(s)
                .iter()
                .enumerate()
                .filter_map(|(p, &b)| b.then_some(p))
                .collect::<Vec<_>>()
        };
        assert_eq!(at(b"data: a\n\n"), [0, 9]);
        assert_eq!(at(b"data: a\r\n\r\n"), [0, 10, 11]);
        assert_eq!(at(b": c\nid: 1\r\r"), [0, 4, 11]);
        assert_eq!(at(b"\n\r\n"), [0, 1, 2, 3]);
    }

    /// The fuzz target: arbitrary bytes (mostly from the grammar's alphabet,
    /// so that lines, comments and blank lines are common) cut into arbitrary
    /// chunks; after every chunk the tracker agrees with the reference model.
    ///
    /// `cargo test` runs 1000 random inputs (`BOLERO_RANDOM_ITERATIONS` for
    /// more); `cargo bolero test sse::tests::tracker_matches_the_reference_grammar`
    /// runs it under libFuzzer or AFL where a nightly toolchain is available.
    #[test]
    fn tracker_matches_the_reference_grammar() {
        bolero::check!()
            .with_type::<(Vec<u8>, Vec<u8>)>()
            .for_each(|(raw, cuts)| {
                const ALPHABET: &[u8] = b"\r\n:\r\n da\xc3\xa9";
                let input: Vec<u8> = raw
                    .iter()
                    .map(|&b| match b {
                        0..200 => ALPHABET[usize::from(b) % ALPHABET.len()],
                        _ => b,
                    })
                    .collect();
                let reference = grammar::boundaries(&input);
                let mut tracker = Boundary::default();
                let mut start = 0;
                for (i, cut) in (0..).zip(cuts.iter().cycle()) {
                    if start == input.len() || i > input.len() {
                        break;
                    }
                    let end = (start + usize::from(cut % 16) + 1).min(input.len());
                    let expected = (start + 1..=end).rev().find(|&p| reference[p]);
                    let got = tracker.advance(&input[start..end]).map(|at| start + at);
                    assert_eq!(got, expected, "chunk {start}..{end} of {input:?}");
                    assert_eq!(tracker.is_boundary(), reference[end]);
                    assert_eq!(tracker.after_cr(), input[end - 1] == b'\r');
                    start = end;
                }
                if cuts.is_empty() && !input.is_empty() {
                    let expected = (1..=input.len()).rev().find(|&p| reference[p]);
                    assert_eq!(tracker.advance(&input), expected);
                }
            });
    }
}
