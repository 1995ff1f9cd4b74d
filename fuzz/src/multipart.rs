//! Properties of `MultipartReader` for any body, any boundary and any split of the body into
//! reads.
//!
//! The reader must not panic, must end (each call makes progress or reports the end), and must
//! return no more bytes than the body contains. It must give the same parts and the same error
//! however the inner reader splits the body, whether part bodies are read or skipped, and
//! whatever follows a successfully parsed body. Memory use is left to the fuzzer's
//! `-rss_limit_mb` and `-malloc_limit_mb`.

use std::io::{self, Read};

use streamserver::multipart::{
    boundary_from_content_type, MultipartError, MultipartReader, PartHeaders, MAX_PARTS, MAX_PART_HEADER_BYTES,
};

/// Largest read size and `read_part` buffer the fuzz input can ask for, in bytes.
const MAX_CHUNK: usize = 1 << 20;

/// Read size used when the fuzz input lists none.
const DEFAULT_READ: usize = 64 * 1024;

/// `read_part` buffer size used when the fuzz input gives none.
const DEFAULT_CHUNK: usize = 4096;

/// `read_part` buffer size for the reference parse, larger than the reader's internal buffer
/// so that each call returns all the content the reader has found.
const REFERENCE_CHUNK: usize = 128 * 1024;

/// One multipart body and how to read it.
#[derive(Debug, Clone)]
pub struct MultipartCase<'a> {
    /// The raw boundary, without the leading `--`. Any bytes, including ones that
    /// `boundary_from_content_type` rejects.
    pub boundary: &'a [u8],
    /// Sizes of successive reads from the inner reader, cycled. A 0 makes that read fail with
    /// `ErrorKind::Interrupted` once, which the reader must retry. An empty list reads
    /// `DEFAULT_READ` bytes at a time.
    pub read_sizes: &'a [usize],
    /// Size of the buffer passed to `read_part`, at least 1.
    pub chunk_len: usize,
    pub body: &'a [u8],
}

/// Decodes fuzz input of the form `READ,SIZES;CHUNK_LEN;BOUNDARY\nBODY` and checks it.
/// The boundary is percent-decoded, so `%0A` puts a line feed in it. A missing or invalid
/// number takes its default, and input without a line feed is skipped.
pub fn check_multipart_input(data: &[u8]) {
    let Some(newline) = data.iter().position(|&byte| byte == b'\n') else {
        return;
    };
    let (control, body) = (&data[..newline], &data[newline + 1..]);

    let mut fields = control.splitn(3, |&byte| byte == b';');
    let read_sizes: Vec<usize> = fields
        .next()
        .unwrap_or_default()
        .split(|&byte| byte == b',')
        .filter_map(parse_decimal)
        .map(|size| size.min(MAX_CHUNK))
        .collect();
    let chunk_len = fields.next().and_then(parse_decimal).unwrap_or(DEFAULT_CHUNK);
    let boundary = percent_decode(fields.next().unwrap_or_default());

    check_multipart(&MultipartCase {
        boundary: &boundary,
        read_sizes: &read_sizes,
        chunk_len: chunk_len.clamp(1, MAX_CHUNK),
        body,
    });
}

fn parse_decimal(digits: &[u8]) -> Option<usize> {
    std::str::from_utf8(digits).ok()?.trim().parse().ok()
}

/// Decodes `%XX` escapes and keeps any other byte, a lone `%` included.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut index = 0;
    while index < input.len() {
        let escaped = input
            .get(index + 1..index + 3)
            .filter(|_| input[index] == b'%')
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                output.push(byte);
                index += 3;
            }
            None => {
                output.push(input[index]);
                index += 1;
            }
        }
    }
    output
}

/// Parses one body three ways and checks each result and that they agree.
pub fn check_multipart(case: &MultipartCase) {
    check_boundary_parameter(case.boundary);

    let chunked = parse_reading_bodies(ScriptedReader::new(case.body, case.read_sizes), case);
    let whole = parse_reading_bodies(case.body, &MultipartCase { chunk_len: REFERENCE_CHUNK, ..case.clone() });
    let skipped = parse_skipping_bodies(ScriptedReader::new(case.body, case.read_sizes), case.boundary);

    check_bounds(&chunked, case);
    assert_eq!(chunked, whole, "result depends on the read sizes {:?}", case.read_sizes);
    assert_eq!(
        (chunked.headers(), &chunked.error),
        (skipped.headers(), &skipped.error),
        "skipping part bodies changes the result"
    );

    if chunked.error.is_none() {
        check_trailing_bytes_ignored(&chunked, case);
    }
}

/// The parts read and the error that ended the parse, if any.
#[derive(Debug, PartialEq, Eq)]
struct ParseResult {
    parts: Vec<(PartHeaders, Vec<u8>)>,
    error: Option<String>,
}

impl ParseResult {
    fn headers(&self) -> Vec<&PartHeaders> {
        self.parts.iter().map(|(headers, _)| headers).collect()
    }
}

