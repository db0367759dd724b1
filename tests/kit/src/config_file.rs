//! Config files written by serialising the types the binaries read — the proxy's
//! [`ProxyConfig`], the control plane's [`ControlConfig`] and the proxy's standalone
//! [`RoutesFile`] — never by formatting TOML text, so a misspelt or mistyped key does not
//! compile.
//!
//! [`to_toml`] leaves out every key whose value is what the reader fills in anyway (the file
//! shows what the caller chose, and an older build without a newer key still reads it), then
//! checks that the text reads back as the same value: a field that does not survive the trip
//! (one marked `skip_serializing`) is an error, not a silently different config.
//! [`overlay`] applies a TOML fragment over a value, for tests written with TOML snippets.

use std::fmt::Debug;
use std::path::Path;

use anyhow::{bail, Context};
use multiverse_control::config::ControlConfig;
use multiverse_proxy::config::ProxyConfig;
use multiverse_proxy::standalone::{EndpointEntry, ModelEntry, RoutesFile};
use serde::de::DeserializeOwned;
use serde::Serialize;
use toml::{Table, Value};

/// A file format the kit writes.
pub trait ConfigFile: Serialize + DeserializeOwned + PartialEq + Debug {
    /// What the file is, for errors.
    const WHAT: &'static str;

    /// Removes from `table` (a value of this type, serialised) the keys whose value the reader
    /// would fill in the same.
    fn prune(table: &mut Table);
}

impl ConfigFile for ProxyConfig {
    const WHAT: &'static str = "proxy config";

    fn prune(table: &mut Table) {
        prune(table, &defaults::<ProxyConfig>());
    }
}

impl ConfigFile for ControlConfig {
    const WHAT: &'static str = "control-plane config";

    fn prune(table: &mut Table) {
        prune(table, &defaults::<ControlConfig>());
    }
}

impl ConfigFile for RoutesFile {
    const WHAT: &'static str = "routes file";

    fn prune(table: &mut Table) {
        // Entries have no `Default`: what the reader fills in is what it makes of an entry
        // with only the required keys.
        let model = entry_defaults::<ModelEntry>("name = \"\"", &["name"]);
        let endpoint =
            entry_defaults::<EndpointEntry>("id = \"\"\naddress = \"\"", &["id", "address"]);
        for m in tables_in(table, "models") {
            for e in tables_in(m, "endpoints") {
                prune(e, &endpoint);
            }
            prune(m, &model);
        }
    }
}

/// `value` as TOML text, keys the reader fills in the same left out; fails if the text does
/// not read back as `value`.
pub fn to_toml<T: ConfigFile>(value: &T) -> anyhow::Result<String> {
    let mut table = table_of(value).with_context(|| format!("cannot serialise a {}", T::WHAT))?;
    T::prune(&mut table);
    let text = toml::to_string(&table)
        .with_context(|| format!("cannot serialise a {} as TOML", T::WHAT))?;
    let back: T = toml::from_str(&text)
        .with_context(|| format!("the {} written does not parse:\n{text}", T::WHAT))?;
    if back != *value {
        bail!(
            "the {} written does not read back as the same value (a field is not serialised?)\n\
             wanted: {value:?}\nread:   {back:?}",
            T::WHAT
        );
    }
    Ok(text)
}

/// Writes `value` to `path` ([`to_toml`]).
pub fn write<T: ConfigFile>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = to_toml(value)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `base` with the TOML fragment `toml` over it: tables merge key by key, any other value in
/// `toml` replaces the one in `base`. Fails, naming the problem, if the fragment does not parse
/// or the result is not a valid `T` (an unknown key, a wrong type).
pub fn overlay<T: ConfigFile>(base: &T, toml: &str) -> anyhow::Result<T> {
    overlay_as(base, toml, T::WHAT)
}

/// [`overlay`] for any serde type (`what` names it in errors).
pub(crate) fn overlay_as<T: Serialize + DeserializeOwned>(
    base: &T,
    toml: &str,
    what: &str,
) -> anyhow::Result<T> {
    let over: Table = toml
        .parse()
        .with_context(|| format!("invalid TOML for a {what}:\n{toml}"))?;
    let mut table = table_of(base)?;
    merge(&mut table, over);
    Value::Table(table)
        .try_into()
        .with_context(|| format!("not a valid {what} after applying:\n{toml}"))
}

/// Merges `over` into `base`: tables key by key (recursively), other values replaced.
fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `value` serialised as a TOML table.
fn table_of<T: Serialize>(value: &T) -> anyhow::Result<Table> {
    match Value::try_from(value)? {
        Value::Table(t) => Ok(t),
        other => bail!("serialised as a {}, not a table", other.type_str()),
    }
}

fn defaults<T: Default + Serialize>() -> Table {
    table_of(&T::default()).unwrap_or_default()
}

/// What the reader makes of an entry with only `required` keys (given in `minimal`), without
/// those keys.
fn entry_defaults<T: DeserializeOwned + Serialize>(minimal: &str, required: &[&str]) -> Table {
    let mut table = toml::from_str::<T>(minimal)
        .ok()
        .and_then(|v| table_of(&v).ok())
        .unwrap_or_default();
    for key in required {
        table.remove(*key);
    }
    table
}

