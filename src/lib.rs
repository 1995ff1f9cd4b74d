//! streamserver: a single-binary HTTP server that stores and streams video files.
//!
//! The layers, from the socket up:
//! - [`server`]: the HTTP/1.1 layer (poller, connections, request parsing, body reading,
//!   response writing) and the fixed worker pool;
//! - [`limiter`]: the token bucket every request passes;
//! - [`routes`] and [`handlers`]: which handler serves a request, and the handlers themselves;
//! - [`http`]: pure protocol rules (ranges, preconditions, content types);
//! - [`multipart`]: the streaming `multipart/form-data` parser uploads go through;
//! - [`storage`]: where videos live;
//! - [`api`]: the JSON answer format and the error-to-status mapping;
//! - [`config`], which reads `conf.json`;
//! - [`fault`], panics on request for the tests, built only with the `fault-injection` feature.

pub mod api;
pub mod config;
pub mod fault;
pub mod handlers;
pub mod http;
pub mod limiter;
pub mod multipart;
pub mod routes;
pub mod server;
pub mod signals;
pub mod storage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use config::Config;
use handlers::App;
use server::Server;
use storage::local::LocalStorage;
use storage::Storage;

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub fn run(config: Config) -> Result<(), StartError> {
    signals::block_shutdown_signals();

    let storage = open_storage(&config)?;
    let app = Arc::new(App::new(config.clone(), storage.clone()));
    let mut server = Server::start(&config, app.clone()).map_err(|e| {
        StartError::Runtime(format!(
            "cannot listen on {}: {e}; stop the process using it or choose another address with --listen",
            config.listen
        ))
    })?;
    log_startup(&config, &server, storage.as_ref());

    let signal = signals::wait_for_shutdown_signal();
    log::info!(
        "{signal} received; no longer accepting connections, waiting up to {}s for requests in flight",
        config.shutdown_grace_secs
    );
    shut_down(&mut server, &app, Duration::from_secs(config.shutdown_grace_secs));
    Ok(())
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A setting cannot work, such as missing S3 credentials; exit status 2.
    Config(String),
    /// The machine or a service refused, such as a port in use or a bucket that does not
    /// exist; exit status 1.
    Runtime(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(message) | StartError::Runtime(message) => f.write_str(message),
        }
    }
}

fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, StartError> {
    let local = LocalStorage::new(&config.video_dir).map_err(|e| {
        StartError::Runtime(format!("cannot use video_dir {}: {e}", config.video_dir.display()))
    })?;
    match storage::remove_temp_files(&config.video_dir, storage::TempCleanup::Unlocked) {
        Ok(0) => {}
        Ok(n) => log::info!("removed {n} upload temporary files left by an earlier run"),
        Err(e) => log::warn!("cannot scan {} for stale upload files: {e}", config.video_dir.display()),
    }
    match config.storage.backend {
        config::StorageBackend::Local => Ok(Arc::new(local)),
        config::StorageBackend::S3 => {
            // `video_dir` stays the staging folder for uploads on their way to the bucket.
            let credentials = storage::s3::EnvCredentials::from_env().map_err(StartError::Config)?;
            let s3 = storage::s3::S3Storage::new(&config.storage, &config.video_dir, credentials)
                .map_err(StartError::Config)?;
            s3.check_bucket().map_err(StartError::Runtime)?;
            Ok(Arc::new(s3))
        }
    }
}

fn log_startup(config: &Config, server: &Server, storage: &dyn Storage) {
    log::info!(
        "streamserver {} listening on {}; storage: {}; max_conns {}, max_conns_per_ip {}, lanes {}, workers {} per lane, \
         max_upload_bytes {}, header_timeout_secs {}, idle_timeout_secs {}, max_connections {}, \
         shutdown_grace_secs {}, max_ranges {}, cache_control {:?}, cors_allow_origins {:?}, upload token {}",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        storage.describe(),
        config.max_conns,
        config.per_ip_limit(),
        server.lanes(),
        config.worker_count(),
        config.max_upload_bytes,
        config.header_timeout_secs,
        config.idle_timeout_secs,
        config.max_connections,
        config.shutdown_grace_secs,
        config.max_ranges,
        config.cache_control,
        config.cors_allow_origins,
        if config.upload_token.is_some() { "required" } else { "not set" },
    );
    if config.upload_token.is_none() && !server.local_addr().ip().is_loopback() {
        log::warn!(
            "no upload_token is set and the server listens on {}: anyone who can reach it can upload \
             and delete videos; set upload_token in the config or STREAMSERVER_UPLOAD_TOKEN",
            server.local_addr()
        );
    }
}

/// Stops accepting, lets workers finish for up to `grace`, and removes upload temporary files.
fn shut_down(server: &mut Server, app: &App, grace: Duration) {
    server.stop();

    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && server.running_workers() > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy = server.running_workers();
    if busy > 0 {
        log::warn!(
            "shutdown grace of {}s ran out; cutting off the requests in flight ({busy})",
            grace.as_secs()
        );
    }

    let own_files = storage::TempCleanup::OwnedBy(std::process::id());
    match storage::remove_temp_files(app.storage.staging_dir(), own_files) {
        Ok(0) => {}
        Ok(n) => log::info!("removed {n} upload temporary files of cut-off uploads"),
        Err(e) => log::warn!("cannot remove upload temporary files: {e}"),
    }
    log::info!("streamserver stopped");
}
