//! Server settings: the `conf.json` schema, its defaults and its validation.
//!
//! Every field is optional. Defaults live in one `Default` impl and each field's doc ends with
//! its default. Loading rejects unknown fields by name, and every error names the file, the field
//! and the fix, so `main` can print it as one line and exit with status 2.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Settings in force for one server process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on. Default: `0.0.0.0:9000`.
    pub listen: String,
    /// Folder that stores the videos, created when missing. Default: `./videos`.
    pub video_dir: PathBuf,
    /// Tokens in the limiter bucket: requests served at once, the rest get 429. Default: 20.
    pub max_conns: usize,
    /// Worker threads. Default: `max_conns + 8`, so that a request still gets its 429 at once
    /// while every token is held by a slow download.
    pub workers: Option<usize>,
    /// Largest accepted upload body, in bytes. Default: 1 GiB.
    pub max_upload_bytes: u64,
    /// Seconds a client may take to send a complete request head. Default: 10.
    pub header_timeout_secs: u64,
    /// Seconds an idle keep-alive connection stays open, and the longest a body read or a
    /// response write may stall. Default: 60.
    pub idle_timeout_secs: u64,
    /// Maximum ranges served as one `multipart/byteranges` response; more get the whole file.
    /// Default: 16.
    pub max_ranges: usize,
    /// `Cache-Control` value sent with media. The default lets caches keep a video but check
    /// its ETag before each reuse, so a replaced video is never served stale; set a long
    /// `max-age` when videos are never replaced. Default: `public, no-cache`.
    pub cache_control: String,
    /// Origins allowed to read media, upload and delete through CORS, or `["*"]` for any.
    /// Default: none.
    pub cors_allow_origins: Vec<String>,
    /// Open sockets beyond which new connections are closed at once. Default: 4096.
    pub max_connections: usize,
    /// Seconds that requests in flight may take to finish after SIGTERM or SIGINT. Default: 10.
    pub shutdown_grace_secs: u64,
    /// Bearer token that uploads and deletes must present. The environment variable
    /// `STREAMSERVER_UPLOAD_TOKEN` overrides it. Default: none, so anyone may upload.
    pub upload_token: Option<Secret>,
    /// Tokens one client address may hold at once. Default: three quarters of `max_conns`
    /// (15 of 20), at least 1.
    pub max_conns_per_ip: Option<usize>,
    /// Where videos are stored. Default: the local folder `video_dir`.
    pub storage: StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:9000".to_string(),
            video_dir: PathBuf::from("./videos"),
            max_conns: 20,
            workers: None,
            max_upload_bytes: 1 << 30,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_ranges: 16,
            cache_control: "public, no-cache".to_string(),
            cors_allow_origins: Vec::new(),
            max_connections: 4096,
            shutdown_grace_secs: 10,
            upload_token: None,
            max_conns_per_ip: None,
            storage: StorageConfig::default(),
        }
    }
}

/// The `storage` section. Credentials for S3 come only from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), never from this file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `local` keeps videos in `video_dir`; `s3` keeps them in an S3-compatible bucket and uses
    /// `video_dir` only for upload temporary files. Default: `local`.
    pub backend: StorageBackend,
    /// Base URL of the S3 API, such as `https://oss-cn-hangzhou.aliyuncs.com` or
    /// `http://127.0.0.1:9000`. Default: `https://s3.{region}.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Region name used in request signatures. Default: `us-east-1`.
    pub region: String,
    /// Bucket name; required for `s3`. Default: none.
    pub bucket: String,
    /// Key prefix of every stored video: video `a.mp4` is object `{prefix}a.mp4`.
    /// Default: `videos/`.
    pub prefix: String,
    /// Path-style URLs (`{endpoint}/{bucket}/{key}`) instead of virtual-hosted ones
    /// (`{bucket}.{endpoint host}/{key}`). MinIO needs `true`; Aliyun OSS rejects it.
    /// Default: `false`.
    pub path_style: bool,
    /// `proxy` streams the bytes through this server; `redirect` responds `302` to a presigned
    /// bucket URL. Default: `proxy`.
    pub serve: ServeMode,
    /// Seconds a presigned redirect URL stays valid, 1 to 604800 (7 days, the S3 maximum).
    /// Default: 3600.
    pub presign_ttl_secs: u32,
}

