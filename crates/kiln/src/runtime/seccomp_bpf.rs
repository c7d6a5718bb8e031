//! kiln's own compiler from a seccomp profile to a classic BPF program, so
//! an instance loads a filter compiled once per kiln build instead of runc
//! compiling ~290 rules with libseccomp at every start (+4 ms, 1.14×, in
//! bench/sandbox.sh). The program is what libseccomp would decide, laid out
//! as a binary search over the syscall number: the architecture is checked
//! first (every other ABI refused), then the number, then a conditional
//! syscall's first argument.
//!
//! For: the [`Rules`] a profile means, the program they compile to, and the
//! x86_64 syscall numbers of the default profile's names. Pure. Must never:
//! load a filter (the sandbox-exec helper does, in the instance) or decide
//! which syscalls are allowed ([`super::seccomp`] does).

/// `AUDIT_ARCH_X86_64`: the `arch` field the kernel reports for a native
/// 64-bit syscall.
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// The filter's answers.
pub const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGE_K: u16 = 0x35;
const JMP_JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

/// Offsets in the kernel's `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}
const fn arg_hi(i: u32) -> u32 {
    20 + 8 * i
}

/// One instruction, as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// When a syscall with conditions is allowed: if any one holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// `arg & mask == 0` (libseccomp's `SCMP_CMP_MASKED_EQ` with value 0).
    MaskedZero { arg: u32, mask: u64 },
    /// `arg == value` (`SCMP_CMP_EQ`), on all 64 bits.
    Equals { arg: u32, value: u64 },
}

/// A profile as the filter sees it: numbers, not names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The only architecture allowed (`AUDIT_ARCH_*`).
    pub arch: u32,
    /// Syscalls allowed whatever their arguments.
    pub allow: Vec<u32>,
    /// Syscalls allowed when one of their conditions holds.
    pub allow_if: Vec<(u32, Vec<Cond>)>,
    /// The errno every other syscall returns.
    pub errno: u32,
}

/// Where a jump goes, fixed up once every block is placed.
#[derive(Debug, Clone, Copy)]
struct Label(usize);

#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    /// (index of a `ja`, label it goes to)
    jumps: Vec<(usize, Label)>,
    placed: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.placed.push(None);
        Label(self.placed.len() - 1)
    }
    fn place(&mut self, l: Label) {
        self.placed[l.0] = Some(self.code.len());
    }
    fn op(&mut self, code: u16, jt: u8, jf: u8, k: u32) {
        self.code.push(Insn { code, jt, jf, k });
    }
    fn ld(&mut self, offset: u32) {
        self.op(LD_W_ABS, 0, 0, offset);
    }
    fn ret(&mut self, k: u32) {
        self.op(RET_K, 0, 0, k);
    }
    /// An unconditional jump: `ja` takes a 32-bit offset, so blocks of any
    /// size can be skipped (a conditional jump reaches 255 instructions).
    fn ja(&mut self, to: Label) {
        self.jumps.push((self.code.len(), to));
        self.op(JMP_JA, 0, 0, 0);
    }
    /// If `A == k`, run the next instruction; otherwise skip it.
    fn if_eq_next(&mut self, k: u32) {
        self.op(JMP_JEQ_K, 0, 1, k);
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, to) in self.jumps {
            let target = self.placed[to.0].expect("every label is placed");
            self.code[at].k = (target - at - 1) as u32;
        }
        self.code
    }
}

