//! The `kiln` binary: parses the command line into a [`kiln::command::Command`],
//! runs it, renders the output. `anyhow` lives here and nowhere else.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{CommandFactory, Parser, Subcommand};

use kiln::bake::sandbox::Runc;
use kiln::bake::{Outcome, Progress, StepReport, Tools};
use kiln::command::{self, Command, Context, Output};
use kiln::git::GitCli;
use kiln::store::Store;

/// kiln: bake reproducible images, run them immutably, release by replacement.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// kiln's data directory (store, cache, metadata). Default: $KILN_HOME,
    /// else $XDG_DATA_HOME/kiln, else ~/.local/share/kiln.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Bake an image (or every image) from a kiln.toml into the store.
    ///
    /// Prints the manifest digest and the tags it got: NAME:b<N> always,
    /// NAME:git-<sha>[-dirty] in a git work tree, NAME:<version> when the spec
    /// has one. `created` comes from SOURCE_DATE_EPOCH, else the HEAD commit
    /// time, else 1970-01-01.
    Bake {
        /// Image to bake (an [image.NAME] table); all of them if omitted.
        image: Option<String>,
        /// The spec file.
        #[arg(short, long, default_value = "kiln.toml", value_name = "PATH")]
        file: PathBuf,
        /// Rebuild every step, ignoring the step cache.
        #[arg(long)]
        no_cache: bool,
        /// Allow moving a tag that already points to another digest (the move is recorded).
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tagged images: tags, digest, size, age, git revision.
    Images {
        #[arg(long)]
        json: bool,
    },
    /// Show an image's manifest, config, annotations and tag history.
    Inspect {
        /// A tag (NAME:TAG), a digest, or a unique digest prefix.
        reference: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove blobs that no tag or archive record references.
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Step progress on a terminal: one line per step, rewritten in place.
struct TtyProgress {
    current: String,
}

impl Progress for TtyProgress {
    fn step_started(&mut self, index: usize, total: usize, description: &str) {
        self.current = format!("[{}/{total}] {description}", index + 1);
        eprint!("{} ...", self.current);
        let _ = std::io::stderr().flush();
    }
    fn step_output(&mut self, line: &str) {
        eprint!("\r\x1b[K    | {line}\n{} ...", self.current);
    }
    fn step_finished(&mut self, r: &StepReport) {
        eprintln!("\r\x1b[K{} {}", self.current, outcome(r));
    }
}

/// Step progress elsewhere: plain lines.
struct PlainProgress {
    current: String,
}

impl Progress for PlainProgress {
    fn step_started(&mut self, index: usize, total: usize, description: &str) {
        self.current = format!("[{}/{total}] {description}", index + 1);
    }
    fn step_output(&mut self, line: &str) {
        eprintln!("    | {line}");
    }
    fn step_finished(&mut self, r: &StepReport) {
        eprintln!("{} {}", self.current, outcome(r));
    }
}

fn outcome(r: &StepReport) -> String {
    match r.outcome {
        Outcome::Cached => format!("cached ({} ms)", r.millis),
        Outcome::Built => format!("built ({} ms)", r.millis),
    }
}

fn human_size(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1024 * 1024 * 1024 => format!("{:.1} MiB", n as f64 / 1048576.0),
        n => format!("{:.1} GiB", n as f64 / 1073741824.0),
    }
}

fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => match v.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => bail!("SOURCE_DATE_EPOCH={v:?}: expected a non-negative number of seconds since 1970"),
        },
        _ => Ok(None),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("kiln: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (cmd, json) = match cli.command {
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
            return Ok(());
        }
        Cmd::Bake { image, file, no_cache, force, json } => (Command::Bake { file, image, no_cache, force }, json),
        Cmd::Images { json } => (Command::Images, json),
        Cmd::Inspect { reference, json } => (Command::Inspect { reference }, json),
        Cmd::Gc { dry_run, json } => (Command::Gc { dry_run }, json),
    };
    let home = cli.home.unwrap_or_else(Store::default_home);
    let store = Store::open(&home).with_context(|| format!("opening the store at {}", home.display()))?;
    let sandbox = Runc::new(home.join("runc"));
    let git = GitCli;
    let mut tty = TtyProgress { current: String::new() };
    let mut plain = PlainProgress { current: String::new() };
    let progress: &mut dyn Progress = if std::io::stderr().is_terminal() { &mut tty } else { &mut plain };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut ctx = Context {
        store,
        tools: Tools { sandbox: &sandbox, git: &git },
        progress,
        now,
        source_date_epoch: source_date_epoch()?,
    };
    let output = command::execute(cmd, &mut ctx)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&output)?);
        return Ok(());
    }
    render(&output, now);
    Ok(())
}

