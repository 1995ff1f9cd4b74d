//! Content-Type selection for stored media: first from the id's file
//! extension, then from the first bytes of the content.
//!
//! This module owns the extension table and the magic-number checks. The
//! caller owns reading the prefix from storage, the order of the two lookups
//! and any type stored with the object.

/// Returns the Content-Type for the extension of `id`, compared without regard
/// to case, or `None` when the extension is missing or unknown. `id` may be a
/// bare name or a `/`-separated path or key, where only the last segment counts.
pub fn from_extension(id: &str) -> Option<&'static str> {
    let name = id.rsplit('/').next().unwrap_or(id);
    let (_, extension) = name.rsplit_once('.')?;
    // Every known extension fits in 4 bytes; lowercasing on the stack keeps this off the heap.
    let mut lower = [0u8; 4];
    let lower = lower.get_mut(..extension.len())?;
    lower.copy_from_slice(extension.as_bytes());
    lower.make_ascii_lowercase();

    let content_type = match std::str::from_utf8(lower).ok()? {
        // Video containers.
        "mp4" => "video/mp4",
        "m4v" => "video/x-m4v",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "ogv" => "video/ogg",
        "avi" => "video/x-msvideo",
        "mpg" | "mpeg" => "video/mpeg",
        "3gp" => "video/3gpp",
        // Streaming: HLS playlists and MPEG-TS segments, DASH manifests and
        // fragmented MP4 segments.
        "ts" => "video/MP2T",
        "m3u8" => "application/vnd.apple.mpegurl",
        "mpd" => "application/dash+xml",
        "m4s" => "video/iso.segment",
        // Audio.
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "mka" => "audio/x-matroska",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        // Subtitles.
        "vtt" => "text/vtt",
        "srt" => "application/x-subrip",
        // Posters, thumbnails and metadata.
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    };
    Some(content_type)
}

/// Returns the Content-Type that the first bytes of a file indicate, or
/// `application/octet-stream` when no check matches.
///
/// 64 bytes are enough for every check. The MPEG-TS check also requires a
/// 0x47 sync byte at each later 188-byte packet start inside the prefix, so a
/// prefix of 376 bytes or more makes that check much stricter.
pub fn sniff(prefix: &[u8]) -> &'static str {
    if let Some(content_type) = sniff_iso_bmff(prefix) {
        return content_type;
    }
    if prefix.starts_with(&EBML_MAGIC) {
        return sniff_matroska(prefix);
    }
    if prefix.starts_with(b"OggS") {
        return "video/ogg";
    }
    if prefix.starts_with(b"ID3") {
        return "audio/mpeg";
    }
    if let Some(content_type) = sniff_other_magic(prefix) {
        return content_type;
    }
    // The fixed signatures go first because a GIF would also pass this weak check.
    if is_mpeg_ts(prefix) {
        return "video/mp2t";
    }
    if is_mpeg_audio_frame(prefix) {
        return "audio/mpeg";
    }
    if is_adts_frame(prefix) {
        return "audio/aac";
    }
    "application/octet-stream"
}

const EBML_MAGIC: [u8; 4] = [0x1A, 0x45, 0xDF, 0xA3];
const MATROSKA_DOC_TYPE_ID: [u8; 2] = [0x42, 0x82];
const TS_PACKET_LEN: usize = 188;

/// Checks for an ISO base media file: an `ftyp` box (type at offset 4) whose
/// major brand distinguishes QuickTime and M4A audio from MP4, or an `styp` box
/// that opens a media segment.
fn sniff_iso_bmff(prefix: &[u8]) -> Option<&'static str> {
    let box_type = prefix.get(4..8)?;
    if box_type == b"styp" {
        return Some("video/iso.segment");
    }
    if box_type != b"ftyp" {
        return None;
    }

    let content_type = match prefix.get(8..12) {
        Some(b"qt  ") => "video/quicktime",
        Some(b"M4A ") | Some(b"M4B ") => "audio/mp4",
        _ => "video/mp4",
    };
    Some(content_type)
}

/// Distinguishes WebM from other Matroska files by the DocType element of the EBML
/// header. A header cut off before DocType counts as Matroska.
fn sniff_matroska(prefix: &[u8]) -> &'static str {
    match matroska_doc_type(prefix) {
        Some(doc_type) if trim_trailing_nul(doc_type) == b"webm" => "video/webm",
        _ => "video/x-matroska",
    }
}

