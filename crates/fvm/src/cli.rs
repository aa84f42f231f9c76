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
        only its own changes, in its own namespaces and cgroup. fvm runs as root (--help, \
        --version, completions and doctor work without).",
    after_help = crate::help::EXIT_STATUS
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
    List(ListArgs),
    /// Start VMs in the background (and their services)
    Start(StartArgs),
    /// Open an interactive login shell in a VM (starting it if needed)
    Shell(ShellArgs),
    /// Run a command in a VM (starting it for the command if it is stopped)
    Run(RunArgs),
    /// Stop VMs: hang up their terminal sessions, SIGTERM to every process, SIGKILL after the grace time
    Stop(StopArgs),
    /// Freeze every process of running VMs (cgroup freezer) until resume
    Suspend(NamesArg),
    /// Let suspended VMs' processes run again
    Resume(NamesArg),
    /// List a running VM's processes: pid inside and on the host, user, %CPU,
    /// memory, start time, command
    Ps(NameArg),
    /// What VMs use: CPU time, memory (now and peak), processes, block I/O and
    /// private-layer size
    Stats(StatsArgs),
    /// Delete VMs and their private layers
    ///
    /// Each VM is gone from the store at once; its layers (in the store or in its
    /// --dir) are removed right after by a process of their own, and what a crash
    /// leaves of them is removed by the next command on the store.
    #[command(visible_alias = "rm")]
    Delete(DeleteArgs),
    /// Clone a stopped or suspended VM: its policy and its private layers (a
    /// running VM is refused)
    #[command(visible_alias = "cp")]
    Copy(CopyArgs),
    /// Show everything known about a VM, as JSON
    Inspect(NameArg),
    /// What a VM changed: A (added), C (changed), D (deleted), sorted
    Diff(DiffArgs),
    /// Write a VM's changes (or those under PATHs) back to the host
    Commit(CommitArgs),
    /// Drop a stopped VM's changes under PATHs, so it sees the host's files there again
    ///
    /// A running or suspended VM is refused (its layer is in use; stop it first);
    /// --dry-run works on any VM.
    Discard(DiscardArgs),
    /// Show a VM's policy, or change it
    Config(ConfigArgs),
    /// Check what this host supports
    Doctor(DoctorArgs),
    /// Show or set the store's bridge and subnet (for VMs with --net bridge)
    Network(NetworkArgs),

    /// Print the shell code that completes fvm's commands, flags and VM names
    Completions(CompletionsArgs),
    /// Write the man pages of fvm and its commands into a directory
    #[command(hide = true)]
    Man(ManArgs),
    /// Start, stop or restart a running VM's services, or show their status
    Service(ServiceArgs),
    /// Show the output of a VM's services and detached commands (run -d)
    Logs(LogsArgs),
    /// Serve the web console: the VM list, changes with commit and discard, graphs,
    /// processes, policy, services and logs, and a browser shell, on loopback
    /// with a token printed once
    Ui(UiArgs),
    /// Be an OCI runtime for container engines, with runc's command line
    /// (`fvm oci --help`; also installed as fvm-runc); see docs/fleet.md
    Oci(OciArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh or fish
    #[arg(value_parser = ["bash", "zsh", "fish"])]
    pub shell: String,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write fvm.1 and fvm-COMMAND.1
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only VMs whose name matches PATTERN (a glob: *, ?, [a-z])
    #[arg(value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// Only VMs in this status: running, suspended, stopped or broken (repeatable)
    #[arg(long, value_name = "STATUS", value_parser = ["running", "suspended", "stopped", "broken"])]
    pub status: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NamesArg {
    /// The VMs' names, each done in turn
    #[arg(required = true, add = crate::complete::vm_names())]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The VM's name
    #[arg(add = crate::complete::vm_names())]
    pub name: String,
    /// Log in as USER (a name or UID[:GID] of the VM's own /etc/passwd) instead
    /// of root
    #[arg(long, short, value_name = "USER")]
    pub user: Option<String>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The VMs' names, each done in turn
    #[arg(required_unless_present = "autostart", add = crate::complete::vm_names())]
    pub names: Vec<String>,
    /// Start every VM marked `--autostart true` instead (what the host runs at
    /// boot, see dist/systemd/fvm-autostart.service); the exit status is 1 if any
    /// of them could not start
    #[arg(long, conflicts_with = "names")]
    pub autostart: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  fvm service web status\n  fvm service web nginx restart\n  fvm service web stop"
)]
pub struct ServiceArgs {
    /// The VM's name
    #[arg(add = crate::complete::vm_names())]
    pub name: String,
    /// [SERVICE] ACTION: the service (all when left out), then start, stop,
    /// restart or status
    #[arg(num_args = 1..=2, required = true, value_name = "[SERVICE] ACTION")]
    pub args: Vec<String>,
    /// Seconds a stop or restart gives each service after SIGTERM before SIGKILL
    #[arg(long, short = 't', default_value_t = 10, value_name = "S")]
    pub time: u64,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The VM's name
    #[arg(add = crate::complete::vm_names())]
    pub name: String,
    /// Only this service's output (`run` for the detached commands)
    pub service: Option<String>,
    /// Keep printing new lines as they are written, until ^C or the VM stops
    #[arg(long, short)]
    pub follow: bool,
    /// Only lines written since TIME: 2026-01-02T03:04:05Z, or a duration back
    /// from now (10m, 1h30m)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only the last N lines
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<usize>,
}

