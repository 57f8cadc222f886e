//! What an eavesdropper sees: a recording proxy sits between the leaves and their super-peer
//! and between a downloader and its source, and keeps every byte of a share, a search and a
//! download. No file name, query word or piece of the file's content may appear in it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy::net::{self, run_bounded};
use leaf::download::{self, DownloadOptions};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};
use transport::identity::Identity;
use wire::{FileId, Filter, Search, Terms};

/// Forwards connections to `upstream` and records the bytes of both directions.
async fn recording_proxy(upstream: SocketAddr, tape: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    smol::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = TcpStream::connect(upstream).await else {
                continue;
            };
            for (mut from, mut to) in [(down.clone(), up.clone()), (up, down)] {
                let tape = tape.clone();
                smol::spawn(async move {
                    let mut buf = vec![0; 64 << 10];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        tape.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                })
                .detach();
            }
        }
    })
    .detach();
    addr
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_recorded_search_and_download_show_no_names_words_or_content() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let tape = Arc::new(Mutex::new(Vec::new()));
        let sp = net::superpeer(&[]).await;
        let to_sp = recording_proxy(sp.listen_addr(), tape.clone()).await;

        // A file whose name, words and content are easy to look for.
        let name = "Midnight Serenade for Lanterns.flac";
        let content: Vec<u8> = b"THE-CONTENT-OF-THE-FILE-IN-PLAIN-TEXT "
            .iter()
            .copied()
            .cycle()
            .take(600_000)
            .collect();
        let dir = tmp.path().join("share");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), &content).unwrap();
        let sharer = net::leaf(tmp.path(), "sharer", &[to_sp]).await;
        sharer.share(&dir, |_| {}).await.unwrap();
        net::wait_records(&sp, 1).await;

        let asker = net::leaf(tmp.path(), "asker", &[to_sp]).await;
        let search = Search {
            terms: Terms::Words("serenade lanterns".into()),
            filter: Filter::default(),
        };
        let found = asker
            .search(search, 1, Duration::from_millis(800))
            .await
            .unwrap();
        let id = FileId::from(blake3::hash(&content));
        assert!(found.iter().any(|r| r.id == id), "the search found nothing");

        let to_source = recording_proxy(sharer.listen_addr().unwrap(), tape.clone()).await;
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let job = download::Job {
            me: Arc::new(Identity::generate()),
            id,
            name: name.into(),
            expected_size: Some(content.len() as u64),
            out_dir: out.clone(),
            sources: vec![to_source],
            find: Arc::new(|| Box::pin(async { Vec::new() })),
            connect_back: None,
            ways: None,
            give_up_after: Some(Duration::from_secs(10)),
            wait_for_sources: false,
            opts: DownloadOptions::default(),
            cap: leaf::rate::RateLimit::unlimited(),
            swarm: None,
        };
        let report = download::download(job, Box::new(|_| {})).await.unwrap();
        assert!(std::fs::read(&report.path).unwrap() == content);

        let tape = tape.lock().unwrap().clone();
        // The whole file and the messages went through the proxies...
        assert!(
            tape.len() > content.len(),
            "only {} bytes recorded",
            tape.len()
        );
        // ...and none of it in the clear.
        for word in [
            "Midnight", "Serenade", "Lanterns", "serenade", "lanterns", ".flac",
        ] {
            assert!(
                !contains(&tape, word.as_bytes()),
                "{word:?} crossed in plain text"
            );
        }
        assert!(
            !contains(&tape, b"THE-CONTENT"),
            "file content crossed in plain text"
        );
        // The content id is no secret to a peer, but an eavesdropper learns nothing from it
        // either: it does not cross in the clear.
        assert!(
            !contains(&tape, &id.0),
            "the content id crossed in plain text"
        );
        // The check itself can fail: a plaintext frame of the same search holds the words.
        let mut plain = Vec::new();
        wire::encode(
            &wire::Message::Query(wire::Query {
                id: wire::QueryId([0; 16]),
                ttl: 1,
                hops: 0,
                search: Search {
                    terms: Terms::Words("serenade lanterns".into()),
                    filter: Filter::default(),
                },
            }),
            &mut plain,
        );
        assert!(contains(&plain, b"serenade"));
    });
}
