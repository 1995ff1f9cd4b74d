//! Range request evaluation (RFC 9110 §14): turns a `Range` header value and a
//! representation size into the byte ranges to send.
//!
//! This module owns parsing, validation, the abuse limits and the merging of
//! ranges. The caller owns If-Range (see `conditional`), status codes, response
//! headers, multipart framing (see `byteranges`) and all I/O.
//!
//! A header that cannot be parsed is ignored, so the whole representation is
//! sent with 200, as RFC 9110 §14.2 allows. Go's net/http responds to such
//! headers with 416 instead.
use std::fmt::Write as _;

use super::trim_ows;


/// A satisfiable byte range with an inclusive `end`, already clamped to the
/// representation, so `start <= end < size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// Returns the number of bytes in the range.
    // An inclusive range always contains at least one byte, so `is_empty` would always be false.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Formats the `Content-Range` value for this range of a representation of
    /// `size` bytes, for example `bytes 0-1/10`.
    pub fn content_range(&self, size: u64) -> String {
        let mut value = String::with_capacity(72);
        // `String` implements `fmt::Write` without ever returning an error.
        let _ = write!(value, "bytes {}-{}/{}", self.start, self.end, size);
        value
    }
}

/// Formats the `Content-Range` value that a 416 response carries, for example `bytes */10`.
pub fn unsatisfied_content_range(size: u64) -> String {
    format!("bytes */{size}")
}

/// Decision for a request's `Range` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Send the whole representation with 200 and ignore the header.
    Full,
    /// Send one range with 206 and `Content-Range`.
    Partial(ByteRange),
    /// Send a 206 multipart/byteranges body. The ranges are sorted, neither
    /// overlap nor touch, and there are at least two.
    Multi(Vec<ByteRange>),
    /// Send 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// A syntactically valid byte-range-spec before it is resolved against a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    /// `first-last`, with `first <= last`.
    Bounded { first: u64, last: u64 },
    /// `first-`, up to the end of the representation.
    From { first: u64 },
    /// `-length`, the last `length` bytes.
    Suffix { length: u64 },
}

/// Evaluates the raw `Range` header value (`None` when the request has none)
/// against a representation of `size` bytes.
///
/// The steps, in order:
/// 1. No header, a unit other than `bytes`, or any malformed spec: `Full`.
/// 2. An empty file, an empty spec list, or more than `max_ranges` specs
///    (unsatisfiable specs count too): `Full`.
/// 3. Specs starting at or after `size`, and `-0`, are dropped. None left: `Unsatisfiable`.
/// 4. Lengths of the remaining ranges adding up to more than `size`: `Full`,
///    because such a request only multiplies the bytes sent.
/// 5. Ranges are sorted and overlapping or adjacent ones merged: one left
///    gives `Partial`, more give `Multi`.
pub fn evaluate_range(header: Option<&str>, size: u64, max_ranges: usize) -> RangeOutcome {
    let Some(header) = header else {
        return RangeOutcome::Full;
    };
    match evaluate_single(header, size, max_ranges) {
        Some(outcome) => outcome,
        None => evaluate_list(header, size, max_ranges),
    }
}

/// Evaluates any number of specs: checks them against the abuse limits, then merges them.
fn evaluate_list(header: &str, size: u64, max_ranges: usize) -> RangeOutcome {
    let Some(specs) = parse_range_header(header) else {
        return RangeOutcome::Full;
    };

    if size == 0 || specs.is_empty() || specs.len() > max_ranges {
        return RangeOutcome::Full;
    }

    let ranges: Vec<ByteRange> = specs
        .iter()
        .filter_map(|spec| resolve(*spec, size))
        .collect();
    if ranges.is_empty() {
        return RangeOutcome::Unsatisfiable;
    }

    let total = ranges
        .iter()
        .fold(0u64, |sum, range| sum.saturating_add(range.len()));
    if total > size {
        return RangeOutcome::Full;
    }

    let mut merged = merge(ranges);
    if merged.len() == 1 {
        RangeOutcome::Partial(merged.remove(0))
    } else {
        RangeOutcome::Multi(merged)
    }
}