/// The storage backend named by `storage.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    S3,
}

/// How `storage.serve` delivers S3 videos to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServeMode {
    Proxy,
    Redirect,
}

/// The longest validity of a presigned URL that S3 accepts, in seconds (7 days).
pub const MAX_PRESIGN_TTL_SECS: u32 = 7 * 24 * 3600;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Local,
            endpoint: None,
            region: "us-east-1".to_string(),
            bucket: String::new(),
            prefix: "videos/".to_string(),
            path_style: false,
            serve: ServeMode::Proxy,
            presign_ttl_secs: 3600,
        }
    }
}

impl StorageConfig {
    /// The S3 endpoint in force: the configured one or the AWS endpoint of `region`.
    pub fn endpoint_url(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => endpoint.trim_end_matches('/').to_string(),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        }
    }

    /// Checks the S3 fields when `backend` is `s3`; the local backend ignores them.
    pub fn validate(&self) -> Result<(), String> {
        if self.backend == StorageBackend::Local {
            return Ok(());
        }
        if self.bucket.is_empty() || self.bucket.contains(|c: char| c == '/' || c.is_whitespace()) {
            return Err(format!(
                "field `storage.bucket`: {:?} is not a bucket name; set the name of an existing bucket",
                self.bucket
            ));
        }
        if self.region.is_empty() || self.region.contains(|c: char| c.is_whitespace()) {
            return Err(format!("field `storage.region`: {:?} is not a region name such as \"us-east-1\"", self.region));
        }
        if let Some(endpoint) = &self.endpoint {
            validate_endpoint(endpoint)?;
        }
        let prefix_ok = self.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
        if !prefix_ok || self.prefix.starts_with('/') {
            return Err(format!(
                "field `storage.prefix`: {:?} must use only letters, digits, '/', '.', '_' or '-' and not start with '/'",
                self.prefix
            ));
        }
        if self.presign_ttl_secs == 0 || self.presign_ttl_secs > MAX_PRESIGN_TTL_SECS {
            return Err(format!(
                "field `storage.presign_ttl_secs`: {} is out of range; use 1 to {MAX_PRESIGN_TTL_SECS} (7 days)",
                self.presign_ttl_secs
            ));
        }
        Ok(())
    }
}

fn validate_endpoint(endpoint: &str) -> Result<(), String> {
    let host = endpoint.strip_prefix("https://").or_else(|| endpoint.strip_prefix("http://"));
    match host {
        Some(host) if !host.trim_end_matches('/').is_empty() && !host.contains(['?', '#', ' ']) => Ok(()),
        _ => Err(format!(
            "field `storage.endpoint`: {endpoint:?} is not a URL such as \"https://s3.eu-west-1.amazonaws.com\""
        )),
    }
}