fn parse_reading_bodies<R: Read>(inner: R, case: &MultipartCase) -> ParseResult {
    let mut reader = MultipartReader::new(inner, case.boundary);
    let mut parts = Vec::new();
    let mut chunk = vec![0u8; case.chunk_len];
    // Every call but the last of each part returns at least one byte, so the body length
    // plus two calls per part bounds the calls of a parse that makes progress.
    let mut calls_left = case.body.len() + 2 * (MAX_PARTS + 1);

    loop {
        let headers = match reader.next_part() {
            Ok(Some(headers)) => headers,
            Ok(None) => return ParseResult { parts, error: None },
            Err(error) => return failed(parts, error),
        };
        let mut content = Vec::new();
        loop {
            calls_left = calls_left.checked_sub(1).expect("read_part makes no progress");
            match reader.read_part(&mut chunk) {
                Ok(0) => break,
                Ok(count) => content.extend_from_slice(&chunk[..count]),
                Err(error) => {
                    parts.push((headers, content));
                    return failed(parts, error);
                }
            }
        }
        parts.push((headers, content));
    }
}

fn parse_skipping_bodies<R: Read>(inner: R, boundary: &[u8]) -> ParseResult {
    let mut reader = MultipartReader::new(inner, boundary);
    let mut parts = Vec::new();
    loop {
        match reader.next_part() {
            Ok(Some(headers)) => parts.push((headers, Vec::new())),
            Ok(None) => return ParseResult { parts, error: None },
            Err(error) => return failed(parts, error),
        }
    }
}

fn failed(parts: Vec<(PartHeaders, Vec<u8>)>, error: MultipartError) -> ParseResult {
    assert!(!matches!(error, MultipartError::Io(_)), "inner reader never fails, got {error:?}");
    ParseResult { parts, error: Some(error.to_string()) }
}

fn check_bounds(result: &ParseResult, case: &MultipartCase) {
    assert!(result.parts.len() <= MAX_PARTS, "{} parts returned", result.parts.len());

    let content_total: usize = result.parts.iter().map(|(_, content)| content.len()).sum();
    assert!(
        content_total <= case.body.len(),
        "{content_total} content bytes returned from a {}-byte body",
        case.body.len()
    );

    // Lossy UTF-8 decoding turns each invalid byte into the 3-byte U+FFFD.
    let max_field_len = 3 * MAX_PART_HEADER_BYTES;
    for (headers, _) in &result.parts {
        for field in [&headers.name, &headers.filename, &headers.content_type].into_iter().flatten() {
            assert!(field.len() <= max_field_len, "{}-byte header field returned", field.len());
        }
    }
}

/// A body that parsed completely must parse the same with more bytes after it, because the
/// reader decides on the closing delimiter without looking past it.
fn check_trailing_bytes_ignored(result: &ParseResult, case: &MultipartCase) {
    let mut extended = case.body.to_vec();
    extended.extend_from_slice(b"\r\n--");
    extended.extend_from_slice(case.boundary);
    extended.extend_from_slice(b"\r\ntrailing part\r\n");

    let again = parse_reading_bodies(ScriptedReader::new(&extended, case.read_sizes), case);
    assert_eq!(&again, result, "bytes after the closing delimiter change the result");
}

/// A quoted `boundary` parameter must be accepted exactly when it is 1 to 70 printable ASCII
/// characters or spaces not ending in a space, and must come back unchanged. Boundaries with a
/// quote or backslash, which the quoted string would escape, only get the limits checked.
fn check_boundary_parameter(boundary: &[u8]) {
    let Ok(text) = std::str::from_utf8(boundary) else {
        return;
    };
    let content_type = format!("multipart/form-data; boundary=\"{text}\"");
    let escapes = text.contains(['"', '\\']);
    let valid = (1..=70).contains(&boundary.len())
        && boundary.iter().all(|&byte| byte == b' ' || byte.is_ascii_graphic())
        && !boundary.ends_with(b" ");

    match boundary_from_content_type(&content_type) {
        Ok(parsed) => {
            assert!((1..=70).contains(&parsed.len()), "boundary of {} bytes accepted", parsed.len());
            assert!(
                parsed.iter().all(|&byte| byte == b' ' || byte.is_ascii_graphic()),
                "boundary {parsed:?} with a control or non-ASCII byte accepted"
            );
            if !escapes {
                assert_eq!(parsed, boundary, "boundary {text:?} comes back changed");
            }
        }
        Err(error) => assert!(escapes || !valid, "valid boundary {text:?} rejected: {error}"),
    }
}

/// Returns a body in reads of the scripted sizes, each also limited by the caller's buffer.
struct ScriptedReader<'a> {
    data: &'a [u8],
    position: usize,
    sizes: &'a [usize],
    calls: usize,
    interrupted_last: bool,
}

impl<'a> ScriptedReader<'a> {
    fn new(data: &'a [u8], sizes: &'a [usize]) -> Self {
        Self { data, position: 0, sizes, calls: 0, interrupted_last: false }
    }
}

impl Read for ScriptedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = match self.sizes.get(self.calls % self.sizes.len().max(1)) {
            None => DEFAULT_READ,
            Some(&size) => size,
        };
        self.calls += 1;

        // Interrupt at most every other call, so a read always follows.
        if size == 0 && !self.interrupted_last {
            self.interrupted_last = true;
            return Err(io::ErrorKind::Interrupted.into());
        }
        self.interrupted_last = false;

        let count = buf.len().min(size.max(1)).min(self.data.len() - self.position);
        buf[..count].copy_from_slice(&self.data[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}
