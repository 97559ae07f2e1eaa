//! Event sinks: stdout, files (rotated, mode 0600), syslog (RFC 5424 over a unix
//! socket, UDP or TCP) and plain JSON lines over UDP or TCP.
//!
//! A sink is named by a spec (`--events`, repeatable):
//!
//! | spec | what |
//! |---|---|
//! | `stdout` or `-` | JSON lines on standard output |
//! | `PATH` or `file://PATH[?max_bytes=100M&keep=5]` | JSON lines appended to a file, rotated by size |
//! | `syslog` or `syslog+unix:///dev/log` | RFC 5424 datagrams to a local syslog socket |
//! | `syslog+udp://HOST:PORT` | RFC 5424, one message per datagram |
//! | `syslog+tcp://HOST:PORT` | RFC 5424, octet-counted framing (RFC 6587) |
//! | `udp://HOST:PORT`, `tcp://HOST:PORT` | JSON lines (one per datagram over UDP) |
//!
//! Syslog specs take `?facility=NAME` (default `auth`).
//!
//! Writers report exactly which messages were written whole, so losses are
//! counted per message, including a message cut by a broken connection.

use super::syslog;
use std::fmt;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long one write to a network sink may block before it counts as failed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a sink that failed waits before it reconnects (its events meanwhile
/// count as failed: a dead sink never holds events up).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File {
        path: PathBuf,
        /// Rotate before a write would take the file past this size; 0 = never.
        max_bytes: u64,
        /// Rotated files kept (`PATH.1` … `PATH.keep`).
        keep: u32,
    },
    Tcp(String),
    Udp(String),
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    pub target: Target,
    /// RFC 5424 with this facility; `None` = JSON lines.
    pub syslog_facility: Option<u8>,
    /// The spec as given (names the sink in loss reports and `warden status`).
    pub text: String,
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
pub const DEFAULT_KEEP: u32 = 5;
const MAX_KEEP: u32 = 1000;
const DEFAULT_FACILITY: &str = "auth";

impl std::str::FromStr for SinkSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let spec = |target, syslog_facility| SinkSpec {
            target,
            syslog_facility,
            text: text.to_owned(),
        };
        let file = |path: &str, max_bytes, keep| Target::File {
            path: PathBuf::from(path),
            max_bytes,
            keep,
        };
        match text {
            "" => return Err("empty event sink".into()),
            "-" | "stdout" => return Ok(spec(Target::Stdout, None)),
            "syslog" => {
                return Ok(spec(
                    Target::Unix("/dev/log".into()),
                    syslog::facility(DEFAULT_FACILITY),
                ));
            }
            _ => {}
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(spec(file(text, DEFAULT_MAX_BYTES, DEFAULT_KEEP), None));
        };
        let (place, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut opts = Options::parse(query)?;
        let (syslog, transport) = match scheme.strip_prefix("syslog+") {
            Some(t) => (true, t),
            None => (false, scheme),
        };
        let facility = if syslog {
            let name = opts.take("facility").unwrap_or(DEFAULT_FACILITY.into());
            Some(syslog::facility(&name).ok_or_else(|| {
                format!(
                    "unknown syslog facility `{name}` (one of {})",
                    syslog::FACILITIES
                        .iter()
                        .map(|f| f.0)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?)
        } else {
            None
        };
        let host_port = |place: &str| -> Result<String, String> {
            match place.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0) => {
                    Ok(place.to_owned())
                }
                _ => Err(format!("`{text}`: expected {scheme}://HOST:PORT")),
            }
        };
        let target = match (transport, syslog) {
            ("file", false) => {
                if place.is_empty() {
                    return Err(format!("`{text}`: expected file://PATH"));
                }
                let max_bytes = opts
                    .take("max_bytes")
                    .map(|v| {
                        warden_runtime::units::parse_size(&v).map_err(|e| format!("max_bytes: {e}"))
                    })
                    .transpose()?
                    .unwrap_or(DEFAULT_MAX_BYTES);
                let keep = opts
                    .take("keep")
                    .map(|v| match v.parse::<u32>() {
                        Ok(k) if k <= MAX_KEEP => Ok(k),
                        _ => Err(format!("keep: `{v}` is not a number from 0 to {MAX_KEEP}")),
                    })
                    .transpose()?
                    .unwrap_or(DEFAULT_KEEP);
                file(place, max_bytes, keep)
            }
            ("tcp", _) => Target::Tcp(host_port(place)?),
            ("udp", _) => Target::Udp(host_port(place)?),
            ("unix", true) if !place.is_empty() => Target::Unix(place.into()),
            _ => {
                return Err(format!(
                    "`{text}`: unknown event sink (stdout, PATH, file://PATH, tcp://, udp://, syslog, syslog+unix://PATH, syslog+udp://, syslog+tcp://)"
                ));
            }
        };
        opts.finish(text)?;
        Ok(spec(target, facility))
    }
}

