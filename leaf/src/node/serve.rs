//! What the node serves: the control socket (one [`Request`] per connection, its replies
//! streamed back) and the chunk server's accept loop.

use super::*;

impl Node {
    /// Searches and sends the grouped results so far each time hits arrive, for `wait`.
    pub(super) async fn search_stream(
        &self,
        search: Search,
        ttl: u8,
        wait: Duration,
        reply: &Sender<Reply>,
    ) -> Result<(), NodeError> {
        let (qid, rx) = self.start_search(search, ttl)?;
        let deadline = Instant::now() + wait;
        let mut hits = Vec::new();
        // An empty list first, so the client knows the search is under way.
        let mut open = reply.send(Reply::Results(Vec::new())).await.is_ok();
        while open {
            let got = smol::future::or(async { rx.recv().await.ok() }, async {
                smol::Timer::at(deadline).await;
                None
            })
            .await;
            let Some(batch) = got else { break };
            hits.extend(batch);
            // Whatever else already arrived goes into the same update.
            while let Ok(more) = rx.try_recv() {
                hits.extend(more);
            }
            let mut results = group_hits(hits.iter().cloned());
            self.mark_have(&mut results);
            open = reply.send(Reply::Results(results)).await.is_ok();
        }
        self.end_search(qid);
        Ok(())
    }