/// `fvm ui`: where it listens and who may use it (see docs/ui.md).
#[derive(Debug, Args)]
pub struct UiArgs {
    /// Listen on this loopback address and port (port 0: any free one)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Listen on a Unix socket instead; peers are let in by their credentials
    /// (root, --allow-uid, --allow-gid)
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// Let --listen name an address that is not loopback (the console is a root
    /// shell on clones of this host: put TLS and more in front of it)
    #[arg(long)]
    pub allow_remote: bool,
    /// Show only: no operations, no shells
    #[arg(long)]
    pub read_only: bool,
    /// A uid besides root that may connect to --socket (repeatable)
    #[arg(long, value_name = "UID", requires = "socket")]
    pub allow_uid: Vec<u32>,
    /// A gid whose members may connect to --socket (repeatable)
    #[arg(long, value_name = "GID", requires = "socket")]
    pub allow_gid: Vec<u32>,
    /// Serve fixed, made-up VMs instead of the store (for trying the console and
    /// for its tests); commits land in DIR/host
    #[arg(long, value_name = "DIR", hide = true)]
    pub fake_backend: Option<PathBuf>,
    /// What committing PATHS of VM NAME would do, as JSON (run by the console
    /// itself, in a process of its own)
    #[arg(long, value_name = "NAME", hide = true)]
    pub commit_plan: Option<String>,
    /// The host's and VM NAME's version of the path after `--`, as JSON (run by
    /// the console itself for a VM whose layers are a disk image)
    #[arg(long, value_name = "NAME", hide = true, conflicts_with = "commit_plan")]
    pub preview: Option<String>,
    #[arg(last = true, hide = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct OciArgs {
    /// The runtime's global flags, command and arguments
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// The bridge bridged VMs attach to (must contain "fvm"; default fvm0)
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// Its subnet; the bridge gets the first address (default 10.77.0.0/24)
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Where the store's resolver forwards names that are not VMs' (repeatable;
    /// `none`: the host's /etc/resolv.conf name servers, the default)
    #[arg(long, value_name = "IP[:PORT]")]
    pub upstream_dns: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The VM's name
    #[arg(add = crate::complete::vm_names())]
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
    /// Masquerade the VM's traffic to beyond the bridge's subnet: on by default
    /// for a bridged VM (--nat false: off; --nat default: back to the default)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub nat: Option<String>,
    /// A name server for the VM's own /etc/resolv.conf (repeatable; default: the
    /// store's resolver on the bridge, which knows the other VMs' names)
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
    /// Run the command as USER (a name or UID[:GID] of the VM's own /etc/passwd)
    /// instead of root, with that user's groups, HOME and SHELL
    #[arg(long, short, value_name = "USER")]
    pub user: Option<String>,
    /// Limits for the throw-away VM (with --rm; a named VM has its policy)
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Start the command in the background and return at once (starting the VM
    /// if it is stopped, and leaving it running); its output goes to the VM's
    /// logs (fvm logs VM run), its stdin is /dev/null
    #[arg(short = 'd', long, conflicts_with_all = ["rm", "tty"])]
    pub detach: bool,
    /// The network of the throw-away VM (with --rm; a named VM has its policy)
    #[command(flatten)]
    pub net: NetArgs,
    /// For job runners (with --rm)
    #[command(flatten)]
    pub job: JobArgs,
    /// The VM (optional with --rm)
    #[arg(add = crate::complete::vm_names())]
    pub name: Option<String>,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What a job runner (a batch scheduler, xargs) asks of a throw-away VM.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// When the command ends (also when it fails), write what the VM changed to
    /// FILE as JSON (the output of `fvm diff --json`), replacing FILE at once
    #[arg(long, value_name = "FILE", requires = "rm")]
    pub diff_out: Option<PathBuf>,
    /// Make the VM's cgroup inside this cgroup (its path from the hierarchy's
    /// root, as /proc/self/cgroup shows it), e.g. a batch job's, so that its
    /// accounting and its kill reach the VM
    #[arg(long, value_name = "PATH", requires = "rm")]
    pub cgroup_parent: Option<String>,
    /// Seconds the VM gets to stop after SIGINT or SIGTERM to fvm, before its
    /// processes are killed
    #[arg(long, value_name = "S", default_value_t = 10, requires = "rm")]
    pub stop_time: u64,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The VMs to show (all by default)
    #[arg(add = crate::complete::vm_names())]
    pub names: Vec<String>,
    /// Refresh every INTERVAL seconds, with %CPU over each interval, until ^C
    #[arg(long, short, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1")]
    pub watch: Option<f64>,
    /// With --watch: stop after N samples
    #[arg(long, short = 'n', value_name = "N", requires = "watch")]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[arg(add = crate::complete::vm_names())]
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
    #[arg(add = crate::complete::vm_names())]
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
    /// The VMs' names, each done in turn
    #[arg(required_unless_present = "autostart", add = crate::complete::vm_names())]
    pub names: Vec<String>,
    /// Stop every running VM marked `--autostart true` instead (at host shutdown)
    #[arg(long, conflicts_with = "names")]
    pub autostart: bool,
    /// Seconds to wait after SIGTERM before SIGKILL
    #[arg(long, short = 't', default_value_t = 10, value_name = "S")]
    pub time: u64,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The VMs' names, each done in turn
    #[arg(required = true, add = crate::complete::vm_names())]
    pub names: Vec<String>,
    /// Stop the VM first if it is running
    #[arg(long, short)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The VM to clone: stopped, or suspended (its processes stay frozen while
    /// its layers are copied); a running VM is refused
    #[arg(add = crate::complete::vm_names())]
    pub src: String,
    /// The new VM's name: [a-z0-9][a-z0-9_.-]{0,62}
    pub dst: String,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[arg(add = crate::complete::vm_names())]
    pub name: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub services: ServiceConfigArgs,
}

/// `fvm config` flags for services and autostart.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Services")]
pub struct ServiceConfigArgs {
    /// Add a service run by /bin/sh -c (NAME=CMD, appended to the start order) or
    /// replace its command; remove it with NAME= (or --no-service NAME); set one
    /// of its keys with NAME.KEY=VALUE: env (VAR=VALUE sets, VAR removes), workdir,
    /// user, restart (no, on-failure, always), pidfile (a daemon that forks:
    /// where it writes its pid); an empty VALUE clears a key (repeatable)
    #[arg(long = "service", value_name = "NAME[.KEY]=VALUE")]
    pub service: Vec<String>,
    /// Remove a service (repeatable)
    #[arg(long = "no-service", value_name = "NAME")]
    pub no_service: Vec<String>,
    /// Start the VM when the host boots (true or false; see fvm start --autostart)
    #[arg(long, value_name = "true|false")]
    pub autostart: Option<bool>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also clean up after crashed VMs and commands (stale cgroups, leftovers)
    #[arg(long)]
    pub cleanup: bool,
}
