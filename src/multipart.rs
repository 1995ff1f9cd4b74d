//! Streaming `multipart/form-data` parser for upload request bodies (RFC 7578, with the
//! framing rules of RFC 2046 section 5.1.1).
//!
//! [`MultipartReader`] wraps any [`Read`] and walks the parts one at a time through one
//! fixed-size buffer, so memory stays bounded however large a part is. This module owns the
//! framing (preamble, delimiters, transport padding, closing delimiter), the part header block
//! and the `Content-Disposition` and `Content-Type` fields that a form upload needs.
//!
//! The caller owns the request-level limits (body size, timeouts), draining the epilogue,
//! sanitizing file names (a filename is returned as the client sent it and may contain path
//! separators or `..`), and what to do with each part. Part bodies are returned as sent:
//! `Content-Transfer-Encoding` is not decoded, because RFC 7578 deprecates it.

use std::error::Error;
use std::fmt;
use std::io::{self, Read};

use memchr::memmem;

/// Maximum size in bytes of one part's header block, including the blank line that ends it.
pub const MAX_PART_HEADER_BYTES: usize = 16 * 1024;

/// Maximum number of parts in one body.
pub const MAX_PARTS: usize = 1000;

/// Maximum boundary length in characters (RFC 2046).
const MAX_BOUNDARY_LEN: usize = 70;

/// Free buffer space offered to the inner reader per read, in bytes, when the buffer is empty.
/// Large reads keep system calls per uploaded byte low; 256 KiB cut server CPU for a 512 MiB
/// upload by about a sixth against 64 KiB (measured with bench/run.sh, scenario S4).
const READ_BLOCK_BYTES: usize = 256 * 1024;

/// Reads the parts of a `multipart/form-data` body from an inner reader.
///
/// Call [`next_part`](Self::next_part) to move to a part and [`read_part`](Self::read_part)
/// until it returns `Ok(0)` to read its body. Bytes read from the inner reader past the
/// closing delimiter stay in the internal buffer and are dropped by
/// [`into_inner`](Self::into_inner).
pub struct MultipartReader<R: Read> {
    inner: R,
    /// Read buffer. `buf[start..end]` contains bytes read from `inner` and not yet consumed.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Number of bytes at `buf[start..]` known to be body content, so no delimiter starts there.
    content_len: usize,
    /// Offset from `start` of the first header line not yet scanned for the blank line.
    header_scanned: usize,
    inner_eof: bool,
    state: State,
    parts_started: usize,
    /// CRLF, "--", then the boundary.
    delimiter: Vec<u8>,
    delimiter_finder: memmem::Finder<'static>,
    /// Distance from a delimiter match that turned out to be content to the next byte where a
    /// real delimiter could start, which is the next CR inside the delimiter.
    false_match_skip: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Discarding the preamble before the first delimiter.
    Preamble,
    /// Inside the body of the current part.
    Body,
    /// After a delimiter line, before the part header block.
    Headers,
    /// After the closing delimiter.
    Done,
}

/// Outcome of looking at the bytes at the read position of a body.
enum BodyEvent {
    /// `content_len` bytes of body content are ready.
    Content,
    /// The body ended and its delimiter line was consumed.
    End,
}

/// Meaning of the bytes that follow a CRLF "--" boundary match.
#[derive(Debug, PartialEq, Eq)]
enum DelimiterLine {
    /// A delimiter line whose padding and line break take this many bytes.
    Next(usize),
    /// The closing delimiter (two more hyphens).
    Close,
    /// Something else follows, so the match is part of the content.
    NotDelimiter,
    /// More bytes are needed to decide.
    Incomplete,
}

/// Headers of one part that an upload handler needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartHeaders {
    /// The `name` parameter of `Content-Disposition`.
    pub name: Option<String>,
    /// The `filename*` parameter of `Content-Disposition` when present and well formed,
    /// otherwise its `filename` parameter, exactly as sent (not sanitized).
    pub filename: Option<String>,
    /// The whole `Content-Type` field value, parameters included.
    pub content_type: Option<String>,
}

/// Errors from reading a multipart body or its `Content-Type` header.
#[derive(Debug)]
pub enum MultipartError {
    /// The inner reader failed.
    Io(io::Error),
    /// The media type is not `multipart/form-data`.
    NotMultipart,
    /// The `Content-Type` value has no `boundary` parameter.
    MissingBoundary,
    /// The boundary is empty, longer than 70 characters, contains bytes that are not
    /// printable ASCII or spaces, or ends in a space.
    InvalidBoundary,
    /// A part's header block is larger than [`MAX_PART_HEADER_BYTES`].
    PartHeadersTooLarge,
    /// The body has more than [`MAX_PARTS`] parts.
    TooManyParts,
    /// The input ended before the closing delimiter.
    UnexpectedEof,
    /// The body breaks the multipart syntax in the way described.
    Malformed(&'static str),
}

impl<R: Read> MultipartReader<R> {
    /// Creates a reader for a body whose parts are separated by `boundary`, the raw boundary
    /// without the leading "--" (see [`boundary_from_content_type`]).
    pub fn new(inner: R, boundary: &[u8]) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary);
        let delimiter_finder = memmem::Finder::new(&delimiter).into_owned();
        let false_match_skip = 1 + delimiter[1..]
            .iter()
            .position(|&byte| byte == b'\r')
            .unwrap_or(delimiter.len() - 1);

        // The buffer starts with a CRLF so that a first delimiter at the very start of the
        // body, which has no CRLF of its own, matches like every later one. The preamble
        // before it is then just a body that is discarded.
        let mut buf = vec![0; READ_BLOCK_BYTES + delimiter.len()].into_boxed_slice();
        buf[..2].copy_from_slice(b"\r\n");

