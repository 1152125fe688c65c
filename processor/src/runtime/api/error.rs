//! The API's errors: an HTTP status, a machine-readable code and a message that says what to
//! do, as `{"code": "...", "message": "..."}`. Every refusal the API gives is made here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::id::InstanceId;
use crate::requests::Refusal;

/// An API error: status, machine-readable code, and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

/// What a handler answers.
pub type ApiResult = Result<(StatusCode, Json<Value>), ApiError>;

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// 400 `bad_query`: the query string asks for something this endpoint does not take.
    pub fn bad_query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", message)
    }

    /// 400 `bad_body`: the body cannot be read as this request.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_body", message)
    }

    /// 401 `unauthenticated`: no usable bearer token where one is needed.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 403 `forbidden` for what only admins may do.
    pub fn admins_only(what: &str, admin_role: &str) -> Self {
        Self::forbidden(format!("{what} is for admins (role {admin_role:?})"))
    }

    /// 404 `not_found` for an instance that does not exist or that the caller may not read
    /// (the two are not told apart).
    pub fn no_instance(id: &InstanceId) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no instance {id}: start it first, or check the name and key (and that you may read it)"),
        )
    }

    /// 404 `not_found` for anything else.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `wrong_status`: the instance's status does not allow this now.
    pub fn wrong_status(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "wrong_status", message)
    }

    /// 409 with its own code: the deployment or the data does not allow this.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 413 `too_large`: larger than the largest event accepted.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request is larger than the largest event accepted, {limit} bytes (DURABLE_MAX_EVENT_BYTES)"),
        )
    }

    /// 500 `corrupt_state`: a stored record cannot be read.
    pub fn corrupt_state(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt_state", message)
    }

    /// 503 `store_unavailable`.
    pub fn store_unavailable(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("{e}; retry later"))
    }

    /// 503 `kafka_unavailable`.
    pub fn kafka_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "code": self.code, "message": self.message }))).into_response()
    }
}

/// A refusal of [`crate::requests::read`] with its code: 404 for a name not registered, else 400.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = if r.code == "not_registered" { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
        ApiError::new(status, r.code, r.message)
    }
}