/// Evaluates a header holding exactly one valid spec, a player's usual seek, without the
/// allocations of the general path. Returns `None` for anything else, which the general path
/// then decides.
fn evaluate_single(header: &str, size: u64, max_ranges: usize) -> Option<RangeOutcome> {
    let (unit, set) = trim_ows(header).split_once('=')?;
    if set.contains(',') || !unit.eq_ignore_ascii_case("bytes") || size == 0 || max_ranges == 0 {
        return None;
    }

    let spec = parse_spec(trim_ows(set))?;
    Some(match resolve(spec, size) {
        Some(range) => RangeOutcome::Partial(range),
        None => RangeOutcome::Unsatisfiable,
    })
}

/// Parses `bytes=spec, spec, ...`. Returns `None` for another unit or any malformed spec.
/// Empty list elements are skipped, so `bytes=` and `bytes= , ,` give an empty list.
fn parse_range_header(header: &str) -> Option<Vec<RangeSpec>> {
    let (unit, set) = trim_ows(header).split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }

    let mut specs = Vec::new();
    for element in set.split(',') {
        let element = trim_ows(element);
        if element.is_empty() {
            continue;
        }
        specs.push(parse_spec(element)?);
    }
    Some(specs)
}

/// Parses one byte-range-spec. Whitespace around the `-` is accepted, as Apache
/// httpd and Go's net/http accept it.
fn parse_spec(spec: &str) -> Option<RangeSpec> {
    let (first, last) = spec.split_once('-')?;
    let first = trim_ows(first);
    let last = trim_ows(last);

    if first.is_empty() {
        let length = parse_decimal(last)?;
        return Some(RangeSpec::Suffix { length });
    }

    let first = parse_decimal(first)?;
    if last.is_empty() {
        return Some(RangeSpec::From { first });
    }

    let last = parse_decimal(last)?;
    if last < first {
        return None;
    }
    Some(RangeSpec::Bounded { first, last })
}

