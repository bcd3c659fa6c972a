//! The one place where failures become HTTP responses: every error any
//! route can produce, and warp's own rejections, turn into
//! `{"error": code, "message": text}` with the right status.

use serde::Serialize;
use shop_actors::order::idempotency::PlaceError;
use shop_actors::order::OrderError;
use shop_actors::product::CatalogError;
use std::convert::Infallible;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

/// An error a handler reports to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is syntactically wrong (bad JSON, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// The body is JSON but not the shape the route expects.
    #[error("{0}")]
    MalformedJson(String),
    /// The request is well-formed but its content is invalid.
    #[error("{0}")]
    Validation(String),
    /// The request names a product that does not exist.
    #[error("{0}")]
    UnknownProduct(String),
    /// The resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with existing data.
    #[error("{0}")]
    Conflict(String),
    /// The body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A dependency is down; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The `Idempotency-Key` was first used with a different request body.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// A request with the same `Idempotency-Key` is still being processed.
    #[error("{0}")]
    RequestInProgress(String),
    /// No valid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// The body is larger than the services take.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body did not arrive within the server's body timeout.
    #[error("{0}")]
    RequestTimeout(String),
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::UnknownProduct(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_product"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::IdempotencyKeyReused(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::RequestInProgress(_) => (StatusCode::CONFLICT, "request_in_progress"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Conflict(message) => ApiError::Conflict(message),
            CatalogError::Unavailable(message) => ApiError::Unavailable(message),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Invalid(message) => ApiError::Validation(message),
            OrderError::UnknownProduct(_) => ApiError::UnknownProduct(e.to_string()),
            OrderError::Unavailable(message) => ApiError::Unavailable(message),
        }
    }
}

impl From<PlaceError> for ApiError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::Order(e) => e.into(),
            PlaceError::KeyReused => ApiError::IdempotencyKeyReused(e.to_string()),
            PlaceError::InProgress => ApiError::RequestInProgress(e.to_string()),
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code: `bad_request`, `malformed_json`,
    /// `validation_failed`, `unknown_product`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `request_in_progress`,
    /// `idempotency_key_reused`, `unsupported_media_type`,
    /// `payload_too_large`, `unavailable`, …
    #[schema(example = "validation_failed")]
    pub error: &'static str,
    /// What went wrong, for a human.
    #[schema(example = "items must not be empty")]
    pub message: String,
}

/// Builds an error response.
pub fn error_response(
    status: StatusCode,
    error: &'static str,
    message: String,
) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(&ErrorBody { error, message }), status)
        .into_response()
}

/// Turns any rejection into a JSON error response.
pub async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, code, message) = classify(&rejection);
    if status.is_client_error() {
        tracing::debug!(%status, code, %message, "request refused");
    }
    let mut response = error_response(status, code, message);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            warp::http::header::WWW_AUTHENTICATE,
            warp::http::HeaderValue::from_static("Bearer"),
        );
    }
    Ok(response)
}

/// The status, code and message a rejection is answered with.
fn classify(rejection: &Rejection) -> (StatusCode, &'static str, String) {
    use warp::reject::*;
    if let Some(e) = rejection.find::<ApiError>() {
        let (status, code) = e.status_and_code();
        if status.is_server_error() {
            tracing::warn!(%status, error = %e, "request failed");
        }
        (status, code, e.to_string())
    } else if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such resource".into(),
        )
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        (
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!(
                "request body is not valid: {}",
                std::error::Error::source(e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string())
            ),
        )
    } else if rejection.find::<UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json".into(),
        )
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {} bytes", super::MAX_BODY),
        )
    } else if rejection.find::<InvalidQuery>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid query string".into(),
        )
    // Before MethodNotAllowed: warp reports a header it cannot decode on the
    // matching route alongside the other routes' "wrong method", and the
    // header is what is wrong.
    } else if let Some(e) = rejection.find::<MissingHeader>() {
        (StatusCode::BAD_REQUEST, "bad_request", e.to_string())
    } else if let Some(e) = rejection.find::<InvalidHeader>() {
        (StatusCode::BAD_REQUEST, "bad_request", e.to_string())
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this resource".into(),
        )
    } else if let Some(e) = rejection.find::<warp::filters::cors::CorsForbidden>() {
        // A preflight asking for a method or header the services do not take.
        (StatusCode::FORBIDDEN, "forbidden", e.to_string())
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error".into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rejection no route is meant to produce.
    #[derive(Debug)]
    struct Unforeseen;

    impl warp::reject::Reject for Unforeseen {}

    #[test]
    fn a_rejection_nobody_foresaw_is_a_500_that_says_nothing_of_it() {
        let (status, code, message) = classify(&warp::reject::custom(Unforeseen));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(code, "internal");
        assert_eq!(message, "internal error");
    }

    #[test]
    fn an_api_error_keeps_its_own_status_and_code() {
        let rejection = warp::reject::custom(ApiError::NotFound("no order 7".into()));
        let (status, code, message) = classify(&rejection);
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(code, "not_found");
        assert_eq!(message, "no order 7");
    }
}
