//! A connection that the drain's deadline closes.

use crate::{
    DrainDeadline, DrainHandle,
    shared::{Shared, Waiter},
};
use pin_project_lite::pin_project;
use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project! {
    /// A connection's IO (a `TcpStream`, a TLS stream, ...) that fails at the
    /// drain's [deadline](crate::Drain::deadline), whether or not its client
    /// reads.
    ///
    /// A client that stops reading (a phone in a tunnel, a frozen background
    /// tab) fills the socket buffers: the server then never polls the
    /// response body again, so ending the body does not end the connection,
    /// and a graceful shutdown waits on it until the process is killed. At
    /// the deadline every read, write, flush and shutdown of a `GracefulIo`
    /// fails with [`io::ErrorKind::TimedOut`] (its source is
    /// [`DrainDeadline`]), and the one pending is woken: the server drops the
    /// connection and the socket is closed.
    ///
    /// Before the deadline it passes every call through, with one atomic load
    /// more. A connection wrapped after the deadline fails at its first call. With axum, [`DrainHandle::listener`] wraps every accepted
    /// connection in it; with hyper, wrap the IO before `serve_connection`.
    ///
    /// ```
    /// use tower_graceful_sse::{Config, DrainHandle, GracefulIo};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let handle = DrainHandle::new(Config::default());
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let addr = listener.local_addr()?;
    /// # tokio::spawn(tokio::net::TcpStream::connect(addr));
    /// let (stream, _) = listener.accept().await?;
    /// let io = GracefulIo::new(stream, &handle);
    /// // hyper_util::server::conn::auto::Builder::new(..).serve_connection(TokioIo::new(io), ..)
    /// # let _ = io;
    /// # Ok(())
    /// # }
    /// ```
    pub struct GracefulIo<I> {
        #[pin]
        io: I,
        // Places among the wakers for the deadline, one per direction: reads
        // and writes may be polled by different tasks.
        read: Waiter,
        write: Waiter,
    }
}

impl<I> GracefulIo<I> {
    /// Wraps `io`, to be closed at the deadline of `handle`'s drain.
    pub fn new(io: I, handle: &DrainHandle) -> Self {
        let shared = handle.shared();
        Self {
            io,
            read: Waiter::new(shared.clone()),
            write: Waiter::new(shared.clone()),
        }
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The wrapped IO, mutably.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.io
    }

    /// Unwraps the IO.
    pub fn into_inner(self) -> I {
        self.io
    }
}

/// The error every call returns once the deadline has passed.
fn cut() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, DrainDeadline)
}

/// Runs one IO call unless the deadline has passed; if it is pending, makes
/// sure the deadline wakes the task.
fn guarded<T>(
    wait: &mut Waiter,
    cx: &mut Context<'_>,
    mut call: impl FnMut(&mut Context<'_>) -> Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    loop {
        let phase = wait.shared().phase();
        if Shared::is_cut(phase) {
            return Poll::Ready(Err(cut()));
        }
        let polled = call(cx);
        if polled.is_ready() || wait.wait(cx, phase).is_pending() {
            return polled;
        }
        // A phase change: look again.
    }
}

impl<I: AsyncRead> AsyncRead for GracefulIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        guarded(this.read, cx, |cx| this.io.as_mut().poll_read(cx, buf))
    }
}

impl<I: AsyncWrite> AsyncWrite for GracefulIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        guarded(this.write, cx, |cx| this.io.as_mut().poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        guarded(this.write, cx, |cx| {
            this.io.as_mut().poll_write_vectored(cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        guarded(this.write, cx, |cx| this.io.as_mut().poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        guarded(this.write, cx, |cx| this.io.as_mut().poll_shutdown(cx))
    }
}

impl<I: fmt::Debug> fmt::Debug for GracefulIo<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulIo")
            .field("io", &self.io)
            .field("cut", &Shared::is_cut(self.read.shared().phase()))
            .finish()
    }
}
