//! Property test of the splice: arbitrary event streams, cut into arbitrary
//! chunks, drained at an arbitrary point, run through the real `GracefulBody`
//! and read back by an independent parser (eventsource-stream). Three
//! settings: every notice at once with one frame, with per-stream jitter, and
//! with a notice window whose moment comes at another arbitrary point.
//!
//! `PROPTEST_CASES` sets the number of cases (256 by default, a few seconds).

mod common;

use bytes::Bytes;
use common::grammar::boundaries;
use eventsource_stream::{Event, Eventsource};
use futures_util::{FutureExt, StreamExt, stream};
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use proptest::{prelude::*, sample::Index};
use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_graceful_sse::{Config, DrainHandle};

/// The notice's message: found nowhere in a generated stream.
const MARKER: &str = "NOTICE-\u{2691}";

/// Text of a field value or comment: ASCII, colons, multi-byte UTF-8, BOMs.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9 :\u{e9}\u{20ac}\u{1f600}\u{feff}]{0,12}",
        1 => (100..3000usize).prop_map(|n| "\u{e9}x".repeat(n / 3)),
    ]
}

/// One line without its end: fields of every kind, comments, blank lines.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(String::new()),
        6 => text().prop_map(|v| format!("data: {v}")),
        2 => text().prop_map(|v| format!("data:{v}")),
        1 => Just("data".to_owned()),
        1 => Just("data:".to_owned()),
        2 => text().prop_map(|v| format!("id: {v}")),
        1 => "[0-9]{1,5}".prop_map(|v| format!("retry: {v}")),
        2 => text().prop_map(|v| format!("event: {v}")),
        2 => text().prop_map(|v| format!(":{v}")),
        1 => text().prop_map(|v| format!("x-unknown: {v}")),
    ]
}

fn line_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
}

/// A stream: lines with arbitrary ends, and sometimes an unfinished last line.
fn input() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((line(), line_end()), 0..40),
        prop_oneof![3 => Just(String::new()), 1 => line()],
    )
        .prop_map(|(lines, tail)| {
            let mut out: Vec<u8> = lines
                .into_iter()
                .flat_map(|(l, end)| [l, end.to_owned()])
                .collect::<String>()
                .into_bytes();
            out.extend_from_slice(tail.as_bytes());
            out
        })
}

/// Chunk sizes, used in a cycle: one byte each, small or large.
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![1]),
        prop::collection::vec(1..8usize, 1..16),
        prop::collection::vec(1..600usize, 1..8),
    ]
}

/// How the notice is scheduled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// No jitter, no window: one frame, `retry: 30000`, at once.
    Instant,
    /// 10 s of jitter: the stream's own delay.
    Jitter,
    /// A window (and the default jitter): the notice is due only once the
    /// stream's moment has come, when `due_at` chunks have been fed.
    Window { due_at: usize },
}

/// The window of `Mode::Window`, under paused time.
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Case {
    mode: Mode,
    input: Vec<u8>,
    chunks: Vec<Bytes>,
    /// Chunks the body has read when the drain starts.
    drain_at: usize,
    /// The next chunk is already waiting in the inner body at the drain.
    preload: bool,
    end_after_notice: bool,
}

fn case(mode: Mode) -> impl Strategy<Value = Case> {
    (
        input(),
        chunking(),
        any::<Index>(),
        any::<bool>(),
        any::<bool>(),
        any::<Index>(),
    )
        .prop_map(move |(input, sizes, at, preload, end_after_notice, due)| {
            let mut chunks = Vec::new();
            let mut start = 0;
            for size in sizes.iter().cycle() {
                if start == input.len() {
                    break;
                }
                let end = (start + size).min(input.len());
                chunks.push(Bytes::copy_from_slice(&input[start..end]));
                start = end;
            }
            let drain_at = at.index(chunks.len() + 1);
            let mode = match mode {
                Mode::Window { .. } => Mode::Window {
                    due_at: drain_at + due.index(chunks.len() + 1 - drain_at),
                },
                other => other,
            };
            Case {
                mode,
                input,
                chunks,
                drain_at,
                preload,
                end_after_notice,
            }
        })
}

/// Reads every frame the body has ready now; true once it has ended.
async fn pump<B>(body: &mut B, out: &mut Vec<u8>) -> bool
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    // Outside Tokio's budget, so that a channel never pends for fairness.
    tokio::task::unconstrained(async {
        loop {
            match body.frame().now_or_never() {
                None => return false,
                Some(None) => return true,
                Some(Some(frame)) => out.extend_from_slice(&frame.unwrap().into_data().unwrap()),
            }
        }
    })
    .await
}

