//! Conditional requests (RFC 9110 §13): entity-tag comparison, HTTP dates and
//! the order in which preconditions are evaluated.
//!
//! This module decides between proceeding, 304 and 412, and whether If-Range
//! lets a Range through. The caller owns the method dispatch, the check that
//! the resource exists, the response headers (ETag, Last-Modified) and the
//! decision to call `if_range_allows_partial` only for a GET with a Range.
//!
//! `evaluate_preconditions` follows the order of RFC 9110 §13.2.2:
//! 1. If-Match present: when false, 412.
//! 2. Else If-Unmodified-Since present with a valid date: when false, 412.
//! 3. If-None-Match present: when false (a tag matches), 304 for GET and HEAD,
//!    412 for other methods.
//! 4. Else, for GET and HEAD, If-Modified-Since present with a valid date:
//!    when false, 304.
//! 5. If-Range, for a GET with a Range, is left to `if_range_allows_partial`.
//! 6. Otherwise the request proceeds.
//!
//! Dates are compared at one-second precision because an HTTP-date carries
//! whole seconds. A header value that is empty or only whitespace counts as
//! absent, and an invalid date makes its header ignored. Entity-tag lists are
//! read as Go's net/http reads them: scanning stops at the first malformed
//! element, and the tags before it still count.
//!
//! An If-Modified-Since date in the future is compared like any other date, as
//! Go's net/http does, so it gives 304 unless the file is newer. This keeps the
//! functions free of a clock.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::trim_ows;

/// The current validators of the selected representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// Strong entity tag with its quotes, as `strong_etag` returns it.
    pub etag: String,
    pub last_modified: SystemTime,
}

/// Raw values of the conditional request headers, `None` when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditionals<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_unmodified_since: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

/// Result of evaluating the preconditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the request as if it had no preconditions.
    Proceed,
    /// Send 304 Not Modified.
    NotModified,
    /// Send 412 Precondition Failed.
    PreconditionFailed,
}

/// Evaluates If-Match, If-Unmodified-Since, If-None-Match and If-Modified-Since
/// in the order listed in the module documentation. `is_get_or_head` selects
/// 304 for GET and HEAD, and other methods get 412 where RFC 9110 requires it.
/// If-Range is not looked at here.
pub fn evaluate_preconditions(
    c: &Conditionals,
    v: &Validators,
    is_get_or_head: bool,
) -> Precondition {
    // Step 1: If-Match, with strong comparison.
    // Step 2: If-Unmodified-Since, only when If-Match is absent.
    let unchanged = match non_empty(c.if_match) {
        Some(list) => Some(list_contains(list, |tag| strong_match(tag, &v.etag))),
        None => non_empty(c.if_unmodified_since)
            .and_then(parse_http_date)
            .map(|date| unix_seconds(v.last_modified) <= unix_seconds(date)),
    };
    if unchanged == Some(false) {
        return Precondition::PreconditionFailed;
    }

    // Step 3: If-None-Match, with weak comparison.
    if let Some(list) = non_empty(c.if_none_match) {
        if !list_contains(list, |tag| weak_match(tag, &v.etag)) {
            return Precondition::Proceed;
        }
        return if is_get_or_head {
            Precondition::NotModified
        } else {
            Precondition::PreconditionFailed
        };
    }

    // Step 4: If-Modified-Since, only when If-None-Match is absent and for GET or HEAD.
    let modified = non_empty(c.if_modified_since)
        .filter(|_| is_get_or_head)
        .and_then(parse_http_date)
        .map(|date| unix_seconds(v.last_modified) > unix_seconds(date));
    if modified == Some(false) {
        return Precondition::NotModified;
    }

    Precondition::Proceed
}

/// Returns true when a Range may be honoured: If-Range is absent or empty, or
/// it is an entity tag that strongly matches `v.etag`, or it is an HTTP-date
/// equal to `v.last_modified` at one-second precision.
///
/// Weak tags never match. A tag followed by anything but whitespace, or a
/// value that is neither a tag nor a valid date, gives false, so the caller
/// sends the whole representation, which is always a valid response.
pub fn if_range_allows_partial(if_range: Option<&str>, v: &Validators) -> bool {
    let Some(value) = non_empty(if_range) else {
        return true;
    };

    // RFC 9110 §13.1.5 distinguishes a tag from a date by its first characters.
    if value.starts_with('"') || value.starts_with("W/") {
        return match scan_entity_tag(value) {
            Some((tag, rest)) if trim_ows(rest).is_empty() => strong_match(tag, &v.etag),
            _ => false,
        };
    }

    match parse_http_date(value) {
        Some(date) => unix_seconds(date) == unix_seconds(v.last_modified),
        None => false,
    }
}

