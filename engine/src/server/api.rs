//! The HTTP API: routes, their roles, JSON errors, the OpenAPI document.
//!
//! Every route but `/healthz` needs a bearer token; each names the least
//! role it needs in its OpenAPI tag (`viewer`, `operator`, `admin`, or
//! `server-admin`). Every error is JSON `{"error": kind, "message": text}`
//! with a 4xx status for anything the client sent; bodies are read with a
//! cap and parsed by hand, so no framework rejection answers in another
//! shape. A tenant's data is reached only through the tenant its token
//! names: an id of another tenant's run or bundle is simply not found.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{OpenApi, ToSchema};

use super::auth::{Caller, Role, Scope};
use super::{Server, StartError, Tenant, session};
use crate::model::RunStatus;
use crate::runner::describe::StepView;
use crate::runner::detail::{self, DetailError};
use crate::runner::retention::RunsGcReport;
use crate::runner::{Launch, Resumption, RunError};
use crate::store::{JournalEvent, JournalMark, RunId, RunRecord};

/// Largest JSON body of any route but the bundle upload.
const MAX_JSON_BODY: usize = 64 << 10;

/// An answer that is not a success.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer cairn_…); \
             get one from the server's admin (`cairn token create`)",
        )
    }

    fn forbidden(needed: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs a token with the {needed} role"),
        )
    }

    fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn quota(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "quota", message)
        }
    }

    fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!("{message}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the server failed: {message}"),
        )
    }
}

/// The error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `unauthorized`, `forbidden`, `not_found`, `bad_request`, `conflict`,
    /// `too_large`, `invalid`, `quota` or `internal`.
    pub error: String,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: self.kind.to_owned(),
            message: self.message,
        });
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

type Shared = State<Arc<Server>>;

/// The caller behind the request's bearer token, or else its session
/// cookie (whose CSRF token [`csrf_guard`] has checked already).
fn caller(server: &Server, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if !headers.contains_key(header::AUTHORIZATION) {
        return session::session_caller(
            &server.sessions,
            &server.tokens,
            &axum::http::Method::GET,
            headers,
            (server.clock)(),
        )
        .ok()
        .flatten()
        .ok_or_else(ApiError::unauthorized);
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(ApiError::unauthorized)?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(ApiError::unauthorized)?;
    server
        .tokens
        .authenticate(token.trim(), (server.clock)())
        .map_err(|_| ApiError::unauthorized())
}

/// The caller's tenant, if its role is at least `needed`.
fn tenant_for(
    server: &Server,
    headers: &HeaderMap,
    needed: Role,
) -> Result<(Caller, Arc<Tenant>), ApiError> {
    let caller = caller(server, headers)?;
    let Scope::Tenant(name) = &caller.scope else {
        return Err(ApiError::forbidden(
            "tenant (a server-wide admin token manages tokens only)",
        ));
    };
    if caller.role < needed {
        return Err(ApiError::forbidden(needed.as_str()));
    }
    // A token outlives a tenant taken out of the config: then nothing.
    let tenant = server
        .tenants
        .get(name)
        .ok_or_else(ApiError::unauthorized)?;
    Ok((caller, tenant))
}

/// How much of a body past its cap is read and thrown away, so a client
/// still sending sees the 413 rather than a reset connection; a body larger
/// still is cut off.
const DRAIN: usize = 16 << 20;

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    Broken(String),
}

/// A request body, at most `cap` bytes of it kept.
async fn read_capped(body: Body, cap: usize) -> Result<Bytes, BodyError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut over = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        if over == 0 && kept.len() + chunk.len() <= cap {
            kept.extend_from_slice(&chunk);
        } else {
            over += chunk.len();
            if over > DRAIN {
                break;
            }
        }
    }
    if over > 0 {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::from(kept))
}

/// A JSON body, read with a cap and parsed into `T`.
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = read_capped(body, MAX_JSON_BODY)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a request body is at most {MAX_JSON_BODY} bytes"),
            ),
            BodyError::Broken(why) => ApiError::bad_request(format!("the body broke off: {why}")),
        })?;
    let bytes = if bytes.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("the body is not the JSON this route takes: {e}"),
        )
    })
}

/// A run id as given in a path: 16 hex digits exactly (no prefixes over
/// the API: a prefix is a guess).
fn run_id(text: &str) -> Result<RunId, ApiError> {
    if text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(RunId(text.to_ascii_lowercase()))
    } else {
        Err(ApiError::not_found("run"))
    }
}

fn find_run(tenant: &Tenant, text: &str) -> Result<RunRecord, ApiError> {
    let id = run_id(text)?;
    match tenant.runner.store().run(&id) {
        Ok(Some(record)) if record.id == id => Ok(record),
        Ok(_) => Err(ApiError::not_found("run")),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// `work` on a blocking thread: reading journals and stored results (a
/// journal can be tens of MB) must not hold up the server's async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
}

/// A run's journal, read on a blocking thread.
async fn journal(tenant: &Tenant, record: &RunRecord) -> Result<Vec<JournalEvent>, ApiError> {
    let (store, run) = (tenant.runner.store().clone(), record.id.clone());
    blocking(move || store.journal(&run).map_err(ApiError::internal)).await
}

/// The answer for a run that could not be started.
fn start_error(e: StartError) -> ApiError {
    match e {
        StartError::Queue { .. } => ApiError::quota(e.to_string()),
        StartError::Stopping => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
        StartError::Removed => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        StartError::Run(e) => run_error(e),
    }
}

/// A bundle id: 64 hex digits.
fn bundle_id(text: &str) -> Result<String, ApiError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(ApiError::not_found("bundle"))
    }
}

/// The statuses and kinds a run error answers with.
fn run_error(e: RunError) -> ApiError {
    match &e {
        RunError::Refused { denials, .. } => {
            let reasons: Vec<String> = denials
                .iter()
                .map(|d| match &d.step {
                    Some(step) => format!("step `{step}`: {}", d.message),
                    None => d.message.clone(),
                })
                .collect();
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused",
                format!("{e}: {}", reasons.join("; ")),
            )
        }
        RunError::Invalid { errors, .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("{e}: {errors}"),
        ),
        RunError::Manifest(_) | RunError::Bundle { .. } | RunError::Changed(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
        }
        RunError::PolicyMismatch { .. } | RunError::PolicyUnavailable { .. } => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        RunError::UnknownRun { .. } | RunError::BadRunId(_) | RunError::NoRuns { .. } => {
            ApiError::not_found("run")
        }
        _ => ApiError::internal(e),
    }
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Is the server up? Answers without a token and says nothing else.
#[utoipa::path(get, path = "/healthz", tag = "public",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "viewer",
    responses((status = 200, description = "the OpenAPI document"), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn openapi(State(server): Shared, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    caller(&server, &headers)?;
    Ok(Json(document()))
}

/// The OpenAPI document as JSON.
pub fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes")
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// The tenant the token is for; leave out for a server-wide admin token
    /// (server-wide admins only). A tenant admin may name only its own.
    pub tenant: Option<String>,
    pub role: Role,
    /// How long the token is good for, e.g. `30d`, `12h`; leave out for no expiry.
    pub expires: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    pub id: String,
    /// The token itself; shown only this once.
    pub token: String,
    pub tenant: Option<String>,
    pub role: Role,
    pub expires_ms: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub tenant: Option<String>,
    pub role: Role,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked: bool,
}

