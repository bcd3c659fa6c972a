//! Each service's OpenAPI 3.1 document, generated from the code: the routes
//! carry `#[utoipa::path]` annotations next to their handlers, the request
//! and response bodies derive their schemas from the very types that
//! (de)serialize them, and each service serves its own document at
//! `GET /openapi.json` (no token needed).
//!
//! What shared filters answer is added here once rather than repeated on
//! every route, because it is produced in one place too: `401` (with
//! `WWW-Authenticate: Bearer`) on every route that takes a token
//! ([`crate::auth`]), and `400`, `408`, `413` and `415` on every route with a JSON
//! body ([`super::json_body`]). Every error body is [`ErrorBody`].

use super::error::ErrorBody;
use std::sync::Arc;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, InfoBuilder, Ref, RefOr};
use utoipa::OpenApi;
use warp::http::header::{HeaderValue, CONTENT_TYPE};
use warp::{Filter, Rejection, Reply};

/// Name of the bearer-token security scheme the routes' annotations use.
pub const BEARER: &str = "bearer";

/// The services that serve a document, by the name [`super::serve`] gets.
pub const SERVICES: [&str; 4] = ["order", "product", "payment", "gateway"];

/// What every service answers: metrics and this document (health and
/// readiness are [`super::health::HealthApi`]).
#[derive(OpenApi)]
#[openapi(
    paths(super::metrics_route, openapi_json),
    components(schemas(ErrorBody))
)]
struct OperationsApi;

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "The service's OpenAPI 3.1 document.",
               body = Value, content_type = "application/json"))
)]
fn openapi_json(body: &Arc<str>) -> warp::reply::Response {
    let mut response = body.to_string().into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The OpenAPI document of `service` (one of [`SERVICES`]), as served.
pub fn document(service: &str) -> Option<serde_json::Value> {
    let mut doc = serde_json::to_value(assemble(service)?).ok()?;
    spell_links(&mut doc);
    Some(doc)
}

/// utoipa 5.5 writes a Link object's fields in snake case (`operation_id`);
/// OpenAPI spells them in camel case, and tools ignore or refuse the other
/// spelling (schemathesis reports such links as invalid).
fn spell_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation["responses"].as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.to_owned(), value);
            }
        }
    }
}

/// The document of `service` as utoipa builds it.
fn assemble(service: &str) -> Option<utoipa::openapi::OpenApi> {
    let (routes, description) = match service {
        "order" => (
            super::order::OrderApi::openapi().merge_from(super::admin::AdminApi::openapi()),
            "Places orders (each one carried by a saga over Kafka to CONFIRMED or \
             REJECTED), reads them, and lets operators see the sagas.",
        ),
        "product" => (
            super::product::ProductApi::openapi(),
            "The catalogue and its stock: public reads, admin writes.",
        ),
        "payment" => (
            utoipa::openapi::OpenApi::default(),
            "The simulated card processor. It takes its work from Kafka \
             (`payment-commands`, see docs/asyncapi.json); over HTTP it answers \
             only operators and probes.",
        ),
        "gateway" => (
            super::storefront::StorefrontApi::openapi(),
            "Serves the storefront page, and pushes order status changes to \
             WebSocket clients at `GET /ws` (that protocol is described in the \
             README, section \"WebSocket protocol\", not here).",
        ),
        _ => return None,
    };
    let mut doc = OperationsApi::openapi();
    doc.merge(super::health::HealthApi::openapi());
    doc.merge(routes);
    doc.info = InfoBuilder::new()
        .title(format!("shop {service} service"))
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(format!(
            "{description}\n\nErrors are always JSON, `{{\"error\": code, \"message\": text}}`. \
             Tokens are JWTs (HS256, RS256 or ES256) with `sub` (the customer), `role` \
             (`customer` or `admin`) and `exp`."
        )))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        BEARER.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "`Authorization: Bearer <token>`; `shop token --customer ID [--admin]` \
                     prints one.",
                ))
                .build(),
        ),
    );
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            add_shared_errors(operation);
        }
    }
    Some(doc)
}