/// Asserts two byte strings are equal, showing where they differ.
fn same(got: &[u8], expected: &[u8], what: &str) {
    if got != expected {
        let at = got.iter().zip(expected).take_while(|(a, b)| a == b).count();
        let show = |b: &[u8]| {
            b[at.saturating_sub(40)..b.len().min(at + 80)]
                .escape_ascii()
                .to_string()
        };
        panic!(
            "{what}: differ at byte {at} of {} / {}\n got: {}\n exp: {}",
            got.len(),
            expected.len(),
            show(got),
            show(expected)
        );
    }
}

/// The events of a whole stream, as eventsource-stream reads them.
///
/// A CR at the very end ends its line (the grammar's `end-of-line` is CRLF, CR
/// or LF), but a streaming parser cannot know that no LF follows: it is given
/// its LF, which changes nothing else.
fn parse(bytes: &[u8]) -> Vec<Event> {
    let mut bytes = bytes.to_vec();
    if bytes.last() == Some(&b'\r') {
        bytes.push(b'\n');
    }
    stream::iter([Ok::<_, Infallible>(Bytes::from(bytes))])
        .eventsource()
        .map(|e| e.expect("the parser accepts the stream"))
        .collect()
        .now_or_never()
        .expect("an in-memory stream is parsed at once")
}

/// Runs one case through the layer and returns what the client received.
async fn run(case: &Case) -> (Vec<u8>, tower_graceful_sse::DrainReport) {
    let config = Config::default()
        .message(MARKER)
        .grace_period(Duration::from_secs(3600))
        .end_after_notice(case.end_after_notice);
    let handle = DrainHandle::new(match case.mode {
        Mode::Instant => config.reconnect_jitter(Duration::ZERO),
        Mode::Jitter => config.reconnect_jitter(Duration::from_secs(10)),
        // With this seed the stream's moment is well inside the window.
        Mode::Window { .. } => config.notice_window(WINDOW).seed(1),
    });
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let service = ServiceBuilder::new()
        .layer(handle.layer())
        .service(service_fn(move |_: Request<()>| {
            let rx = rx.lock().unwrap().take().unwrap();
            let body = StreamBody::new(
                UnboundedReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))),
            );
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/event-stream")
                        .body(body)
                        .unwrap(),
                )
            }
        }));
    let mut body = service.oneshot(Request::new(())).await.unwrap().into_body();
    let mut out = Vec::new();

    let mut chunks = case.chunks.iter();
    for chunk in chunks.by_ref().take(case.drain_at) {
        tx.send(chunk.clone()).unwrap();
    }
    assert!(!pump(&mut body, &mut out).await, "ended before the drain");
    let fed: usize = case.chunks[..case.drain_at].iter().map(Bytes::len).sum();
    same(&out, &case.input[..fed], "passed through unchanged");
    if case.preload {
        if let Some(chunk) = chunks.next() {
            tx.send(chunk.clone()).unwrap();
        }
    }
    let drain = handle.drain();
    if let Mode::Window { due_at } = case.mode {
        // Before its moment the stream passes everything untouched, even
        // where it stands at a boundary. Time stands still meanwhile.
        let mut sent = case.drain_at + usize::from(case.preload);
        while sent < due_at {
            tx.send(chunks.next().unwrap().clone()).unwrap();
            sent += 1;
        }
        if due_at > case.drain_at {
            assert!(!pump(&mut body, &mut out).await, "ended before its moment");
            let fed: usize = case.chunks[..due_at].iter().map(Bytes::len).sum();
            same(&out, &case.input[..fed], "untouched before its moment");
        }
        tokio::time::advance(WINDOW).await;
    }
    for chunk in chunks {
        tx.send(chunk.clone()).unwrap();
    }
    drop(tx);
    assert!(
        pump(&mut body, &mut out).await,
        "the body ends with its input"
    );
    drop(body);
    let report = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("the drain ends once the body is gone");
    (out, report)
}

/// Where the notice must go: the drain point if the stream stands at a
/// boundary there, else the last boundary of the first chunk that holds one.
///
/// With a window, "the drain point" is where the stream's moment came.
fn expected_notice_at(case: &Case) -> Option<usize> {
    let boundary = boundaries(&case.input);
    let due_at = match case.mode {
        Mode::Window { due_at } => due_at,
        _ => case.drain_at,
    };
    let mut start: usize = case.chunks[..due_at].iter().map(Bytes::len).sum();
    if boundary[start] {
        return Some(start);
    }
    for chunk in &case.chunks[due_at..] {
        let end = start + chunk.len();
        if let Some(p) = (start + 1..=end).rev().find(|&p| boundary[p]) {
            return Some(p);
        }
        start = end;
    }
    None
}