/// `k=v&k=v`, every key used exactly once.
struct Options(Vec<(String, String)>);

impl Options {
    fn parse(query: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}`: expected KEY=VALUE"))?;
            out.push((k.to_owned(), v.to_owned()));
        }
        Ok(Self(out))
    }

    fn take(&mut self, key: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    fn finish(self, text: &str) -> Result<(), String> {
        match self.0.first() {
            Some((k, _)) => Err(format!("`{text}`: unknown option `{k}`")),
            None => Ok(()),
        }
    }
}

/// The outcome of writing a batch: messages written whole, messages lost, and
/// the error that lost them.
#[derive(Debug, Default)]
pub struct Written {
    pub ok: usize,
    pub failed: usize,
    pub error: Option<io::Error>,
}

/// Frames one encoded event for a sink: a JSON line on streams, one JSON
/// document per datagram, or RFC 5424 (octet-counted on streams).
pub struct Framer {
    header: Option<syslog::Header>,
    stream: bool,
}

impl Framer {
    pub fn new(spec: &SinkSpec) -> Self {
        Self {
            header: spec.syslog_facility.map(syslog::Header::new),
            stream: matches!(
                spec.target,
                Target::Stdout | Target::File { .. } | Target::Tcp(_)
            ),
        }
    }

    pub fn frame(&self, json: &str, severity: u8, time_ms: u64, msgid: &str, seq: u64) -> Vec<u8> {
        match &self.header {
            Some(h) => {
                let m = h.message(severity, time_ms, msgid, seq, json);
                if self.stream {
                    syslog::octet_counted(&m).into_bytes()
                } else {
                    m.into_bytes()
                }
            }
            None if self.stream => format!("{json}\n").into_bytes(),
            None => json.as_bytes().to_vec(),
        }
    }
}

/// Writes framed messages in order.
pub trait Writer: Send {
    fn write_batch(&mut self, msgs: &[Vec<u8>]) -> Written;
}

/// Opens the writer of a sink. Network sinks connect lazily (and reconnect), so
/// a receiver that is down at start-up is counted, not fatal; a file that cannot
/// be opened is.
pub fn open(spec: &SinkSpec) -> io::Result<Box<dyn Writer>> {
    Ok(match &spec.target {
        Target::Stdout => Box::new(StreamWriter::new(|| {
            // Unbuffered, so "written" means handed to the kernel.
            use std::os::fd::{AsFd, OwnedFd};
            let fd: OwnedFd = io::stdout().as_fd().try_clone_to_owned()?;
            Ok(std::fs::File::from(fd))
        })),
        Target::File {
            path,
            max_bytes,
            keep,
        } => Box::new(FileWriter::open(path, *max_bytes, *keep)?),
        Target::Tcp(addr) => {
            let addr = addr.clone();
            Box::new(
                StreamWriter::new(move || {
                    let sa = resolve(&addr)?;
                    let s = TcpStream::connect_timeout(&sa, SEND_TIMEOUT)?;
                    s.set_write_timeout(Some(SEND_TIMEOUT))?;
                    s.set_nodelay(true)?;
                    Ok(s)
                })
                .with_liveness(peer_open),
            )
        }
        Target::Udp(addr) => {
            let addr = addr.clone();
            Box::new(DatagramWriter::new(move || {
                let sa = resolve(&addr)?;
                let bind = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let s = UdpSocket::bind(bind)?;
                s.connect(sa)?;
                s.set_write_timeout(Some(SEND_TIMEOUT))?;
                Ok(Box::new(move |m: &[u8]| s.send(m).map(drop)) as SendFn)
            }))
        }
        Target::Unix(path) => {
            let path = path.clone();
            Box::new(DatagramWriter::new(move || {
                let s = UnixDatagram::unbound()?;
                s.connect(&path)?;
                s.set_write_timeout(Some(SEND_TIMEOUT))?;
                Ok(Box::new(move |m: &[u8]| s.send(m).map(drop)) as SendFn)
            }))
        }
    })
}

fn resolve(addr: &str) -> io::Result<std::net::SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{addr}: no address")))
}

/// Whether the receiver still has the connection open: a receiver that closed it
/// (restarted) would take the next write and reset, losing it uncounted.
fn peer_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let open = match s.peek(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).is_ok() && open
}

/// Writes `msgs` as one byte stream; counts the messages that went out whole.
fn write_stream(w: &mut impl Write, msgs: &[Vec<u8>]) -> Written {
    let buf = msgs.concat();
    let mut done = 0;
    let error = loop {
        if done == buf.len() {
            break w.flush().err();
        }
        match w.write(&buf[done..]) {
            Ok(0) => break Some(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e),
        }
    };
    let mut end = 0;
    let ok = msgs
        .iter()
        .take_while(|m| {
            end += m.len();
            end <= done
        })
        .count();
    let ok = if error.is_some() && done == buf.len() {
        // Everything was handed over but the flush failed: nothing is known lost
        // beyond what the stream buffered; count the batch as failed to be safe.
        0
    } else {
        ok
    };
    Written {
        ok,
        failed: msgs.len() - ok,
        error,
    }
}

type Connect<T> = Box<dyn FnMut() -> io::Result<T> + Send>;

/// A byte stream that is (re)connected on demand: stdout, TCP.
struct StreamWriter<S: Write + Send> {
    connect: Connect<S>,
    alive: fn(&S) -> bool,
    stream: Option<S>,
    retry_at: Option<Instant>,
}

impl<S: Write + Send> StreamWriter<S> {
    fn new(connect: impl FnMut() -> io::Result<S> + Send + 'static) -> Self {
        Self {
            connect: Box::new(connect),
            alive: |_| true,
            stream: None,
            retry_at: None,
        }
    }

    fn with_liveness(mut self, alive: fn(&S) -> bool) -> Self {
        self.alive = alive;
        self
    }
}

impl<S: Write + Send> Writer for StreamWriter<S> {
    fn write_batch(&mut self, msgs: &[Vec<u8>]) -> Written {
        if self.stream.as_ref().is_some_and(|s| !(self.alive)(s)) {
            self.stream = None;
        }
        if self.stream.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return Written {
                    ok: 0,
                    failed: msgs.len(),
                    error: Some(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "sink disconnected",
                    )),
                };
            }
            match (self.connect)() {
                Ok(s) => self.stream = Some(s),
                Err(e) => {
                    self.retry_at = Some(Instant::now() + RECONNECT_AFTER);
                    return Written {
                        ok: 0,
                        failed: msgs.len(),
                        error: Some(e),
                    };
                }
            }
        }
        let w = write_stream(self.stream.as_mut().expect("connected"), msgs);
        if w.error.is_some() {
            // A cut message breaks the framing: start a new stream.
            self.stream = None;
            self.retry_at = Some(Instant::now() + RECONNECT_AFTER);
        }
        w
    }
}

type SendFn = Box<dyn FnMut(&[u8]) -> io::Result<()> + Send>;

/// One message per datagram: UDP, unix datagram sockets (`/dev/log`).
struct DatagramWriter {
    connect: Connect<SendFn>,
    send: Option<SendFn>,
    retry_at: Option<Instant>,
}

impl DatagramWriter {
    fn new(connect: impl FnMut() -> io::Result<SendFn> + Send + 'static) -> Self {
        Self {
            connect: Box::new(connect),
            send: None,
            retry_at: None,
        }
    }
}

impl Writer for DatagramWriter {
    fn write_batch(&mut self, msgs: &[Vec<u8>]) -> Written {
        let mut w = Written::default();
        for m in msgs {
            if self.send.is_none() && self.retry_at.is_none_or(|t| Instant::now() >= t) {
                match (self.connect)() {
                    Ok(s) => self.send = Some(s),
                    Err(e) => {
                        self.retry_at = Some(Instant::now() + RECONNECT_AFTER);
                        w.error = Some(e);
                    }
                }
            }
            let Some(send) = self.send.as_mut() else {
                w.failed += 1;
                continue;
            };
            match send(m) {
                Ok(()) => w.ok += 1,
                Err(e) => {
                    w.failed += 1;
                    // A message too big for a datagram is its own problem, not the socket's.
                    if e.raw_os_error() != Some(libc::EMSGSIZE) {
                        self.send = None;
                        self.retry_at = Some(Instant::now() + RECONNECT_AFTER);
                    }
                    w.error = Some(e);
                }
            }
        }
        w
    }
}

/// An append-only file, mode 0600, rotated by size (`PATH` → `PATH.1` → …).
struct FileWriter {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl FileWriter {
    fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = Self::open_file(path)?;
        let meta = file.metadata()?;
        Ok(Self {
            path: path.to_owned(),
            file,
            size: meta.len(),
            // A device or pipe (`/dev/null`, a FIFO) is written, never rotated.
            max_bytes: if meta.is_file() { max_bytes } else { 0 },
            keep,
        })
    }

    fn open_file(path: &Path) -> io::Result<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        // An existing file keeps its mode on open: events are sensitive, tighten it
        // (regular files only: never a device such as /dev/null).
        if f.metadata()?.is_file() {
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(f)
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
            match Self::open_file(&self.path) {
                Ok(f) => self.file = f,
                Err(e) => {
                    // Keep writing where we were, under its own name.
                    let _ = std::fs::rename(self.rotated(1), &self.path);
                    return Err(e);
                }
            }
        }
        self.size = 0;
        Ok(())
    }
}

impl Writer for FileWriter {
    fn write_batch(&mut self, msgs: &[Vec<u8>]) -> Written {
        let len: u64 = msgs.iter().map(|m| m.len() as u64).sum();
        let mut rotate_error = None;
        if self.max_bytes > 0 && self.size > 0 && self.size + len > self.max_bytes {
            // A failed rotation keeps writing to the current file: nothing is lost.
            rotate_error = self.rotate().err();
        }
        let mut w = write_stream(&mut self.file, msgs);
        self.size += msgs[..w.ok].iter().map(|m| m.len() as u64).sum::<u64>();
        if w.error.is_some() && self.max_bytes > 0 {
            // A cut line (a full disk) would glue itself to the next one: drop it.
            let _ = self.file.set_len(self.size);
        }
        if w.error.is_none() {
            w.error = rotate_error;
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn spec(s: &str) -> SinkSpec {
        s.parse().unwrap()
    }

    #[test]
    fn specs() {
        assert_eq!(spec("-").target, Target::Stdout);
        assert_eq!(
            spec("/var/log/warden.json").target,
            Target::File {
                path: "/var/log/warden.json".into(),
                max_bytes: DEFAULT_MAX_BYTES,
                keep: DEFAULT_KEEP
            }
        );
        assert_eq!(
            spec("file:///x.json?max_bytes=1M&keep=2").target,
            Target::File {
                path: "/x.json".into(),
                max_bytes: 1 << 20,
                keep: 2
            }
        );
        let s = spec("syslog+tcp://127.0.0.1:6514?facility=local3");
        assert_eq!(s.target, Target::Tcp("127.0.0.1:6514".into()));
        assert_eq!(s.syslog_facility, Some(19));
        let s = spec("syslog");
        assert_eq!(s.target, Target::Unix("/dev/log".into()));
        assert_eq!(s.syslog_facility, Some(4));
        assert_eq!(
            spec("udp://[::1]:514").target,
            Target::Udp("[::1]:514".into())
        );
        assert_eq!(spec("udp://[::1]:514").syslog_facility, None);
        for (bad, says) in [
            ("tcp://nohost", "expected tcp://HOST:PORT"),
            ("tcp://h:0", "expected tcp://HOST:PORT"),
            ("syslog+udp://h:1?facility=mail2", "unknown syslog facility"),
            ("tcp://h:1?facility=local0", "unknown option `facility`"),
            ("file:///x?max_bytes=lots", "not a size"),
            ("http://h:1", "unknown event sink"),
            ("syslog+unix://", "unknown event sink"),
        ] {
            let e = bad.parse::<SinkSpec>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    fn lines(n: usize, width: usize) -> Vec<Vec<u8>> {
        numbered(0, n, width)
    }

    fn numbered(from: usize, n: usize, width: usize) -> Vec<Vec<u8>> {
        (from..from + n)
            .map(|i| format!("{i:0width$}\n").into_bytes())
            .collect()
    }

    #[test]
    fn files_are_private_and_rotate_without_losing_a_line() {
        let dir = std::env::temp_dir().join(format!("warden-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.json");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut w = FileWriter::open(&path, 1000, 2).unwrap();
        let mut written = 0;
        for batch in 0..30 {
            let r = w.write_batch(&numbered(batch * 7, 7, 9 + batch % 3));
            assert!(r.error.is_none(), "{:?}", r.error);
            written += r.ok;
        }
        assert_eq!(written, 210);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.join("events.json.1")), 0o600);
        assert!(!dir.join("events.json.3").exists(), "keeps 2 rotated files");
        for p in [
            &path,
            &dir.join("events.json.1"),
            &dir.join("events.json.2"),
        ] {
            assert!(std::fs::metadata(p).unwrap().len() <= 1000);
        }
        // The newest lines are all there, in order, across the files.
        let mut all = Vec::new();
        for p in ["events.json.2", "events.json.1", "events.json"] {
            all.extend(
                BufReader::new(std::fs::File::open(dir.join(p)).unwrap())
                    .lines()
                    .map(|l| l.unwrap().parse::<usize>().unwrap()),
            );
        }
        assert!(
            all.windows(2).all(|w| w[1] == w[0] + 1),
            "an unbroken run of lines: {all:?}"
        );
        assert_eq!(*all.last().unwrap(), 209);
        // A device is written, never chmodded or rotated.
        let mut null = FileWriter::open(Path::new("/dev/null"), 10, 2).unwrap();
        assert_eq!(null.write_batch(&lines(50, 4)).ok, 50);
        assert!(!Path::new("/dev/null.1").exists());
        assert_eq!(mode(Path::new("/dev/null")), 0o666);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dead_tcp_receiver_counts_failures_and_is_retried() {
        // A port nothing listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut w = open(&spec(&format!("tcp://127.0.0.1:{port}"))).unwrap();
        let r = w.write_batch(&lines(5, 4));
        assert_eq!((r.ok, r.failed), (0, 5));
        // Within the back-off the sink does not even try: events fail at once.
        let r = w.write_batch(&lines(3, 4));
        assert_eq!((r.ok, r.failed), (0, 3));
        assert_eq!(r.error.unwrap().kind(), io::ErrorKind::NotConnected);
        // The receiver comes up; after the back-off the sink reconnects.
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        std::thread::sleep(RECONNECT_AFTER);
        let r = w.write_batch(&lines(4, 4));
        assert_eq!((r.ok, r.failed), (4, 0));
        let (conn, _) = listener.accept().unwrap();
        drop(w);
        let got: Vec<String> = BufReader::new(conn).lines().map(Result::unwrap).collect();
        assert_eq!(got, ["0000", "0001", "0002", "0003"]);
    }

    #[test]
    fn a_cut_stream_counts_only_whole_messages() {
        struct Cut(usize);
        impl Write for Cut {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = b.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        // 3 messages of 5 bytes; 12 bytes get through: 2 whole, 1 cut.
        let r = write_stream(&mut Cut(12), &lines(3, 4));
        assert_eq!((r.ok, r.failed), (2, 1));
    }
}
