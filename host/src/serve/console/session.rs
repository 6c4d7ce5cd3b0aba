//! Console sessions: a login with an API key (or the admin token) becomes
//! a random session id in an HttpOnly, SameSite=Strict cookie, and a CSRF
//! token every form of the session carries.
//!
//! The host keeps the key's digest, never the key: a session is checked
//! against the current key table on every request, so a key removed or
//! demoted by a policy apply ends its sessions' rights at once.
//!
//! Budgets: at most [`MAX_SESSIONS`] sessions (a new login past that ends
//! the least recently used one); a session ends after [`IDLE`] without a
//! request or [`MAX_AGE`] in all; one flash message of at most
//! [`MAX_FLASH_BYTES`] each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::access::Role;

/// Sessions kept at once.
pub const MAX_SESSIONS: usize = 256;

/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);

/// A session ends this long after its login, used or not.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 60 * 60);

/// Bytes of the message an action leaves for the next page.
pub const MAX_FLASH_BYTES: usize = 512;

/// The cookie's name.
pub const COOKIE: &str = "capsule_console";

/// Who logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The admin token.
    AdminToken,
    /// An API key, by the SHA-256 digest the policy holds.
    Key([u8; 32]),
}

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The key's name (`admin-token` for the token), for the audit log.
    pub who: String,
    /// The role at login; the current key table decides on each request.
    pub role: Role,
    /// What logged in.
    pub credential: Credential,
    /// The token every form of this session carries.
    pub csrf: String,
    created: Instant,
    used: Instant,
    flash: Option<String>,
}

/// The host's console sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session; returns its id (for the cookie). Ends the least
    /// recently used session when [`MAX_SESSIONS`] are open.
    pub fn start(&self, who: &str, role: Role, credential: Credential) -> Result<String, String> {
        let id = random_token()?;
        let now = Instant::now();
        let session = Session {
            who: who.to_owned(),
            role,
            credential,
            csrf: random_token()?,
            created: now,
            used: now,
            flash: None,
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| live(s, now));
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session);
        Ok(id)
    }

    /// The live session `id` names, marked as used now.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let session = sessions.get_mut(id)?;
        if !live(session, now) {
            sessions.remove(id);
            return None;
        }
        session.used = now;
        Some(session.clone())
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Leaves `message` for the session's next page.
    pub fn flash(&self, id: &str, message: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = sessions.get_mut(id) {
            session.flash = Some(crate::text::for_log(message, MAX_FLASH_BYTES).into_owned());
        }
    }

    /// Takes the message left for this page, if any.
    pub fn take_flash(&self, id: &str) -> Option<String> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get_mut(id)?.flash.take()
    }

    /// Sessions open now (ended ones may still be counted until the next
    /// login sweeps them).
    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn live(session: &Session, now: Instant) -> bool {
    now.duration_since(session.used) < IDLE && now.duration_since(session.created) < MAX_AGE
}

/// 256 random bits as hex.
pub fn random_token() -> Result<String, String> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|err| format!("no randomness: {err}"))?;
    Ok(crate::artifact::hex(&random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_bounded_and_carry_one_flash() {
        let sessions = Sessions::default();
        let first = sessions
            .start("ops", Role::View, Credential::Key([7; 32]))
            .unwrap();
        assert_eq!(first.len(), 64);
        let session = sessions.get(&first).unwrap();
        assert_eq!(session.who, "ops");
        assert_eq!(session.csrf.len(), 64);
        assert_ne!(session.csrf, first);
        assert!(sessions.get("not-a-session").is_none());
        sessions.flash(&first, &"x".repeat(10_000));
        let flash = sessions.take_flash(&first).unwrap();
        assert!(flash.len() <= MAX_FLASH_BYTES + 32, "{}", flash.len());
        assert!(sessions.take_flash(&first).is_none());
        for _ in 0..(2 * MAX_SESSIONS) {
            sessions
                .start("flood", Role::View, Credential::AdminToken)
                .unwrap();
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        // The least recently used went first: the first login is long gone.
        assert!(sessions.get(&first).is_none());
        let last = sessions
            .start("ops", Role::Admin, Credential::AdminToken)
            .unwrap();
        sessions.end(&last);
        assert!(sessions.get(&last).is_none());
    }
}