/// Walks the elements of the EBML header that follows the magic number and
/// returns the DocType value, or `None` when it is not inside `prefix`.
fn matroska_doc_type(prefix: &[u8]) -> Option<&[u8]> {
    let mut position = EBML_MAGIC.len();
    let (_, header_size_len) = read_ebml_vint(prefix.get(position..)?)?;
    position += header_size_len;

    while position < prefix.len() {
        let id_len = ebml_vint_len(prefix[position])?;
        let id = prefix.get(position..position + id_len)?;
        position += id_len;

        let (size, size_len) = read_ebml_vint(prefix.get(position..)?)?;
        position += size_len;
        let end = position.checked_add(usize::try_from(size).ok()?)?;

        if id == MATROSKA_DOC_TYPE_ID {
            return prefix.get(position..end);
        }
        position = end;
    }
    None
}

/// Length in bytes (1 to 8) of an EBML variable-size integer, from the number
/// of leading zero bits in its first byte.
fn ebml_vint_len(first: u8) -> Option<usize> {
    match first.leading_zeros() {
        zeros @ 0..=7 => Some(zeros as usize + 1),
        _ => None,
    }
}

/// Decodes an EBML variable-size integer and returns its value and length.
fn read_ebml_vint(bytes: &[u8]) -> Option<(u64, usize)> {
    let len = ebml_vint_len(*bytes.first()?)?;
    let encoded = bytes.get(..len)?;

    let marker_mask = (0xFFu16 >> len) as u8;
    let value = encoded[1..]
        .iter()
        .fold(u64::from(encoded[0] & marker_mask), |value, &byte| {
            (value << 8) | u64::from(byte)
        });
    Some((value, len))
}

fn trim_trailing_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last + 1);
    &bytes[..end]
}

/// Checks fixed signatures of images, WAV, AVI and FLAC.
fn sniff_other_magic(prefix: &[u8]) -> Option<&'static str> {
    if prefix.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some("image/png");
    }
    if prefix.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some("image/jpeg");
    }
    if prefix.starts_with(b"GIF87a") || prefix.starts_with(b"GIF89a") {
        return Some("image/gif");
    }
    if prefix.starts_with(b"fLaC") {
        return Some("audio/flac");
    }
    if prefix.starts_with(b"RIFF") {
        return match prefix.get(8..12) {
            Some(b"WAVE") => Some("audio/wav"),
            Some(b"AVI ") => Some("video/x-msvideo"),
            _ => None,
        };
    }
    None
}

/// Checks for an MPEG transport stream: a 0x47 sync byte at offset 0 and at
/// every later packet start inside `prefix`, no transport error flag, and an
/// adaptation field control other than the reserved value 0.
///
/// NOTE: with a prefix shorter than 189 bytes only one packet header is seen,
/// so other data starting with 0x47 ("G") can pass.
fn is_mpeg_ts(prefix: &[u8]) -> bool {
    let [sync, flags, _, control, ..] = prefix else {
        return false;
    };
    let transport_error = flags & 0x80 != 0;
    let adaptation_field_control = (control >> 4) & 0b11;
    if *sync != 0x47 || transport_error || adaptation_field_control == 0 {
        return false;
    }

    prefix
        .iter()
        .step_by(TS_PACKET_LEN)
        .all(|&byte| byte == 0x47)
}

/// Checks for an MPEG-1/2/2.5 audio frame header (MP3 without an ID3 tag):
/// 11 sync bits and no reserved version, layer, bitrate or sample rate.
fn is_mpeg_audio_frame(prefix: &[u8]) -> bool {
    let [0xFF, second, third, ..] = *prefix else {
        return false;
    };
    let sync = second & 0xE0 == 0xE0;
    let version = (second >> 3) & 0b11;
    let layer = (second >> 1) & 0b11;
    let bitrate_index = third >> 4;
    let sample_rate_index = (third >> 2) & 0b11;

    sync && version != 0b01 && layer != 0 && bitrate_index != 0xF && sample_rate_index != 0b11
}

