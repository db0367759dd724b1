//! Standalone routes files (the proxy's [`RoutesFile`]): entries built with the proxy's own
//! defaults for every key not given ([`endpoint`], [`model`]), and the TOML snippets the
//! integration tests compose routes files from ([`Ep`], [`model_toml`]).

use std::fmt::Display;
use std::net::SocketAddr;

use multiverse_proxy::standalone::{EndpointEntry, ModelEntry, RoutesFile};
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::config_file::{overlay_as, to_toml};

/// An entry of type `T` from `keys`, every other key as the proxy defaults it.
fn entry<T: DeserializeOwned>(keys: Table, what: &str) -> T {
    Value::Table(keys)
        .try_into()
        .unwrap_or_else(|e| panic!("the kit builds a valid {what}: {e}"))
}

fn strings(pairs: &[(&str, &str)]) -> Table {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect()
}

/// An endpoint `id` at `address` speaking `protocol` (`http1`, `h2c`, `grpc`) in state
/// `health` (`healthy`, `unhealthy`, `draining`); the proxy's defaults for everything else.
pub fn endpoint(id: &str, address: impl Display, protocol: &str, health: &str) -> EndpointEntry {
    let address = address.to_string();
    entry(
        strings(&[
            ("id", id),
            ("address", &address),
            ("protocol", protocol),
            ("health", health),
        ]),
        "endpoint entry",
    )
}

/// A model `name` of `kind` (`chat`, `embedding`, ...) served by `endpoints`; the proxy's
/// defaults for everything else.
pub fn model(name: &str, kind: &str, endpoints: Vec<EndpointEntry>) -> ModelEntry {
    let mut m: ModelEntry = entry(strings(&[("name", name), ("kind", kind)]), "model entry");
    m.endpoints = endpoints;
    m
}

/// One endpoint of a test's routes file.
pub struct Ep {
    pub id: String,
    pub address: String,
    pub protocol: &'static str,
    pub health: &'static str,
}

impl Ep {
    /// An HTTP/1.1 endpoint.
    pub fn http(id: &str, addr: SocketAddr, health: &'static str) -> Ep {
        Ep {
            id: id.to_string(),
            address: addr.to_string(),
            protocol: "http1",
            health,
        }
    }

    /// A gRPC endpoint.
    pub fn grpc(id: &str, addr: SocketAddr, health: &'static str) -> Ep {
        Ep {
            protocol: "grpc",
            ..Ep::http(id, addr, health)
        }
    }

    /// The routes-file entry.
    pub fn entry(&self) -> EndpointEntry {
        endpoint(&self.id, &self.address, self.protocol, self.health)
    }
}

/// One `[[models]]` entry of a standalone routes file as TOML (`extra`: more model keys, e.g.
/// `lb = "round_robin"`); entries concatenate into a file. Panics if `extra` is not valid.
pub fn model_toml(name: &str, kind: &str, extra: &str, endpoints: &[Ep]) -> String {
    let base = model(name, kind, endpoints.iter().map(Ep::entry).collect());
    let entry = overlay_as(&base, extra, "model entry").unwrap_or_else(|e| panic!("{e:#}"));
    let file = RoutesFile {
        version: None,
        models: vec![entry],
        auth: None,
    };
    to_toml(&file).unwrap_or_else(|e| panic!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_concatenate_into_a_routes_file() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let text = model_toml(
            "demo",
            "chat",
            "max_retries = 0",
            &[Ep::http("a", a, "healthy"), Ep::grpc("b", a, "draining")],
        ) + &model_toml("bge", "embedding", "", &[Ep::http("c", a, "unhealthy")]);
        let file: RoutesFile = toml::from_str(&text).expect(&text);
        assert_eq!(file.models.len(), 2);
        let demo = &file.models[0];
        assert_eq!((demo.name.as_str(), demo.max_retries), ("demo", Some(0)));
        assert_eq!(demo.endpoints[1].protocol, "grpc");
        assert_eq!(demo.endpoints[1].health, "draining");
        assert_eq!(demo.endpoints[0].weight, 1, "the proxy's default");
        assert_eq!(file.models[1].kind, "embedding");
        assert_eq!(file.models[1].endpoints[0].address, "127.0.0.1:1");
    }

    #[test]
    #[should_panic(expected = "model entry")]
    fn a_bad_extra_key_is_named() {
        model_toml("demo", "chat", "retries = 1", &[]);
    }
}
