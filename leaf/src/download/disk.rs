//! The download's disk side, off the actor: each chunk verified against the manifest and
//! written to the part file in pieces while the download's writes are open, write-back started
//! as chunks land, and the record of done chunks saved only after the part file is flushed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use smol::channel::Sender;
use transfer::Checked;
use wire::Manifest;

use super::run::{Input, Setup};
use super::source::Room;
use crate::part::Record;

/// Closes a download's writes when dropped: nothing writes to its part file after that (a
/// piece being written finishes first).
pub(super) struct WriteGate(pub(super) Arc<std::sync::Mutex<bool>>);

impl Drop for WriteGate {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }
}

/// Sends [`Input::ChecksDone`] when dropped: a job of checks ended (every answer it had was
/// sent before, on the same channel).
pub(super) struct JobDone(pub(super) Sender<Input>);

impl Drop for JobDone {
    fn drop(&mut self) {
        let _ = self.0.try_send(Input::ChecksDone);
    }
}

/// A chunk waiting to be verified and written.
pub(super) struct ToCheck {
    pub(super) source: usize,
    pub(super) request: u32,
    pub(super) chunk: u64,
    pub(super) data: Vec<u8>,
    /// Its room in memory, given back once it is dealt with.
    pub(super) room: Option<Room>,
}

/// Chunks verified and written at once, on the blocking pool. Writers of one file contend for
/// its lock in the kernel (`rwsem_spin_on_owner` took 17 % of a download's CPU in `perf` with
/// one writer per chunk), and one keeps up with the fastest single source measured.
pub(super) const CHECKERS: usize = 1;
/// A chunk is written in pieces this large (curl's write size). With whole 256 KiB writes,
/// `leaf get` of 1 GiB over loopback used 3.3 s of CPU against 2.2 s with 16 KiB pieces
/// (median of 5, side by side, `bench/scripts/ab-get.sh` on this project's virtual machines);
/// 64 KiB pieces came between, 4 KiB ones did worse than either. In `perf`, the copy into the
/// page cache dominated the slow runs (larger writes likely get larger, colder folios).
const WRITE_PIECE: usize = 16 << 10;

/// Verifies one chunk against the manifest and writes it to the part file (while the
/// download's writes are open); the answer is the input the actor gets.
pub(super) fn check_chunk(
    c: ToCheck,
    file: &File,
    manifest: &Manifest,
    writes: &std::sync::Mutex<bool>,
) -> Input {
    let ToCheck {
        source: n,
        request,
        chunk,
        data,
        room,
    } = c;
    // The chunk's room in memory is given back once it is dealt with.
    let _room = room;
    let len = data.len() as u64;
    match manifest.verify_chunk(chunk, &data) {
        Ok(()) => {
            let offset = manifest.chunk_range(chunk).start;
            let written = data
                .chunks(WRITE_PIECE)
                .zip((offset..).step_by(WRITE_PIECE))
                .try_for_each(|(piece, at)| {
                    let open = writes.lock().unwrap_or_else(|p| p.into_inner());
                    if !*open {
                        return Err(io::Error::other("the download stopped"));
                    }
                    file.write_all_at(piece, at)
                });
            Input::Checked(n, request, len, written.map(|()| Checked::Kept))
        }
        // The last chunk's bytes may prove the manifest wrong instead.
        Err(e) => match (chunk + 1 == manifest.chunk_count())
            .then(|| manifest.size_proven_by_last_chunk(&data))
            .flatten()
        {
            Some(size) => Input::SizeProven(size),
            None => Input::Checked(n, request, len, Ok(Checked::Bad(e.to_string()))),
        },
    }
}

/// Asks the kernel to start writing bytes `from..to` of `file` to disk now, without waiting
/// for it (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`): the disk writes while the download
/// goes on, so the flushes, the last one included, find little left to write. (Left to
/// itself, the kernel starts only after seconds or once much is dirty, and a fast download's
/// last flush then waited for hundreds of megabytes.) Best effort: a failure here is found
/// by the flush.
pub(super) fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    if to <= from {
        return;
    }
    // SAFETY: the descriptor is open for as long as `file` lives, and the call only reads its
    // integer arguments.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// The work that brings the record up to date, to run off the executor: it flushes the part
/// file, then saves the record of the chunks done before the flush, and returns it; the save
/// happens only while the download's `writes` are open (a flush still running when a
/// download is cancelled or has ended saves nothing). `None` when the record is up to date
/// already.
pub(super) fn flush_record(
    s: &Setup<'_>,
    record: &Record,
    writes: &Arc<std::sync::Mutex<bool>>,
) -> Option<impl FnOnce() -> io::Result<Record> + Send + 'static> {
    let bits = s.sched.done().as_bytes().to_vec();
    if bits == record.done {
        return None;
    }
    let file = s.file.clone();
    let mut next = record.clone();
    next.done = bits;
    let path = s.state_path.to_path_buf();
    let writes = writes.clone();
    Some(move || -> io::Result<Record> {
        file.sync_data()?;
        let open = writes.lock().unwrap_or_else(|p| p.into_inner());
        if !*open {
            return Err(io::Error::other("the download stopped"));
        }
        next.save(&path)?;
        Ok(next)
    })
}
