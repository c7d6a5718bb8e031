//! Ships instance log lines to an external collector as RFC 5424 syslog
//! over TCP (`[syslog]` in kiln.toml), from inside `kiln serve`.
//!
//! The buffer is on disk already: the central log files
//! (`$KILN_HOME/logs/<instance>.jsonl`, see [`crate::runtime::logs`]). A
//! cursor per collector (`logs/ship/<key>.json`: a byte offset per file)
//! says how far each file has been delivered; it moves only after delivery
//! is certain, and is written atomically. After a crash of kiln serve or a
//! restart of the collector, shipping resumes from the cursor, so nothing
//! is lost and lines of one instance stay in order.
//!
//! - `relp://`: RELP, rsyslog's reliable protocol. Every message is
//!   acknowledged by the collector, and the cursor moves past a batch only
//!   when all of it is. A batch in flight when the collector dies is sent
//!   again (at least once; the window is one batch).
//! - `tcp://`: plain TCP with octet counting (RFC 6587). The cursor moves
//!   once the kernel has taken the bytes; lines the collector had not yet
//!   read when it went down are lost, as with any plain TCP syslog.
//!
//! The formatting and framing functions are pure; the thread only reads
//! files and sockets. This module must never write a log file.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::logs::LogLine;
use crate::spec::syslog::{SyslogSpec, Transport};

/// kiln's structured-data id: 32473 is the enterprise number RFC 5612
/// reserves for examples and private use.
pub const SD_ID: &str = "kiln@32473";
/// Messages sent before their acknowledgements are read.
const BATCH: usize = 256;

/// Printable US-ASCII without spaces, at most `max` long, `-` if empty
/// (the RFC 5424 rule for header fields).
fn header_field(s: &str, max: usize) -> String {
    let v: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

/// A PARAM-VALUE: `"`, `\` and `]` escaped with a backslash.
fn param_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One log line as an RFC 5424 message: the service as APP-NAME, the
/// instance as PROCID, the stream as MSGID, and its identity (instance,
/// release, image digest, git revision, stream) as structured data.
pub fn rfc5424(l: &LogLine, hostname: &str, facility: u8) -> String {
    // stderr is a warning (4), stdout informational (6).
    let severity = if l.stream == "stderr" { 4 } else { 6 };
    let mut sd = format!("[{SD_ID} instance=\"{}\"", param_value(&l.meta.instance));
    if let Some(r) = &l.meta.release {
        sd.push_str(&format!(" release=\"{}\"", param_value(r)));
    }
    sd.push_str(&format!(" digest=\"{}\"", param_value(&l.meta.image)));
    if let Some(r) = &l.meta.revision {
        sd.push_str(&format!(" revision=\"{}\"", param_value(r)));
    }
    sd.push_str(&format!(" stream=\"{}\"]", param_value(&l.stream)));
    format!(
        "<{}>1 {} {} {} {} {} {sd} {}",
        u32::from(facility) * 8 + severity,
        crate::time::rfc3339_millis(l.ts),
        header_field(hostname, 255),
        header_field(&l.meta.service, 48),
        header_field(&l.meta.instance, 128),
        header_field(&l.stream, 32),
        l.line
    )
}

/// A RELP frame: `TXNR SP COMMAND SP DATALEN [SP DATA] LF`.
pub fn relp_frame(txnr: u32, command: &str, data: &[u8]) -> Vec<u8> {
    let mut f = format!("{txnr} {command} {}", data.len()).into_bytes();
    if !data.is_empty() {
        f.push(b' ');
        f.extend_from_slice(data);
    }
    f.push(b'\n');
    f
}

/// A frame the collector sent: (txnr, command, data).
pub fn read_relp_frame(r: &mut impl BufRead) -> io::Result<(u32, String, Vec<u8>)> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let word = |r: &mut dyn BufRead| -> io::Result<String> {
        let mut b = Vec::new();
        loop {
            let mut c = [0u8];
            r.read_exact(&mut c)?;
            if c[0] == b' ' || c[0] == b'\n' {
                return Ok(String::from_utf8_lossy(&b).into_owned() + if c[0] == b'\n' { "\n" } else { "" });
            }
            if b.len() > 32 {
                return Err(bad("RELP header field too long".into()));
            }
            b.push(c[0]);
        }
    };
    let txnr = word(r)?;
    let txnr: u32 = txnr.parse().map_err(|_| bad(format!("bad RELP txnr {txnr:?}")))?;
    let command = word(r)?;
    let len = word(r)?;
    let (len, ended) = match len.strip_suffix('\n') {
        Some(l) => (l.to_owned(), true),
        None => (len, false),
    };
    let len: usize = len.parse().map_err(|_| bad(format!("bad RELP datalen {len:?}")))?;
    if len > 1 << 20 {
        return Err(bad(format!("RELP frame of {len} bytes")));
    }
    let mut data = vec![0; len];
    if len > 0 {
        r.read_exact(&mut data)?;
    }
    if !ended {
        let mut lf = [0u8];
        r.read_exact(&mut lf)?;
        if lf[0] != b'\n' {
            return Err(bad("RELP frame without its trailer".into()));
        }
    }
    Ok((txnr, command, data))
}

