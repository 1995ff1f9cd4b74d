//! `GET` and `HEAD /videos/{id}`: a stored video with validators, preconditions and ranges.
//!
//! The steps, in order:
//! 1. open the video (404 when it is not stored);
//! 2. compute its validators, a strong ETag and `Last-Modified`;
//! 3. evaluate the preconditions (RFC 9110 §13.2.2): 412 or 304 end here;
//! 4. honour `Range` only when `If-Range` allows it, then pick the whole file, one range,
//!    several ranges as `multipart/byteranges`, or 416;
//! 5. add the media headers every answer carries.
//!
//! HEAD builds the same response as GET; the writer leaves the body out. A backend that
//! serves by redirect (S3 with `serve: "redirect"`) gets a `302` before all of this.

use std::borrow::Cow;
use std::time::SystemTime;

use super::{storage_error, App};
use crate::api::{ApiError, ApiResult};
use crate::http::byteranges::{plan_byteranges, random_boundary, Segment};
use crate::http::conditional::{
    evaluate_preconditions, format_http_date, if_range_allows_partial, strong_etag, Conditionals,
    Precondition, Validators,
};
use crate::http::content_type;
use crate::http::range::{evaluate_range, ByteRange, RangeOutcome};
use crate::server::request::Request;
use crate::server::response::{Body, Response};
use crate::storage::Object;

/// Bytes read from the start of a video whose id has no known extension, to guess its type.
const SNIFF_BYTES: usize = 64;

pub fn serve(app: &App, request: &Request, id: &str) -> ApiResult {
    if let Some(location) = app.storage.redirect_url(id) {
        return location.map(|url| redirect(&url)).map_err(|e| storage_error(e, id));
    }

    let object = app.storage.open(id).map_err(|e| storage_error(e, id))?;
    let size = object.info.size;

    // RFC 9110 §8.8.2.1: a modification time in the future is sent, and compared, as now.
    let validators = Validators {
        etag: strong_etag(object.info.identity, size, object.info.modified),
        last_modified: object.info.modified.min(SystemTime::now()),
    };

    match evaluate_preconditions(&conditionals(request), &validators, true) {
        Precondition::Proceed => {}
        Precondition::NotModified => return Ok(not_modified(app, validators)),
        Precondition::PreconditionFailed => return Err(ApiError::PreconditionFailed),
    }

    let range_header = request
        .header("range")
        .filter(|_| if_range_allows_partial(request.header("if-range"), &validators));
    let outcome = evaluate_range(range_header, size, app.config.max_ranges);
    log::trace!("{id}: range {range_header:?} of {size} bytes gives {outcome:?}");

    let content_type = content_type_of(id, &object);
    let mut response = match outcome {
        RangeOutcome::Full => whole(&object, content_type),
        RangeOutcome::Partial(range) => single_range(&object, range, content_type),
        RangeOutcome::Multi(ranges) => multiple_ranges(&object, &ranges, &content_type),
        RangeOutcome::Unsatisfiable => ApiError::RangeNotSatisfiable { size }.to_response(),
    };
    add_media_headers(app, validators, &mut response);
    Ok(response)
}

/// A `302` to where the backend serves the video, such as a presigned bucket URL. The URL
/// carries a signature, so it is not logged, and `no-store` keeps caches from reusing it
/// after it expires.
fn redirect(url: &str) -> Response {
    let mut response = Response::new(302);
    response.header("Location", url.to_string());
    response.header("Cache-Control", "no-store");
    response
}

fn conditionals(request: &Request) -> Conditionals<'_> {
    Conditionals {
        if_match: request.header("if-match"),
        if_none_match: request.header("if-none-match"),
        if_modified_since: request.header("if-modified-since"),
        if_unmodified_since: request.header("if-unmodified-since"),
        if_range: request.header("if-range"),
    }
}

/// The content type from the id's extension, the backend's stored type, or the first bytes.
fn content_type_of(id: &str, object: &Object) -> Cow<'static, str> {
    if let Some(known) = content_type::from_extension(id) {
        return Cow::Borrowed(known);
    }
    if let Some(stored) = &object.info.content_type {
        return Cow::Owned(stored.clone());
    }
    match object.source.read_prefix(SNIFF_BYTES) {
        Ok(prefix) => Cow::Borrowed(content_type::sniff(&prefix)),
        Err(e) => {
            log::warn!("cannot read the start of {id:?} to guess its type: {e}");
            Cow::Borrowed("application/octet-stream")
        }
    }
}

fn whole(object: &Object, content_type: Cow<'static, str>) -> Response {
    let mut response = Response::new(200);
    response.header("Content-Type", content_type);
    response.body = body_of(object, 0, object.info.size);
    response
}

fn single_range(object: &Object, range: ByteRange, content_type: Cow<'static, str>) -> Response {
    let mut response = Response::new(206);
    response.header("Content-Type", content_type);
    response.header("Content-Range", range.content_range(object.info.size));
    response.body = body_of(object, range.start, range.len());
    response
}

/// A `multipart/byteranges` answer whose parts are read from the video as they are sent.
fn multiple_ranges(object: &Object, ranges: &[ByteRange], content_type: &str) -> Response {
    let plan = plan_byteranges(ranges, object.info.size, content_type, random_boundary());
    let mut response = Response::new(206);
    response.header("Content-Type", plan.content_type());

    let parts = plan
        .segments
        .into_iter()
        .map(|segment| match segment {
            Segment::Bytes(bytes) => Body::Bytes(bytes),
            Segment::File { start, len } => body_of(object, start, len),
        })
        .collect();
    response.body = Body::Sequence(parts);
    response
}

fn body_of(object: &Object, start: u64, len: u64) -> Body {
    if len == 0 {
        return Body::Empty;
    }
    object.source.range_body(start, len)
}

/// A 304 carries the validators and caching headers, and no body headers (RFC 9110 §15.4.5).
fn not_modified(app: &App, validators: Validators) -> Response {
    let mut response = Response::new(304);
    add_validator_headers(app, validators, &mut response);
    response
}

fn add_media_headers(app: &App, validators: Validators, response: &mut Response) {
    response.header("Accept-Ranges", "bytes");
    response.header("X-Content-Type-Options", "nosniff");
    add_validator_headers(app, validators, response);
}

fn add_validator_headers(app: &App, validators: Validators, response: &mut Response) {
    response.header("ETag", validators.etag);
    response.header("Last-Modified", format_http_date(validators.last_modified));
    // A shared cache must not keep a 416 for the media's lifetime.
    if response.status != 416 {
        response.header("Cache-Control", app.cache_control);
    }
}
