//! The upload token: uploads and deletes must present `Authorization: Bearer <token>` when
//! `upload_token` is configured.
//!
//! The comparison takes the same time wherever the first differing byte is, so response
//! timing does not reveal how much of a guess was right.

use crate::api::ApiError;
use crate::http::trim_ows;
use crate::config::{Config, Secret};
use crate::server::request::Request;

/// Passes when no token is configured or the request carries the right one.
pub fn require_upload_token(config: &Config, request: &Request) -> Result<(), ApiError> {
    let Some(Secret(expected)) = &config.upload_token else {
        return Ok(());
    };
    let presented = request
        .header("authorization")
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| trim_ows(token));

    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized { presented: true }),
        None => Err(ApiError::Unauthorized { presented: false }),
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_match() {
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
    }

    #[test]
    fn different_strings_do_not_match() {
        assert!(!constant_time_eq(b"secret-token-123", b"secret-token-124"));
        assert!(!constant_time_eq(b"short", b"longer"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
