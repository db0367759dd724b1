//! The operator API's errors: JSON `{"error", "code", "timestamp"}` with a stable [`ErrorCode`],
//! each code with the one status it answers. Every domain error becomes an [`ApiError`] here and
//! only here, through exhaustive `From` impls: a new domain error variant does not compile until
//! it is given a code (there is no fallback that would turn it into a 400).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use multiverse_common::time::now_rfc3339;
use serde_json::json;

use crate::backends::admission::AdmitError;
use crate::backends::registry::RegistryError;
use crate::backends::SpecError as BackendSpecError;
use crate::gpu::PlacementError;
use crate::instances::spec::SpecError as InstanceSpecError;
use crate::instances::InstanceError;
use crate::keys::KeyError;
use crate::models::PolicyError;
use crate::store::StateError;

/// Every code the operator API answers, with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    // 400
    ValidationError,
    InvalidUrl,
    PrivateAddressNotAllowed,
    InvalidName,
    InvalidModelId,
    InvalidPort,
    InvalidGpuId,
    InvalidLogQuery,
    InvalidPolicy,
    // 401, 403
    Unauthorized,
    Forbidden,
    // 404
    NotFound,
    BackendNotFound,
    InstanceNotFound,
    TemplateNotFound,
    KeyNotFound,
    PolicyNotFound,
    // 409
    BackendExists,
    ConfigBackend,
    InstanceExists,
    PortConflict,
    PortInUse,
    // 413
    PayloadTooLarge,
    // 431
    HeaderTooLarge,
    // 429
    RateLimited,
    // 422
    MaxBackendsReached,
    MaxInstancesReached,
    InsufficientVram,
    NoFreePort,
    // 500
    StateWriteFailed,
    LogOpenFailed,
    LogReadFailed,
    Internal,
    // 503
    BackendUnavailable,
}

impl ErrorCode {
    /// Every code (for the tests and the OpenAPI document).
    pub const ALL: [ErrorCode; 34] = [
        ErrorCode::ValidationError,
        ErrorCode::InvalidUrl,
        ErrorCode::PrivateAddressNotAllowed,
        ErrorCode::InvalidName,
        ErrorCode::InvalidModelId,
        ErrorCode::InvalidPort,
        ErrorCode::InvalidGpuId,
        ErrorCode::InvalidLogQuery,
        ErrorCode::InvalidPolicy,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::BackendNotFound,
        ErrorCode::InstanceNotFound,
        ErrorCode::TemplateNotFound,
        ErrorCode::KeyNotFound,
        ErrorCode::PolicyNotFound,
        ErrorCode::BackendExists,
        ErrorCode::ConfigBackend,
        ErrorCode::InstanceExists,
        ErrorCode::PortConflict,
        ErrorCode::PortInUse,
        ErrorCode::PayloadTooLarge,
        ErrorCode::HeaderTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::MaxBackendsReached,
        ErrorCode::MaxInstancesReached,
        ErrorCode::InsufficientVram,
        ErrorCode::NoFreePort,
        ErrorCode::StateWriteFailed,
        ErrorCode::LogOpenFailed,
        ErrorCode::LogReadFailed,
        ErrorCode::Internal,
        ErrorCode::BackendUnavailable,
    ];

