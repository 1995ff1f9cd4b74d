//! `POST /upload/{id}`: a `multipart/form-data` upload with the video in field `file`.
//!
//! The steps, in order:
//! 1. reject what can be rejected before the body is read, so no `100 Continue` goes out:
//!    a declared length over `max_upload_bytes` (413), a body that is not multipart (415), no
//!    body framing (411), an id that exists without `?overwrite=true` (409);
//! 2. stream the part named `file` into a temporary file in the staging folder, counting the
//!    body against the limit as it arrives (413 once past it);
//! 3. hand the file to the storage backend, which syncs it and moves it into place atomically;
//! 4. respond 201 with `Location` and `{"id", "size", "url"}`.
//!
//! Any failure removes the temporary file, so nothing half-written is ever visible and an
//! existing video stays untouched.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{storage_error, App};
use crate::api::{ApiError, ApiResult};
use crate::fault;
use crate::multipart::{boundary_from_content_type, MultipartError, MultipartReader};
use crate::server::body::{bad_chunk_reason, is_too_large, BodyReader};
use crate::server::request::{BodyFraming, Request};
use crate::server::response::Response;
use crate::storage::{lock_temp_file, temp_path, StorageError};

/// Bytes copied from the request to the file per write.
const COPY_BUFFER: usize = 256 * 1024;

/// Bytes written between requests to the kernel to start writing the file back, so the sync
/// before the 201 finds little left to write.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// Body bytes after the closing boundary that an upload still reads, so the connection stays
/// reusable; RFC 2046 lets a client put an epilogue there.
const MAX_EPILOGUE: u64 = 64 * 1024;

/// How long an upload waits for the rest of its body after the closing boundary. The last
/// chunk of a chunked body normally follows the boundary at once.
const BODY_END_WAIT: Duration = Duration::from_millis(250);

#[derive(Serialize)]
struct Uploaded<'a> {
    id: &'a str,
    size: u64,
    url: String,
}

pub fn receive(app: &App, request: &Request, body: &mut BodyReader, id: &str) -> ApiResult {
    let overwrite = wants_overwrite(request.query());
    let boundary = check_before_body(app, request, body, id, overwrite)?;

    let temp = TempFile::create(app.storage.staging_dir(), id).map_err(|e| storage_error(e, id))?;
    body.set_limit(app.config.max_upload_bytes);
    let size = copy_file_field(request, body, &boundary, &temp, app.config.max_upload_bytes)?;
    read_body_end(body)?;

    app.storage.commit(&temp.path, id, overwrite).map_err(|e| storage_error(e, id))?;
    log::info!("stored video {id:?}: {size} bytes");

    let url = format!("/videos/{id}");
    let mut response = Response::json(201, &Uploaded { id, size, url: url.clone() });
    response.header("Location", url);
    Ok(response)
}

/// Checks everything that needs no body bytes, and returns the multipart boundary.
fn check_before_body(
    app: &App,
    request: &Request,
    body: &BodyReader,
    id: &str,
    overwrite: bool,
) -> Result<Vec<u8>, ApiError> {
    let limit = app.config.max_upload_bytes;
    if body.declared_length().is_some_and(|n| n > limit) {
        return Err(ApiError::UploadTooLarge { limit });
    }

    let content_type = request.header("content-type").unwrap_or("");
    let boundary = boundary_from_content_type(content_type).map_err(|e| not_multipart(e, content_type))?;

    if request.body == BodyFraming::Empty && request.header("content-length").is_none() {
        return Err(ApiError::LengthRequired);
    }
    if !overwrite && app.storage.exists(id).map_err(|e| storage_error(e, id))? {
        return Err(ApiError::VideoExists(id.to_string()));
    }
    Ok(boundary)
}

/// Builds the 415 for a `Content-Type` that names no multipart form, saying what the request sent.
fn not_multipart(error: MultipartError, content_type: &str) -> ApiError {
    let reason = match error {
        MultipartError::NotMultipart if content_type.is_empty() => {
            "the request has no Content-Type; send the file as a form field, as curl -F file=@clip.mp4 does".to_string()
        }
        MultipartError::NotMultipart => format!(
            "the Content-Type is {content_type:?}; send the file as a form field, as curl -F file=@clip.mp4 does"
        ),
        other => other.to_string(),
    };
    ApiError::NotMultipart(reason)
}

/// True for `?overwrite=true` (or `1`) among the query parameters.
fn wants_overwrite(query: Option<&str>) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(key, value)| key == "overwrite" && (value == "true" || value == "1"))
}

