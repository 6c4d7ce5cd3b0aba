//! What keeps one plugin instance inside its limits: the store's state and
//! setup (fuel, deadline, memory, handles, the bytes a host call may hand
//! over), the resource limiter, the classification of every failure into a
//! typed [`crate::CallFailure`], and the count and time of its host calls.

pub(crate) mod classify;
pub(crate) mod deadline;
pub(crate) mod host_calls;
pub(crate) mod limiter;
pub(crate) mod store;
