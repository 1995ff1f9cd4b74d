//! Property tests of the three input parsers on the stable toolchain, so CI checks without
//! nightly what the fuzz targets in `fuzz/` check. The properties themselves live in
//! `fuzz/src/` and are shared with those targets; this file generates the inputs.
//!
//! Behaviours covered:
//! - `parse_head`: heads built from real methods, targets, versions and framing headers, then
//!   cut, mutated and followed by body bytes, never panic. A complete head parses the same
//!   without what follows it, is `Partial` one byte short, and has RFC 9112 framing;
//! - `evaluate_range`: valid, malformed and overflowing specs against small and huge sizes give
//!   in-bounds, sorted, merged ranges within the limits, independent of spec order and
//!   stable when written back as a header; `plan_byteranges` declares the length it renders,
//!   and the rendered body parses back into the requested bytes;
//! - `MultipartReader`: bodies with near-delimiters, padding, LF line ends, odd header lines,
//!   any boundary and truncation give the same parts and error for every split into reads,
//!   whether part bodies are read or skipped, and whatever follows the closing delimiter;
//! - the chunked body decoder, over a loopback socket: bodies with extensions, trailers,
//!   bare LF, odd sizes, cuts and bytes after them decode like the reference decoder in
//!   `fuzz/src/chunked.rs`, which also fixes where the body ends;
//! - every seed input in `fuzz/corpus/` passes the same checks.
//!
//! Not covered here: inputs above a few KiB, so the multipart reader's 64 KiB buffer never
//! fills. The fuzz targets cover those (`scripts/fuzz.sh`).

#[path = "../fuzz/src/lib.rs"]
mod properties;

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use properties::MultipartCase;

// ---------------------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------------------

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]).prop_map(String::from),
        1 => "[A-Za-z]{1,8}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["/", "/videos/a.mp4", "/videos/a.mp4?x=1", "*", "http://t/videos/a.mp4"])
            .prop_map(String::from),
        1 => "/[!-~]{0,24}",
    ]
}

fn version() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => Just("HTTP/1.1"),
        2 => Just("HTTP/1.0"),
        1 => prop::sample::select(vec!["HTTP/2.0", "HTTP/1.x", "http/1.1"]),
    ]
}

/// Generates a header field with a value typical for its name, or a random one.
fn header_field() -> impl Strategy<Value = (String, String)> {
    fn field(names: Vec<&'static str>, values: Vec<&'static str>) -> BoxedStrategy<(String, String)> {
        (prop::sample::select(names), prop::sample::select(values))
            .prop_map(|(name, value)| (name.to_string(), value.to_string()))
            .boxed()
    }

    prop_oneof![
        2 => field(
            vec!["Content-Length", "content-length"],
            vec!["0", "5", "5, 5", "5,6", "+5", "05", "18446744073709551615", "99999999999999999999999", ""],
        ),
        2 => field(
            vec!["Transfer-Encoding", "transfer-encoding"],
            vec!["chunked", "Chunked", "gzip, chunked", "chunked, chunked", "identity", ""],
        ),
        2 => field(vec!["Connection"], vec!["close", "keep-alive", "Keep-Alive", "foo, close", "upgrade"]),
        1 => field(vec!["Expect"], vec!["100-continue", "100-Continue", "nothing"]),
        1 => field(vec!["Range", "User-Agent"], vec!["bytes=0-", "bytes=0-9,20-", "curl/8.5.0"]),
        1 => field(vec!["Host", "host"], vec!["t", "[::1]:9000", "a b", ""]),
        1 => ("[A-Za-z0-9-]{1,12}", "[ -~]{0,16}"),
    ]
}

prop_compose! {
    /// Generates a request head followed by body or pipelined bytes, then may change bytes
    /// and cut it.
    fn request_bytes()(
        method in method(),
        target in target(),
        version in version(),
        host in prop::option::weighted(0.8, any::<prop::sample::Index>()),
        mut headers in prop::collection::vec(header_field(), 0..5),
        filler_count in prop_oneof![9 => Just(0usize), 1 => 95usize..=105],
        line_end in prop::sample::select(vec!["\r\n", "\n"]),
        after_head in prop::collection::vec(any::<u8>(), 0..32),
        changes in prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..3),
        ],
        cut in prop::option::weighted(0.2, any::<prop::sample::Index>()),
    ) -> Vec<u8> {
        if let Some(host_position) = host {
            let position = host_position.index(headers.len() + 1);
            headers.insert(position, ("Host".to_string(), "t".to_string()));
        }
        let mut text = format!("{method} {target} {version}{line_end}");
        for (name, value) in &headers {
            text.push_str(&format!("{name}: {value}{line_end}"));
        }
        for index in 0..filler_count {
            text.push_str(&format!("X-Filler-{index}: v{line_end}"));
        }
        text.push_str(line_end);

        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&after_head);
        for (index, byte) in changes {
            let position = index.index(bytes.len());
            bytes[position] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes
    }
}

// ---------------------------------------------------------------------------------------------
// Range headers
// ---------------------------------------------------------------------------------------------

