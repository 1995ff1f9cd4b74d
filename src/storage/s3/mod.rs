//! The S3 backend: video `id` is object `{prefix}{id}` in one bucket of an S3-compatible store
//! (AWS S3, Aliyun OSS, MinIO and others that speak the S3 API with SigV4).
//!
//! This module owns the bucket settings, the credentials and the [`Storage`] methods. Reads
//! (HEAD and ranged GET) live in `client`, writes in `upload` and `abort`, and the mapping of
//! bucket failures to [`StorageError`] in `errors`. The handlers never know which backend
//! serves them.
//!
//! - Client: rust-s3 0.38 in its blocking mode (`sync-native-tls`) signs every request with
//!   SigV4, builds presigned URLs, and sends the upload requests. Its `fail-on-err` feature is
//!   on: without it, a failed request returns the bucket's XML error text as if it were the
//!   answer's data, and the upload calls would take an error for success.
//! - TLS: native-tls uses OpenSSL and the system CA store, so an endpoint with a private CA
//!   works once the CA is added with `update-ca-certificates`. rust-s3's rustls variant in
//!   blocking mode offers no way to add a CA.
//! - Uploads are staged in `video_dir` by the upload handler as for local storage, copied into
//!   the bucket by [`Storage::commit`], and then removed.
//! - Without `?overwrite=true`, the handler and `commit` check that the key is free before the
//!   upload. Two uploads of one new id racing past that check both succeed, and the one that
//!   finishes last wins: S3 has no portable create-only write.
//! - With `serve: "redirect"`, [`Storage::redirect_url`] checks that the object exists and
//!   returns a presigned GET URL valid for `presign_ttl_secs`. The URL carries a signature, so
//!   it is never logged.
//! - Several servers can share one bucket and prefix, because no state is kept outside the
//!   bucket. The ETag sent to clients derives from the object's own ETag, size and
//!   modification time, so every server sends the same ETag for the same object.

mod abort;
mod client;
mod errors;
mod upload;

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use s3::creds::Credentials;
use s3::{Bucket, Region};

use super::{Object, ObjectInfo, ObjectSource, Storage, StorageError};
use crate::config::{ServeMode, StorageConfig};
use crate::http::content_type;
use crate::server::response::Body;
use abort::AbortQueue;
use client::{ObjectHead, RangeReader};

/// Whole-request deadline of the rust-s3 calls (uploads and their parts, presigning). One
/// part is at most 8 MiB, so this allows a link of about 140 KB/s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes of a staged upload read to guess the type of an id without a known extension.
const SNIFF_BYTES: usize = 64;

/// S3 credentials read from the environment. `Debug` shows none of the values.
pub struct EnvCredentials {
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
}

