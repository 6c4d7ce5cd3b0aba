//! Levelled logging into the host's log, tagged there with the plugin's name.
//!
//! ```no_run
//! capsule_guest::log::info!("handled {} items", 3);
//! capsule_guest::log::warn!("slow path");
//! ```
//!
//! The macros never fail: a line the host refuses (over the per-call log
//! budget, or logging not granted) is dropped. Call [`write()`] to see why.

use crate::ServiceError;
pub use crate::bindings::capsule::plugin::log::Level;

/// Writes one line at `level`; returns the host's refusal, if any:
/// [`ServiceError::QuotaExceeded`] past the per-call log budget,
/// [`ServiceError::Denied`] when the operator turned logging off.
///
/// ```no_run
/// use capsule_guest::log::{self, Level};
///
/// if let Err(refused) = log::write(Level::Warn, "cache miss") {
///     // Nothing more will be logged in this call.
///     let _ = refused;
/// }
/// ```
pub fn write(level: Level, message: &str) -> Result<(), ServiceError> {
    crate::host::log(level, message)
}

#[doc(hidden)]
pub fn __write_ignoring_refusal(level: Level, args: std::fmt::Arguments<'_>) {
    let message = match args.as_str() {
        Some(text) => std::borrow::Cow::Borrowed(text),
        None => std::borrow::Cow::Owned(args.to_string()),
    };
    let _ = write(level, &message);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __capsule_log {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::__write_ignoring_refusal($crate::log::Level::$level, ::core::format_args!($($arg)+))
    };
}

/// Logs at `trace` level, with `format!` syntax; never fails (see [`write()`](crate::log::write)).
///
/// ```no_run
/// capsule_guest::log::trace!("entering {}", "parse");
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __capsule_log_trace { ($($arg:tt)+) => { $crate::__capsule_log!(Trace, $($arg)+) }; }
/// Logs at `debug` level, with `format!` syntax; never fails (see [`write()`](crate::log::write)).
///
/// ```no_run
/// capsule_guest::log::debug!("payload is {} bytes", 42);
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __capsule_log_debug { ($($arg:tt)+) => { $crate::__capsule_log!(Debug, $($arg)+) }; }
/// Logs at `info` level, with `format!` syntax; never fails (see [`write()`](crate::log::write)).
///
/// ```no_run
/// capsule_guest::log::info!("greeting {}", "Ada");
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __capsule_log_info { ($($arg:tt)+) => { $crate::__capsule_log!(Info, $($arg)+) }; }
/// Logs at `warn` level, with `format!` syntax; never fails (see [`write()`](crate::log::write)).
///
/// ```no_run
/// capsule_guest::log::warn!("slow response: {} ms", 900);
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __capsule_log_warn { ($($arg:tt)+) => { $crate::__capsule_log!(Warn, $($arg)+) }; }
/// Logs at `error` level, with `format!` syntax; never fails (see [`write()`](crate::log::write)).
///
/// ```no_run
/// capsule_guest::log::error!("giving up after {} tries", 3);
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __capsule_log_error { ($($arg:tt)+) => { $crate::__capsule_log!(Error, $($arg)+) }; }

#[doc(inline)]
pub use crate::__capsule_log_debug as debug;
#[doc(inline)]
pub use crate::__capsule_log_error as error;
#[doc(inline)]
pub use crate::__capsule_log_info as info;
#[doc(inline)]
pub use crate::__capsule_log_trace as trace;
#[doc(inline)]
pub use crate::__capsule_log_warn as warn;
