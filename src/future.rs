//! The response future.

use crate::{DrainPriority, GracefulBody, shared::Guard, sse::is_spliceable};
use bytes::Bytes;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

pin_project! {
    /// Response future of [`GracefulSse`](crate::GracefulSse): the inner
    /// future, or a ready rejection while draining.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Admitted {
            #[pin]
            future: F,
            guard: Option<Guard>,
        },
        Rejected {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn admitted(future: F, guard: Guard) -> Self {
        Self {
            kind: Kind::Admitted {
                future,
                guard: Some(guard),
            },
        }
    }

    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<GracefulBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admitted { future, guard } => {
                let res = ready!(future.poll(cx));
                let mut guard = guard.take().expect("polled after completion");
                Poll::Ready(res.map(|res| {
                    let sse = is_spliceable(&res);
                    if sse {
                        guard.mark_sse(res.extensions().get::<DrainPriority>().copied());
                    }
                    res.map(|body| GracefulBody::new(body, guard, sse))
                }))
            }
            KindProj::Rejected { response } => {
                let res = response.take().expect("polled after completion");
                Poll::Ready(Ok(res.map(GracefulBody::full)))
            }
        }
    }
}
