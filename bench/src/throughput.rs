//! TCP throughput for the network benchmark: a receiver that reads and discards one
//! connection (`fvm-bench recv`, run on the host or, by its absolute path, inside a
//! VM, which sees the host's files) and the sender that times it.
//!
//! The receiver prints its port, accepts one connection, reads until EOF and
//! answers with the number of bytes it read; the sender's time runs from connect
//! to that answer, so every byte has been read on the other side.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::measure::describe;

/// Size of each read and write.
const CHUNK: usize = 1 << 20;
/// A receiver nobody connects to gives up after this long.
const RECEIVER_LIFETIME: Duration = Duration::from_secs(600);
/// How long the sender waits for the connection, and for any one write or read.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// `fvm-bench recv --listen ADDR`: bind, print the port, take one connection.
pub fn receive(listen: &str) -> Result<()> {
    std::thread::spawn(|| {
        std::thread::sleep(RECEIVER_LIFETIME);
        eprintln!("fvm-bench recv: nobody sent anything; giving up");
        std::process::exit(3);
    });
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let port = listener
        .local_addr()
        .context("reading the bound port")?
        .port();
    // stdout is line buffered: the port reaches the benchmark at once.
    println!("{port}");
    drain(&listener)?;
    Ok(())
}

/// Take one connection, read it to EOF and answer with the number of bytes read.
fn drain(listener: &TcpListener) -> Result<u64> {
    let (mut conn, _) = listener.accept().context("accepting")?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = conn.read(&mut buf).context("reading")?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    conn.write_all(&total.to_le_bytes())
        .context("acknowledging")?;
    Ok(total)
}

/// A receiver started by `cmd` (`fvm-bench recv …`, perhaps through `fvm run`),
/// killed if it is dropped before [`Receiver::finish`].
#[derive(Debug)]
pub struct Receiver {
    child: Option<Child>,
    shown: String,
    pub port: u16,
}

impl Receiver {
    /// Spawn it and wait until it listens.
    pub fn spawn(cmd: &mut Command) -> Result<Receiver> {
        let shown = describe(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {shown}"))?;
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        let mut receiver = Receiver {
            child: Some(child),
            shown,
            port: 0,
        };
        match (read, line.trim().parse()) {
            (Some(Ok(_)), Ok(port)) => {
                receiver.port = port;
                Ok(receiver)
            }
            _ => {
                let why = receiver
                    .wait()
                    .err()
                    .map_or(String::new(), |e| format!("{e:#}"));
                bail!(
                    "{} did not report its port (printed {:?}) {why}",
                    receiver.shown,
                    line.trim()
                )
            }
        }
    }

    /// Wait for it to exit after its connection; an error if it failed.
    pub fn finish(mut self) -> Result<()> {
        self.wait()
    }

    fn wait(&mut self) -> Result<()> {
        let Some(child) = self.child.take() else {
            return Ok(());
        };
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {}", self.shown))?;
        if !out.status.success() {
            bail!(
                "{} exited with {}: {}",
                self.shown,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Send `bytes` over one new connection to `addr`; the time from connect until the
/// receiver acknowledged all of them.
pub fn send(addr: SocketAddr, bytes: u64) -> Result<Duration> {
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut conn = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        conn.write_all(&buf[..n])
            .with_context(|| format!("sending to {addr}"))?;
        left -= n as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut ack = [0u8; 8];
    conn.read_exact(&mut ack)
        .with_context(|| format!("waiting for {addr} to acknowledge"))?;
    let took = start.elapsed();
    let got = u64::from_le_bytes(ack);
    if got != bytes {
        bail!("{addr} received {got} bytes of {bytes}");
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_sent_is_read_and_acknowledged() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || drain(&listener).unwrap());
        let bytes = 3 * CHUNK as u64 + 17;
        assert!(send(addr, bytes).unwrap() > Duration::ZERO);
        assert_eq!(reader.join().unwrap(), bytes);
    }

    #[test]
    fn a_receiver_reports_its_port_and_its_failure() {
        let mut ok = Command::new("/bin/sh");
        ok.args(["-c", "echo 4711"]);
        let receiver = Receiver::spawn(&mut ok).unwrap();
        assert_eq!(receiver.port, 4711);
        receiver.finish().unwrap();

        let mut bad = Command::new("/bin/sh");
        bad.args(["-c", "echo cannot bind >&2; exit 1"]);
        let err = format!("{:#}", Receiver::spawn(&mut bad).unwrap_err());
        assert!(err.contains("did not report its port"), "{err}");
        assert!(err.contains("cannot bind"), "{err}");
    }
}
