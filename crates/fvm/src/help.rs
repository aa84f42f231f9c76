//! Text shared by `fvm --help` and the man pages: what the exit statuses mean,
//! where fvm keeps its files, what it reads from the environment, and examples
//! for every command.

/// `fvm --help`'s last section, and the man page's EXIT STATUS.
pub const EXIT_STATUS: &str = "\
Exit status:
  0        success; also when a VM already was as asked (start of a running VM,
           stop of a stopped one, suspend of a suspended one, resume of a
           running one): a note on stderr says so
  1-124    run, shell: the command's own exit status
  125      fvm failed (the error is on stderr, one line; with --json a JSON
           object {\"error\":...,\"exit_code\":125}), or the command line is
           invalid; with several VMs: one or more of them failed (one line each),
           the others were done
  126      run, shell: the command was found but can't be executed
  127      run, shell: the command was not found
  128+N    run, shell: the command was killed by signal N";

/// The man page's FILES section.
pub const FILES: &[(&str, &str)] = &[
    (
        "/var/lib/fvm",
        "The default store (change it with --root or FVM_ROOT). Mode 0700, owned by root.",
    ),
    (
        "/var/lib/fvm/vms/NAME/",
        "One VM: its policy, state, lock and private layers.",
    ),
    (
        "/var/lib/fvm/vms/NAME/vm.toml",
        "The VM's policy: description, security, layers, [limits] and [network] (fvm config shows and changes it).",
    ),
    (
        "/var/lib/fvm/vms/NAME/state.json",
        "Whether the VM runs, and its init process.",
    ),
    (
        "/var/lib/fvm/vms/NAME/layers/",
        "The VM's private upper layers, one per host mount (or in the directory given to create --dir).",
    ),
    (
        "/var/lib/fvm/vms/NAME/disk.img",
        "The filesystem image holding the layers of a VM with a disk or inodes limit, where the store's filesystem has no project quota.",
    ),
    (
        "/var/lib/fvm/lock, /var/lib/fvm/dirs",
        "The store's lock, and the directories VMs keep their layers in (create --dir).",
    ),
    (
        "/var/lib/fvm/network.toml",
        "The store's bridge and subnet (fvm network).",
    ),
];

/// The man page's ENVIRONMENT section.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "FVM_ROOT",
        "The store directory, as --root gives it (default /var/lib/fvm).",
    ),
    (
        "FVM_MUST_RUN",
        "Tests only: with 1, a test that can't run here fails instead of being skipped.",
    ),
    (
        "COMPLETE",
        "Set by the completion scripts (fvm completions) when they ask fvm for completions.",
    ),
    (
        "TERM, COLORTERM",
        "Passed to commands in a VM; nothing else of the caller's environment is, unless named with run --env.",
    ),
];

