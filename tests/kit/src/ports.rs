//! Free loopback ports for children that cannot bind port 0 themselves (the proxy's and the
//! control plane's listeners are given as addresses in their config files).

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// A free port on 127.0.0.1: bound, then released for a child to bind. The kernel may hand the
/// same port out again right away, so each port is given out at most once per process.
pub fn try_free_port() -> std::io::Result<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// [`try_free_port`]; panics if no port can be bound.
pub fn free_port() -> u16 {
    try_free_port().expect("bind 127.0.0.1:0")
}

/// `127.0.0.1:<a free port>`.
pub fn try_free_addr() -> std::io::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], try_free_port()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_not_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        let addr = try_free_addr().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
    }
}