/// Builds a strong entity tag such as `"1a2b-400-17f0c1d2e3f4a5b6"` from an
/// identity (for example an inode or a hash of the storage key), the size in
/// bytes and the modification time in nanoseconds since the Unix epoch, all in
/// lowercase hex. Times before the epoch count as 0.
pub fn strong_etag(identity: u64, size: u64, modified: SystemTime) -> String {
    let nanos = modified
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    let mut tag = String::with_capacity(72);
    // `String` implements `fmt::Write` without ever returning an error.
    let _ = write!(tag, "\"{identity:x}-{size:x}-{nanos:x}\"");
    tag
}

/// Formats an IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`, dropping
/// the fraction of a second.
///
/// Times outside the years 1970 to 9999 are clamped to that span, because an
/// HTTP-date cannot express them and httpdate 1.0 panics on them.
pub fn format_http_date(t: SystemTime) -> String {
    // 9999-12-31T23:59:59Z, the last second httpdate 1.0 can format.
    let latest = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    let clamped = t.clamp(UNIX_EPOCH, latest);
    let mut date = String::with_capacity(29);
    // `String` implements `fmt::Write` without ever returning an error.
    let _ = write!(date, "{}", httpdate::HttpDate::from(clamped));
    date
}

/// Parses an HTTP-date in any of the three formats of RFC 9110 §5.6.7
/// (IMF-fixdate, RFC 850, asctime), ignoring surrounding whitespace.
/// Returns `None` for anything else, including a list of several dates.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(trim_ows(s)).ok()
}

/// Returns the value with surrounding whitespace removed, or `None` when the
/// header is absent or blank.
fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(trim_ows).filter(|value| !value.is_empty())
}

/// Whole seconds since the Unix epoch, with earlier times counted as 0.
fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Checks an If-Match or If-None-Match value (`*` or a comma-separated list of
/// entity tags) against `is_match`. `*` matches any current representation.
///
/// Empty elements are skipped. Scanning stops at the first malformed element,
/// so only the tags before it can match.
fn list_contains(list: &str, is_match: impl Fn(&str) -> bool) -> bool {
    let mut rest = list;
    loop {
        rest = trim_ows(rest);
        if rest.is_empty() {
            return false;
        }
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
            continue;
        }
        if rest.starts_with('*') {
            return true;
        }

        let Some((tag, after_tag)) = scan_entity_tag(rest) else {
            return false;
        };
        if is_match(tag) {
            return true;
        }
        rest = after_tag;
    }
}

/// Splits a leading entity tag (`"opaque"` or `W/"opaque"`) off `text`.
/// Returns the tag with its quotes and prefix, and the text after it, or
/// `None` when `text` does not start with a valid tag.
fn scan_entity_tag(text: &str) -> Option<(&str, &str)> {
    let opaque_start = if text.starts_with("W/") { 2 } else { 0 };
    let bytes = text.as_bytes();
    if bytes.get(opaque_start) != Some(&b'"') {
        return None;
    }

    for (index, &byte) in bytes.iter().enumerate().skip(opaque_start + 1) {
        match byte {
            b'"' => return Some(text.split_at(index + 1)),
            // etagc: "!", "#" to "~", and obs-text (0x80 and above).
            0x21 | 0x23..=0x7E | 0x80..=0xFF => {}
            _ => return None,
        }
    }
    None
}

/// Strong comparison: both tags are strong and their opaque parts are equal.
fn strong_match(a: &str, b: &str) -> bool {
    a == b && a.starts_with('"')
}

/// Weak comparison: the opaque parts are equal, whatever the `W/` prefixes.
fn weak_match(a: &str, b: &str) -> bool {
    without_weak_prefix(a) == without_weak_prefix(b)
}