impl EnvCredentials {
    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and the optional `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Result<EnvCredentials, String> {
        let required = |name: &str| match std::env::var(name) {
            Ok(value) if !value.is_empty() => Ok(value),
            _ => Err(format!(
                "{name} is unset: the s3 storage backend reads its credentials from AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones); export them before starting"
            )),
        };
        Ok(EnvCredentials {
            access_key: required("AWS_ACCESS_KEY_ID")?,
            secret_key: required("AWS_SECRET_ACCESS_KEY")?,
            session_token: std::env::var("AWS_SESSION_TOKEN").ok().filter(|t| !t.is_empty()),
        })
    }
}

impl fmt::Debug for EnvCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvCredentials")
            .field("access_key", &"[redacted]")
            .field("secret_key", &"[redacted]")
            .field("session_token", &self.session_token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Videos stored as objects in one S3 bucket.
pub struct S3Storage {
    bucket: Arc<Bucket>,
    aborts: AbortQueue,
    prefix: String,
    serve: ServeMode,
    presign_ttl_secs: u32,
    staging_dir: PathBuf,
    description: String,
}

impl S3Storage {
    /// Builds the client for `config`, staging uploads in `staging_dir`, without connecting.
    /// Fails on settings that rust-s3 rejects.
    pub fn new(config: &StorageConfig, staging_dir: &Path, credentials: EnvCredentials) -> Result<S3Storage, String> {
        let endpoint = config.endpoint_url();
        let region = Region::Custom { region: config.region.clone(), endpoint: endpoint.clone() };
        let credentials = Credentials::new(
            Some(&credentials.access_key),
            Some(&credentials.secret_key),
            None,
            credentials.session_token.as_deref(),
            None,
        )
        .map_err(|e| format!("storage credentials: {e}"))?;

        let bucket = Bucket::new(&config.bucket, region, credentials)
            .and_then(|bucket| bucket.with_request_timeout(REQUEST_TIMEOUT))
            .map_err(|e| format!("field `storage`: cannot use bucket {:?} at {endpoint}: {e}", config.bucket))?;
        let bucket = if config.path_style { bucket.with_path_style() } else { bucket };

        let serve = match config.serve {
            ServeMode::Proxy => "proxy",
            ServeMode::Redirect => "redirect",
        };
        let bucket = Arc::new(*bucket);
        let aborts = AbortQueue::start(bucket.clone()).map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(S3Storage {
            bucket,
            aborts,
            prefix: config.prefix.clone(),
            serve: config.serve,
            presign_ttl_secs: config.presign_ttl_secs,
            staging_dir: staging_dir.to_path_buf(),
            description: format!(
                "s3 bucket {:?} at {endpoint} (region {}, prefix {:?}, {} URLs, serve {serve})",
                config.bucket,
                config.region,
                config.prefix,
                if config.path_style { "path-style" } else { "virtual-hosted" },
            ),
        })
    }

    /// Lists at most one key under the prefix, to report at startup a bucket that is missing,
    /// unreachable or rejects these credentials. Only a missing bucket is an error, because
    /// the others may be temporary or mean that the credentials lack only the list permission.
    pub fn check_bucket(&self) -> Result<(), String> {
        match self.bucket.list_page(self.prefix.clone(), None, None, None, Some(1)) {
            Ok(_) => Ok(()),
            Err(e) => match errors::from_s3(e, format!("list {:?}", self.prefix)) {
                StorageError::NotFound => Err(format!(
                    "field `storage.bucket`: bucket {:?} does not exist at {}; create it or fix the name",
                    self.bucket.name,
                    self.bucket.region.endpoint()
                )),
                other => {
                    log::warn!("cannot check the storage bucket at startup: {other}");
                    Ok(())
                }
            },
        }
    }

    fn key_of(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// Copies the staged file into the bucket, after checking the key is free unless
    /// `overwrite` is set.
    fn store(&self, staged: &Path, id: &str, overwrite: bool) -> Result<(), StorageError> {
        let key = self.key_of(id);
        if !overwrite && self.exists(id)? {
            return Err(StorageError::AlreadyExists);
        }

        let content_type = content_type_for_upload(id, staged);
        upload::upload_file(&self.bucket, &self.aborts, &key, staged, content_type)
    }
}

impl Storage for S3Storage {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn open(&self, id: &str) -> Result<Object, StorageError> {
        let key = self.key_of(id);
        let head = client::head(&self.bucket, &key)?;
        let info = object_info(&head);
        let source = S3Source { bucket: self.bucket.clone(), key, etag: head.etag, size: head.size };
        Ok(Object { info, source: Box::new(source) })
    }

    fn exists(&self, id: &str) -> Result<bool, StorageError> {
        match client::head(&self.bucket, &self.key_of(id)) {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn staging_dir(&self) -> &Path {
        &self.staging_dir
    }

    fn commit(&self, staged: &Path, id: &str, overwrite: bool) -> Result<(), StorageError> {
        let result = self.store(staged, id, overwrite);
        match std::fs::remove_file(staged) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::error!("cannot remove upload temporary file {}: {e}", staged.display()),
        }
        result
    }

    /// Sends `DELETE` after a `HEAD`, because S3 returns `204` for a delete of a missing key.
    fn delete(&self, id: &str) -> Result<(), StorageError> {
        let key = self.key_of(id);
        client::head(&self.bucket, &key)?;

        let context = format!("DELETE {key}");
        let response = self.bucket.delete_object(&key).map_err(|e| errors::from_s3(e, context.clone()))?;
        match response.status_code() {
            200..=299 => Ok(()),
            status => Err(errors::from_status(status, response.as_str().unwrap_or(""), context)),
        }
    }

    fn redirect_url(&self, id: &str) -> Option<Result<String, StorageError>> {
        if self.serve != ServeMode::Redirect {
            return None;
        }
        let key = self.key_of(id);
        let presigned = client::head(&self.bucket, &key).and_then(|_| {
            self.bucket
                .presign_get(&key, self.presign_ttl_secs, None)
                .map_err(|e| errors::from_s3(e, format!("presign GET {key}")))
        });
        Some(presigned)
    }
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage").field("description", &self.description).finish_non_exhaustive()
    }
}

/// Reads ranges of one object as it was when opened: every GET carries its ETag as `If-Match`.
struct S3Source {
    bucket: Arc<Bucket>,
    key: String,
    etag: Option<String>,
    size: u64,
}

impl ObjectSource for S3Source {
    fn range_body(&self, start: u64, len: u64) -> Body {
        let reader = RangeReader::new(self.bucket.clone(), self.key.clone(), self.etag.clone(), start, len);
        Body::Stream { reader: Box::new(reader), len }
    }

    fn read_prefix(&self, n: usize) -> io::Result<Vec<u8>> {
        let len = self.size.min(n as u64);
        let mut prefix = Vec::with_capacity(len as usize);
        RangeReader::new(self.bucket.clone(), self.key.clone(), self.etag.clone(), 0, len).read_to_end(&mut prefix)?;
        Ok(prefix)
    }
}

fn object_info(head: &ObjectHead) -> ObjectInfo {
    ObjectInfo {
        size: head.size,
        modified: head.modified.unwrap_or(UNIX_EPOCH),
        identity: fnv1a(head.etag.as_deref().unwrap_or("").as_bytes()),
        content_type: head.content_type.clone(),
    }
}

/// Picks the type stored with a new object: from the id's extension, else guessed from the
/// file's first bytes, so streaming it later needs no extra request to guess.
fn content_type_for_upload(id: &str, staged: &Path) -> &'static str {
    if let Some(known) = content_type::from_extension(id) {
        return known;
    }
    let mut prefix = Vec::with_capacity(SNIFF_BYTES);
    match std::fs::File::open(staged).and_then(|file| file.take(SNIFF_BYTES as u64).read_to_end(&mut prefix)) {
        Ok(_) => content_type::sniff(&prefix),
        Err(e) => {
            log::warn!("cannot read the start of {} to guess its type: {e}", staged.display());
            "application/octet-stream"
        }
    }
}

/// 64-bit FNV-1a: a hash that every server computes the same, unlike `DefaultHasher`, whose
/// output may change between Rust releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_values() {
        let credentials = EnvCredentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI".into(),
            session_token: Some("token123".into()),
        };
        let text = format!("{credentials:?}");
        assert!(!text.contains("AKIDEXAMPLE"), "{text}");
        assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
        assert!(!text.contains("token123"), "{text}");
    }

    #[test]
    fn storage_debug_hides_credentials() {
        let config = StorageConfig { bucket: "media".into(), ..StorageConfig::default() };
        let credentials = EnvCredentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI".into(),
            session_token: None,
        };
        let storage = S3Storage::new(&config, Path::new("/tmp"), credentials).unwrap();
        let text = format!("{storage:?} {}", storage.describe());
        assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
        assert!(!text.contains("AKIDEXAMPLE"), "{text}");
        assert!(text.contains("media"), "{text}");
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn key_is_prefix_and_id() {
        let config = StorageConfig { bucket: "media".into(), prefix: "v/".into(), ..StorageConfig::default() };
        let credentials = EnvCredentials { access_key: "a".into(), secret_key: "s".into(), session_token: None };
        let storage = S3Storage::new(&config, Path::new("/tmp"), credentials).unwrap();
        assert_eq!(storage.key_of("clip.mp4"), "v/clip.mp4");
    }
}
