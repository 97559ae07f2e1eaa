//! The daemon's and the proxy's log lines, through `tracing`: always on stderr
//! (stdout may be an event sink; SIEM events never go through here), one line
//! per message, with its level and structured fields.
//!
//! Under systemd (stderr is the journal: `$JOURNAL_STREAM` names it) each line
//! starts with the syslog priority, `<4>` for a warning, which journald takes as
//! the entry's PRIORITY (`SyslogLevelPrefix=`, on by default) and strips;
//! journald adds the time. Elsewhere: `warden: WARN message key=value`.
//! The level comes from `--log-level`, else `RUST_LOG`, else `info`.

use std::fmt;
use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Installs the subscriber; `level` is an `EnvFilter` directive (`debug`,
/// `warden_proxy=debug,info`; targets are the crates: `warden_daemon`,
/// `warden_proxy`, `warden_enforce`, ..., and `kernel` for the programs' records).
pub fn init(level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).unwrap_or_else(|e| {
            eprintln!("warden: --log-level {l}: {e}; using info");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // The kernel programs' records are switched on by `--kernel-log-level`;
    // once they are, they are not filtered again here.
    let filter = filter.add_directive("kernel=trace".parse().expect("a valid directive"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Line {
            journal: stderr_is_journal(),
        })
        .try_init();
}

/// `$JOURNAL_STREAM` is `DEVICE:INODE` of the stream systemd connected; it
/// counts only if stderr is still that stream (not redirected by a wrapper).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat into the buffer it is given; fd 2 may be closed (then -1).
    if unsafe { libc::fstat(2, st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so it initialised the buffer.
    let st = unsafe { st.assume_init() };
    stream.to_string_lossy() == format!("{}:{}", st.st_dev, st.st_ino)
}

struct Line {
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let level = *meta.level();
        if self.journal {
            write!(w, "<{}>", priority(level))?;
        } else {
            let who = match meta.target() {
                t if t.starts_with("warden_proxy") => "warden proxy",
                "kernel" => "warden kernel",
                _ => "warden",
            };
            write!(w, "{who}: {level} ")?;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        // One message, one line (one journal entry): a multi-line error keeps
        // its lines, joined.
        write!(w, "{}", fields.message.trim_end().replace('\n', "; "))?;
        for (k, v) in &fields.rest {
            write!(w, " {k}={v}")?;
        }
        writeln!(w)
    }
}

/// syslog(3) priorities, as journald reads them.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest.push((field.name(), format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.rest.push((field.name(), value.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn logged(journal: bool, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_env_filter(EnvFilter::new("info"))
            .event_format(Line { journal })
            .finish();
        tracing::subscriber::with_default(sub, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn journal_lines_carry_their_priority_and_stay_one_line() {
        let out = logged(true, || {
            tracing::warn!(generation = 3, "policy rejected:\na.toml:1:2: bad");
            tracing::info!("started");
            tracing::debug!("not at info");
        });
        assert_eq!(
            out,
            "<4>policy rejected:; a.toml:1:2: bad generation=3\n<6>started\n"
        );
    }

    #[test]
    fn text_lines_name_the_component_and_level() {
        let out = logged(false, || {
            tracing::error!(sink = "file:/x", "sink failed");
            tracing::warn!(target: "warden_proxy::server", "slow client");
            tracing::info!(target: "kernel", "hook 2 verdict 1");
        });
        assert_eq!(
            out,
            "warden: ERROR sink failed sink=file:/x\nwarden proxy: WARN slow client\nwarden kernel: INFO hook 2 verdict 1\n"
        );
    }
}
