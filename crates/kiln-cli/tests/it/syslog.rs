//! `[syslog]` against Debian's rsyslog on loopback (imrelp), as root with
//! runc: every instance line arrives once, in order per instance, with its
//! identity as structured data, and none is lost when rsyslog restarts in
//! the middle, three times (the shipper resends from its on-disk cursor).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::serve_env::{serial, Env};
use common::Conn;

struct Rsyslog {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Rsyslog {
    /// rsyslogd listening on `port` with `input` (imrelp or imtcp).
    fn start(dir: &Path, port: u16, input: &str) -> Rsyslog {
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let conf = format!(
            "global(workDirectory=\"{d}/work\")\n\
             module(load=\"{input}\")\n\
             input(type=\"{input}\" port=\"{port}\" address=\"127.0.0.1\")\n\
             template(name=\"kiln\" type=\"string\" string=\"%app-name% %procid% %msgid% %structured-data% %msg%\\n\")\n\
             action(type=\"omfile\" file=\"{d}/out.log\" template=\"kiln\")\n",
            d = dir.display()
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let mut r = Rsyslog { child: Rsyslog::spawn(dir), dir: dir.to_owned(), port };
        r.wait_listening();
        r
    }

    fn spawn(dir: &Path) -> Child {
        Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdout(std::fs::File::create(dir.join("rsyslogd.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("rsyslogd.err")).unwrap())
            .spawn()
            .expect("rsyslogd (apt-get install rsyslog rsyslog-relp)")
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(self.child.try_wait().unwrap().is_none(), "rsyslogd exited: {}", self.log());
            assert!(Instant::now() < deadline, "rsyslogd never listened: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as `systemctl restart` does, then a new rsyslogd.
    fn restart(&mut self) {
        // SAFETY: a signal to the rsyslogd this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        self.child = Rsyslog::spawn(&self.dir);
        self.wait_listening();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.err")).unwrap_or_default()
    }

    fn out(&self) -> String {
        std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The order lines rsyslog wrote, as (app-name, "procid head", order
/// number), once `n` distinct ones are there (or 60 s have passed).
fn orders_arrived(rsyslog: &Rsyslog, n: usize) -> Vec<(String, String, usize)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let orders: Vec<(String, String, usize)> = rsyslog
            .out()
            .lines()
            .filter_map(|l| {
                let (head, msg) = l.split_once("] ")?;
                let n = msg.trim().strip_prefix("order ")?.parse().ok()?;
                let mut f = head.split(' ');
                let (app, procid) = (f.next()?.to_owned(), f.next()?.to_owned());
                Some((app, format!("{procid} {head}"), n))
            })
            .collect();
        let distinct: std::collections::BTreeSet<usize> = orders.iter().map(|o| o.2).collect();
        if distinct.len() >= n || Instant::now() > deadline {
            return orders;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn plain_tcp_syslog_reaches_rsyslog_with_octet_counting_and_the_identity() {
    let _room = common::room("syslog");
    let _one = serial();
    let port = common::free_port();
    let dir = common::tempdir("rsyslog-tcp");
    let rsyslog = Rsyslog::start(&dir, port, "imtcp");
    let mut env = Env::bare(
        "syslog-tcp",
        &format!("[service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n[syslog]\nurl = \"tcp://127.0.0.1:{port}\"\nfacility = \"local3\"\n"),
    );
    env.start_serve(None);
    assert_eq!(env.deploy().0, 0);
    let mut c = Conn::new(env.port);
    for i in 0..500 {
        assert_eq!(c.send("POST", "/order", &[], format!("{i}").as_bytes()).unwrap().0, 201);
    }
    let orders = orders_arrived(&rsyslog, 500);
    let ns: Vec<usize> = orders.iter().map(|o| o.2).collect();
    assert_eq!(ns, (0..500).collect::<Vec<_>>(), "each once, in order (one instance)");
    assert!(
        orders.iter().all(|(app, head, _)| app == "web" && head.contains("release=\"web-1\"")),
        "{:?}",
        orders.first()
    );
    // The "listening" line came first, as stdout of the same instance.
    let out = rsyslog.out();
    assert!(
        out.lines().next().is_some_and(|l| l.contains(" stdout [kiln@32473 ") && l.contains("listening on")),
        "{out}"
    );
}

#[test]
fn every_line_reaches_rsyslog_once_in_order_per_instance_across_rsyslog_restarts() {
    let _room = common::room("syslog");
    let _one = serial();
    let port = common::free_port();
    let dir = common::tempdir("rsyslog");
    let mut rsyslog = Rsyslog::start(&dir, port, "imrelp");
    let mut env = Env::bare(
        "syslog",
        &format!(
            "replicas = 2\n[service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n\
             [syslog]\nurl = \"relp://127.0.0.1:{port}\"\n"
        ),
    );
    env.start_serve(None);
    assert_eq!(env.deploy().0, 0);

    const N: usize = 4000;
    let t = Instant::now();
    let mut c = Conn::new(env.port);
    for i in 0..N {
        // Three restarts, each while lines are in flight (one alone may
        // fall between two batches and prove nothing).
        if i > 0 && i % (N / 4) == 0 {
            let r = Instant::now();
            rsyslog.restart();
            println!("rsyslog restarted in {:?}", r.elapsed());
        }
        let (code, _, _) = c.send("POST", "/order", &[], format!("{i}").as_bytes()).unwrap();
        assert_eq!(code, 201);
    }

    println!("{N} orders sent in {:?}", t.elapsed());
    // Every order line arrives, once.
    let orders = orders_arrived(&rsyslog, N);
    println!("all arrived {:?} after the first order", t.elapsed());
    let mut seen = vec![0u32; N];
    for (_, _, n) in &orders {
        seen[*n] += 1;
    }
    let lost: Vec<usize> = (0..N).filter(|n| seen[*n] == 0).collect();
    let twice: Vec<usize> = (0..N).filter(|n| seen[*n] > 1).collect();
    assert!(
        lost.is_empty() && twice.is_empty(),
        "lost {} ({:?}...), duplicated {} ({:?}...); serve log: {}\nrsyslog: {}",
        lost.len(),
        &lost[..lost.len().min(10)],
        twice.len(),
        &twice[..twice.len().min(10)],
        env.serve_log(),
        rsyslog.log()
    );

    // In order per instance, and each carries its identity.
    let mut by_instance: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (app, head, n) in &orders {
        assert_eq!(app, "web");
        let procid = head.split(' ').next().unwrap().to_owned();
        assert!(head.contains("[kiln@32473 instance=\"") && head.contains(&format!("instance=\"{procid}\"")), "{head}");
        assert!(head.contains("release=\"web-1\"") && head.contains("digest=\"sha256:"), "{head}");
        by_instance.entry(procid).or_default().push(*n);
    }
    assert_eq!(by_instance.len(), 2, "both instances' lines: {:?}", by_instance.keys());
    for (id, ns) in &by_instance {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{id}'s lines out of order");
    }
    assert!(env.serve_log().contains("lost the connection"), "the restart was noticed: {}", env.serve_log());
}
