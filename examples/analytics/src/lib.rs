//! What the analytics example serves, apart from how it serves it: the report
//! (a pure function of its parameters, computed one event at a time) and the
//! realtime figures, and the live feed (the shared log of hits and its
//! subscriptions). A library so that the tests check the server's events
//! against the same functions.

pub mod live;
pub mod realtime;
pub mod report;
