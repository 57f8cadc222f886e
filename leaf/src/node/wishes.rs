//! The node's wishlist ([`crate::wish`]): kept in the data directory, changed through the
//! control socket, and run by the long-running node, which searches for each wish in turn and
//! downloads new matches of the wishes made with `auto`.

use std::time::{SystemTime, UNIX_EPOCH};

use super::*;
use crate::wish::{SavedWishes, Wish, WishError, Wishlist, WISHES_FILE};

/// How long a wish's search collects results.
const WISH_WAIT: Duration = Duration::from_secs(3);

/// The wishlist as read at start: a missing or damaged file is an empty list (logged).
pub(super) fn load_wishes(data_dir: &Path, interval: Duration) -> Wishlist {
    let saved: SavedWishes = transport::store::load_or_log(
        &data_dir.join(WISHES_FILE),
        "starting with an empty wishlist",
    )
    .unwrap_or_default();
    Wishlist::new(saved, interval, Instant::now(), rand::random())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Node {
    /// The wishes, oldest first.
    pub fn wishes(&self) -> Vec<Wish> {
        let list = self.inner.wishes.lock().unwrap();
        list.wishes().iter().map(Wish::shown).collect()
    }

    /// Adds a wish: `words` (and `filter`) searched for again and again; with `auto`, new
    /// matches are downloaded into `out`. Saved at once.
    pub fn wish_add(
        &self,
        words: &str,
        filter: Filter,
        auto: bool,
        out: PathBuf,
    ) -> Result<Wish, WishError> {
        let wish = {
            let mut list = self.inner.wishes.lock().unwrap();
            let wish = list.add(Instant::now(), words, filter, auto, out)?.clone();
            self.save_wishes(&list);
            wish
        };
        // The wish loop recomputes when the next search is due.
        let _ = self.inner.wish_wake.try_send(());
        Ok(wish)
    }

    /// Removes wish `id`. Saved at once.
    pub fn wish_remove(&self, id: u32) -> Result<Wish, WishError> {
        let mut list = self.inner.wishes.lock().unwrap();
        let wish = list.remove(id)?;
        self.save_wishes(&list);
        Ok(wish)
    }

    fn save_wishes(&self, list: &Wishlist) {
        let path = self.inner.state.data_dir.join(WISHES_FILE);
        if let Err(e) = transport::store::save(&path, list.saved()) {
            log::warn!("cannot save the wishlist {}: {e}", path.display());
        }
    }

    /// Runs the wishes, one search at a time, for as long as the node runs.
    pub(super) async fn run_wishes(self, wake: Receiver<()>) {
        loop {
            let due = self.inner.wishes.lock().unwrap().poll_timeout();
            let timer = async {
                match due {
                    Some(at) => {
                        smol::Timer::at(at).await;
                    }
                    None => smol::future::pending::<()>().await,
                }
            };
            smol::future::or(timer, async {
                let _ = wake.recv().await;
            })
            .await;
            let next = self.inner.wishes.lock().unwrap().poll_due(Instant::now());
            let Some((id, search)) = next else {
                continue;
            };
            let results = match self.search(search, wire::DEFAULT_TTL, WISH_WAIT).await {
                Ok(results) => results,
                Err(e) => {
                    log::info!("wish {id}: search failed: {e}");
                    continue;
                }
            };
            let (new, wish) = {
                let mut list = self.inner.wishes.lock().unwrap();
                let new = list.handle_results(id, &results, unix_now());
                self.save_wishes(&list);
                let wish = list.wishes().iter().find(|w| w.id == id).cloned();
                (new, wish)
            };
            let Some(wish) = wish else { continue };
            for m in new {
                log::info!(
                    "wish {id} ({}): new match {} ({} bytes, {})",
                    wish.words,
                    m.name,
                    m.size,
                    m.id
                );
                if wish.auto {
                    let (node, out) = (self.clone(), wish.out.clone());
                    let task = transport::rt::spawn(async move {
                        match node.get(m.id, &out, |_| {}).await {
                            Ok(r) => log::info!("wish {id}: saved {}", r.path.display()),
                            Err(e) => log::warn!("wish {id}: download of {} failed: {e}", m.id),
                        }
                    });
                    let mut tasks = self.inner.tasks.lock().unwrap();
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(task);
                }
            }
        }
    }
}
