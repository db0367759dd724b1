//! Where requests can go: the immutable routing table, the one conversion from pushed routes to
//! it, endpoint choice (prefix affinity in `affinity`), per-endpoint state (load, engine-reported
//! load in `load`, and outlier ejection, on an injectable clock),
//! inference API keys and their limits' state, and the `ArcSwap` that holds the current table.

pub mod affinity;
pub mod endpoint;
pub mod keys;
pub mod limits;
pub mod load;
pub mod outlier;
pub mod pick;
pub mod queue;
pub mod snapshot;
pub mod state;
pub mod table;

#[cfg(test)]
pub(crate) mod fixtures;

pub use state::TableState;
