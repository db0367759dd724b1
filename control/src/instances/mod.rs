//! TEI instances on this host's GPUs: the set of them ([`manager`]), what each is ([`spec`]),
//! its process ([`process`]), health probe ([`probe`]), supervisor ([`supervisor`]), log
//! ([`logs`]), its own traffic figures ([`traffic`]) and its resource limits ([`limits`], and
//! per-instance cgroups where cgroup v2 is writable: [`cgroup`]).
//!
//! The manager validates a spec before anything is spawned (name, port range, port used by
//! another instance, port free on the system — checked outside any lock —, GPU id, free VRAM,
//! instance count), keeps the desired state durable, and turns ready instances into endpoints.

pub mod cgroup;
mod error;
pub mod limits;
pub mod logs;
pub mod manager;
mod ports;
pub mod probe;
pub mod process;
pub mod query;
pub mod spec;
pub mod supervisor;
pub mod traffic;

pub use crate::store::{Desired, InstanceRecord};
pub use error::InstanceError;
pub use manager::{Deps, GpuStats, InstanceGpu, InstanceView, Manager, ManagerSettings};