/// The tenant an admin may manage tokens of: any (server-wide admin) or
/// its own.
fn token_admin(server: &Server, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = caller(server, headers)?;
    if caller.role < Role::Admin {
        return Err(ApiError::forbidden("admin"));
    }
    Ok(caller)
}

/// Create a token (printed once; only its keyed hash is kept).
#[utoipa::path(post, path = "/v1/tokens", tag = "admin", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(server): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let caller = token_admin(&server, &headers)?;
    let request: NewToken = json_body(body).await?;
    let tenant = match (&caller.scope, request.tenant) {
        (Scope::Server, tenant) => tenant,
        (Scope::Tenant(own), None) => Some(own.clone()),
        (Scope::Tenant(own), Some(named)) if &named == own => Some(named),
        (Scope::Tenant(_), Some(_)) => return Err(ApiError::forbidden("server-wide admin")),
    };
    if let Some(name) = &tenant
        && server.tenants.get(name).is_none()
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!(
                "no tenant {name:?} on this server (tenants: {})",
                server.tenants.names().join(", ")
            ),
        ));
    }
    let now = (server.clock)();
    let expires_ms = match request.expires.as_deref() {
        None => None,
        Some(text) => {
            let age = crate::sandbox::limits::parse_age(text).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    format!("expires: {e}"),
                )
            })?;
            Some(now.saturating_add(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)))
        }
    };
    let (entry, token) = server
        .tokens
        .create(tenant.clone(), request.role, expires_ms, now)
        .map_err(ApiError::internal)?;
    let audited = tenant.as_ref().and_then(|t| server.tenants.get(t));
    server.audit(
        audited.as_deref(),
        &caller,
        "tokens.create",
        &entry.id,
        "created",
    );
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: entry.id,
            token,
            tenant: entry.tenant,
            role: entry.role,
            expires_ms: entry.expires_ms,
        }),
    ))
}

/// The tokens an admin manages (never the tokens themselves).
#[utoipa::path(get, path = "/v1/tokens", tag = "admin",
    responses((status = 200, body = Vec<TokenView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(server): Shared,
    headers: HeaderMap,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let caller = token_admin(&server, &headers)?;
    let tenant = match &caller.scope {
        Scope::Server => None,
        Scope::Tenant(own) => Some(own.as_str()),
    };
    Ok(Json(
        server
            .tokens
            .list(tenant)
            .into_iter()
            .map(|e| TokenView {
                id: e.id,
                tenant: e.tenant,
                role: e.role,
                created_ms: e.created_ms,
                expires_ms: e.expires_ms,
                revoked: e.revoked,
            })
            .collect(),
    ))
}

/// Revoke a token at once.
#[utoipa::path(post, path = "/v1/tokens/{id}/revoke", tag = "admin",
    params(("id" = String, Path, description = "the token's id")),
    responses((status = 200, description = "revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = token_admin(&server, &headers)?;
    let tenant = match &caller.scope {
        Scope::Server => None,
        Scope::Tenant(own) => Some(own.clone()),
    };
    let revoked = server
        .tokens
        .revoke(&id, tenant.as_deref())
        .map_err(ApiError::internal)?;
    let audited = tenant.as_ref().and_then(|t| server.tenants.get(t));
    server.audit(
        audited.as_deref(),
        &caller,
        "tokens.revoke",
        &id,
        if revoked { "revoked" } else { "not found" },
    );
    if !revoked {
        return Err(ApiError::not_found("token"));
    }
    Ok(Json(json!({"id": id, "revoked": true})))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BundleView {
    pub id: String,
    pub pipeline: String,
    pub size: u64,
    pub steps: usize,
    pub uploaded_ms: u64,
    /// The id of the token that pushed it (`cairn token list` names it).
    #[serde(default)]
    pub pushed_by: Option<String>,
    /// The public keys of its valid signatures (hex ed25519).
    #[serde(default)]
    pub signers: Vec<String>,
    /// Each step's granted capabilities, by step name (steps with none
    /// left out).
    #[serde(default)]
    pub capabilities: BTreeMap<String, Vec<String>>,
}

/// Upload a bundle (`cairn bundle pack`): verified, planned and checked
/// against the tenant's policy before anything is stored; stored by its
/// content hash.
#[utoipa::path(post, path = "/v1/bundles", tag = "operator",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = BundleView), (status = 200, body = BundleView, description = "already stored"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload_bundle(
    State(server): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BundleView>), ApiError> {
    let (caller, tenant) = match tenant_for(&server, &headers, Role::Operator) {
        Ok(found) => found,
        Err(e) => {
            // Read (and drop) what the client is still sending, so that it
            // sees the refusal rather than a reset connection.
            let _ = read_capped(body, 0).await;
            return Err(e);
        }
    };
    let limit = tenant.quotas.upload.bytes();
    let outcome = match tenant.uploads.clone().try_acquire_owned() {
        Ok(_upload) => store_bundle(&server, &tenant, &caller.token_id, body, limit).await,
        Err(_) => {
            let _ = read_capped(body, 0).await;
            Err(ApiError::quota(format!(
                "this tenant already has {} bundle uploads in flight (its uploads_in_flight quota); send this one when one of them is done",
                tenant.quotas.uploads_in_flight
            )))
        }
    };
    let (target, result) = match &outcome {
        Ok((_, view)) => (view.id.clone(), "stored".to_owned()),
        Err(e) => (
            "-".to_owned(),
            format!("refused ({}): {}", e.status.as_u16(), e.message),
        ),
    };
    server.audit(Some(&tenant), &caller, "bundles.upload", &target, &result);
    outcome.map(|(status, view)| (status, Json(view)))
}

async fn store_bundle(
    server: &Server,
    tenant: &Tenant,
    pusher: &str,
    body: Body,
    limit: u64,
) -> Result<(StatusCode, BundleView), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the upload is over this tenant's limit of {}",
                tenant.quotas.upload
            ),
        )
    };
    // Read with the cap: what is past it is not kept (and past a bound not
    // even read).
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let bytes = read_capped(body, cap).await.map_err(|e| match e {
        BodyError::TooLarge => too_large(),
        BodyError::Broken(why) => ApiError::bad_request(format!("the upload broke off: {why}")),
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty; send the bundle file's bytes (`cairn bundle pack`)",
        ));
    }
    // Unpacking and planning (which compiles the components) take memory
    // and CPU: a few at a time over the whole server.
    let _checking = server
        .checking
        .acquire()
        .await
        .map_err(ApiError::internal)?;
    let bundle = crate::bundle::Bundle::read(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("the bundle is refused: {e}"),
        )
    })?;
    let id = bundle.id.to_hex().to_string();
    drop(bundle);
    let dir = tenant.bundles_dir();
    let meta_path = dir.join(format!("{id}.json"));
    let _storing = tenant.storing.lock().await;
    if let Some(view) = read_meta(&meta_path) {
        return Ok((StatusCode::OK, view));
    }
    let used: u64 = list_bundles(tenant).iter().map(|b| b.size).sum();
    if used.saturating_add(bytes.len() as u64) > tenant.quotas.bundle_storage.bytes() {
        return Err(ApiError::quota(format!(
            "storing it would pass this tenant's bundle storage quota of {} ({} used)",
            tenant.quotas.bundle_storage,
            crate::sandbox::ByteSize(used)
        )));
    }
    // Planned and checked from a file no one else can name yet; kept only
    // if the tenant's policy admits it.
    let incoming = dir.join(format!(".incoming-{id}.cairn"));
    let final_path = dir.join(format!("{id}.cairn"));
    std::fs::write(&incoming, &bytes).map_err(ApiError::internal)?;
    let checked = async {
        let planned = crate::runner::plan(
            &incoming,
            &server.sandbox,
            Some(&tenant.policy),
            &tenant.audit,
            Some(&*tenant.secrets),
        )
        .await?;
        crate::runner::check(&planned, Some(&tenant.policy), &tenant.audit)?;
        Ok::<_, RunError>(planned)
    }
    .await;
    let planned = match checked {
        Ok(planned) => planned,
        Err(e) => {
            let _ = std::fs::remove_file(&incoming);
            return Err(run_error(e));
        }
    };
    let view = BundleView {
        id: id.clone(),
        pipeline: planned.plan.name.clone(),
        size: bytes.len() as u64,
        steps: planned.plan.steps.len(),
        uploaded_ms: (server.clock)(),
        pushed_by: Some(pusher.to_owned()),
        signers: planned
            .signatures
            .iter()
            .flatten()
            .map(|s| s.public_key.clone())
            .collect(),
        capabilities: planned
            .plan
            .steps
            .iter()
            .map(|step| (step.name.clone(), crate::runner::capabilities(step)))
            .filter(|(_, caps)| !caps.is_empty())
            .collect(),
    };
    let stored = std::fs::rename(&incoming, &final_path).and_then(|()| {
        std::fs::write(
            &meta_path,
            serde_json::to_vec(&view).expect("a bundle view serializes"),
        )
    });
    if let Err(e) = stored {
        let _ = std::fs::remove_file(&incoming);
        let _ = std::fs::remove_file(&final_path);
        return Err(ApiError::internal(e));
    }
    Ok((StatusCode::CREATED, view))
}

