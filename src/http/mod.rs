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