/// A secret string whose `Debug` output is redacted, so logging a config never shows it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// A config file that could not be read or contains an invalid value.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, or `--listen` for the command-line override.
    pub source_name: String,
    /// The problem and its fix.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source_name, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file. A missing file at the default path gives the
    /// defaults; a missing file named on the command line is an error.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let error = |message: String| ConfigError { source_name: source_name.clone(), message };

        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => parse_json(&text).map_err(error)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Config::default(),
            Err(e) => return Err(error(format!("cannot read the config file: {e}"))),
        };

        if let Some(token) = std::env::var("STREAMSERVER_UPLOAD_TOKEN").ok().filter(|t| !t.is_empty()) {
            config.upload_token = Some(Secret(token));
        }
        config.validate().map_err(|message| {
            let message = message.replace(
                "field `upload_token`",
                "field `upload_token` (or STREAMSERVER_UPLOAD_TOKEN)",
            );
            error(message)
        })?;
        Ok(config)
    }

    /// Checks values that parse but cannot work, naming the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        self.listen_addr()?;
        if self.max_conns == 0 {
            return Err("field `max_conns`: must be at least 1".into());
        }
        if self.workers == Some(0) {
            return Err("field `workers`: must be at least 1, or removed for the default".into());
        }
        if self.header_timeout_secs == 0 || self.idle_timeout_secs == 0 {
            return Err("fields `header_timeout_secs` and `idle_timeout_secs`: must be at least 1".into());
        }
        if self.max_conns_per_ip == Some(0) {
            return Err("field `max_conns_per_ip`: must be at least 1, or removed for the default".into());
        }
        if let Some(Secret(token)) = &self.upload_token {
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("field `upload_token`: use at least 16 printable ASCII characters without spaces".into());
            }
        }
        if self.max_ranges == 0 {
            return Err("field `max_ranges`: must be at least 1".into());
        }
        if self.max_connections < 2 {
            return Err("field `max_connections`: must be at least 2".into());
        }
        if self.cache_control.contains(['\r', '\n']) {
            return Err("field `cache_control`: must not contain line breaks".into());
        }
        self.storage.validate()?;
        if self.max_conns_per_ip.is_some_and(|n| n > self.max_conns) {
            return Err(format!(
                "field `max_conns_per_ip`: {} is more than max_conns ({}); lower it or raise max_conns",
                self.max_conns_per_ip.unwrap_or(0),
                self.max_conns
            ));
        }
        for origin in &self.cors_allow_origins {
            if origin != "*" && !is_origin(origin) {
                return Err(format!(
                    "field `cors_allow_origins`: {origin:?} is not an origin such as \"https://example.com\" (scheme and host, optional port, no path or trailing slash)"
                ));
            }
        }
        Ok(())
    }

    /// Parses `listen` as a socket address.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|_| {
            format!(
                "field `listen`: {:?} is not an address and port such as \"0.0.0.0:9000\"",
                self.listen
            )
        })
    }

    /// Tokens per client address in force.
    pub fn per_ip_limit(&self) -> usize {
        self.max_conns_per_ip.unwrap_or((self.max_conns * 3 / 4).max(1))
    }

    /// Worker threads in force: the configured number or `max_conns + 8`.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or(self.max_conns + 8)
    }
}

/// True for a serialized origin as browsers send it: `scheme://host[:port]`, no path.
fn is_origin(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    let scheme_ok = !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let host_ok = !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    scheme_ok && host_ok
}

