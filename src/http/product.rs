//! Routes of the product service: the catalogue (read cache-aside through
//! Redis) and the two writes, creating a product and setting its stock.

use super::error::{ApiError, ErrorBody};
use super::json_body;
use serde::Deserialize;
use shop_actors::product::model::validate_stock;
use shop_actors::product::model::Product;
use shop_actors::product::{Catalog, NewProduct};
use std::collections::HashMap;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// Most ids one `GET /products?ids=` may ask for.
const MAX_IDS: usize = 100;

/// The product service's part of its OpenAPI document (`GET /openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, get, create, set_stock))]
pub struct ProductApi;

/// Body of `PUT /products/{id}/stock`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetStock {
    /// The new absolute stock level, 0 to 1000000000.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    stock: i32,
}

/// Every product-service route.
pub fn routes(
    catalog: Catalog,
    auth: crate::auth::Authenticator,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let with_catalog = warp::any().map(move || catalog.clone());
    // Reads are public (a storefront shows the catalogue to anyone);
    // writes need an admin token, checked before the body is read.
    let admin = crate::auth::admin(auth).map(|_| ()).untuple_one();
    let list = warp::path!("products")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_catalog.clone())
        .and_then(list);
    let get = warp::path!("products" / Uuid)
        .and(warp::get())
        .and(with_catalog.clone())
        .and_then(get);
    let create = warp::path!("products")
        .and(warp::post())
        .and(admin.clone())
        .and(json_body::<NewProduct>())
        .and(with_catalog.clone())
        .and_then(create);
    let set_stock = warp::path!("products" / Uuid / "stock")
        .and(warp::put())
        .and(admin)
        .and(json_body::<SetStock>())
        .and(with_catalog)
        .and_then(set_stock);
    list.or(get)
        .unify()
        .or(create)
        .unify()
        .or(set_stock)
        .unify()
}

/// The catalogue, or the products named in `ids` (public).
#[utoipa::path(
    get,
    path = "/products",
    operation_id = "listProducts",
    tag = "products",
    params(
        ("ids" = Option<String>, Query,
         pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(,[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})*$",
         description = "Comma-separated product ids (at most 100); unknown ids are left out."),
    ),
    responses(
        (status = 200, description = "The products.", body = Vec<Product>),
        (status = 400, description = "An id is not a UUID, or more than 100 ids.", body = ErrorBody),
        (status = 503, description = "Postgres is unavailable.", body = ErrorBody),
    )
)]
async fn list(
    query: HashMap<String, String>,
    catalog: Catalog,
) -> Result<warp::reply::Response, Rejection> {
    let products = match query.get("ids") {
        None => catalog.list().await.map_err(ApiError::from)?,
        Some(ids) => {
            let ids = ids
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    Uuid::parse_str(s.trim())
                        .map_err(|_| ApiError::BadRequest(format!("ids: {s:?} is not a UUID")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if ids.len() > MAX_IDS {
                return Err(ApiError::BadRequest(format!("ids: at most {MAX_IDS} at once")).into());
            }
            catalog.get_many(&ids).await.map_err(ApiError::from)?
        }
    };
    Ok(warp::reply::json(&products).into_response())
}

/// One product with its current stock (public).
#[utoipa::path(
    get,
    path = "/products/{id}",
    operation_id = "getProduct",
    tag = "products",
    params(("id" = Uuid, Path, description = "The product id.")),
    responses(
        (status = 200, description = "The product.", body = Product),
        (status = 404, description = "No such product.", body = ErrorBody),
        (status = 503, description = "Postgres is unavailable.", body = ErrorBody),
    )
)]
async fn get(id: Uuid, catalog: Catalog) -> Result<warp::reply::Response, Rejection> {
    match catalog.get(id).await.map_err(ApiError::from)? {
        Some(product) => Ok(warp::reply::json(&product).into_response()),
        None => Err(ApiError::NotFound(format!("product {id} does not exist")).into()),
    }
}

/// Create a product (admin).
#[utoipa::path(
    post,
    path = "/products",
    operation_id = "createProduct",
    tag = "products",
    security(("bearer" = [])),
    request_body = NewProduct,
    responses(
        (status = 201, description = "Created.", body = Product,
         headers(("location" = String, description = "`/products/{id}`")),
         links(
             ("getProduct" = (operation_id = "getProduct",
                              parameters(("id" = "$response.body#/id")))),
             ("setStock" = (operation_id = "setStock",
                            parameters(("id" = "$response.body#/id")))),
         )),
        (status = 403, description = "The token is not an admin's.", body = ErrorBody),
        (status = 409, description = "A product with this SKU exists.", body = ErrorBody),
        (status = 422, description = "A field is out of range; the message names it.", body = ErrorBody),
        (status = 503, description = "Postgres is unavailable; nothing was written.", body = ErrorBody),
    )
)]
async fn create(product: NewProduct, catalog: Catalog) -> Result<warp::reply::Response, Rejection> {
    product.validate().map_err(ApiError::Validation)?;
    let created = catalog.create(product).await.map_err(ApiError::from)?;
    let location = format!("/products/{}", created.id);
    let reply = warp::reply::with_status(warp::reply::json(&created), StatusCode::CREATED);
    Ok(warp::reply::with_header(reply, "location", location).into_response())
}

/// Set a product's stock (admin).
#[utoipa::path(
    put,
    path = "/products/{id}/stock",
    operation_id = "setStock",
    tag = "products",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The product id.")),
    request_body = SetStock,
    responses(
        (status = 200, description = "The restocked product.", body = Product),
        (status = 403, description = "The token is not an admin's.", body = ErrorBody),
        (status = 404, description = "No such product.", body = ErrorBody),
        (status = 422, description = "`stock` is out of range.", body = ErrorBody),
        (status = 503, description = "Postgres is unavailable; nothing was written.", body = ErrorBody),
    )
)]
async fn set_stock(
    id: Uuid,
    body: SetStock,
    catalog: Catalog,
) -> Result<warp::reply::Response, Rejection> {
    validate_stock(body.stock).map_err(ApiError::Validation)?;
    match catalog
        .set_stock(id, body.stock)
        .await
        .map_err(ApiError::from)?
    {
        Some(product) => Ok(warp::reply::json(&product).into_response()),
        None => Err(ApiError::NotFound(format!("product {id} does not exist")).into()),
    }
}