/// Examples per command: (command, [(command line, what it does)]). `fvm` itself
/// is the empty command.
pub const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "",
        &[
            (
                "fvm create web1 --memory 512M",
                "a VM with at most 512 MiB of memory",
            ),
            (
                "fvm run web1 -- apt-get install -y nginx",
                "a command in it",
            ),
            ("fvm diff web1", "what it changed"),
            ("fvm delete web1", "gone, with its changes"),
        ],
    ),
    (
        "create",
        &[
            ("fvm create web1", "a VM with the default policy"),
            (
                "fvm create web1 --net bridge --publish 8080:80",
                "on the store's bridge (reaching out through NAT, finding other VMs by name), with host port 8080 forwarded to its port 80",
            ),
            (
                "fvm --json create web1",
                "the new VM as JSON, as inspect shows it",
            ),
        ],
    ),
    (
        "list",
        &[
            ("fvm list", "every VM"),
            ("fvm list --status running", "only running VMs"),
            ("fvm list 'web*'", "VMs whose name starts with web"),
        ],
    ),
    (
        "start",
        &[
            ("fvm start web1", "start a VM in the background"),
            ("fvm start web1 web2 db", "several, one after the other"),
        ],
    ),
    (
        "shell",
        &[
            ("fvm shell web1", "a login shell as root"),
            (
                "fvm shell --user alice web1",
                "a login shell as alice of the VM",
            ),
        ],
    ),
    (
        "run",
        &[
            ("fvm run web1 -- id", "a command in a VM"),
            ("fvm run --user www-data web1 -- id", "as a user of the VM"),
            ("fvm run --rm -- make test", "in a throw-away VM"),
        ],
    ),
    (
        "stop",
        &[
            ("fvm stop web1", "SIGTERM, SIGKILL 10 s later"),
            ("fvm stop -t 0 web1 web2", "kill two VMs at once"),
        ],
    ),
    (
        "suspend",
        &[("fvm suspend web1 web2", "freeze every process of two VMs")],
    ),
    ("resume", &[("fvm resume web1", "let them run again")]),
    (
        "discard",
        &[
            (
                "fvm discard web1 /etc/nginx",
                "drop what the stopped VM changed under /etc/nginx: the host's version shows again",
            ),
            (
                "fvm discard --dry-run web1 var/cache",
                "what would be dropped, for a path read from the current directory",
            ),
        ],
    ),
    (
        "service",
        &[
            (
                "fvm service web1 status",
                "each service's state, pid, restarts and last exit",
            ),
            (
                "fvm service web1 nginx restart",
                "stop nginx, then start it again",
            ),
        ],
    ),
    (
        "logs",
        &[
            (
                "fvm logs web1 -f",
                "what its services and run -d commands print, as they print it",
            ),
            (
                "fvm logs web1 nginx --since 10m --tail 50",
                "the last 50 lines of nginx from the last ten minutes",
            ),
        ],
    ),
    (
        "ui",
        &[
            (
                "fvm ui",
                "serve the web console on loopback; open the address it prints",
            ),
            (
                "fvm ui --read-only --listen 127.0.0.1:8999",
                "look, change nothing, on a fixed port",
            ),
        ],
    ),
    (
        "oci",
        &[
            (
                "fvm oci --root /run/fvm-runc state ID",
                "a container's state, as runc prints it (containerd and podman call fvm-runc this way)",
            ),
            (
                "ctr run --rm --runc-binary /usr/bin/fvm-runc --annotation org.featherweight.rootfs=host --rootfs EMPTY ID /bin/sh",
                "a clone of the host as a containerd task",
            ),
            (
                "ctr run --rm --runc-binary /usr/bin/fvm-runc --rootfs DIR ID /bin/sh",
                "a container of its own root directory DIR (never the host's), with fvm's diff",
            ),
        ],
    ),
    ("ps", &[("fvm ps web1", "the processes of a running VM")]),
    (
        "stats",
        &[
            ("fvm stats", "what every VM uses"),
            (
                "fvm --json stats --watch 2 --count 5",
                "five samples, two seconds apart, one JSON line each, with cpu_percent",
            ),
        ],
    ),
    (
        "delete",
        &[
            ("fvm delete web1", "delete a stopped VM"),
            (
                "fvm delete --force web1 web2",
                "stop them first if they run",
            ),
        ],
    ),
    (
        "copy",
        &[("fvm copy web1 web2", "a clone of a stopped or suspended VM")],
    ),
    (
        "inspect",
        &[("fvm inspect web1", "everything about a VM, as JSON")],
    ),
    (
        "diff",
        &[
            ("fvm diff web1", "every change"),
            ("fvm diff web1 /etc", "changes under /etc"),
        ],
    ),
    (
        "commit",
        &[
            (
                "fvm commit --dry-run web1 /etc/nginx",
                "what a commit would do",
            ),
            (
                "fvm commit web1 /etc/nginx",
                "write those changes to the host",
            ),
        ],
    ),
    (
        "config",
        &[
            ("fvm config web1", "show the policy"),
            (
                "fvm config web1 --memory 1G --cpus 2",
                "change it: prints what changed",
            ),
        ],
    ),
    (
        "doctor",
        &[
            ("fvm doctor", "what this host supports"),
            (
                "sudo fvm doctor --cleanup",
                "and clean up after crashed VMs",
            ),
        ],
    ),
    (
        "network",
        &[
            ("fvm network", "the store's bridge and subnet"),
            ("fvm network --subnet 10.88.0.0/24", "another subnet"),
        ],
    ),
    (
        "completions",
        &[
            (
                "fvm completions bash > /etc/bash_completion.d/fvm",
                "bash completion of commands, flags and VM names",
            ),
            (
                "fvm completions fish > ~/.config/fish/completions/fvm.fish",
                "fish completion",
            ),
        ],
    ),
];

/// The examples of `command` (`""`: fvm itself).
pub fn examples(command: &str) -> &'static [(&'static str, &'static str)] {
    EXAMPLES
        .iter()
        .find(|(c, _)| *c == command)
        .map_or(&[], |(_, e)| e)
}
