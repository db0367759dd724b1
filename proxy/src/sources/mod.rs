//! Where routes come from: control planes over the discovery stream, or a static routes file.

pub mod discovery;
pub mod standalone;
