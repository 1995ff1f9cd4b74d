//! HTTP protocol rules that need no I/O: Range evaluation, multipart/byteranges
//! framing, conditional requests and Content-Type selection.
//!
//! Every function here takes header values, sizes and timestamps and returns a
//! decision or a value. Sockets, files, object storage and response writing
//! belong to the server and handler modules.

pub mod byteranges;
pub mod conditional;
pub mod content_type;
pub mod range;

/// Trims optional whitespace (RFC 9110 §5.6.3: space and horizontal tab, nothing else) from
/// both ends of a header value or list element. `str::trim` would also remove Unicode spaces
/// such as U+00A0, and so accept values another parser rejects.
pub fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}
