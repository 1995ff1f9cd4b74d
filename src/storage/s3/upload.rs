//! Copies a finished upload file into the bucket: one `PUT` when it fits in one part, a
//! multipart upload otherwise.
//!
//! The object appears only when the single `PUT` or the `CompleteMultipartUpload` succeeds,
//! so readers never see part of a video. When a part or the completion fails, the multipart
//! upload is aborted so its parts are freed. When that abort fails because the bucket is
//! unreachable, [`AbortQueue`] retries it in the background.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use s3::serde_types::Part;
use s3::Bucket;

use super::abort::AbortQueue;
use super::errors;
use crate::storage::StorageError;

/// Bytes per part, and the largest file sent as one `PUT`. S3 needs at least 5 MiB for every
/// part but the last. Each upload keeps one buffer of this size, plus rust-s3's copy of it.
const PART_SIZE: u64 = 8 * 1024 * 1024;

/// Maximum number of parts in one multipart upload, an S3 limit.
const MAX_PARTS: u64 = 10_000;

/// Stores the file at `path` as object `key` with `content_type`.
pub fn upload_file(
    bucket: &Bucket,
    aborts: &AbortQueue,
    key: &str,
    path: &Path,
    content_type: &str,
) -> Result<(), StorageError> {
    let mut file = File::open(path).map_err(|e| StorageError::io(format!("open {}", path.display()), e))?;
    let size = file
        .metadata()
        .map_err(|e| StorageError::io(format!("stat {}", path.display()), e))?
        .len();

    if size <= PART_SIZE {
        return put_whole(bucket, key, &mut file, path, content_type);
    }
    upload_multipart(bucket, aborts, key, &mut file, path, size, content_type)
}

fn put_whole(bucket: &Bucket, key: &str, file: &mut File, path: &Path, content_type: &str) -> Result<(), StorageError> {
    let mut content = Vec::new();
    file.read_to_end(&mut content)
        .map_err(|e| StorageError::io(format!("read {}", path.display()), e))?;

    let context = format!("PUT {key}");
    let response = bucket
        .put_object_with_content_type(key, &content, content_type)
        .map_err(|e| write_error(e, &context))?;
    expect_success(response.status_code(), &context)?;
    log::debug!("stored {key:?} with one PUT of {} bytes", content.len());
    Ok(())
}

fn upload_multipart(
    bucket: &Bucket,
    aborts: &AbortQueue,
    key: &str,
    file: &mut File,
    path: &Path,
    size: u64,
    content_type: &str,
) -> Result<(), StorageError> {
    let context = format!("start multipart upload of {key}");
    let upload = bucket
        .initiate_multipart_upload(key, content_type)
        .map_err(|e| write_error(e, &context))?;
    let upload_id = upload.upload_id;

    let result = upload_parts(bucket, key, &upload_id, file, path, size, content_type)
        .and_then(|parts| complete(bucket, key, &upload_id, parts));
    if result.is_err() {
        aborts.abort(bucket, key, &upload_id);
    }
    result
}

fn upload_parts(
    bucket: &Bucket,
    key: &str,
    upload_id: &str,
    file: &mut File,
    path: &Path,
    size: u64,
    content_type: &str,
) -> Result<Vec<Part>, StorageError> {
    let part_size = part_size_for(size);
    let mut buffer = vec![0u8; part_size as usize];
    let mut parts = Vec::new();

    loop {
        let filled = read_full(file, &mut buffer).map_err(|e| StorageError::io(format!("read {}", path.display()), e))?;
        if filled == 0 {
            break;
        }
        let part_number = parts.len() as u32 + 1;
        let context = format!("upload part {part_number} of {key}");
        log::debug!("uploading part {part_number} of {key:?}: {filled} bytes");
        let part = bucket
            .put_multipart_chunk(&buffer[..filled], key, part_number, upload_id, content_type)
            .map_err(|e| write_error(e, &context))?;
        parts.push(part);
    }
    Ok(parts)
}

fn complete(bucket: &Bucket, key: &str, upload_id: &str, parts: Vec<Part>) -> Result<(), StorageError> {
    let context = format!("complete multipart upload of {key}");
    let count = parts.len();
    let response = bucket
        .complete_multipart_upload(key, upload_id, parts)
        .map_err(|e| write_error(e, &context))?;
    expect_success(response.status_code(), &context)?;
    log::debug!("stored {key:?} as {count} parts");
    Ok(())
}

/// Returns the part size for a file of `size` bytes: [`PART_SIZE`], or more when that would
/// need more than [`MAX_PARTS`] parts.
fn part_size_for(size: u64) -> u64 {
    PART_SIZE.max(size.div_ceil(MAX_PARTS))
}

/// Reads until `buffer` is full or the file ends. Returns the bytes read.
fn read_full(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn write_error(error: s3::error::S3Error, context: &str) -> StorageError {
    errors::not_found_on_write(errors::from_s3(error, context.to_string()), context)
}

/// Rejects a non-2xx status. rust-s3 with `fail-on-err` already returns those as errors, and
/// this check keeps a build without that feature from taking an error response for success.
fn expect_success(status: u16, context: &str) -> Result<(), StorageError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    Err(errors::not_found_on_write(errors::from_status(status, "", context.to_string()), context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_is_eight_mib_for_usual_files() {
        assert_eq!(part_size_for(100 * 1024 * 1024), PART_SIZE);
    }

    #[test]
    fn part_size_grows_to_stay_within_part_limit() {
        let size = 200 * 1024 * 1024 * 1024;
        let part = part_size_for(size);
        assert!(size.div_ceil(part) <= MAX_PARTS);
        assert!(part > PART_SIZE);
    }

    #[test]
    fn read_full_fills_across_short_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 10]).unwrap();
        let mut file = File::open(&path).unwrap();
        let mut buffer = [0u8; 4];
        assert_eq!(read_full(&mut file, &mut buffer).unwrap(), 4);
        assert_eq!(read_full(&mut file, &mut buffer).unwrap(), 4);
        assert_eq!(read_full(&mut file, &mut buffer).unwrap(), 2);
        assert_eq!(read_full(&mut file, &mut buffer).unwrap(), 0);
    }
}
