//! Keyword routing: our route table of the leaves' words, the tables our neighbours send
//! (`RouteTable`, then `RoutePatch`es), and the depth-1 table made of both.
//!
//! [`Routes`] owns that state. What it needs of the rest of the super-peer (the settings, who the
//! neighbours are, the outgoing queue) comes in as an [`Out`] with each call, so every message
//! it sends is queued in the order the single struct queued it.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use wire::{FileId, FileRecord, Message, Slots};

use super::{neighbour_conns, Config, Conn, SuperPeer, Transmit};
use crate::routing::{self, LocalTable, RemoteTable, RouteError};
use crate::ConnId;

/// What route upkeep needs of the rest of the super-peer for one call.
pub(super) struct Out<'a> {
    /// The settings.
    pub(super) config: &'a Config,
    /// The connections (the neighbours among them get what changed).
    pub(super) conns: &'a HashMap<ConnId, Conn>,
    /// The outgoing queue.
    pub(super) transmits: &'a mut VecDeque<Transmit>,
}

impl Out<'_> {
    fn neighbours(&self) -> Vec<ConnId> {
        neighbour_conns(self.conns)
    }

    fn send(&mut self, to: ConnId, msg: Message) {
        self.transmits.push_back(Transmit { to, msg });
    }
}

/// A super-peer's route tables: its own, its neighbours', and its depth-1 table.
#[derive(Debug)]
pub(super) struct Routes {
    /// What our leaves' files hold, as sent to neighbours.
    table: LocalTable,
    /// When the table's flips are due to go out.
    route_due: Option<Instant>,
    /// Neighbours' route tables, by connection.
    remote: HashMap<ConnId, RemoteTable>,
    /// Neighbours' depth-1 route tables, by connection.
    remote_aggregates: HashMap<ConnId, RemoteTable>,
    /// Our depth-1 table as last sent to neighbours (`None` until first made).
    aggregate: Option<RemoteTable>,
    /// When the depth-1 table is due to be made again and its flips sent.
    aggregate_due: Option<Instant>,
    /// Slots of the depth-1 table that may have flipped since it was last sent (a part of it
    /// changed there): only they are looked at again.
    aggregate_dirty: Vec<u32>,
    /// When new slots of the depth-1 table last went out, and slots set since that wait for
    /// `aggregate_add_interval` after it (see [`Routes::send_aggregate_additions`]).
    aggregate_added_at: Option<Instant>,
    aggregate_added: Vec<u32>,
}

impl Routes {
    /// Empty tables of `1 << bits` slots.
    pub(super) fn new(bits: u8) -> Self {
        Routes {
            table: LocalTable::new(bits),
            route_due: None,
            remote: HashMap::new(),
            remote_aggregates: HashMap::new(),
            aggregate: None,
            aggregate_due: None,
            aggregate_dirty: Vec::new(),
            aggregate_added_at: None,
            aggregate_added: Vec::new(),
        }
    }

    /// Leaf `conn` registered `files`.
    pub(super) fn add_files(
        &mut self,
        now: Instant,
        out: &mut Out<'_>,
        conn: ConnId,
        files: &[FileRecord],
    ) {
        self.table.add_files(out.config.analyzer, conn, files);
        self.route_changed(now, out);
    }

    /// Leaf `conn` withdrew the files `ids`; returns those it held.
    pub(super) fn withdraw(
        &mut self,
        now: Instant,
        out: &mut Out<'_>,
        conn: ConnId,
        ids: &[FileId],
    ) -> Vec<FileId> {
        let gone = self.table.withdraw(conn, ids);
        if !gone.is_empty() {
            self.route_changed(now, out);
        }
        gone
    }

    /// What leaf `conn` holds registered: files, and their records' cost in bytes.
    pub(super) fn held(&self, conn: ConnId) -> (u64, u64) {
        self.table.held(conn)
    }

    /// Leaf `conn` is gone, and its words with it.
    pub(super) fn leaf_gone(&mut self, now: Instant, out: &mut Out<'_>, conn: ConnId) {
        self.table.remove_leaf(conn);
        self.route_changed(now, out);
    }

