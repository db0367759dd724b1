//! Which addresses a registered backend may point at.
//!
//! Registration is an operator action, but a URL can still aim the proxies at the host itself,
//! its private network or a cloud metadata service. Unless private backends are allowed, the
//! host is resolved once and every address it resolves to must be public; the first one is then
//! pinned as the endpoint's address, so a later DNS answer cannot move it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::resolve::Resolve;

/// Why an address is refused, or `None` when it is public.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.0.0/16, which includes the 169.254.169.254 metadata service.
        Some("link-local (cloud metadata)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        // 100.64.0.0/10; 100.100.100.200 is a metadata service in this range.
        Some("shared address space")
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        // fc00::/7, which includes AWS's fd00:ec2::254 metadata service.
        Some("unique local (private)")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

/// Resolves `host` once and checks every address; returns the address to pin (`host:port`).
pub async fn check_public(
    host: &str,
    port: u16,
    resolver: &dyn Resolve,
) -> Result<SocketAddr, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => resolver
            .lookup(host)
            .await
            .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("`{host}` resolves to no address"));
    }
    for a in &addrs {
        if let Some(why) = forbidden(a.ip()) {
            return Err(format!(
                "`{host}` resolves to {} ({why}); private backends are not allowed \
                 (set [admin] allow_private_backends = true for single-host setups)",
                a.ip()
            ));
        }
    }
    Ok(addrs[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::resolve::StaticResolver;

    #[test]
    fn classifies_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.100.100.200",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(forbidden(bad.parse().expect("ip")).is_some(), "{bad}");
        }
        for good in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "172.32.0.1"] {
            assert_eq!(forbidden(good.parse().expect("ip")), None, "{good}");
        }
    }

    #[tokio::test]
    async fn literal_hosts_are_checked_without_dns() {
        let none = StaticResolver::default();
        assert!(check_public("127.0.0.1", 80, &none).await.is_err());
        assert!(check_public("[::1]", 80, &none).await.is_err());
        assert_eq!(
            check_public("8.8.8.8", 443, &none).await,
            Ok("8.8.8.8:443".parse().expect("addr"))
        );
    }

    #[tokio::test]
    async fn every_address_of_a_name_must_be_public_and_the_first_is_pinned() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let r = StaticResolver::default()
            .with("public.test", &[ip("8.8.8.8"), ip("1.1.1.1")])
            .with("rebind.test", &[ip("8.8.8.8"), ip("169.254.169.254")]);
        assert_eq!(
            check_public("public.test", 8000, &r).await,
            Ok("8.8.8.8:8000".parse().expect("addr"))
        );
        let e = check_public("rebind.test", 80, &r).await.unwrap_err();
        assert!(e.contains("169.254.169.254"), "{e}");
        let e = check_public("nowhere.test", 80, &r).await.unwrap_err();
        assert!(e.contains("cannot resolve"), "{e}");
    }
}
