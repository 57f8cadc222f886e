//! A download's files in the output folder: the partial file (`NAME.ID8.part`), the record of
//! its verified chunks beside it (`.part.state`, a checked data file), finding an earlier
//! attempt to resume, and giving the finished file its final name without replacing anything.
//! Names from the network are made safe here before anything is created.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wire::{FileId, Manifest};

use crate::share::PART_SUFFIX;

/// The suffix of the record of done chunks beside a `.part` file.
pub const STATE_SUFFIX: &str = ".state";

/// Makes a file name from the network safe to create: no separators, no leading dots, no
/// control characters, not empty, at most 200 bytes.
pub fn safe_file_name(name: &str, id: &FileId) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    clean_name(last).unwrap_or_else(|| id.to_hex())
}

/// A folder path from the network (`/`-separated) as folders safe to create below a folder
/// the user chose: each part cleaned as [`safe_file_name`] cleans a name, and parts that clean
/// to nothing (`..`, `.`, empty, hidden dots only) dropped, so nothing lands outside it.
pub fn safe_folder_path(path: &str) -> PathBuf {
    path.split(['/', '\\']).filter_map(clean_name).collect()
}

/// `name` (one part of a path) without control or reordering characters, leading dots and
/// surrounding spaces, at most 200 bytes; `None` if nothing is left.
fn clean_name(last: &str) -> Option<String> {
    // No control characters, and none that reorder or hide text (`evil\u{202e}3pm.exe` would
    // show as `evilexe.mp3` in a file manager).
    let clean: String = last
        .chars()
        .filter(|&c| !wire::text::is_unsafe(c))
        .collect();
    // Dots and spaces together, until neither leads: `. ..` must not become `..`, nor
    // `. .bashrc` a hidden `.bashrc`.
    let clean = clean
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end();
    // At most 200 bytes, cut at a character boundary: room for the `.part` suffixes and a
    // ` (n)` within the usual 255-byte limit of a file name.
    let mut end = clean.len().min(200);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    let clean = &clean[..end];
    (!clean.is_empty()).then(|| clean.to_string())
}

/// `dir/name`, or `dir/stem (n).ext` for the first n that is free.
pub(crate) fn free_name(dir: &Path, name: &str, n: u32) -> PathBuf {
    if n == 0 {
        return dir.join(name);
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => dir.join(format!("{stem} ({n}).{ext}")),
        _ => dir.join(format!("{name} ({n})")),
    }
}

/// The record kept beside a `.part` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    version: u32,
    id: FileId,
    pub(crate) name: String,
    size: u64,
    chunk_size: u32,
    #[serde(with = "serde_bytes")]
    cvs: Vec<u8>,
    /// Done chunks, one bit each; only chunks already flushed to disk.
    #[serde(with = "serde_bytes")]
    pub(crate) done: Vec<u8>,
}

impl Record {
    /// The record of a download of `id` under `name`, with the `done` chunk bits.
    pub(crate) fn new(id: FileId, name: &str, manifest: &Manifest, done: Vec<u8>) -> Record {
        Record {
            version: 1,
            id,
            name: name.to_string(),
            size: manifest.size,
            chunk_size: manifest.chunk_size,
            cvs: manifest.cvs.as_flattened().to_vec(),
            done,
        }
    }

    pub(crate) fn manifest(&self) -> Manifest {
        Manifest::from_flat(self.size, self.chunk_size, &self.cvs)
    }

    pub(crate) fn save(&self, path: &Path) -> io::Result<()> {
        transport::store::save(path, self)
    }
}

/// Paths of a download's partial file and record.
pub(crate) fn part_paths(out_dir: &Path, name: &str, id: &FileId) -> (PathBuf, PathBuf) {
    let part = out_dir.join(format!("{name}.{}{PART_SUFFIX}", id.short()));
    let state = part.with_file_name(format!("{name}.{}{PART_SUFFIX}{STATE_SUFFIX}", id.short()));
    (part, state)
}