/// Compiles the rules. Deterministic: the same rules give the same bytes.
pub fn compile(rules: &Rules) -> Vec<Insn> {
    let deny = RET_ERRNO | (rules.errno & 0xffff);
    let mut asm = Asm::default();
    asm.ld(ARCH);
    asm.op(JMP_JEQ_K, 1, 0, rules.arch);
    asm.ret(deny);
    asm.ld(NR);
    // (number, None = allowed, Some(i) = the conditions at allow_if[i]).
    let mut entries: Vec<(u32, Option<usize>)> = rules.allow.iter().map(|&nr| (nr, None)).collect();
    entries.extend(rules.allow_if.iter().enumerate().map(|(i, (nr, _))| (*nr, Some(i))));
    entries.sort_unstable();
    entries.dedup_by_key(|e| e.0);
    let conds: Vec<Label> = rules.allow_if.iter().map(|_| asm.label()).collect();
    search(&mut asm, &entries, &conds, deny);
    for ((_, alternatives), label) in rules.allow_if.iter().zip(conds) {
        asm.place(label);
        for c in alternatives {
            let next = asm.label();
            match *c {
                Cond::MaskedZero { arg, mask } => {
                    for (offset, m) in [(arg_lo(arg), mask as u32), (arg_hi(arg), (mask >> 32) as u32)] {
                        if m != 0 {
                            asm.ld(offset);
                            asm.op(JMP_JSET_K, 0, 1, m);
                            asm.ja(next);
                        }
                    }
                }
                Cond::Equals { arg, value } => {
                    asm.ld(arg_hi(arg));
                    asm.op(JMP_JEQ_K, 1, 0, (value >> 32) as u32);
                    asm.ja(next);
                    asm.ld(arg_lo(arg));
                    asm.op(JMP_JEQ_K, 1, 0, value as u32);
                    asm.ja(next);
                }
            }
            asm.ret(RET_ALLOW);
            asm.place(next);
        }
        asm.ret(deny);
    }
    asm.finish()
}

/// A binary search over sorted syscall numbers (`A` holds the number); a
/// few numbers are compared in a row.
fn search(asm: &mut Asm, entries: &[(u32, Option<usize>)], conds: &[Label], deny: u32) {
    if entries.len() <= 4 {
        for &(nr, cond) in entries {
            asm.if_eq_next(nr);
            match cond {
                None => asm.ret(RET_ALLOW),
                Some(i) => asm.ja(conds[i]),
            }
        }
        asm.ret(deny);
        return;
    }
    let (low, high) = entries.split_at(entries.len() / 2);
    let upper = asm.label();
    // A >= the upper half's first number: jump to it; otherwise skip the jump.
    asm.op(JMP_JGE_K, 0, 1, high[0].0);
    asm.ja(upper);
    search(asm, low, conds, deny);
    asm.place(upper);
    search(asm, high, conds, deny);
}

