//! The command line: global flags and one subcommand per verb.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fvm",
    version,
    about = "Featherweight virtual machines: copy-on-write clones of the running host",
    long_about = "Featherweight virtual machines: copy-on-write clones of the running host.\n\n\
        A VM sees the host's whole live filesystem, programs and configuration, and keeps \
        only its own changes, in its own namespaces and cgroup. fvm runs as root."
)]
pub struct Cli {
    /// Store directory holding the VMs
    #[arg(long, global = true, env = "FVM_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Machine-readable JSON output
    #[arg(long, global = true)]
    pub json: bool,

    /// More detail on stderr (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a stopped VM
    Create(CreateArgs),
    /// List VMs
    #[command(visible_alias = "ls")]
    List,
    /// Start a VM in the background
    Start(NameArg),
    /// Open an interactive login shell in a VM (starting it if needed)
    Shell(NameArg),
    /// Run a command in a VM (starting it for the command if it is stopped)
    Run(RunArgs),
    /// Stop a VM: SIGTERM to every process, SIGKILL after the grace time
    Stop(StopArgs),
    /// Freeze every process of a running VM (cgroup freezer) until resume
    Suspend(NameArg),
    /// Let a suspended VM's processes run again
    Resume(NameArg),
    /// List a running VM's processes: pid inside and on the host, user, %CPU,
    /// memory, start time, command
    Ps(NameArg),
    /// What VMs use: CPU time, memory (now and peak), processes, block I/O and
    /// private-layer size
    Stats(StatsArgs),
    /// Delete a VM and its private layers
    #[command(visible_alias = "rm")]
    Delete(DeleteArgs),
    /// Clone a stopped or suspended VM: its policy and its private layers
    #[command(visible_alias = "cp")]
    Copy(CopyArgs),
    /// Show everything known about a VM, as JSON
    Inspect(NameArg),
    /// What a VM changed: A (added), C (changed), D (deleted), sorted
    Diff(DiffArgs),
    /// Write a VM's changes (or those under PATHs) back to the host
    Commit(CommitArgs),
    /// Drop a stopped VM's changes under PATHs, so it sees the host's files there again
    Discard(DiscardArgs),
    /// Show a VM's policy, or change it
    Config(ConfigArgs),
    /// Check what this host supports
    Doctor(DoctorArgs),
    /// Show or set the store's bridge and subnet (for VMs with --net bridge)
    Network(NetworkArgs),
}

#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// The bridge bridged VMs attach to (must contain "fvm"; default fvm0)
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// Its subnet; the bridge gets the first address (default 10.77.0.0/24)
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The VM's name
    pub name: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The VM's name: [a-z0-9][a-z0-9_.-]{0,62}
    pub name: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Keep the VM's private layers in DIR (new or empty) instead of the store
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Policy flags shared by `create` and `config`.
#[derive(Debug, Args, Default)]
pub struct PolicyArgs {
    /// Free text describing the VM
    #[arg(long)]
    pub description: Option<String>,
    /// `unconfined` gives root in the VM every capability and no seccomp filter
    /// (trusted work only); `default` confines it
    #[arg(long, value_name = "MODE")]
    pub security: Option<String>,
    /// `volatile` skips syncing the VM's layers while it runs (fsync in the VM
    /// returns at once; synced when it stops; lost if the host goes down meanwhile);
    /// `disk` (default) writes them like any file
    #[arg(long, value_name = "disk|volatile")]
    pub layers: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Network settings (policy `[network]`); list flags add, `none` clears.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Network")]
pub struct NetArgs {
    /// host (the host's network), none (only lo) or bridge (its own address)
    #[arg(long = "net", value_name = "MODE")]
    pub mode: Option<String>,
    /// The VM's address on the bridge, e.g. 10.77.0.5/24 (default: the next free one)
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub ip: Option<String>,
    /// Masquerade the VM's traffic to beyond the bridge's subnet (--nat false: off)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub nat: Option<String>,
    /// A name server for the VM's own /etc/resolv.conf (repeatable)
    #[arg(long, value_name = "ADDR")]
    pub dns: Vec<String>,
    /// Let the VM reach CIDR[:PORT[/tcp|udp]] (repeatable)
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,
    /// Stop the VM from reaching CIDR[:PORT[/tcp|udp]], enforced on the host (repeatable)
    #[arg(long, value_name = "RULE")]
    pub deny: Vec<String>,
    /// Forward host port HOSTPORT to the VM's VMPORT, HOSTPORT:VMPORT[/tcp|udp] (repeatable)
    #[arg(long, value_name = "PORTS")]
    pub publish: Vec<String>,
}

impl NetArgs {
    /// The settings given, as (key, text), in flag order.
    pub fn given(&self) -> Vec<(fvm_engine::net::NetKey, &str)> {
        use fvm_engine::net::NetKey;
        let mut out: Vec<(NetKey, &str)> = Vec::new();
        out.extend(self.mode.as_deref().map(|v| (NetKey::Net, v)));
        out.extend(self.ip.as_deref().map(|v| (NetKey::Ip, v)));
        out.extend(self.nat.as_deref().map(|v| (NetKey::Nat, v)));
        for (key, list) in [
            (NetKey::Dns, &self.dns),
            (NetKey::Allow, &self.allow),
            (NetKey::Deny, &self.deny),
            (NetKey::Publish, &self.publish),
        ] {
            out.extend(list.iter().map(|v| (key, v.as_str())));
        }
        out
    }

