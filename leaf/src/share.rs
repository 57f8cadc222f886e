//! Shared folders: scanning, hashing, the cache that avoids re-hashing, and the registry of
//! shared files by content id.
//!
//! Scanning walks a folder without following symlinks, skips hidden entries and partial
//! downloads, and hashes each file once into its id and [`Manifest`]. The result is kept in a
//! cache file in the data directory keyed by (path, size, mtime), so sharing an unchanged
//! folder again reads metadata only.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use wire::{FileId, FileRecord, Manifest, ManifestBuilder, Tags};

use crate::tags;

/// The suffix of files being downloaded; they are never shared.
pub const PART_SUFFIX: &str = ".part";
/// The suffix of a partial download's record.
const PART_STATE_SUFFIX: &str = ".part.state";

/// Why a folder could not be shared.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The folder does not exist.
    #[error("cannot share {}: no such folder", .0.display())]
    NotFound(PathBuf),
    /// The path is not a folder.
    #[error("cannot share {}: not a folder (share the folder that holds it)", .0.display())]
    NotAFolder(PathBuf),
    /// The folder cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// A file this node shares: where it is, what it is, and its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFile {
    /// The file on this machine.
    pub local: PathBuf,
    /// Modification time (seconds, nanoseconds since the epoch) when it was hashed.
    pub mtime: (i64, u32),
    /// What is registered with super-peers.
    pub record: FileRecord,
    /// Chunk size of the manifest.
    pub chunk_size: u32,
    /// The manifest's chaining values, 32 bytes each.
    #[serde(with = "serde_bytes")]
    pub cvs: Vec<u8>,
}

impl SharedFile {
    /// The file's manifest.
    pub fn manifest(&self) -> Manifest {
        Manifest::from_flat(self.record.size, self.chunk_size, &self.cvs)
    }

    /// True if the file on disk still has the size and mtime it was hashed with.
    pub fn unchanged_on_disk(&self) -> bool {
        fs::metadata(&self.local).is_ok_and(|m| self.matches(&m))
    }

    /// True if `m` (of a file opened at this path, say) has the size and mtime it was hashed
    /// with.
    pub fn matches(&self, m: &fs::Metadata) -> bool {
        m.len() == self.record.size && mtime_of(m) == self.mtime
    }
}

/// How far a scan has got (sent to the user as a progress bar).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanProgress {
    /// The folder being scanned.
    pub folder: PathBuf,
    /// Files found.
    pub files_total: u64,
    /// Files done (hashed or found unchanged in the cache).
    pub files_done: u64,
    /// Bytes that need hashing.
    pub bytes_total: u64,
    /// Bytes hashed so far.
    pub bytes_done: u64,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// Every shareable file in the folder.
    pub files: Vec<SharedFile>,
    /// Files hashed this time.
    pub hashed: u64,
    /// Files taken unchanged from the cache.
    pub reused: u64,
    /// Files that could not be read, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// A file's modification time as (seconds, nanoseconds) since the epoch (negative seconds
/// before it).
pub(crate) fn mtime_of(meta: &fs::Metadata) -> (i64, u32) {
    match meta.modified().map(|t| t.duration_since(UNIX_EPOCH)) {
        Ok(Ok(d)) => (d.as_secs() as i64, d.subsec_nanos()),
        Ok(Err(e)) => (
            -(e.duration().as_secs() as i64),
            e.duration().subsec_nanos(),
        ),
        Err(_) => (0, 0),
    }
}

fn hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.'))
}

