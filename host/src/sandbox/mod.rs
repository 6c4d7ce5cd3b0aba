//! What keeps one plugin instance inside its limits: the store's state and
//! setup (fuel, deadline, memory, handles, the bytes a host call may hand
//! over), the resource limiter, and the classification of every failure
//! into a typed [`crate::CallFailure`].

pub(crate) mod classify;
pub(crate) mod limiter;
pub(crate) mod store;
