//! The response body wrapper: counts, splices the notice, ends on time.

use crate::{
    BoxError, DrainDeadline,
    shared::{Guard, Shared},
    sse::Boundary,
};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll, Waker},
};
use tokio::time::Sleep;

pin_project! {
    /// The response body of [`GracefulSse`](crate::GracefulSse): the inner
    /// body, counted until it ends or is dropped, with the shutdown frame
    /// spliced in at an event boundary when the drain starts.
    ///
    /// See the [crate docs](crate) for the behaviour.
    pub struct GracefulBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
            guard: Guard,
            // `Some` for a `text/event-stream` body that can take the notice.
            splice: Option<Splice>,
            // The waker in the body's slot among the handle's wakers, whose
            // key the guard holds (see `shared::wait_phase`).
            waker: Option<Waker>,
        },
        // A rejection's one chunk, then the end; or, with no chunk, a body
        // that has ended: the inner body and the guard are dropped the
        // moment it ends, and the count with them.
        Full { chunk: Option<Bytes> },
    }
}

/// Splicing state of one SSE body.
struct Splice {
    boundary: Boundary,
    progress: Progress,
    /// What the stream's next bytes must not carry, after the notice.
    skip: Skip,
}

/// What must go from the bytes that follow the notice, for a stream that
/// runs on after it.
#[derive(Clone, Copy)]
enum Skip {
    Nothing,
    /// The notice went in after a CR: an LF opening the next chunk ends that
    /// CR's line and must not be read as a blank line after the notice.
    Lf,
    /// The notice went in before the stream's first byte: a byte order mark
    /// leading it would now stand inside the stream, where a client reads it
    /// as part of a field's name (and drops the line). Holds how many of its
    /// bytes have gone already (a chunk may end inside it).
    Bom(u8),
}

/// The UTF-8 byte order mark.
const BOM: &[u8] = "\u{feff}".as_bytes();

/// How far one stream's notice has got.
#[derive(Default)]
enum Progress {
    /// The stream has not seen the drain yet.
    #[default]
    Before,
    /// Its moment in the notice window is ahead: it streams on untouched,
    /// and the timer wakes it then.
    Waiting(Pin<Box<Sleep>>),
    /// Due: the notice goes in at the next event boundary, with the part of
    /// a chunk cut there (sent after it).
    Due(Rest),
    /// Sent; the part of the chunk cut for it goes next.
    Sent(Rest),
}

/// The part of a chunk after the boundary where the notice goes. Boxed: it
/// exists only during the drain, and inline it would make every stream's
/// body bigger.
type Rest = Option<Box<Bytes>>;

impl<B> Kind<B> {
    const ENDED: Self = Kind::Full { chunk: None };
}

/// What a poll of the body gives.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// The response is over, with `last`: the inner body and the guard go now,
/// and the count with them.
#[inline]
fn ended<B>(mut kind: Pin<&mut Kind<B>>, last: Option<Result<Frame<Bytes>, B::Error>>) -> Polled
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let last = last.map(|r| r.map_err(Into::into));
    kind.set(Kind::ENDED);
    Poll::Ready(last)
}

impl<B> GracefulBody<B> {
    pub(crate) fn new(body: B, guard: Guard, sse: bool) -> Self {
        Self {
            kind: Kind::Inner {
                body,
                guard,
                splice: sse.then(Splice::new),
                waker: None,
            },
        }
    }

    pub(crate) fn full(chunk: Bytes) -> Self {
        Self {
            kind: Kind::Full { chunk: Some(chunk) },
        }
    }
}

