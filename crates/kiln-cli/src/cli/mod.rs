//! The `kiln` binary's front end: [`args`] (clap), the renderers, and
//! the commands that are clients of `kiln serve` ([`release`], [`heal`],
//! [`chaos`]). Files here convert arguments and render answers; what a
//! command does is the library's.

pub mod args;
pub mod chaos;
pub mod convert;
pub mod fleet_args;
pub mod fleet_convert;
pub mod heal;
pub mod release;
pub mod render;
pub mod subcommands;
pub mod values;
pub mod verify;

/// Who asked, for the history: user@host.
pub fn actor() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let from_passwd = || {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_owned())
        })
    };
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .or_else(from_passwd)
        .unwrap_or_else(|| format!("uid{uid}"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}
