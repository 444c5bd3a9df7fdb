//! The OpenAPI 3.1 document, `GET /api/openapi.json`: generated from the handlers'
//! `#[utoipa::path]` annotations and the typed bodies of `api/types.rs`. The router
//! and the document are built from the same `routes!()` list ([`crate::api::api_router`]),
//! so a route cannot be served without being described.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

pub use crate::http_error::{ErrorBody, ErrorDetail};

/// The answers every operation that needs a token can give besides its own, listed once:
/// `responses(..., TokenOrServer)` in each `#[utoipa::path]`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its description is used: the document's responses
pub enum TokenOrServer {
    /// No token, or an unknown or revoked one (`token_required`, `token_invalid`)
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The server failed (`internal`); details in its log
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// The answers of an operation that needs the container engine and writes to the data
/// directory, listed once.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its description is used: the document's responses
pub enum EngineAndDisk {
    /// The container engine does not answer (`docker_unavailable`)
    #[response(status = 503)]
    EngineUnavailable(ErrorBody),
    /// The data directory is full (`insufficient_storage`)
    #[response(status = 507)]
    DiskFull(ErrorBody),
}

/// The name of the bearer token security scheme.
pub const BEARER: &str = "bearer";

/// The extension on every operation telling who may call it: `public` (no token),
/// `user` (any token; a plain user sees and changes only its own), `owner` (the project's
/// owner or an admin; others get 404, as for a project that does not exist), `admin`.
pub const ACCESS_EXTENSION: &str = "x-eserveless-access";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "eserveless API",
        description = "The management API of an eserveless server. Every route but `/api/openapi.json` needs an API token \
                       (`Authorization: Bearer TOKEN`; the first admin's is in `<data-dir>/admin-token`). Errors answer \
                       `{\"error\": {\"code\", \"message\"}}` with the status documented per operation. Who may call an \
                       operation is in its `x-eserveless-access` extension: `public`, `user` (any token), `owner` (the \
                       project's owner or an admin; others see 404), `admin`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerScheme),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "users", description = "Who the caller is; users (admins only)"),
        (name = "tokens", description = "API tokens"),
        (name = "projects", description = "Deploy (from git or an upload), list, show and remove projects"),
        (name = "deployments", description = "A project's deployment history and rollback"),
        (name = "functions", description = "A live function's logs and cron runs"),
        (name = "secrets", description = "A project's secrets (names only, never values) and its invoke key"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token: `eserveless login`, `POST /api/tokens`, or `<data-dir>/admin-token`."))
                    .build(),
            ),
        );
    }
}

/// The body of `POST /api/projects/{name}/uploads`: a gzip-compressed tar, any bytes on the wire.
pub struct TarGz;

impl PartialSchema for TarGz {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_media_type("application/gzip")
            .description(Some("The directory as a gzip-compressed tar (what `eserveless deploy DIR` sends)"))
            .into()
    }
}

impl ToSchema for TarGz {}

/// The rendered document.
static DOC: OnceLock<String> = OnceLock::new();

/// Keeps the document the router was built with, rendered: the handler serves it without
/// building a second router and document (which costs several MB of the allocator's heap).
pub(super) fn keep(doc: &utoipa::openapi::OpenApi) {
    DOC.get_or_init(|| doc.to_pretty_json().expect("the OpenAPI document serializes"));
}

/// The document, rendered once.
fn document_json() -> &'static str {
    DOC.get_or_init(|| crate::api::openapi().to_pretty_json().expect("the OpenAPI document serializes"))
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    security(()),
    extensions(("x-eserveless-access" = json!("public"))),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub(super) async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document_json()).into_response()
}
