//! Properties of `evaluate_range` and of the `multipart/byteranges` plan built from its result.
//!
//! The evaluator's outcome must describe ranges inside the representation, sorted, merged and
//! within the abuse limits. It must not depend on the order of the specs, and evaluating the
//! outcome written back as a header must give the same outcome. For two or more ranges,
//! `plan_byteranges` must declare a `Content-Length` equal to the length of the body it
//! renders, and that body must parse back into exactly the requested bytes.

use streamserver::http::byteranges::{plan_byteranges, ByteRangesBody, Segment};
use streamserver::http::range::{evaluate_range, ByteRange, RangeOutcome};
use streamserver::multipart::MultipartReader;

/// Part boundary for planned bodies. The rendered file bytes are `offset % 251`, a sequence
/// that never contains the CR LF of a delimiter, so the boundary cannot occur inside a part.
const BOUNDARY: &str = "fuzzBoundary0123456789";

const PART_CONTENT_TYPE: &str = "video/mp4";

/// Largest representation whose planned multipart body is rendered byte by byte and parsed
/// back. Larger ones get the length arithmetic checked only.
const MAX_RENDERED_SIZE: u64 = 64 * 1024;

/// Largest representation whose multipart body is planned at all: the largest file size
/// `off_t` can express.
// NOTE: `plan_byteranges` overflows its `Content-Length` sum when the ranges cover nearly
// `u64::MAX` bytes, for example `bytes=0-0,2-` on a size of `u64::MAX`. No file is that large,
// so sizes above `i64::MAX` are left out until the sum is checked.
const MAX_PLANNED_SIZE: u64 = i64::MAX as u64;

/// Decodes fuzz input of the form `SIZE\nMAX_RANGES\nHEADER` and checks it. Without a second
/// line feed the request has no `Range` header. Input whose first two lines are not decimal
/// numbers is skipped. Header bytes that are not UTF-8 are decoded lossily, as the server
/// decodes header values.
pub fn check_range_input(data: &[u8]) {
    let mut fields = data.splitn(3, |&byte| byte == b'\n');
    let Some(size) = fields.next().and_then(parse_decimal::<u64>) else {
        return;
    };
    let Some(max_ranges) = fields.next().and_then(parse_decimal::<usize>) else {
        return;
    };
    let header = fields.next().map(String::from_utf8_lossy);

    check_range(header.as_deref(), size, max_ranges);
}

fn parse_decimal<T: std::str::FromStr>(digits: &[u8]) -> Option<T> {
    std::str::from_utf8(digits).ok()?.trim().parse().ok()
}

/// Evaluates one `Range` header value against a representation of `size` bytes and checks
/// the outcome and, for two or more ranges, the planned multipart body.
pub fn check_range(header: Option<&str>, size: u64, max_ranges: usize) {
    let outcome = evaluate_range(header, size, max_ranges);
    let context = format!("evaluate_range({header:?}, size {size}, max_ranges {max_ranges}) = {outcome:?}");

    check_outcome_shape(&outcome, size, max_ranges, &context);
    check_spec_order_ignored(header, size, max_ranges, &outcome, &context);
    check_more_ranges_allowed_keeps_outcome(header, size, max_ranges, &outcome, &context);
    check_outcome_as_header_round_trips(&outcome, size, max_ranges, &context);

    if let RangeOutcome::Multi(ranges) = &outcome {
        if size <= MAX_PLANNED_SIZE {
            check_byteranges_plan(ranges, size);
        }
    }
}

fn check_outcome_shape(outcome: &RangeOutcome, size: u64, max_ranges: usize, context: &str) {
    match outcome {
        RangeOutcome::Full => {}
        RangeOutcome::Unsatisfiable => assert!(size > 0, "{context}: empty file is unsatisfiable"),
        RangeOutcome::Partial(range) => check_range_inside(range, size, context),
        RangeOutcome::Multi(ranges) => {
            assert!(ranges.len() >= 2, "{context}: Multi with fewer than two ranges");
            assert!(ranges.len() <= max_ranges, "{context}: more ranges than max_ranges");
            for range in ranges {
                check_range_inside(range, size, context);
            }
            for pair in ranges.windows(2) {
                assert!(
                    pair[1].start > pair[0].end.saturating_add(1),
                    "{context}: ranges {:?} and {:?} overlap, touch or are unsorted",
                    pair[0],
                    pair[1]
                );
            }
            let total: u64 = ranges.iter().map(ByteRange::len).sum();
            assert!(total <= size, "{context}: {total} bytes requested from {size}");
        }
    }
}

fn check_range_inside(range: &ByteRange, size: u64, context: &str) {
    assert!(range.start <= range.end, "{context}: range {range:?} ends before it starts");
    assert!(range.end < size, "{context}: range {range:?} ends past the last byte");
}

