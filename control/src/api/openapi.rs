//! `GET /openapi.json`: an OpenAPI 3.0 description of every route of the operator API.

use axum::Json;
use multiverse_common::ModelKind;
use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn backend_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Backend"}}}})
}

/// A JSON response of the schema `components/schemas/<name>`.
fn schema_response(description: &str, name: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}})
}

/// Schemas of the phase-2 routes (kept out of the document's one `json!`, whose nesting is at
/// the macro's recursion limit).
fn more_schemas() -> Value {
    let count = json!({"type": "integer"});
    json!({
        "Stats": {"type": "object", "properties": {
            "backends": {"type": "object", "description": "deregistered ones are not in healthy/unhealthy/unknown", "properties": {
                "total": count, "healthy": count, "unhealthy": count, "unknown": count, "deregistered": count}},
            "instances": {"type": "object", "properties": {"total": count, "by_status": {"type": "object", "additionalProperties": count}}},
            "models": count,
            "endpoints": {"type": "object", "properties": {"total": count, "healthy": count}},
            "proxies": {"type": "object", "properties": {"connected": count, "current_version": {"type": "string"}, "acked_current": count}}}},
        "Policy": {"type": "object", "description": "A model's routing policy; every field optional (unset: the next layer's, at the end the proxy's default). Bad values: 400 INVALID_POLICY", "properties": {
            "lb": {"type": "string", "enum": multiverse_common::LbStrategy::NAMES},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": crate::models::policy::MAX_RETRIES},
            "connect_timeout_ms": {"type": "integer", "minimum": 1, "maximum": crate::models::policy::MAX_TIMEOUT_MS},
            "first_byte_timeout_ms": {"type": "integer", "minimum": 1, "maximum": crate::models::policy::MAX_TIMEOUT_MS},
            "idle_timeout_ms": {"type": "integer", "minimum": 1, "maximum": crate::models::policy::MAX_TIMEOUT_MS},
            "hedge_after_ms": {"type": "integer", "minimum": 0, "maximum": crate::models::policy::MAX_TIMEOUT_MS, "description": "idempotent routes only (embeddings, TEI /embed, /rerank, /tokenize, ..., TEI gRPC unary; never chat or completions): a second endpoint gets the request when the first has sent no response header within this many ms; the first complete answer wins, the other is cancelled. 0: off"}}},
        "PolicyView": {"type": "object", "properties": {
            "model": {"type": "string"},
            "api": {"$ref": "#/components/schemas/Policy"},
            "config": {"$ref": "#/components/schemas/Policy"},
            "policy": {"$ref": "#/components/schemas/Policy"}}},
        "ConnectionTest": {"type": "object", "properties": {
            "ok": {"type": "boolean"}, "latency_ms": {"type": "integer"},
            "status": {"type": "integer", "nullable": true, "description": "HTTP status of the backend's /v1/models"},
            "models": {"type": "array", "items": {"type": "string"}, "description": "The models it would be registered with"}}},
    })
}

/// `/admin/models/{name}/policy` (kept out of the document's one `json!`, at the macro's
/// recursion limit).
fn policy_path() -> Value {
    let secured = json!([{"bearer": []}, {"apiKey": []}]);
    let view = schema_response(
        "The API layer, the config's `[models.<name>]` and the two combined",
        "PolicyView",
    );
    let with_auth = |mut v: Value| {
        v["401"] = error_response("No API key");
        v["403"] = error_response("Wrong API key");
        v
    };
    json!({
        "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
        "get": {"summary": "A model's routing policy (API over config; backends' and instances' own policies fill what both leave unset)", "security": secured,
            "responses": with_auth(json!({"200": view, "404": error_response("POLICY_NOT_FOUND (neither an API nor a config policy)")}))},
        "put": {"summary": "Set the model's API policy (replaces the API layer; pushed to proxies; event policy_updated)", "security": secured,
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Policy"}}}},
            "responses": with_auth(json!({"200": view, "400": error_response("INVALID_POLICY or VALIDATION_ERROR")}))},
        "delete": {"summary": "Remove the model's API policy (its config policy applies again; event policy_deleted)", "security": secured,
            "responses": with_auth(json!({"204": {"description": "Removed"}, "404": error_response("POLICY_NOT_FOUND")}))}
    })
}

