//! Logging in without a client certificate: one-time login links printed on
//! the console's machine, exchanged for a session cookie.
//!
//! ```text
//!  samkor console prints  http://127.0.0.1:47180/login?token=<64 hex>   (valid 15 min, once)
//!  GET  /login?token=…   a page with a "Log in as <user>" button (GET changes nothing)
//!  POST /login           Origin checked, token redeemed, session cookie set
//!                        (HttpOnly; SameSite=Strict; Path=/; Secure when served over TLS)
//!  POST /logout          Origin checked, session ended
//! ```
//! Only SHA-256 digests of tokens and session ids are kept, so a memory dump
//! or a log line never holds a usable one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a printed login link stays valid.
pub(crate) const LOGIN_LINK_TTL: Duration = Duration::from_secs(15 * 60);
/// The session cookie's name.
pub(crate) const COOKIE: &str = "samkor_console";

type Key = [u8; 32];

/// Pending login links and open sessions.
#[derive(Debug)]
pub(crate) struct Auth {
    logins: Mutex<HashMap<Key, (String, Instant)>>,
    sessions: Mutex<HashMap<Key, (String, Instant)>>,
    session_ttl: Duration,
}

/// A fresh random secret: 32 bytes from the operating system, as 64 hex digits.
fn secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random number generator");
    hex::encode(bytes)
}

fn key(secret: &str) -> Key {
    Sha256::digest(secret.as_bytes()).into()
}

impl Auth {
    pub(crate) fn new(session_ttl: Duration) -> Auth {
        Auth { logins: Mutex::default(), sessions: Mutex::default(), session_ttl }
    }

    /// A one-time login token for `user`.
    pub(crate) fn issue_login(&self, user: &str) -> String {
        let token = secret();
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        logins.retain(|_, (_, expires)| *expires > now);
        logins.insert(key(&token), (user.to_owned(), now + LOGIN_LINK_TTL));
        token
    }

    /// Whether `token` is a valid, unused login token (without using it).
    pub(crate) fn peek_login(&self, token: &str) -> Option<String> {
        let logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        logins.get(&key(token)).filter(|(_, expires)| *expires > Instant::now()).map(|(u, _)| u.clone())
    }

    /// Uses up `token`: its user, if it was valid.
    pub(crate) fn redeem_login(&self, token: &str) -> Option<String> {
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        logins.remove(&key(token)).filter(|(_, expires)| *expires > Instant::now()).map(|(u, _)| u)
    }

    /// Opens a session for `user`; returns the cookie value.
    pub(crate) fn open_session(&self, user: &str) -> String {
        let id = secret();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, (_, expires)| *expires > now);
        sessions.insert(key(&id), (user.to_owned(), now + self.session_ttl));
        id
    }

    /// The user of a live session.
    pub(crate) fn session_user(&self, id: &str) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(&key(id)).filter(|(_, expires)| *expires > Instant::now()).map(|(u, _)| u.clone())
    }

    pub(crate) fn close_session(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(id));
    }
}

/// The session id in a `Cookie` header, if any.
pub(crate) fn session_cookie(header: &str) -> Option<&str> {
    header.split(';').map(str::trim).find_map(|c| c.strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The `Set-Cookie` value of a new session.
pub(crate) fn set_cookie(id: &str, ttl: Duration, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}", ttl.as_secs())
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie(tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_tokens_work_once_and_sessions_end() {
        let auth = Auth::new(Duration::from_secs(60));
        let token = auth.issue_login("rita");
        assert_eq!(token.len(), 64);
        assert_eq!(auth.peek_login(&token).as_deref(), Some("rita"));
        assert_eq!(auth.redeem_login(&token).as_deref(), Some("rita"));
        assert_eq!(auth.redeem_login(&token), None, "a login link works once");
        assert_eq!(auth.redeem_login("00"), None);
        let id = auth.open_session("rita");
        assert_eq!(auth.session_user(&id).as_deref(), Some("rita"));
        auth.close_session(&id);
        assert_eq!(auth.session_user(&id), None);
        let expired = Auth::new(Duration::ZERO);
        let id = expired.open_session("rita");
        assert_eq!(expired.session_user(&id), None, "an expired session is no session");
    }

    #[test]
    fn cookies() {
        assert_eq!(session_cookie("a=1; samkor_console=abc; b=2"), Some("abc"));
        assert_eq!(session_cookie("samkor_consolex=abc"), None);
        let c = set_cookie("abc", Duration::from_secs(60), false);
        assert_eq!(c, "samkor_console=abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=60");
        assert!(set_cookie("abc", Duration::from_secs(60), true).ends_with("; Secure"));
    }
}