/// An earlier attempt at `id` in `out_dir`: its part file, record path and record. A damaged
/// record is reported and skipped; the download then finds the part file and verifies it.
pub(crate) fn find_earlier(out_dir: &Path, id: &FileId) -> Option<(PathBuf, PathBuf, Record)> {
    let suffix = format!(".{}{PART_SUFFIX}{STATE_SUFFIX}", id.short());
    for entry in fs::read_dir(out_dir).ok()?.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some(base) = name.strip_suffix(&suffix) else {
            continue;
        };
        let state = entry.path();
        let record: Record = match transport::store::load(&state) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                // The part file stays: the download verifies its chunks on disk instead.
                log::warn!("{e}; rebuilding it from the part file");
                continue;
            }
        };
        let (part, _) = part_paths(out_dir, base, id);
        let manifest = record.manifest();
        // The name must be the one the files carry, and a safe one: a record names the file
        // the download is given at the end, so a planted record must not name a path.
        let sane = record.version == 1
            && record.id == *id
            && record.name == base
            && safe_file_name(&record.name, id) == record.name
            && manifest.verify(id).is_ok()
            // Recorded under another chunk size (as by a build whose chunks were 128 KiB): the
            // part file's chunks are verified again against a manifest fetched now.
            && record.chunk_size == wire::chunk_size_for(record.size)
            && record.done.len() as u64 == manifest.chunk_count().div_ceil(8)
            && is_part_of_size(&part, record.size);
        if sane {
            return Some((part, state, record));
        }
        log::warn!(
            "ignoring the record {}: it does not fit {id}",
            state.display()
        );
    }
    None
}