/// Parses the JSON text of a config file; a type error names the field that caused it.
fn parse_json(text: &str) -> Result<Config, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(fields) = value.as_object() else {
        return Err("the config must be a JSON object such as {\"listen\": \"0.0.0.0:9000\"}".into());
    };

    serde_json::from_value(value.clone()).map_err(|e| {
        // serde names unknown fields but not the field behind a type error, so find it by
        // parsing each field on its own.
        let culprit = fields.iter().find(|(name, field)| {
            let single = serde_json::json!({ name.as_str(): field });
            serde_json::from_value::<Config>(single).is_err()
        });
        match culprit {
            Some((name, _)) if !e.to_string().contains("unknown field") => {
                format!("field `{name}`: {e}; fix the value, or remove the field to use its default")
            }
            _ => format!("{e}; fix the field, or remove it to use its default"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        let config = parse_json(json)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn empty_object_gives_defaults() {
        let config = parse("{}").unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.max_conns, 20);
        assert_eq!(config.worker_count(), 28);
        assert_eq!(config.max_upload_bytes, 1 << 30);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse(r#"{"max_con": 3}"#).unwrap_err();
        assert!(err.contains("unknown field `max_con`"), "{err}");
    }

    #[test]
    fn bad_listen_is_named() {
        let err = parse(r#"{"listen": "9000"}"#).unwrap_err();
        assert!(err.contains("field `listen`"), "{err}");
    }

    #[test]
    fn zero_max_conns_rejected() {
        let err = parse(r#"{"max_conns": 0}"#).unwrap_err();
        assert!(err.contains("max_conns"), "{err}");
    }

    #[test]
    fn storage_defaults_to_local() {
        let config = parse("{}").unwrap();
        assert_eq!(config.storage.backend, StorageBackend::Local);
        assert_eq!(config.storage.prefix, "videos/");
        assert_eq!(config.storage.serve, ServeMode::Proxy);
    }

    #[test]
    fn s3_storage_section_parses() {
        let config = parse(
            r#"{"storage": {"backend": "s3", "endpoint": "http://127.0.0.1:9100/", "bucket": "media",
                "path_style": true, "serve": "redirect", "presign_ttl_secs": 60}}"#,
        )
        .unwrap();
        assert_eq!(config.storage.backend, StorageBackend::S3);
        assert_eq!(config.storage.endpoint_url(), "http://127.0.0.1:9100");
        assert_eq!(config.storage.serve, ServeMode::Redirect);
        assert_eq!(config.storage.presign_ttl_secs, 60);
    }

    #[test]
    fn s3_endpoint_defaults_to_aws_region() {
        let config = parse(r#"{"storage": {"backend": "s3", "bucket": "b", "region": "eu-west-1"}}"#).unwrap();
        assert_eq!(config.storage.endpoint_url(), "https://s3.eu-west-1.amazonaws.com");
    }

    #[test]
    fn s3_without_bucket_rejected() {
        let err = parse(r#"{"storage": {"backend": "s3"}}"#).unwrap_err();
        assert!(err.contains("storage.bucket"), "{err}");
    }

    #[test]
    fn presign_ttl_over_seven_days_rejected() {
        let err = parse(r#"{"storage": {"backend": "s3", "bucket": "b", "presign_ttl_secs": 604801}}"#).unwrap_err();
        assert!(err.contains("storage.presign_ttl_secs"), "{err}");
    }

    #[test]
    fn bad_endpoint_and_prefix_rejected() {
        let err = parse(r#"{"storage": {"backend": "s3", "bucket": "b", "endpoint": "s3.local"}}"#).unwrap_err();
        assert!(err.contains("storage.endpoint"), "{err}");
        let err = parse(r#"{"storage": {"backend": "s3", "bucket": "b", "prefix": "/v"}}"#).unwrap_err();
        assert!(err.contains("storage.prefix"), "{err}");
    }

    #[test]
    fn credentials_in_config_rejected() {
        let err = parse(r#"{"storage": {"backend": "s3", "bucket": "b", "secret_key": "x"}}"#).unwrap_err();
        assert!(err.contains("unknown field `secret_key`"), "{err}");
    }

    #[test]
    fn unknown_backend_rejected() {
        let err = parse(r#"{"storage": {"backend": "gcs"}}"#).unwrap_err();
        assert!(err.contains("storage"), "{err}");
    }

    #[test]
    fn cors_origins_must_be_origins() {
        assert!(parse(r#"{"cors_allow_origins": ["https://a.example:8080", "*"]}"#).is_ok());
        for bad in ["example.com", "http://x.test/", "http://x.test/path", "", "http://a b"] {
            let json = format!(r#"{{"cors_allow_origins": [{bad:?}]}}"#);
            let err = parse(&json).unwrap_err();
            assert!(err.contains("cors_allow_origins"), "{bad}: {err}");
        }
    }

    #[test]
    fn per_ip_share_cannot_exceed_bucket() {
        let err = parse(r#"{"max_conns": 4, "max_conns_per_ip": 10}"#).unwrap_err();
        assert!(err.contains("max_conns_per_ip"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = parse(r#"{"max_conns": "many"}"#).unwrap_err();
        assert!(err.contains("field `max_conns`"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }
}