fn position() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u64..40).prop_map(|n| n.to_string()),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just(u64::MAX.to_string()),
        1 => Just("18446744073709551616".to_string()),
    ]
}

fn optional_whitespace() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\t", "  "])
}

fn range_spec() -> impl Strategy<Value = String> {
    let spec = prop_oneof![
        4 => (0u64..40, 0u64..20).prop_map(|(first, extra)| format!("{first}-{}", first + extra)),
        1 => (position(), position()).prop_map(|(first, last)| format!("{first}-{last}")),
        2 => position().prop_map(|first| format!("{first}-")),
        2 => position().prop_map(|length| format!("-{length}")),
        1 => "[-0-9 A-Z+;]{0,6}",
    ];
    (optional_whitespace(), spec, optional_whitespace()).prop_map(|(before, spec, after)| format!("{before}{spec}{after}"))
}

fn range_header() -> impl Strategy<Value = Option<String>> {
    let unit = prop::sample::select(vec!["bytes", "bytes", "bytes", "BYTES", "items", "bytes ", " bytes"]);
    let spec_count = prop_oneof![4 => 0usize..5, 1 => 0usize..20];
    let specs = spec_count.prop_flat_map(|count| prop::collection::vec(range_spec(), count));
    let structured = (unit, specs)
        .prop_map(|(unit, specs)| format!("{unit}={}", specs.join(",")));
    prop_oneof![
        1 => Just(None),
        8 => structured.prop_map(Some),
        1 => "\\PC{0,30}".prop_map(Some),
    ]
}

fn representation_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..40,
        2 => 0u64..100_000,
        1 => any::<u64>(),
        1 => Just(u64::MAX),
    ]
}

fn max_ranges() -> impl Strategy<Value = usize> {
    prop_oneof![9 => 1usize..20, 1 => Just(0usize), 1 => Just(usize::MAX)]
}

// ---------------------------------------------------------------------------------------------
// Multipart bodies
// ---------------------------------------------------------------------------------------------

/// A piece of part content. The near-delimiters are rendered with the case's boundary.
#[derive(Debug, Clone)]
enum Piece {
    Bytes(Vec<u8>),
    LineBreak,
    Dashes,
    /// CR LF "--" and the first `n % (boundary length + 1)` bytes of the boundary.
    BoundaryPrefix(usize),
    /// A whole delimiter followed by a byte, which may or may not end it.
    DelimiterThen(u8),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..24).prop_map(Piece::Bytes),
        1 => Just(Piece::LineBreak),
        1 => Just(Piece::Dashes),
        2 => any::<usize>().prop_map(Piece::BoundaryPrefix),
        1 => any::<u8>().prop_map(Piece::DelimiterThen),
    ]
}

fn part_header_line() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "Content-Disposition: form-data; name=\"title\"",
        "Content-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"",
        "content-disposition: form-data; filename*=UTF-8''%E4%B8%AD.mp4; name=file",
        "Content-Disposition: form-data; name=\"f\"; filename=\"C:\\dir\\a.mp4",
        "Content-Type: video/mp4",
        "X-Other: value",
        " folded continuation",
        "no colon here",
        ": empty name",
    ])
}

#[derive(Debug, Clone)]
struct PartSpec {
    header_lines: Vec<&'static str>,
    content: Vec<Piece>,
}

fn part_spec() -> impl Strategy<Value = PartSpec> {
    (prop::collection::vec(part_header_line(), 0..3), prop::collection::vec(piece(), 0..6))
        .prop_map(|(header_lines, content)| PartSpec { header_lines, content })
}