    /// Carries out one control request, sending replies (ending with [`Reply::End`]).
    pub async fn handle(&self, req: Request, reply: Sender<Reply>) {
        match req {
            Request::Share { paths } => {
                for path in paths {
                    let tx = reply.clone();
                    let mut last = Instant::now() - Duration::from_secs(1);
                    let progress = move |p: &share::ScanProgress| {
                        let finished = p.files_done == p.files_total;
                        if finished || last.elapsed() >= Duration::from_millis(100) {
                            last = Instant::now();
                            let _ = tx.try_send(Reply::ShareProgress(p.clone()));
                        }
                    };
                    let r = match self.share(&path, progress).await {
                        Ok(summary) => Reply::Shared(summary),
                        Err(e) => Reply::Error(e.to_string()),
                    };
                    let _ = reply.send(r).await;
                }
            }
            Request::Search {
                search,
                ttl,
                wait_ms,
            } => {
                let r = match self
                    .search(search, ttl, Duration::from_millis(wait_ms))
                    .await
                {
                    Ok(results) => Reply::Results(results),
                    Err(e) => Reply::Error(e.to_string()),
                };
                let _ = reply.send(r).await;
            }
            Request::Get { ids, out, again } => {
                // All at once: each takes its place in the queue (and on disk) now, and the
                // node's download limit decides how many run together.
                let tasks: Vec<_> = ids
                    .into_iter()
                    .map(|id| {
                        let (node, out, tx) = (self.clone(), out.clone(), reply.clone());
                        transport::rt::spawn(async move {
                            let progress_tx = tx.clone();
                            let last = Mutex::new(Instant::now() - Duration::from_secs(1));
                            let progress = move |info: &DownloadInfo| {
                                let mut last = last.lock().unwrap();
                                if last.elapsed() >= Duration::from_millis(100) {
                                    *last = Instant::now();
                                    let _ = progress_tx.try_send(Reply::GetProgress(info.clone()));
                                }
                            };
                            let got = if again {
                                node.get_again(id, &out, progress).await
                            } else {
                                node.get(id, &out, progress).await
                            };
                            let r = match got {
                                Ok(report) => Reply::GetDone(report),
                                Err(e) => Reply::GetFailed {
                                    id,
                                    error: e.to_string(),
                                },
                            };
                            let _ = tx.send(r).await;
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
            }
            Request::Status => {
                let _ = reply.send(Reply::Status(Box::new(self.status()))).await;
            }
            Request::WishAdd {
                words,
                filter,
                auto,
                out,
            } => {
                let r = match self.wish_add(&words, filter, auto, out) {
                    Ok(_) => Reply::Wishes(self.wishes()),
                    Err(e) => Reply::Error(e.to_string()),
                };
                let _ = reply.send(r).await;
            }
            Request::WishRemove { id } => {
                let r = match self.wish_remove(id) {
                    Ok(_) => Reply::Wishes(self.wishes()),
                    Err(e) => Reply::Error(e.to_string()),
                };
                let _ = reply.send(r).await;
            }
            Request::Wishes => {
                let _ = reply.send(Reply::Wishes(self.wishes())).await;
            }
            Request::Browse { source } => match self.locate_and_browse(&source).await {
                // In parts that each fit a control frame; the client puts them together.
                Ok(listing) => {
                    for part in crate::browse::in_parts(listing) {
                        if reply.send(Reply::Listing(part)).await.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => {
                    let _ = reply.send(Reply::Error(e.to_string())).await;
                }
            },
            Request::GetFolder {
                source,
                folder,
                out,
                again,
            } => {
                let tx = reply.clone();
                let each = move |id, got: &Result<DownloadReport, NodeError>| {
                    let r = match got {
                        Ok(report) => Reply::GetDone(report.clone()),
                        Err(e) => Reply::GetFailed {
                            id,
                            error: e.to_string(),
                        },
                    };
                    let _ = tx.try_send(r);
                };
                let got = match self.locate(&source) {
                    Ok((addr, node)) => {
                        self.get_folder(addr, node, &folder, &out, again, each)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = got {
                    let _ = reply.send(Reply::Error(e.to_string())).await;
                }
            }
            Request::SearchStream {
                search,
                ttl,
                wait_ms,
            } => {
                let wait = Duration::from_millis(wait_ms.min(60_000));
                if let Err(e) = self.search_stream(search, ttl, wait, &reply).await {
                    let _ = reply.send(Reply::Error(e.to_string())).await;
                }
            }
            Request::Cancel { id } => {
                if let Err(e) = self.cancel(id) {
                    let _ = reply.send(Reply::Error(e.to_string())).await;
                }
            }
            Request::Discard { id } => {
                if let Err(e) = self.discard(id).await {
                    let _ = reply.send(Reply::Error(e.to_string())).await;
                }
            }
            Request::Unshare { path } => {
                let r = match self.unshare(&path).await {
                    Ok(removed) => Reply::Unshared {
                        folder: path,
                        files: removed,
                    },
                    Err(e) => Reply::Error(e.to_string()),
                };
                let _ = reply.send(r).await;
            }
        }
        let _ = reply.send(Reply::End).await;
    }
}

/// Accepts control connections (see [`crate::control`]) until the listener fails.
pub(super) async fn serve_control(node: Node, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                transport::rt::spawn(serve_control_one(node.clone(), stream)).detach()
            }
            Err(e) => {
                log::warn!("control socket accept failed: {e}");
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_control_one(node: Node, stream: UnixStream) {
    let mut writer = stream.clone();
    let mut reader = FrameReader::new(stream);
    let req: Request = match reader.read_with(wire::frame::decode_value).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            log::warn!("bad control request: {e}");
            return;
        }
    };
    let (tx, rx) = channel::unbounded();
    // The work runs on its own: it carries on if the client goes away.
    transport::rt::spawn(async move { node.handle(req, tx).await }).detach();
    let mut buf = Vec::new();
    while let Ok(reply) = rx.recv().await {
        buf.clear();
        if let Err(size) = wire::frame::try_encode_value(&reply, &mut buf) {
            // A bug (replies are kept well under a frame), not a reason to drop the node.
            log::error!("a control reply of {size} bytes is too large to send");
            let error = Reply::Error(format!("the reply was too large ({size} bytes)"));
            buf.clear();
            wire::frame::encode_value(&error, &mut buf);
        }
        if writer.write_all(&buf).await.is_err() {
            return;
        }
        if reply == Reply::End {
            return;
        }
    }
}

pub(super) async fn accept_uploads(inner: Arc<Inner>, listener: TcpListener) {
    let gate = inner.gate.clone();
    let handle = move |stream: TcpStream, remote: SocketAddr, admitted| {
        // A place among the node's links, or one beyond them for a connection that may ask
        // for no file (a connection back we asked for, a reachability check), or closed at
        // once (see `crate::links`).
        let link = inner.state.links.accept_or_beyond();
        let inner = inner.clone();
        async move {
            let Some(link) = link else {
                log::debug!(
                    "refusing a download connection from {remote}: {} links open \
                     (--max-peer-links)",
                    inner.state.links.open()
                );
                return;
            };
            // Known to the node so that shutdown can close it.
            let key = inner.state.upload_keys.fetch_add(1, Ordering::Relaxed);
            inner
                .state
                .upload_streams
                .lock()
                .unwrap()
                .insert(key, stream.clone());
            // Beyond the cap it holds no place among those that have not asked yet either: its
            // first request is refused if it is for a file.
            let unasked = match link.is_beyond() {
                true => None,
                false => inner.state.slots.unasked(remote.ip()),
            };
            crate::upload::serve(inner.state.clone(), stream, remote, unasked).await;
            drop(link);
            drop(admitted);
            inner.state.upload_streams.lock().unwrap().remove(&key);
        }
    };
    transport::link::accept_loop(listener, gate, "a download connection", handle).await
}