    pub fn apply_to(
        &self,
        net: &mut fvm_engine::net::NetPolicy,
    ) -> Result<(), fvm_engine::net::NetError> {
        for (key, text) in self.given() {
            net.set(key, text)?;
        }
        Ok(())
    }
}

/// Resource limits (policy `[limits]`); `none` removes one.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Resource limits (`none` removes one)")]
pub struct LimitArgs {
    /// Memory of the whole VM, e.g. 512M or 2G
    #[arg(long, allow_hyphen_values = true, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Swap on top of memory (default 0 once memory is set)
    #[arg(long, allow_hyphen_values = true, value_name = "SIZE")]
    pub swap: Option<String>,
    /// Processes and threads in the VM
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub processes: Option<String>,
    /// CPU time, in cores, e.g. 0.5
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub cpus: Option<String>,
    /// Share of CPU under contention, 1-10000 (default 100)
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub cpu_weight: Option<String>,
    /// low, normal or high: a CPU share and the nice value of commands
    #[arg(long, allow_hyphen_values = true, value_name = "LEVEL")]
    pub priority: Option<String>,
    /// Address space of each process, e.g. 1G
    #[arg(long, allow_hyphen_values = true, value_name = "SIZE")]
    pub process_memory: Option<String>,
    /// CPU time of each process, e.g. 90s (then SIGXCPU, and SIGKILL 1 s later)
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION")]
    pub cpu_time: Option<String>,
    /// Open files of each process
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub open_files: Option<String>,
    /// Wall-clock lifetime of the VM, e.g. 10m or 1h30m; then it is stopped
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Disk space the VM's layers may take, e.g. 10G (writes past it fail with
    /// ENOSPC or EDQUOT)
    #[arg(long, allow_hyphen_values = true, value_name = "SIZE")]
    pub disk: Option<String>,
    /// Files and directories the VM's layers may hold
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub inodes: Option<String>,
}

impl LimitArgs {
    /// The limits given, as (key, text), in the order of the flags.
    pub fn given(&self) -> Vec<(fvm_engine::limits::Key, &str)> {
        use fvm_engine::limits::Key;
        [
            (Key::Memory, &self.memory),
            (Key::Swap, &self.swap),
            (Key::Processes, &self.processes),
            (Key::Cpus, &self.cpus),
            (Key::CpuWeight, &self.cpu_weight),
            (Key::Priority, &self.priority),
            (Key::ProcessMemory, &self.process_memory),
            (Key::CpuTime, &self.cpu_time),
            (Key::OpenFiles, &self.open_files),
            (Key::Timeout, &self.timeout),
            (Key::Disk, &self.disk),
            (Key::Inodes, &self.inodes),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }

    /// Apply the flags to `limits`.
    pub fn apply_to(
        &self,
        limits: &mut fvm_engine::limits::Limits,
    ) -> Result<(), fvm_engine::limits::LimitError> {
        for (key, text) in self.given() {
            limits.set(key, text)?;
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Create a throw-away VM for the command and delete it afterwards
    #[arg(long)]
    pub rm: bool,
    /// Always give the command a pty (default: when stdin, stdout or stderr is a
    /// terminal); output redirected to a file or pipe still bypasses it
    #[arg(
        short = 't',
        long,
        visible_short_alias = 'i',
        conflicts_with = "no_tty"
    )]
    pub tty: bool,
    /// Never give the command a pty (terminal streams are then relayed by pipes)
    #[arg(short = 'T', long)]
    pub no_tty: bool,
    /// Set NAME to VALUE in the command's environment, or pass the caller's NAME
    /// (`--env NAME`); the command otherwise gets a clean environment: PATH,
    /// HOME, USER, LOGNAME, SHELL and the locale from the VM's own files, TERM
    /// and FVM_NAME
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Read NAME=VALUE (or NAME) lines from FILE, before --env; blank lines and
    /// lines starting with # are skipped
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Limits for the throw-away VM (with --rm; a named VM has its policy)
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The VM (optional with --rm)
    pub name: Option<String>,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The VMs to show (all by default)
    pub names: Vec<String>,
    /// Refresh every INTERVAL seconds, with %CPU over each interval, until ^C
    #[arg(long, short, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1")]
    pub watch: Option<f64>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub name: String,
    /// Only changes at or under these paths (as the VM sees them; a relative
    /// path is taken from the current directory)
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub review: ReviewArgs,
}

/// How `fvm diff` shows changes.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// Also show copy-ups that changed nothing (same content and metadata as the
    /// host) and directories listed only because something in them changed
    #[arg(long)]
    pub all: bool,
    /// Counts (A/C/D) and bytes per directory, and a total
    #[arg(long, conflicts_with = "unified")]
    pub stat: bool,
    /// Each change in full: a unified diff of text files, sizes and sha256 of
    /// binaries, metadata before and after
    #[arg(long, short = 'u')]
    pub unified: bool,
    /// Colour the -u output: auto (on a terminal), always, never
    #[arg(long, value_name = "WHEN", default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub color: String,
}

#[derive(Debug, Args)]
pub struct DiscardArgs {
    pub name: String,
    /// Drop the VM's changes at or under these paths (as the VM sees them; a
    /// relative path is taken from the current directory)
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Print what would be dropped, and drop nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    pub name: String,
    /// Only changes at or under these paths (as the VM sees them; a relative
    /// path is taken from the current directory)
    pub paths: Vec<PathBuf>,
    /// Leave out the changes at or under this path (repeatable)
    #[arg(long, value_name = "PATH")]
    pub exclude: Vec<PathBuf>,
    /// Also commit copy-ups that changed nothing, which drops them from the VM's
    /// layer (without it they are left out, and stay in the layer)
    #[arg(long)]
    pub all: bool,
    /// Print what would be done, and do nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Commit even paths the host changed after the VM copied them (the VM wins)
    #[arg(long)]
    pub force: bool,
    /// Drop an interrupted commit that can't be finished (its temp files and its
    /// journal); host paths it already replaced keep the VM's version
    #[arg(long, conflicts_with_all = ["dry_run", "force", "paths", "exclude", "all"])]
    pub abort: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    pub name: String,
    /// Seconds to wait after SIGTERM before SIGKILL
    #[arg(long, short = 't', default_value_t = 10, value_name = "S")]
    pub time: u64,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub name: String,
    /// Stop the VM first if it is running
    #[arg(long, short)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The VM to clone (it must be stopped)
    pub src: String,
    /// The new VM's name: [a-z0-9][a-z0-9_.-]{0,62}
    pub dst: String,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    pub name: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also clean up after crashed VMs and commands (stale cgroups, leftovers)
    #[arg(long)]
    pub cleanup: bool,
}