fn multipart_boundary() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[A-Za-z0-9'()+_,./:=? -]{0,69}[A-Za-z0-9]".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

/// A multipart body with the settings to read it.
#[derive(Debug, Clone)]
struct MultipartInput {
    boundary: Vec<u8>,
    read_sizes: Vec<usize>,
    chunk_len: usize,
    body: Vec<u8>,
}

fn render_piece(piece: &Piece, boundary: &[u8], out: &mut Vec<u8>) {
    match piece {
        Piece::Bytes(bytes) => out.extend_from_slice(bytes),
        Piece::LineBreak => out.extend_from_slice(b"\r\n"),
        Piece::Dashes => out.extend_from_slice(b"--"),
        Piece::BoundaryPrefix(n) => {
            out.extend_from_slice(b"\r\n--");
            out.extend_from_slice(&boundary[..n % (boundary.len() + 1)]);
        }
        Piece::DelimiterThen(byte) => {
            out.extend_from_slice(b"\r\n--");
            out.extend_from_slice(boundary);
            out.push(*byte);
        }
    }
}

prop_compose! {
    fn multipart_input()(
        boundary in multipart_boundary(),
        preamble in prop::collection::vec(piece(), 0..3),
        parts in prop::collection::vec(part_spec(), 0..5),
        line_end in prop::sample::select(vec![&b"\r\n"[..], &b"\n"[..]]),
        padding in prop::sample::select(vec![&b""[..], &b""[..], &b" \t"[..]]),
        closed in prop::bool::weighted(0.8),
        epilogue in prop::collection::vec(any::<u8>(), 0..16),
        cut in prop::option::weighted(0.15, any::<prop::sample::Index>()),
        read_sizes in prop::collection::vec(0usize..200, 0..5),
        chunk_len in 1usize..300,
    ) -> MultipartInput {
        let mut body = Vec::new();
        for piece in &preamble {
            render_piece(piece, &boundary, &mut body);
        }
        for part in &parts {
            body.extend_from_slice(b"\r\n--");
            body.extend_from_slice(&boundary);
            body.extend_from_slice(padding);
            body.extend_from_slice(line_end);
            for line in &part.header_lines {
                body.extend_from_slice(line.as_bytes());
                body.extend_from_slice(line_end);
            }
            body.extend_from_slice(line_end);
            for piece in &part.content {
                render_piece(piece, &boundary, &mut body);
            }
        }
        if closed {
            body.extend_from_slice(b"\r\n--");
            body.extend_from_slice(&boundary);
            body.extend_from_slice(b"--");
            body.extend_from_slice(&epilogue);
        }
        if let Some(cut) = cut {
            body.truncate(cut.index(body.len() + 1));
        }
        MultipartInput { boundary, read_sizes, chunk_len, body }
    }
}

// ---------------------------------------------------------------------------------------------
// Chunked bodies
// ---------------------------------------------------------------------------------------------

fn chunk_size_line() -> impl Strategy<Value = Vec<u8>> {
    let size = prop_oneof![
        6 => (0usize..40).prop_map(|size| format!("{size:x}")),
        1 => (0usize..40).prop_map(|size| format!("{size:X}")),
        1 => prop::sample::select(vec!["+5", " 5\t", "05", "fffffffffffffff", "1000000000000000", "zz", ""])
            .prop_map(String::from),
    ];
    let extension = prop::sample::select(vec!["", "", ";ext=1", ";name=\"quoted value\"", " ;x"]);
    (size, extension).prop_map(|(size, extension)| format!("{size}{extension}").into_bytes())
}

prop_compose! {
    /// Generates a chunked body from size lines and data that may not match them, then may
    /// cut it.
    fn chunked_bytes()(
        chunks in prop::collection::vec((chunk_size_line(), prop::collection::vec(any::<u8>(), 0..40)), 0..5),
        trailers in prop::collection::vec(prop::sample::select(vec!["X-Checksum: abc", "X: 1", "bad trailer"]), 0..3),
        line_end in prop::sample::select(vec![&b"\r\n"[..], &b"\r\n"[..], &b"\n"[..], &b"\r\r\n"[..]]),
        last_chunk in prop::sample::select(vec!["0", "0", "00", "0;last=yes"]),
        after_body in prop::collection::vec(any::<u8>(), 0..16),
        cut in prop::option::weighted(0.15, any::<prop::sample::Index>()),
    ) -> Vec<u8> {
        let mut body = Vec::new();
        for (size_line, data) in &chunks {
            body.extend_from_slice(size_line);
            body.extend_from_slice(line_end);
            body.extend_from_slice(data);
            body.extend_from_slice(line_end);
        }
        body.extend_from_slice(last_chunk.as_bytes());
        body.extend_from_slice(line_end);
        for trailer in &trailers {
            body.extend_from_slice(trailer.as_bytes());
            body.extend_from_slice(line_end);
        }
        body.extend_from_slice(line_end);
        body.extend_from_slice(&after_body);
        if let Some(cut) = cut {
            body.truncate(cut.index(body.len() + 1));
        }
        body
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// Runs `cases` cases and saves shrunk failures in `parsers_proptest.proptest-regressions`
/// beside this file, which later runs replay first.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn request_head_properties_hold(bytes in request_bytes()) {
        properties::check_request_head(&bytes);
    }

    #[test]
    fn range_properties_hold(header in range_header(), size in representation_size(), max in max_ranges()) {
        properties::check_range(header.as_deref(), size, max);
    }
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn multipart_properties_hold(input in multipart_input()) {
        properties::check_multipart(&MultipartCase {
            boundary: &input.boundary,
            read_sizes: &input.read_sizes,
            chunk_len: input.chunk_len,
            body: &input.body,
        });
    }

    #[test]
    fn chunked_body_properties_hold(body in chunked_bytes(), read_len in 1usize..64) {
        properties::check_chunked_body(&body, read_len);
    }
}

// ---------------------------------------------------------------------------------------------
// Seed corpora
// ---------------------------------------------------------------------------------------------

/// Runs `check` on every file in `fuzz/corpus/TARGET`, naming the file when a check fails.
fn check_corpus(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("seed corpus {}: {error}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "seed corpus {} is empty", dir.display());

    for path in entries {
        let data = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "seed {} fails its properties", path.display());
    }
}

#[test]
fn request_head_seeds_pass() {
    check_corpus("request_head", properties::check_request_head);
}

#[test]
fn range_seeds_pass() {
    check_corpus("range", properties::check_range_input);
}

#[test]
fn multipart_seeds_pass() {
    check_corpus("multipart", properties::check_multipart_input);
}

#[test]
fn chunked_body_seeds_pass() {
    check_corpus("chunked_body", properties::check_chunked_input);
}
