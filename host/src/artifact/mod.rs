//! Plugin artifacts before they are compiled: reading the component's
//! structure without executing or compiling anything.

pub mod inspect;

pub use inspect::{ComponentSummary, Interface, inspect};