/// How far each log file has been delivered (byte offsets).
pub type Cursor = BTreeMap<String, u64>;

/// A batch: messages, and the cursor once they are delivered.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    pub messages: Vec<String>,
    /// Where each message ends (file, offset): the cursor moves that far
    /// when the collector has acknowledged it, even if the rest is not.
    pub ends: Vec<(String, u64)>,
    pub next: Cursor,
}

/// Up to `max` complete lines after `cursor` from the `.jsonl` files of
/// `dir`, a file at a time in name order (so one instance's lines stay in
/// order). Files no longer there leave the cursor.
pub fn next_batch(dir: &Path, cursor: &Cursor, max: usize, hostname: &str, facility: u8) -> io::Result<Batch> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n.ends_with(".jsonl"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    names.sort();
    let mut next: Cursor = names.iter().map(|n| (n.clone(), cursor.get(n).copied().unwrap_or(0))).collect();
    let mut messages = Vec::new();
    let mut ends = Vec::new();
    for name in &names {
        if messages.len() >= max {
            break;
        }
        let mut f = match std::fs::File::open(dir.join(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let start = next[name];
        if f.metadata()?.len() <= start {
            continue;
        }
        f.seek(SeekFrom::Start(start))?;
        let mut r = BufReader::new(f.take(4 << 20));
        let mut pos = start;
        let mut line = Vec::new();
        while messages.len() < max {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break; // a line still being written waits for its end
            }
            pos += n as u64;
            // A line that is not a log line (never written by kiln) is
            // passed over rather than stopping the file for ever.
            if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                messages.push(rfc5424(&l, hostname, facility));
                ends.push((name.clone(), pos));
            }
        }
        next.insert(name.clone(), pos);
    }
    Ok(Batch { messages, ends, next })
}

/// The machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "-".into())
}

