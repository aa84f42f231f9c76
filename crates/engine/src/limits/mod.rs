//! A VM's resource limits: what the policy's `[limits]` table says, checked.
//!
//! Two kinds of limit, enforced in two places:
//! - the VM as a whole (`memory`, `swap`, `processes`, `cpus`, `cpu-weight`,
//!   `priority`'s weight) lives in the VM's cgroup, which the kernel enforces for
//!   every process the VM ever has; see `crate::cgroup` for the files;
//! - each process (`process-memory`, `cpu-time`, `open-files`, `priority`'s nice
//!   value) is an rlimit or nice value set on every command fvm starts in the VM
//!   ([`ProcessLimits`]), inherited by whatever that command starts;
//! - `timeout` is kept by the VM's init, which stops the VM when it runs out;
//! - `disk` and `inodes` hold the VM's layers: project quotas on the layers'
//!   filesystem, or the size of the tmpfs of a throw-away VM (see
//!   `crate::mounts::disk`).
//!
//! Every value has a floor below which a VM can't start or a limit makes no sense;
//! a value under it is an error, never rounded up.

pub mod units;

use serde::{Deserialize, Serialize};

pub use units::{Cpus, Seconds, Size, human_bytes};

/// `priority`: a named CPU share and nice value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl Priority {
    pub fn parse(text: &str) -> Result<Priority, String> {
        match text.trim() {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            other => Err(format!(
                "{} is not a priority (low, normal or high)",
                units::shown(other)
            )),
        }
    }

    /// The CPU weight (cgroup v2 scale, where 100 is every cgroup's default).
    pub fn weight(self) -> u32 {
        match self {
            Priority::Low => 25,
            Priority::Normal => 100,
            Priority::High => 400,
        }
    }

    /// The nice value of the VM's commands.
    pub fn nice(self) -> i32 {
        match self {
            Priority::Low => 10,
            Priority::Normal => 0,
            Priority::High => -5,
        }
    }
}

/// The `[limits]` table of a policy. Every key is optional; a missing key is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_memory: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<Seconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Seconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
}

/// One key of [`Limits`], as `create` and `config` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Memory,
    Swap,
    Processes,
    Cpus,
    CpuWeight,
    Priority,
    ProcessMemory,
    CpuTime,
    OpenFiles,
    Timeout,
    Disk,
    Inodes,
}