fn render(output: &Output, now: i64) {
    match output {
        Output::Baked(reports) => {
            for r in reports {
                println!("{} {}", r.image, r.digest);
                for t in &r.tags {
                    println!("  tag {t}");
                }
                for c in r.tag_changes.iter().filter(|c| c.from.is_some()) {
                    println!(
                        "  moved {} from {} (forced)",
                        c.tag,
                        c.from.as_ref().map(|d| d.to_string()).unwrap_or_default()
                    );
                }
            }
        }
        Output::Images(rows) => {
            println!("{:<19} {:>10} {:>6}  {:<12}  TAGS", "DIGEST", "SIZE", "AGE", "REVISION");
            for r in rows {
                let age = r.tagged_at.map(|t| kiln::time::age(now - t)).unwrap_or_else(|| "-".into());
                let rev = r.revision.as_deref().map(|s| &s[..s.len().min(12)]).unwrap_or("-");
                let digest = format!("sha256:{}", r.digest.short());
                println!("{digest:<19} {:>10} {age:>6}  {rev:<12}  {}", human_size(r.size), r.tags.join(" "));
            }
        }
        Output::Inspect(i) => {
            println!("digest:   {}", i.digest);
            println!("tags:     {}", if i.tags.is_empty() { "-".into() } else { i.tags.join(", ") });
            println!("size:     {}", human_size(i.size));
            println!("platform: {}/{}", i.config.os, i.config.architecture);
            if let Some(c) = &i.config.created {
                println!("created:  {c}");
            }
            println!("annotations:");
            for (k, v) in i.manifest.annotations.iter().flatten() {
                println!("  {k} = {v}");
            }
            let c = &i.config.config;
            println!("config:");
            if let Some(e) = &c.entrypoint {
                println!("  entrypoint: {e:?}");
            }
            if let Some(e) = &c.cmd {
                println!("  cmd:        {e:?}");
            }
            for e in c.env.iter().flatten() {
                println!("  env:        {e}");
            }
            if let Some(u) = &c.user {
                println!("  user:       {u}");
            }
            if let Some(w) = &c.working_dir {
                println!("  workdir:    {w}");
            }
            for p in c.exposed_ports.iter().flat_map(|p| p.keys()) {
                println!("  expose:     {p}");
            }
            if let Some(s) = &c.stop_signal {
                println!("  stop:       {s}");
            }
            println!("layers:");
            for (l, h) in i.manifest.layers.iter().zip(i.config.history.iter().filter(|h| !h.empty_layer)) {
                println!("  {} {:>10}  {}", l.digest, human_size(l.size), h.created_by.as_deref().unwrap_or(""));
            }
            println!("tag history:");
            for e in &i.tag_history {
                match &e.from {
                    Some(f) if *f == i.digest => println!("  {} {} moved away to {}", e.time, e.tag, e.to),
                    Some(f) => println!("  {} {} moved here from {}", e.time, e.tag, f),
                    None => println!("  {} {} set", e.time, e.tag),
                }
            }
        }
        Output::Gc(g) => {
            for (d, size) in &g.removed {
                println!("removed {d} ({})", human_size(*size));
            }
            println!("{} blobs removed ({}), {} kept", g.removed.len(), human_size(g.freed_bytes), g.kept);
        }
    }
}