/// The tables of the array of tables `key` in `table`.
fn tables_in<'a>(table: &'a mut Table, key: &str) -> impl Iterator<Item = &'a mut Table> {
    table
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_table_mut)
}

/// Removes from `table` every key whose value equals the one in `defaults`; tables are pruned
/// key by key and removed when nothing is left.
fn prune(table: &mut Table, defaults: &Table) {
    table.retain(|key, value| {
        let Some(default) = defaults.get(key) else {
            return true;
        };
        match (value, default) {
            (Value::Table(t), Value::Table(d)) => {
                prune(t, d);
                !t.is_empty()
            }
            (value, default) => value != default,
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use multiverse_control::backends::BackendSpec;
    use std::path::PathBuf;

    fn example(name: &str) -> PathBuf {
        multiverse_common::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
            .join("../../config")
            .join(name)
    }

    fn parse<T: DeserializeOwned>(name: &str) -> T {
        let text = std::fs::read_to_string(example(name)).expect(name);
        toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The plain serialisation (no pruning) of a default config parses back to the same value.
    #[test]
    fn serialised_default_configs_parse_back_the_same() {
        let text = toml::to_string(&ProxyConfig::default()).expect("serialise");
        assert_eq!(
            toml::from_str::<ProxyConfig>(&text).expect(&text),
            ProxyConfig::default()
        );
        let text = toml::to_string(&ControlConfig::default()).expect("serialise");
        assert_eq!(
            toml::from_str::<ControlConfig>(&text).expect(&text),
            ControlConfig::default()
        );
        // Pruned, a default config is empty.
        assert_eq!(to_toml(&ProxyConfig::default()).unwrap().trim(), "");
        assert_eq!(to_toml(&ControlConfig::default()).unwrap().trim(), "");
    }

    /// The documented example files, with most keys set, survive the trip too.
    #[test]
    fn example_files_read_back_the_same() {
        for name in ["proxy.toml", "quickstart-proxy.toml"] {
            let c: ProxyConfig = parse(name);
            assert_eq!(
                toml::from_str::<ProxyConfig>(&to_toml(&c).unwrap()).unwrap(),
                c
            );
        }
        for name in ["control.toml", "quickstart-control.toml"] {
            let c: ControlConfig = parse(name);
            let text = to_toml(&c).unwrap();
            assert_eq!(toml::from_str::<ControlConfig>(&text).unwrap(), c, "{name}");
        }
        let routes: RoutesFile = parse("routes.toml");
        assert!(!routes.models.is_empty());
        let text = to_toml(&routes).unwrap();
        assert_eq!(toml::from_str::<RoutesFile>(&text).unwrap(), routes);
    }

    #[test]
    fn only_chosen_keys_are_written() {
        let mut c = ProxyConfig {
            node_id: Some("p1".into()),
            ..Default::default()
        };
        c.discovery.backoff_max_ms = 500;
        let text = to_toml(&c).unwrap();
        let table: Table = text.parse().unwrap();
        assert_eq!(table["node_id"].as_str(), Some("p1"), "{text}");
        assert_eq!(
            table["discovery"].as_table().map(Table::len),
            Some(1),
            "{text}"
        );
        assert_eq!(table.len(), 2, "{text}");

        let routes: RoutesFile = toml::from_str(
            "[[models]]\nname = \"m\"\n[[models.endpoints]]\nid = \"e\"\naddress = \"h:1\"\nweight = 3",
        )
        .unwrap();
        let text = to_toml(&routes).unwrap();
        assert!(
            !text.contains("kind") && !text.contains("protocol"),
            "{text}"
        );
        assert!(text.contains("weight = 3"), "{text}");
    }

    /// A field the type does not serialise (a backend's `api_key`) is refused, not dropped.
    #[test]
    fn a_lossy_config_is_refused() {
        let mut c = ControlConfig::default();
        c.backends.push(BackendSpec {
            name: "b".into(),
            url: "http://127.0.0.1:1".into(),
            models: vec!["m".into()],
            weight: 1,
            api_key: Some("sk-secret".into()),
            kind: None,
            policy: None,
            max_concurrent: None,
            max_requests_per_sec: None,
            probes: None,
        });
        let err = to_toml(&c).unwrap_err().to_string();
        assert!(err.contains("does not read back"), "{err}");
        c.backends[0].api_key = None;
        assert!(to_toml(&c).is_ok());
    }

    #[test]
    fn overlay_merges_tables_and_names_bad_keys() {
        let mut base = ProxyConfig::default();
        base.discovery.backoff_initial_ms = 50;
        let c = overlay(&base, "[discovery]\nwithdraw_after_ms = 600\n").unwrap();
        assert_eq!(c.discovery.withdraw_after_ms, 600);
        assert_eq!(c.discovery.backoff_initial_ms, 50, "kept from the base");
        let err = format!(
            "{:#}",
            overlay(&base, "[discovery]\nwithdraw_after = 1").unwrap_err()
        );
        assert!(err.contains("withdraw_after"), "{err}");
        let err = format!("{:#}", overlay(&base, "[discovery\n").unwrap_err());
        assert!(err.contains("invalid TOML"), "{err}");
    }
}