impl Key {
    pub const ALL: [Key; 12] = [
        Key::Memory,
        Key::Swap,
        Key::Processes,
        Key::Cpus,
        Key::CpuWeight,
        Key::Priority,
        Key::ProcessMemory,
        Key::CpuTime,
        Key::OpenFiles,
        Key::Timeout,
        Key::Disk,
        Key::Inodes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Key::Memory => "memory",
            Key::Swap => "swap",
            Key::Processes => "processes",
            Key::Cpus => "cpus",
            Key::CpuWeight => "cpu-weight",
            Key::Priority => "priority",
            Key::ProcessMemory => "process-memory",
            Key::CpuTime => "cpu-time",
            Key::OpenFiles => "open-files",
            Key::Timeout => "timeout",
            Key::Disk => "disk",
            Key::Inodes => "inodes",
        }
    }

    /// Whether the key is a per-process limit, which reaches only processes
    /// started after it changes.
    pub fn per_process(self) -> bool {
        matches!(
            self,
            Key::ProcessMemory | Key::CpuTime | Key::OpenFiles | Key::Priority
        )
    }

    /// Whether the key limits the VM's layers.
    pub fn on_disk(self) -> bool {
        matches!(self, Key::Disk | Key::Inodes)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A limit that can't be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key} limit: {reason}")]
pub struct LimitError {
    pub key: Key,
    pub reason: String,
}

impl LimitError {
    fn new(key: Key, reason: impl Into<String>) -> LimitError {
        LimitError {
            key,
            reason: reason.into(),
        }
    }
}

/// The least memory a VM needs to start its init and a shell.
pub const MIN_MEMORY: Size = Size(32 << 20);
/// The least address space a dynamically linked program needs to start.
pub const MIN_PROCESS_MEMORY: Size = Size(16 << 20);
/// The init, the command, and a pipeline of two.
pub const MIN_PROCESSES: u64 = 4;
/// The smallest quota the scheduler takes: 1 ms per 100 ms period.
pub const MIN_CPUS: Cpus = Cpus(1);
/// stdin, stdout, stderr, and the libraries a program opens while it starts.
pub const MIN_OPEN_FILES: u64 = 16;
/// The layer directories of every host mount, and room for the VM to start.
pub const MIN_DISK: Size = Size(4 << 20);
/// As [`MIN_DISK`], in files and directories.
pub const MIN_INODES: u64 = 1000;
/// cgroup v2's cpu.weight range.
pub const CPU_WEIGHT_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;

/// The limits that are set, as `create` takes them: `memory=512M processes=100`,
/// or `none`.
impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: Vec<String> = Key::ALL
            .into_iter()
            .filter_map(|k| Some(format!("{}={}", k.name(), self.get(k)?)))
            .collect();
        if set.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&set.join(" "))
        }
    }
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self == &Limits::default()
    }

    /// Set `key` from the text a user typed; `none` removes the limit. The result
    /// is not checked as a whole: see [`Limits::validate`].
    pub fn set(&mut self, key: Key, text: &str) -> Result<(), LimitError> {
        let err = |reason: String| LimitError::new(key, reason);
        let none = text.trim() == "none";
        let count = |text: &str| {
            text.trim()
                .parse::<u64>()
                .map_err(|_| err(format!("{} is not a whole number", units::shown(text))))
        };
        match key {
            Key::Memory => self.memory = unless(none, || Size::parse(text).map_err(err))?,
            Key::Swap => self.swap = unless(none, || Size::parse(text).map_err(err))?,
            Key::Processes => self.processes = unless(none, || count(text))?,
            Key::Cpus => self.cpus = unless(none, || Cpus::parse(text).map_err(err))?,
            Key::CpuWeight => self.cpu_weight = unless(none, || count(text))?,
            Key::Priority => self.priority = unless(none, || Priority::parse(text).map_err(err))?,
            Key::ProcessMemory => {
                self.process_memory = unless(none, || Size::parse(text).map_err(err))?;
            }
            Key::CpuTime => self.cpu_time = unless(none, || Seconds::parse(text).map_err(err))?,
            Key::OpenFiles => self.open_files = unless(none, || count(text))?,
            Key::Timeout => self.timeout = unless(none, || Seconds::parse(text).map_err(err))?,
            Key::Disk => self.disk = unless(none, || Size::parse(text).map_err(err))?,
            Key::Inodes => self.inodes = unless(none, || count(text))?,
        }
        Ok(())
    }

    /// The value of `key` as a person would write it, if set.
    pub fn get(&self, key: Key) -> Option<String> {
        let l = self;
        match key {
            Key::Memory => l.memory.map(|v| v.to_string()),
            Key::Swap => l.swap.map(|v| v.to_string()),
            Key::Processes => l.processes.map(|v| v.to_string()),
            Key::Cpus => l.cpus.map(|v| v.to_string()),
            Key::CpuWeight => l.cpu_weight.map(|v| v.to_string()),
            Key::Priority => l.priority.map(|v| format!("{v:?}").to_lowercase()),
            Key::ProcessMemory => l.process_memory.map(|v| v.to_string()),
            Key::CpuTime => l.cpu_time.map(|v| v.to_string()),
            Key::OpenFiles => l.open_files.map(|v| v.to_string()),
            Key::Timeout => l.timeout.map(|v| v.to_string()),
            Key::Disk => l.disk.map(|v| v.to_string()),
            Key::Inodes => l.inodes.map(|v| v.to_string()),
        }
    }

    /// The keys that are set.
    pub fn keys(&self) -> Vec<Key> {
        Key::ALL
            .into_iter()
            .filter(|&k| self.get(k).is_some())
            .collect()
    }

    /// Keys whose value differs between `self` and `other`.
    pub fn changed(&self, other: &Limits) -> Vec<Key> {
        Key::ALL
            .into_iter()
            .filter(|&k| self.get(k) != other.get(k))
            .collect()
    }

    /// Check the values against their floors and each other. Host facts (the CPU
    /// count, the controllers) are checked where the limits are applied.
    pub fn validate(&self) -> Result<(), LimitError> {
        let below = |key, value: String, min: String, why: &str| {
            Err(LimitError::new(
                key,
                format!("{value} is below the minimum of {min} ({why})"),
            ))
        };
        if let Some(m) = self.memory
            && m < MIN_MEMORY
        {
            return below(
                Key::Memory,
                m.to_string(),
                MIN_MEMORY.to_string(),
                "a vm needs that much to start",
            );
        }
        if self.swap.is_some() && self.memory.is_none() {
            return Err(LimitError::new(
                Key::Swap,
                "swap is counted on top of memory, so it needs a memory limit too",
            ));
        }
        if let Some(p) = self.processes
            && p < MIN_PROCESSES
        {
            return below(
                Key::Processes,
                p.to_string(),
                MIN_PROCESSES.to_string(),
                "the init, a command and a pipeline",
            );
        }
        if let Some(c) = self.cpus
            && c < MIN_CPUS
        {
            return below(
                Key::Cpus,
                c.to_string(),
                MIN_CPUS.to_string(),
                "1 ms of every 100 ms",
            );
        }
        if let Some(w) = self.cpu_weight
            && !CPU_WEIGHT_RANGE.contains(&w)
        {
            return Err(LimitError::new(
                Key::CpuWeight,
                format!("{w} is outside 1..10000 (100 is the default share)"),
            ));
        }
        if let Some(m) = self.process_memory
            && m < MIN_PROCESS_MEMORY
        {
            return below(
                Key::ProcessMemory,
                m.to_string(),
                MIN_PROCESS_MEMORY.to_string(),
                "a program needs that much address space to start",
            );
        }
        if let Some(t) = self.cpu_time
            && t.0 == 0
        {
            return below(
                Key::CpuTime,
                t.to_string(),
                "1s".into(),
                "no process could run",
            );
        }
        if let Some(n) = self.open_files
            && n < MIN_OPEN_FILES
        {
            return below(
                Key::OpenFiles,
                n.to_string(),
                MIN_OPEN_FILES.to_string(),
                "a program opens that many while it starts",
            );
        }
        if let Some(t) = self.timeout
            && t.0 == 0
        {
            return below(
                Key::Timeout,
                t.to_string(),
                "1s".into(),
                "the vm would stop at once",
            );
        }
        if let Some(t) = self.timeout
            && t.0 > u64::from(u32::MAX)
        {
            return Err(LimitError::new(Key::Timeout, format!("{t} is too long")));
        }
        if let Some(d) = self.disk
            && d < MIN_DISK
        {
            return below(
                Key::Disk,
                d.to_string(),
                MIN_DISK.to_string(),
                "the vm's layer directories need that much",
            );
        }
        if let Some(n) = self.inodes
            && n < MIN_INODES
        {
            return below(
                Key::Inodes,
                n.to_string(),
                MIN_INODES.to_string(),
                "the vm's layer directories need that many",
            );
        }
        Ok(())
    }

    /// Check the limits that depend on this host's size.
    pub fn validate_for_host(&self, host_cpus: u32) -> Result<(), LimitError> {
        if let Some(c) = self.cpus
            && c.0 > host_cpus.saturating_mul(100)
        {
            return Err(LimitError::new(
                Key::Cpus,
                format!("{c} is more than this host's {host_cpus} CPUs"),
            ));
        }
        Ok(())
    }

    /// Whether the VM's layers are limited (`disk` or `inodes`).
    pub fn limits_disk(&self) -> bool {
        self.disk.is_some() || self.inodes.is_some()
    }

    /// The CPU weight for the VM's cgroup (v2 scale), if one was asked for:
    /// `cpu-weight`, else the `priority`'s.
    pub fn weight(&self) -> Option<u64> {
        self.cpu_weight
            .or_else(|| self.priority.map(|p| u64::from(p.weight())))
    }

    /// What every command fvm starts in the VM gets.
    pub fn per_process(&self) -> ProcessLimits {
        ProcessLimits {
            address_space: self.process_memory.map(|s| s.0),
            cpu_seconds: self.cpu_time.map(|s| s.0),
            open_files: self.open_files,
            nice: self.priority.map(Priority::nice),
        }
    }
}