/// Parses a non-empty run of ASCII digits. Signs, other characters and values
/// above `u64::MAX` are rejected.
fn parse_decimal(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Clamps a spec to a representation of `size` bytes (`size > 0`), or returns
/// `None` when the spec is unsatisfiable.
fn resolve(spec: RangeSpec, size: u64) -> Option<ByteRange> {
    let last_byte = size - 1;
    match spec {
        RangeSpec::Bounded { first, last } if first < size => Some(ByteRange {
            start: first,
            end: last.min(last_byte),
        }),
        RangeSpec::From { first } if first < size => Some(ByteRange {
            start: first,
            end: last_byte,
        }),
        RangeSpec::Suffix { length } if length > 0 => Some(ByteRange {
            start: size - length.min(size),
            end: last_byte,
        }),
        _ => None,
    }
}

/// Sorts ranges and merges those that overlap or touch.
fn merge(mut ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    ranges.sort_by_key(|range| (range.start, range.end));

    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(previous) if range.start <= previous.end.saturating_add(1) => {
                previous.end = previous.end.max(range.end);
            }
            _ => merged.push(range),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeOutcome::{Full, Unsatisfiable};

    const MAX: usize = 16;

    fn partial(start: u64, end: u64) -> RangeOutcome {
        RangeOutcome::Partial(ByteRange { start, end })
    }

    fn multi(pairs: &[(u64, u64)]) -> RangeOutcome {
        RangeOutcome::Multi(
            pairs
                .iter()
                .map(|&(start, end)| ByteRange { start, end })
                .collect(),
        )
    }

    #[test]
    fn single_spec_matches_general_path() {
        let specs = ["0-0", "0-9", "5-", "9-", "10-", "-0", "-1", "-15", " 3 - 4 ", "5-4", "A-", "", "1", "-", "0-18446744073709551615"];
        for spec in specs {
            for unit in ["bytes=", "BYTES=", " bytes = ", "items="] {
                let header = format!("{unit}{spec}");
                for size in [0, 1, 10, u64::MAX] {
                    for max_ranges in [0, 1, MAX] {
                        if let Some(quick) = evaluate_single(&header, size, max_ranges) {
                            assert_eq!(quick, evaluate_list(&header, size, max_ranges), "{header:?}, size {size}, max {max_ranges}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn evaluate_range_table() {
        // (header, size, max_ranges, expected)
        let rows: Vec<(Option<&str>, u64, usize, RangeOutcome)> = vec![
            // Rows from Go's range_test.go ParseRange table, mapped to our outcomes.
            // Go responds to malformed headers with 416, where we ignore them (Full).
            (Some(""), 0, MAX, Full),
            (Some(""), 1000, MAX, Full),
            (Some("foo"), 0, MAX, Full),
            (Some("bytes="), 0, MAX, Full),
            (Some("bytes=7"), 10, MAX, Full),
            (Some("bytes= 7 "), 10, MAX, Full),
            (Some("bytes=1-"), 0, MAX, Full),
            (Some("bytes=5-4"), 10, MAX, Full),
            (Some("bytes=0-2,5-4"), 10, MAX, Full),
            (Some("bytes=2-5,4-3"), 10, MAX, Full),
            (Some("bytes=--5,4--3"), 10, MAX, Full),
            (Some("bytes=A-"), 10, MAX, Full),
            (Some("bytes=A- "), 10, MAX, Full),
            (Some("bytes=A-Z"), 10, MAX, Full),
            (Some("bytes= -Z"), 10, MAX, Full),
            (Some("bytes=5-Z"), 10, MAX, Full),
            (Some("bytes=Ran-dom, garbage"), 10, MAX, Full),
            (Some("bytes=0x01-0x02"), 10, MAX, Full),
            (Some("bytes=         "), 10, MAX, Full),
            (Some("bytes= , , ,   "), 10, MAX, Full),
            (Some("bytes=0-9"), 10, MAX, partial(0, 9)),
            (Some("bytes=0-"), 10, MAX, partial(0, 9)),
            (Some("bytes=5-"), 10, MAX, partial(5, 9)),
            (Some("bytes=0-20"), 10, MAX, partial(0, 9)),
            // The unsatisfiable spec is dropped and the other one served.
            (Some("bytes=15-,0-5"), 10, MAX, partial(0, 5)),
            (Some("bytes=1-2,5-"), 10, MAX, multi(&[(1, 2), (5, 9)])),
            // Go keeps 9-10 and 7-10 apart, but we merge the overlap.
            (Some("bytes=-2 , 7-"), 11, MAX, partial(7, 10)),
            (
                Some("bytes=0-0 ,2-2, 7-"),
                11,
                MAX,
                multi(&[(0, 0), (2, 2), (7, 10)]),
            ),
            (Some("bytes=-5"), 10, MAX, partial(5, 9)),
            (Some("bytes=-15"), 10, MAX, partial(0, 9)),
            (Some("bytes=0-499"), 10000, MAX, partial(0, 499)),
            (Some("bytes=500-999"), 10000, MAX, partial(500, 999)),
            (Some("bytes=-500"), 10000, MAX, partial(9500, 9999)),
            (Some("bytes=9500-"), 10000, MAX, partial(9500, 9999)),
            (
                Some("bytes=0-0,-1"),
                10000,
                MAX,
                multi(&[(0, 0), (9999, 9999)]),
            ),
            (Some("bytes=500-600,601-999"), 10000, MAX, partial(500, 999)),
            (Some("bytes=500-700,601-999"), 10000, MAX, partial(500, 999)),
            (
                Some("bytes=   1 -2   ,  4- 5, 7 - 8 , ,,"),
                11,
                MAX,
                multi(&[(1, 2), (4, 5), (7, 8)]),
            ),
            // No header.
            (None, 10, MAX, Full),
            (None, 0, MAX, Full),
            // Start at or past the end.
            (Some("bytes=10-"), 10, MAX, Unsatisfiable),
            (Some("bytes=11-20"), 10, MAX, Unsatisfiable),
            (Some("bytes=10-,20-"), 10, MAX, Unsatisfiable),
            (Some("bytes=9-"), 10, MAX, partial(9, 9)),
            (Some("bytes=9-9"), 10, MAX, partial(9, 9)),
            (Some("bytes=0-0"), 1, MAX, partial(0, 0)),
            // Zero-length suffix.
            (Some("bytes=-0"), 10, MAX, Unsatisfiable),
            (Some("bytes=-0,0-1"), 10, MAX, partial(0, 1)),
            (Some("bytes=0-9,-0"), 10, MAX, partial(0, 9)),
            // Empty file.
            (Some("bytes=-1"), 0, MAX, Full),
            (Some("bytes=-0"), 0, MAX, Full),
            (Some("bytes=0-0"), 0, MAX, Full),
            // Units.
            (Some("items=0-1"), 10, MAX, Full),
            (Some("BYTES=0-1"), 10, MAX, partial(0, 1)),
            (Some("Bytes=0-1"), 10, MAX, partial(0, 1)),
            (Some("bytes =0-1"), 10, MAX, Full),
            (Some("bytes"), 10, MAX, Full),
            // Whitespace.
            (Some("  bytes=0-1  "), 10, MAX, partial(0, 1)),
            (
                Some("bytes=\t0-1\t,\t3-4"),
                10,
                MAX,
                multi(&[(0, 1), (3, 4)]),
            ),
            (Some("bytes=1 2-3"), 10, MAX, Full),
            // Overflow and signs.
            (Some("bytes=0-18446744073709551616"), 10, MAX, Full),
            (Some("bytes=0-18446744073709551615"), 10, MAX, partial(0, 9)),
            (Some("bytes=18446744073709551615-"), 10, MAX, Unsatisfiable),
            (Some("bytes=-18446744073709551616"), 10, MAX, Full),
            (Some("bytes=-18446744073709551615"), 10, MAX, partial(0, 9)),
            (Some("bytes=+1-2"), 10, MAX, Full),
            (Some("bytes=1-+2"), 10, MAX, Full),
            (Some("bytes=-+2"), 10, MAX, Full),
            (Some("bytes=0--1"), 10, MAX, Full),
            (Some("bytes=\u{0663}-4"), 10, MAX, Full),
            // Other malformed forms.
            (Some("bytes=1-2-3"), 10, MAX, Full),
            (Some("bytes=-"), 10, MAX, Full),
            (Some("bytes=0-1;3-4"), 10, MAX, Full),
            // Empty list elements.
            (Some("bytes=0-1,,3-4"), 10, MAX, multi(&[(0, 1), (3, 4)])),
            (Some("bytes=,0-1"), 10, MAX, partial(0, 1)),
            (Some("bytes=0-1,"), 10, MAX, partial(0, 1)),
            // Too many specs, counting unsatisfiable ones.
            (Some("bytes=0-0,2-2,4-4"), 10, 2, Full),
            (Some("bytes=0-0,2-2"), 10, 2, multi(&[(0, 0), (2, 2)])),
            (Some("bytes=0-0,20-"), 10, 1, Full),
            (Some("bytes=0-1"), 10, 0, Full),
            // Sum of lengths above the size, computed before merging.
            (Some("bytes=0-,0-"), 10, MAX, Full),
            (Some("bytes=0-5,5-9"), 10, MAX, Full),
            (Some("bytes=0-0,-1"), 1, MAX, Full),
            (Some("bytes=0-4,5-9"), 10, MAX, partial(0, 9)),
            (Some("bytes=0-1,0-1"), 10, MAX, partial(0, 1)),
            // Sorting and merging.
            (
                Some("bytes=6-9,0-1,3-4"),
                10,
                MAX,
                multi(&[(0, 1), (3, 4), (6, 9)]),
            ),
            (Some("bytes=0-3,2-5,8-9"), 10, MAX, multi(&[(0, 5), (8, 9)])),
            (Some("bytes=4-4,3-3,5-5"), 10, MAX, partial(3, 5)),
            (Some("bytes=2-3,0-0"), 10, MAX, multi(&[(0, 0), (2, 3)])),
        ];
        assert!(rows.len() >= 40);

        for (header, size, max_ranges, expected) in rows {
            let actual = evaluate_range(header, size, max_ranges);
            assert_eq!(
                actual, expected,
                "evaluate_range({header:?}, size {size}, max_ranges {max_ranges})"
            );
        }
    }

    #[test]
    fn byte_range_len_is_inclusive() {
        assert_eq!(ByteRange { start: 0, end: 0 }.len(), 1);
        assert_eq!(ByteRange { start: 5, end: 9 }.len(), 5);
    }

    #[test]
    fn content_range_formats_inclusive_end() {
        let range = ByteRange { start: 0, end: 1 };

        assert_eq!(range.content_range(10), "bytes 0-1/10");
    }

    #[test]
    fn unsatisfied_content_range_uses_star() {
        assert_eq!(unsatisfied_content_range(10), "bytes */10");
    }

    #[test]
    fn suffix_longer_than_file_serves_whole() {
        let outcome = evaluate_range(Some("bytes=-100"), 10, MAX);

        assert_eq!(outcome, partial(0, 9));
    }
}