/// The shipping thread; stops when dropped.
#[derive(Debug)]
pub struct Shipper {
    stop: Arc<AtomicBool>,
    pub spec: SyslogSpec,
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn cursor_path(home: &Path, spec: &SyslogSpec) -> PathBuf {
    let key = crate::digest::Digest::of(spec.url.as_bytes());
    home.join("logs/ship").join(format!("{}.json", &key.hex()[..16]))
}

fn load_cursor(path: &Path) -> Cursor {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn save_cursor(path: &Path, c: &Cursor) -> io::Result<()> {
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    crate::sys::atomic::write(path, &serde_json::to_vec(c).expect("serializes"))
}

/// One connection to the collector.
struct Session {
    transport: Transport,
    w: TcpStream,
    r: BufReader<TcpStream>,
    txnr: u32,
}

impl Session {
    fn open(spec: &SyslogSpec) -> io::Result<Session> {
        let s = TcpStream::connect(&spec.authority)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut sess = Session { transport: spec.transport, r: BufReader::new(s.try_clone()?), w: s, txnr: 0 };
        if sess.transport == Transport::Relp {
            let offer = b"relp_version=0\nrelp_software=kiln\ncommands=syslog";
            sess.send(&[("open", offer.to_vec())]).map_err(|(_, e)| e)?;
        }
        Ok(sess)
    }

    /// Sends each (command, data) and, for RELP, waits for every answer.
    /// On failure, says how many were acknowledged before it.
    fn send(&mut self, frames: &[(&str, Vec<u8>)]) -> Result<(), (usize, io::Error)> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        match self.transport {
            Transport::Tcp => {
                let mut out = Vec::new();
                for (_, d) in frames {
                    out.extend_from_slice(format!("{} ", d.len()).as_bytes());
                    out.extend_from_slice(d);
                }
                self.w.write_all(&out).and_then(|_| self.w.flush()).map_err(|e| (0, e))
            }
            Transport::Relp => {
                let first = self.txnr + 1;
                let mut out = Vec::new();
                for (cmd, d) in frames {
                    // Transaction numbers wrap after 999,999,999 (to 1).
                    self.txnr = if self.txnr >= 999_999_999 { 1 } else { self.txnr + 1 };
                    out.extend_from_slice(&relp_frame(self.txnr, cmd, d));
                }
                self.w.write_all(&out).and_then(|_| self.w.flush()).map_err(|e| (0, e))?;
                for i in 0..frames.len() {
                    let want = (first as u64 + i as u64 - 1) % 999_999_999 + 1;
                    let (txnr, command, data) = read_relp_frame(&mut self.r).map_err(|e| (i, e))?;
                    if command == "serverclose" {
                        let e = io::Error::new(io::ErrorKind::ConnectionAborted, "the collector closed the session");
                        return Err((i, e));
                    }
                    if command != "rsp" || u64::from(txnr) != want {
                        return Err((i, bad(format!("RELP: expected the answer to {want}, got {txnr} {command}"))));
                    }
                    if !data.starts_with(b"200") {
                        return Err((i, bad(format!("RELP: {txnr} refused: {}", String::from_utf8_lossy(&data)))));
                    }
                }
                Ok(())
            }
        }
    }
}

impl Shipper {
    /// Starts shipping the logs of `home` to `spec`'s collector.
    pub fn start(home: &Path, spec: SyslogSpec) -> Shipper {
        let stop = Arc::new(AtomicBool::new(false));
        let (home, s, flag) = (home.to_owned(), spec.clone(), stop.clone());
        std::thread::spawn(move || run(&home, &s, &flag));
        Shipper { stop, spec }
    }
}

fn run(home: &Path, spec: &SyslogSpec, stop: &AtomicBool) {
    let (dir, path, host) = (home.join("logs"), cursor_path(home, spec), hostname());
    let mut cursor = load_cursor(&path);
    let mut backoff = Duration::from_millis(100);
    let mut session: Option<Session> = None;
    let mut said = String::new();
    let mut report = |what: String| {
        if what != said {
            eprintln!("kiln serve: syslog {}: {what}", spec.url);
            said = what;
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let batch = match next_batch(&dir, &cursor, BATCH, &host, spec.facility) {
            Ok(b) => b,
            Err(e) => {
                report(format!("reading {}: {e}", dir.display()));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if batch.messages.is_empty() {
            if batch.next != cursor {
                cursor = batch.next;
                let _ = save_cursor(&path, &cursor);
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        if session.is_none() {
            match Session::open(spec) {
                Ok(s) => {
                    report("connected".into());
                    backoff = Duration::from_millis(100);
                    session = Some(s);
                }
                Err(e) => {
                    report(format!("cannot connect: {e}; retrying"));
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let frames: Vec<(&str, Vec<u8>)> = batch.messages.iter().map(|m| ("syslog", m.clone().into_bytes())).collect();
        match session.as_mut().expect("connected above").send(&frames) {
            Ok(()) => {
                cursor = batch.next;
                if let Err(e) = save_cursor(&path, &cursor) {
                    report(format!("{}: {e}", path.display()));
                }
            }
            Err((acked, e)) => {
                // What was acknowledged is delivered; the rest is sent
                // again from the cursor on the next connection.
                for (file, end) in &batch.ends[..acked] {
                    cursor.insert(file.clone(), *end);
                }
                if acked > 0 {
                    if let Err(e) = save_cursor(&path, &cursor) {
                        report(format!("{}: {e}", path.display()));
                    }
                }
                report(format!("lost the connection after {acked} acknowledged: {e}; resending from there"));
                session = None;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    if let Some(mut s) = session.filter(|s| s.transport == Transport::Relp) {
        let _ = s.w.write_all(&relp_frame(s.txnr + 1, "close", b""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::logs::LogMeta;

    fn line(ts: i64, text: &str) -> LogLine {
        LogLine {
            ts,
            meta: LogMeta {
                service: "web".into(),
                instance: "web-1a2b3c4d".into(),
                image: "sha256:ab".into(),
                revision: Some("c0ffee".into()),
                release: Some("web-3".into()),
            },
            stream: "stdout".into(),
            line: text.into(),
        }
    }

    #[test]
    fn a_line_is_an_rfc_5424_message_with_its_identity_as_structured_data() {
        let m = rfc5424(&line(1_796_216_000_123, "order 7"), "host one", 16);
        assert_eq!(
            m,
            "<134>1 2026-12-02T12:53:20.123Z hostone web web-1a2b3c4d stdout \
             [kiln@32473 instance=\"web-1a2b3c4d\" release=\"web-3\" digest=\"sha256:ab\" revision=\"c0ffee\" stream=\"stdout\"] order 7"
        );
        let mut l = line(0, "x");
        l.stream = "stderr".into();
        l.meta.release = Some("a\"b]c\\".into());
        l.meta.revision = None;
        let m = rfc5424(&l, "", 23);
        assert!(m.starts_with("<188>1 1970-01-01T00:00:00.000Z - web "), "{m}");
        assert!(m.contains(r#"release="a\"b\]c\\""#) && !m.contains("revision="), "{m}");
    }

    #[test]
    fn relp_frames_round_trip_and_bad_ones_are_refused() {
        assert_eq!(relp_frame(1, "syslog", b"hi"), b"1 syslog 2 hi\n");
        assert_eq!(relp_frame(9, "close", b""), b"9 close 0\n");
        let mut r = &b"1 rsp 6 200 OK\n2 rsp 0\n0 serverclose 0\n"[..];
        assert_eq!(read_relp_frame(&mut r).unwrap(), (1, "rsp".into(), b"200 OK".to_vec()));
        assert_eq!(read_relp_frame(&mut r).unwrap(), (2, "rsp".into(), Vec::new()));
        assert_eq!(read_relp_frame(&mut r).unwrap().1, "serverclose");
        for bad in [&b"x rsp 0\n"[..], b"1 rsp 5 200 OKX", b"1 rsp zz\n", b"1 rsp 3 abcd"] {
            assert!(read_relp_frame(&mut &bad[..]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn batches_take_whole_lines_in_file_order_and_resume_from_the_cursor() {
        let dir = kiln_testutil::tempdir("ship-batch");
        let write = |name: &str, lines: &[LogLine], tail: &str| {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).unwrap();
            for l in lines {
                writeln!(f, "{}", serde_json::to_string(l).unwrap()).unwrap();
            }
            write!(f, "{tail}").unwrap();
        };
        write("a.jsonl", &[line(1, "a1"), line(2, "a2"), line(3, "a3")], "");
        write("b.jsonl", &[line(1, "b1")], "{\"ts\":4,\"serv");
        std::fs::write(dir.join("other.txt"), "not a log").unwrap();
        let b = next_batch(&dir, &Cursor::new(), 2, "h", 16).unwrap();
        assert_eq!(b.messages.len(), 2);
        assert_eq!(b.ends[1], ("a.jsonl".to_owned(), b.next["a.jsonl"]), "each message knows where it ends");
        assert!(b.ends[0].1 < b.ends[1].1);
        assert!(b.messages[0].ends_with(" a1") && b.messages[1].ends_with(" a2"));
        let b = next_batch(&dir, &b.next, 10, "h", 16).unwrap();
        let texts: Vec<&str> = b.messages.iter().map(|m| m.rsplit(' ').next().unwrap()).collect();
        assert_eq!(texts, ["a3", "b1"], "the torn line waits for its end");
        let done = b.next.clone();
        assert!(next_batch(&dir, &done, 10, "h", 16).unwrap().messages.is_empty());
        std::fs::remove_file(dir.join("a.jsonl")).unwrap();
        let b = next_batch(&dir, &done, 10, "h", 16).unwrap();
        assert!(!b.next.contains_key("a.jsonl"), "a pruned file leaves the cursor");
    }
}