fn unless<T, E>(none: bool, parse: impl FnOnce() -> Result<T, E>) -> Result<Option<T>, E> {
    if none { Ok(None) } else { parse().map(Some) }
}

/// The OOM scores of a VM's init and of its commands (`oom_score_adj`): when
/// the VM runs out of memory, the OOM killer takes every other process of the VM
/// before its init. What it weighs is each process's own memory, and memory
/// charged to no process's address space (socket buffers, a memfd) would
/// otherwise leave the init as good a victim as any, and the whole VM with it.
///
/// With CAP_SYS_RESOURCE the init goes down to -999 (not -1000: a VM whose init is
/// the only thing left can still be killed) and each command back to 0, the floor
/// included, so root in the VM (which lacks CAP_SYS_RESOURCE) can't go below the
/// rest of the host. Without it (fvm itself in a container that dropped it) the
/// init keeps fvm's score and commands go up to 500 instead: the same order in
/// the VM, but a command may go back down to fvm's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomScores {
    /// What the init sets, if anything.
    pub init: Option<i32>,
    pub command: i32,
}

impl OomScores {
    pub const WITH_CAP_SYS_RESOURCE: OomScores = OomScores {
        init: Some(-999),
        command: 0,
    };
    pub const WITHOUT: OomScores = OomScores {
        init: None,
        command: 500,
    };

