//! Drain priority: which streams hear of the drain first.

/// The order in which streams get their notice within the
/// [notice window](crate::Config::notice_window): lower priorities first,
/// the highest last. Without a window every stream is notified at once and the
/// priority only shows in the report.
///
/// A handler sets it as a response extension, or a middleware in front of the
/// layer (an auth layer that knows the user) as a request extension; the
/// response's wins. A stream with neither is [`Normal`](Self::Normal).
///
/// ```
/// use http::{Request, Response};
/// use tower_graceful_sse::DrainPriority;
///
/// // In a middleware, before the layer:
/// let mut req = Request::new(());
/// req.extensions_mut().insert(DrainPriority::High);
///
/// // Or in the handler, on its response:
/// let mut res = Response::new(());
/// res.extensions_mut().insert(DrainPriority::Low);
/// ```
///
/// The window is split into one band per priority, each as wide as its share
/// of the streams open when the drain starts: with every stream `Normal` the
/// band is the whole window. See [`Config::notice_window`](crate::Config::notice_window).
///
/// More levels may come: the enum is `#[non_exhaustive]`, and
/// [`ALL`](Self::ALL) is a slice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DrainPriority {
    /// Notified first: streams that lose least by moving early (dashboards,
    /// anonymous viewers).
    Low,
    /// The default.
    #[default]
    Normal,
    /// Notified last: streams that should keep their server longest (paying
    /// users, long jobs).
    High,
}

impl DrainPriority {
    /// Every level, lowest first.
    pub const ALL: &'static [Self] = &[Self::Low, Self::Normal, Self::High];

    /// The level's place in [`ALL`](Self::ALL).
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}