fn read_meta(path: &std::path::Path) -> Option<BundleView> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn list_bundles(tenant: &Tenant) -> Vec<BundleView> {
    let Ok(entries) = std::fs::read_dir(tenant.bundles_dir()) else {
        return Vec::new();
    };
    let mut views: Vec<BundleView> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json")))
        .filter_map(|e| read_meta(&e.path()))
        .collect();
    views.sort_by(|a, b| b.uploaded_ms.cmp(&a.uploaded_ms).then(a.id.cmp(&b.id)));
    views
}

/// The tenant's bundles, newest first.
#[utoipa::path(get, path = "/v1/bundles", tag = "viewer",
    responses((status = 200, body = Vec<BundleView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn bundles(
    State(server): Shared,
    headers: HeaderMap,
) -> Result<Json<Vec<BundleView>>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    Ok(Json(list_bundles(&tenant)))
}

/// One bundle.
#[utoipa::path(get, path = "/v1/bundles/{id}", tag = "viewer",
    params(("id" = String, Path, description = "the bundle id (64 hex digits)")),
    responses((status = 200, body = BundleView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn bundle(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BundleView>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let id = bundle_id(&id)?;
    read_meta(&tenant.bundles_dir().join(format!("{id}.json")))
        .map(Json)
        .ok_or_else(|| ApiError::not_found("bundle"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    /// The id of an uploaded bundle.
    pub bundle: String,
    /// Run every step even if its result is cached.
    #[serde(default)]
    pub refresh: bool,
    /// Stop at the first failure of a required step.
    #[serde(default)]
    pub fail_fast: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub pipeline: String,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// Being run by this server now (a `running` run that is not live was
    /// interrupted and is resumed when the server starts).
    pub live: bool,
    pub bundle: Option<String>,
    /// blake3 of the pipeline's manifest.
    pub manifest_hash: String,
    pub tenant: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub steps: usize,
    pub replay_of: Option<String>,
    /// How its steps ended (once it has ended on this server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tally: Option<crate::store::records::Tally>,
}

fn run_view(tenant: &Tenant, record: &RunRecord) -> RunView {
    RunView {
        id: record.id.0.clone(),
        pipeline: record.pipeline.clone(),
        status: record.status.as_str().to_owned(),
        live: tenant.is_live(&record.id),
        bundle: record.bundle.clone(),
        manifest_hash: record.manifest_hash.clone(),
        tenant: tenant.name.clone(),
        started_ms: record.started_ms,
        finished_ms: record.finished_ms,
        steps: record.steps,
        replay_of: record.replay_of.as_ref().map(|r| r.0.clone()),
        tally: record.tally,
    }
}

/// Start a run of an uploaded bundle. It is admitted under the tenant's
/// policy and recorded before this answers; it executes when the tenant
/// has a free slot.
#[utoipa::path(post, path = "/v1/runs", tag = "operator", request_body = NewRun,
    responses((status = 202, body = RunView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn start_run(
    State(server): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let (caller, tenant) = tenant_for(&server, &headers, Role::Operator)?;
    let request: NewRun = json_body(body).await?;
    let id = bundle_id(&request.bundle)?;
    let path = tenant.bundles_dir().join(format!("{id}.cairn"));
    if !path.is_file() {
        return Err(ApiError::not_found("bundle"));
    }
    let launch = Launch {
        refresh: request.refresh,
        fail_fast: request.fail_fast,
        ..Launch::new(path)
    };
    start_audited(
        &server,
        &tenant,
        &caller,
        "runs.start",
        &id,
        launch,
        |run| (run.0.clone(), format!("started from bundle {id}")),
    )
    .await
}

/// Start `launch` for the tenant and audit it as `action`: a refusal on
/// `target`, a start as `started` says (target, outcome). The answer is
/// the run started.
async fn start_audited(
    server: &Server,
    tenant: &Arc<Tenant>,
    caller: &Caller,
    action: &str,
    target: &str,
    launch: Launch,
    started: impl FnOnce(&RunId) -> (String, String),
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    match tenant.start(launch).await {
        Ok(run) => {
            let (target, outcome) = started(&run);
            server.audit(Some(tenant), caller, action, &target, &outcome);
            let record = find_run(tenant, &run.0)?;
            Ok((StatusCode::ACCEPTED, Json(run_view(tenant, &record))))
        }
        Err(e) => {
            server.audit(
                Some(tenant),
                caller,
                action,
                target,
                &format!("refused: {e}"),
            );
            Err(start_error(e))
        }
    }
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunFilter {
    /// Only runs of this pipeline.
    pub pipeline: Option<String>,
    /// Only runs with this status (`running`, `succeeded`, `failed`, `cancelled`).
    pub status: Option<String>,
    /// Only runs of this bundle (its id).
    pub bundle: Option<String>,
    /// Only runs started at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Only runs older than this run id (the previous page's `next`).
    pub before: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
    /// Pass as `before` for the next page; `null` on the last.
    pub next: Option<String>,
}

/// The tenant's runs, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/runs", tag = "viewer", params(RunFilter),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_runs(
    State(server): Shared,
    headers: HeaderMap,
    query: Result<Query<RunFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let Query(filter) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let status: Option<RunStatus> = match &filter.status {
        None => None,
        Some(text) => Some(serde_json::from_value(json!(text)).map_err(|_| {
            ApiError::bad_request(format!(
                "status {text:?} is not one of running, succeeded, failed, cancelled"
            ))
        })?),
    };
    let limit = filter.limit.unwrap_or(50).clamp(1, 500);
    let mut runs = tenant.runner.store().runs().map_err(ApiError::internal)?;
    runs.retain(|r| {
        filter.pipeline.as_ref().is_none_or(|p| &r.pipeline == p)
            && filter
                .bundle
                .as_ref()
                .is_none_or(|b| r.bundle.as_ref() == Some(b))
            && status.is_none_or(|s| r.status == s)
            && filter.since_ms.is_none_or(|t| r.started_ms >= t)
            && filter
                .before
                .as_ref()
                .is_none_or(|b| r.id.0.as_str() < b.as_str())
    });
    runs.sort_by(|a, b| b.id.cmp(&a.id));
    let next = (runs.len() > limit).then(|| runs[limit - 1].id.0.clone());
    runs.truncate(limit);
    Ok(Json(RunPage {
        runs: runs.iter().map(|r| run_view(&tenant, r)).collect(),
        next,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct RunDetail {
    pub run: RunView,
    /// Each step's last word, by name.
    pub steps: BTreeMap<String, StepView>,
    /// The steps in dependency order, each with the steps it runs after;
    /// `null` when the run's pipeline no longer loads.
    pub graph: Option<Vec<StepNode>>,
}

#[derive(Serialize, ToSchema)]
pub struct StepNode {
    pub name: String,
    pub after: Vec<String>,
}

/// A recorded run's steps in dependency order, if its source still loads.
async fn graph(tenant: &Tenant, record: &RunRecord) -> Option<Vec<StepNode>> {
    let bundle = record.bundle.clone()?;
    let known = tenant
        .graphs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&bundle)
        .cloned();
    let graph = match known {
        Some(graph) => graph,
        None => {
            let plan = tenant.runner.replan(record).await?;
            let graph: Arc<super::Graph> = Arc::new(
                plan.order
                    .iter()
                    .map(|&id| {
                        let step = &plan.steps[id];
                        let after = step.deps.iter().map(|&d| plan.steps[d].name.clone());
                        (step.name.clone(), after.collect())
                    })
                    .collect(),
            );
            tenant
                .graphs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(bundle, graph.clone());
            graph
        }
    };
    Some(
        graph
            .iter()
            .map(|(name, after)| StepNode {
                name: name.clone(),
                after: after.clone(),
            })
            .collect(),
    )
}

/// One run and its steps.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "viewer",
    params(("id" = String, Path, description = "the run id (16 hex digits)")),
    responses((status = 200, body = RunDetail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show_run(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let record = find_run(&tenant, &id)?;
    let steps = {
        let (tenant, run) = (tenant.clone(), record.id.clone());
        blocking(move || tenant.step_views(&run).map_err(ApiError::internal)).await?
    };
    Ok(Json(RunDetail {
        run: run_view(&tenant, &record),
        steps,
        graph: graph(&tenant, &record).await,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct AttemptLog {
    pub step: String,
    pub index: Option<usize>,
    pub attempt: u32,
    /// The failure class; `null` when the attempt succeeded.
    pub class: Option<String>,
    pub message: Option<String>,
    pub lines: Vec<LogLineView>,
}

#[derive(Serialize, ToSchema)]
pub struct LogLineView {
    pub level: String,
    pub message: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogFilter {
    /// Only this step.
    pub step: Option<String>,
}

/// The lines tasks logged, per attempt (masked as in the CLI).
#[utoipa::path(get, path = "/v1/runs/{id}/logs", tag = "viewer",
    params(("id" = String, Path, description = "the run id"), LogFilter),
    responses((status = 200, body = Vec<AttemptLog>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_logs(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<LogFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AttemptLog>>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let Query(filter) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let record = find_run(&tenant, &id)?;
    let journal = journal(&tenant, &record).await?;
    let logs = journal
        .into_iter()
        .filter_map(|event| match event {
            JournalEvent::AttemptFinished {
                step,
                index,
                attempt,
                class,
                message,
                logs,
                ..
            } if filter.step.as_ref().is_none_or(|s| s == &step) => Some(AttemptLog {
                step,
                index,
                attempt,
                class: class.map(|c| c.as_str().to_owned()),
                message,
                lines: logs
                    .into_iter()
                    .map(|l| LogLineView {
                        level: l.level.as_str().to_owned(),
                        message: l.message,
                    })
                    .collect(),
            }),
            _ => None,
        })
        .collect();
    Ok(Json(logs))
}

/// What one step of a run produced, from the store.
#[derive(Serialize, ToSchema)]
pub struct StepOutput {
    pub step: String,
    /// The cache key of each element (one for a plain step).
    pub keys: Vec<String>,
    /// The output: the document for a plain step, the list of the
    /// elements' documents for a mapped one.
    #[schema(value_type = Object)]
    pub output: Value,
    /// Why the step ran or was answered from the cache, in a sentence.
    pub cache: Option<String>,
}

impl From<DetailError> for ApiError {
    fn from(error: DetailError) -> Self {
        match error {
            DetailError::Store(e) => ApiError::internal(e),
            DetailError::NotSucceeded(_) | DetailError::NoStep(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
            }
            DetailError::Gone { .. } | DetailError::NoPlan => {
                ApiError::new(StatusCode::GONE, "gone", error.to_string())
            }
        }
    }
}

/// A succeeded step's output, read back from the tenant's store.
#[utoipa::path(get, path = "/v1/runs/{id}/steps/{step}/output", tag = "viewer",
    params(("id" = String, Path, description = "the run id"), ("step" = String, Path, description = "the step's name")),
    responses((status = 200, body = StepOutput), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn step_output(
    State(server): Shared,
    headers: HeaderMap,
    Path((id, step)): Path<(String, String)>,
) -> Result<Json<StepOutput>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let record = find_run(&tenant, &id)?;
    let store = tenant.runner.store().clone();
    blocking(move || {
        let journal = store.journal(&record.id).map_err(ApiError::internal)?;
        let stored = detail::stored_output(&*store, &journal, &step)?;
        // Without the plan, a unit is shown as JSON if it is JSON, else as text.
        let output = stored.value(|bytes| {
            serde_json::from_slice(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
        });
        let cache = detail::cache_reason(&*store, &record, &journal, &step)?;
        Ok(Json(StepOutput {
            step,
            keys: stored.keys,
            output,
            cache,
        }))
    })
    .await
}

/// The input a step of a run was given, rebuilt from its dependencies'
/// stored outputs.
#[derive(Serialize, ToSchema)]
pub struct StepInput {
    pub step: String,
    /// The document for a plain step, the list of the elements' inputs for
    /// a mapped one (a command's input is its stdin text).
    #[schema(value_type = Object)]
    pub input: Value,
    /// Whether the rebuilt input hashes to what the step's stored results
    /// say it was given (`null`: no stored result to compare with).
    pub verified: Option<bool>,
    /// Why the input cannot be built, when the step failed before running
    /// for that reason.
    pub unrenderable: Option<String>,
}

/// A step's input, rebuilt from its dependencies' outputs in the tenant's
/// store and checked against the input hash its results keep.
#[utoipa::path(get, path = "/v1/runs/{id}/steps/{step}/input", tag = "viewer",
    params(("id" = String, Path, description = "the run id"), ("step" = String, Path, description = "the step's name")),
    responses((status = 200, body = StepInput), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn step_input(
    State(server): Shared,
    headers: HeaderMap,
    Path((id, step)): Path<(String, String)>,
) -> Result<Json<StepInput>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let record = find_run(&tenant, &id)?;
    let plan = tenant
        .runner
        .replan(&record)
        .await
        .ok_or(DetailError::NoPlan)?;
    let store = tenant.runner.store().clone();
    blocking(move || {
        let journal = store.journal(&record.id).map_err(ApiError::internal)?;
        let rebuilt = detail::rebuild_input(&*store, &plan, &journal, &step)?;
        let (verified, unrenderable) = (rebuilt.verified, rebuilt.unrenderable.clone());
        Ok(Json(StepInput {
            step,
            input: rebuilt.value(),
            verified,
            unrenderable,
        }))
    })
    .await
}

/// The pipeline's output, once the run has succeeded.
#[utoipa::path(get, path = "/v1/runs/{id}/output", tag = "viewer",
    params(("id" = String, Path, description = "the run id")),
    responses((status = 200, description = "the pipeline's output (JSON)"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_output(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let record = find_run(&tenant, &id)?;
    if record.status != RunStatus::Succeeded {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("run {} has no output: it is {}", record.id, record.status),
        ));
    }
    settled(&tenant, &record.id).await;
    let bytes = std::fs::read(tenant.output_path(&record.id)).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "run {} kept no output (it ran elsewhere, or has none)",
                record.id
            ),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// Wait (a few seconds at most) until an ended run is no longer live: its
/// end is recorded just before the server keeps its output and report.
async fn settled(tenant: &Tenant, run: &RunId) {
    let wait = async {
        while let Some(changes) = tenant.changes(run) {
            let notified = changes.notified();
            tokio::pin!(notified);
            // Armed before the check, so an end between the two wakes it.
            notified.as_mut().enable();
            if !tenant.is_live(run) {
                return;
            }
            notified.await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), wait).await;
}

/// The report of the run's last execution on this server, as `cairn run
/// --json` prints it locally: status, duration, each step's status,
/// attempts, timings, fuel, cache source and output hash, and the
/// pipeline's output (`null` when it could not be built).
#[utoipa::path(get, path = "/v1/runs/{id}/report", tag = "viewer",
    params(("id" = String, Path, description = "the run id")),
    responses((status = 200, description = "the run's report (JSON)"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_report(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let record = find_run(&tenant, &id)?;
    if record.status == RunStatus::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "run {} has not ended: its report is made when it does",
                record.id
            ),
        ));
    }
    let unkept = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("run {} kept no report (it ran elsewhere)", record.id),
        )
    };
    settled(&tenant, &record.id).await;
    let bytes = std::fs::read(tenant.report_path(&record.id)).map_err(|_| unkept())?;
    let mut report: Value = serde_json::from_slice(&bytes).map_err(|_| unkept())?;
    let output = match std::fs::read(tenant.output_path(&record.id)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(ApiError::internal)?,
        Err(_) => Value::Null,
    };
    let Some(fields) = report.as_object_mut() else {
        return Err(unkept());
    };
    fields.insert("run_id".into(), json!(record.id.0));
    fields.insert("output".into(), output);
    Ok(Json(report))
}

/// How long a live run's event stream waits for progress before it looks
/// at the journal anyway.
const EVENT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// A run's events as Server-Sent Events: every journal event, in order,
/// each with its index as the event id and its kind (`step-succeeded`, …)
/// as the event name; the stream ends after `run-finished` (or at once for
/// an ended run, once its journal is sent). Only durable events are sent,
/// so nothing is reported that a crash could take back. Reconnect with
/// `Last-Event-ID` to go on after the last event seen.
#[utoipa::path(get, path = "/v1/runs/{id}/events", tag = "viewer",
    params(("id" = String, Path, description = "the run id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "the last event id seen")),
    responses((status = 200, description = "text/event-stream of journal events"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_events(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let record = find_run(&tenant, &id)?;
    let next = match headers.get("last-event-id") {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(|last| last + 1)
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID is not an event id"))?,
    };
    struct Cursor {
        tenant: Arc<Tenant>,
        run: RunId,
        /// The first event to send.
        next: usize,
        /// Where reading the journal goes on from, and how many events
        /// come before that point: each event is read from disk once.
        mark: JournalMark,
        read: usize,
        /// Is the last event read the run's end?
        ended: bool,
        pending: std::collections::VecDeque<(usize, JournalEvent)>,
        done: bool,
    }
    let cursor = Cursor {
        tenant,
        run: record.id,
        next,
        mark: JournalMark::START,
        read: 0,
        ended: false,
        pending: Default::default(),
        done: false,
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some((index, event)) = c.pending.pop_front() {
                let data = serde_json::to_string(&event).expect("journal events serialize");
                let kind = serde_json::to_value(&event)
                    .ok()
                    .and_then(|v| v["event"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "event".into());
                let sse = Event::default()
                    .id(index.to_string())
                    .event(kind)
                    .data(data);
                return Some((Ok::<_, std::convert::Infallible>(sse), c));
            }
            if c.done {
                return None;
            }
            // Armed before the journal is read, so a step that finishes
            // between the read and the wait still wakes this stream.
            let changes = c.tenant.changes(&c.run);
            let notified = changes.as_ref().map(|n| n.notified());
            let mut notified = notified.map(Box::pin);
            if let Some(n) = notified.as_mut() {
                n.as_mut().enable();
            }
            let live = changes.is_some();
            let (fresh, mark) = match c.tenant.runner.store().journal_after(&c.run, c.mark) {
                Ok(read) => read,
                Err(e) => {
                    tracing::error!("run {}: cannot read its journal: {e}", c.run);
                    return None;
                }
            };
            if let Some(last) = fresh.last() {
                c.ended = matches!(last, JournalEvent::RunFinished { .. });
            }
            let first = c.read;
            c.read += fresh.len();
            c.mark = mark;
            c.pending.extend(
                fresh
                    .into_iter()
                    .enumerate()
                    .map(|(i, event)| (first + i, event))
                    .filter(|(index, _)| *index >= c.next),
            );
            if c.ended || !live {
                // What is in the journal is all there will be (until a resume).
                // The stream ends only once the run's end is recorded too,
                // so a client that reads the run next sees it ended.
                if live {
                    settled(&c.tenant, &c.run).await;
                }
                c.done = true;
            } else if c.pending.is_empty() {
                // Woken by progress; the timeout also picks up events
                // that are written without a step finishing (a step's start).
                if let Some(n) = notified {
                    let _ = tokio::time::timeout(EVENT_POLL, n).await;
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Stop a live run; it ends `cancelled` and can be resumed.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "operator",
    params(("id" = String, Path, description = "the run id")),
    responses((status = 202, body = RunView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_run(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let (caller, tenant) = tenant_for(&server, &headers, Role::Operator)?;
    let record = find_run(&tenant, &id)?;
    let cancelled = tenant.cancel(&record.id);
    server.audit(
        Some(&tenant),
        &caller,
        "runs.cancel",
        &record.id.0,
        if cancelled { "cancelling" } else { "not live" },
    );
    if !cancelled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("run {} is not running ({})", record.id, record.status),
        ));
    }
    Ok((StatusCode::ACCEPTED, Json(run_view(&tenant, &record))))
}

/// Go on with a cancelled, failed or interrupted run from its journal.
#[utoipa::path(post, path = "/v1/runs/{id}/resume", tag = "operator",
    params(("id" = String, Path, description = "the run id")),
    responses((status = 202, body = RunView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume_run(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let (caller, tenant) = tenant_for(&server, &headers, Role::Operator)?;
    let record = find_run(&tenant, &id)?;
    let conflict = |why: String| ApiError::new(StatusCode::CONFLICT, "conflict", why);
    if tenant.is_live(&record.id) {
        return Err(conflict(format!("run {} is running", record.id)));
    }
    let launch = match tenant
        .runner
        .resume(&record.id.0, Some(tenant.policy.clone()))
        .map_err(run_error)?
    {
        Resumption::AlreadySucceeded(_) => {
            return Err(conflict(format!(
                "run {} already succeeded; nothing to resume",
                record.id
            )));
        }
        Resumption::Ready(continued) => continued.launch,
    };
    let target = record.id.0.clone();
    start_audited(
        &server,
        &tenant,
        &caller,
        "runs.resume",
        &target,
        launch,
        |run| (run.0.clone(), "resumed".to_owned()),
    )
    .await
}

/// Execute a run again, every step anew, under the tenant's policy; the
/// answer is the new run (its `replay_of` names the original). Once it has
/// ended, `GET /v1/runs/{id}/verification` compares its outputs with the
/// original's.
#[utoipa::path(post, path = "/v1/runs/{id}/replay", tag = "operator",
    params(("id" = String, Path, description = "the run to replay")),
    responses((status = 202, body = RunView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn replay_run(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let (caller, tenant) = tenant_for(&server, &headers, Role::Operator)?;
    let record = find_run(&tenant, &id)?;
    if tenant.is_live(&record.id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("run {} is running; replay it once it has ended", record.id),
        ));
    }
    let replay = tenant
        .runner
        .replay(&record.id.0, Some(tenant.policy.clone()))
        .map_err(run_error)?;
    let original = record.id.0.clone();
    let launch = replay.continued.launch;
    start_audited(
        &server,
        &tenant,
        &caller,
        "runs.replay",
        &original,
        launch,
        |run| (original.clone(), format!("replayed as run {run}")),
    )
    .await
}

#[derive(Serialize, ToSchema)]
pub struct VerificationView {
    /// The run replayed.
    pub original: String,
    /// The replay.
    pub replay: String,
    #[serde(flatten)]
    pub verification: crate::runner::Verification,
}

/// How an ended replay compares with its original: how many steps that
/// succeeded in both were compared, and which produced different output
/// (nondeterminism).
#[utoipa::path(get, path = "/v1/runs/{id}/verification", tag = "viewer",
    params(("id" = String, Path, description = "the replay's run id")),
    responses((status = 200, body = VerificationView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_verification(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<VerificationView>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let record = find_run(&tenant, &id)?;
    let conflict = |why: String| ApiError::new(StatusCode::CONFLICT, "conflict", why);
    if record.status == RunStatus::Running {
        return Err(conflict(format!(
            "run {} has not ended; verify it once it has",
            record.id
        )));
    }
    let verification = tenant
        .runner
        .verification(&record)
        .map_err(run_error)?
        .ok_or_else(|| conflict(format!("run {} is not a replay", record.id)))?;
    Ok(Json(VerificationView {
        original: record.replay_of.map(|r| r.0).unwrap_or_default(),
        replay: record.id.0,
        verification,
    }))
}

/// For every output of a run, the component and input hashes that
/// produced it: OpenLineage-style `COMPLETE` run events, one per
/// succeeded step.
#[utoipa::path(get, path = "/v1/runs/{id}/lineage", tag = "viewer",
    params(("id" = String, Path, description = "the run id")),
    responses((status = 200, description = "an array of OpenLineage run events"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_lineage(
    State(server): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let record = find_run(&tenant, &id)?;
    let journal = journal(&tenant, &record).await?;
    Ok(Json(crate::runner::describe::lineage(
        tenant.runner.store().as_ref(),
        &record,
        &journal,
    )))
}

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub at_ms: u64,
    pub tenant: String,
    pub run: Option<String>,
    pub step: Option<String>,
    /// `granted`, `denied` or `api`.
    pub event: String,
    /// The capability, or the API action.
    pub capability: String,
    pub detail: String,
}

/// The tenant's audit log: grants, denials and API actions.
#[utoipa::path(get, path = "/v1/audit", tag = "admin",
    responses((status = 200, body = Vec<AuditView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn audit(
    State(server): Shared,
    headers: HeaderMap,
) -> Result<Json<Vec<AuditView>>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Admin)?;
    let (entries, _) = tenant.audit.read().map_err(ApiError::internal)?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| AuditView {
                at_ms: e.at_ms,
                tenant: tenant.name.clone(),
                run: e.run,
                step: e.step,
                event: e.event,
                capability: e.capability,
                detail: e.detail,
            })
            .collect(),
    ))
}

/// Which runs to forget (`cairn runs gc`): every field may be left out.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RunsGc {
    /// Age past which a run is forgotten, counted from its end (from its
    /// start for an interrupted run), e.g. `30d`, `12h`, `0s`; default 30d.
    pub older_than: Option<String>,
    /// Forget resumable runs (interrupted or cancelled) of that age too.
    #[serde(default)]
    pub include_interrupted: bool,
    /// Say what would be forgotten, and forget nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Forget the tenant's runs that ended long enough ago: their records,
/// journals (with their logs), outputs and reports. A live run is never
/// forgotten; the results they made stay in the cache; the audit log is
/// kept whole. Runs that can still be resumed are kept unless
/// `include_interrupted`.
#[utoipa::path(post, path = "/v1/runs/gc", tag = "admin", request_body = RunsGc,
    responses((status = 200, body = RunsGcReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn gc_runs(
    State(server): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RunsGcReport>, ApiError> {
    let (caller, tenant) = tenant_for(&server, &headers, Role::Admin)?;
    let asked: RunsGc = json_body(body).await?;
    let older_than = match asked.older_than.as_deref() {
        None => std::time::Duration::from_secs(30 * 24 * 60 * 60),
        Some(age) => crate::sandbox::limits::parse_age(age).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("older_than: {e}"),
            )
        })?,
    };
    let retention = crate::runner::retention::Retention {
        now_ms: (server.clock)(),
        older_than,
        include_interrupted: asked.include_interrupted,
    };
    let forgotten = tenant
        .forget_runs(retention, asked.dry_run)
        .await
        .map_err(ApiError::internal)?;
    if !asked.dry_run {
        server.audit(
            Some(&tenant),
            &caller,
            "runs.gc",
            &format!("older than {}", humantime::format_duration(older_than)),
            &format!(
                "forgot {} runs, freed {} bytes",
                forgotten.removed.len(),
                forgotten.freed
            ),
        );
    }
    Ok(Json(RunsGcReport::new(
        asked.dry_run,
        &forgotten.removed,
        forgotten.kept_interrupted,
        forgotten.freed,
    )))
}

#[derive(Serialize, ToSchema)]
pub struct QuotaView {
    pub runs_in_flight: u32,
    pub sandboxes_in_flight: u32,
    pub queued_runs: u32,
    pub upload_bytes: u64,
    pub uploads_in_flight: u32,
    pub bundle_storage_bytes: u64,
    /// Runs that ended longer ago are forgotten (`null`: kept).
    pub keep_runs: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageView {
    /// Runs executing now.
    pub runs_in_flight: u32,
    /// Runs waiting for a slot.
    pub queued_runs: u32,
    /// Attempts in the sandbox now.
    pub sandboxes_in_flight: usize,
    /// Bundle uploads being received or checked now.
    pub uploads_in_flight: u32,
    pub bundle_storage_bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Quota {
    pub tenant: String,
    pub quotas: QuotaView,
    pub usage: UsageView,
}

/// The tenant's quotas and how much of each is in use now.
#[utoipa::path(get, path = "/v1/quota", tag = "viewer",
    responses((status = 200, body = Quota), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn quota(State(server): Shared, headers: HeaderMap) -> Result<Json<Quota>, ApiError> {
    let (_, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    Ok(Json(quota_of(&tenant)))
}

fn quota_of(tenant: &Tenant) -> Quota {
    let q = tenant.quotas;
    let (waiting, executing) = tenant.load();
    Quota {
        tenant: tenant.name.clone(),
        quotas: QuotaView {
            runs_in_flight: q.runs_in_flight,
            sandboxes_in_flight: q.sandboxes_in_flight,
            queued_runs: q.queued_runs,
            upload_bytes: q.upload.bytes(),
            uploads_in_flight: q.uploads_in_flight,
            bundle_storage_bytes: q.bundle_storage.bytes(),
            keep_runs: q.keep_runs.map(|age| age.to_string()),
        },
        usage: UsageView {
            runs_in_flight: executing,
            queued_runs: waiting,
            sandboxes_in_flight: tenant.runner.sandboxes_in_flight().unwrap_or(0),
            uploads_in_flight: q
                .uploads_in_flight
                .saturating_sub(tenant.uploads.available_permits() as u32),
            bundle_storage_bytes: list_bundles(tenant).iter().map(|b| b.size).sum(),
        },
    }
}

/// A server-wide admin token's caller; anyone else is refused.
fn server_admin(server: &Server, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = caller(server, headers)?;
    if caller.scope != Scope::Server || caller.role < Role::Admin {
        return Err(ApiError::forbidden("server-wide admin"));
    }
    Ok(caller)
}

/// Every tenant the server hosts, with its quotas and what it uses of
/// each now: for the server's own admins, not a tenant's.
#[utoipa::path(get, path = "/v1/tenants", tag = "server-admin",
    responses((status = 200, body = Vec<Quota>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn tenants(
    State(server): Shared,
    headers: HeaderMap,
) -> Result<Json<Vec<Quota>>, ApiError> {
    server_admin(&server, &headers)?;
    Ok(Json(
        server.tenants.all().iter().map(|t| quota_of(t)).collect(),
    ))
}

/// A tenant to add: its name and any quotas that differ from the defaults.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// 1 to 64 of a-z, 0-9, - and _.
    pub name: String,
    #[serde(default)]
    pub quotas: NewQuotas,
}

/// Quotas of a new tenant; each left out takes the server's default.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NewQuotas {
    pub runs_in_flight: Option<u32>,
    pub sandboxes_in_flight: Option<u32>,
    pub queued_runs: Option<u32>,
    pub upload_bytes: Option<u64>,
    pub uploads_in_flight: Option<u32>,
    pub bundle_storage_bytes: Option<u64>,
    /// Forget runs that ended longer ago than this (e.g. `30d`); left out:
    /// runs are kept.
    pub keep_runs: Option<String>,
}

impl NewQuotas {
    fn resolve(self) -> Result<super::Quotas, ApiError> {
        let base = super::Quotas::default();
        let positive = |name: &str, value: Option<u32>, default: u32| match value {
            Some(0) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("quotas.{name} must be at least 1"),
            )),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let keep_runs = match self.keep_runs.as_deref() {
            None => None,
            Some(age) => Some(crate::sandbox::limits::Age(
                crate::sandbox::limits::parse_age(age).map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid",
                        format!("quotas.keep_runs: {e}"),
                    )
                })?,
            )),
        };
        Ok(super::Quotas {
            keep_runs,
            runs_in_flight: positive("runs_in_flight", self.runs_in_flight, base.runs_in_flight)?,
            sandboxes_in_flight: positive(
                "sandboxes_in_flight",
                self.sandboxes_in_flight,
                base.sandboxes_in_flight,
            )?,
            // No queue at all is a quota: every run must find a free slot.
            queued_runs: self.queued_runs.unwrap_or(base.queued_runs),
            upload: self
                .upload_bytes
                .map_or(base.upload, crate::sandbox::ByteSize),
            uploads_in_flight: positive(
                "uploads_in_flight",
                self.uploads_in_flight,
                base.uploads_in_flight,
            )?,
            bundle_storage: self
                .bundle_storage_bytes
                .map_or(base.bundle_storage, crate::sandbox::ByteSize),
        })
    }
}

/// Host a new tenant, now and on every later start. Its policy is the
/// policy file's `[tenants.NAME]` section if it has one, else `[default]`;
/// it has no secrets (those come only from `server.toml`, read at start).
/// Then make its first token with `POST /v1/tokens`.
#[utoipa::path(post, path = "/v1/tenants", tag = "server-admin", request_body = NewTenant,
    responses((status = 201, body = Quota), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_tenant(
    State(server): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Quota>), ApiError> {
    let caller = server_admin(&server, &headers)?;
    let request: NewTenant = json_body(body).await?;
    let quotas = request.quotas.resolve()?;
    let name = request.name;
    // Opening a store touches the disk: off the async workers.
    let adding = server.clone();
    let added = tokio::task::spawn_blocking(move || adding.add_tenant(&name, quotas))
        .await
        .map_err(ApiError::internal)?;
    let (target, outcome) = match &added {
        Ok(tenant) => (tenant.name.clone(), "added".to_owned()),
        Err(e) => ("-".to_owned(), format!("refused: {e}")),
    };
    server.audit(None, &caller, "tenants.add", &target, &outcome);
    match added {
        Ok(tenant) => Ok((StatusCode::CREATED, Json(quota_of(&tenant)))),
        Err(e @ (super::AddTenantError::Exists(_) | super::AddTenantError::Leftover(..))) => Err(
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        ),
        Err(e @ super::AddTenantError::Name(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

#[derive(Serialize, ToSchema)]
pub struct RemovedTenant {
    pub tenant: String,
    pub removed: bool,
}

/// Stop hosting a tenant added over the API and delete everything it had:
/// its tokens (and so its dashboard sessions) at once, then its runs
/// (live and queued ones are cancelled first), results, bundles, outputs
/// and its own audit log. The server's audit log keeps the removal. A
/// tenant declared in `server.toml` is refused (409): take it out there.
#[utoipa::path(delete, path = "/v1/tenants/{name}", tag = "server-admin",
    params(("name" = String, Path, description = "the tenant")),
    responses((status = 200, body = RemovedTenant), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_tenant(
    State(server): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<RemovedTenant>, ApiError> {
    let caller = server_admin(&server, &headers)?;
    let removed = server.remove_tenant(&name).await;
    // The name is the client's: cut before it goes into the log.
    let target: String = name.chars().take(80).collect();
    let outcome = match &removed {
        Ok(()) => "removed".to_owned(),
        Err(e) => format!("refused: {e}"),
    };
    server.audit(None, &caller, "tenants.remove", &target, &outcome);
    match removed {
        Ok(()) => Ok(Json(RemovedTenant {
            tenant: name,
            removed: true,
        })),
        Err(super::RemoveTenantError::Unknown(_)) => Err(ApiError::not_found("tenant")),
        Err(e @ super::RemoveTenantError::Configured(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            e.to_string(),
        )),
        Err(e @ super::RemoveTenantError::Busy(..)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// A path no route serves.
async fn unknown() -> ApiError {
    ApiError::not_found("route")
}

/// A route asked with a method it does not take.
async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /v1/openapi.json",
    )
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Cairn", description = "The Cairn run service: tenants' bundles and runs. \
        Each operation's tag is the least role it needs."),
    paths(healthz, openapi, create_token, list_tokens, revoke_token, upload_bundle, bundles,
        bundle, sign_in, whoami, sign_out, start_run, list_runs, show_run, step_output, step_input, run_logs, run_events, run_output, cancel_run, resume_run, replay_run, run_verification, run_lineage, run_report, gc_runs, audit, quota, tenants, add_tenant, remove_tenant),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Refuse a change authorized by a session cookie that does not carry the
/// session's CSRF token, before any handler sees it.
async fn csrf_guard(
    State(server): Shared,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let refused = session::session_caller(
        &server.sessions,
        &server.tokens,
        request.method(),
        request.headers(),
        (server.clock)(),
    );
    match refused {
        Err(session::Refusal::Csrf) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a change made with a session cookie must carry the session's {} header",
                session::CSRF_HEADER
            ),
        )
        .into_response(),
        Ok(_) => next.run(request).await,
    }
}

/// Who a browser is signed in as.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    pub tenant: String,
    pub role: Role,
    /// Send this in `X-CSRF-Token` with every change made through the
    /// session cookie. Absent when the request used a bearer token.
    pub csrf: Option<String>,
}

/// Sign in: exchange the bearer token for a session cookie (`HttpOnly`,
/// `SameSite=Strict`, `Secure` behind a TLS proxy). The answer's `csrf`
/// must accompany every change made with the cookie.
#[utoipa::path(post, path = "/v1/session", tag = "viewer",
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn sign_in(State(server): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(ApiError::unauthorized());
    }
    let (caller, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let opened = server
        .sessions
        .open_session(&caller.token_id, (server.clock)());
    let view = SessionView {
        tenant: tenant.name.clone(),
        role: caller.role,
        csrf: Some(opened.csrf),
    };
    let mut response = Json(view).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(Some(&opened.id), session::behind_tls(&headers)),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Who the request is from: its tenant, role and (for a session) the
/// CSRF token, so a reloaded page can go on.
#[utoipa::path(get, path = "/v1/session", tag = "viewer",
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn whoami(State(server): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    let (caller, tenant) = tenant_for(&server, &headers, Role::Viewer)?;
    let csrf = if headers.contains_key(header::AUTHORIZATION) {
        None
    } else {
        session::cookie(&headers)
            .and_then(|id| server.sessions.find(&id, (server.clock)()))
            .map(|(_, csrf)| csrf)
    };
    let mut response = Json(SessionView {
        tenant: tenant.name.clone(),
        role: caller.role,
        csrf,
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Sign out: the session ends on the server, and the cookie is cleared.
#[utoipa::path(delete, path = "/v1/session", tag = "viewer",
    responses((status = 200, description = "signed out"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn sign_out(State(server): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    tenant_for(&server, &headers, Role::Viewer)?;
    let ended = session::cookie(&headers).is_some_and(|id| server.sessions.close(&id));
    let mut response = Json(json!({ "signed_out": ended })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(None, session::behind_tls(&headers)),
    );
    Ok(response)
}

/// Every route, with the server as its state.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/", get(super::ui::index))
        .route("/ui/{file}", get(super::ui::asset))
        .route("/healthz", get(healthz))
        .route("/v1/session", post(sign_in).get(whoami).delete(sign_out))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/v1/bundles", post(upload_bundle).get(bundles))
        .route("/v1/bundles/{id}", get(bundle))
        .route("/v1/runs", post(start_run).get(list_runs))
        .route("/v1/runs/gc", post(gc_runs))
        .route("/v1/runs/{id}", get(show_run))
        .route("/v1/runs/{id}/logs", get(run_logs))
        .route("/v1/runs/{id}/events", get(run_events))
        .route("/v1/runs/{id}/output", get(run_output))
        .route("/v1/runs/{id}/steps/{step}/output", get(step_output))
        .route("/v1/runs/{id}/steps/{step}/input", get(step_input))
        .route("/v1/runs/{id}/report", get(run_report))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/v1/runs/{id}/resume", post(resume_run))
        .route("/v1/runs/{id}/replay", post(replay_run))
        .route("/v1/runs/{id}/verification", get(run_verification))
        .route("/v1/runs/{id}/lineage", get(run_lineage))
        .route("/v1/audit", get(audit))
        .route("/v1/quota", get(quota))
        .route("/v1/tenants", get(tenants).post(add_tenant))
        .route("/v1/tenants/{name}", delete(remove_tenant))
        .fallback(unknown)
        .method_not_allowed_fallback(wrong_method)
        // Bodies are read with each route's own cap.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            csrf_guard,
        ))
        .with_state(server)
}