    /// The scores for the calling process's capabilities. Allocates nothing.
    pub fn here() -> OomScores {
        let capable = rustix::thread::capabilities(None).is_ok_and(|c| {
            c.effective
                .contains(rustix::thread::CapabilitySet::SYS_RESOURCE)
        });
        if capable {
            OomScores::WITH_CAP_SYS_RESOURCE
        } else {
            OomScores::WITHOUT
        }
    }
}

/// Write `value` to the calling process's `/proc/self/oom_score_adj`. With
/// CAP_SYS_RESOURCE this also sets the floor (`oom_score_adj_min`) that the
/// process and its children can go back to without it. Allocates nothing.
pub fn set_oom_score_adj(value: i32) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        c"/proc/self/oom_score_adj",
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut buf = [0u8; 12];
    let text = decimal(value, &mut buf);
    rustix::io::write(&fd, text)?;
    Ok(())
}

/// `value` in decimal, written to the end of `buf`, without allocating.
fn decimal(value: i32, buf: &mut [u8; 12]) -> &[u8] {
    let mut at = buf.len();
    let mut n = value.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// Per-process limits, applied in a new command's process before it execs
/// (nothing here allocates, so it is safe between fork and exec).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessLimits {
    /// RLIMIT_AS, soft and hard.
    pub address_space: Option<u64>,
    /// RLIMIT_CPU: SIGXCPU at this many seconds, SIGKILL a second later.
    pub cpu_seconds: Option<u64>,
    /// RLIMIT_NOFILE, soft and hard.
    pub open_files: Option<u64>,
    pub nice: Option<i32>,
}