/// Checks for an ADTS header (raw AAC): 12 sync bits, layer 0 and a defined
/// sampling frequency index.
fn is_adts_frame(prefix: &[u8]) -> bool {
    let [0xFF, second, third, ..] = *prefix else {
        return false;
    };
    let sampling_frequency_index = (third >> 2) & 0x0F;

    second & 0xF6 == 0xF0 && sampling_frequency_index < 13
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_extension_table() {
        let rows = [
            ("movie.mp4", Some("video/mp4")),
            ("movie.m4v", Some("video/x-m4v")),
            ("movie.mov", Some("video/quicktime")),
            ("movie.webm", Some("video/webm")),
            ("movie.mkv", Some("video/x-matroska")),
            ("movie.ogv", Some("video/ogg")),
            ("sound.ogg", Some("audio/ogg")),
            ("segment0.ts", Some("video/MP2T")),
            ("index.m3u8", Some("application/vnd.apple.mpegurl")),
            ("chunk-1.m4s", Some("video/iso.segment")),
            ("song.mp3", Some("audio/mpeg")),
            ("song.m4a", Some("audio/mp4")),
            ("song.aac", Some("audio/aac")),
            ("song.wav", Some("audio/wav")),
            ("song.flac", Some("audio/flac")),
            ("manifest.mpd", Some("application/dash+xml")),
            ("captions.vtt", Some("text/vtt")),
            ("captions.srt", Some("application/x-subrip")),
            ("poster.jpg", Some("image/jpeg")),
            ("poster.jpeg", Some("image/jpeg")),
            ("poster.png", Some("image/png")),
            ("meta.json", Some("application/json")),
            ("notes.txt", Some("text/plain; charset=utf-8")),
        ];

        for (id, expected) in rows {
            assert_eq!(from_extension(id), expected, "{id}");
        }
    }

    #[test]
    fn from_extension_ignores_case() {
        assert_eq!(from_extension("MOVIE.MP4"), Some("video/mp4"));
        assert_eq!(
            from_extension("Index.M3u8"),
            Some("application/vnd.apple.mpegurl")
        );
    }

    #[test]
    fn from_extension_uses_last_path_segment() {
        assert_eq!(
            from_extension("shows/s01.e01/clip.webm"),
            Some("video/webm")
        );
        assert_eq!(from_extension("shows/s01.mp4/clip"), None);
    }

    #[test]
    fn from_extension_unknown_or_missing() {
        assert_eq!(from_extension("movie"), None);
        assert_eq!(from_extension("movie."), None);
        assert_eq!(from_extension("movie.exe"), None);
        assert_eq!(from_extension("movie.mp4mp4"), None);
        assert_eq!(from_extension("movie.\u{e9}mp"), None);
        assert_eq!(from_extension(""), None);
    }

    #[test]
    fn sniff_mp4_ftyp() {
        let prefix = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2";

        assert_eq!(sniff(prefix), "video/mp4");
    }

    #[test]
    fn sniff_quicktime_brand() {
        let prefix = b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ";

        assert_eq!(sniff(prefix), "video/quicktime");
    }

    #[test]
    fn sniff_m4a_brand() {
        let prefix = b"\x00\x00\x00\x1cftypM4A \x00\x00\x02\x00M4A isom";

        assert_eq!(sniff(prefix), "audio/mp4");
    }

    #[test]
    fn sniff_media_segment_styp() {
        let prefix = b"\x00\x00\x00\x18stypmsdh\x00\x00\x00\x00msdhmsix";

        assert_eq!(sniff(prefix), "video/iso.segment");
    }

    /// EBML header as mkvmerge writes it, with the given DocType.
    fn ebml_header(doc_type: &[u8]) -> Vec<u8> {
        let mut body = vec![
            0x42, 0x86, 0x81, 0x01, // EBMLVersion 1
            0x42, 0xF7, 0x81, 0x01, // EBMLReadVersion 1
            0x42, 0xF2, 0x81, 0x04, // EBMLMaxIDLength 4
            0x42, 0xF3, 0x81, 0x08, // EBMLMaxSizeLength 8
            0x42, 0x82, // DocType
        ];
        body.push(0x80 | doc_type.len() as u8);
        body.extend_from_slice(doc_type);
        body.extend_from_slice(&[0x42, 0x87, 0x81, 0x04]); // DocTypeVersion 4

        let mut header = EBML_MAGIC.to_vec();
        header.push(0x80 | body.len() as u8);
        header.extend_from_slice(&body);
        header.extend_from_slice(&[0x18, 0x53, 0x80, 0x67]); // Segment
        header
    }

    #[test]
    fn sniff_webm_doc_type() {
        assert_eq!(sniff(&ebml_header(b"webm")), "video/webm");
    }

    #[test]
    fn sniff_matroska_doc_type() {
        assert_eq!(sniff(&ebml_header(b"matroska")), "video/x-matroska");
    }

    #[test]
    fn sniff_webm_doc_type_with_nul_padding() {
        assert_eq!(sniff(&ebml_header(b"webm\0\0")), "video/webm");
    }

    #[test]
    fn sniff_webm_eight_byte_header_size() {
        // Some muxers write the header size as an 8-byte vint.
        let short = ebml_header(b"webm");
        let mut long = EBML_MAGIC.to_vec();
        long.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0, short[4] & 0x7F]);
        long.extend_from_slice(&short[5..]);

        assert_eq!(sniff(&long), "video/webm");
    }

    #[test]
    fn sniff_truncated_ebml_is_matroska() {
        let header = ebml_header(b"webm");

        assert_eq!(sniff(&header[..20]), "video/x-matroska");
        assert_eq!(sniff(&EBML_MAGIC), "video/x-matroska");
    }

    #[test]
    fn sniff_ogg() {
        assert_eq!(sniff(b"OggS\x00\x02\x00\x00"), "video/ogg");
    }

    fn ts_packets(count: usize) -> Vec<u8> {
        let mut stream = Vec::new();
        for _ in 0..count {
            let mut packet = vec![0xFF; TS_PACKET_LEN];
            packet[..4].copy_from_slice(&[0x47, 0x40, 0x00, 0x10]);
            stream.extend_from_slice(&packet);
        }
        stream
    }

    #[test]
    fn sniff_mpeg_ts_short_prefix() {
        assert_eq!(sniff(&ts_packets(1)[..64]), "video/mp2t");
    }

    #[test]
    fn sniff_mpeg_ts_checks_later_packets() {
        let mut stream = ts_packets(3);

        assert_eq!(sniff(&stream), "video/mp2t");

        stream[2 * TS_PACKET_LEN] = 0x00;
        assert_eq!(sniff(&stream), "application/octet-stream");
    }

    #[test]
    fn sniff_mpeg_ts_rejects_bad_header() {
        // Transport error flag set.
        assert_eq!(sniff(&[0x47, 0x80, 0x00, 0x10]), "application/octet-stream");
        // Reserved adaptation field control.
        assert_eq!(sniff(&[0x47, 0x40, 0x00, 0x00]), "application/octet-stream");
    }

    #[test]
    fn sniff_gif_is_not_mpeg_ts() {
        assert_eq!(sniff(b"GIF89a\x01\x00\x01\x00"), "image/gif");
    }

    #[test]
    fn sniff_id3_tag() {
        assert_eq!(sniff(b"ID3\x04\x00\x00\x00\x00\x00\x00"), "audio/mpeg");
    }

    #[test]
    fn sniff_mpeg_audio_frame() {
        // MPEG-1 Layer III, 128 kbit/s, 44.1 kHz.
        assert_eq!(sniff(&[0xFF, 0xFB, 0x90, 0x64]), "audio/mpeg");
    }

    #[test]
    fn sniff_mpeg_audio_rejects_reserved_fields() {
        // Reserved version, reserved layer (MPEG-2.5, so not ADTS), bad bitrate,
        // reserved sample rate.
        for header in [
            [0xFF, 0xEB, 0x90],
            [0xFF, 0xE1, 0x90],
            [0xFF, 0xFB, 0xF0],
            [0xFF, 0xFB, 0x9C],
        ] {
            assert_eq!(sniff(&header), "application/octet-stream", "{header:02x?}");
        }
    }

    #[test]
    fn sniff_adts_aac() {
        // MPEG-4, no CRC, AAC LC, 44.1 kHz.
        assert_eq!(sniff(&[0xFF, 0xF1, 0x50, 0x80]), "audio/aac");
    }

    #[test]
    fn sniff_other_signatures() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\x00\x00"), "image/png");
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), "image/jpeg");
        assert_eq!(sniff(b"fLaC\x00\x00\x00\x22"), "audio/flac");
        assert_eq!(sniff(b"RIFF\x24\x00\x00\x00WAVEfmt "), "audio/wav");
        assert_eq!(sniff(b"RIFF\x24\x00\x00\x00AVI LIST"), "video/x-msvideo");
        assert_eq!(
            sniff(b"RIFF\x24\x00\x00\x00WEBPVP8 "),
            "application/octet-stream"
        );
    }

    #[test]
    fn sniff_never_panics_on_short_or_odd_input() {
        let headers: [&[u8]; 4] = [&EBML_MAGIC, b"\x00\x00\x00\x00ftyp", &[0x47], &[0xFF]];
        for header in headers {
            for first in 0..=255u8 {
                for second in [0x00, 0x01, 0x42, 0x80, 0x82, 0xFF] {
                    let mut prefix = header.to_vec();
                    prefix.extend_from_slice(&[first, second, 0x42, 0x82, first, second]);
                    for len in 0..=prefix.len() {
                        let _ = sniff(&prefix[..len]);
                    }
                }
            }
        }
    }

    #[test]
    fn sniff_unknown_is_octet_stream() {
        assert_eq!(sniff(b""), "application/octet-stream");
        assert_eq!(sniff(b"\x00"), "application/octet-stream");
        assert_eq!(sniff(b"hello, world"), "application/octet-stream");
        assert_eq!(sniff(&[0u8; 64]), "application/octet-stream");
    }
}
