//! Tags of audio files (artist, album, title, genre, year, duration), read with `lofty`.

use std::path::Path;

use lofty::prelude::*;
use wire::Tags;

/// Extensions worth asking `lofty` about.
const AUDIO: &[&str] = &[
    "mp3", "flac", "ogg", "oga", "opus", "m4a", "mp4", "aac", "wav", "aif", "aiff", "wv", "ape",
    "mpc", "spx",
];

/// True when the file name has an audio extension.
pub fn is_audio(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO.iter().any(|a| a.eq_ignore_ascii_case(e)))
}

/// Reads the tags of an audio file. A file that is not audio, or whose tags cannot be read,
/// has no tags: that is logged at debug level, never an error (the file is still shared).
pub fn read_tags(path: &Path) -> Tags {
    if !is_audio(path) {
        return Tags::default();
    }
    let file = match lofty::read_from_path(path) {
        Ok(f) => f,
        Err(e) => {
            log::debug!("no tags read from {}: {e}", path.display());
            return Tags::default();
        }
    };
    let duration = file.properties().duration().as_secs();
    let mut tags = Tags {
        duration_s: (duration > 0).then_some(duration.min(u32::MAX as u64) as u32),
        bitrate_kbps: file.properties().audio_bitrate().filter(|&b| b > 0),
        ..Tags::default()
    };
    if let Some(tag) = file.primary_tag().or_else(|| file.first_tag()) {
        let clean = |s: Option<std::borrow::Cow<'_, str>>| {
            s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        };
        tags.artist = clean(tag.artist());
        tags.album = clean(tag.album());
        tags.title = clean(tag.title());
        tags.genre = clean(tag.genre());
        tags.year = tag.date().map(|d| d.year).filter(|y| *y > 0);
    }
    tags
}