    /// Neighbour `conn` is gone: its tables go with it.
    pub(super) fn neighbour_gone(&mut self, now: Instant, config: &Config, conn: ConnId) {
        if let Some(t) = self.remote.remove(&conn) {
            self.mark_table(config, &t);
            self.aggregate_changed(now, config);
        }
        self.remote_aggregates.remove(&conn);
    }

    /// Neighbour `conn` said Hello (it is not among `out.conns`' neighbours yet): what changed
    /// goes to the others first, so the whole table it gets is the state everybody is at; then
    /// our depth-1 table as the others hold it (changes pending go to all at once).
    pub(super) fn neighbour_joined(&mut self, now: Instant, out: &mut Out<'_>, conn: ConnId) {
        self.send_route_patch(now, out);
        let slots = Slots::from(self.table.slots());
        let bits = self.table.bits();
        out.send(
            conn,
            Message::RouteTable {
                bits,
                slots,
                depth: 0,
            },
        );
        if let Some(t) = &self.aggregate {
            let (bits, slots) = (t.bits(), Slots::from(t.slots()));
            out.send(
                conn,
                Message::RouteTable {
                    bits,
                    slots,
                    depth: 1,
                },
            );
        }
    }

    /// Neighbour `conn` sent its route table of `depth` (other depths are ignored). An error
    /// is the neighbour's protocol error.
    pub(super) fn handle_table(
        &mut self,
        now: Instant,
        out: &mut Out<'_>,
        conn: ConnId,
        bits: u8,
        slots: &[u32],
        depth: u8,
    ) -> Result<(), RouteError> {
        let t = RemoteTable::new(bits, slots)?;
        match depth {
            0 => {
                // Its slots are additions (out at once); the slots of a table it replaces may
                // be removals (checked at `aggregate_delay`).
                let mut set = Vec::new();
                t.for_each_slot(|s| set.push(s));
                if let Some(old) = self.remote.insert(conn, t) {
                    self.mark_table(out.config, &old);
                }
                self.send_aggregate_additions(now, out, bits, &set);
                self.aggregate_changed(now, out.config);
            }
            1 => {
                self.remote_aggregates.insert(conn, t);
            }
            _ => log::debug!("{conn}: route table of depth {depth} ignored"),
        }
        Ok(())
    }

    /// Neighbour `conn` sent a patch to its route table of `depth` (other depths are
    /// ignored). An error (a patch before a table, a slot beyond it) is the neighbour's
    /// protocol error.
    pub(super) fn handle_patch(
        &mut self,
        now: Instant,
        out: &mut Out<'_>,
        conn: ConnId,
        flips: &[u32],
        depth: u8,
    ) -> Result<(), RouteError> {
        let table = match depth {
            0 => self.remote.get_mut(&conn),
            1 => self.remote_aggregates.get_mut(&conn),
            _ => {
                log::debug!("{conn}: route patch of depth {depth} ignored");
                return Ok(());
            }
        };
        let t = table.ok_or(RouteError::PatchFirst)?;
        t.apply(flips)?;
        if depth == 0 {
            let bits = t.bits();
            let (set, cleared): (Vec<u32>, Vec<u32>) =
                flips.iter().copied().partition(|&s| t.covers(bits, s));
            self.mark_slots(out.config, bits, &cleared);
            self.send_aggregate_additions(now, out, bits, &set);
            self.aggregate_changed(now, out.config);
        }
        Ok(())
    }

    /// Sends what is due.
    pub(super) fn handle_timeout(&mut self, now: Instant, out: &mut Out<'_>) {
        if self.route_due.is_some_and(|t| now >= t) {
            self.send_route_patch(now, out);
        }
        if self.aggregate_due.is_some_and(|t| now >= t) {
            self.send_aggregate_patch(out);
        }
        if self
            .aggregate_additions_due(out.config)
            .is_some_and(|t| now >= t)
        {
            self.send_aggregate_additions(now, out, self.table.bits(), &[]);
        }
    }