/// Scans `root`: lists its files, takes unchanged ones from `cached`, hashes the others.
/// Blocking: run it off the async executor.
pub fn scan_folder(
    root: &Path,
    cached: &dyn Fn(&Path) -> Option<Arc<SharedFile>>,
    progress: &mut dyn FnMut(&ScanProgress),
) -> Result<ScanOutcome, ShareError> {
    let root = match fs::canonicalize(root) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ShareError::NotFound(root.to_path_buf()))
        }
        Err(source) => {
            return Err(ShareError::Unreadable {
                path: root.to_path_buf(),
                source,
            })
        }
    };
    if !root.is_dir() {
        return Err(ShareError::NotAFolder(root));
    }
    fs::read_dir(&root).map_err(|source| ShareError::Unreadable {
        path: root.clone(),
        source,
    })?;
    let top = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    let mut outcome = ScanOutcome::default();
    let mut todo = Vec::new();
    let mut state = ScanProgress {
        folder: root.clone(),
        ..Default::default()
    };
    let walk = walkdir::WalkDir::new(&root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !hidden(e.file_name()));
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| root.clone());
                log::warn!("skipping {}: {e}", path.display());
                outcome.skipped.push((path, e.to_string()));
                continue;
            }
        };
        // Symlinks are not followed: a link could lead out of the shared folder.
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        // A download's partial file and its record, when a download folder is shared.
        if name.ends_with(PART_SUFFIX) || name.ends_with(PART_STATE_SUFFIX) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                outcome
                    .skipped
                    .push((entry.path().to_path_buf(), e.to_string()));
                continue;
            }
        };
        let rel = entry
            .path()
            .strip_prefix(&root)
            .expect("walk stays below its root");
        let mut path = top.clone();
        for part in rel.components() {
            path.push('/');
            path.push_str(&part.as_os_str().to_string_lossy());
        }
        let mtime = mtime_of(&meta);
        state.files_total += 1;
        match cached(entry.path()) {
            Some(hit) if hit.record.size == meta.len() && hit.mtime == mtime => {
                let mut file = (*hit).clone();
                file.record.path = path;
                // Audio hashed before tags carried the bitrate: read its tags again (not its
                // hash), so bitrate filters find it. (One whose bitrate cannot be read is read
                // again on each scan: a tag read, not a hash.)
                if file.record.tags.duration_s.is_some() && file.record.tags.bitrate_kbps.is_none()
                {
                    file.record.tags = crate::tags::read_tags(entry.path());
                }
                outcome.files.push(file);
                outcome.reused += 1;
                state.files_done += 1;
            }
            _ => {
                state.bytes_total += meta.len();
                todo.push((entry.into_path(), meta.len(), mtime, path));
            }
        }
    }
    progress(&state);

    // Files are hashed on every core at once (each file on one thread, results kept in the
    // folder's order); progress reaches the caller from this thread only.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(todo.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<io::Result<(FileId, Manifest, Tags)>>> =
        (0..todo.len()).map(|_| None).collect();
    enum Msg {
        Bytes(u64),
        Done(usize, io::Result<(FileId, Manifest, Tags)>),
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        for _ in 0..workers {
            let (tx, todo, next) = (tx.clone(), &todo, &next);
            scope.spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((local, size, _, _)) = todo.get(i) else {
                        return;
                    };
                    let hashed = hash_file(local, *size, &mut buf, &mut |n| {
                        let _ = tx.send(Msg::Bytes(n));
                    })
                    .map(|(id, manifest)| (id, manifest, tags::read_tags(local)));
                    if tx.send(Msg::Done(i, hashed)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for msg in rx {
            match msg {
                Msg::Bytes(n) => state.bytes_done += n,
                Msg::Done(i, r) => {
                    results[i] = Some(r);
                    state.files_done += 1;
                }
            }
            progress(&state);
        }
    });
    for ((local, size, mtime, path), result) in todo.into_iter().zip(results) {
        match result.expect("every file was hashed or failed") {
            Ok((id, manifest, tags)) => {
                outcome.files.push(SharedFile {
                    local,
                    mtime,
                    record: FileRecord {
                        id,
                        size,
                        path,
                        tags,
                    },
                    chunk_size: manifest.chunk_size,
                    cvs: manifest.cvs.as_flattened().to_vec(),
                });
                outcome.hashed += 1;
            }
            Err(e) => {
                log::warn!("skipping {}: {e}", local.display());
                outcome.skipped.push((local, e.to_string()));
            }
        }
    }
    Ok(outcome)
}

/// Hashes a file of the expected `size` into its id and manifest.
pub fn hash_file(
    path: &Path,
    size: u64,
    buf: &mut [u8],
    progress: &mut dyn FnMut(u64),
) -> io::Result<(FileId, Manifest)> {
    let mut file = fs::File::open(path)?;
    let mut builder = ManifestBuilder::new(size);
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            break;
        }
        if builder.bytes_seen() + n as u64 > size {
            return Err(io::Error::other("the file grew while it was read"));
        }
        builder.update(&buf[..n]);
        progress(n as u64);
    }
    builder
        .finish()
        .ok_or_else(|| io::Error::other("the file shrank while it was read"))
}

