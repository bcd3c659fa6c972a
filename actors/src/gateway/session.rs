//! A connection's session: who is connected, with which token, and until
//! when. A session ends when its token does (its `exp` plus the leeway the
//! HTTP layer allows, so a token refused over REST is refused here too):
//! the connection is closed with [`CLOSE_TOKEN_EXPIRED`]. Before then the
//! client may send a fresh token of the same subject and role
//! (`{"type":"refresh","token":…}`) to extend it.
//!
//! The gateway cannot check a token itself (the keys belong to the HTTP
//! layer of the binary), so the HTTP layer hands every connection a
//! [`TokenVerifier`].

use crate::auth::Principal;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Close code of a session whose token expired (a private-use code, RFC
/// 6455 §7.4.2): distinct from 1008 so that a client knows to get a fresh
/// token and reconnect, where after 1008 it should back off.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// Longest single wait for a session's end: a timer that long is re-armed
/// rather than set years ahead for a token that never really expires.
pub(super) const LONGEST_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Who is connected and until when.
#[derive(Clone)]
pub struct Session {
    /// The caller the token stands for.
    pub principal: Principal,
    /// Their bearer token, forwarded to the order service for snapshots.
    pub token: String,
    /// When the session ends: the token's `exp` plus the leeway HTTP
    /// authentication allows.
    pub ends_at: SystemTime,
}

impl std::fmt::Debug for Session {
    // The token is a credential: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("principal", &self.principal)
            .field("token", &"***")
            .field("ends_at", &self.ends_at)
            .finish()
    }
}

impl Session {
    /// Time left until the session ends, zero once it has.
    pub fn remaining(&self) -> Duration {
        self.ends_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// Whether `fresh` may replace this session: the same subject with the
    /// same role (a connection's subscriptions were checked for them).
    pub fn may_become(&self, fresh: &Session) -> bool {
        self.principal == fresh.principal
    }
}

/// Checks a bearer token a client sends to extend its session.
pub trait TokenVerifier: Send + Sync + 'static {
    /// The session `token` opens, or why it is refused (for the client).
    fn verify(&self, token: &str) -> Result<Session, String>;
}

/// A verifier shared by every connection.
pub type SharedVerifier = Arc<dyn TokenVerifier>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn session(subject: &str, role: Role, ends_at: SystemTime) -> Session {
        Session {
            principal: Principal {
                subject: subject.into(),
                role,
            },
            token: "secret-token".into(),
            ends_at,
        }
    }

    #[test]
    fn a_session_is_extended_only_by_the_same_subject_and_role() {
        let now = SystemTime::now();
        let alice = session("alice", Role::Customer, now);
        assert!(alice.may_become(&session("alice", Role::Customer, now)));
        assert!(!alice.may_become(&session("bob", Role::Customer, now)));
        assert!(!alice.may_become(&session("alice", Role::Admin, now)));
    }

    #[test]
    fn an_ended_session_has_no_time_left_and_its_token_is_never_shown() {
        let past = session("alice", Role::Customer, SystemTime::UNIX_EPOCH);
        assert_eq!(past.remaining(), Duration::ZERO);
        let soon = session(
            "alice",
            Role::Customer,
            SystemTime::now() + Duration::from_secs(60),
        );
        assert!(soon.remaining() > Duration::from_secs(50));
        assert!(!format!("{soon:?}").contains("secret-token"));
    }
}