/// Reads every part, writing the first `file` part to `temp`. Returns its size.
fn copy_file_field(
    request: &Request,
    body: &mut BodyReader,
    boundary: &[u8],
    temp: &TempFile,
    limit: u64,
) -> Result<u64, ApiError> {
    let mut parts = MultipartReader::new(&mut *body, boundary);
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut file = &temp.file;
    let mut size = None;

    while let Some(headers) = parts.next_part().map_err(|e| body_error(e, limit))? {
        if size.is_some() || headers.name.as_deref() != Some("file") {
            continue;
        }
        let mut written = 0u64;
        loop {
            let n = parts.read_part(&mut buffer).map_err(|e| body_error(e, limit))?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n])
                .map_err(|e| storage_error(StorageError::io(format!("write {}", temp.path.display()), e), "upload"))?;
            if written / WRITEBACK_EVERY != (written + n as u64) / WRITEBACK_EVERY {
                start_writeback(&temp.file);
            }
            written += n as u64;
            fault::inject(request, fault::Point::MidUpload);
        }
        size = Some(written);
    }

    size.ok_or(ApiError::MissingFileField)
}

/// Reads what follows the closing boundary, up to [`MAX_EPILOGUE`] bytes and for at most
/// [`BODY_END_WAIT`] in all. That is usually a CRLF, and for a chunked body the last chunk
/// and trailers, which may still be on their way when the closing boundary has been parsed.
/// Reading them keeps the connection open for the client's next request. A rest that is
/// longer or late is left to the worker, which then closes the connection. Broken chunked
/// framing fails the upload like a broken chunk before the boundary, because a proxy in front
/// may have read the message differently.
fn read_body_end(body: &mut BodyReader) -> Result<(), ApiError> {
    let usual_timeout = body.stream().read_timeout().ok().flatten();
    body.set_deadline(Some(Instant::now() + BODY_END_WAIT));
    let mut scratch = [0u8; 8192];
    let mut read = 0;

    let result = loop {
        let want = scratch.len().min((MAX_EPILOGUE - read) as usize);
        match io::Read::read(body, &mut scratch[..want]) {
            Ok(0) => break Ok(()),
            Ok(n) if read + n as u64 >= MAX_EPILOGUE => break Ok(()),
            Ok(n) => read += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };

    body.set_deadline(None);
    if let Err(e) = body.stream().set_read_timeout(usual_timeout) {
        log::warn!("cannot restore the read timeout after an upload: {e}; the connection keeps a {BODY_END_WAIT:?} timeout");
    }
    let Err(e) = result else { return Ok(()) };
    if let Some(reason) = bad_chunk_reason(&e) {
        return Err(malformed_chunks(reason));
    }
    log::debug!("the upload body did not end within {BODY_END_WAIT:?} after its closing boundary: {e}; closing the connection after the response");
    Ok(())
}

/// Asks the kernel to start writing the file's dirty pages to disk without waiting for them.
/// Only a hint: the sync before the 201 is what makes the upload durable.
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range(2) on a descriptor the File owns; offset 0 and length 0 mean
    // the whole file.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Builds the 400 for a chunked body that breaks its framing.
fn malformed_chunks(reason: &str) -> ApiError {
    ApiError::BadRequest(format!("malformed chunked body: {reason}"))
}

/// Maps a failure while reading the multipart body to the error the client gets.
fn body_error(error: MultipartError, limit: u64) -> ApiError {
    match error {
        MultipartError::Io(e) if is_too_large(&e) => ApiError::UploadTooLarge { limit },
        MultipartError::Io(e) => match bad_chunk_reason(&e) {
            Some(reason) => malformed_chunks(reason),
            None => {
                log::info!("upload body read failed: {e}");
                incomplete_or_io(e)
            }
        },
        // The HTTP body ended as framed, so the multipart data itself is cut short; a client
        // that hung up shows as an I/O error above instead.
        MultipartError::UnexpectedEof => {
            ApiError::MalformedMultipart("the body ended before the closing boundary".into())
        }
        other => ApiError::MalformedMultipart(other.to_string()),
    }
}

fn incomplete_or_io(e: io::Error) -> ApiError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::TimedOut
        | io::ErrorKind::WouldBlock
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ApiError::IncompleteBody,
        _ => ApiError::Internal,
    }
}

/// A temporary upload file, removed on drop unless it was moved into place.
struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn create(dir: &Path, id: &str) -> Result<TempFile, StorageError> {
        let path = temp_path(dir, id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io(format!("create {}", path.display()), e))?;
        let temp = TempFile { path, file };
        lock_temp_file(&temp.file)
            .map_err(|e| StorageError::io(format!("lock {}", temp.path.display()), e))?;
        Ok(temp)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => log::debug!("removed upload temporary file {}", self.path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::error!("cannot remove upload temporary file {}: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrite_flag_parsing() {
        assert!(wants_overwrite(Some("overwrite=true")));
        assert!(wants_overwrite(Some("a=b&overwrite=1")));
        assert!(!wants_overwrite(Some("overwrite=false")));
        assert!(!wants_overwrite(Some("overwrite")));
        assert!(!wants_overwrite(None));
    }
}
