//! Who may use the console, and from where (see docs/ui.md): a random token per
//! start, sent as `Authorization: Bearer` (never a cookie); single-use,
//! short-lived tickets for WebSockets; an exact Host allowlist against DNS
//! rebinding; Origin checks on every request that changes something and on
//! WebSocket upgrades; a strict CSP; and an audit log of what was changed.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a WebSocket ticket is good for.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// The headers every response carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The audit log stops growing past this; it is then moved to `.1` (one old
/// generation kept).
const AUDIT_MAX: u64 = 1 << 20;

/// 32 bytes from the OS's random number generator, in hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("the OS random number generator failed: {e}"),
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal, in a time that depends only on the lengths.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token, and the tickets handed out for it.
#[derive(Debug)]
pub struct Auth {
    token: String,
    tickets: Mutex<HashMap<String, Instant>>,
}

impl Auth {
    pub fn new(token: String) -> Auth {
        Auth {
            token,
            tickets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an `Authorization` header value carries the token.
    pub fn bearer_ok(&self, header: Option<&str>) -> bool {
        header
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|t| same(t.trim().as_bytes(), self.token.as_bytes()))
    }

    /// A new ticket for one WebSocket.
    pub fn ticket(&self) -> String {
        self.ticket_at(Instant::now())
    }

    /// A new ticket, handed out at time `now` (the clock is the caller's, so a
    /// test needn't wait); expired ones are forgotten.
    pub fn ticket_at(&self, now: Instant) -> String {
        let t = random_token();
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        tickets.retain(|_, at| now.saturating_duration_since(*at) < TICKET_TTL);
        tickets.insert(t.clone(), now);
        t
    }

    /// Use a ticket: true once, within its lifetime.
    pub fn redeem(&self, ticket: &str) -> bool {
        self.redeem_at(ticket, Instant::now())
    }

    /// Use a ticket at time `now`: true once, within its lifetime.
    pub fn redeem_at(&self, ticket: &str, now: Instant) -> bool {
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let found = tickets
            .keys()
            .find(|k| same(k.as_bytes(), ticket.as_bytes()))
            .cloned();
        match found.and_then(|k| tickets.remove(&k)) {
            Some(at) => now.saturating_duration_since(at) < TICKET_TTL,
            None => false,
        }
    }
}

/// The Host header values the console answers to.
#[derive(Debug, Clone)]
pub enum Hosts {
    /// Exactly these (`127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT`, and the
    /// listen address's own).
    Exact(Vec<String>),
    /// On a Unix socket, reached through a local forward of any port: the
    /// loopback names with any port.
    LoopbackAnyPort,
}

impl Hosts {
    pub fn for_port(port: u16, extra: Option<String>) -> Hosts {
        let mut v = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        v.extend(extra);
        Hosts::Exact(v)
    }

    pub fn allows(&self, host: &str) -> bool {
        match self {
            Hosts::Exact(v) => v.iter().any(|h| h.eq_ignore_ascii_case(host)),
            Hosts::LoopbackAnyPort => {
                let Some((name, port)) = host.rsplit_once(':') else {
                    return false;
                };
                port.parse::<u16>().is_ok()
                    && ["127.0.0.1", "localhost", "[::1]"]
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(name))
            }
        }
    }

    /// Whether `origin` (an Origin header) is this console's own.
    pub fn origin_ok(&self, origin: &str, host: &str) -> bool {
        self.allows(host)
            && origin
                .strip_prefix("http://")
                .is_some_and(|o| o.eq_ignore_ascii_case(host))
    }
}

/// The audit log of mutating actions: one line each, bounded.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    lock: Mutex<()>,
}

impl Audit {
    pub fn new(path: PathBuf) -> Audit {
        Audit {
            path,
            lock: Mutex::new(()),
        }
    }

    /// Record that `who` did `what` (a command line), and how it ended.
    pub fn record(&self, who: &str, what: &str, outcome: &str) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > AUDIT_MAX) {
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
        }
        let when = humantime_now();
        let line = format!(
            "{when} {} {} {}\n",
            one_line(who),
            one_line(what),
            one_line(outcome)
        );
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode_0600()
            .open(&self.path);
        match file {
            Ok(mut f) => {
                if let Err(e) = f.write_all(line.as_bytes()) {
                    tracing::warn!("cannot write the audit log {}: {e}", self.path.display());
                }
            }
            Err(e) => tracing::warn!("cannot open the audit log {}: {e}", self.path.display()),
        }
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// A field of an audit line: quoted where it could mislead, on one line.
fn one_line(text: &str) -> String {
    format!("{:?}", fvm_engine::os::quote::line(text).as_ref())
}

fn humantime_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_single_use() {
        let auth = Auth::new(random_token());
        let t = auth.ticket();
        assert!(auth.redeem(&t));
        assert!(!auth.redeem(&t));
        assert!(!auth.redeem("nope"));
    }

    #[test]
    fn a_ticket_expires_after_its_lifetime() {
        let auth = Auth::new(random_token());
        let t0 = Instant::now();
        let soon = auth.ticket_at(t0);
        assert!(auth.redeem_at(&soon, t0 + TICKET_TTL - Duration::from_millis(1)));
        let late = auth.ticket_at(t0);
        assert!(!auth.redeem_at(&late, t0 + TICKET_TTL));
        // Refused once expired, it is gone: no earlier clock brings it back.
        assert!(!auth.redeem_at(&late, t0));
        // Handing out a ticket forgets those that expired by then.
        let old = auth.ticket_at(t0);
        let _new = auth.ticket_at(t0 + TICKET_TTL + Duration::from_secs(1));
        assert!(!auth.redeem_at(&old, t0));
    }

    #[test]
    fn bearer_and_hosts() {
        let auth = Auth::new("abc".to_owned());
        assert!(auth.bearer_ok(Some("Bearer abc")));
        assert!(!auth.bearer_ok(Some("Bearer abd")));
        assert!(!auth.bearer_ok(Some("abc")));
        assert!(!auth.bearer_ok(None));
        let hosts = Hosts::for_port(8000, None);
        assert!(hosts.allows("localhost:8000"));
        assert!(hosts.allows("[::1]:8000"));
        assert!(!hosts.allows("evil.test:8000"));
        assert!(!hosts.allows("localhost:8001"));
        assert!(hosts.origin_ok("http://127.0.0.1:8000", "127.0.0.1:8000"));
        assert!(!hosts.origin_ok("http://127.0.0.1:8001", "127.0.0.1:8000"));
        assert!(!hosts.origin_ok("null", "127.0.0.1:8000"));
        assert!(Hosts::LoopbackAnyPort.allows("localhost:9"));
        assert!(!Hosts::LoopbackAnyPort.allows("evil.test:9"));
    }

    #[test]
    fn tokens_are_256_bits_in_hex() {
        let t = random_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, random_token());
    }
}