/// Removes the partial file and record an attempt at `id` left in `out_dir`; returns how many
/// files were removed.
pub fn discard_partial(out_dir: &Path, id: &FileId) -> io::Result<usize> {
    let part = format!(".{}{PART_SUFFIX}", id.short());
    let state = format!("{part}{STATE_SUFFIX}");
    let mut removed = 0;
    for entry in fs::read_dir(out_dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(&part) || name.ends_with(&state) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Free bytes in the file system holding `dir`.
pub(crate) fn free_space(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The chunks of an earlier attempt that are on disk and verify against the manifest: every
/// chunk is read back and checked, recorded or not. The record says which chunks were synced
/// before it was written; bytes that sat on disk across a restart were verified by nobody in
/// this run, so they are checked here, and a recorded chunk that no longer verifies (the part
/// file was altered between runs) is fetched again instead of failing the download at the end.
/// Returns the chunks found, and how many recorded chunks failed.
pub(crate) fn recover_chunks(
    file: &File,
    manifest: &Manifest,
    recorded: &[u8],
) -> io::Result<(Vec<u64>, u64)> {
    let (mut found, mut damaged) = (Vec::new(), 0);
    let mut buf = Vec::new();
    for c in 0..manifest.chunk_count() {
        let r = manifest.chunk_range(c);
        buf.resize((r.end - r.start) as usize, 0);
        file.read_exact_at(&mut buf, r.start)?;
        if manifest.verify_chunk(c, &buf).is_ok() {
            found.push(c);
        } else if recorded
            .get((c / 8) as usize)
            .is_some_and(|b| b & (1 << (c % 8)) != 0)
        {
            damaged += 1;
        }
    }
    Ok((found, damaged))
}

/// Gives the verified `.part` file its final name without replacing any existing file (nor
/// following a link planted under that name).
///
/// The rename is atomic and refuses an existing name (`renameat2` with `RENAME_NOREPLACE`).
/// File systems that cannot do that (some FUSE and network mounts) get [`place_reserving`].
pub(crate) fn place(part: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    for n in 0..1000 {
        let target = free_name(dir, name, n);
        match renameat_with(CWD, part, CWD, &target, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(target),
            Err(Errno::EXIST) => continue,
            Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => {
                return place_reserving(part, dir, name)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(no_free_name(dir, name))
}

/// [`place`] where the file system cannot refuse a rename over an existing name: the name is
/// first taken by creating an empty file there (`O_EXCL`, which every file system honours, and
/// not through a link), then the part file is renamed over that placeholder.
pub(crate) fn place_reserving(part: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0..1000 {
        let target = free_name(dir, name, n);
        match transport::identity::create_private(&target) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        return match fs::rename(part, &target) {
            Ok(()) => Ok(target),
            Err(e) => {
                let _ = fs::remove_file(&target);
                Err(e)
            }
        };
    }
    Err(no_free_name(dir, name))
}

fn no_free_name(dir: &Path, name: &str) -> io::Error {
    io::Error::other(format!("no free name for {name} in {}", dir.display()))
}

/// Opens an earlier attempt's part file to go on with it: never through a link, and only a
/// regular file.
pub(crate) fn open_part(part: &Path) -> io::Result<File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(part)
        .map_err(not_a_file)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.nlink() != 1 {
        // A hard link planted under the part file's name would have the download written
        // into whatever file it shares its data with.
        return Err(io::Error::other(
            "it has other names (hard links), so it is not a download's own file; remove it",
        ));
    }
    Ok(file)
}

/// Creates a new part file of `size` bytes. Something already there is removed first if it is
/// a regular file (a part file whose record is gone and whose size is wrong); anything else (a
/// link, a folder) is an error, and the file is created afresh (`O_EXCL`), never through a
/// link planted meanwhile.
pub(crate) fn create_part(part: &Path, size: u64) -> io::Result<File> {
    match fs::symlink_metadata(part) {
        Ok(m) if m.is_file() => fs::remove_file(part)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something other than a part file is there; remove it",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(part)
        .map_err(not_a_file)?;
    file.set_len(size)?;
    Ok(file)
}

/// True if `part` is a regular file of `size` bytes with no other name (not a link of either
/// kind).
pub(crate) fn is_part_of_size(part: &Path, size: u64) -> bool {
    fs::symlink_metadata(part).is_ok_and(|m| m.is_file() && m.nlink() == 1 && m.len() == size)
}

/// The error for a part file that is not one; the caller names the path.
fn not_a_file(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        return io::Error::new(
            io::ErrorKind::AlreadyExists,
            "it is a symbolic link, which a download never writes through; remove it",
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn folder_paths_from_the_network_stay_below_the_chosen_folder() {
        let p = |s: &str| safe_folder_path(s);
        assert_eq!(p("music/../../etc"), PathBuf::from("music/etc"));
        assert_eq!(p("/abs/olute"), PathBuf::from("abs/olute"));
        assert_eq!(p("a/./b\\c//d"), PathBuf::from("a/b/c/d"));
        assert_eq!(p(".hidden/ x "), PathBuf::from("hidden/x"));
        assert_eq!(
            p("evil\u{202e}3pm/\u{7}bell"),
            PathBuf::from("evil3pm/bell")
        );
        assert_eq!(p("../.."), PathBuf::new());
        assert_eq!(p("share/. ../. ../x"), PathBuf::from("share/x"));
        assert_eq!(p(" . .ssh/. .."), PathBuf::from("ssh"));
        for part in p("x/../../y/..../z").components() {
            assert!(matches!(part, std::path::Component::Normal(_)), "{part:?}");
        }
    }

    #[test]
    fn file_names_from_the_network_are_made_safe() {
        let id = FileId([0xab; 32]);
        assert_eq!(safe_file_name("../../etc/passwd", &id), "passwd");
        assert_eq!(safe_file_name("a\\b\\..\\c.mp3", &id), "c.mp3");
        assert_eq!(safe_file_name("..", &id), id.to_hex());
        assert_eq!(safe_file_name(". ..", &id), id.to_hex());
        assert_eq!(safe_file_name(". .bash_profile", &id), "bash_profile");
        assert_eq!(safe_file_name(" .. . x.mp3", &id), "x.mp3");
        assert_eq!(safe_file_name(".bashrc", &id), "bashrc");
        assert_eq!(safe_file_name("ok\u{7}name.txt", &id), "okname.txt");
        assert_eq!(safe_file_name("evil\u{202e}3pm.exe", &id), "evil3pm.exe");
        assert_eq!(
            free_name(Path::new("/d"), "x.mp3", 2),
            PathBuf::from("/d/x (2).mp3")
        );
        let long = "é".repeat(150);
        let cut = safe_file_name(&long, &id);
        assert!(
            cut.len() <= 200 && cut.chars().all(|c| c == 'é'),
            "{}",
            cut.len()
        );
    }

    #[test]
    fn recovery_verifies_every_chunk_recorded_or_not() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut b = wire::ManifestBuilder::with_chunk_size(5000, 1024);
        b.update(&data);
        let (_, m) = b.finish().unwrap();
        let path = tmp.path().join("f.part");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(5000).unwrap();
        // Chunk 1 recorded (and written); chunk 3 written after the last record; chunk 4 torn;
        // chunk 0 recorded but altered on disk since.
        f.write_all_at(&data[1024..2048], 1024).unwrap();
        f.write_all_at(&data[3072..4096], 3072).unwrap();
        f.write_all_at(&data[4096..4500], 4096).unwrap();
        f.write_all_at(&[1; 1024], 0).unwrap();
        let (found, damaged) = recover_chunks(&f, &m, &[0b0000_0011]).unwrap();
        assert_eq!(found, vec![1, 3]);
        assert_eq!(damaged, 1, "chunk 0 was recorded and fails");
    }

    #[test]
    fn a_record_under_another_chunk_size_is_not_resumed_from() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let size = data.len() as u64;
        for (chunk_size, resumed) in [(128 << 10, false), (wire::chunk_size_for(size), true)] {
            let mut b = wire::ManifestBuilder::with_chunk_size(size, chunk_size);
            b.update(&data);
            let (id, m) = b.finish().unwrap();
            let (part, state) = part_paths(tmp.path(), "song.flac", &id);
            fs::write(&part, &data).unwrap();
            let done = vec![0xff; m.chunk_count().div_ceil(8) as usize];
            Record::new(id, "song.flac", &m, done).save(&state).unwrap();
            // A record of 128 KiB chunks (as a build with them wrote) is passed over: the
            // part file is verified against a manifest fetched now instead.
            assert_eq!(
                find_earlier(tmp.path(), &id).is_some(),
                resumed,
                "chunks of {chunk_size}"
            );
            fs::remove_file(&state).unwrap();
            fs::remove_file(&part).unwrap();
        }
    }

    /// The manifest of `data` in the chunks a download would use.
    fn manifest_of(data: &[u8]) -> (FileId, Manifest) {
        let size = data.len() as u64;
        let mut b = wire::ManifestBuilder::with_chunk_size(size, wire::chunk_size_for(size));
        b.update(data);
        b.finish().unwrap()
    }

    #[test]
    fn a_planted_link_is_never_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim.txt");
        fs::write(&victim, b"the user's own file").unwrap();
        let id = FileId([7; 32]);
        let (part, _) = part_paths(tmp.path(), "song.mp3", &id);
        std::os::unix::fs::symlink(&victim, &part).unwrap();

        let e = create_part(&part, 100).unwrap_err();
        assert!(e.to_string().contains("remove it"), "{e}");
        let e = open_part(&part).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!is_part_of_size(&part, 19), "a link is no part file");
        assert_eq!(fs::read(&victim).unwrap(), b"the user's own file");

        // A hard link to the user's file is no part file either.
        fs::remove_file(&part).unwrap();
        fs::hard_link(&victim, &part).unwrap();
        assert!(!is_part_of_size(&part, 19));
        let e = open_part(&part).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"the user's own file");

        // A stale part file of the wrong size is replaced by a fresh one.
        fs::remove_file(&part).unwrap();
        fs::write(&part, b"stale").unwrap();
        let f = create_part(&part, 100).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 100);
        assert!(is_part_of_size(&part, 100));
    }

    #[test]
    fn placing_never_replaces_a_file_or_follows_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let victim = tmp.path().join("victim.txt");
        fs::write(&victim, b"mine").unwrap();
        fs::write(dir.join("a.mp3"), b"existing").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("a (1).mp3")).unwrap();
        std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("a (2).mp3")).unwrap();
        for (n, place_fn) in [place, place_reserving].into_iter().enumerate() {
            let part = dir.join(format!("p{n}.part"));
            fs::write(&part, format!("new {n}")).unwrap();
            let placed = place_fn(&part, dir, "a.mp3").unwrap();
            assert_eq!(placed, dir.join(format!("a ({}).mp3", 3 + n)));
            assert_eq!(fs::read(&placed).unwrap(), format!("new {n}").as_bytes());
            assert!(!part.exists());
        }
        assert_eq!(fs::read(dir.join("a.mp3")).unwrap(), b"existing");
        assert_eq!(fs::read(&victim).unwrap(), b"mine");
        assert!(!dir.join("nowhere").exists());
    }

    #[test]
    fn a_planted_record_cannot_name_a_path() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let (id, m) = manifest_of(&data);
        let none = vec![0u8; 1];
        // A record that fits, for the control.
        let (part, state) = part_paths(tmp.path(), "ok.bin", &id);
        fs::write(&part, &data).unwrap();
        Record::new(id, "ok.bin", &m, none.clone())
            .save(&state)
            .unwrap();
        assert!(find_earlier(tmp.path(), &id).is_some());
        for bad in [
            "../../escaped.bin",
            "/tmp/escaped.bin",
            ".hidden",
            "other.bin",
        ] {
            Record::new(id, bad, &m, none.clone()).save(&state).unwrap();
            assert!(
                find_earlier(tmp.path(), &id).is_none(),
                "a record naming {bad} was trusted"
            );
        }
    }
}
