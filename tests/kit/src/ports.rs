//! Free loopback ports for children that cannot bind port 0 themselves (the proxy's and the
//! control plane's listeners are given as addresses in their config files).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Mutex;

/// Ports already handed out by this process.
static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A free port on 127.0.0.1: bound, then released for a child to bind. The kernel may hand the
/// same port out again right away, so each port is given out at most once per process.
pub fn try_free_port() -> std::io::Result<u16> {
    try_free_port_on(&[IpAddr::V4(Ipv4Addr::LOCALHOST)])
}

/// A port free on every one of `ips` at once (e.g. the same discovery port on several
/// loopback "hosts" 127.0.0.2, 127.0.0.3, …: Linux routes all of 127/8 to `lo`), handed out
/// once per process like [`try_free_port`].
pub fn try_free_port_on(ips: &[IpAddr]) -> std::io::Result<u16> {
    let first = ips
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let probe = TcpListener::bind((first, 0))?;
        let port = probe.local_addr()?.port();
        let free_on_all = ips[1..]
            .iter()
            .all(|ip| TcpListener::bind((*ip, port)).is_ok());
        if free_on_all && !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no port free on all of {ips:?}"),
    ))
}

/// `<ip>:<a free port>`.
pub fn try_free_addr_on(ip: IpAddr) -> std::io::Result<SocketAddr> {
    Ok(SocketAddr::new(ip, try_free_port_on(&[ip])?))
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
        let hosts: Vec<IpAddr> = (2..=4).map(|i| IpAddr::from([127, 0, 0, i])).collect();
        let port = try_free_port_on(&hosts).unwrap();
        assert!(!ports.contains(&port));
        for ip in hosts {
            TcpListener::bind((ip, port)).expect("free on every host");
        }
    }
}
