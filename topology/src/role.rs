//! Hysteresis for role changes: a minimum time in a role, and a growing back-off after each
//! demotion, so that nodes do not flap between leaf and super-peer.

use std::time::{Duration, Instant};

/// Settings of role hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleConfig {
    /// The least time a node stays in a role before it may change again (except a leaf that
    /// finds no super-peer at all, which may promote itself at once).
    pub min_role_time: Duration,
    /// How long a demoted node waits before it may be promoted again; doubles with every
    /// demotion.
    pub demotion_backoff: Duration,
    /// The longest that back-off grows to.
    pub max_backoff: Duration,
}

impl Default for RoleConfig {
    fn default() -> Self {
        RoleConfig {
            min_role_time: Duration::from_secs(20 * 60),
            demotion_backoff: Duration::from_secs(10 * 60),
            max_backoff: Duration::from_secs(24 * 3600),
        }
    }
}

/// Which role a node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// A leaf.
    Leaf,
    /// A super-peer.
    SuperPeer,
}

/// A node's role history, carried from one role's state machine to the next.
#[derive(Debug, Clone)]
pub struct RoleClock {
    config: RoleConfig,
    role: NodeRole,
    since: Instant,
    not_before: Instant,
    backoff: Duration,
    changes: u32,
}

impl RoleClock {
    /// A node that started at `now` in `role`.
    pub fn new(now: Instant, role: NodeRole, config: RoleConfig) -> Self {
        RoleClock {
            config,
            role,
            since: now,
            not_before: now,
            backoff: config.demotion_backoff,
            changes: 0,
        }
    }

    /// The current role.
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// When the current role began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Role changes so far.
    pub fn changes(&self) -> u32 {
        self.changes
    }

    /// The settings.
    pub fn config(&self) -> RoleConfig {
        self.config
    }

    /// Whether the node has been in its role long enough, and out of any back-off, to change.
    pub fn may_change(&self, now: Instant) -> bool {
        now >= self.since + self.config.min_role_time && now >= self.not_before
    }

    /// Whether a leaf that finds no super-peer may promote itself: only the back-off applies.
    pub fn may_promote_alone(&self, now: Instant) -> bool {
        self.role == NodeRole::Leaf && now >= self.not_before
    }

    /// Records a change to `role` at `now`; a demotion starts (and doubles) the back-off.
    pub fn changed(&mut self, now: Instant, role: NodeRole) {
        if role == self.role {
            return;
        }
        if role == NodeRole::Leaf {
            self.not_before = now + self.backoff;
            self.backoff = (self.backoff * 2).min(self.config.max_backoff);
        }
        self.role = role;
        self.since = now;
        self.changes += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_time_and_growing_backoff() {
        let t = Instant::now();
        let cfg = RoleConfig {
            min_role_time: Duration::from_secs(10),
            demotion_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(100),
        };
        let mut c = RoleClock::new(t, NodeRole::Leaf, cfg);
        assert!(c.may_promote_alone(t));
        assert!(!c.may_change(t + Duration::from_secs(9)));
        c.changed(t + Duration::from_secs(10), NodeRole::SuperPeer);
        assert!(!c.may_change(t + Duration::from_secs(19)));
        c.changed(t + Duration::from_secs(20), NodeRole::Leaf);
        // Demoted: 30 s before it may be promoted again, even alone.
        assert!(!c.may_promote_alone(t + Duration::from_secs(49)));
        assert!(c.may_promote_alone(t + Duration::from_secs(50)));
        c.changed(t + Duration::from_secs(50), NodeRole::SuperPeer);
        c.changed(t + Duration::from_secs(60), NodeRole::Leaf);
        assert!(
            !c.may_promote_alone(t + Duration::from_secs(119)),
            "back-off doubled to 60 s"
        );
        assert!(c.may_promote_alone(t + Duration::from_secs(120)));
        assert_eq!(c.changes(), 4);
    }
}
