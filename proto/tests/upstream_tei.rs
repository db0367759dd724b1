//! Keeps `proto/tei/v1/tei.proto` in step with TEI's own `proto/tei.proto`, checked in verbatim
//! as `proto/upstream/tei.proto` (its commit is in `proto/upstream/README.md`).
//!
//! Both files are compiled by the same `protoc` that builds the crate (protoc-bin-vendored)
//! into descriptors, so the comparison sees exactly what the wire sees, not the text: every
//! message (nested ones too), every field's name, number, type, type name, label and proto3
//! `optional`, every oneof, every enum value, every service and rpc (request, response,
//! streaming on either side, idempotency level), the package and the syntax. Comments and
//! formatting are free to differ. Differences we intend are listed in [`INTENDED`]; anything
//! else fails, and so does an entry of [`INTENDED`] that no longer occurs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// Differences between our copy and TEI's that are on purpose, as [`differences`] prints them.
/// None today: our `tei.v1` is wire-identical to TEI's.
const INTENDED: &[&str] = &[];

fn manifest_dir() -> PathBuf {
    // At run time: a shared target directory may hold a binary compiled in another clone.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// Parses `dir/file` with protoc and returns its descriptor.
fn descriptor(dir: &Path, file: &str, scratch: &str) -> FileDescriptorProto {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("upstream_tei");
    std::fs::create_dir_all(&out_dir).expect("scratch dir");
    // Unique per call: tests run in parallel in one process and parse the same file.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = out_dir.join(format!("{scratch}-{}-{n}.pb", std::process::id()));
    let output = Command::new(protoc)
        .arg(format!("--proto_path={}", dir.display()))
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(file)
        .output()
        .expect("run protoc");
    assert!(
        output.status.success(),
        "protoc failed on {}/{file}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(&out).expect("descriptor set");
    let _ = std::fs::remove_file(&out);
    let mut set = FileDescriptorSet::decode(bytes.as_slice()).expect("FileDescriptorSet");
    assert_eq!(set.file.len(), 1, "one file, no imports");
    set.file.remove(0)
}

/// Every wire-relevant fact of a file, keyed by what it is about (`field EmbedRequest.dimensions`)
/// with its value (`6 TYPE_UINT32 LABEL_OPTIONAL proto3_optional`).
fn facts(file: &FileDescriptorProto) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    facts.insert("package".into(), file.package().to_string());
    facts.insert("syntax".into(), file.syntax().to_string());
    for message in &file.message_type {
        message_facts(&mut facts, "", message);
    }
    for e in &file.enum_type {
        enum_facts(&mut facts, "", e);
    }
    for service in &file.service {
        let name = service.name();
        facts.insert(format!("service {name}"), String::new());
        for rpc in &service.method {
            let idempotency = rpc
                .options
                .as_ref()
                .map(|o| o.idempotency_level().as_str_name())
                .unwrap_or("IDEMPOTENCY_UNKNOWN");
            let value = format!(
                "({}{}) returns ({}{}) {idempotency}",
                if rpc.client_streaming() {
                    "stream "
                } else {
                    ""
                },
                rpc.input_type(),
                if rpc.server_streaming() {
                    "stream "
                } else {
                    ""
                },
                rpc.output_type(),
            );
            facts.insert(format!("rpc {name}.{}", rpc.name()), value);
        }
    }
    facts
}

fn message_facts(facts: &mut BTreeMap<String, String>, scope: &str, message: &DescriptorProto) {
    let name = format!("{scope}{}", message.name());
    facts.insert(format!("message {name}"), String::new());
    for field in &message.field {
        // proto3 `optional` is a synthetic oneof; a real oneof is named.
        let oneof = match field.oneof_index {
            Some(i) if !field.proto3_optional() => {
                let decl = usize::try_from(i)
                    .ok()
                    .and_then(|i| message.oneof_decl.get(i));
                format!(" oneof {}", decl.map_or("?", |d| d.name()))
            }
            _ => String::new(),
        };
        let value = format!(
            "{} {} {}{}{}{}",
            field.number(),
            field.r#type().as_str_name(),
            field.label().as_str_name(),
            if field.type_name().is_empty() {
                String::new()
            } else {
                format!(" {}", field.type_name())
            },
            if field.proto3_optional() {
                " proto3_optional"
            } else {
                ""
            },
            oneof,
        );
        facts.insert(format!("field {name}.{}", field.name()), value);
    }
    for nested in &message.nested_type {
        message_facts(facts, &format!("{name}."), nested);
    }
    for e in &message.enum_type {
        enum_facts(facts, &format!("{name}."), e);
    }
}

fn enum_facts(facts: &mut BTreeMap<String, String>, scope: &str, e: &EnumDescriptorProto) {
    let name = format!("{scope}{}", e.name());
    facts.insert(format!("enum {name}"), String::new());
    for value in &e.value {
        facts.insert(
            format!("enum value {name}.{}", value.name()),
            value.number().to_string(),
        );
    }
}

/// What differs between `ours` and `upstream`, one line per fact.
fn differences(ours: &FileDescriptorProto, upstream: &FileDescriptorProto) -> Vec<String> {
    let (ours, upstream) = (facts(ours), facts(upstream));
    let mut diffs = Vec::new();
    for (key, theirs) in &upstream {
        match ours.get(key) {
            None => diffs.push(format!("missing in ours: {key} {theirs}")),
            Some(mine) if mine != theirs => {
                diffs.push(format!("{key}: ours `{mine}`, upstream `{theirs}`"));
            }
            Some(_) => {}
        }
    }
    for (key, mine) in &ours {
        if !upstream.contains_key(key) {
            diffs.push(format!("only in ours: {key} {mine}"));
        }
    }
    diffs
}

fn ours() -> FileDescriptorProto {
    descriptor(&manifest_dir().join("proto"), "tei/v1/tei.proto", "ours")
}

fn upstream_text() -> String {
    std::fs::read_to_string(manifest_dir().join("upstream/tei.proto")).expect("upstream copy")
}

fn upstream() -> FileDescriptorProto {
    descriptor(&manifest_dir().join("upstream"), "tei.proto", "upstream")
}

#[test]
fn our_tei_proto_matches_teis_upstream_file() {
    let diffs = differences(&ours(), &upstream());
    let unexpected: Vec<&String> = diffs
        .iter()
        .filter(|d| !INTENDED.contains(&d.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "proto/tei/v1/tei.proto differs from TEI's proto/tei.proto (proto/upstream/tei.proto):\n  {}",
        unexpected
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    let stale: Vec<&&str> = INTENDED
        .iter()
        .filter(|d| !diffs.iter().any(|x| x == **d))
        .collect();
    assert!(
        stale.is_empty(),
        "INTENDED lists differences that no longer occur: {stale:?}"
    );
}

#[test]
fn the_comparison_covers_the_whole_file() {
    let facts = facts(&upstream());
    let count = |prefix: &str| facts.keys().filter(|k| k.starts_with(prefix)).count();
    // TEI's file as checked in: 5 services, 17 rpcs, 2 enums with 5 values, 24 messages.
    assert_eq!(count("service "), 5, "{facts:#?}");
    assert_eq!(count("rpc "), 17);
    assert_eq!(count("enum value "), 5);
    assert_eq!(count("message "), 24);
    assert_eq!(
        facts["field EmbedRequest.dimensions"],
        "6 TYPE_UINT32 LABEL_OPTIONAL proto3_optional"
    );
    assert_eq!(
        facts["field EmbedRequest.normalize"],
        "3 TYPE_BOOL LABEL_OPTIONAL proto3_optional"
    );
    assert_eq!(
        facts["rpc Rerank.RerankStream"],
        "(stream .tei.v1.RerankStreamRequest) returns (.tei.v1.RerankResponse) IDEMPOTENCY_UNKNOWN"
    );
    assert_eq!(
        facts["rpc Info.Info"],
        "(.tei.v1.InfoRequest) returns (.tei.v1.InfoResponse) IDEMPOTENT"
    );
}

/// The check is not vacuous: a changed field number, a dropped `optional`, a changed type, a
/// renamed rpc and a missing enum value in a copy of the upstream file are each reported.
#[test]
fn a_changed_number_label_type_or_rpc_is_reported() {
    let text = upstream_text();
    let mutations = [
        (
            "optional uint32 dimensions = 6;",
            "optional uint32 dimensions = 7;",
            "field EmbedRequest.dimensions: ours `7 TYPE_UINT32 LABEL_OPTIONAL proto3_optional`, \
             upstream `6 TYPE_UINT32 LABEL_OPTIONAL proto3_optional`",
        ),
        (
            "optional bool normalize = 3;",
            "bool normalize = 3;",
            "field EmbedRequest.normalize: ours `3 TYPE_BOOL LABEL_OPTIONAL`, \
             upstream `3 TYPE_BOOL LABEL_OPTIONAL proto3_optional`",
        ),
        (
            "repeated string texts = 2;",
            "string texts = 2;",
            "field RerankRequest.texts: ours `2 TYPE_STRING LABEL_OPTIONAL`, \
             upstream `2 TYPE_STRING LABEL_REPEATED`",
        ),
        (
            "uint64 total_time_ns = 3;",
            "uint32 total_time_ns = 3;",
            "field Metadata.total_time_ns: ours `3 TYPE_UINT32 LABEL_OPTIONAL`, \
             upstream `3 TYPE_UINT64 LABEL_OPTIONAL`",
        ),
        (
            "rpc EmbedAllStream (stream EmbedAllRequest) returns (stream EmbedAllResponse);",
            "rpc EmbedAllStream (stream EmbedAllRequest) returns (EmbedAllResponse);",
            "rpc Embed.EmbedAllStream: ours `(stream .tei.v1.EmbedAllRequest) returns \
             (.tei.v1.EmbedAllResponse) IDEMPOTENCY_UNKNOWN`, upstream `(stream \
             .tei.v1.EmbedAllRequest) returns (stream .tei.v1.EmbedAllResponse) \
             IDEMPOTENCY_UNKNOWN`",
        ),
        (
            "    MODEL_TYPE_RERANKER = 2;\n",
            "",
            "missing in ours: enum value ModelType.MODEL_TYPE_RERANKER 2",
        ),
    ];
    let upstream = upstream();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("upstream_tei_mutated_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    for (i, (from, to, expected)) in mutations.iter().enumerate() {
        assert!(text.contains(from), "upstream file has no {from:?}");
        let file = format!("mutated{i}.proto");
        std::fs::write(dir.join(&file), text.replacen(from, to, 1)).expect("write");
        let diffs = differences(&descriptor(&dir, &file, "mutated"), &upstream);
        assert_eq!(diffs, vec![expected.to_string()], "mutation {from:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
