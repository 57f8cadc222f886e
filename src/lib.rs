//! `canopy`: the workspace's root package. It holds the integration tests (`tests/`), the
//! runnable examples (`examples/`), and this test kit, which they share.
//!
//! # Layout
//! - [`corpus`]: real music metadata (the freemusi.cc track list, CC BY-SA 4.0) turned into
//!   shares on disk, with contents that are deterministic per track, so leaves that "have" the
//!   same track hold byte-identical files.
//! - [`net`]: starting super-peers and leaves in-process on 127.0.0.1 with ephemeral ports,
//!   waiting for conditions, and bounding a test in time.
//!
//! # Example
//! ```no_run
//! use canopy::{corpus, net};
//! let tracks = corpus::load_tracks(100).unwrap();
//! let dir = tempfile::tempdir().unwrap();
//! corpus::write_share(&dir.path().join("music"), &tracks).unwrap();
//! net::run_bounded(std::time::Duration::from_secs(30), async {
//!     let sp = net::superpeer(&[]).await;
//!     let leaf = net::leaf(dir.path(), "alice", &[sp.listen_addr()]).await;
//!     leaf.share(&dir.path().join("music"), |_| {}).await.unwrap();
//! });
//! ```

pub mod corpus {
    //! The corpus of real track metadata, and shares made from it.

    use std::fs;
    use std::io;
    use std::path::{Path, PathBuf};

    /// The project's full corpus, beside the repository.
    pub const SHARED_CORPUS: &str = "../shared/corpus/freemusic-tracks.tsv";
    /// The sample embedded in the repository (every tenth track), for a fresh clone.
    pub const EMBEDDED_SAMPLE: &str = include_str!("../examples/data/freemusic-sample.tsv");