/// What a change to the shares means for the super-peers.
#[derive(Debug, Default, PartialEq)]
pub struct ShareDiff {
    /// Records to register.
    pub added: Vec<FileRecord>,
    /// Ids to withdraw (no shared file has them any more).
    pub removed: Vec<FileId>,
}

/// The registry of shared folders and files.
#[derive(Debug, Default)]
pub struct Shares {
    folders: Vec<PathBuf>,
    by_path: BTreeMap<PathBuf, Arc<SharedFile>>,
    by_id: HashMap<FileId, Vec<Arc<SharedFile>>>,
}

#[derive(Serialize, Deserialize)]
struct SavedShares {
    version: u32,
    folders: Vec<PathBuf>,
    files: Vec<SharedFile>,
}

impl Shares {
    /// The shared folders.
    pub fn folders(&self) -> &[PathBuf] {
        &self.folders
    }

    /// Every shared file.
    pub fn files(&self) -> impl Iterator<Item = &Arc<SharedFile>> {
        self.by_path.values()
    }

    /// Number of shared files.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// True when nothing is shared.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Total bytes shared.
    pub fn total_bytes(&self) -> u64 {
        self.by_path.values().map(|f| f.record.size).sum()
    }

    /// A shared file with this content id, still unchanged on disk.
    pub fn get(&self, id: &FileId) -> Option<Arc<SharedFile>> {
        self.by_id
            .get(id)?
            .iter()
            .find(|f| f.unchanged_on_disk())
            .cloned()
    }

    /// The cache entry for a local path.
    pub fn cached(&self, local: &Path) -> Option<Arc<SharedFile>> {
        self.by_path.get(local).cloned()
    }

    /// Replaces everything under `folder` with a fresh scan's files, remembering the folder.
    pub fn apply_scan(&mut self, folder: &Path, files: Vec<SharedFile>) -> ShareDiff {
        if !self.folders.iter().any(|f| f == folder) {
            self.folders.push(folder.to_path_buf());
        }
        let old: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(folder))
            .cloned()
            .collect();
        let mut diff = ShareDiff::default();
        let before: HashMap<PathBuf, Arc<SharedFile>> = old
            .into_iter()
            .map(|p| (p.clone(), self.remove_path(&p).expect("listed")))
            .collect();
        for file in files {
            if before
                .get(&file.local)
                .is_none_or(|b| b.record != file.record)
            {
                diff.added.push(file.record.clone());
            }
            self.insert(file);
        }
        // Every id that no shared file holds any more is withdrawn, whether its file was
        // deleted or changed in place.
        for gone in before.values() {
            let id = gone.record.id;
            if !self.by_id.contains_key(&id) && !diff.removed.contains(&id) {
                diff.removed.push(id);
            }
        }
        diff
    }

    /// Stops sharing `folder`: forgets it and its files. `None` if it was not shared.
    pub fn remove_folder(&mut self, folder: &Path) -> Option<ShareDiff> {
        let at = self.folders.iter().position(|f| f == folder)?;
        self.folders.remove(at);
        let paths: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(folder))
            .cloned()
            .collect();
        let mut diff = ShareDiff::default();
        for p in paths {
            let gone = self.remove_path(&p).expect("listed");
            if !self.by_id.contains_key(&gone.record.id) && !diff.removed.contains(&gone.record.id)
            {
                diff.removed.push(gone.record.id);
            }
        }
        Some(diff)
    }

    fn insert(&mut self, file: SharedFile) {
        let file = Arc::new(file);
        if let Some(old) = self.by_path.insert(file.local.clone(), file.clone()) {
            self.unlink_id(&old);
        }
        self.by_id.entry(file.record.id).or_default().push(file);
    }

    fn remove_path(&mut self, p: &Path) -> Option<Arc<SharedFile>> {
        let f = self.by_path.remove(p)?;
        self.unlink_id(&f);
        Some(f)
    }

    fn unlink_id(&mut self, f: &Arc<SharedFile>) {
        if let Some(list) = self.by_id.get_mut(&f.record.id) {
            list.retain(|x| !Arc::ptr_eq(x, f));
            if list.is_empty() {
                self.by_id.remove(&f.record.id);
            }
        }
    }

    /// Saves the registry (the hash cache) to `path`, checksummed and atomically, and the list
    /// of shared folders beside it (see [`Shares::load`]).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let saved = SavedShares {
            version: 1,
            folders: self.folders.clone(),
            files: self.by_path.values().map(|f| (**f).clone()).collect(),
        };
        transport::store::save(&folders_path(path), &self.folders)?;
        transport::store::save(path, &saved)
    }

    /// Loads the registry from `path`. A missing file is an empty registry. A damaged one is
    /// reported and rebuilt: the shared folders come from the small list saved beside it, and
    /// their files are hashed again when the node starts, never a crash and never a folder
    /// forgotten.
    pub fn load(path: &Path) -> Shares {
        let damaged = match transport::store::load::<SavedShares>(path) {
            Ok(None) => return Shares::default(),
            Ok(Some(saved)) if saved.version == 1 => {
                let mut shares = Shares {
                    folders: saved.folders,
                    ..Default::default()
                };
                for f in saved.files {
                    // One hashed under another chunk size (as by a build whose chunks were
                    // 128 KiB) is hashed again by the next scan: its manifest would be refused.
                    if f.cvs.len() % 32 == 0 && f.chunk_size == wire::chunk_size_for(f.record.size)
                    {
                        shares.insert(f);
                    }
                }
                return shares;
            }
            Ok(Some(saved)) => format!(
                "share cache {} has unknown version {}",
                path.display(),
                saved.version
            ),
            Err(e) => e.to_string(),
        };
        let folders: Vec<PathBuf> =
            transport::store::load_or_log(&folders_path(path), "no shared folders remembered")
                .unwrap_or_default();
        log::warn!(
            "{damaged}; rebuilding it: {} shared folders will be hashed again",
            folders.len()
        );
        Shares {
            folders,
            ..Default::default()
        }
    }
}

