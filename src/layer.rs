//! The layer.

use crate::{DrainHandle, GracefulSse, shared::Shared};
use std::{fmt, sync::Arc};
use tower_layer::Layer;

/// Wraps services in [`GracefulSse`], counting their responses with one
/// [`DrainHandle`] and obeying its drain.
///
/// Cloning the layer is cheap and shares the handle's state: every service it
/// makes, on any router, is drained by the same [`DrainHandle::drain`].
///
/// See the [crate docs](crate) for the behaviour.
#[derive(Clone)]
pub struct GracefulSseLayer {
    shared: Arc<Shared>,
}

impl GracefulSseLayer {
    /// A layer tied to `handle`.
    pub fn new(handle: &DrainHandle) -> Self {
        Self {
            shared: handle.shared().clone(),
        }
    }
}

impl<S> Layer<S> for GracefulSseLayer {
    type Service = GracefulSse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GracefulSse::from_shared(inner, self.shared.clone())
    }
}

impl fmt::Debug for GracefulSseLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulSseLayer").finish_non_exhaustive()
    }
}
