//! Test data: large files, folders of real-size music files, leaves' libraries drawn from the
//! corpus with realistic duplication, and queries drawn from the corpus. Everything is
//! deterministic from a seed.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use canopy::corpus::{self, Track};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use wire::{FileId, FileRecord, Tags};

/// Fills `out` with bytes that depend only on `seed` and `offset` (BLAKE3's extendable output).
struct Noise(blake3::OutputReader);

impl Noise {
    fn new(seed: &str) -> Noise {
        Noise(
            blake3::Hasher::new_derive_key("canopy bench data")
                .update(seed.as_bytes())
                .finalize_xof(),
        )
    }

    fn fill(&mut self, out: &mut [u8]) {
        self.0.fill(out);
    }
}

/// Writes a file of `size` noise bytes; returns its content id.
pub fn noise_file(path: &Path, size: u64, seed: &str) -> anyhow::Result<FileId> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut noise = Noise::new(seed);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        noise.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(hasher.finalize().into())
}

/// MPEG-1 Layer III, 320 kbit/s, 44.1 kHz, joint stereo: a frame header and the frame's length.
const MP3_HEADER: [u8; 4] = [0xFF, 0xFB, 0xE0, 0x44];
const MP3_FRAME: usize = 1044;

/// Writes an MP3 as a tag reader sees one: an ID3v2 tag with the track's tags, then `size`
/// bytes of 320 kbit/s frames (valid headers, noise payload).
fn mp3_file(path: &Path, track: &Track, size: u64) -> anyhow::Result<()> {
    let tag = corpus::id3v2(&[
        ("TPE1", track.artist.clone()),
        ("TALB", track.album.clone()),
        ("TIT2", track.title.clone()),
        ("TCON", track.genre.clone()),
        (
            "TDRC",
            if track.year > 0 {
                track.year.to_string()
            } else {
                String::new()
            },
        ),
        ("TRCK", track.track.to_string()),
    ]);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&tag)?;
    let mut noise = Noise::new(&format!(
        "{}/{}/{}",
        track.release_id, track.disc, track.track
    ));
    let frames_per_buf = 1000;
    let mut buf = vec![0u8; MP3_FRAME * frames_per_buf];
    let mut left = size as usize;
    while left > 0 {
        let n = left.min(buf.len());
        noise.fill(&mut buf[..n]);
        for frame in buf[..n].chunks_mut(MP3_FRAME) {
            let h = frame.len().min(4);
            frame[..h].copy_from_slice(&MP3_HEADER[..h]);
        }
        w.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A folder of real-size files, about `total` bytes: albums of 320 kbit/s MP3s (1–30 MB each,
/// tagged from the corpus) for seven eighths, and two video-size files for the rest. Returns
/// the files written.
pub fn real_size_folder(root: &Path, tracks: &[Track], total: u64) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut taken = HashSet::new();
    let mut bytes = 0u64;
    let music_budget = total / 8 * 7;
    for t in tracks {
        if bytes >= music_budget {
            break;
        }
        let size = (t.duration_s as u64 * 40_000).clamp(1 << 20, 30 << 20);
        let size = size.min(music_budget - bytes).max(64 << 10);
        let path = root.join("Music").join(t.library_path());
        if !taken.insert(path.clone()) {
            continue; // two corpus tracks with the same path
        }
        fs::create_dir_all(path.parent().expect("library paths have folders"))
            .with_context(|| format!("creating the folder of {}", path.display()))?;
        mp3_file(&path, t, size)?;
        bytes += size;
        files.push(path);
    }
    let video = root.join("Video");
    fs::create_dir_all(&video).with_context(|| format!("creating {}", video.display()))?;
    let rest = total.saturating_sub(bytes);
    for (i, size) in [rest / 2, rest - rest / 2].into_iter().enumerate() {
        let path = video.join(format!("Concert film part {}.mkv", i + 1));
        noise_file(&path, size, &format!("video {i}"))?;
        files.push(path);
    }
    Ok(files)
}

/// A library of `n` small tagged MP3s in `Artist/Album/NN - Title.mp3` layout (tracks reused
/// under other folders when `n` exceeds the corpus; tracks whose path is taken are skipped).
pub fn small_library(root: &Path, tracks: &[Track], n: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::with_capacity(n);
    let mut taken = HashSet::new();
    let mut i = 0;
    while files.len() < n {
        let t = &tracks[i % tracks.len()];
        let copy = i / tracks.len();
        i += 1;
        let base = if copy == 0 {
            root.to_path_buf()
        } else {
            root.join(format!("copy {copy}"))
        };
        let path = base.join(t.library_path());
        if !taken.insert(path.clone()) {
            continue;
        }
        fs::create_dir_all(path.parent().expect("library paths have folders"))
            .with_context(|| format!("creating the folder of {}", path.display()))?;
        mp3_file(&path, t, 16 << 10)?;
        files.push(path);
    }
    Ok(files)
}

/// The record a leaf would register for a track it holds as a 192 kbit/s MP3 in its `Music`
/// folder. The id depends on the track only, so leaves holding the same track agree on it.
pub fn record(t: &Track) -> FileRecord {
    let key = format!("{}/{}/{}/{}", t.release_id, t.disc, t.track, t.title);
    let id = blake3::Hasher::new_derive_key("canopy bench record id")
        .update(key.as_bytes())
        .finalize();
    let path = Path::new("Music").join(t.library_path());
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    FileRecord {
        id: id.into(),
        size: (t.duration_s as u64 * 24_000).max(1 << 20),
        path: path.to_string_lossy().into_owned(),
        tags: Tags {
            artist: opt(&t.artist),
            album: opt(&t.album),
            title: opt(&t.title),
            genre: opt(&t.genre),
            year: u16::try_from(t.year).ok().filter(|y| *y > 0),
            duration_s: Some(t.duration_s).filter(|d| *d > 0),
            bitrate_kbps: None,
        },
    }
}

/// How tracks are spread over leaves.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    /// Leaves.
    pub leaves: usize,
    /// Every track is held by at least one leaf (whole albums dealt out at random first).
    pub cover_all: bool,
    /// Tracks each leaf adds on top, as whole albums picked by popularity.
    pub extra_per_leaf: usize,
}

