//! The default seccomp profile of every instance: an allow-list generated
//! from the table below, everything else refused with ENOSYS, as if the
//! kernel lacked it. Given as rules kiln compiles once ([`default_rules`],
//! loaded by the sandbox-exec helper) or, where kiln has no syscall
//! numbers, as the OCI `linux.seccomp` object runc compiles at each start. ENOSYS rather than EPERM because programs fall
//! back from a call the kernel does not have (glibc from `clone3` to
//! `clone`), and because runc then loads the filter as libseccomp built it
//! instead of taking it apart to prepend its own ENOSYS stub, which is a
//! third of what the filter costs at every start (bench/sandbox.sh).
//!
//! What is refused, and why (the rest of the kernel's surface a web service
//! needs is allowed):
//! - namespaces: `unshare`, `setns`, and `clone` with any namespace flag
//!   (a new user namespace opens the kernel surface behind many escapes);
//! - `clone3`: the C library falls back to `clone`, whose flags the
//!   filter can see;
//! - the kernel keyring (`keyctl`, `add_key`, `request_key`), `bpf`,
//!   `userfaultfd`, `io_uring_*`, `perf_event_open`: large surfaces, used by
//!   many published exploits, needed by no web service;
//! - `ptrace`, `process_vm_readv`/`writev`, `kcmp`: reading another
//!   process's memory;
//! - `mount` and friends, `pivot_root`, `chroot`, `open_by_handle_at`
//!   (escapes a bind mount), `name_to_handle_at`;
//! - the machine's own: `kexec_*`, `reboot`, modules, `swapon`/`swapoff`,
//!   `acct`, `settimeofday`/`clock_settime`/`adjtimex`, `syslog`, `quotactl`,
//!   `iopl`/`ioperm`, `lookup_dcookie`, `vhangup`, `nfsservctl`;
//! - `personality` except the harmless values (`PER_LINUX`, 32-bit
//!   layouts, and the query);
//! - every syscall of another ABI than the native one (i386 and x32 on
//!   x86_64): a 32-bit binary needs its own profile.
//!
//! For: the profile's contents, pure. Must never: read a file or decide
//! which profile a service gets (the spec does).

use serde_json::{json, Value};

use super::seccomp_bpf::{compile, number_x86_64, to_bytes, Cond, Rules};