/// The program as the bytes the kernel takes: 8 per instruction, in the
/// machine's byte order.
pub fn to_bytes(program: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for i in program {
        out.extend(i.code.to_ne_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend(i.k.to_ne_bytes());
    }
    out
}

/// The x86_64 number of a syscall the default profile names.
pub fn number_x86_64(name: &str) -> Option<u32> {
    NUMBERS_X86_64.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) of every
/// name the default profile lists, by number.
const NUMBERS_X86_64: &[(&str, u32)] = &[
    ("read", 0),
    ("write", 1),
    ("open", 2),
    ("close", 3),
    ("stat", 4),
    ("fstat", 5),
    ("lstat", 6),
    ("poll", 7),
    ("lseek", 8),
    ("mmap", 9),
    ("mprotect", 10),
    ("munmap", 11),
    ("brk", 12),
    ("rt_sigaction", 13),
    ("rt_sigprocmask", 14),
    ("rt_sigreturn", 15),
    ("ioctl", 16),
    ("pread64", 17),
    ("pwrite64", 18),
    ("readv", 19),
    ("writev", 20),
    ("access", 21),
    ("pipe", 22),
    ("select", 23),
    ("sched_yield", 24),
    ("mremap", 25),
    ("msync", 26),
    ("mincore", 27),
    ("madvise", 28),
    ("shmget", 29),
    ("shmat", 30),
    ("shmctl", 31),
    ("dup", 32),
    ("dup2", 33),
    ("pause", 34),
    ("nanosleep", 35),
    ("getitimer", 36),
    ("alarm", 37),
    ("setitimer", 38),
    ("getpid", 39),
    ("sendfile", 40),
    ("socket", 41),
    ("connect", 42),
    ("accept", 43),
    ("sendto", 44),
    ("recvfrom", 45),
    ("sendmsg", 46),
    ("recvmsg", 47),
    ("shutdown", 48),
    ("bind", 49),
    ("listen", 50),
    ("getsockname", 51),
    ("getpeername", 52),
    ("socketpair", 53),
    ("setsockopt", 54),
    ("getsockopt", 55),
    ("clone", 56),
    ("fork", 57),
    ("vfork", 58),
    ("execve", 59),
    ("exit", 60),
    ("wait4", 61),
    ("kill", 62),
    ("uname", 63),
    ("semget", 64),
    ("semop", 65),
    ("semctl", 66),
    ("shmdt", 67),
    ("msgget", 68),
    ("msgsnd", 69),
    ("msgrcv", 70),
    ("msgctl", 71),
    ("fcntl", 72),
    ("flock", 73),
    ("fsync", 74),
    ("fdatasync", 75),
    ("truncate", 76),
    ("ftruncate", 77),
    ("getdents", 78),
    ("getcwd", 79),
    ("chdir", 80),
    ("fchdir", 81),
    ("rename", 82),
    ("mkdir", 83),
    ("rmdir", 84),
    ("creat", 85),
    ("link", 86),
    ("unlink", 87),
    ("symlink", 88),
    ("readlink", 89),
    ("chmod", 90),
    ("fchmod", 91),
    ("chown", 92),
    ("fchown", 93),
    ("lchown", 94),
    ("umask", 95),
    ("gettimeofday", 96),
    ("getrlimit", 97),
    ("getrusage", 98),
    ("sysinfo", 99),
    ("times", 100),
    ("getuid", 102),
    ("getgid", 104),
    ("setuid", 105),
    ("setgid", 106),
    ("geteuid", 107),
    ("getegid", 108),
    ("setpgid", 109),
    ("getppid", 110),
    ("getpgrp", 111),
    ("setsid", 112),
    ("setreuid", 113),
    ("setregid", 114),
    ("getgroups", 115),
    ("setgroups", 116),
    ("setresuid", 117),
    ("getresuid", 118),
    ("setresgid", 119),
    ("getresgid", 120),
    ("getpgid", 121),
    ("setfsuid", 122),
    ("setfsgid", 123),
    ("getsid", 124),
    ("capget", 125),
    ("capset", 126),
    ("rt_sigpending", 127),
    ("rt_sigtimedwait", 128),
    ("rt_sigqueueinfo", 129),
    ("rt_sigsuspend", 130),
    ("sigaltstack", 131),
    ("utime", 132),
    ("mknod", 133),
    ("personality", 135),
    ("statfs", 137),
    ("fstatfs", 138),
    ("getpriority", 140),
    ("setpriority", 141),
    ("sched_setparam", 142),
    ("sched_getparam", 143),
    ("sched_setscheduler", 144),
    ("sched_getscheduler", 145),
    ("sched_get_priority_max", 146),
    ("sched_get_priority_min", 147),
    ("sched_rr_get_interval", 148),
    ("mlock", 149),
    ("munlock", 150),
    ("mlockall", 151),
    ("munlockall", 152),
    ("prctl", 157),
    ("arch_prctl", 158),
    ("setrlimit", 160),
    ("sync", 162),
    ("gettid", 186),
    ("readahead", 187),
    ("setxattr", 188),
    ("lsetxattr", 189),
    ("fsetxattr", 190),
    ("getxattr", 191),
    ("lgetxattr", 192),
    ("fgetxattr", 193),
    ("listxattr", 194),
    ("llistxattr", 195),
    ("flistxattr", 196),
    ("removexattr", 197),
    ("lremovexattr", 198),
    ("fremovexattr", 199),
    ("tkill", 200),
    ("time", 201),
    ("futex", 202),
    ("sched_setaffinity", 203),
    ("sched_getaffinity", 204),
    ("set_thread_area", 205),
    ("io_setup", 206),
    ("io_destroy", 207),
    ("io_getevents", 208),
    ("io_submit", 209),
    ("io_cancel", 210),
    ("get_thread_area", 211),
    ("epoll_create", 213),
    ("epoll_ctl_old", 214),
    ("epoll_wait_old", 215),
    ("getdents64", 217),
    ("set_tid_address", 218),
    ("restart_syscall", 219),
    ("semtimedop", 220),
    ("fadvise64", 221),
    ("timer_create", 222),
    ("timer_settime", 223),
    ("timer_gettime", 224),
    ("timer_getoverrun", 225),
    ("timer_delete", 226),
    ("clock_gettime", 228),
    ("clock_getres", 229),
    ("clock_nanosleep", 230),
    ("exit_group", 231),
    ("epoll_wait", 232),
    ("epoll_ctl", 233),
    ("tgkill", 234),
    ("utimes", 235),
    ("mbind", 237),
    ("set_mempolicy", 238),
    ("get_mempolicy", 239),
    ("mq_open", 240),
    ("mq_unlink", 241),
    ("mq_timedsend", 242),
    ("mq_timedreceive", 243),
    ("mq_notify", 244),
    ("mq_getsetattr", 245),
    ("waitid", 247),
    ("ioprio_set", 251),
    ("ioprio_get", 252),
    ("inotify_init", 253),
    ("inotify_add_watch", 254),
    ("inotify_rm_watch", 255),
    ("openat", 257),
    ("mkdirat", 258),
    ("mknodat", 259),
    ("fchownat", 260),
    ("newfstatat", 262),
    ("unlinkat", 263),
    ("renameat", 264),
    ("linkat", 265),
    ("symlinkat", 266),
    ("readlinkat", 267),
    ("fchmodat", 268),
    ("faccessat", 269),
    ("pselect6", 270),
    ("ppoll", 271),
    ("set_robust_list", 273),
    ("get_robust_list", 274),
    ("splice", 275),
    ("tee", 276),
    ("sync_file_range", 277),
    ("vmsplice", 278),
    ("utimensat", 280),
    ("epoll_pwait", 281),
    ("signalfd", 282),
    ("timerfd_create", 283),
    ("eventfd", 284),
    ("fallocate", 285),
    ("timerfd_settime", 286),
    ("timerfd_gettime", 287),
    ("accept4", 288),
    ("signalfd4", 289),
    ("eventfd2", 290),
    ("epoll_create1", 291),
    ("dup3", 292),
    ("pipe2", 293),
    ("inotify_init1", 294),
    ("preadv", 295),
    ("pwritev", 296),
    ("rt_tgsigqueueinfo", 297),
    ("recvmmsg", 299),
    ("fanotify_mark", 301),
    ("prlimit64", 302),
    ("syncfs", 306),
    ("sendmmsg", 307),
    ("getcpu", 309),
    ("sched_setattr", 314),
    ("sched_getattr", 315),
    ("renameat2", 316),
    ("getrandom", 318),
    ("memfd_create", 319),
    ("execveat", 322),
    ("membarrier", 324),
    ("mlock2", 325),
    ("copy_file_range", 326),
    ("preadv2", 327),
    ("pwritev2", 328),
    ("pkey_mprotect", 329),
    ("pkey_alloc", 330),
    ("pkey_free", 331),
    ("statx", 332),
    ("io_pgetevents", 333),
    ("rseq", 334),
    ("pidfd_send_signal", 424),
    ("pidfd_open", 434),
    ("close_range", 436),
    ("openat2", 437),
    ("pidfd_getfd", 438),
    ("faccessat2", 439),
    ("epoll_pwait2", 441),
    ("memfd_secret", 447),
    ("futex_waitv", 449),
    ("set_mempolicy_home_node", 450),
    ("fchmodat2", 452),
];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs a program the way the kernel does, on one syscall: the tests'
    /// own small interpreter of the opcodes [`compile`] emits.
    pub(crate) fn run(program: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend(nr.to_le_bytes());
        data.extend(arch.to_le_bytes());
        data.extend(0u64.to_le_bytes());
        for a in args {
            data.extend(a.to_le_bytes());
        }
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = program[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let o = i.k as usize;
                    a = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                JMP_JGE_K => pc += usize::from(if a >= i.k { i.jt } else { i.jf }),
                JMP_JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                RET_K => return i.k,
                other => panic!("opcode {other:#x} not emitted"),
            }
        }
    }

    fn rules() -> Rules {
        Rules {
            arch: AUDIT_ARCH_X86_64,
            allow: (0..300).filter(|n| n % 3 != 0).collect(),
            allow_if: vec![
                (300, vec![Cond::MaskedZero { arg: 0, mask: 0x7E02_0000 }]),
                (301, vec![Cond::Equals { arg: 1, value: 8 }, Cond::Equals { arg: 1, value: 0xffff_ffff }]),
            ],
            errno: 38,
        }
    }

    #[test]
    fn every_number_gets_the_rules_answer() {
        let p = compile(&rules());
        assert!(p.len() < 4096, "the kernel's limit");
        let deny = RET_ERRNO | 38;
        for nr in 0..400 {
            let want = if nr < 300 && nr % 3 != 0 { RET_ALLOW } else { deny };
            if nr == 300 || nr == 301 {
                continue;
            }
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [0; 6]), want, "syscall {nr}");
        }
        // x32's numbers (bit 30 set) are in no rule.
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, 0x4000_0001, [0; 6]), deny);
        // Another architecture, even for an allowed number.
        assert_eq!(run(&p, 0x4000_0003, 1, [0; 6]), deny, "i386");
    }

    #[test]
    fn conditions_look_at_the_argument_on_all_64_bits() {
        let p = compile(&rules());
        let deny = RET_ERRNO | 38;
        let with = |nr, a0, a1| run(&p, AUDIT_ARCH_X86_64, nr, [a0, a1, 0, 0, 0, 0]);
        assert_eq!(with(300, 0x11, 0), RET_ALLOW, "no masked bit");
        assert_eq!(with(300, 0x1000_0011, 0), deny, "CLONE_NEWUSER");
        assert_eq!(with(300, 0x0002_0000, 0), deny, "CLONE_NEWNS");
        assert_eq!(with(300, 1 << 40, 0), RET_ALLOW, "a high bit outside the mask");
        assert_eq!(with(301, 0, 8), RET_ALLOW);
        assert_eq!(with(301, 0, 0xffff_ffff), RET_ALLOW);
        assert_eq!(with(301, 0, 9), deny);
        assert_eq!(with(301, 0, 8 | 1 << 32), deny, "equal on the low half only");
        assert_eq!(with(301, 8, 0), deny, "the other argument");
    }

    #[test]
    fn the_bytes_are_eight_per_instruction_in_the_kernels_layout() {
        let p = vec![Insn { code: RET_K, jt: 1, jf: 2, k: RET_ALLOW }];
        let b = to_bytes(&p);
        assert_eq!(b.len(), 8);
        assert_eq!(&b[..2], &RET_K.to_ne_bytes());
        assert_eq!((b[2], b[3]), (1, 2));
        assert_eq!(&b[4..], &RET_ALLOW.to_ne_bytes());
        assert_eq!(compile(&rules()), compile(&rules()), "deterministic");
    }

    #[test]
    fn the_numbers_are_unique_and_in_order() {
        let mut seen = std::collections::BTreeSet::new();
        for w in NUMBERS_X86_64.windows(2) {
            assert!(w[0].1 < w[1].1, "{:?} before {:?}", w[0], w[1]);
        }
        for (n, _) in NUMBERS_X86_64 {
            assert!(seen.insert(*n), "{n} twice");
        }
        assert_eq!(number_x86_64("read"), Some(0));
        assert_eq!(number_x86_64("clone"), Some(56));
        assert_eq!(number_x86_64("fchmodat2"), Some(452));
        assert_eq!(number_x86_64("keyctl"), None, "refused, so not listed");
    }
}
