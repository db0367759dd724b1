//! One request's life: the pingora phases ([`gateway`]) and the steps they delegate to, in the
//! order a request meets them.

pub mod gateway;
pub mod model_scan;
pub mod observe;
pub mod respond;
pub mod retry;
pub mod route;
pub mod upstream;