/// Every syscall the default profile allows, grouped by what it is for:
/// the native (64-bit) ABI's names only, since no other ABI is allowed.
const ALLOWED: &[&[&str]] = &[
    // Files and directories.
    &[
        "access",
        "chdir",
        "chmod",
        "chown",
        "close",
        "close_range",
        "copy_file_range",
        "creat",
        "dup",
        "dup2",
        "dup3",
        "faccessat",
        "faccessat2",
        "fadvise64",
        "fallocate",
        "fchdir",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "fchown",
        "fchownat",
        "fcntl",
        "fdatasync",
        "fgetxattr",
        "flistxattr",
        "flock",
        "fremovexattr",
        "fsetxattr",
        "fstat",
        "fstatfs",
        "fsync",
        "ftruncate",
        "getcwd",
        "getdents",
        "getdents64",
        "getxattr",
        "inotify_add_watch",
        "inotify_init",
        "inotify_init1",
        "inotify_rm_watch",
        "lchown",
        "lgetxattr",
        "link",
        "linkat",
        "listxattr",
        "llistxattr",
        "lremovexattr",
        "lseek",
        "lsetxattr",
        "lstat",
        "mkdir",
        "mkdirat",
        "mknod",
        "mknodat",
        "newfstatat",
        "open",
        "openat",
        "openat2",
        "pread64",
        "preadv",
        "preadv2",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "read",
        "readahead",
        "readlink",
        "readlinkat",
        "readv",
        "removexattr",
        "rename",
        "renameat",
        "renameat2",
        "rmdir",
        "sendfile",
        "setxattr",
        "splice",
        "stat",
        "statfs",
        "statx",
        "symlink",
        "symlinkat",
        "sync",
        "sync_file_range",
        "syncfs",
        "tee",
        "truncate",
        "umask",
        "unlink",
        "unlinkat",
        "utime",
        "utimensat",
        "utimes",
        "vmsplice",
        "write",
        "writev",
        "fanotify_mark",
        "memfd_create",
        "memfd_secret",
    ],
    // Memory.
    &[
        "brk",
        "madvise",
        "membarrier",
        "mincore",
        "mlock",
        "mlock2",
        "mlockall",
        "mmap",
        "mprotect",
        "mremap",
        "msync",
        "munlock",
        "munlockall",
        "munmap",
        "pkey_alloc",
        "pkey_free",
        "pkey_mprotect",
        "get_mempolicy",
        "set_mempolicy",
        "mbind",
        "set_mempolicy_home_node",
    ],
    // Processes, threads, signals, scheduling.
    &[
        "arch_prctl",
        "capget",
        "capset",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "fork",
        "futex",
        "futex_waitv",
        "get_robust_list",
        "get_thread_area",
        "getegid",
        "geteuid",
        "getgid",
        "getgroups",
        "getitimer",
        "getpgid",
        "getpgrp",
        "getpid",
        "getppid",
        "getpriority",
        "getrandom",
        "getresgid",
        "getresuid",
        "getrlimit",
        "getrusage",
        "getsid",
        "gettid",
        "getuid",
        "ioprio_get",
        "ioprio_set",
        "kill",
        "pause",
        "pidfd_getfd",
        "pidfd_open",
        "pidfd_send_signal",
        "prctl",
        "prlimit64",
        "restart_syscall",
        "rseq",
        "rt_sigaction",
        "rt_sigpending",
        "rt_sigprocmask",
        "rt_sigqueueinfo",
        "rt_sigreturn",
        "rt_sigsuspend",
        "rt_sigtimedwait",
        "rt_tgsigqueueinfo",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_getaffinity",
        "sched_getattr",
        "sched_getparam",
        "sched_getscheduler",
        "sched_rr_get_interval",
        "sched_setaffinity",
        "sched_setattr",
        "sched_setparam",
        "sched_setscheduler",
        "sched_yield",
        "set_robust_list",
        "set_thread_area",
        "set_tid_address",
        "setfsgid",
        "setfsuid",
        "setgid",
        "setgroups",
        "setitimer",
        "setpgid",
        "setpriority",
        "setregid",
        "setresgid",
        "setresuid",
        "setreuid",
        "setrlimit",
        "setsid",
        "setuid",
        "sigaltstack",
        "tgkill",
        "tkill",
        "vfork",
        "wait4",
        "waitid",
        "uname",
        "sysinfo",
        "times",
        "getcpu",
    ],
    // Time and waiting.
    &[
        "alarm",
        "clock_getres",
        "clock_gettime",
        "clock_nanosleep",
        "gettimeofday",
        "nanosleep",
        "time",
        "timer_create",
        "timer_delete",
        "timer_getoverrun",
        "timer_gettime",
        "timer_settime",
        "timerfd_create",
        "timerfd_gettime",
        "timerfd_settime",
    ],
    // Events and I/O multiplexing.
    &[
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_ctl_old",
        "epoll_pwait",
        "epoll_pwait2",
        "epoll_wait",
        "epoll_wait_old",
        "eventfd",
        "eventfd2",
        "ioctl",
        "io_cancel",
        "io_destroy",
        "io_getevents",
        "io_pgetevents",
        "io_setup",
        "io_submit",
        "pipe",
        "pipe2",
        "poll",
        "ppoll",
        "pselect6",
        "select",
        "signalfd",
        "signalfd4",
    ],
    // Networking.
    &[
        "accept",
        "accept4",
        "bind",
        "connect",
        "getpeername",
        "getsockname",
        "getsockopt",
        "listen",
        "recvfrom",
        "recvmmsg",
        "recvmsg",
        "sendmmsg",
        "sendmsg",
        "sendto",
        "setsockopt",
        "shutdown",
        "socket",
        "socketpair",
    ],
    // System V and POSIX IPC (in the instance's own IPC namespace).
    &[
        "mq_getsetattr",
        "mq_notify",
        "mq_open",
        "mq_timedreceive",
        "mq_timedsend",
        "mq_unlink",
        "msgctl",
        "msgget",
        "msgrcv",
        "msgsnd",
        "semctl",
        "semget",
        "semop",
        "semtimedop",
        "shmat",
        "shmctl",
        "shmdt",
        "shmget",
    ],
];

/// `clone`'s namespace flags: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET. A `clone` with any of them is refused.
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// What a refused syscall returns.
const ENOSYS: u32 = 38;

/// The architecture whose syscalls are allowed; every other ABI's are refused.
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: &str = "SCMP_ARCH_X86_64";
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: &str = "SCMP_ARCH_AARCH64";

/// `personality` values allowed: `PER_LINUX`, `PER_LINUX32`, the two with
/// `UNAME26`, and the query (0xffffffff).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The names the table allows.
pub fn allowed() -> impl Iterator<Item = &'static str> {
    ALLOWED.iter().flat_map(|g| g.iter().copied())
}

/// The default profile as OCI `linux.seccomp`.
pub fn default_profile() -> Value {
    let mut syscalls = vec![json!({ "names": allowed().collect::<Vec<_>>(), "action": "SCMP_ACT_ALLOW" })];
    syscalls.push(json!({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{ "index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }]
    }));
    for p in PERSONALITIES {
        syscalls.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": p, "valueTwo": 0, "op": "SCMP_CMP_EQ" }]
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": ENOSYS,
        // The native ABI only: the 32-bit entry points (i386, x32) are a
        // classic exploit surface, and listing them triples what runc
        // compiles at every start (bench/sandbox.sh).
        "architectures": [NATIVE_ARCH],
        "syscalls": syscalls,
    })
}