/// Adds the answers of the shared filters an operation goes through.
fn add_shared_errors(operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, response: ResponseBuilder| {
        responses
            .entry(status.to_owned())
            .or_insert(RefOr::T(response.build()));
    };
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        let challenge = HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String))
            .description(Some("`Bearer`"))
            .build();
        add(
            "401",
            error("No token, or an expired, malformed or wrongly signed one.")
                .header("www-authenticate", challenge),
        );
    }
    if operation.request_body.is_some() {
        add(
            "400",
            error("The body is not JSON, or not of the documented shape."),
        );
        add(
            "408",
            error("The body did not arrive within `HTTP_BODY_TIMEOUT_SECONDS`."),
        );
        add("413", error("The body is larger than 64 KiB."));
        add("415", error("The body is not sent as `application/json`."));
    }
}

/// A response with an [`ErrorBody`].
fn error(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
    )
}

/// `GET /openapi.json` for `service`: the document is built once, here.
pub fn route(
    service: &str,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let body: Option<Arc<str>> = document(service).map(|doc| Arc::from(doc.to_string()));
    warp::path!("openapi.json")
        .and(warp::get())
        .and_then(move || {
            let body = body.clone();
            async move {
                match body {
                    Some(body) => Ok(openapi_json(&body)),
                    None => Err(warp::reject::not_found()),
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_a_3_1_document() {
        for service in SERVICES {
            let json = document(service).expect("a document");
            assert!(
                json["openapi"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("3.1.")),
                "{service}: {}",
                json["openapi"]
            );
            for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
                assert!(json["paths"][path]["get"].is_object(), "{service} {path}");
            }
        }
        assert!(document("nonsense").is_none());
    }

    #[test]
    fn routes_with_a_token_document_401_and_json_bodies_415() {
        let json = document("product").expect("a document");
        let create = &json["paths"]["/products"]["post"];
        for status in ["401", "400", "408", "413", "415", "422"] {
            assert_eq!(
                create["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "POST /products {status}"
            );
        }
        // Public reads take no token, so they cannot answer 401.
        assert!(json["paths"]["/products"]["get"]["responses"]["401"].is_null());
        assert_eq!(
            json["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn links_are_spelled_as_openapi_spells_them() {
        let json = document("order").expect("a document");
        let link = &json["paths"]["/orders"]["post"]["responses"]["202"]["links"]["getOrder"];
        assert_eq!(link["operationId"], "getOrder", "{link}");
        assert_eq!(link["parameters"]["id"], "$response.body#/order_id");
        assert!(link.get("operation_id").is_none(), "{link}");
        assert!(json["paths"]["/orders/{id}"]["get"]["operationId"] == "getOrder");
    }

    #[test]
    fn documented_bounds_are_the_validated_ones() {
        use shop_actors::order::model::{MAX_LINES, MAX_QUANTITY};
        use shop_actors::product::model::MAX_STOCK;
        let product = document("product").expect("a document");
        let schemas = &product["components"]["schemas"];
        assert_eq!(
            schemas["NewProduct"]["properties"]["stock"]["maximum"],
            MAX_STOCK
        );
        assert_eq!(
            schemas["SetStock"]["properties"]["stock"]["maximum"],
            MAX_STOCK
        );
        let order = document("order").expect("a document");
        let schemas = &order["components"]["schemas"];
        assert_eq!(
            schemas["PlaceOrder"]["properties"]["items"]["maxItems"],
            MAX_LINES
        );
        assert_eq!(
            schemas["ItemInput"]["properties"]["quantity"]["maximum"],
            MAX_QUANTITY
        );
        let grace = order["paths"]["/admin/sagas/stuck"]["get"]["parameters"]
            .as_array()
            .and_then(|params| params.iter().find(|p| p["name"] == "grace_seconds"))
            .expect("grace_seconds is documented");
        assert_eq!(
            grace["schema"]["maximum"].as_f64(),
            Some(super::super::admin::MAX_GRACE_SECONDS)
        );
    }
}