impl<B> Body for GracefulBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    // The path before the drain, inlined where the server polls the body:
    // one phase load, the inner poll, then the boundary's quick check or the
    // waker's comparison. The rest (the drain, the end of a rejection) is out
    // of line in `poll_draining`, so that this path keeps a short prologue:
    // a live stream's poll between events, which goes pending, measured
    // 3.5 ns a frame above the bare body's against 4.8 with everything in
    // one inlined loop (`benches/body.rs`, the medians of 5 paired runs).
    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut kind = self.project().kind;
        if let KindProj::Inner {
            body,
            guard,
            splice,
            waker,
        } = kind.as_mut().project()
        {
            let phase = guard.shared().phase();
            if !Shared::is_draining(phase) {
                match body.poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Some(splice) = splice.as_mut() else {
                            return Poll::Ready(Some(Ok(frame)));
                        };
                        // The phase seen above, not a second load: a drain
                        // that starts now sees this frame out untouched, its
                        // boundary tracked, and splices at the next poll.
                        return Poll::Ready(Some(Ok(match frame.into_data() {
                            Ok(data) => {
                                splice.boundary.advance(&data);
                                Frame::data(data)
                            }
                            Err(frame) => frame,
                        })));
                    }
                    Poll::Ready(end) => return ended(kind, end),
                    Poll::Pending => {
                        // Sleep until the inner body or the drain has news;
                        // news of the drain goes on below.
                        if guard.wait(waker, cx, phase).is_pending() {
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
        poll_draining(kind, cx)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { chunk } => chunk.is_none(),
            Kind::Inner { body, splice, .. } => {
                splice.as_ref().is_none_or(|s| !s.has_rest()) && body.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { chunk } => {
                SizeHint::with_exact(chunk.as_ref().map_or(0, |c| c.len() as u64))
            }
            // The notice adds bytes and may cut the stream short.
            Kind::Inner {
                splice: Some(_), ..
            } => SizeHint::default(),
            Kind::Inner { body, .. } => body.size_hint(),
        }
    }
}

/// [`GracefulBody::poll_frame`] once the drain has started (or when a wait
/// before it saw it start), and for a rejection or a body that has ended:
/// the notice, the cut, the end. Out of line, so that the path before the
/// drain stays small.
#[inline(never)]
fn poll_draining<B>(mut kind: Pin<&mut Kind<B>>, cx: &mut Context<'_>) -> Polled
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    loop {
        let (mut body, guard, splice, waker) = match kind.as_mut().project() {
            KindProj::Inner {
                body,
                guard,
                splice,
                waker,
            } => (body, guard, splice, waker),
            KindProj::Full { chunk } => {
                return Poll::Ready(chunk.take().map(Frame::data).map(Ok));
            }
        };
        let phase = guard.shared().phase();
        if Shared::is_draining(phase) {
            let notice = splice.as_mut().and_then(|s| {
                s.schedule(guard, phase, cx);
                s.notice(guard)
            });
            if let Some(frame) = notice {
                if guard.shared().config.end_after_notice || Shared::is_forced(phase) {
                    kind.set(Kind::ENDED);
                }
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            if Shared::is_forced(phase) {
                // An event stream ends cleanly: its client drops an
                // unfinished event and reconnects. Anything else was cut
                // short and must not look complete.
                let clean = splice.is_some() || body.is_end_stream();
                kind.set(Kind::ENDED);
                return Poll::Ready((!clean).then(|| Err(DrainDeadline::boxed())));
            }
            if let Some(s) = splice.as_mut() {
                if let Some(rest) = s.take_rest().and_then(|rest| s.pass(*rest)) {
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            }
        }
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Some(splice) = splice.as_mut() else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                // Take the frame out to cut it at a boundary if the notice
                // is due.
                match frame.into_data() {
                    Ok(data) => match splice.pass(data) {
                        Some(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        None => continue,
                    },
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                }
            }
            Poll::Ready(end) => return ended(kind, end),
            Poll::Pending => {
                // Sleep until the inner body or the drain has news.
                if guard.wait(waker, cx, phase).is_pending() {
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Splice {
    fn new() -> Self {
        Self {
            boundary: Boundary::FRESH,
            progress: Progress::Before,
            skip: Skip::Nothing,
        }
    }

    /// Moves the notice on while draining: draws the stream's moment in the
    /// notice window when it first sees the drain, and makes the notice due
    /// once that moment has come (the timer is polled, so it wakes this
    /// task) or the grace period has run out.
    ///
    /// Out of line, as is [`notice`](Self::notice): they run only while
    /// draining, and inlined they would make the hot path's code bigger.
    #[inline(never)]
    fn schedule(&mut self, guard: &Guard, phase: u64, cx: &mut Context<'_>) {
        if let Progress::Before = self.progress {
            self.progress = match guard.shared().notice_due(guard.priority()) {
                Some(at) => Progress::Waiting(Box::pin(tokio::time::sleep_until(at))),
                None => Progress::Due(None),
            };
        }
        if let Progress::Waiting(sleep) = &mut self.progress {
            if Shared::is_forced(phase) || sleep.as_mut().poll(cx).is_ready() {
                self.progress = Progress::Due(None);
            }
        }
    }

    fn is_due(&self) -> bool {
        matches!(self.progress, Progress::Due(_))
    }

    fn has_rest(&self) -> bool {
        matches!(
            self.progress,
            Progress::Due(Some(_)) | Progress::Sent(Some(_))
        )
    }

    fn take_rest(&mut self) -> Rest {
        match &mut self.progress {
            Progress::Due(rest) | Progress::Sent(rest) => rest.take(),
            _ => None,
        }
    }

    /// The shutdown frame, if it is due here: due, not yet sent, and the
    /// stream stands at an event boundary.
    #[inline(never)]
    fn notice(&mut self, guard: &Guard) -> Option<Bytes> {
        if !self.is_due() || !self.boundary.is_boundary() {
            return None;
        }
        self.progress = Progress::Sent(self.take_rest());
        self.skip = if self.boundary.after_cr() {
            Skip::Lf
        } else if self.boundary.is_fresh() {
            Skip::Bom(0)
        } else {
            Skip::Nothing
        };
        self.boundary = Boundary::default();
        Some(guard.shared().notice(guard.priority()))
    }

    /// `data` without the rest of a byte order mark, of which `gone` bytes
    /// went from earlier chunks; if it turns out not to be one, those bytes
    /// go back in front.
    #[cold]
    fn skip_bom(&mut self, gone: usize, data: Bytes) -> Bytes {
        let rest = &BOM[gone..];
        let n = rest.len().min(data.len());
        if data[..n] != rest[..n] {
            return if gone == 0 {
                data
            } else {
                [&BOM[..gone], &data[..]].concat().into()
            };
        }
        if n < rest.len() {
            // The chunk ends inside the mark: the rest of it comes next.
            self.skip = Skip::Bom((gone + n) as u8);
        }
        data.slice(n..)
    }

    /// Tracks a data chunk of a draining body and returns what to send now.
    ///
    /// While a notice is due, a chunk that holds a boundary is cut there: the
    /// head goes now, the notice next, the tail after it (or never, if the
    /// stream ends after the notice). `None` means nothing is left to send.
    fn pass(&mut self, mut data: Bytes) -> Option<Bytes> {
        match std::mem::replace(&mut self.skip, Skip::Nothing) {
            Skip::Nothing => {}
            Skip::Lf => {
                if data.first() == Some(&b'\n') {
                    data = data.slice(1..);
                }
            }
            Skip::Bom(gone) => data = self.skip_bom(gone.into(), data),
        }
        if data.is_empty() {
            return None;
        }
        let before = self.boundary;
        match self.boundary.advance(&data) {
            Some(at) if self.is_due() && at < data.len() => {
                self.boundary = before;
                self.boundary.advance(&data[..at]);
                self.progress = Progress::Due(Some(Box::new(data.split_off(at))));
                Some(data)
            }
            _ => Some(data),
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for GracefulBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { body, splice, .. } => f
                .debug_struct("GracefulBody")
                .field("inner", body)
                .field("sse", &splice.is_some())
                .field(
                    "notified",
                    &splice
                        .as_ref()
                        .is_some_and(|s| matches!(s.progress, Progress::Sent(_))),
                )
                .finish(),
            Kind::Full { chunk: None } => f
                .debug_struct("GracefulBody")
                .field("ended", &true)
                .finish(),
            Kind::Full { chunk } => f
                .debug_struct("GracefulBody")
                .field("chunk", chunk)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open stream holds one: axum boxes it, so its size is heap per
    /// stream. The notice's progress (with its timer) and the cut chunk's
    /// rest, both used only during the drain, must not make it grow.
    #[test]
    fn body_stays_small() {
        assert!(size_of::<Splice>() <= 24, "{}", size_of::<Splice>());
        // axum's body (a box of a `dyn Body`) inside: 72 bytes, which the
        // allocator serves from its 80-byte class.
        type Boxed = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
        assert!(
            size_of::<GracefulBody<Boxed>>() <= 72,
            "{}",
            size_of::<GracefulBody<Boxed>>()
        );
    }
}