/// The list of shared folders, kept beside the share cache so that damage to the (large) cache
/// never loses which folders were shared.
fn folders_path(cache: &Path) -> PathBuf {
    cache.with_extension("folders.cbor")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(dir: &Path, shares: &Shares) -> ScanOutcome {
        scan_folder(dir, &|p| shares.cached(p), &mut |_| {}).unwrap()
    }

    #[test]
    fn scans_hashes_and_reuses_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let music = tmp.path().join("music");
        fs::create_dir_all(music.join("Artist/Album")).unwrap();
        fs::write(music.join("Artist/Album/01 - Song.mp3"), vec![1u8; 300_000]).unwrap();
        fs::write(music.join("notes.txt"), b"hello").unwrap();
        fs::write(music.join(".hidden"), b"secret").unwrap();
        fs::write(music.join("film.mkv.part"), b"partial").unwrap();
        fs::write(music.join("film.mkv.abcd1234.part.state"), b"record").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", music.join("passwd")).unwrap();

        let mut shares = Shares::default();
        let out = scan(&music, &shares);
        assert_eq!(out.hashed, 2);
        let mut paths: Vec<_> = out.files.iter().map(|f| f.record.path.clone()).collect();
        paths.sort();
        assert_eq!(
            paths,
            ["music/Artist/Album/01 - Song.mp3", "music/notes.txt"]
        );
        let song = out.files.iter().find(|f| f.record.size == 300_000).unwrap();
        assert_eq!(
            song.record.id,
            FileId::from(blake3::hash(&vec![1u8; 300_000]))
        );
        assert!(song.manifest().verify(&song.record.id).is_ok());

        let canon = fs::canonicalize(&music).unwrap();
        let diff = shares.apply_scan(&canon, out.files);
        assert_eq!(diff.added.len(), 2);
        let cache = tmp.path().join("shares.cbor");
        shares.save(&cache).unwrap();
        let shares = Shares::load(&cache);
        assert_eq!(shares.len(), 2);

        let again = scan(&music, &shares);
        assert_eq!((again.hashed, again.reused), (0, 2));
    }

    #[test]
    fn a_file_hashed_under_another_chunk_size_is_hashed_again() {
        let tmp = tempfile::tempdir().unwrap();
        let music = tmp.path().join("music");
        fs::create_dir_all(&music).unwrap();
        fs::write(music.join("long.flac"), vec![7u8; 3 << 20]).unwrap();
        let mut shares = Shares::default();
        let out = scan(&music, &shares);
        let canon = fs::canonicalize(&music).unwrap();
        shares.apply_scan(&canon, out.files);
        // As a build with 128 KiB chunks saved it.
        let old = shares.files().next().unwrap().as_ref().clone();
        assert_eq!(old.chunk_size, 256 << 10);
        let mut shares = Shares::default();
        shares.insert(SharedFile {
            chunk_size: 128 << 10,
            cvs: [old.cvs.clone(), old.cvs.clone()].concat(),
            ..old
        });
        let cache = tmp.path().join("shares.cbor");
        shares.save(&cache).unwrap();
        let shares = Shares::load(&cache);
        assert_eq!(shares.len(), 0, "a manifest others would refuse was kept");
        let again = scan(&music, &shares);
        assert_eq!((again.hashed, again.reused), (1, 0));
    }

    #[test]
    fn changed_and_deleted_files_are_noticed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(tmp.path()).unwrap();
        fs::write(dir.join("a.bin"), b"one").unwrap();
        fs::write(dir.join("b.bin"), b"two").unwrap();
        let mut shares = Shares::default();
        let out = scan(&dir, &shares);
        shares.apply_scan(&dir, out.files);
        let old_a = FileId::from(blake3::hash(b"one"));
        assert!(shares.get(&old_a).is_some());

        fs::write(dir.join("a.bin"), b"one, changed").unwrap();
        fs::remove_file(dir.join("b.bin")).unwrap();
        assert!(
            shares.get(&old_a).is_none(),
            "a changed file is not served under its old id"
        );
        let out = scan(&dir, &shares);
        assert_eq!(out.hashed, 1);
        let diff = shares.apply_scan(&dir, out.files);
        assert_eq!(diff.added.len(), 1);
        let mut removed = diff.removed.clone();
        removed.sort();
        let mut want = vec![old_a, FileId::from(blake3::hash(b"two"))];
        want.sort();
        assert_eq!(removed, want);
    }

    #[test]
    fn an_unshared_folder_withdraws_only_what_no_other_folder_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("same.bin"), b"same bytes").unwrap();
        fs::write(b.join("same copy.bin"), b"same bytes").unwrap();
        fs::write(a.join("only here.bin"), b"only in a").unwrap();
        let mut shares = Shares::default();
        for dir in [&a, &b] {
            let dir = fs::canonicalize(dir).unwrap();
            let out = scan(&dir, &shares);
            shares.apply_scan(&dir, out.files);
        }
        let diff = shares
            .remove_folder(&fs::canonicalize(&a).unwrap())
            .unwrap();
        assert_eq!(diff.removed, vec![FileId::from(blake3::hash(b"only in a"))]);
        assert_eq!(shares.len(), 1);
        assert_eq!(shares.folders().len(), 1);
        assert!(shares
            .remove_folder(&fs::canonicalize(&a).unwrap())
            .is_none());
    }

    #[test]
    fn a_damaged_cache_is_rebuilt_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("shares.cbor");
        fs::write(&cache, b"\xff\x00 not cbor").unwrap();
        assert!(Shares::load(&cache).is_empty());
        // A cache that decodes but was changed on disk: caught by its checksum, and the shared
        // folders survive it, to be hashed again.
        let music = tmp.path().join("music");
        fs::create_dir_all(&music).unwrap();
        fs::write(music.join("a.mp3"), b"abc").unwrap();
        let mut shares = Shares::default();
        let scanned = scan(&music, &shares);
        shares.apply_scan(&fs::canonicalize(&music).unwrap(), scanned.files);
        shares.save(&cache).unwrap();
        assert_eq!(Shares::load(&cache).files().count(), 1);
        let mut bytes = fs::read(&cache).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&cache, bytes).unwrap();
        let rebuilt = Shares::load(&cache);
        assert_eq!(rebuilt.files().count(), 0);
        assert_eq!(rebuilt.folders(), shares.folders());
    }

    #[test]
    fn missing_folder_and_file_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let err = scan_folder(&missing, &|_| None, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("nope") && err.to_string().contains("no such folder"));
        let file = tmp.path().join("f.txt");
        fs::write(&file, b"x").unwrap();
        let err = scan_folder(&file, &|_| None, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ShareError::NotAFolder(_)), "{err}");
    }
}
