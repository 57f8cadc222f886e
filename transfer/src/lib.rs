//! `transfer`: the leaf-to-leaf transfer protocol as sans-IO sessions: every rule of it, with
//! no socket, file, task or clock (it depends on `wire` alone). `leaf::download` and `leaf::upload` drive these sessions: they only move
//! bytes, verify and write chunks off the executor, and consult the node's shares and slots.
//!
//! # Layout
//!
//! - [`Scheduler`]: which chunk of a download is where and which source holds what (one per
//!   download, shared by its source sessions).
//! - [`SourceSession`]: the downloader's side of one connection to a source: what to request,
//!   what to accept, what is hostile, the endgame, queue places, bitfields.
//! - [`UploadSession`]: the uploader's side of one connection to a downloader: Hello, the
//!   requests waiting and their cancels, what it has been told and has, idleness.
//! - [`BrowseSession`]: one browse of a leaf's shares, page by page, with what a page must be.
//! - [`manifest`]: the checks a manifest from a source must pass, and the vote among sources.
//! - [`peers`]: a download's bounded peer set: which useless source to let go for one waiting
//!   to be tried.
//! - [`view`]: super-seeding: [`ShownTo`], what one downloader was shown, asked for and has,
//!   and [`Spread`], what to show each next.
//!
//! Each module writes its invariants beside its code; each session has a fuzz target
//! (`fuzz/fuzz_targets/source_session.rs`, `upload_session.rs`) that feeds it arbitrary
//! message sequences and checks them.

pub mod browse;
pub mod manifest;
pub mod peers;
pub mod schedule;
pub mod source;
pub mod upload;
pub mod view;

pub use browse::{BrowseEnd, BrowseSession};
pub use schedule::Scheduler;
pub use source::{Checked, SourceEnd, SourceEvent, SourceOptions, SourceSession};
pub use upload::{UploadEnd, UploadEvent, UploadSession};
pub use view::{ShownTo, Spread};
