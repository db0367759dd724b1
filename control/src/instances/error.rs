//! Why an instance operation failed (the API gives each variant its code and status).

use super::spec::SpecError;
use crate::gpu::PlacementError;
use crate::store::StateError;

/// Why an instance operation failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("an instance named `{0}` already exists")]
    Exists(String),
    #[error("at most {0} instances may exist")]
    MaxReached(usize),
    #[error("no instance `{0}`")]
    NotFound(String),
    #[error("no template `{0}`")]
    TemplateNotFound(String),
    /// Another instance has the port.
    #[error("port {0} is used by another instance")]
    PortConflict(u16),
    /// Something else on the host has the port.
    #[error("port {0} is already in use on this host")]
    PortInUse(u16),
    #[error("no free port left in the range {lo}-{hi}")]
    NoFreePort { lo: u16, hi: u16 },
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("cannot open the log: {0}")]
    LogOpen(std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
}
