//! Start a VM: clone its first process into new namespaces and wait until the VM is
//! assembled. The steps, in order and with their reasons, are in
//! docs/vm-lifecycle.md; this is the host side, `init` the VM side.

use std::io::{self, Write};
use std::os::fd::AsFd;

use rustix::process::{Pid, WaitOptions};

use super::channel::{Channel, Msg};
use super::command::CommandSpec;
use super::control::ControlPipe;
use super::init;
use super::stdio::{Pipes, StdioPlan};
use crate::cgroup::{CgroupError, VmCgroup};
use crate::mounts::{Layout, MountPlan};
use crate::os::sys;
use crate::store::StartMode;

/// Everything the VM's first process needs; it reads this from its copy of our
/// memory, so nothing is serialized.
#[derive(Debug)]
pub struct LaunchSpec {
    pub name: String,
    pub plan: MountPlan,
    pub layout: Layout,
    pub mode: StartMode,
    /// The command to run first (`fvm run`/`shell` on a stopped VM), and how its
    /// stdio connects to the caller's.
    pub command: Option<CommandSpec>,
    pub stdio: StdioPlan,
    /// Namespaces to create, from [`crate::os::sys::ns`]. The cgroup namespace is made by
    /// the init itself, after it has joined the VM's cgroup.
    pub namespaces: u64,
    /// Seconds after which the init stops the VM (the policy's `timeout`).
    pub timeout: Option<u64>,
    /// The init drops to the VM's capabilities once the VM runs.
    pub confined: bool,
    /// Name servers for the VM's own /etc/resolv.conf (none: keep the host's).
    pub dns: Vec<std::net::Ipv4Addr>,
    /// The services the init starts once the VM runs (in the background mode),
    /// with the VM's per-process limits and confinement (see `runtime::services`).
    pub services: Vec<crate::store::service::Service>,
    pub service_limits: crate::limits::ProcessLimits,
    pub service_confine: crate::confine::Confinement,
    /// The VM's logs directory in the store, which the init opens before the
    /// VM's root replaces the host's (see [`crate::logs`]).
    pub logs: Option<std::path::PathBuf>,
    /// A throw-away VM: when the `fvm` that waits for its command dies (SIGKILL),
    /// the init kills every process of the VM and exits, so nothing of it runs on
    /// unseen; the next command on the store deletes what is left.
    pub end_with_caller: bool,
    /// The init waits, once the VM is assembled, for a start message on its
    /// control pipe before it runs the command (an OCI container's `create`,
    /// then `start`). A stop signal meanwhile ends it.
    pub parked: bool,
    /// A network namespace the init joins before it assembles the VM (an OCI
    /// container's, by path), instead of the one it was cloned into.
    pub netns: Option<std::os::fd::OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot create the channel to the vm's init")]
    Channel(#[source] io::Error),
    #[error("cannot create the vm's first process")]
    Clone(#[source] io::Error),
    #[error("{0}")]
    Setup(String),
    #[error("the vm's init exited while the vm was being set up")]
    InitDied,
}

/// A VM whose init is set up and waiting for [`Launched::go`].
#[derive(Debug)]
pub struct Launched {
    pub pid: Pid,
    pub chan: Channel,
    /// The write end of the init's control pipe, by its fd number in the init.
    pub control_fd: i32,
    /// fvm's end of the init's request socket, by its fd number in the init.
    pub request_fd: i32,
}

impl Launched {
    /// Tell the init its pid is recorded; it may run the VM now.
    /// The init may get this before it is ready; it reads it once the VM is
    /// assembled, so recording the state overlaps with that work.
    pub fn go(&self) -> io::Result<()> {
        self.chan.send(&Msg::Go, None)
    }

    /// Wait until the VM is assembled. On failure the init has exited and is reaped.
    pub fn ready(&self) -> Result<(), LaunchError> {
        match self.chan.recv() {
            Ok(Some((Msg::Ready, _))) => Ok(()),
            Ok(Some((Msg::Failed { error }, _))) => {
                self.reap();
                Err(LaunchError::Setup(error))
            }
            _ => {
                self.reap();
                Err(LaunchError::InitDied)
            }
        }
    }

    /// Reap the init after it has exited (it is our child).
    pub fn reap(&self) {
        let _ = rustix::process::waitpid(Some(self.pid), WaitOptions::empty());
    }
}

/// Clone the VM's init, which starts assembling the VM at once; see
/// [`Launched::go`] and [`Launched::ready`]. The calling process must be
/// single-threaded.
/// `pipes` are the command's ends of the relay pipes, which the init takes its
/// own copies of.
pub fn launch(
    spec: &LaunchSpec,
    pipes: Pipes<'_>,
    cgroup: &VmCgroup,
) -> Result<Launched, LaunchError> {
    let entry = cgroup.entry()?;
    let (ours, theirs) = Channel::pair().map_err(LaunchError::Channel)?;
    let control = ControlPipe::new().map_err(LaunchError::Channel)?;
    // The child's fd table is a copy of ours: same numbers.
    let control_fd = std::os::fd::AsRawFd::as_raw_fd(&control.write);
    let request_fd = std::os::fd::AsRawFd::as_raw_fd(&control.requests_in);
    // The child starts with a copy of our buffers; flush so nothing prints twice.
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // The init takes `entry` (to join the cgroup on v1, then close it); the clone
    // needs its directory on v2, so it gets a duplicate, which the init closes
    // with every other file it does not keep.
    let into = entry
        .clone_into()
        .map(|fd| fd.try_clone_to_owned())
        .transpose()
        .map_err(LaunchError::Clone)?;
    // The init's copy of `ours` goes with every other inherited file it does not
    // keep (see `init::setup`); here the unrun closure drops what was the init's.
    let pid = sys::spawn_in(
        spec.namespaces,
        into.as_ref().map(|fd| fd.as_fd()),
        |forked| init::run(forked, spec, pipes, theirs, entry, control),
    )
    .map_err(LaunchError::Clone)?;
    Ok(Launched {
        pid,
        chan: ours,
        control_fd,
        request_fd,
    })
}