    /// One track of the corpus.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Track {
        /// Performing artist.
        pub artist: String,
        /// Album.
        pub album: String,
        /// Disc number.
        pub disc: u32,
        /// Track number.
        pub track: u32,
        /// Title.
        pub title: String,
        /// Duration in seconds.
        pub duration_s: u32,
        /// Year.
        pub year: u32,
        /// Genre.
        pub genre: String,
        /// The release's id in the source database.
        pub release_id: String,
    }

    /// Where the full corpus is: `$CANOPY_CORPUS`, else `../shared/corpus/` beside the
    /// repository, if present.
    pub fn full_corpus_path() -> Option<PathBuf> {
        if let Ok(p) = std::env::var("CANOPY_CORPUS") {
            return Some(PathBuf::from(p));
        }
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHARED_CORPUS);
        p.exists().then_some(p)
    }

    /// Parses the corpus's TSV text (header first).
    pub fn parse(text: &str) -> Vec<Track> {
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                if f.len() < 11 {
                    return None;
                }
                Some(Track {
                    artist: f[0].trim().to_string(),
                    album: f[1].trim().to_string(),
                    disc: f[3].parse().unwrap_or(1),
                    track: f[4].parse().unwrap_or(0),
                    title: f[5].trim().to_string(),
                    duration_s: f[6].parse().unwrap_or(0),
                    year: f[7].parse().unwrap_or(0),
                    genre: f[8].trim().to_string(),
                    release_id: f[10].trim().to_string(),
                })
            })
            .filter(|t| !t.artist.is_empty() && !t.title.is_empty())
            .collect()
    }

    /// The first `limit` tracks of the full corpus, or of the embedded sample when the full one
    /// is not beside the repository.
    pub fn load_tracks(limit: usize) -> io::Result<Vec<Track>> {
        let mut tracks = match full_corpus_path() {
            Some(p) => parse(&fs::read_to_string(&p).map_err(|e| {
                io::Error::new(e.kind(), format!("reading the corpus {}: {e}", p.display()))
            })?),
            None => parse(EMBEDDED_SAMPLE),
        };
        tracks.truncate(limit);
        Ok(tracks)
    }

    /// A name that any file system accepts, made from corpus text.
    pub fn file_safe(s: &str) -> String {
        let cleaned: String = s
            .chars()
            .map(|c| {
                if matches!(c, '/' | '\\' | '\0') || c.is_control() {
                    '-'
                } else {
                    c
                }
            })
            .collect();
        let cleaned = cleaned.trim().trim_start_matches('.').trim();
        let cut: String = cleaned.chars().take(80).collect();
        if cut.is_empty() {
            "untitled".into()
        } else {
            cut
        }
    }

    impl Track {
        /// Where a music library would keep it: `Artist/Album/NN - Title.mp3`.
        pub fn library_path(&self) -> PathBuf {
            PathBuf::from(file_safe(&self.artist))
                .join(file_safe(&self.album))
                .join(format!(
                    "{:02} - {}.mp3",
                    self.track,
                    file_safe(&self.title)
                ))
        }

        /// Its stand-in size: 1 KB per second of music (an 8 kbit/s MP3), at least 16 KiB,
        /// at most 2 MiB.
        pub fn size(&self) -> u64 {
            (self.duration_s as u64 * 1000).clamp(16 << 10, 2 << 20)
        }

        /// Its stand-in contents, deterministic per track: a real MP3 as far as a tag reader
        /// can tell — an ID3v2.4 tag with the track's artist, album, title, genre, year and
        /// number, then 8 kbit/s MPEG-2 Layer III frames (headers valid, payload noise).
        pub fn contents(&self) -> Vec<u8> {
            let size = self.size() as usize;
            let mut out = id3v2(&[
                ("TPE1", self.artist.clone()),
                ("TALB", self.album.clone()),
                ("TIT2", self.title.clone()),
                ("TCON", self.genre.clone()),
                (
                    "TDRC",
                    if self.year > 0 {
                        self.year.to_string()
                    } else {
                        String::new()
                    },
                ),
                ("TRCK", self.track.to_string()),
            ]);
            let noise = deterministic_bytes(
                &format!("{}/{}/{}", self.release_id, self.disc, self.track),
                size,
            );
            // MPEG-2 Layer III, 8 kbit/s, 22.05 kHz, mono: 26-byte frames.
            const HEADER: [u8; 4] = [0xFF, 0xF3, 0x10, 0xC4];
            while out.len() + 26 <= size {
                let at = out.len();
                out.extend_from_slice(&HEADER);
                out.extend_from_slice(&noise[at..at + 22]);
            }
            out.extend_from_slice(&noise[out.len()..size]);
            out
        }
    }

    /// An ID3v2.4 tag holding UTF-8 text frames (empty texts are left out).
    pub fn id3v2(frames: &[(&str, String)]) -> Vec<u8> {
        fn syncsafe(n: usize) -> [u8; 4] {
            [
                (n >> 21) as u8 & 0x7f,
                (n >> 14) as u8 & 0x7f,
                (n >> 7) as u8 & 0x7f,
                n as u8 & 0x7f,
            ]
        }
        let mut body = Vec::new();
        for (id, text) in frames.iter().filter(|(_, t)| !t.is_empty()) {
            body.extend_from_slice(id.as_bytes());
            body.extend_from_slice(&syncsafe(text.len() + 1));
            body.extend_from_slice(&[0, 0, 3]); // no flags; encoding 3 is UTF-8
            body.extend_from_slice(text.as_bytes());
        }
        let mut out = b"ID3\x04\x00\x00".to_vec();
        out.extend_from_slice(&syncsafe(body.len()));
        out.extend_from_slice(&body);
        out
    }

    /// `len` bytes that depend only on `seed`.
    pub fn deterministic_bytes(seed: &str, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new_derive_key("canopy test corpus")
            .update(seed.as_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    /// Writes `tracks` below `root` in library layout; returns each file's path.
    pub fn write_share(root: &Path, tracks: &[Track]) -> io::Result<Vec<PathBuf>> {
        let mut paths = Vec::with_capacity(tracks.len());
        for t in tracks {
            let p = root.join(t.library_path());
            fs::create_dir_all(p.parent().expect("library paths have folders"))?;
            fs::write(&p, t.contents())?;
            paths.push(p);
        }
        Ok(paths)
    }
}

pub mod net {
    //! In-process networks on 127.0.0.1 for tests and the demo.

    use std::future::Future;
    use std::io;
    use std::net::{IpAddr, SocketAddr};
    use std::path::Path;
    use std::time::{Duration, Instant};

    use leaf::{Node, NodeConfig};
    use smol::net::TcpStream;
    use superpeer::SuperPeerNode;
    use transport::identity::Identity;
    use transport::net::{write_message, FrameReader};
    use transport::secure::{SecureReader, SecureStream, SecureWriter};
    use wire::{Hello, Message, NodeId, Role};

    /// Runs `f` to completion on smol, panicking if it takes longer than `limit`: every
    /// networked test is bounded in time.
    pub fn run_bounded<F: Future>(limit: Duration, f: F) -> F::Output {
        smol::block_on(smol::future::or(f, async {
            smol::Timer::after(limit).await;
            panic!("test did not finish within {limit:?}");
        }))
    }

    /// Waits until `cond` holds, checking every 20 ms; panics naming `what` after `limit`.
    pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let until = Instant::now() + limit;
        while !cond().await {
            if Instant::now() > until {
                panic!("timed out after {limit:?} waiting for {what}");
            }
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }

    /// A super-peer on an ephemeral port, connecting to `peers`.
    pub async fn superpeer(peers: &[SocketAddr]) -> SuperPeerNode {
        superpeer_with(peers, |_| {}).await
    }

    /// [`superpeer`] with overlay settings changed by `adjust` (a neighbour target of 1 keeps a
    /// line a line; by default super-peers mesh with every one they hear of, up to 32).
    pub async fn superpeer_with(
        peers: &[SocketAddr],
        adjust: impl FnOnce(&mut topology::Config),
    ) -> SuperPeerNode {
        let id = transport::identity::Identity::generate();
        let mut config = superpeer::Config::new(id, "127.0.0.1:0".parse().expect("valid address"));
        config.peers = peers.to_vec();
        adjust(&mut config.overlay);
        SuperPeerNode::start(config)
            .await
            .expect("a super-peer starts on an ephemeral port")
    }

    /// A super-peer on an ephemeral port with its whole configuration (limits included)
    /// changed by `adjust`.
    pub async fn superpeer_config(adjust: impl FnOnce(&mut superpeer::Config)) -> SuperPeerNode {
        let id = transport::identity::Identity::generate();
        let mut config = superpeer::Config::new(id, "127.0.0.1:0".parse().expect("valid address"));
        adjust(&mut config);
        SuperPeerNode::start(config)
            .await
            .expect("a super-peer starts on an ephemeral port")
    }

    /// A TCP connection to `addr` from the loopback address `from`. Tests of hostile peers
    /// connect from 127.0.0.2 and up, so that the ban an offender earns does not fall on the
    /// well-behaved peers at 127.0.0.1.
    pub async fn dial_from(from: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
        let std = smol::unblock(move || {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.bind(&SocketAddr::new(from, 0).into())?;
            socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
            socket.set_tcp_nodelay(true)?;
            Ok::<_, io::Error>(std::net::TcpStream::from(socket))
        })
        .await?;
        TcpStream::try_from(std)
    }

    /// [`dial_from`], then the encrypted handshake with a fresh identity.
    pub async fn secure_from(
        from: IpAddr,
        addr: SocketAddr,
    ) -> io::Result<(SecureStream<TcpStream>, Identity)> {
        let identity = Identity::generate();
        let stream = dial_from(from, addr).await?;
        let secure = transport::secure::connect(stream, &identity, Duration::from_secs(5))
            .await
            .map_err(io::Error::other)?;
        Ok((secure, identity))
    }

    /// A peer that speaks the protocol by hand, from 127.0.0.`from`.
    pub struct Raw {
        /// Where messages go.
        pub writer: SecureWriter<TcpStream>,
        /// Where they come from.
        pub reader: FrameReader<SecureReader<TcpStream>>,
        scratch: Vec<u8>,
    }

    impl Raw {
        /// Handshake, then Hello with `role` (a leaf that registers needs a `listen` address).
        pub async fn connect(
            from: u8,
            sp: SocketAddr,
            role: Role,
            listen: Option<SocketAddr>,
        ) -> Raw {
            Self::connect_as(from, sp, role, listen, None).await
        }

        /// [`Raw::connect`], claiming node id `claim` in Hello instead of its own.
        pub async fn connect_as(
            from: u8,
            sp: SocketAddr,
            role: Role,
            listen: Option<SocketAddr>,
            claim: Option<NodeId>,
        ) -> Raw {
            let (secure, identity) = secure_from([127, 0, 0, from].into(), sp)
                .await
                .expect("the handshake completes");
            let mut raw = Raw {
                writer: secure.writer,
                reader: FrameReader::new(secure.reader),
                scratch: Vec::new(),
            };
            let node = claim.unwrap_or(identity.node());
            raw.send(&Message::Hello(Hello::new(node, role, listen, "raw")))
                .await
                .unwrap();
            raw
        }

        /// Sends one message.
        pub async fn send(&mut self, msg: &Message) -> std::io::Result<()> {
            write_message(&mut self.writer, msg, &mut self.scratch).await
        }

        /// Reads (and drops) whatever comes until the node closes the connection; false if it is
        /// still open after `limit`.
        pub async fn cut_off_within(&mut self, limit: Duration) -> bool {
            let until = Instant::now() + limit;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                match self.reader.read_message_within(left).await {
                    Ok(_) => continue,
                    Err(transport::net::ReadError::Timeout(_)) => return false,
                    Err(_) => return true,
                }
            }
        }
    }

    /// A serving leaf with its data directory `base/name`, attached to `superpeers` and
    /// waited for until at least one link is up.
    pub async fn leaf(base: &Path, name: &str, superpeers: &[SocketAddr]) -> Node {
        leaf_with(base, name, superpeers, |_| {}).await
    }

    /// [`leaf`] with settings changed by `adjust` (upload slots, caps, ...).
    pub async fn leaf_with(
        base: &Path,
        name: &str,
        superpeers: &[SocketAddr],
        adjust: impl FnOnce(&mut NodeConfig),
    ) -> Node {
        let mut config = NodeConfig::new(base.join(name));
        config.superpeers = superpeers.to_vec();
        config.listen = Some("127.0.0.1:0".parse().expect("valid address"));
        // Tests that want promotion say so; others must not grow super-peers on their own.
        config.leaf_overlay.can_promote = false;
        config.superpeer_listen = Some("127.0.0.1:0".parse().expect("valid address"));
        adjust(&mut config);
        let node = Node::start(config)
            .await
            .expect("a leaf starts on an ephemeral port");
        assert!(
            node.wait_connected(Duration::from_secs(10)).await,
            "leaf {name} did not attach to {superpeers:?}"
        );
        node
    }

    /// Waits until super-peer `sp` has `n` neighbours.
    pub async fn wait_neighbours(sp: &SuperPeerNode, n: u64) {
        wait_until(
            &format!("{n} neighbours at {}", sp.listen_addr()),
            Duration::from_secs(10),
            || async { sp.status().await.stats.neighbours >= n },
        )
        .await
    }

    /// Waits until super-peer `sp` indexes at least `n` records.
    pub async fn wait_records(sp: &SuperPeerNode, n: u64) {
        wait_until(
            &format!("{n} records at {}", sp.listen_addr()),
            Duration::from_secs(10),
            || async { sp.status().await.records >= n },
        )
        .await
    }

    /// A download of `id` from exactly `sources`, into `out`, by a node of its own: searches
    /// find nothing more, and with no source connected for 5 s it fails.
    pub fn direct_job(
        id: wire::FileId,
        sources: Vec<SocketAddr>,
        out: &Path,
    ) -> leaf::download::Job {
        leaf::download::Job {
            me: std::sync::Arc::new(Identity::generate()),
            id,
            name: "set.flac".into(),
            expected_size: None,
            out_dir: out.to_path_buf(),
            sources,
            find: std::sync::Arc::new(|| Box::pin(async { Vec::new() })),
            connect_back: None,
            ways: None,
            give_up_after: Some(Duration::from_secs(5)),
            wait_for_sources: false,
            opts: leaf::download::DownloadOptions::default(),
            cap: leaf::rate::RateLimit::unlimited(),
            swarm: None,
        }
    }

    /// Shares `folder` from `leaf` and waits until super-peer `sp` indexes its files: a share is
    /// announced on its own, so a search straight after `share` may not find it yet.
    pub async fn share_indexed(leaf: &Node, sp: &SuperPeerNode, folder: &Path) {
        let before = sp.status().await.records;
        let summary = leaf
            .share(folder, |_| {})
            .await
            .unwrap_or_else(|e| panic!("sharing {}: {e}", folder.display()));
        wait_records(sp, before + summary.files).await;
    }
}