fn check(case: &Case, out: &[u8], report: tower_graceful_sse::DrainReport) {
    let input = &case.input[..];
    let frame_start = notice_start(out);
    let Some(at) = expected_notice_at(case) else {
        // The stream never stood at a boundary after the drain.
        assert_eq!(frame_start, None, "a notice without a boundary");
        same(out, input, "no notice, nothing changed");
        assert_eq!(report.notified, 0);
        assert_eq!(parse(out), parse(input));
        return;
    };
    assert_eq!(frame_start, Some(at), "the notice is at the wrong place");
    same(&out[..at], &input[..at], "before the notice");
    let frame_len = out[at..]
        .windows(3)
        .position(|w| w == b"}\n\n")
        .expect("the notice is whole")
        + 3;
    let after = &out[at + frame_len..];
    if case.end_after_notice {
        assert!(after.is_empty(), "bytes after the notice");
    } else {
        // The LF of a CRLF whose CR came before the notice is not repeated.
        let skip = usize::from(at > 0 && input[at - 1] == b'\r' && input.get(at) == Some(&b'\n'));
        same(after, &input[at + skip..], "the rest after the notice");
    }
    assert_eq!(report.notified, 1);
    if case.mode == Mode::Instant {
        assert!(out[at..].starts_with(b"retry: 30000\nevent: shutdown\n"));
    }
    if let Mode::Window { .. } = case.mode {
        assert_eq!(report.first_notice, Some(WINDOW), "sent before its moment");
    }

    // What an EventSource sees: the input's events up to the boundary, one
    // shutdown event, then the rest or the end.
    let expected = parse(input);
    let got = parse(out);
    let notices: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].data.contains(MARKER))
        .collect();
    assert_eq!(notices.len(), 1, "{got:?}");
    let j = notices[0];
    assert_eq!(got[j].event, "shutdown");
    let retry = got[j].retry.unwrap();
    let data: serde_json::Value = serde_json::from_str(&got[j].data).unwrap();
    assert_eq!(
        (data["reconnect_delay"].as_f64().unwrap() * 1000.0).round() as u128,
        retry.as_millis(),
        "retry: and reconnect_delay agree"
    );
    let most = match case.mode {
        Mode::Instant => 30,
        Mode::Jitter => 40,
        Mode::Window { .. } => 45,
    };
    assert!(
        (Duration::from_secs(30)..=Duration::from_secs(most)).contains(&retry),
        "{retry:?}"
    );
    assert_eq!(got[..j], expected[..j], "events before the notice");
    if case.end_after_notice {
        assert_eq!(got.len(), j + 1);
    } else {
        assert_eq!(got[j + 1..], expected[j..], "events after the notice");
    }
}

/// Where the notice's `retry:` line starts: the notice is the only event
/// whose message is `MARKER`.
fn notice_start(out: &[u8]) -> Option<usize> {
    let tail = format!("\nevent: shutdown\ndata: {{\"type\":\"shutdown\",\"message\":\"{MARKER}\"");
    let end = out.windows(tail.len()).position(|w| w == tail.as_bytes())?;
    let start = out[..end].windows(7).rposition(|w| w == b"retry: ")?;
    assert!(out[start + 7..end].iter().all(u8::is_ascii_digit));
    Some(start)
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    // Paused, so that a window's moment comes only when the test says.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (out, report) = rt.block_on(run(case));
    check(case, &out, report);
    prop_assert_eq!(
        (report.in_flight, report.closed, report.force_closed),
        (1, 1, 0)
    );
    Ok(())
}

proptest! {
    #[test]
    fn drained_stream_is_its_events_then_one_notice_then_the_rest_or_the_end(
        case in case(Mode::Instant)
    ) {
        run_case(&case)?;
    }

    #[test]
    fn with_jitter_the_notice_carries_its_own_delay_and_the_splice_holds(
        case in case(Mode::Jitter)
    ) {
        run_case(&case)?;
    }

    #[test]
    fn with_a_window_the_stream_is_untouched_until_its_moment_then_spliced_alike(
        case in case(Mode::Window { due_at: 0 })
    ) {
        run_case(&case)?;
    }
}
