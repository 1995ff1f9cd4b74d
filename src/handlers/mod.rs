//! Request handlers and the state they share.
//!
//! [`App::handle`] routes a request, runs its handler, turns an [`ApiError`] into its JSON
//! answer and adds the CORS headers. Handlers return `Result<Response, ApiError>` and never
//! choose a status for an error themselves.

mod auth;
mod cors;
mod pages;
mod stream;
mod upload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::api::{ApiError, ApiResult};
use crate::config::Config;
use crate::fault;
use crate::limiter::Limiter;
use crate::routes::{route, Route};
use crate::server::body::BodyReader;
use crate::server::request::Request;
use crate::server::response::Response;
use crate::storage::{Storage, StorageError};

/// State shared by every worker.
pub struct App {
    pub config: Config,
    /// `config.cache_control`, borrowed by every media response instead of copied.
    pub cache_control: &'static str,
    pub storage: Arc<dyn Storage>,
    pub limiter: Limiter,
    /// Set when shutdown begins; connections then close after their current request.
    pub stopping: Arc<AtomicBool>,
}

impl App {
    pub fn new(config: Config, storage: Arc<dyn Storage>) -> App {
        let limiter = Limiter::new(config.max_conns, config.per_ip_limit());
        // Leaked once: an App lasts as long as its server.
        let cache_control = Box::leak(config.cache_control.clone().into_boxed_str());
        App { config, cache_control, storage, limiter, stopping: Arc::new(AtomicBool::new(false)) }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Serves one request whose limiter token is already held.
    pub fn handle(&self, request: &Request, body: &mut BodyReader) -> Response {
        fault::inject(request, fault::Point::HandlerStart);
        let result = route(&request.method, request.path()).and_then(|r| self.dispatch(r, request, body));
        let mut response = result.unwrap_or_else(|error| {
            log::debug!("{} {}: {error}", request.method.as_str(), request.target.escape_debug());
            error.to_response()
        });
        cors::add_headers(&self.config, request, &mut response);
        response
    }

    fn dispatch(&self, route: Route, request: &Request, body: &mut BodyReader) -> ApiResult {
        match route {
            Route::Stream(id) => stream::serve(self, request, &id),
            Route::Upload(id) => {
                auth::require_upload_token(&self.config, request)?;
                upload::receive(self, request, body, &id)
            }
            Route::Delete(id) => {
                auth::require_upload_token(&self.config, request)?;
                delete(self, &id)
            }
            Route::StreamPreflight => {
                Ok(cors::preflight(&self.config, request, "GET, HEAD, DELETE, OPTIONS"))
            }
            Route::UploadPreflight => Ok(cors::preflight(&self.config, request, "POST, OPTIONS")),
            Route::TestPage => Ok(pages::test_page()),
            Route::Health => Ok(pages::health(self)),
        }
    }
}

/// `DELETE /videos/{id}`: removes a video; 204, or 404 when it is not stored.
fn delete(app: &App, id: &str) -> ApiResult {
    app.storage.delete(id).map_err(|e| storage_error(e, id))?;
    log::info!("deleted video {id:?}");
    Ok(Response::new(204))
}

/// Maps a storage failure to its API error, logging what the client does not see.
fn storage_error(error: StorageError, id: &str) -> ApiError {
    match error {
        StorageError::NotFound => ApiError::VideoNotFound(id.to_string()),
        StorageError::AlreadyExists => ApiError::VideoExists(id.to_string()),
        StorageError::NoSpace => {
            log::error!("storing {id:?} failed: no space left on the device");
            ApiError::InsufficientStorage
        }
        StorageError::Io { .. } => {
            log::error!("storage failed for {id:?}: {error}");
            ApiError::Internal
        }
        StorageError::AccessDenied { .. } => {
            log::error!("storage failed for {id:?}: {error}");
            ApiError::StorageAccessDenied
        }
        StorageError::Unavailable { .. } => {
            log::error!("storage failed for {id:?}: {error}");
            ApiError::StorageUnavailable
        }
        StorageError::Backend { .. } => {
            log::error!("storage failed for {id:?}: {error}");
            ApiError::StorageFailed
        }
    }
}