        Self {
            inner,
            buf,
            start: 0,
            end: 2,
            content_len: 0,
            header_scanned: 0,
            inner_eof: false,
            state: State::Preamble,
            parts_started: 0,
            delimiter,
            delimiter_finder,
            false_match_skip,
        }
    }

    /// Moves to the next part, discarding the unread rest of the current part (and the
    /// preamble before the first delimiter), and returns its headers.
    ///
    /// Returns `Ok(None)` once the closing delimiter has been read. The epilogue after it is
    /// not read from the inner reader, though bytes of it may already sit in the buffer.
    /// An input that ends before the closing delimiter returns
    /// [`MultipartError::UnexpectedEof`], on this call and on every later one.
    pub fn next_part(&mut self) -> Result<Option<PartHeaders>, MultipartError> {
        self.skip_body()?;
        if self.state == State::Done {
            return Ok(None);
        }

        if self.parts_started == MAX_PARTS {
            return Err(MultipartError::TooManyParts);
        }
        let headers = self.read_part_headers()?;
        self.parts_started += 1;
        self.state = State::Body;
        Ok(Some(headers))
    }

    /// Reads body bytes of the current part into `buf` and returns how many were read.
    ///
    /// `Ok(0)` means that the part ended, that there is no current part (before the first
    /// [`next_part`](Self::next_part) or after the last), or that `buf` is empty.
    pub fn read_part(&mut self, buf: &mut [u8]) -> Result<usize, MultipartError> {
        if self.state != State::Body || buf.is_empty() {
            return Ok(0);
        }

        while self.content_len == 0 {
            if let BodyEvent::End = self.advance_body()? {
                return Ok(0);
            }
        }

        let count = buf.len().min(self.content_len);
        buf[..count].copy_from_slice(&self.buf[self.start..self.start + count]);
        self.start += count;
        self.content_len -= count;
        Ok(count)
    }

    /// Returns the wrapped reader, for draining an epilogue. Bytes already buffered are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Discards the preamble or the rest of the current part, up to and including the
    /// delimiter line that ends it.
    fn skip_body(&mut self) -> Result<(), MultipartError> {
        while matches!(self.state, State::Preamble | State::Body) {
            self.start += self.content_len;
            self.content_len = 0;
            self.advance_body()?;
        }
        Ok(())
    }

    /// Finds how many bytes at the read position are body content, or consumes the
    /// delimiter line that ends the body, reading from the inner reader as needed.
    fn advance_body(&mut self) -> Result<BodyEvent, MultipartError> {
        debug_assert_eq!(self.content_len, 0);
        loop {
            let window = &self.buf[self.start..self.end];
            match self.delimiter_finder.find(window) {
                Some(0) => match classify_delimiter_line(&window[self.delimiter.len()..]) {
                    DelimiterLine::Next(line_rest_len) => {
                        self.consume_delimiter_line(State::Headers, line_rest_len);
                        return Ok(BodyEvent::End);
                    }
                    DelimiterLine::Close => {
                        self.consume_delimiter_line(State::Done, 2);
                        return Ok(BodyEvent::End);
                    }
                    DelimiterLine::NotDelimiter => {
                        self.content_len = self.false_match_skip;
                        return Ok(BodyEvent::Content);
                    }
                    DelimiterLine::Incomplete => self.check_room_for_delimiter_line()?,
                },
                Some(offset) => {
                    self.content_len = offset;
                    return Ok(BodyEvent::Content);
                }
                None => {
                    let safe_len = self.content_prefix_len(window);
                    if safe_len > 0 {
                        self.content_len = safe_len;
                        return Ok(BodyEvent::Content);
                    }
                }
            }

            if !self.fill_buffer()? {
                return Err(MultipartError::UnexpectedEof);
            }
        }
    }

    /// Returns how many leading bytes of `window`, which contains no whole delimiter, cannot
    /// be the start of a delimiter. Only a CR in the last `delimiter.len() - 1` bytes can
    /// start one that the buffer cuts off.
    fn content_prefix_len(&self, window: &[u8]) -> usize {
        let tail_start = window.len().saturating_sub(self.delimiter.len() - 1);
        match memchr::memchr(b'\r', &window[tail_start..]) {
            Some(offset) => tail_start + offset,
            None => window.len(),
        }
    }

    fn consume_delimiter_line(&mut self, next_state: State, line_rest_len: usize) {
        self.start += self.delimiter.len() + line_rest_len;
        self.state = next_state;
        self.header_scanned = 0;
    }

    /// Rejects a delimiter line whose transport padding fills the whole buffer, since no
    /// further read could complete it.
    fn check_room_for_delimiter_line(&self) -> Result<(), MultipartError> {
        if self.end - self.start == self.buf.len() {
            return Err(MultipartError::Malformed(
                "boundary delimiter line: transport padding does not fit in the 64 KiB read buffer",
            ));
        }
        Ok(())
    }

    fn read_part_headers(&mut self) -> Result<PartHeaders, MultipartError> {
        let block_len = self.buffer_header_block()?;

        let headers = parse_header_block(&self.buf[self.start..self.start + block_len])?;
        self.start += block_len;
        Ok(headers)
    }

    /// Reads until the blank line that ends the header block is buffered, and returns the
    /// block length including that line.
    fn buffer_header_block(&mut self) -> Result<usize, MultipartError> {
        loop {
            if let Some(block_len) = self.scan_header_lines() {
                if block_len > MAX_PART_HEADER_BYTES {
                    return Err(MultipartError::PartHeadersTooLarge);
                }
                return Ok(block_len);
            }

            if self.end - self.start > MAX_PART_HEADER_BYTES {
                return Err(MultipartError::PartHeadersTooLarge);
            }
            if !self.fill_buffer()? {
                return Err(MultipartError::UnexpectedEof);
            }
        }
    }

    /// Scans the complete buffered header lines not scanned yet, and returns the block
    /// length once an empty line (LF or CRLF) is found.
    fn scan_header_lines(&mut self) -> Option<usize> {
        let window = &self.buf[self.start..self.end];
        let mut line_start = self.header_scanned;
        let mut block_len = None;

        while let Some(offset) = memchr::memchr(b'\n', &window[line_start..]) {
            let line = &window[line_start..line_start + offset];
            line_start += offset + 1;
            if line.is_empty() || line == b"\r" {
                block_len = Some(line_start);
                break;
            }
        }

        self.header_scanned = line_start;
        block_len
    }

    /// Moves the unconsumed bytes to the front of the buffer and reads more after them.
    /// Returns `false` once the inner reader reports the end of its input.
    fn fill_buffer(&mut self) -> Result<bool, MultipartError> {
        if self.inner_eof {
            return Ok(false);
        }

        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        debug_assert!(self.end < self.buf.len(), "callers leave room to read");

        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.inner_eof = true;
                    return Ok(false);
                }
                Ok(count) => {
                    self.end += count;
                    return Ok(true);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(MultipartError::Io(error)),
            }
        }
    }
}

/// Classifies the bytes after a CRLF "--" boundary match. A delimiter line goes on with
/// optional transport padding (spaces and tabs) and a line break. The line break is CRLF,
/// or a bare LF from lenient clients. A closing delimiter goes on with "--".
fn classify_delimiter_line(after: &[u8]) -> DelimiterLine {
    match after {
        [b'-', b'-', ..] => return DelimiterLine::Close,
        [b'-'] => return DelimiterLine::Incomplete,
        _ => {}
    }

    let padding_len = after
        .iter()
        .take_while(|&&byte| byte == b' ' || byte == b'\t')
        .count();
    match &after[padding_len..] {
        [] | [b'\r'] => DelimiterLine::Incomplete,
        [b'\n', ..] => DelimiterLine::Next(padding_len + 1),
        [b'\r', b'\n', ..] => DelimiterLine::Next(padding_len + 2),
        _ => DelimiterLine::NotDelimiter,
    }
}

/// Parses a part header block (ending with its blank line) into the fields a form upload
/// needs. Field names are case-insensitive, the first of repeated fields wins, and field
/// values that are not UTF-8 are decoded lossily.
fn parse_header_block(block: &[u8]) -> Result<PartHeaders, MultipartError> {
    let mut headers = PartHeaders::default();
    let mut seen_disposition = false;

    for field in unfold_header_fields(block)? {
        let (name, value) = split_header_field(&field)?;
        if name.eq_ignore_ascii_case(b"content-disposition") && !seen_disposition {
            seen_disposition = true;
            apply_content_disposition(&mut headers, value);
        } else if name.eq_ignore_ascii_case(b"content-type") && headers.content_type.is_none() {
            headers.content_type = Some(decode_lossy(value));
        }
    }
    Ok(headers)
}

/// Splits a header block into fields, accepting LF or CRLF line ends and joining folded
/// continuation lines (obsolete in RFC 5322 but still legal to receive) with one space.
fn unfold_header_fields(block: &[u8]) -> Result<Vec<Vec<u8>>, MultipartError> {
    let mut fields: Vec<Vec<u8>> = Vec::new();

    for line in block.split(|&byte| byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.first() {
            None => {}
            Some(b' ' | b'\t') => {
                let Some(field) = fields.last_mut() else {
                    return Err(MultipartError::Malformed(
                        "part headers: a folded continuation line comes before any header field",
                    ));
                };
                field.push(b' ');
                field.extend_from_slice(line.trim_ascii());
            }
            Some(_) => fields.push(line.to_vec()),
        }
    }
    Ok(fields)
}

fn split_header_field(field: &[u8]) -> Result<(&[u8], &[u8]), MultipartError> {
    let colon = memchr::memchr(b':', field).ok_or(MultipartError::Malformed(
        "part headers: a header line has no colon",
    ))?;

    let name = field[..colon].trim_ascii();
    if name.is_empty() {
        return Err(MultipartError::Malformed(
            "part headers: a header line has an empty field name",
        ));
    }
    Ok((name, field[colon + 1..].trim_ascii()))
}

/// Copies `name` and `filename` from a `Content-Disposition` value into `headers`. The
/// disposition type is not checked. `filename*` (RFC 5987) wins over `filename`. RFC 7578
/// forbids senders to use it, but .NET's `MultipartFormDataContent` sends both, with an
/// RFC 2047 encoded word in `filename` for a non-ASCII name.
fn apply_content_disposition(headers: &mut PartHeaders, value: &[u8]) {
    let (_disposition_type, parameters) = split_media_value(value);
    let mut filename = None;
    let mut extended_filename = None;

    for (name, parameter_value) in parameters {
        match name.as_str() {
            "name" if headers.name.is_none() => headers.name = Some(decode_lossy(&parameter_value)),
            "filename" if filename.is_none() => filename = Some(decode_lossy(&parameter_value)),
            "filename*" if extended_filename.is_none() => {
                extended_filename = decode_extended_value(&parameter_value);
            }
            _ => {}
        }
    }
    headers.filename = extended_filename.or(filename);
}