impl ProcessLimits {
    /// Set them on the calling process, which must still have CAP_SYS_RESOURCE.
    ///
    /// First its OOM score (see [`OomScores`]): a command of the VM inherits the
    /// init's, or that of the `fvm` that started it.
    pub fn apply(&self) -> std::io::Result<()> {
        use rustix::process::{Resource, Rlimit, setrlimit};
        set_oom_score_adj(OomScores::here().command)?;
        let both = |v: u64| Rlimit {
            current: Some(v),
            maximum: Some(v),
        };
        if let Some(v) = self.address_space {
            setrlimit(Resource::As, both(v))?;
        }
        if let Some(v) = self.cpu_seconds {
            setrlimit(
                Resource::Cpu,
                Rlimit {
                    current: Some(v),
                    maximum: Some(v.saturating_add(1)),
                },
            )?;
        }
        if let Some(v) = self.open_files {
            setrlimit(Resource::Nofile, both(v))?;
        }
        if let Some(n) = self.nice {
            rustix::process::setpriority_process(None, n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(Key, &str)]) -> Result<Limits, LimitError> {
        let mut l = Limits::default();
        for (k, v) in pairs {
            l.set(*k, v)?;
        }
        l.validate()?;
        Ok(l)
    }

    #[test]
    fn every_key_parses_and_none_removes_it() {
        let l = with(&[
            (Key::Memory, "64M"),
            (Key::Swap, "0"),
            (Key::Processes, "64"),
            (Key::Cpus, "0.5"),
            (Key::CpuWeight, "50"),
            (Key::Priority, "low"),
            (Key::ProcessMemory, "100M"),
            (Key::CpuTime, "2"),
            (Key::OpenFiles, "256"),
            (Key::Timeout, "1h30m"),
            (Key::Disk, "10G"),
            (Key::Inodes, "100000"),
        ])
        .unwrap();
        assert_eq!(l.memory, Some(Size(64 << 20)));
        assert_eq!(l.swap, Some(Size(0)));
        assert_eq!(l.processes, Some(64));
        assert_eq!(l.cpus, Some(Cpus(50)));
        assert_eq!(l.cpu_weight, Some(50));
        assert_eq!(l.priority, Some(Priority::Low));
        assert_eq!(l.process_memory, Some(Size(100 << 20)));
        assert_eq!(l.cpu_time, Some(Seconds(2)));
        assert_eq!(l.open_files, Some(256));
        assert_eq!(l.timeout, Some(Seconds(5400)));
        assert_eq!(l.disk, Some(Size(10 << 30)));
        assert_eq!(l.inodes, Some(100_000));
        assert!(l.limits_disk());
        assert_eq!(l.keys(), Key::ALL.to_vec());
        let mut cleared = l.clone();
        for k in Key::ALL {
            cleared.set(k, "none").unwrap();
        }
        assert!(cleared.is_empty());
    }

    #[test]
    fn values_below_their_floor_are_refused() {
        for (key, text) in [
            (Key::Memory, "1K"),
            (Key::ProcessMemory, "1M"),
            (Key::Processes, "0"),
            (Key::Processes, "3"),
            (Key::Cpus, "0"),
            (Key::CpuWeight, "0"),
            (Key::CpuWeight, "10001"),
            (Key::CpuTime, "0s"),
            (Key::OpenFiles, "3"),
            (Key::Timeout, "0"),
            (Key::Disk, "1M"),
            (Key::Disk, "0"),
            (Key::Inodes, "999"),
            (Key::Inodes, "0"),
        ] {
            let e = with(&[(key, text)]).unwrap_err();
            assert_eq!(e.key, key, "{key}={text}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = with(&[(Key::Swap, "1G")]).unwrap_err();
        assert_eq!(e.key, Key::Swap);
    }

    #[test]
    fn malformed_values_name_their_key() {
        for (key, text) in [
            (Key::Memory, "12Q"),
            (Key::Processes, "-1"),
            (Key::Cpus, "-1"),
            (Key::Timeout, "5x"),
            (Key::Priority, "urgent"),
            (Key::OpenFiles, "many"),
            (Key::Disk, "lots"),
            (Key::Disk, "-1G"),
            (Key::Inodes, "1.5"),
        ] {
            let mut l = Limits::default();
            let e = l.set(key, text).unwrap_err();
            assert_eq!(e.key, key);
            assert!(
                e.to_string().starts_with(&format!("invalid {key} limit: ")),
                "{e}"
            );
            assert!(l.is_empty());
        }
    }

    #[test]
    fn absurd_values_of_every_key_give_one_short_line() {
        let huge = "9".repeat(10_000);
        for key in Key::ALL {
            for text in [huge.clone(), format!("1e308{huge}"), format!("{huge}.5")] {
                let mut l = Limits::default();
                let e = l.set(key, &text).unwrap_err().to_string();
                assert!(e.len() < 150 && !e.contains('\n'), "{key}: {e}");
                assert!(l.is_empty());
            }
        }
    }

    #[test]
    fn host_cpu_count_caps_cpus() {
        let l = with(&[(Key::Cpus, "2")]).unwrap();
        assert!(l.validate_for_host(2).is_ok());
        assert!(l.validate_for_host(1).is_err());
    }

    #[test]
    fn weight_comes_from_cpu_weight_else_priority() {
        assert_eq!(
            with(&[(Key::Priority, "high")]).unwrap().weight(),
            Some(400)
        );
        assert_eq!(
            with(&[(Key::Priority, "high"), (Key::CpuWeight, "7")])
                .unwrap()
                .weight(),
            Some(7)
        );
        assert_eq!(Limits::default().weight(), None);
    }

    #[test]
    fn changed_names_the_keys_that_differ() {
        let a = with(&[(Key::Memory, "64M"), (Key::CpuTime, "2")]).unwrap();
        let b = with(&[
            (Key::Memory, "128M"),
            (Key::CpuTime, "2"),
            (Key::OpenFiles, "99"),
        ])
        .unwrap();
        assert_eq!(a.changed(&b), vec![Key::Memory, Key::OpenFiles]);
    }

    #[test]
    fn toml_round_trip_in_units_people_write() {
        let l = with(&[
            (Key::Memory, "512M"),
            (Key::Cpus, "0.5"),
            (Key::Timeout, "90s"),
            (Key::Priority, "high"),
        ])
        .unwrap();
        let text = toml::to_string(&l).unwrap();
        assert!(text.contains("memory = \"512M\""), "{text}");
        assert!(text.contains("cpus = 0.5"), "{text}");
        assert!(text.contains("timeout = \"1m30s\""), "{text}");
        assert!(text.contains("priority = \"high\""), "{text}");
        assert_eq!(toml::from_str::<Limits>(&text).unwrap(), l);
        let bare: Limits = toml::from_str("memory = 1048576\ncpus = 2\ntimeout = 90\n").unwrap();
        assert_eq!(bare.memory, Some(Size(1 << 20)));
        assert_eq!(bare.cpus, Some(Cpus(200)));
        assert_eq!(bare.timeout, Some(Seconds(90)));
    }

    #[test]
    fn oom_scores_are_written_in_decimal() {
        let mut buf = [0u8; 12];
        assert_eq!(decimal(-999, &mut buf), b"-999");
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(500, &mut buf), b"500");
        assert_eq!(decimal(i32::MIN, &mut buf), b"-2147483648");
    }

    #[test]
    fn per_process_limits_come_from_their_keys() {
        let l = with(&[
            (Key::ProcessMemory, "100M"),
            (Key::CpuTime, "2"),
            (Key::Priority, "low"),
        ])
        .unwrap();
        assert_eq!(
            l.per_process(),
            ProcessLimits {
                address_space: Some(100 << 20),
                cpu_seconds: Some(2),
                open_files: None,
                nice: Some(10),
            }
        );
    }

    /// Random text of what limit values are made of: digits, points, exponents,
    /// signs, units, words and odd characters.
    fn value_text(rng: &mut fastrand::Rng) -> String {
        const PIECES: &[&str] = &[
            "0",
            "1",
            "7",
            "9",
            "00",
            "18446744073709551615",
            "99999999999999999999",
            ".",
            "e",
            "E",
            "+",
            "-",
            "K",
            "M",
            "G",
            "T",
            "P",
            "k",
            "b",
            "B",
            "s",
            "m",
            "h",
            "d",
            "ms",
            "inf",
            "nan",
            "none",
            "low",
            "high",
            "normal",
            " ",
            "\t",
            "_",
            "\u{661}",
            "…",
            "\0",
        ];
        let mut text: String = (0..rng.usize(..6))
            .map(|_| PIECES[rng.usize(..PIECES.len())])
            .collect();
        if rng.u8(..) < 30 {
            text.push_str(&crate::testing::text(rng, 4));
        }
        text
    }

    #[test]
    fn any_value_is_set_and_shown_back_or_refused_in_one_line() {
        crate::testing::cases("limit values", 5000, |rng| {
            let key = Key::ALL[rng.usize(..Key::ALL.len())];
            let text = value_text(rng);
            let mut limits = Limits::default();
            match limits.set(key, &text) {
                Ok(()) => {
                    // What is shown is read back as the same value.
                    if let Some(shown) = limits.get(key) {
                        let mut again = Limits::default();
                        again
                            .set(key, &shown)
                            .unwrap_or_else(|e| panic!("{key} {text:?} shown as {shown:?}: {e}"));
                        assert_eq!(again, limits, "{key} {text:?} shown as {shown:?}");
                    }
                    let _ = limits.validate();
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        !msg.contains(['\n', '\r']) && msg.chars().count() < 200,
                        "{key} {text:?}: {msg:?}"
                    );
                }
            }
        });
    }
}
