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

/// Sessions one key (or the admin token) may hold at once.
pub const MAX_PER_CREDENTIAL: usize = 8;

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
        let own = sessions
            .values()
            .filter(|s| s.credential == session.credential)
            .count();
        // Past its own share a key ends its own oldest session; past the
        // table's size, the least recently used of all goes.
        let evict: Option<Option<&Credential>> = if own >= MAX_PER_CREDENTIAL {
            Some(Some(&session.credential))
        } else if sessions.len() >= MAX_SESSIONS {
            Some(None)
        } else {
            None
        };
        if let Some(among) = evict {
            let oldest = sessions
                .iter()
                .filter(|(_, s)| among.is_none_or(|c| &s.credential == c))
                .min_by_key(|(_, s)| s.used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), session);
        Ok(id)
    }

    /// The live session `id` names; `touch` marks it used now (a page a
    /// person asked for, not the page refreshing itself).
    pub fn get(&self, id: &str, touch: bool) -> Option<Session> {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let session = sessions.get_mut(id)?;
        if !live(session, now) {
            sessions.remove(id);
            return None;
        }
        if touch {
            session.used = now;
        }
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

    fn many_key(n: usize) -> [u8; 32] {
        let mut digest = [2u8; 32];
        digest[..8].copy_from_slice(&(n as u64).to_le_bytes());
        digest
    }

    #[test]
    fn sessions_are_random_bounded_and_carry_one_flash() {
        let sessions = Sessions::default();
        let first = sessions
            .start("ops", Role::View, Credential::Key([7; 32]))
            .unwrap();
        assert_eq!(first.len(), 64);
        let session = sessions.get(&first, true).unwrap();
        assert_eq!(session.who, "ops");
        assert_eq!(session.csrf.len(), 64);
        assert_ne!(session.csrf, first);
        assert!(sessions.get("not-a-session", true).is_none());
        sessions.flash(&first, &"x".repeat(10_000));
        let flash = sessions.take_flash(&first).unwrap();
        assert!(flash.len() <= MAX_FLASH_BYTES + 32, "{}", flash.len());
        assert!(sessions.take_flash(&first).is_none());
        // One key logging in again and again ends only its own sessions.
        for _ in 0..(2 * MAX_SESSIONS) {
            sessions
                .start("flood", Role::View, Credential::Key([1; 32]))
                .unwrap();
        }
        assert_eq!(sessions.len(), MAX_PER_CREDENTIAL + 1);
        assert!(sessions.get(&first, true).is_some());
        // Many keys fill the table; then the least recently used goes.
        for key in 0..=MAX_SESSIONS {
            sessions
                .start("many", Role::View, Credential::Key(many_key(key)))
                .unwrap();
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.get(&first, true).is_none());
        let last = sessions
            .start("ops", Role::Admin, Credential::AdminToken)
            .unwrap();
        sessions.end(&last);
        assert!(sessions.get(&last, true).is_none());
    }
}