/// Zipf exponent of album popularity: with a couple of thousand albums, the most popular is
/// on about two in five leaves and most are on one or two.
const ZIPF_S: f64 = 0.6;

/// Each leaf's library (indices into `tracks`): whole albums, popular albums on many leaves,
/// no track twice on one leaf.
pub fn spread(tracks: &[Track], spread: Spread, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut by_album: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut order = Vec::new();
    for (i, t) in tracks.iter().enumerate() {
        let key = t.release_id.as_str();
        by_album
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(i);
    }
    let mut albums: Vec<&Vec<usize>> = order.iter().map(|k| &by_album[k]).collect();
    albums.shuffle(rng); // the popularity rank
    let weights: Vec<f64> = (0..albums.len())
        .map(|r| 1.0 / ((r + 1) as f64).powf(ZIPF_S))
        .collect();
    let pick = WeightedIndex::new(&weights).expect("positive weights");

    let mut libs: Vec<Vec<usize>> = vec![Vec::new(); spread.leaves];
    let mut held: Vec<HashSet<usize>> = vec![HashSet::new(); spread.leaves];
    if spread.cover_all {
        for (a, album) in albums.iter().enumerate() {
            let leaf = rng.random_range(0..spread.leaves);
            libs[leaf].extend(album.iter().copied());
            held[leaf].insert(a);
        }
    }
    for leaf in 0..spread.leaves {
        let target = libs[leaf].len() + spread.extra_per_leaf;
        let mut misses = 0;
        while libs[leaf].len() < target && misses < 1000 {
            let a = pick.sample(rng);
            if !held[leaf].insert(a) {
                misses += 1;
                continue;
            }
            let room = target - libs[leaf].len();
            libs[leaf].extend(albums[a].iter().copied().take(room));
        }
    }
    libs
}

/// `n` query texts drawn from the corpus the way people type them: artist and title words
/// (two in five), title words, artist words, or album words; at most five words.
pub fn query_texts(tracks: &[Track], n: usize, rng: &mut StdRng) -> Vec<String> {
    let words = |s: &str, k: usize| s.split_whitespace().take(k).collect::<Vec<_>>().join(" ");
    (0..n)
        .map(|_| {
            let t = &tracks[rng.random_range(0..tracks.len())];
            match rng.random_range(0..10) {
                0..=3 => format!("{} {}", words(&t.artist, 2), words(&t.title, 3)),
                4..=6 => words(&t.title, 4),
                7..=8 => words(&t.artist, 3),
                _ => words(&t.album, 4),
            }
        })
        .collect()
}