fn without_weak_prefix(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETAG: &str = "\"abc-10-20\"";

    /// 2023-11-14T22:13:20.5Z: a modification time with half a second.
    fn modified() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000)
    }

    fn validators() -> Validators {
        Validators {
            etag: ETAG.to_string(),
            last_modified: modified(),
        }
    }

    /// HTTP-date `offset_seconds` away from the whole second of `modified()`.
    fn date(offset_seconds: i64) -> String {
        let base = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let shifted = if offset_seconds >= 0 {
            base + Duration::from_secs(offset_seconds as u64)
        } else {
            base - Duration::from_secs(offset_seconds.unsigned_abs())
        };
        format_http_date(shifted)
    }

    fn get(c: Conditionals) -> Precondition {
        evaluate_preconditions(&c, &validators(), true)
    }

    fn put(c: Conditionals) -> Precondition {
        evaluate_preconditions(&c, &validators(), false)
    }

    // Step 1: If-Match.

    #[test]
    fn no_conditionals_proceed() {
        assert_eq!(get(Conditionals::default()), Precondition::Proceed);
        assert_eq!(put(Conditionals::default()), Precondition::Proceed);
    }

    #[test]
    fn if_match_same_tag_proceeds() {
        let c = Conditionals {
            if_match: Some(ETAG),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::Proceed);
        assert_eq!(put(c), Precondition::Proceed);
    }

    #[test]
    fn if_match_mismatch_fails() {
        let c = Conditionals {
            if_match: Some("\"other\""),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::PreconditionFailed);
        assert_eq!(put(c), Precondition::PreconditionFailed);
    }

    #[test]
    fn if_match_star_proceeds() {
        let c = Conditionals {
            if_match: Some("*"),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::Proceed);
    }

    #[test]
    fn if_match_list_containing_tag_proceeds() {
        let c = Conditionals {
            if_match: Some("\"a\", \"b\" ,\"abc-10-20\""),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::Proceed);
    }

    #[test]
    fn if_match_weak_tag_never_matches() {
        let c = Conditionals {
            if_match: Some("W/\"abc-10-20\""),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::PreconditionFailed);
    }

    #[test]
    fn if_match_malformed_fails() {
        let c = Conditionals {
            if_match: Some("abc-10-20"),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::PreconditionFailed);
    }

    #[test]
    fn if_match_tag_before_garbage_still_matches() {
        let c = Conditionals {
            if_match: Some("\"abc-10-20\", garbage"),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::Proceed);
    }

    #[test]
    fn if_match_tag_after_garbage_is_not_read() {
        let c = Conditionals {
            if_match: Some("garbage, \"abc-10-20\""),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::PreconditionFailed);
    }

    #[test]
    fn if_match_mismatch_fails_before_if_none_match() {
        let c = Conditionals {
            if_match: Some("\"other\""),
            if_none_match: Some(ETAG),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::PreconditionFailed);
    }

    #[test]
    fn if_match_present_skips_if_unmodified_since() {
        let past = date(-60);
        let c = Conditionals {
            if_match: Some(ETAG),
            if_unmodified_since: Some(&past),
            ..Default::default()
        };

        assert_eq!(put(c), Precondition::Proceed);
    }

    // Step 2: If-Unmodified-Since.

    #[test]
    fn if_unmodified_since_before_change_fails() {
        let past = date(-1);
        let c = Conditionals {
            if_unmodified_since: Some(&past),
            ..Default::default()
        };

        assert_eq!(put(c), Precondition::PreconditionFailed);
        assert_eq!(get(c), Precondition::PreconditionFailed);
    }

    #[test]
    fn if_unmodified_since_same_second_proceeds() {
        // Last-Modified has half a second more than the header can express.
        let same = date(0);
        let c = Conditionals {
            if_unmodified_since: Some(&same),
            ..Default::default()
        };

        assert_eq!(put(c), Precondition::Proceed);
    }

    #[test]
    fn if_unmodified_since_later_proceeds() {
        let later = date(3600);
        let c = Conditionals {
            if_unmodified_since: Some(&later),
            ..Default::default()
        };

        assert_eq!(put(c), Precondition::Proceed);
    }

    #[test]
    fn if_unmodified_since_invalid_date_ignored() {
        let c = Conditionals {
            if_unmodified_since: Some("yesterday"),
            ..Default::default()
        };

        assert_eq!(put(c), Precondition::Proceed);
    }

    #[test]
    fn if_unmodified_since_failure_precedes_if_none_match() {
        let past = date(-1);
        let c = Conditionals {
            if_unmodified_since: Some(&past),
            if_none_match: Some(ETAG),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::PreconditionFailed);
    }

    // Step 3: If-None-Match.

    #[test]
    fn if_none_match_hit_returns_304() {
        let c = Conditionals {
            if_none_match: Some(ETAG),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::NotModified);
    }

    #[test]
    fn if_none_match_hit_fails_for_put() {
        let c = Conditionals {
            if_none_match: Some(ETAG),
            ..Default::default()
        };

        assert_eq!(put(c), Precondition::PreconditionFailed);
    }

    #[test]
    fn if_none_match_weak_tag_matches() {
        let c = Conditionals {
            if_none_match: Some("W/\"abc-10-20\""),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::NotModified);
    }

    #[test]
    fn if_none_match_star_matches() {
        let c = Conditionals {
            if_none_match: Some("*"),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::NotModified);
        assert_eq!(put(c), Precondition::PreconditionFailed);
    }

    #[test]
    fn if_none_match_list_containing_tag_matches() {
        let c = Conditionals {
            if_none_match: Some("W/\"x\",  \"y\",W/\"abc-10-20\""),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::NotModified);
    }

    #[test]
    fn if_none_match_other_tags_proceed() {
        let c = Conditionals {
            if_none_match: Some("\"x\", W/\"y\""),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::Proceed);
    }

    #[test]
    fn if_none_match_malformed_proceeds() {
        let c = Conditionals {
            if_none_match: Some("abc-10-20"),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::Proceed);
    }

    #[test]
    fn if_none_match_unterminated_tag_proceeds() {
        let c = Conditionals {
            if_none_match: Some("\"abc-10-20"),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::Proceed);
    }

    #[test]
    fn if_none_match_mismatch_skips_if_modified_since() {
        let later = date(3600);
        let c = Conditionals {
            if_none_match: Some("\"other\""),
            if_modified_since: Some(&later),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::Proceed);
    }

    // Step 4: If-Modified-Since.

    #[test]
    fn if_modified_since_unchanged_not_modified() {
        let later = date(3600);
        let c = Conditionals {
            if_modified_since: Some(&later),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::NotModified);
    }

    #[test]
    fn if_modified_since_same_second_not_modified() {
        // The file's extra half second is below HTTP-date precision.
        let same = date(0);
        let c = Conditionals {
            if_modified_since: Some(&same),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::NotModified);
    }

    #[test]
    fn if_modified_since_older_date_proceeds() {
        let earlier = date(-1);
        let c = Conditionals {
            if_modified_since: Some(&earlier),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::Proceed);
    }

    #[test]
    fn if_modified_since_ignored_for_other_methods() {
        let later = date(3600);
        let c = Conditionals {
            if_modified_since: Some(&later),
            ..Default::default()
        };

        assert_eq!(put(c), Precondition::Proceed);
    }

    #[test]
    fn if_modified_since_invalid_date_ignored() {
        let c = Conditionals {
            if_modified_since: Some("Sun, 32 Nov 2023 00:00:00 GMT"),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::Proceed);
    }

    #[test]
    fn if_modified_since_future_date_not_modified() {
        let c = Conditionals {
            if_modified_since: Some("Fri, 31 Dec 9999 23:59:59 GMT"),
            ..Default::default()
        };

        assert_eq!(get(c), Precondition::NotModified);
    }

    #[test]
    fn if_modified_since_older_formats_accepted() {
        // 2023-11-14T22:13:21Z in the RFC 850 and asctime formats.
        for later in [
            "Tuesday, 14-Nov-23 22:13:21 GMT",
            "Tue Nov 14 22:13:21 2023",
        ] {
            let c = Conditionals {
                if_modified_since: Some(later),
                ..Default::default()
            };

            assert_eq!(get(c), Precondition::NotModified, "{later}");
        }
    }

    #[test]
    fn blank_headers_count_as_absent() {
        let c = Conditionals {
            if_match: Some(""),
            if_none_match: Some("  "),
            if_unmodified_since: Some(""),
            if_modified_since: Some("\t"),
            if_range: Some(""),
        };

        assert_eq!(get(c), Precondition::Proceed);
        assert_eq!(put(c), Precondition::Proceed);
    }

    // Step 5: If-Range.

    #[test]
    fn if_range_absent_allows_partial() {
        assert!(if_range_allows_partial(None, &validators()));
        assert!(if_range_allows_partial(Some(" "), &validators()));
    }

    #[test]
    fn if_range_same_strong_tag_allows_partial() {
        assert!(if_range_allows_partial(Some(ETAG), &validators()));
        assert!(if_range_allows_partial(
            Some(" \"abc-10-20\" "),
            &validators()
        ));
    }

    #[test]
    fn if_range_other_tag_forbids_partial() {
        assert!(!if_range_allows_partial(Some("\"other\""), &validators()));
    }

    #[test]
    fn if_range_weak_tag_forbids_partial() {
        assert!(!if_range_allows_partial(
            Some("W/\"abc-10-20\""),
            &validators()
        ));
    }

    #[test]
    fn if_range_tag_list_forbids_partial() {
        assert!(!if_range_allows_partial(
            Some("\"abc-10-20\", \"x\""),
            &validators()
        ));
    }

    #[test]
    fn if_range_exact_date_allows_partial() {
        let same = date(0);

        assert!(if_range_allows_partial(Some(&same), &validators()));
    }

    #[test]
    fn if_range_other_date_forbids_partial() {
        let later = date(1);
        let earlier = date(-1);

        assert!(!if_range_allows_partial(Some(&later), &validators()));
        assert!(!if_range_allows_partial(Some(&earlier), &validators()));
    }

    #[test]
    fn if_range_garbage_forbids_partial() {
        assert!(!if_range_allows_partial(Some("tomorrow"), &validators()));
        assert!(!if_range_allows_partial(
            Some("\"unterminated"),
            &validators()
        ));
    }

    // Entity tags and dates.

    #[test]
    fn strong_etag_uses_hex_fields() {
        let tag = strong_etag(0x1a2b, 1024, modified());

        assert_eq!(tag, "\"1a2b-400-17979cfe53f76500\"");
    }

    #[test]
    fn strong_etag_changes_with_nanoseconds() {
        let later = modified() + Duration::from_nanos(1);

        assert_ne!(strong_etag(1, 1, modified()), strong_etag(1, 1, later));
    }

    #[test]
    fn strong_etag_is_valid_entity_tag() {
        let tag = strong_etag(u64::MAX, u64::MAX, modified());

        assert_eq!(scan_entity_tag(&tag), Some((tag.as_str(), "")));
        assert!(strong_match(&tag, &tag));
    }

    #[test]
    fn strong_etag_before_epoch_uses_zero() {
        let before = UNIX_EPOCH - Duration::from_secs(10);

        assert_eq!(strong_etag(1, 2, before), "\"1-2-0\"");
    }

    #[test]
    fn format_http_date_drops_fraction() {
        assert_eq!(
            format_http_date(modified()),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
    }

    #[test]
    fn format_http_date_clamps_out_of_range() {
        let before = UNIX_EPOCH - Duration::from_secs(1);
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);

        assert_eq!(format_http_date(before), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format_http_date(far), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn parse_http_date_round_trips_seconds() {
        let text = format_http_date(modified());

        let parsed = parse_http_date(&text).unwrap();

        assert_eq!(unix_seconds(parsed), 1_700_000_000);
    }

    #[test]
    fn parse_http_date_rejects_garbage() {
        assert_eq!(parse_http_date(""), None);
        assert_eq!(parse_http_date("2023-11-14T22:13:20Z"), None);
        assert_eq!(
            parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT, Tue, 14 Nov 2023 22:13:21 GMT"),
            None
        );
    }

    #[test]
    fn scan_entity_tag_splits_rest() {
        assert_eq!(
            scan_entity_tag("\"a\" , \"b\""),
            Some(("\"a\"", " , \"b\""))
        );
        assert_eq!(scan_entity_tag("W/\"a\""), Some(("W/\"a\"", "")));
        assert_eq!(scan_entity_tag("\"\""), Some(("\"\"", "")));
        assert_eq!(scan_entity_tag("\"a b\""), None);
        assert_eq!(scan_entity_tag("w/\"a\""), None);
        assert_eq!(scan_entity_tag("W/"), None);
    }
}