/// Whether kiln compiles the default profile itself: where it knows the
/// syscall numbers.
pub const KILN_COMPILES: bool = cfg!(target_arch = "x86_64");

/// The default profile as the rules kiln compiles itself
/// ([`super::seccomp_bpf`]): the same table, by number. `None` where kiln
/// has no syscall numbers (other than x86_64): there runc compiles
/// [`default_profile`].
pub fn default_rules() -> Option<Rules> {
    if !KILN_COMPILES {
        return None;
    }
    let nr = |name: &str| number_x86_64(name).unwrap_or_else(|| panic!("{name} has no x86_64 number"));
    let clone = vec![Cond::MaskedZero { arg: 0, mask: CLONE_NAMESPACE_FLAGS }];
    let personality = PERSONALITIES.iter().map(|&value| Cond::Equals { arg: 0, value }).collect();
    Some(Rules {
        arch: super::seccomp_bpf::AUDIT_ARCH_X86_64,
        allow: allowed().map(nr).collect(),
        allow_if: vec![(nr("clone"), clone), (nr("personality"), personality)],
        errno: ENOSYS,
    })
}

/// The default profile compiled to the bytes the sandbox-exec helper loads.
pub fn default_filter() -> Option<Vec<u8>> {
    default_rules().map(|r| to_bytes(&compile(&r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compiled filter decides as the OCI profile says: every listed
    /// name allowed, the dangerous ones refused with ENOSYS, `clone` by its
    /// flags and `personality` by its value.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_compiled_filter_decides_as_the_profile() {
        use super::super::seccomp_bpf::{tests::run, AUDIT_ARCH_X86_64, RET_ALLOW};
        let p = compile(&default_rules().unwrap());
        let at = |nr: u32, a0: u64| run(&p, AUDIT_ARCH_X86_64, nr, [a0, 0, 0, 0, 0, 0]);
        let enosys = 0x0005_0000 | 38;
        for name in allowed() {
            assert_eq!(at(number_x86_64(name).unwrap(), 0), RET_ALLOW, "{name}");
        }
        // keyctl, bpf, userfaultfd, io_uring_setup, perf_event_open,
        // unshare, setns, mount, ptrace, kexec_load, open_by_handle_at, clone3.
        for nr in [250, 321, 323, 425, 298, 272, 308, 165, 101, 246, 304, 435] {
            assert_eq!(at(nr, 0), enosys, "syscall {nr}");
        }
        // clone: SIGCHLD | CLONE_VM... allowed; with CLONE_NEWUSER refused.
        assert_eq!(at(56, 0x003d_0f00), RET_ALLOW);
        assert_eq!(at(56, 0x1000_0000 | 0x11), enosys);
        assert_eq!(at(135, 0xffff_ffff), RET_ALLOW, "personality query");
        assert_eq!(at(135, 0x0040_0000), enosys, "READ_IMPLIES_EXEC");
        assert_eq!(run(&p, 0x4000_0003, 0, [0; 6]), enosys, "i386");
        assert_eq!(at(0x4000_0000, 0), enosys, "x32 read");
    }

    /// The syscalls behind the escapes and exploits the profile is for are
    /// in no allow rule (clone only without namespace flags).
    #[test]
    fn the_dangerous_syscalls_are_not_allowed() {
        let p = default_profile();
        let allowed: Vec<&str> = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()))
            .collect();
        for bad in [
            "unshare",
            "setns",
            "clone3",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "perf_event_open",
            "kexec_load",
            "kexec_file_load",
            "open_by_handle_at",
            "name_to_handle_at",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "reboot",
            "init_module",
            "finit_module",
            "delete_module",
            "swapon",
            "swapoff",
            "acct",
            "settimeofday",
            "clock_settime",
            "syslog",
            "iopl",
            "ioperm",
            "personality",
            "clone",
            "fsopen",
            "fsmount",
            "move_mount",
            "open_tree",
            "mount_setattr",
        ] {
            assert!(!allowed.contains(&bad), "{bad} is allowed unconditionally");
        }
        assert!(allowed.len() > 250, "a profile that a web service can run under: {}", allowed.len());
        let clone = p["syscalls"].as_array().unwrap().iter().find(|r| r["names"][0] == "clone").unwrap();
        assert_eq!(clone["args"][0]["value"], 0x7E02_0000u64);
        assert_eq!((p["defaultAction"].as_str(), p["defaultErrnoRet"].as_u64()), (Some("SCMP_ACT_ERRNO"), Some(38)));
        assert_eq!(p["architectures"], serde_json::json!([NATIVE_ARCH]), "no 32-bit ABI");
    }

    #[test]
    fn every_name_is_listed_once() {
        let mut names: Vec<&str> = allowed().collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a syscall is listed twice");
    }
}