/// Reversing the comma-separated specs after `=` must not change the outcome, because the
/// limits count and sum all specs and the ranges are sorted before merging.
fn check_spec_order_ignored(
    header: Option<&str>,
    size: u64,
    max_ranges: usize,
    outcome: &RangeOutcome,
    context: &str,
) {
    let Some((unit, specs)) = header.and_then(|value| value.split_once('=')) else {
        return;
    };
    let reversed_specs: Vec<&str> = specs.split(',').rev().collect();
    let reversed = format!("{unit}={}", reversed_specs.join(","));

    let reversed_outcome = evaluate_range(Some(&reversed), size, max_ranges);
    assert_eq!(&reversed_outcome, outcome, "{context}: specs reversed as {reversed:?}");
}

/// Raising `max_ranges` must keep every outcome that the lower limit did not turn into `Full`.
fn check_more_ranges_allowed_keeps_outcome(
    header: Option<&str>,
    size: u64,
    max_ranges: usize,
    outcome: &RangeOutcome,
    context: &str,
) {
    if *outcome == RangeOutcome::Full || max_ranges == usize::MAX {
        return;
    }
    let raised = evaluate_range(header, size, max_ranges + 1);
    assert_eq!(&raised, outcome, "{context}: max_ranges raised to {}", max_ranges + 1);
}

/// The ranges of a `Partial` or `Multi` outcome, written as a header, must evaluate to the
/// same outcome: they are in bounds, sorted, disjoint and within the limits.
fn check_outcome_as_header_round_trips(
    outcome: &RangeOutcome,
    size: u64,
    max_ranges: usize,
    context: &str,
) {
    let ranges: &[ByteRange] = match outcome {
        RangeOutcome::Partial(range) => std::slice::from_ref(range),
        RangeOutcome::Multi(ranges) => ranges,
        RangeOutcome::Full | RangeOutcome::Unsatisfiable => return,
    };
    let specs: Vec<String> = ranges.iter().map(|range| format!("{}-{}", range.start, range.end)).collect();
    let header = format!("bytes={}", specs.join(","));

    let again = evaluate_range(Some(&header), size, max_ranges);
    assert_eq!(&again, outcome, "{context}: outcome written back as {header:?}");
}

/// Checks a planned `multipart/byteranges` body: segment bounds, the declared length, and for
/// small representations the rendered bytes parsed back part by part.
pub fn check_byteranges_plan(ranges: &[ByteRange], size: u64) {
    let body = plan_byteranges(ranges, size, PART_CONTENT_TYPE, BOUNDARY.to_string());

    assert_eq!(body.segments.len(), 2 * ranges.len() + 1, "one header and one file segment per range");
    let mut counted_length: u64 = 0;
    for (index, segment) in body.segments.iter().enumerate() {
        counted_length += match segment {
            Segment::Bytes(bytes) => bytes.len() as u64,
            Segment::File { start, len } => {
                let range = ranges[index / 2];
                assert_eq!((*start, *len), (range.start, range.len()), "file segment of {range:?}");
                *len
            }
        };
    }
    assert_eq!(body.content_length, counted_length, "Content-Length differs from the segment lengths");

    for (range, segment) in ranges.iter().zip(body.segments.iter().step_by(2)) {
        let content_range = format!("Content-Range: {}\r\n\r\n", range.content_range(size));
        let Segment::Bytes(header) = segment else {
            panic!("segment before {range:?} is not a part header");
        };
        assert!(header.ends_with(content_range.as_bytes()), "part header of {range:?}: {header:?}");
    }

    if size <= MAX_RENDERED_SIZE {
        check_rendered_body_parses_back(&body, ranges, size);
    }
}

fn file_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn render(body: &ByteRangesBody) -> Vec<u8> {
    let mut rendered = Vec::new();
    for segment in &body.segments {
        match segment {
            Segment::Bytes(bytes) => rendered.extend_from_slice(bytes),
            Segment::File { start, len } => rendered.extend((*start..start + len).map(file_byte)),
        }
    }
    rendered
}

fn check_rendered_body_parses_back(body: &ByteRangesBody, ranges: &[ByteRange], size: u64) {
    let rendered = render(body);
    assert_eq!(body.content_length, rendered.len() as u64, "Content-Length differs from the rendered body");

    let mut reader = MultipartReader::new(&rendered[..], BOUNDARY.as_bytes());
    for range in ranges {
        let headers = reader
            .next_part()
            .unwrap_or_else(|error| panic!("rendered body for size {size}, part {range:?}: {error}"))
            .unwrap_or_else(|| panic!("rendered body for size {size} ends before part {range:?}"));
        assert_eq!(headers.content_type.as_deref(), Some(PART_CONTENT_TYPE), "part {range:?}");

        let mut content = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let count = reader.read_part(&mut chunk).expect("rendered part reads");
            if count == 0 {
                break;
            }
            content.extend_from_slice(&chunk[..count]);
        }
        let expected: Vec<u8> = (range.start..=range.end).map(file_byte).collect();
        assert!(content == expected, "part {range:?}: content differs from the file bytes");
    }
    assert!(
        matches!(reader.next_part(), Ok(None)),
        "rendered body for size {size} has more parts than the {} ranges",
        ranges.len()
    );
}
