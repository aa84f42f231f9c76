//! Browser shells: each a new shell in a VM (`fvm shell NAME`, never its init)
//! on a pty the server holds. A session outlives the page that opened it: a tab
//! switch or a reload reattaches to it and gets its scrollback replayed. It ends
//! when its shell exits, or after [`IDLE`] with no page attached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use crate::backend::ShellCommand;

/// Output kept for a reattaching page.
pub const SCROLLBACK: usize = 256 * 1024;
/// A session no page has looked at for this long is ended.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// Sessions at most (each is a process tree in a VM).
pub const MAX_SESSIONS: usize = 32;

/// What a session sends its pages.
#[derive(Debug, Clone)]
pub enum Event {
    Output(Arc<[u8]>),
    Ended,
}

#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub vm: String,
    input: tokio::sync::Mutex<pty_process::OwnedWritePty>,
    scrollback: Mutex<VecDeque<u8>>,
    events: broadcast::Sender<Event>,
    /// Pages attached now, and when the last one left.
    attached: Mutex<(usize, Instant)>,
    ended: Mutex<bool>,
    child: Mutex<Option<tokio::process::Child>>,
}

impl Session {
    /// Attach a page: the scrollback so far, and what comes next.
    pub fn attach(&self) -> (Vec<u8>, broadcast::Receiver<Event>) {
        let sb = self.scrollback.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.events.subscribe();
        let mut a = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        a.0 += 1;
        (sb.iter().copied().collect(), rx)
    }

    pub fn detach(&self) {
        let mut a = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        a.0 = a.0.saturating_sub(1);
        a.1 = Instant::now();
    }

    pub fn ended(&self) -> bool {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn input(&self, data: &[u8]) -> std::io::Result<()> {
        let mut w = self.input.lock().await;
        w.write_all(data).await
    }

    pub async fn resize(&self, cols: u16, rows: u16) {
        let w = self.input.lock().await;
        // TIOCSWINSZ on the pty: the shell gets SIGWINCH.
        let _ = w.resize(pty_process::Size::new(
            rows.clamp(2, 500),
            cols.clamp(2, 1000),
        ));
    }

    /// End the session: its shell is killed.
    pub fn end(&self) {
        if let Some(child) = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let _ = child.start_kill();
        }
    }
}

#[derive(Debug, Default)]
pub struct Shells {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Shells {
    pub fn get(&self, id: &str, vm: &str) -> Option<Arc<Session>> {
        let all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        all.get(id).filter(|s| s.vm == vm && !s.ended()).cloned()
    }

    /// Start `cmd` on a new pty of `cols` x `rows`.
    pub fn open(
        self: &Arc<Self>,
        vm: &str,
        cmd: ShellCommand,
        cols: u16,
        rows: u16,
    ) -> Result<Arc<Session>, String> {
        if self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            >= MAX_SESSIONS
        {
            return Err(format!(
                "{MAX_SESSIONS} shells are open already; exit one first"
            ));
        }
        let (pty, pts) = pty_process::open().map_err(|e| format!("cannot open a pty: {e}"))?;
        pty.resize(pty_process::Size::new(
            rows.clamp(2, 500),
            cols.clamp(2, 1000),
        ))
        .map_err(|e| format!("cannot size the pty: {e}"))?;
        let mut command = pty_process::Command::new(&cmd.program)
            .args(&cmd.args)
            .env("TERM", "xterm-256color")
            .kill_on_drop(true);
        if let Some(dir) = &cmd.dir {
            command = command.current_dir(dir);
        }
        let child = command
            .spawn(pts)
            .map_err(|e| format!("cannot start a shell: {e}"))?;
        let (mut read, write) = pty.into_split();
        let (events, _) = broadcast::channel(256);
        let session = Arc::new(Session {
            id: crate::security::random_token(),
            vm: vm.to_owned(),
            input: tokio::sync::Mutex::new(write),
            scrollback: Mutex::new(VecDeque::new()),
            events,
            attached: Mutex::new((0, Instant::now())),
            ended: Mutex::new(false),
            child: Mutex::new(Some(child)),
        });
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.id.clone(), session.clone());
        let (shells, s) = (self.clone(), session.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let chunk: Arc<[u8]> = buf[..n].into();
                        {
                            let mut sb = s.scrollback.lock().unwrap_or_else(|e| e.into_inner());
                            sb.extend(chunk.iter());
                            let over = sb.len().saturating_sub(SCROLLBACK);
                            sb.drain(..over);
                        }
                        let _ = s.events.send(Event::Output(chunk));
                    }
                }
            }
            // The shell exited (its pty closed): reap it, and tell the pages.
            let child = s.child.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(mut child) = child {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            *s.ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
            let _ = s.events.send(Event::Ended);
            shells
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&s.id);
        });
        Ok(session)
    }

    /// End sessions no page has looked at for [`IDLE`].
    pub fn reap_idle(&self) {
        self.reap_idle_at(Instant::now());
    }

    /// End sessions no page has looked at for [`IDLE`] at time `now`, and say
    /// how many (the clock is the caller's, so a test needn't wait).
    pub fn reap_idle_at(&self, now: Instant) -> usize {
        let all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = 0;
        for s in all.values() {
            let a = s.attached.lock().unwrap_or_else(|e| e.into_inner());
            if a.0 == 0 && now.saturating_duration_since(a.1) > IDLE {
                s.end();
                ended += 1;
            }
        }
        ended
    }

    pub fn end_all(&self) {
        for s in self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            s.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Until the session's shell has ended (a guard against a hang, not a
    /// timing assertion).
    async fn ended(rx: &mut broadcast::Receiver<Event>) {
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(Event::Ended) | Err(broadcast::error::RecvError::Closed) => return,
                    Ok(Event::Output(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("the shell ended");
    }

    #[test]
    fn a_detached_session_is_reaped_after_its_idle_time_and_an_attached_one_never() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let shells = Arc::new(Shells::default());
            let sh = ShellCommand {
                program: "/bin/sh".into(),
                args: Vec::new(),
                dir: None,
            };
            let s = shells.open("web1", sh, 80, 24).expect("a shell");
            let (_, mut rx) = s.attach();
            // A page is attached: kept however long it stays.
            assert_eq!(shells.reap_idle_at(Instant::now() + IDLE * 100), 0);
            let before = Instant::now();
            s.detach();
            let after = Instant::now();
            // Detached for less than its idle time: kept.
            let within = before + IDLE - Duration::from_secs(1);
            assert_eq!(shells.reap_idle_at(within), 0);
            assert!(shells.get(&s.id, "web1").is_some());
            // Past it: ended, and gone from the sessions.
            assert_eq!(
                shells.reap_idle_at(after + IDLE + Duration::from_secs(1)),
                1
            );
            ended(&mut rx).await;
            assert!(s.ended());
            assert!(shells.get(&s.id, "web1").is_none());
        });
    }

    #[test]
    fn a_page_coming_back_keeps_its_session() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let shells = Arc::new(Shells::default());
            let sh = ShellCommand {
                program: "/bin/sh".into(),
                args: Vec::new(),
                dir: None,
            };
            let s = shells.open("web1", sh, 80, 24).expect("a shell");
            s.attach();
            s.detach();
            // Attached again before the reaper looks: its idle time starts over
            // when that page leaves.
            let (_, mut rx) = s.attach();
            assert_eq!(shells.reap_idle_at(Instant::now() + IDLE * 2), 0);
            s.detach();
            let left = Instant::now();
            assert_eq!(shells.reap_idle_at(left + IDLE / 2), 0);
            assert!(!s.ended());
            shells.end_all();
            ended(&mut rx).await;
        });
    }
}