/// Splits a header value such as `form-data; name="file"` into the trimmed part before the
/// first `;` and its parameters (see [`parse_parameters`]).
fn split_media_value(value: &[u8]) -> (&[u8], Vec<(String, Vec<u8>)>) {
    let type_end = memchr::memchr(b';', value).unwrap_or(value.len());
    (
        value[..type_end].trim_ascii(),
        parse_parameters(&value[type_end..]),
    )
}

/// Parses `; name=value` parameters in any order into (lowercase name, value) pairs.
/// Values may be quoted strings or bare tokens, and a bare value runs to the next `;`
/// with surrounding whitespace trimmed. Parameters without `=` are skipped.
fn parse_parameters(mut input: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut parameters = Vec::new();
    loop {
        input = skip_parameter_separators(input);
        if input.is_empty() {
            return parameters;
        }

        let name_end = input
            .iter()
            .position(|&byte| byte == b'=' || byte == b';')
            .unwrap_or(input.len());
        let name = input[..name_end].trim_ascii().to_ascii_lowercase();
        input = &input[name_end..];
        if input.first() != Some(&b'=') {
            continue;
        }

        let (value, rest) = parse_parameter_value(input[1..].trim_ascii_start());
        input = rest;
        parameters.push((decode_lossy(&name), value));
    }
}

fn skip_parameter_separators(input: &[u8]) -> &[u8] {
    let skipped = input
        .iter()
        .take_while(|&&byte| byte == b';' || byte.is_ascii_whitespace())
        .count();
    &input[skipped..]
}

/// Parses one parameter value and returns it with the input that follows it.
fn parse_parameter_value(input: &[u8]) -> (Vec<u8>, &[u8]) {
    if let Some(quoted) = input.strip_prefix(b"\"") {
        return parse_quoted_string(quoted);
    }

    let end = memchr::memchr(b';', input).unwrap_or(input.len());
    (input[..end].trim_ascii().to_vec(), &input[end..])
}

/// Parses a quoted string after its opening quote, and returns the unescaped value with the
/// input after the closing quote. A backslash escapes only a quote or another backslash and
/// is kept otherwise, so Windows paths that old browsers send unescaped survive. An
/// unterminated string runs to the end of the input.
fn parse_quoted_string(input: &[u8]) -> (Vec<u8>, &[u8]) {
    let mut value = Vec::with_capacity(input.len());
    let mut index = 0;
    while index < input.len() {
        match input[index] {
            b'"' => return (value, &input[index + 1..]),
            b'\\' if matches!(input.get(index + 1), Some(b'"' | b'\\')) => {
                value.push(input[index + 1]);
                index += 2;
            }
            byte => {
                value.push(byte);
                index += 1;
            }
        }
    }
    (value, &[])
}

/// Decodes an RFC 5987 extended value (`charset'language'percent-encoded`). ISO-8859-1 is
/// decoded as such and every other charset as UTF-8, lossily. Returns `None` when the value
/// lacks the two quotes.
fn decode_extended_value(value: &[u8]) -> Option<String> {
    let mut pieces = value.splitn(3, |&byte| byte == b'\'');
    let charset = pieces.next()?;
    let _language = pieces.next()?;
    let bytes = percent_decode(pieces.next()?);

    if charset.eq_ignore_ascii_case(b"iso-8859-1") {
        return Some(bytes.iter().map(|&byte| char::from(byte)).collect());
    }
    Some(decode_lossy(&bytes))
}

/// Decodes `%XX` escapes and keeps a `%` that is not followed by two hex digits.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut index = 0;
    while index < input.len() {
        let escaped = match input.get(index..index + 3) {
            Some([b'%', high, low]) => hex_value(*high).zip(hex_value(*low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                output.push((high << 4) | low);
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

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|value| value as u8)
}

/// Decodes header bytes as UTF-8, replacing invalid sequences (such as GBK file names from
/// Chinese-locale browsers) with U+FFFD instead of failing.
fn decode_lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Extracts the boundary from a `Content-Type` value such as
/// `multipart/form-data; boundary="abc"`.
///
/// The media type is matched case-insensitively and parameters may come in any order, quoted
/// or not. The boundary must be 1 to 70 characters (RFC 2046) of printable ASCII or spaces
/// and must not end in a space. This accepts every RFC 2046 boundary and a few more
/// printable characters, which the parser handles the same way.
pub fn boundary_from_content_type(value: &str) -> Result<Vec<u8>, MultipartError> {
    let (media_type, parameters) = split_media_value(value.as_bytes());
    if !media_type.eq_ignore_ascii_case(b"multipart/form-data") {
        return Err(MultipartError::NotMultipart);
    }

    let boundary = parameters
        .into_iter()
        .find(|(name, _)| name == "boundary")
        .map(|(_, boundary)| boundary)
        .ok_or(MultipartError::MissingBoundary)?;
    if !is_valid_boundary(&boundary) {
        return Err(MultipartError::InvalidBoundary);
    }
    Ok(boundary)
}

fn is_valid_boundary(boundary: &[u8]) -> bool {
    let length_ok = (1..=MAX_BOUNDARY_LEN).contains(&boundary.len());
    let bytes_ok = boundary
        .iter()
        .all(|&byte| byte == b' ' || byte.is_ascii_graphic());
    length_ok && bytes_ok && !boundary.ends_with(b" ")
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "multipart body: read failed: {error}"),
            Self::NotMultipart => f.write_str("content-type: expected multipart/form-data"),
            Self::MissingBoundary => f.write_str("content-type: the boundary parameter is missing"),
            Self::InvalidBoundary => f.write_str(
                "content-type: the boundary must be 1 to 70 printable ASCII characters \
                 and must not end in a space",
            ),
            Self::PartHeadersTooLarge => write!(
                f,
                "multipart body: a part's header block is larger than {MAX_PART_HEADER_BYTES} bytes"
            ),
            Self::TooManyParts => {
                write!(f, "multipart body: more than {MAX_PARTS} parts")
            }
            Self::UnexpectedEof => f.write_str(
                "multipart body: input ended before the closing boundary delimiter, \
                 so the upload was cut off or the boundary does not match the body",
            ),
            Self::Malformed(reason) => write!(f, "multipart body: {reason}"),
        }
    }
}

