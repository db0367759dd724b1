//! Where requests can go: the immutable routing table, the one conversion from pushed routes to
//! it, endpoint choice, per-endpoint state (load and outlier ejection), and the `ArcSwap` that
//! holds the current table.

pub mod outlier;
pub mod pick;
pub mod state;
pub mod table;

pub use state::TableState;