    /// The code on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::InvalidUrl => "INVALID_URL",
            ErrorCode::PrivateAddressNotAllowed => "PRIVATE_ADDRESS_NOT_ALLOWED",
            ErrorCode::InvalidName => "INVALID_NAME",
            ErrorCode::InvalidModelId => "INVALID_MODEL_ID",
            ErrorCode::InvalidPort => "INVALID_PORT",
            ErrorCode::InvalidGpuId => "INVALID_GPU_ID",
            ErrorCode::InvalidLogQuery => "INVALID_LOG_QUERY",
            ErrorCode::InvalidPolicy => "INVALID_POLICY",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::BackendNotFound => "BACKEND_NOT_FOUND",
            ErrorCode::InstanceNotFound => "INSTANCE_NOT_FOUND",
            ErrorCode::TemplateNotFound => "TEMPLATE_NOT_FOUND",
            ErrorCode::KeyNotFound => "KEY_NOT_FOUND",
            ErrorCode::PolicyNotFound => "POLICY_NOT_FOUND",
            ErrorCode::BackendExists => "BACKEND_EXISTS",
            ErrorCode::ConfigBackend => "CONFIG_BACKEND",
            ErrorCode::InstanceExists => "INSTANCE_EXISTS",
            ErrorCode::PortConflict => "PORT_CONFLICT",
            ErrorCode::PortInUse => "PORT_IN_USE",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::HeaderTooLarge => "REQUEST_HEADER_TOO_LARGE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::MaxBackendsReached => "MAX_BACKENDS_REACHED",
            ErrorCode::MaxInstancesReached => "MAX_INSTANCES_REACHED",
            ErrorCode::InsufficientVram => "INSUFFICIENT_VRAM",
            ErrorCode::NoFreePort => "NO_FREE_PORT",
            ErrorCode::StateWriteFailed => "STATE_WRITE_FAILED",
            ErrorCode::LogOpenFailed => "LOG_OPEN_FAILED",
            ErrorCode::LogReadFailed => "LOG_READ_FAILED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::BackendUnavailable => "BACKEND_UNAVAILABLE",
        }
    }

    /// The status a response with this code has.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorCode::ValidationError
            | ErrorCode::InvalidUrl
            | ErrorCode::PrivateAddressNotAllowed
            | ErrorCode::InvalidName
            | ErrorCode::InvalidModelId
            | ErrorCode::InvalidPort
            | ErrorCode::InvalidGpuId
            | ErrorCode::InvalidLogQuery
            | ErrorCode::InvalidPolicy => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound
            | ErrorCode::BackendNotFound
            | ErrorCode::InstanceNotFound
            | ErrorCode::TemplateNotFound
            | ErrorCode::KeyNotFound
            | ErrorCode::PolicyNotFound => StatusCode::NOT_FOUND,
            ErrorCode::BackendExists
            | ErrorCode::ConfigBackend
            | ErrorCode::InstanceExists
            | ErrorCode::PortConflict
            | ErrorCode::PortInUse => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::MaxBackendsReached
            | ErrorCode::MaxInstancesReached
            | ErrorCode::InsufficientVram
            | ErrorCode::NoFreePort => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::StateWriteFailed
            | ErrorCode::LogOpenFailed
            | ErrorCode::LogReadFailed
            | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operator API error.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "code": self.code, "timestamp": now_rfc3339()});
        (self.status(), Json(body)).into_response()
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        ApiError::new(ErrorCode::StateWriteFailed, e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let code = match &e {
            RegistryError::NotFound(_) => ErrorCode::BackendNotFound,
            RegistryError::Exists(_) => ErrorCode::BackendExists,
            RegistryError::MaxReached(_) => ErrorCode::MaxBackendsReached,
            RegistryError::ConfigOwned(_) => ErrorCode::ConfigBackend,
            RegistryError::State(_) => ErrorCode::StateWriteFailed,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<BackendSpecError> for ApiError {
    fn from(e: BackendSpecError) -> Self {
        let code = match &e {
            BackendSpecError::Url(_) => ErrorCode::InvalidUrl,
            BackendSpecError::Name(_)
            | BackendSpecError::Models(_)
            | BackendSpecError::Weight(_)
            | BackendSpecError::ApiKey(_)
            | BackendSpecError::Kind(_)
            | BackendSpecError::MaxConcurrent(_)
            | BackendSpecError::MaxRequestsPerSec(_)
            | BackendSpecError::Probes(_) => ErrorCode::ValidationError,
            BackendSpecError::Policy(_) => ErrorCode::InvalidPolicy,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<AdmitError> for ApiError {
    fn from(e: AdmitError) -> Self {
        let code = match e {
            AdmitError::Spec(e) => return e.into(),
            AdmitError::Registry(e) => return e.into(),
            AdmitError::Invalid { .. } => ErrorCode::ValidationError,
            AdmitError::PrivateAddress(_) => ErrorCode::PrivateAddressNotAllowed,
            AdmitError::Unavailable { .. } => ErrorCode::BackendUnavailable,
            AdmitError::Client(_) => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<InstanceSpecError> for ApiError {
    fn from(e: InstanceSpecError) -> Self {
        let code = match &e {
            InstanceSpecError::InvalidName(_) => ErrorCode::InvalidName,
            InstanceSpecError::InvalidModelId => ErrorCode::InvalidModelId,
            InstanceSpecError::InvalidPort(_) => ErrorCode::InvalidPort,
            InstanceSpecError::Invalid(_) => ErrorCode::ValidationError,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<PlacementError> for ApiError {
    fn from(e: PlacementError) -> Self {
        let code = match &e {
            PlacementError::UnknownGpu { .. } => ErrorCode::InvalidGpuId,
            PlacementError::InsufficientVram { .. } | PlacementError::NoGpuFits { .. } => {
                ErrorCode::InsufficientVram
            }
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        let code = match e {
            PolicyError::State(e) => return e.into(),
            PolicyError::NotFound(_) => ErrorCode::PolicyNotFound,
            PolicyError::Invalid(_) => ErrorCode::InvalidPolicy,
            PolicyError::InvalidModel => ErrorCode::ValidationError,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        let code = match e {
            KeyError::State(e) => return e.into(),
            KeyError::NotFound(_) => ErrorCode::KeyNotFound,
            KeyError::Invalid { .. } => ErrorCode::ValidationError,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> Self {
        let code = match e {
            InstanceError::Spec(e) => return e.into(),
            InstanceError::Placement(e) => return e.into(),
            InstanceError::State(e) => return e.into(),
            InstanceError::Exists(_) => ErrorCode::InstanceExists,
            InstanceError::MaxReached(_) => ErrorCode::MaxInstancesReached,
            InstanceError::NotFound(_) => ErrorCode::InstanceNotFound,
            InstanceError::TemplateNotFound(_) => ErrorCode::TemplateNotFound,
            InstanceError::PortConflict(_) => ErrorCode::PortConflict,
            InstanceError::PortInUse(_) => ErrorCode::PortInUse,
            InstanceError::NoFreePort { .. } => ErrorCode::NoFreePort,
            InstanceError::LogOpen(_) => ErrorCode::LogOpenFailed,
        };
        ApiError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_screaming_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{s}"
            );
            assert_eq!(serde_json::to_value(c).unwrap(), s);
        }
    }

    fn check(e: impl Into<ApiError>, status: u16, code: &str) {
        let e = e.into();
        assert_eq!(
            (e.status().as_u16(), e.code.as_str()),
            (status, code),
            "{e:?}"
        );
        assert!(!e.message.is_empty());
    }

    #[test]
    fn key_errors_have_their_codes() {
        check(KeyError::NotFound("k".into()), 404, "KEY_NOT_FOUND");
        check(PolicyError::NotFound("m".into()), 404, "POLICY_NOT_FOUND");
        check(
            PolicyError::Invalid(crate::models::PolicyInvalid {
                field: "lb",
                message: "unknown".into(),
            }),
            400,
            "INVALID_POLICY",
        );
        check(
            KeyError::Invalid {
                field: "name",
                message: "empty".into(),
            },
            400,
            "VALIDATION_ERROR",
        );
    }

    #[test]
    fn every_domain_error_has_its_code_and_status() {
        let state = || StateError::Write {
            path: "/x/state.toml".into(),
            source: std::io::Error::other("disk full"),
        };
        check(
            RegistryError::NotFound("b".into()),
            404,
            "BACKEND_NOT_FOUND",
        );
        check(RegistryError::Exists("b".into()), 409, "BACKEND_EXISTS");
        check(RegistryError::MaxReached(2), 422, "MAX_BACKENDS_REACHED");
        check(
            RegistryError::ConfigOwned("b".into()),
            409,
            "CONFIG_BACKEND",
        );
        check(RegistryError::State(state()), 500, "STATE_WRITE_FAILED");
        check(BackendSpecError::Url("u".into()), 400, "INVALID_URL");
        check(BackendSpecError::Name("n".into()), 400, "VALIDATION_ERROR");
        check(
            AdmitError::Spec(BackendSpecError::Url("u".into())),
            400,
            "INVALID_URL",
        );
        check(
            AdmitError::Registry(RegistryError::Exists("b".into())),
            409,
            "BACKEND_EXISTS",
        );
        check(
            AdmitError::Invalid {
                field: "tags",
                message: "m".into(),
            },
            400,
            "VALIDATION_ERROR",
        );
        check(
            AdmitError::PrivateAddress("10.0.0.1".into()),
            400,
            "PRIVATE_ADDRESS_NOT_ALLOWED",
        );
        check(
            AdmitError::Unavailable {
                url: "u".into(),
                reason: "r".into(),
            },
            503,
            "BACKEND_UNAVAILABLE",
        );
        check(AdmitError::Client("c".into()), 500, "INTERNAL");
        check(
            InstanceError::Spec(InstanceSpecError::InvalidName("A".into())),
            400,
            "INVALID_NAME",
        );
        check(InstanceSpecError::InvalidModelId, 400, "INVALID_MODEL_ID");
        check(InstanceSpecError::InvalidPort(80), 400, "INVALID_PORT");
        check(
            InstanceSpecError::Invalid("x".into()),
            400,
            "VALIDATION_ERROR",
        );
        check(
            PlacementError::UnknownGpu {
                gpu_id: 2,
                known: 2,
            },
            400,
            "INVALID_GPU_ID",
        );
        check(
            InstanceError::Placement(PlacementError::InsufficientVram {
                gpu_id: 1,
                free_bytes: 1,
                required_bytes: 2,
            }),
            422,
            "INSUFFICIENT_VRAM",
        );
        check(InstanceError::Exists("a".into()), 409, "INSTANCE_EXISTS");
        check(InstanceError::MaxReached(1), 422, "MAX_INSTANCES_REACHED");
        check(
            InstanceError::NotFound("a".into()),
            404,
            "INSTANCE_NOT_FOUND",
        );
        check(
            InstanceError::TemplateNotFound("t".into()),
            404,
            "TEMPLATE_NOT_FOUND",
        );
        check(InstanceError::PortConflict(1), 409, "PORT_CONFLICT");
        check(InstanceError::PortInUse(1), 409, "PORT_IN_USE");
        check(
            InstanceError::NoFreePort { lo: 1, hi: 2 },
            422,
            "NO_FREE_PORT",
        );
        check(
            InstanceError::LogOpen(std::io::Error::other("x")),
            500,
            "LOG_OPEN_FAILED",
        );
        check(InstanceError::State(state()), 500, "STATE_WRITE_FAILED");
    }
}