impl Error for MultipartError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for MultipartError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Part = (PartHeaders, Vec<u8>);

    /// Returns `data[..cut]` in its first reads and the rest after, each read also limited by
    /// the caller's buffer.
    struct SplitReader {
        data: Vec<u8>,
        position: usize,
        cut: usize,
    }

    impl SplitReader {
        fn new(data: &[u8], cut: usize) -> Self {
            Self {
                data: data.to_vec(),
                position: 0,
                cut,
            }
        }
    }

    impl Read for SplitReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let limit = if self.position < self.cut {
                self.cut
            } else {
                self.data.len()
            };
            let count = buf.len().min(limit - self.position);
            buf[..count].copy_from_slice(&self.data[self.position..self.position + count]);
            self.position += count;
            Ok(count)
        }
    }

    /// Returns the data in reads whose sizes cycle through `sizes`. With `interrupt` set,
    /// every other call fails with `ErrorKind::Interrupted` instead.
    struct ChunkReader {
        data: Vec<u8>,
        position: usize,
        sizes: Vec<usize>,
        calls: usize,
        interrupt: bool,
    }

    impl ChunkReader {
        fn new(data: &[u8], sizes: &[usize]) -> Self {
            Self {
                data: data.to_vec(),
                position: 0,
                sizes: sizes.to_vec(),
                calls: 0,
                interrupt: false,
            }
        }

        fn one_byte(data: &[u8]) -> Self {
            Self::new(data, &[1])
        }

        fn unread(&self) -> &[u8] {
            &self.data[self.position..]
        }
    }

    impl Read for ChunkReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.interrupt && self.calls % 2 == 1 {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let size = self.sizes[self.calls % self.sizes.len()];
            let count = buf.len().min(size).min(self.data.len() - self.position);
            buf[..count].copy_from_slice(&self.data[self.position..self.position + count]);
            self.position += count;
            Ok(count)
        }
    }

    struct FailingReader;

    impl Read for FailingReader {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset"))
        }
    }

    /// Deterministic pseudo-random bytes (xorshift64).
    fn pseudo_random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.extend_from_slice(&seed.to_le_bytes());
        }
        bytes.truncate(len);
        bytes
    }

    fn read_all_parts<R: Read>(
        reader: &mut MultipartReader<R>,
        chunk_len: usize,
    ) -> Result<Vec<Part>, MultipartError> {
        let mut parts = Vec::new();
        let mut chunk = vec![0; chunk_len];
        while let Some(headers) = reader.next_part()? {
            let mut body = Vec::new();
            loop {
                let count = reader.read_part(&mut chunk)?;
                if count == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..count]);
            }
            parts.push((headers, body));
        }
        Ok(parts)
    }

    fn parse_body<R: Read>(
        inner: R,
        boundary: &[u8],
        chunk_len: usize,
    ) -> Result<Vec<Part>, MultipartError> {
        read_all_parts(&mut MultipartReader::new(inner, boundary), chunk_len)
    }

    /// Walks all parts with `next_part` alone, never reading a body.
    fn skip_all_parts<R: Read>(
        inner: R,
        boundary: &[u8],
    ) -> Result<Vec<PartHeaders>, MultipartError> {
        let mut reader = MultipartReader::new(inner, boundary);
        let mut headers = Vec::new();
        while let Some(part_headers) = reader.next_part()? {
            headers.push(part_headers);
        }
        Ok(headers)
    }

    fn part_headers(
        name: Option<&str>,
        filename: Option<&str>,
        content_type: Option<&str>,
    ) -> PartHeaders {
        PartHeaders {
            name: name.map(str::to_owned),
            filename: filename.map(str::to_owned),
            content_type: content_type.map(str::to_owned),
        }
    }

    fn field(name: &str, value: &[u8]) -> Part {
        (part_headers(Some(name), None, None), value.to_vec())
    }

    fn file(name: &str, filename: &str, content_type: &str, content: &[u8]) -> Part {
        (
            part_headers(Some(name), Some(filename), Some(content_type)),
            content.to_vec(),
        )
    }

    fn concat(pieces: &[&[u8]]) -> Vec<u8> {
        pieces.concat()
    }

    fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        memmem::rfind(haystack, needle)
    }

    /// A body as one client sends it, with the parts it must parse into.
    struct QuirkCase {
        client: &'static str,
        content_type: &'static str,
        body: Vec<u8>,
        parts: Vec<Part>,
    }

    impl QuirkCase {
        fn boundary(&self) -> Vec<u8> {
            boundary_from_content_type(self.content_type)
                .unwrap_or_else(|error| panic!("{}: {error}", self.client))
        }

        /// Returns the offset just past `--boundary--`. A body cut before it must fail with
        /// `UnexpectedEof`, and a body cut at or after it must parse.
        fn close_end(&self) -> usize {
            let close = concat(&[b"--", &self.boundary(), b"--"]);
            find_last(&self.body, &close).expect("case has a closing delimiter") + close.len()
        }
    }

    const VIDEO_BYTES: &[u8] =
        b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom\r\n\xff\xd8--\r\n\x00";

    fn quirk_cases() -> Vec<QuirkCase> {
        vec![
            QuirkCase {
                client: "curl -F",
                content_type: "multipart/form-data; boundary=------------------------4ebf00fbcf09",
                body: concat(&[
                    b"--------------------------4ebf00fbcf09\r\n",
                    b"Content-Disposition: form-data; name=\"title\"\r\n\r\n",
                    b"Clip\r\n",
                    b"--------------------------4ebf00fbcf09\r\n",
                    b"Content-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n",
                    b"Content-Type: video/mp4\r\n\r\n",
                    VIDEO_BYTES,
                    b"\r\n--------------------------4ebf00fbcf09--\r\n",
                ]),
                parts: vec![field("title", b"Clip"), file("file", "a.mp4", "video/mp4", VIDEO_BYTES)],
            },
            QuirkCase {
                client: "Chrome, fields before and after the file",
                content_type: "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
                body: concat(&[
                    b"------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n",
                    b"Content-Disposition: form-data; name=\"title\"\r\n\r\n",
                    b"My clip\r\n",
                    b"------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n",
                    b"Content-Disposition: form-data; name=\"description\"\r\n\r\n",
                    b"line one\r\nline two\r\n",
                    b"------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n",
                    b"Content-Disposition: form-data; name=\"file\"; filename=\"say %22hi%22.mp4\"\r\n",
                    b"Content-Type: video/mp4\r\n\r\n",
                    VIDEO_BYTES,
                    b"\r\n------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n",
                    b"Content-Disposition: form-data; name=\"tags\"\r\n\r\n",
                    b"a,b\r\n",
                    b"------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n",
                    b"Content-Disposition: form-data; name=\"public\"\r\n\r\n",
                    b"on\r\n",
                    b"------WebKitFormBoundary7MA4YWxkTrZu0gW--\r\n",
                ]),
                parts: vec![
                    field("title", b"My clip"),
                    field("description", b"line one\r\nline two"),
                    file("file", "say %22hi%22.mp4", "video/mp4", VIDEO_BYTES),
                    field("tags", b"a,b"),
                    field("public", b"on"),
                ],
            },
            QuirkCase {
                client: "Firefox, UTF-8 filename and an empty file input",
                content_type: "multipart/form-data; boundary=---------------------------735323031399963166993862150",
                body: concat(&[
                    b"-----------------------------735323031399963166993862150\r\n",
                    "Content-Disposition: form-data; name=\"file\"; filename=\"中文 clip.mp4\"\r\n".as_bytes(),
                    b"Content-Type: video/mp4\r\n\r\n",
                    VIDEO_BYTES,
                    b"\r\n-----------------------------735323031399963166993862150\r\n",
                    b"Content-Disposition: form-data; name=\"extra\"; filename=\"\"\r\n",
                    b"Content-Type: application/octet-stream\r\n\r\n",
                    b"\r\n-----------------------------735323031399963166993862150--\r\n",
                ]),
                parts: vec![
                    file("file", "中文 clip.mp4", "video/mp4", VIDEO_BYTES),
                    file("extra", "", "application/octet-stream", b""),
                ],
            },
            QuirkCase {
                client: ".NET HttpClient, quoted boundary, bare values and filename*",
                content_type: "multipart/form-data; boundary=\"3f2a6c2e-8b0e-4a5f-9d57-0b1c2d3e4f50\"",
                body: concat(&[
                    b"--3f2a6c2e-8b0e-4a5f-9d57-0b1c2d3e4f50\r\n",
                    b"Content-Type: text/plain; charset=utf-8\r\n",
                    b"Content-Disposition: form-data; name=title\r\n\r\n",
                    b"Clip\r\n",
                    b"--3f2a6c2e-8b0e-4a5f-9d57-0b1c2d3e4f50\r\n",
                    b"Content-Type: application/octet-stream\r\n",
                    b"Content-Disposition: form-data; name=file; filename=\"=?utf-8?B?5Lit?=\"; filename*=utf-8''%E4%B8%AD.mp4\r\n\r\n",
                    VIDEO_BYTES,
                    b"\r\n--3f2a6c2e-8b0e-4a5f-9d57-0b1c2d3e4f50--\r\n",
                ]),
                parts: vec![
                    (part_headers(Some("title"), None, Some("text/plain; charset=utf-8")), b"Clip".to_vec()),
                    file("file", "中.mp4", "application/octet-stream", VIDEO_BYTES),
                ],
            },
            QuirkCase {
                client: "JavaMail-style quoted boundary with '='",
                content_type: "multipart/form-data; boundary=\"----=_Part_0_1234567.1700000000000\"",
                body: concat(&[
                    b"------=_Part_0_1234567.1700000000000\r\n",
                    b"Content-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n",
                    b"Content-Type: video/mp4\r\n\r\n",
                    VIDEO_BYTES,
                    b"\r\n------=_Part_0_1234567.1700000000000--\r\n",
                ]),
                parts: vec![file("file", "a.mp4", "video/mp4", VIDEO_BYTES)],
            },
            QuirkCase {
                client: "Qt QHttpMultiPart, quoted base64 boundary",
                content_type: "multipart/form-data; boundary=\"boundary_.oOo._MjE4Nz+0NzI/NTY3ODkw\"",
                body: concat(&[
                    b"--boundary_.oOo._MjE4Nz+0NzI/NTY3ODkw\r\n",
                    b"Content-Type: video/mp4\r\n",
                    b"Content-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n",
                    VIDEO_BYTES,
                    b"\r\n--boundary_.oOo._MjE4Nz+0NzI/NTY3ODkw--\r\n",
                ]),
                parts: vec![file("file", "a.mp4", "video/mp4", VIDEO_BYTES)],
            },
            QuirkCase {
                client: "preamble and epilogue",
                content_type: "multipart/form-data; boundary=simple",
                body: concat(&[
                    b"This is the preamble, with a fake --simpleX line.\r\n--simpleX\r\n",
                    b"--simple\r\n",
                    b"Content-Disposition: form-data; name=\"a\"\r\n\r\n",
                    b"first\r\n",
                    b"--simple--\r\n",
                    b"This is the epilogue.\r\n--simple\r\nnot a part\r\n",
                ]),
                parts: vec![field("a", b"first")],
            },
            QuirkCase {
                client: "no CRLF after the closing delimiter",
                content_type: "multipart/form-data; boundary=xyz",
                body: concat(&[
                    b"--xyz\r\n",
                    b"Content-Disposition: form-data; name=\"a\"\r\n\r\n",
                    b"value\r\n",
                    b"--xyz--",
                ]),
                parts: vec![field("a", b"value")],
            },
            QuirkCase {
                client: "GBK filename bytes",
                content_type: "multipart/form-data; boundary=gbk",
                body: concat(&[
                    b"--gbk\r\n",
                    b"Content-Disposition: form-data; name=\"file\"; filename=\"\xd6\xd0\xce\xc4.mp4\"\r\n",
                    b"Content-Type: video/mp4\r\n\r\n",
                    VIDEO_BYTES,
                    b"\r\n--gbk--\r\n",
                ]),
                parts: vec![file("file", "\u{fffd}\u{fffd}\u{fffd}\u{fffd}.mp4", "video/mp4", VIDEO_BYTES)],
            },
            QuirkCase {
                client: "filename* before name and filename",
                content_type: "multipart/form-data; boundary=ext",
                body: concat(&[
                    b"--ext\r\n",
                    b"content-disposition: form-data; filename*=UTF-8''%E4%B8%AD%E6%96%87.mp4; NAME=\"file\"; Filename=\"zhongwen.mp4\"\r\n",
                    b"CONTENT-TYPE: video/mp4\r\n\r\n",
                    VIDEO_BYTES,
                    b"\r\n--ext--\r\n",
                ]),
                parts: vec![file("file", "中文.mp4", "video/mp4", VIDEO_BYTES)],
            },
            QuirkCase {
                client: "content ending in CRLFCRLF",
                content_type: "multipart/form-data; boundary=crlf",
                body: concat(&[
                    b"--crlf\r\n",
                    b"Content-Disposition: form-data; name=\"text\"\r\n\r\n",
                    b"text\r\n\r\n\r\n",
                    b"--crlf\r\n",
                    b"Content-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n",
                    b"Content-Type: application/octet-stream\r\n\r\n",
                    b"\r\n\r\n\r\n",
                    b"--crlf--\r\n",
                ]),
                parts: vec![
                    field("text", b"text\r\n\r\n"),
                    file("file", "a.bin", "application/octet-stream", b"\r\n\r\n"),
                ],
            },
            QuirkCase {
                client: "content containing partial boundaries",
                content_type: "multipart/form-data; boundary=XyZ123",
                body: concat(&[
                    b"--XyZ123\r\n",
                    b"Content-Disposition: form-data; name=\"file\"; filename=\"tricky.bin\"\r\n",
                    b"Content-Type: application/octet-stream\r\n\r\n",
                    b"--XyZ123 at the start\r\n--\r\n-\r\n--Xy\r\n--XyZ12\r\n--XyZ123X\r\n--XyZ123-x",
                    b"\r\n--XyZ123 \tx\r\n--XyZ123\rx\r\n\r\n--\r\r",
                    b"\r\n--XyZ123\r\n",
                    b"Content-Disposition: form-data; name=\"after\"\r\n\r\n",
                    b"--XyZ1\r\n--XyZ123-",
                    b"\r\n--XyZ123--\r\n",
                ]),
                parts: vec![
                    file(
                        "file",
                        "tricky.bin",
                        "application/octet-stream",
                        b"--XyZ123 at the start\r\n--\r\n-\r\n--Xy\r\n--XyZ12\r\n--XyZ123X\r\n--XyZ123-x\
                          \r\n--XyZ123 \tx\r\n--XyZ123\rx\r\n\r\n--\r\r",
                    ),
                    field("after", b"--XyZ1\r\n--XyZ123-"),
                ],
            },
            QuirkCase {
                client: "empty parts and a part without headers",
                content_type: "multipart/form-data; boundary=empty",
                body: concat(&[
                    b"--empty\r\n",
                    b"Content-Disposition: form-data; name=\"blank\"\r\n\r\n",
                    b"\r\n--empty\r\n",
                    b"\r\n",
                    b"no headers\r\n",
                    b"--empty\r\n",
                    b"Content-Disposition: form-data; name=\"file\"; filename=\"empty.mp4\"\r\n",
                    b"Content-Type: video/mp4\r\n\r\n",
                    b"\r\n--empty--\r\n",
                ]),
                parts: vec![
                    field("blank", b""),
                    (PartHeaders::default(), b"no headers".to_vec()),
                    file("file", "empty.mp4", "video/mp4", b""),
                ],
            },
            QuirkCase {
                client: "transport padding after delimiters",
                content_type: "multipart/form-data; boundary=pad",
                body: concat(&[
                    b"--pad \t \r\n",
                    b"Content-Disposition: form-data; name=\"a\"\r\n\r\n",
                    b"one\r\n",
                    b"--pad\t\r\n",
                    b"Content-Disposition: form-data; name=\"b\"\r\n\r\n",
                    b"two\r\n",
                    b"--pad--  \r\n",
                ]),
                parts: vec![field("a", b"one"), field("b", b"two")],
            },
            QuirkCase {
                client: "LF-only header lines and folded header",
                content_type: "multipart/form-data; boundary=lf",
                body: concat(&[
                    b"--lf\n",
                    b"Content-Disposition: form-data;\n\tname=\"file\";\r\n filename=\"a.mp4\"\n",
                    b"Content-Type: video/mp4\n\n",
                    VIDEO_BYTES,
                    b"\r\n--lf--",
                ]),
                parts: vec![file("file", "a.mp4", "video/mp4", VIDEO_BYTES)],
            },
        ]
    }

    fn assert_case_parses<R: Read>(case: &QuirkCase, inner: R, chunk_len: usize, how: &str) {
        let parts = parse_body(inner, &case.boundary(), chunk_len)
            .unwrap_or_else(|error| panic!("{} ({how}): {error}", case.client));
        assert_eq!(
            parts.len(),
            case.parts.len(),
            "{} ({how}): part count",
            case.client
        );
        for (index, (actual, expected)) in parts.iter().zip(&case.parts).enumerate() {
            assert_eq!(
                actual.0, expected.0,
                "{} ({how}): headers of part {index}",
                case.client
            );
            assert_eq!(
                String::from_utf8_lossy(&actual.1),
                String::from_utf8_lossy(&expected.1),
                "{} ({how}): body of part {index}",
                case.client
            );
            assert_eq!(
                actual.1, expected.1,
                "{} ({how}): exact body bytes of part {index}",
                case.client
            );
        }
    }

    #[test]
    fn quirk_cases_parse_in_one_read() {
        for case in quirk_cases() {
            for chunk_len in [1, 3, 4096, 1 << 20] {
                let inner = SplitReader::new(&case.body, case.body.len());
                assert_case_parses(
                    &case,
                    inner,
                    chunk_len,
                    &format!("one read, chunk {chunk_len}"),
                );
            }
        }
    }

    /// Splits every body at each offset, which covers every offset in a window around every
    /// delimiter and header block end.
    #[test]
    fn quirk_cases_parse_split_at_every_offset() {
        for case in quirk_cases() {
            for cut in 0..=case.body.len() {
                let inner = SplitReader::new(&case.body, cut);
                assert_case_parses(&case, inner, 4096, &format!("split at {cut}"));
            }
        }
    }

    #[test]
    fn quirk_cases_parse_one_byte_reads() {
        for case in quirk_cases() {
            for chunk_len in [1, 7, 4096] {
                let inner = ChunkReader::one_byte(&case.body);
                assert_case_parses(
                    &case,
                    inner,
                    chunk_len,
                    &format!("one-byte reads, chunk {chunk_len}"),
                );
            }
        }
    }

    #[test]
    fn quirk_cases_parse_with_interrupted_reads() {
        for case in quirk_cases() {
            let mut inner = ChunkReader::new(&case.body, &[5, 1, 64]);
            inner.interrupt = true;
            assert_case_parses(&case, inner, 4096, "interrupted reads");
        }
    }

    #[test]
    fn quirk_cases_skip_parts_without_reading() {
        for case in quirk_cases() {
            let expected: Vec<PartHeaders> = case.parts.iter().map(|part| part.0.clone()).collect();
            for cut in 0..=case.body.len() {
                let headers = skip_all_parts(SplitReader::new(&case.body, cut), &case.boundary())
                    .unwrap_or_else(|error| panic!("{} (split at {cut}): {error}", case.client));
                assert_eq!(headers, expected, "{} (split at {cut})", case.client);
            }
        }
    }

    #[test]
    fn quirk_cases_leave_epilogue_unread() {
        for case in quirk_cases() {
            let mut reader =
                MultipartReader::new(ChunkReader::one_byte(&case.body), &case.boundary());
            read_all_parts(&mut reader, 4096)
                .unwrap_or_else(|error| panic!("{}: {error}", case.client));

            let inner = reader.into_inner();
            assert_eq!(
                inner.unread(),
                &case.body[case.close_end()..],
                "{}: unread epilogue",
                case.client
            );
        }
    }

    #[test]
    fn quirk_cases_truncated_report_unexpected_eof() {
        for case in quirk_cases() {
            let close_end = case.close_end();
            for cut in 0..close_end {
                let truncated = &case.body[..cut];

                let read_result =
                    parse_body(SplitReader::new(truncated, cut / 2), &case.boundary(), 4096);
                assert!(
                    matches!(read_result, Err(MultipartError::UnexpectedEof)),
                    "{} truncated at {cut} of {close_end}, reading bodies: {read_result:?}",
                    case.client
                );

                let skip_result =
                    skip_all_parts(ChunkReader::one_byte(truncated), &case.boundary());
                assert!(
                    matches!(skip_result, Err(MultipartError::UnexpectedEof)),
                    "{} truncated at {cut} of {close_end}, skipping bodies: {skip_result:?}",
                    case.client
                );
            }
            for cut in close_end..=case.body.len() {
                let result = parse_body(
                    SplitReader::new(&case.body[..cut], cut),
                    &case.boundary(),
                    4096,
                );
                assert!(
                    result.is_ok(),
                    "{} cut at {cut} after the closing delimiter: {result:?}",
                    case.client
                );
            }
        }
    }

    #[test]
    fn truncated_body_keeps_failing() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\npartial";
        let mut reader = MultipartReader::new(&body[..], b"b");
        assert!(reader.next_part().unwrap().is_some());

        let mut chunk = [0; 64];
        assert_eq!(reader.read_part(&mut chunk).unwrap(), 7);
        for _ in 0..3 {
            assert!(matches!(
                reader.read_part(&mut chunk),
                Err(MultipartError::UnexpectedEof)
            ));
            assert!(matches!(
                reader.next_part(),
                Err(MultipartError::UnexpectedEof)
            ));
        }
    }

    #[test]
    fn large_part_round_trips_exactly() {
        let boundary = b"----WebKitFormBoundaryQ2hyb21lVGVzdA";
        let mut content = pseudo_random_bytes(6 * 1024 * 1024 + 123, 0x9e37_79b9_7f4a_7c15);
        // Plant near-delimiters: a CRLF "--" followed by every proper prefix of the boundary,
        // and by the whole boundary followed by a byte that cannot continue a delimiter line.
        for (index, offset) in (1000..content.len() - 200).step_by(4099).enumerate() {
            let prefix_len = index % boundary.len();
            let mut trap = b"\r\n--".to_vec();
            trap.extend_from_slice(&boundary[..prefix_len]);
            if index % 7 == 0 {
                trap.extend_from_slice(boundary);
                trap.push(b'x');
            }
            content[offset..offset + trap.len()].copy_from_slice(&trap);
        }
        let body = concat(&[
            b"--",
            boundary,
            b"\r\n",
            b"Content-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n",
            b"Content-Type: video/mp4\r\n\r\n",
            &content,
            b"\r\n--",
            boundary,
            b"\r\n",
            b"Content-Disposition: form-data; name=\"after\"\r\n\r\n",
            b"done",
            b"\r\n--",
            boundary,
            b"--\r\n",
        ]);

        for (sizes, chunk_len) in [
            (vec![1 << 20], 1 << 20),
            (vec![65536, 1, 4093, 100_003, 17], 8192),
            (vec![1500], 65536),
            (vec![7, 65536 + 9], 333),
        ] {
            let parts = parse_body(ChunkReader::new(&body, &sizes), boundary, chunk_len).unwrap();
            assert_eq!(parts.len(), 2, "reads {sizes:?}");
            assert_eq!(
                parts[0].0,
                part_headers(Some("file"), Some("big.mp4"), Some("video/mp4"))
            );
            assert_eq!(
                parts[0].1.len(),
                content.len(),
                "reads {sizes:?}: content length"
            );
            assert!(parts[0].1 == content, "reads {sizes:?}: content differs");
            assert_eq!(parts[1], field("after", b"done"), "reads {sizes:?}");
        }
    }

    /// Produces a body with one part whose content repeats a block of pseudo-random bytes.
    struct GeneratedBody {
        head: Vec<u8>,
        block: Vec<u8>,
        blocks_left: usize,
        tail: Vec<u8>,
        position: usize,
    }

    impl Read for GeneratedBody {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let source: &[u8] = if !self.head.is_empty() {
                &self.head
            } else if self.blocks_left > 0 {
                &self.block
            } else {
                &self.tail
            };
            let count = buf.len().min(source.len() - self.position);
            buf[..count].copy_from_slice(&source[self.position..self.position + count]);
            self.position += count;
            if self.position == source.len() {
                if !self.head.is_empty() {
                    self.head.clear();
                    self.position = 0;
                } else if self.blocks_left > 0 {
                    self.blocks_left -= 1;
                    self.position = 0;
                }
            }
            Ok(count)
        }
    }

    /// Measures parsing speed. Run with
    /// `cargo test --release -- --ignored --nocapture throughput`.
    #[test]
    #[ignore = "measurement, run in release mode"]
    fn large_part_throughput() {
        let block = pseudo_random_bytes(1 << 20, 42);
        let blocks = 1024;
        let inner = GeneratedBody {
            head:
                b"--bound\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n"
                    .to_vec(),
            block,
            blocks_left: blocks,
            tail: b"\r\n--bound--\r\n".to_vec(),
            position: 0,
        };
        let mut reader = MultipartReader::new(inner, b"bound");
        let mut chunk = vec![0; 256 * 1024];

        let started = std::time::Instant::now();
        assert!(reader.next_part().unwrap().is_some());
        let mut total = 0;
        loop {
            let count = reader.read_part(&mut chunk).unwrap();
            if count == 0 {
                break;
            }
            total += count;
        }
        assert!(reader.next_part().unwrap().is_none());
        let seconds = started.elapsed().as_secs_f64();

        assert_eq!(total, blocks << 20);
        println!(
            "parsed {} MiB in {seconds:.3} s: {:.2} GB/s",
            total >> 20,
            total as f64 / seconds / 1e9
        );
    }

    #[test]
    fn content_type_boundary_accepted() {
        let long = "a".repeat(70);
        let cases: Vec<(String, &str)> = vec![
            ("multipart/form-data; boundary=abc".into(), "abc"),
            ("multipart/form-data; boundary=\"abc\"".into(), "abc"),
            ("Multipart/Form-Data; BOUNDARY=abc".into(), "abc"),
            (
                "multipart/form-data; charset=utf-8; boundary=\"----=_Part_0\"".into(),
                "----=_Part_0",
            ),
            (
                "multipart/form-data; boundary=----=_Part_0; charset=utf-8".into(),
                "----=_Part_0",
            ),
            (
                "  multipart/form-data ;  boundary = abc ; x=y".into(),
                "abc",
            ),
            (
                "multipart/form-data; boundary=\"with space\"".into(),
                "with space",
            ),
            (
                "multipart/form-data; boundary=\"semi;colon\"".into(),
                "semi;colon",
            ),
            (
                "multipart/form-data; boundary=first; boundary=second".into(),
                "first",
            ),
            (format!("multipart/form-data; boundary={long}"), &long),
        ];
        for (value, expected) in cases {
            let boundary = boundary_from_content_type(&value)
                .unwrap_or_else(|error| panic!("{value}: {error}"));
            assert_eq!(boundary, expected.as_bytes(), "{value}");
        }
    }

    /// Names the error variant, so tables can state the expected error.
    fn variant_name(error: &MultipartError) -> &'static str {
        match error {
            MultipartError::Io(_) => "Io",
            MultipartError::NotMultipart => "NotMultipart",
            MultipartError::MissingBoundary => "MissingBoundary",
            MultipartError::InvalidBoundary => "InvalidBoundary",
            MultipartError::PartHeadersTooLarge => "PartHeadersTooLarge",
            MultipartError::TooManyParts => "TooManyParts",
            MultipartError::UnexpectedEof => "UnexpectedEof",
            MultipartError::Malformed(_) => "Malformed",
        }
    }

    #[test]
    fn content_type_boundary_rejected() {
        let too_long = format!("multipart/form-data; boundary={}", "a".repeat(71));
        let cases: &[(&str, &str)] = &[
            ("text/plain; boundary=abc", "NotMultipart"),
            ("multipart/mixed; boundary=abc", "NotMultipart"),
            ("", "NotMultipart"),
            ("multipart/form-data", "MissingBoundary"),
            ("multipart/form-data; charset=utf-8", "MissingBoundary"),
            ("multipart/form-data; boundary", "MissingBoundary"),
            ("multipart/form-data; boundary=", "InvalidBoundary"),
            ("multipart/form-data; boundary=\"\"", "InvalidBoundary"),
            ("multipart/form-data; boundary=\"abc \"", "InvalidBoundary"),
            ("multipart/form-data; boundary=\"a\tb\"", "InvalidBoundary"),
            (
                "multipart/form-data; boundary=\"a\r\nb\"",
                "InvalidBoundary",
            ),
            ("multipart/form-data; boundary=中文", "InvalidBoundary"),
            (&too_long, "InvalidBoundary"),
        ];
        for (value, expected) in cases {
            match boundary_from_content_type(value) {
                Ok(boundary) => panic!("{value:?}: accepted {boundary:?}"),
                Err(error) => assert_eq!(variant_name(&error), *expected, "{value:?}: {error}"),
            }
        }
    }

    #[test]
    fn content_disposition_parameters_parsed() {
        let cases: &[(&[u8], Option<&str>, Option<&str>)] = &[
            (
                b"form-data; name=\"file\"; filename=\"a.mp4\"",
                Some("file"),
                Some("a.mp4"),
            ),
            (
                b"form-data; filename=\"a.mp4\"; name=\"file\"",
                Some("file"),
                Some("a.mp4"),
            ),
            (
                b"FORM-DATA;NAME=file;FILENAME=a.mp4",
                Some("file"),
                Some("a.mp4"),
            ),
            (
                b"form-data; name = \"file\" ; filename = a b.mp4 ",
                Some("file"),
                Some("a b.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename=\"a;b=c.mp4\"",
                Some("f"),
                Some("a;b=c.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename=\"say \\\"hi\\\" \\\\ now.mp4\"",
                Some("f"),
                Some("say \"hi\" \\ now.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename=\"C:\\Users\\me\\a.mp4\"",
                Some("f"),
                Some("C:\\Users\\me\\a.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename=\"unterminated.mp4",
                Some("f"),
                Some("unterminated.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename*=UTF-8''%e4%b8%ad.mp4",
                Some("f"),
                Some("中.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename*=utf-8'zh'a%20b.mp4; filename=\"x\"",
                Some("f"),
                Some("a b.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename*=iso-8859-1''caf%E9.mp4",
                Some("f"),
                Some("café.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename*=\"UTF-8''quoted.mp4\"",
                Some("f"),
                Some("quoted.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename*=UTF-8''100%.mp4",
                Some("f"),
                Some("100%.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename*=UTF-8''%FF.mp4",
                Some("f"),
                Some("\u{fffd}.mp4"),
            ),
            (
                b"form-data; name=\"f\"; filename*=no-quotes.mp4; filename=\"plain.mp4\"",
                Some("f"),
                Some("plain.mp4"),
            ),
            (
                b"form-data; name=\"first\"; name=\"second\"",
                Some("first"),
                None,
            ),
            (b"form-data; flag; name=\"f\"", Some("f"), None),
            (b"form-data", None, None),
            (
                b"form-data; name=\"\xd6\xd0\"",
                Some("\u{fffd}\u{fffd}"),
                None,
            ),
        ];
        for (value, name, filename) in cases {
            let block = concat(&[b"Content-Disposition: ", value, b"\r\n\r\n"]);
            let headers = parse_header_block(&block).unwrap();
            let shown = String::from_utf8_lossy(value);
            assert_eq!(headers.name.as_deref(), *name, "name of {shown}");
            assert_eq!(
                headers.filename.as_deref(),
                *filename,
                "filename of {shown}"
            );
        }
    }

    #[test]
    fn header_block_first_field_wins() {
        let block = b"Content-Type: video/mp4\r\ncontent-type: text/plain\r\n\
                      Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"b\"\r\n\
                      X-Other: ignored\r\n\r\n";
        let headers = parse_header_block(block).unwrap();
        assert_eq!(headers, part_headers(Some("a"), None, Some("video/mp4")));
    }

    #[test]
    fn header_line_without_colon_is_malformed() {
        let body = b"--b\r\nContent-Disposition form-data\r\n\r\nx\r\n--b--";
        let result = parse_body(&body[..], b"b", 64);
        assert!(
            matches!(result, Err(MultipartError::Malformed(_))),
            "{result:?}"
        );
        assert_eq!(
            result.unwrap_err().to_string(),
            "multipart body: part headers: a header line has no colon"
        );
    }

    #[test]
    fn header_line_with_empty_name_is_malformed() {
        let result = parse_header_block(b": value\r\n\r\n");
        assert!(
            matches!(result, Err(MultipartError::Malformed(_))),
            "{result:?}"
        );
    }

    #[test]
    fn folded_line_before_any_field_is_malformed() {
        let result = parse_header_block(b" folded\r\n\r\n");
        assert!(
            matches!(result, Err(MultipartError::Malformed(_))),
            "{result:?}"
        );
    }

    /// Builds a body whose first part header block is exactly `block_len` bytes long.
    fn body_with_header_block_len(block_len: usize) -> Vec<u8> {
        let start = b"Content-Disposition: form-data; name=\"f\"\r\nX-Padding: ";
        let end = b"\r\n\r\n";
        let padding = vec![b'p'; block_len - start.len() - end.len()];
        concat(&[b"--b\r\n", start, &padding, end, b"body\r\n--b--\r\n"])
    }

    #[test]
    fn header_block_at_limit_accepted() {
        let body = body_with_header_block_len(MAX_PART_HEADER_BYTES);
        for inner in [
            ChunkReader::new(&body, &[1 << 20]),
            ChunkReader::new(&body, &[100]),
        ] {
            let parts = parse_body(inner, b"b", 64).unwrap();
            assert_eq!(parts, vec![field("f", b"body")]);
        }
    }

    #[test]
    fn header_block_over_limit_rejected() {
        let body = body_with_header_block_len(MAX_PART_HEADER_BYTES + 1);
        for inner in [
            ChunkReader::new(&body, &[1 << 20]),
            ChunkReader::new(&body, &[100]),
        ] {
            let result = parse_body(inner, b"b", 64);
            assert!(
                matches!(result, Err(MultipartError::PartHeadersTooLarge)),
                "{result:?}"
            );
        }
    }

    #[test]
    fn endless_header_line_rejected_before_eof() {
        let mut body = b"--b\r\nX-Endless: ".to_vec();
        body.extend(std::iter::repeat_n(b'x', 200_000));
        let result = parse_body(ChunkReader::new(&body, &[4096]), b"b", 64);
        assert!(
            matches!(result, Err(MultipartError::PartHeadersTooLarge)),
            "{result:?}"
        );
    }

    fn body_with_parts(count: usize) -> Vec<u8> {
        let mut body = Vec::new();
        for index in 0..count {
            body.extend_from_slice(
                format!("--b\r\nContent-Disposition: form-data; name=\"f{index}\"\r\n\r\nv\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(b"--b--\r\n");
        body
    }

    #[test]
    fn part_count_at_limit_accepted() {
        let parts = parse_body(&body_with_parts(MAX_PARTS)[..], b"b", 64).unwrap();
        assert_eq!(parts.len(), MAX_PARTS);
        assert_eq!(
            parts[MAX_PARTS - 1],
            field(&format!("f{}", MAX_PARTS - 1), b"v")
        );
    }

    #[test]
    fn part_count_over_limit_rejected() {
        let body = body_with_parts(MAX_PARTS + 1);
        let mut reader = MultipartReader::new(&body[..], b"b");
        for _ in 0..MAX_PARTS {
            assert!(reader.next_part().unwrap().is_some());
        }
        let result = reader.next_part();
        assert!(
            matches!(result, Err(MultipartError::TooManyParts)),
            "{result:?}"
        );
    }

    #[test]
    fn transport_padding_filling_buffer_is_malformed() {
        let mut body = b"--b".to_vec();
        body.extend(std::iter::repeat_n(b' ', 2 * READ_BLOCK_BYTES));
        body.extend_from_slice(b"\r\n\r\nx\r\n--b--");
        let result = parse_body(&body[..], b"b", 64);
        assert!(
            matches!(result, Err(MultipartError::Malformed(_))),
            "{result:?}"
        );
    }

    #[test]
    fn wrong_boundary_reports_unexpected_eof() {
        let body =
            b"--right\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--right--\r\n";
        let result = parse_body(&body[..], b"wrong", 64);
        assert!(
            matches!(result, Err(MultipartError::UnexpectedEof)),
            "{result:?}"
        );
    }

    #[test]
    fn empty_input_reports_unexpected_eof() {
        let result = parse_body(&b""[..], b"b", 64);
        assert!(
            matches!(result, Err(MultipartError::UnexpectedEof)),
            "{result:?}"
        );
    }

    #[test]
    fn closing_delimiter_alone_has_no_parts() {
        let mut reader = MultipartReader::new(&b"--b--"[..], b"b");
        assert_eq!(reader.next_part().unwrap(), None);
        assert_eq!(reader.next_part().unwrap(), None);
        assert_eq!(reader.read_part(&mut [0; 8]).unwrap(), 0);
    }

    #[test]
    fn read_part_without_current_part_returns_zero() {
        let body =
            b"preamble\r\n--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n--b--";
        let mut reader = MultipartReader::new(&body[..], b"b");
        let mut chunk = [0; 16];

        assert_eq!(reader.read_part(&mut chunk).unwrap(), 0);
        assert_eq!(
            reader.next_part().unwrap(),
            Some(part_headers(Some("a"), None, None))
        );
        assert_eq!(reader.read_part(&mut []).unwrap(), 0);
        assert_eq!(reader.read_part(&mut chunk).unwrap(), 5);
        assert_eq!(&chunk[..5], b"value");
        assert_eq!(reader.read_part(&mut chunk).unwrap(), 0);
        assert_eq!(reader.read_part(&mut chunk).unwrap(), 0);
        assert_eq!(reader.next_part().unwrap(), None);
        assert_eq!(reader.read_part(&mut chunk).unwrap(), 0);
    }

    #[test]
    fn next_part_skips_unread_rest_of_part() {
        let big = pseudo_random_bytes(300_000, 7);
        let body = concat(&[
            b"--b\r\nContent-Disposition: form-data; name=\"big\"\r\n\r\n",
            &big,
            b"\r\n--b\r\nContent-Disposition: form-data; name=\"small\"\r\n\r\nsmall\r\n--b--",
        ]);
        let mut reader = MultipartReader::new(ChunkReader::new(&body, &[10_000]), b"b");
        let mut chunk = [0; 100];

        assert_eq!(
            reader.next_part().unwrap().unwrap().name.as_deref(),
            Some("big")
        );
        assert_eq!(reader.read_part(&mut chunk).unwrap(), 100);
        assert_eq!(&chunk[..], &big[..100]);
        assert_eq!(
            reader.next_part().unwrap().unwrap().name.as_deref(),
            Some("small")
        );
        assert_eq!(reader.read_part(&mut chunk).unwrap(), 5);
        assert_eq!(&chunk[..5], b"small");
        assert_eq!(reader.next_part().unwrap(), None);
    }

    #[test]
    fn read_error_surfaces_as_io() {
        let mut reader = MultipartReader::new(FailingReader, b"b");
        let error = reader.next_part().unwrap_err();
        assert!(matches!(error, MultipartError::Io(_)), "{error:?}");
        assert_eq!(error.to_string(), "multipart body: read failed: peer reset");
        assert!(error.source().is_some());
    }

    #[test]
    fn io_error_converts_with_from() {
        let error = MultipartError::from(io::Error::new(io::ErrorKind::TimedOut, "slow client"));
        assert!(matches!(error, MultipartError::Io(_)));
    }

    #[test]
    fn error_messages_are_lowercase_what_why() {
        let errors = [
            MultipartError::Io(io::Error::other("x")),
            MultipartError::NotMultipart,
            MultipartError::MissingBoundary,
            MultipartError::InvalidBoundary,
            MultipartError::PartHeadersTooLarge,
            MultipartError::TooManyParts,
            MultipartError::UnexpectedEof,
            MultipartError::Malformed("part headers: a header line has no colon"),
        ];
        for error in errors {
            let message = error.to_string();
            let (what, why) = message
                .split_once(": ")
                .unwrap_or_else(|| panic!("no colon in {message:?}"));
            assert!(!what.is_empty() && !why.is_empty(), "{message:?}");
            assert!(
                message.starts_with(|c: char| c.is_ascii_lowercase()),
                "{message:?}"
            );
            assert!(
                error.source().is_none() == !matches!(error, MultipartError::Io(_)),
                "{message:?}"
            );
        }
        assert_eq!(
            MultipartError::PartHeadersTooLarge.to_string(),
            "multipart body: a part's header block is larger than 16384 bytes"
        );
        assert_eq!(
            MultipartError::TooManyParts.to_string(),
            "multipart body: more than 1000 parts"
        );
    }

    #[test]
    fn delimiter_line_classified() {
        let cases: &[(&[u8], DelimiterLine)] = &[
            (b"", DelimiterLine::Incomplete),
            (b"-", DelimiterLine::Incomplete),
            (b"--", DelimiterLine::Close),
            (b"--anything", DelimiterLine::Close),
            (b"\r", DelimiterLine::Incomplete),
            (b"\r\n", DelimiterLine::Next(2)),
            (b"\n", DelimiterLine::Next(1)),
            (b" \t ", DelimiterLine::Incomplete),
            (b" \t \r", DelimiterLine::Incomplete),
            (b" \t \r\nrest", DelimiterLine::Next(5)),
            (b"-x", DelimiterLine::NotDelimiter),
            (b"x", DelimiterLine::NotDelimiter),
            (b" x", DelimiterLine::NotDelimiter),
            (b"\rx", DelimiterLine::NotDelimiter),
        ];
        for (after, expected) in cases {
            assert_eq!(
                &classify_delimiter_line(after),
                expected,
                "{:?}",
                String::from_utf8_lossy(after)
            );
        }
    }
}