/// Query parameters of a list route: name and, when it has a fixed set, its values.
fn list_params(params: &[(&str, Option<&[&str]>)]) -> Value {
    params
        .iter()
        .map(|(name, values)| {
            let schema = match values {
                Some(v) => json!({"type": "string", "enum": v}),
                None => json!({"type": "string"}),
            };
            json!({"name": name, "in": "query", "required": false, "schema": schema})
        })
        .collect()
}

fn backend_list_params() -> Value {
    list_params(&[
        ("model", None),
        ("health", Some(&["healthy", "unhealthy", "unknown"])),
        ("owner", None),
        ("tag", None),
        ("deregistered", Some(&["true", "false"])),
        ("sort", Some(&["name", "status", "last_check", "created"])),
        ("order", Some(&["asc", "desc"])),
    ])
}

fn id_param() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}])
}

/// The tags Swagger groups routes by, in order.
const TAGS: &[(&str, &str)] = &[
    ("backends", "External OpenAI-compatible backends"),
    (
        "instances",
        "TEI instances supervised by this control plane",
    ),
    ("events", "Lifecycle events (server-sent events)"),
    ("models", "Models' routing policies"),
    (
        "fleet",
        "Proxies, the route snapshot, GPUs and summary counts",
    ),
    (
        "system",
        "Health, metrics, this document and the web UI's settings",
    ),
];

/// The tag of a route, by its path.
fn tag_of(path: &str) -> &'static str {
    if path.starts_with("/admin/backends") {
        "backends"
    } else if path.starts_with("/instances") || path == "/templates" {
        "instances"
    } else if path.starts_with("/admin/models") {
        "models"
    } else if path == "/events" {
        "events"
    } else if ["/proxies", "/snapshot", "/gpus", "/stats"].contains(&path) {
        "fleet"
    } else {
        "system"
    }
}

/// The document, every operation tagged by [`tag_of`].
pub async fn document() -> Json<Value> {
    let Json(mut doc) = untagged();
    if let Some(paths) = doc["paths"].as_object_mut() {
        paths.insert("/admin/models/{name}/policy".into(), policy_path());
    }
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let tag = tag_of(path);
            if let Some(ops) = item.as_object_mut() {
                for (method, op) in ops.iter_mut() {
                    if method != "parameters" {
                        op["tags"] = json!([tag]);
                        with_request_id(op);
                    }
                }
            }
        }
    }
    doc["components"]["headers"] = json!({"RequestId": {
        "description": "The request's id: the caller's `x-request-id` when usable (1-128 visible ASCII bytes), else 32 hex digits made here; also on the request's log lines",
        "schema": {"type": "string"}}});
    doc["components"]["parameters"] = json!({"RequestId": {
        "name": "x-request-id", "in": "header", "required": false,
        "description": "An id for the request (1-128 visible ASCII bytes), kept and returned; any other value is replaced by one made here",
        "schema": {"type": "string"}}});
    if let (Some(schemas), Value::Object(more)) =
        (doc["components"]["schemas"].as_object_mut(), more_schemas())
    {
        schemas.extend(more);
    }
    doc["tags"] = TAGS
        .iter()
        .map(|(name, description)| json!({"name": name, "description": description}))
        .collect();
    Json(doc)
}

/// Every operation takes an `x-request-id` and every response of it returns one
/// ([`super::request_id`]).
fn with_request_id(op: &mut Value) {
    let param = json!({"$ref": "#/components/parameters/RequestId"});
    match op["parameters"].as_array_mut() {
        Some(params) => params.push(param),
        None => op["parameters"] = json!([param]),
    }
    if let Some(responses) = op["responses"].as_object_mut() {
        for response in responses.values_mut() {
            response["headers"]["x-request-id"] = json!({"$ref": "#/components/headers/RequestId"});
        }
    }
}

