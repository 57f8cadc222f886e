//! Where a node's tasks run: one thread that runs them and waits on the sockets itself.
//!
//! `smol::spawn` puts tasks on a global executor with a thread of its own, while the thread in
//! `smol::block_on` (or async-io's reactor thread) waits on the sockets. So every socket that
//! became ready wakes one thread to wake another: two context switches per readable socket.
//! A leaf in a swarm of a hundred gets hundreds of such events a second, and a hundred leaves
//! on two cores spent more time switching than moving bytes (bench case 6).
//!
//! [`block_on`] runs a node's main future on the calling thread together with every task
//! [`spawn`]ed while it runs; when all are waiting, the same thread waits on the sockets. This
//! is the single-threaded event loop that aria2c and most BitTorrent clients run. Blocking
//! work still goes to `smol::unblock`.
//!
//! Before (and without) [`block_on`], as in tests, [`spawn`] is `smol::spawn`. The switch is
//! one flag for the whole process, so [`block_on`] is for a binary's `main` (its test runs in
//! a test binary of its own, `tests/rt.rs`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use smol::{Executor, Task};

/// The executor [`block_on`] runs.
static EXECUTOR: Executor<'static> = Executor::new();

/// Whether [`block_on`] runs [`EXECUTOR`].
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Spawns `future` on the node's thread when [`block_on`] runs one, else on smol's global
/// executor.
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    if RUNNING.load(Ordering::Acquire) {
        EXECUTOR.spawn(future)
    } else {
        smol::spawn(future)
    }
}

/// Runs `future` to its end on this thread, with every task [`spawn`]ed meanwhile. For a
/// binary's `main`; not to be called from a task.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    /// Says [`block_on`] no longer runs, however it ends (a panic included).
    struct Stopped;
    impl Drop for Stopped {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::Release);
        }
    }
    RUNNING.store(true, Ordering::Release);
    let _stopped = Stopped;
    smol::block_on(EXECUTOR.run(future))
}