    /// When something is next due.
    pub(super) fn poll_timeout(&self, config: &Config) -> Option<Instant> {
        [
            self.route_due,
            self.aggregate_due,
            self.aggregate_additions_due(config),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether neighbour `to`'s tables rule out a match for a query with `ttl` left and the
    /// words `hashes`: `Some(0)` when its own table does on the query's last hop
    /// ([`Config::last_hop_routing`]), `Some(1)` when its depth-1 table does on the hop before
    /// ([`Config::two_hop_routing`]). A neighbour with no such table yet is sent everything.
    pub(super) fn rules_out(
        &self,
        config: &Config,
        to: ConnId,
        ttl: u8,
        hashes: &[u64],
    ) -> Option<u8> {
        if ttl == 0
            && config.last_hop_routing
            && self.remote.get(&to).is_some_and(|t| !t.may_match(hashes))
        {
            return Some(0);
        }
        if ttl == 1
            && config.two_hop_routing
            && self
                .remote_aggregates
                .get(&to)
                .is_some_and(|t| !t.may_match(hashes))
        {
            return Some(1);
        }
        None
    }

    /// Whether neighbour `c` may match the words `hashes` itself, and one hop on (each true
    /// when no table says otherwise): dynamic querying asks the likeliest first.
    pub(super) fn may_match(&self, config: &Config, c: ConnId, hashes: &[u64]) -> (bool, bool) {
        let here = self.remote.get(&c).is_none_or(|t| t.may_match(hashes));
        let next = !config.two_hop_routing
            || (self.remote_aggregates.get(&c)).is_none_or(|t| t.may_match(hashes));
        (here, next)
    }

    /// Our depth-1 route table as it would be made now: our table joined with the tables our
    /// neighbours sent us (see [`routing::aggregate`]).
    fn aggregate_now(&self) -> Vec<u32> {
        routing::aggregate(self.table.bits(), &self.table.slots(), self.remote.values())
    }

    /// The route table changed: new words go out at once (until neighbours know them, they
    /// would hold queries for them back); cleared slots only cost false positives, so they are
    /// batched for `route_delay`.
    fn route_changed(&mut self, now: Instant, out: &mut Out<'_>) {
        if self.table.has_new_slots() {
            self.send_route_patch(now, out);
        } else if self.table.has_flips() && self.route_due.is_none() {
            self.route_due = Some(now + out.config.route_delay);
        }
    }

    /// Something the depth-1 table is made of changed: before the first depth-1 table, make it
    /// within `aggregate_delay`; after, re-check the slots noted as maybe cleared within it.
    fn aggregate_changed(&mut self, now: Instant, config: &Config) {
        let pending = self.aggregate.is_none() || !self.aggregate_dirty.is_empty();
        if config.route_aggregates && pending && self.aggregate_due.is_none() {
            self.aggregate_due = Some(now + config.aggregate_delay);
        }
    }

    /// Slots `set` of a `bits` table (ours or a neighbour's) are set now: the depth-1 slots
    /// they fall in that the neighbours do not hold yet go out at once, as new depth-0 slots
    /// do, unless new slots went out less than `aggregate_add_interval` ago: then they wait for
    /// the interval's end (when this is called with `set` empty), with those that came since.
    /// Until they arrive, a neighbour two hops from a new file holds queries for it back (a
    /// stale 0 costs a match; a stale 1 only a message, so cleared slots wait longer).
    fn send_aggregate_additions(&mut self, now: Instant, out: &mut Out<'_>, bits: u8, set: &[u32]) {
        let to = self.table.bits();
        let Some(sent) = self.aggregate.as_ref().filter(|t| t.bits() == to) else {
            return; // the first table (or one of a new size) is made whole
        };
        let waited = !self.aggregate_added.is_empty();
        for &s in set {
            routing::fold_slot(bits, to, s, |x| {
                if !sent.covers(to, x) {
                    self.aggregate_added.push(x);
                }
            });
        }
        if self.aggregate_added.is_empty() || self.aggregate_additions_due(out.config) > Some(now) {
            return;
        }
        let mut add = std::mem::take(&mut self.aggregate_added);
        add.sort_unstable();
        add.dedup();
        // Slots of `set` are set now and were not sent; some that waited may have been cleared
        // (or sent by `send_aggregate_patch`) since: only then is each checked again, against
        // every neighbour's table.
        if waited {
            let Some(sent) = self.aggregate.as_ref() else {
                return;
            };
            add.retain(|&x| !sent.covers(to, x));
            let set = self.aggregate_covered(&add);
            add = add
                .into_iter()
                .zip(set)
                .filter(|&(_, c)| c)
                .map(|(x, _)| x)
                .collect();
        }
        if !add.is_empty() {
            self.aggregate_added_at = Some(now);
            self.send_aggregate_flips(out, add);
        }
    }

    /// When the depth-1 slots waiting in `aggregate_added` may go out.
    fn aggregate_additions_due(&self, config: &Config) -> Option<Instant> {
        if self.aggregate_added.is_empty() {
            return None;
        }
        let at = self.aggregate_added_at?;
        Some(at + config.aggregate_add_interval)
    }

    /// Which of depth-1 slots `slots` are set now: in our table or, folded, in a neighbour's.
    /// Each neighbour's table is looked at once for all of them (and not at all once every
    /// slot is known set).
    fn aggregate_covered(&self, slots: &[u32]) -> Vec<bool> {
        let bits = self.table.bits();
        let mut covered: Vec<bool> = slots.iter().map(|&s| self.table.contains(s)).collect();
        let mut open = covered.iter().filter(|&&c| !c).count();
        for t in self.remote.values() {
            if open == 0 {
                break;
            }
            for (c, &s) in covered.iter_mut().zip(slots) {
                if !*c && t.covers(bits, s) {
                    *c = true;
                    open -= 1;
                }
            }
        }
        covered
    }

    /// Slots `slots` of a `bits` table (ours or a neighbour's) changed: the depth-1 slots they
    /// fall in may flip. (Nothing to note before the first depth-1 table: it is made whole.)
    fn mark_slots(&mut self, config: &Config, bits: u8, slots: &[u32]) {
        if !config.route_aggregates || self.aggregate.is_none() {
            return;
        }
        let to = self.table.bits();
        for &s in slots {
            routing::fold_slot(bits, to, s, |x| self.aggregate_dirty.push(x));
        }
    }

    /// Every slot of a neighbour's table changed (it came, went or was replaced).
    fn mark_table(&mut self, config: &Config, t: &RemoteTable) {
        if !config.route_aggregates || self.aggregate.is_none() {
            return;
        }
        let to = self.table.bits();
        t.for_each_slot(|s| routing::fold_slot(t.bits(), to, s, |x| self.aggregate_dirty.push(x)));
    }

    /// Sends the flips of the depth-1 table since it was last sent to every neighbour: only the
    /// slots noted as changed are looked at again (each against our table and every
    /// neighbour's), so a patch costs what changed, not the table's size. The first time, the
    /// whole table is made and sent.
    fn send_aggregate_patch(&mut self, out: &mut Out<'_>) {
        self.aggregate_due = None;
        let bits = self.table.bits();
        let mut dirty = std::mem::take(&mut self.aggregate_dirty);
        match &self.aggregate {
            Some(sent) if sent.bits() == bits => {
                dirty.sort_unstable();
                dirty.dedup();
                let set = self.aggregate_covered(&dirty);
                let flips = dirty
                    .into_iter()
                    .zip(set)
                    .filter(|&(s, c)| c != sent.covers(bits, s))
                    .map(|(s, _)| s)
                    .collect();
                self.send_aggregate_flips(out, flips);
            }
            _ => {
                let new = self.aggregate_now();
                self.aggregate = RemoteTable::new(bits, &new).ok();
                let msg = Message::RouteTable {
                    bits,
                    slots: Slots::from(new),
                    depth: 1,
                };
                for id in out.neighbours() {
                    out.send(id, msg.clone());
                }
            }
        }
    }

    /// Applies `flips` (slots that differ from it) to the depth-1 table as sent and sends them
    /// to every neighbour.
    fn send_aggregate_flips(&mut self, out: &mut Out<'_>, flips: Vec<u32>) {
        let Some(sent) = self.aggregate.as_mut() else {
            return;
        };
        if flips.is_empty() || sent.apply(&flips).is_err() {
            return; // (an error cannot be: every slot is below 1 << bits)
        }
        let msg = Message::RoutePatch {
            flips: Slots::from(flips),
            depth: 1,
        };
        for id in out.neighbours() {
            out.send(id, msg.clone());
        }
    }

    /// Sends the route table's flips (if any) to every neighbour; what they add to the depth-1
    /// table follows at once, what they clear within `aggregate_delay`.
    fn send_route_patch(&mut self, now: Instant, out: &mut Out<'_>) {
        self.route_due = None;
        if !self.table.has_flips() {
            return;
        }
        let flips = Slots::from(self.table.take_flips());
        let bits = self.table.bits();
        let (set, cleared): (Vec<u32>, Vec<u32>) = flips
            .0
            .iter()
            .copied()
            .partition(|&s| self.table.contains(s));
        for id in out.neighbours() {
            out.send(
                id,
                Message::RoutePatch {
                    flips: flips.clone(),
                    depth: 0,
                },
            );
        }
        self.mark_slots(out.config, bits, &cleared);
        self.send_aggregate_additions(now, out, bits, &set);
        self.aggregate_changed(now, out.config);
    }
}

/// The route tables as a driver's status display, a simulation or a test sees them. All but the
/// counts are there for the simulator (feature `sim`) and the crate's tests.
impl SuperPeer {
    /// Neighbours whose route table we hold and has at least one slot set.
    pub fn neighbour_tables_with_words(&self) -> usize {
        self.live_with_words(&self.routes.remote)
    }

    /// Neighbours whose depth-1 route table we hold and has at least one slot set.
    pub fn neighbour_aggregates_with_words(&self) -> usize {
        self.live_with_words(&self.routes.remote_aggregates)
    }

    fn live_with_words(&self, tables: &HashMap<ConnId, RemoteTable>) -> usize {
        tables
            .iter()
            .filter(|(c, t)| !t.is_empty() && self.conns.get(c).is_some_and(|c| !c.closing))
            .count()
    }

    /// Our route table's set slots, ascending (what neighbours hold once patches are out).
    #[cfg(any(test, feature = "sim"))]
    pub fn route_slots(&self) -> Vec<u32> {
        self.routes.table.slots()
    }

    /// Whether route table changes are waiting to go out.
    #[cfg(any(test, feature = "sim"))]
    pub fn route_pending(&self) -> bool {
        self.routes.table.has_flips()
    }

    /// The route table the neighbour on `conn` sent us, if any.
    #[cfg(any(test, feature = "sim"))]
    pub fn neighbour_table(&self, conn: ConnId) -> Option<&RemoteTable> {
        self.routes.remote.get(&conn)
    }

    /// The depth-1 route table the neighbour on `conn` sent us, if any.
    #[cfg(any(test, feature = "sim"))]
    pub fn neighbour_aggregate(&self, conn: ConnId) -> Option<&RemoteTable> {
        self.routes.remote_aggregates.get(&conn)
    }

    /// Our depth-1 route table as last sent to neighbours, if one was made.
    #[cfg(any(test, feature = "sim"))]
    pub fn aggregate_slots(&self) -> Option<Vec<u32>> {
        self.routes.aggregate.as_ref().map(RemoteTable::slots)
    }

    /// Our depth-1 route table as it would be made now: our table joined with the tables our
    /// neighbours sent us (see [`routing::aggregate`]).
    #[cfg(any(test, feature = "sim"))]
    pub fn aggregate_now(&self) -> Vec<u32> {
        self.routes.aggregate_now()
    }

    /// Holds neighbour `conn`'s route table of this depth in `pool`: a simulation of many
    /// super-peers keeps each distinct table once (every neighbour of a super-peer holds the
    /// same one).
    #[cfg(any(test, feature = "sim"))]
    pub fn share_table(&mut self, conn: ConnId, depth: u8, pool: &mut routing::TablePool) {
        let table = match depth {
            0 => self.routes.remote.get_mut(&conn),
            _ => self.routes.remote_aggregates.get_mut(&conn),
        };
        if let Some(t) = table {
            t.share(pool);
        }
    }
}