fn untagged() -> Json<Value> {
    let secured = json!([{"bearer": []}, {"apiKey": []}]);
    let auth_errors = |mut responses: serde_json::Map<String, Value>| {
        responses.insert("401".into(), error_response("No API key"));
        responses.insert("403".into(), error_response("Wrong API key"));
        Value::Object(responses)
    };
    let m = |pairs: Vec<(&str, Value)>| -> serde_json::Map<String, Value> {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    };
    let request_body = json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BackendRequest"}}}});
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Multiverse control plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Operator API: backends, TEI instances, GPUs, events, health, proxies and routes. Errors are {error, code, timestamp}."
        },
        "paths": {
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Serving"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text exposition", "content": {"text/plain": {}}}}}},
            "/metrics/json": {"get": {"summary": "Metrics as JSON: instances by status; per instance status, uptime_secs, restarts, liveness_failures, requests_total / requests_failed / avg_latency_ms (from its own TEI metrics), gpu_id, gpu_memory_bytes; backends; system memory and GPU totals", "responses": {"200": {"description": "{control_plane_id, instances, instance_details, backends, system}", "content": {"application/json": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}},
            "/ui/config": {"get": {"summary": "What the web UI is told: the proxy its playground calls ([ui] proxy_url in control.toml, null when unset)", "responses": {"200": {"description": "{proxy_url}", "content": {"application/json": {"schema": {"type": "object", "properties": {"proxy_url": {"type": "string", "nullable": true}}}}}}}}},
            "/proxies": {"get": {"summary": "Proxies connected to this control plane: connected since, ACKed version, last NACK (key needed unless [admin] public_read)", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "Proxies"}))]))}},
            "/stats": {"get": {"summary": "Summary counts (no names): backends by health, instances by status, models, endpoints, proxies and how many ACKed the current version", "responses": {"200": schema_response("Stats", "Stats")}}},
            "/snapshot": {"get": {"summary": "The route snapshot being pushed (keys redacted; key needed unless [admin] public_read)", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "Snapshot"}))]))}},
            "/gpus": {"get": {"summary": "GPUs of this host: memory, utilisation, temperature, processes (or why NVML is unavailable; key needed unless [admin] public_read)", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "GpuStatus"}))]))}},
            "/events": {"get": {"summary": "Instance and backend events (backend_registered, backend_healthy, backend_unhealthy, backend_deregistered, backend_restored, backend_updated, backend_deleted) as server-sent events, one seq; replays recent ones (?since=, Last-Event-ID); ?instance=, ?type=a,b filter", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "text/event-stream"})), ("400", error_response("VALIDATION_ERROR"))]))}},
            "/templates": {"get": {"summary": "Instance templates from the config", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "Templates"}))]))}},
            "/instances": {
                "get": {"summary": "List TEI instances; filters ?tag=key[:value], ?status=ready, ?model=, ?gpu=0; ?sort=name|status|created|restarts, ?order=asc|desc (an unknown parameter or value: 400 VALIDATION_ERROR)", "parameters": list_params(&[("tag", None), ("status", Some(&["pending", "starting", "ready", "unhealthy", "restarting", "stopping", "stopped", "failed"])), ("model", None), ("gpu", None), ("sort", Some(&["name", "status", "created", "restarts"])), ("order", Some(&["asc", "desc"]))]), "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "Instances"}))]))},
                "post": {"summary": "Create and start a TEI instance (validated before anything is spawned; without gpu_id, placed on the GPU with the most free VRAM after what is placed, vram_mb its estimate; the 201 has `warnings` when [gpu] placement = \"warn\" let an overcommit through; `limits`: {max_memory_mb, max_vram_mb, enforce, max_cpu_percent, max_requests_per_sec}, exceeded → limit_exceeded event and restart or warning; max_requests_per_sec (1-1000000) is enforced by the proxies, each with an equal share of it (at least 1), beyond it other endpoints of the model or 429 rate_limit_exceeded with Retry-After; max_cpu_percent (percent of one CPU) and max_memory_mb also become cpu.max / memory.max of the instance's own cgroup where [instances] cgroup_root is writable cgroup v2, else a warning that max_cpu_percent is not enforced; `probes`: {startup, liveness, readiness} custom HTTP checks; `max_batch_tokens`: a number or \"auto\" — sized from the chosen GPU's free VRAM after what is placed, less vram_mb: MiB x 8, rounded down to 256, within 512..=16384 (TEI's default); no known GPU: 16384 and a warning; the result is `batch_sizing` {tokens, gpu_id, free_vram_mb, reserved_mb, rule} on the instance)", "security": secured,
                    "responses": auth_errors(m(vec![
                        ("201", json!({"description": "Created"})),
                        ("400", error_response("INVALID_NAME, INVALID_PORT, INVALID_GPU_ID, INVALID_MODEL_ID, VALIDATION_ERROR")),
                        ("404", error_response("TEMPLATE_NOT_FOUND")),
                        ("409", error_response("INSTANCE_EXISTS, PORT_CONFLICT, PORT_IN_USE")),
                        ("413", error_response("PAYLOAD_TOO_LARGE: the body is over [admin] max_body_bytes (1 MiB by default)")),
                        ("422", error_response("MAX_INSTANCES_REACHED, INSUFFICIENT_VRAM, NO_FREE_PORT")),
                    ]))}
            },
            "/instances/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": "An instance: status, pid, port, restarts, last exit, uptime, VRAM, gpu, probe statistics by kind (total, successes, failures, consecutive_failures, avg_ms, p99_ms, last_success_at, last_failure_at, last_error), batch_sizing (what max_batch_tokens = \"auto\" became and why), cgroup ({enforced, path, cpu_max, memory_max} or {enforced: false, reason})", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "Instance"})), ("404", error_response("INSTANCE_NOT_FOUND"))]))},
                "delete": {"summary": "Stop (draining first) and delete; its log files are deleted too unless ?keep_logs=true", "security": secured,
                    "parameters": [{"name": "keep_logs", "in": "query", "schema": {"type": "boolean", "default": false}}], "responses": auth_errors(m(vec![("204", json!({"description": "Deleted"})), ("404", error_response("INSTANCE_NOT_FOUND"))]))}
            },
            "/instances/{name}/gpu-stats": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": "The instance's GPU (id, name, memory used/total, utilisation, temperature) and the VRAM of its process group (NVML per-process, matched by pid)", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "{instance, nvml, reason, gpu_id, pid, gpu_memory_bytes, gpu: {id, name, memory_used_bytes, memory_total_bytes, utilization_percent, temperature_c, process_pids, process_memory_bytes}}"})), ("404", error_response("INSTANCE_NOT_FOUND"))]))}
            },
            "/instances/{name}/{action}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "action", "in": "path", "required": true, "schema": {"type": "string", "enum": ["start", "stop", "restart"]}}],
                "post": {"summary": "Start, stop (draining first) or restart", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "Instance"})), ("404", error_response("INSTANCE_NOT_FOUND"))]))}
            },
            "/instances/{name}/logs": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": "Log lines with Python slice semantics (?start=&end=, negative from the end) or the last N (?tail=N); ?follow=true streams new lines (SSE)", "security": secured,
                    "parameters": [{"name": "start", "in": "query", "schema": {"type": "integer"}},
                                   {"name": "end", "in": "query", "schema": {"type": "integer"}},
                                   {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "The last N lines (not with start or end)"},
                                   {"name": "follow", "in": "query", "schema": {"type": "boolean"}}],
                    "responses": auth_errors(m(vec![("200", json!({"description": "{lines, start, end, total} or text/event-stream"})), ("400", error_response("VALIDATION_ERROR, or INVALID_LOG_QUERY: end with follow, tail with start/end, unknown parameters (named)")), ("404", error_response("INSTANCE_NOT_FOUND"))]))}
            },
            "/instances/bulk/{action}": {
                "parameters": [{"name": "action", "in": "path", "required": true, "schema": {"type": "string", "enum": ["start", "stop", "restart", "delete"]}}],
                "post": {"summary": "Run an action on many instances: {names, keep_logs (delete only)} to {succeeded, failed: [{name, error, code}]}", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "Results"}))]))}
            },
            "/instances/from-template/{template}": {
                "parameters": [{"name": "template", "in": "path", "required": true, "schema": {"type": "string"}}],
                "post": {"summary": "Create an instance from a template: {name, overrides...}", "security": secured, "responses": auth_errors(m(vec![("201", json!({"description": "Created"})), ("404", error_response("TEMPLATE_NOT_FOUND"))]))}
            },
            "/admin/backends": {
                "get": {"summary": "List backends; filters ?model=, ?health=healthy|unhealthy|unknown, ?owner=, ?tag=key[:value], ?deregistered=true|false; ?sort=name|status|last_check|created, ?order=asc|desc (an unknown parameter or value: 400 VALIDATION_ERROR)", "security": secured, "parameters": backend_list_params(),
                    "responses": auth_errors(m(vec![("200", json!({"description": "{backends: [Backend]}"})), ("400", error_response("VALIDATION_ERROR naming the parameter"))]))},
                "post": {"summary": "Register a backend (checked before it is accepted: GET /v1/models, or its startup probe)", "security": secured, "requestBody": request_body,
                    "responses": auth_errors(m(vec![
                        ("201", backend_response("Registered")),
                        ("400", error_response("VALIDATION_ERROR, INVALID_URL or PRIVATE_ADDRESS_NOT_ALLOWED")),
                        ("409", error_response("BACKEND_EXISTS")),
                        ("413", error_response("PAYLOAD_TOO_LARGE: the body is over [admin] max_body_bytes (1 MiB by default)")),
                        ("422", error_response("MAX_BACKENDS_REACHED")),
                        ("503", error_response("BACKEND_UNAVAILABLE: the initial health check (or the startup probe) failed")),
                    ]))}
            },
            "/admin/backends/test": {
                "post": {"summary": "Test connection: registration's validation, SSRF rules and check, nothing stored and no snapshot change", "security": secured, "requestBody": request_body,
                    "responses": auth_errors(m(vec![
                        ("200", schema_response("{ok, latency_ms, status, models}", "ConnectionTest")),
                        ("400", error_response("VALIDATION_ERROR, INVALID_URL or PRIVATE_ADDRESS_NOT_ALLOWED")),
                        ("413", error_response("PAYLOAD_TOO_LARGE: the body is over 2 MiB")),
                        ("503", error_response("BACKEND_UNAVAILABLE: the check failed (the reason in `error`)")),
                    ]))}
            },
            "/admin/backends/{id}": {
                "parameters": id_param(),
                "get": {"summary": "A backend with its health and history, its probes and their statistics per kind", "security": secured, "responses": auth_errors(m(vec![("200", backend_response("Backend")), ("404", error_response("BACKEND_NOT_FOUND"))]))},
                "put": {"summary": "Update a backend (checked again)", "security": secured, "requestBody": request_body, "responses": auth_errors(m(vec![("200", backend_response("Updated")), ("400", error_response("Invalid")), ("404", error_response("BACKEND_NOT_FOUND")), ("409", error_response("BACKEND_EXISTS or CONFIG_BACKEND")), ("503", error_response("BACKEND_UNAVAILABLE"))]))},
                "delete": {"summary": "Deregister a backend", "security": secured, "responses": auth_errors(m(vec![("204", json!({"description": "Deregistered"})), ("404", error_response("BACKEND_NOT_FOUND")), ("409", error_response("CONFIG_BACKEND"))]))}
            },
            "/admin/backends/{id}/check": {
                "parameters": id_param(),
                "post": {"summary": "Run a health check now", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "{result, health}"})), ("404", error_response("BACKEND_NOT_FOUND"))]))}
            },
            "/admin/backends/{id}/restore": {
                "parameters": id_param(),
                "post": {"summary": "Undo an automatic deregistration", "security": secured, "responses": auth_errors(m(vec![("200", backend_response("Restored")), ("404", error_response("BACKEND_NOT_FOUND"))]))}
            },
            "/admin/keys": {
                "get": {"summary": "The inference-auth mode and every inference API key (never a secret or its hash)", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "{mode, keys}"}))]))},
                "post": {"summary": "Issue an inference API key: {name, models?, rpm?, tpm?, max_concurrent?, expires_at?, owner?, tags?} to {id, key, ...}; the secret `key` is shown this once", "security": secured,
                    "responses": auth_errors(m(vec![("201", json!({"description": "{id, key, ...the key}"})), ("400", error_response("VALIDATION_ERROR"))]))}
            },
            "/admin/keys/{id}": {
                "parameters": id_param(),
                "get": {"summary": "An inference API key", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "Key"})), ("404", error_response("KEY_NOT_FOUND"))]))},
                "put": {"summary": "Replace a key's settings (same body as POST; the secret stays)", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "Key"})), ("400", error_response("VALIDATION_ERROR")), ("404", error_response("KEY_NOT_FOUND"))]))},
                "delete": {"summary": "Revoke a key", "security": secured, "responses": auth_errors(m(vec![("204", json!({"description": "Revoked"})), ("404", error_response("KEY_NOT_FOUND"))]))}
            },
            "/admin/keys/{id}/rotate": {
                "parameters": id_param(),
                "post": {"summary": "Issue a new secret for the key; the old one stops working", "security": secured, "responses": auth_errors(m(vec![("200", json!({"description": "{id, key, ...the key}"})), ("404", error_response("KEY_NOT_FOUND"))]))}
            }
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error", "code", "timestamp"], "properties": {
                    "error": {"type": "string"}, "code": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"}}},
                "BackendRequest": {"type": "object", "required": ["name", "url"], "properties": {
                    "name": {"type": "string"}, "url": {"type": "string"},
                    "models": {"type": "array", "items": {"type": "string"}, "description": "Discovered from /v1/models when omitted"},
                    "api_key": {"type": "string", "description": "Sent upstream; stored, never returned"},
                    "owner": {"type": "string"}, "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "weight": {"type": "integer", "minimum": 1}, "kind": {"type": "string", "enum": ModelKind::NAMES},
                    "probes": {"$ref": "#/components/schemas/BackendProbes"}}},
                "CheckResult": {"type": "object", "properties": {
                    "at": {"type": "string"}, "ok": {"type": "boolean"}, "latency_ms": {"type": "integer"},
                    "status": {"type": "integer", "nullable": true}, "reason": {"type": "string", "nullable": true}}},
                "Backend": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "url": {"type": "string"},
                    "models": {"type": "array", "items": {"type": "string"}}, "kind": {"type": "string"}, "weight": {"type": "integer"},
                    "owner": {"type": "string"}, "tags": {"type": "object"}, "has_api_key": {"type": "boolean"},
                    "source": {"type": "string", "enum": ["config", "api"]}, "created_at": {"type": "string"}, "updated_at": {"type": "string"},
                    "deregistered": {"type": "boolean"},
                    "health": {"type": "object", "properties": {
                        "status": {"type": "string", "enum": ["unknown", "healthy", "unhealthy"]},
                        "consecutive_failures": {"type": "integer"}, "consecutive_successes": {"type": "integer"},
                        "last_check": {"$ref": "#/components/schemas/CheckResult"},
                        "history": {"type": "array", "items": {"$ref": "#/components/schemas/CheckResult"}}}}}}
            }
        }
    });
    add_backend_probe_schemas(&mut doc);
    Json(doc)
}

/// The schemas of backend probes and their statistics (a `json!` of their own: one more level
/// in the document's would pass the macro's recursion limit).
fn add_backend_probe_schemas(doc: &mut Value) {
    let schemas = json!({
                "BackendProbes": {"type": "object", "description": "Custom checks of a backend (a process the control plane does not own). startup: must pass at registration and update (replaces GET /v1/models as the admitting check; that still runs first when models are to be discovered), else 503 BACKEND_UNAVAILABLE naming the probe. liveness (no default): runs first each round; there is nothing to restart, so with a liveness probe only its failures count towards [health] deregister_after_failures (soft deregistration, restorable). readiness (default GET /v1/models): each round after liveness passed; [health] unhealthy_threshold failures withdraw the route (the proxies stop sending), healthy_threshold passes restore it; never deregisters when a liveness probe is set", "properties": {
                    "startup": {"$ref": "#/components/schemas/ProbeSpec"}, "liveness": {"$ref": "#/components/schemas/ProbeSpec"}, "readiness": {"$ref": "#/components/schemas/ProbeSpec"}}},
                "ProbeSpec": {"type": "object", "required": ["path"], "description": "One HTTP check, at the backend's base URL path prefix joined with `path`, with its upstream key as a bearer token unless `headers` sets authorization", "properties": {
                    "path": {"type": "string", "description": "Starts with /"}, "method": {"type": "string", "enum": ["GET", "POST", "PUT", "HEAD"], "default": "GET"},
                    "expected_status": {"type": "integer", "description": "Default: any 2xx"}, "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "body": {"type": "string", "description": "Sent as application/json unless headers set content-type"}, "timeout_ms": {"type": "integer", "minimum": 1, "description": "Default [health] timeout_ms"},
                    "json_pointer": {"type": "string", "description": "RFC 6901 pointer that must hold a non-null value, e.g. /data/0/id"},
                    "json_equals": {"type": "string", "description": "The value there (strings as they are, other values as JSON text: true, 3)"}}},
                "ProbeKindStats": {"type": "object", "properties": {
                    "total": {"type": "integer"}, "successes": {"type": "integer"}, "failures": {"type": "integer"}, "consecutive_failures": {"type": "integer"},
                    "avg_ms": {"type": "number", "nullable": true, "description": "Over every probe"}, "p99_ms": {"type": "number", "nullable": true, "description": "Over the last 1000 probes"},
                    "last_success_at": {"type": "string", "nullable": true}, "last_failure_at": {"type": "string", "nullable": true}, "last_error": {"type": "string", "nullable": true}}}
    });
    let backend = json!({
                    "probes": {"$ref": "#/components/schemas/BackendProbes"},
                    "probe_stats": {"type": "object", "description": "By kind: startup (registration and update checks), liveness, readiness (each round; the default GET /v1/models check counts as readiness). Prometheus: multiverse_control_probe_duration_seconds and multiverse_control_probes_total with target_type=\"backend\", target=<name>, kind", "additionalProperties": {"$ref": "#/components/schemas/ProbeKindStats"}},
                    "success_rate": {"type": "number", "nullable": true, "description": "Of every probe so far, 0-1 (also in the list)"},
                    "avg_latency_ms": {"type": "number", "nullable": true, "description": "Average response time of every probe so far (also in the list)"}
    });
    if let (Some(all), Value::Object(new)) = (doc["components"]["schemas"].as_object_mut(), schemas)
    {
        all.extend(new);
    }
    // Both the request and the view carry the backend's routing policy, concurrency and rate
    // limits.
    let routing = json!({
                    "policy": {"$ref": "#/components/schemas/Policy", "description": "The policy this backend asks for its models; a model's [models.<name>] or API policy wins field by field"},
                    "max_concurrent": {"type": "integer", "minimum": 1, "description": "Requests each proxy sends this backend at once (beyond: the model's queue, queue_max); unset: unlimited"},
                    "max_requests_per_sec": {"type": "integer", "minimum": 1, "maximum": 1000000, "description": "Requests per second to this backend across all proxies, each connected proxy enforcing an equal share (at least 1); beyond it the model's other endpoints, or 429 rate_limit_exceeded with Retry-After; unset: unlimited"}
    });
    for schema in ["BackendRequest", "Backend"] {
        if let (Some(props), Value::Object(new)) = (
            doc["components"]["schemas"][schema]["properties"].as_object_mut(),
            routing.clone(),
        ) {
            props.extend(new);
        }
    }
    if let (Some(props), Value::Object(new)) = (
        doc["components"]["schemas"]["Backend"]["properties"].as_object_mut(),
        backend,
    ) {
        props.extend(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_response_documents_its_request_id() {
        let Json(doc) = document().await;
        let header = &doc["components"]["headers"]["RequestId"];
        assert_eq!(header["schema"]["type"], "string", "{header}");
        let paths = doc["paths"].as_object().expect("paths");
        let mut responses = 0;
        for (path, item) in paths {
            let ops = item.as_object().expect("path item");
            for (method, op) in ops.iter().filter(|(m, _)| *m != "parameters") {
                let params = op["parameters"].as_array().expect("parameters");
                let refs = params
                    .iter()
                    .filter(|p| p["$ref"] == "#/components/parameters/RequestId")
                    .count();
                assert_eq!(refs, 1, "{method} {path}: {params:?}");
                for (status, r) in op["responses"].as_object().expect("responses") {
                    assert_eq!(
                        r["headers"]["x-request-id"]["$ref"], "#/components/headers/RequestId",
                        "{method} {path} {status}"
                    );
                    responses += 1;
                }
            }
        }
        assert!(responses > 50, "{responses} responses");
    }
}
