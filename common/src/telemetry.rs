//! Logging through `tracing` to stderr: human-readable by default, one JSON object per line
//! with the flag; the level comes from `RUST_LOG` (default `info`); colour only when stderr is
//! a terminal. Never log secrets: callers pass ids and reasons, not keys or bodies.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset or invalid.
pub const DEFAULT_FILTER: &str = "info";

/// Installing the global subscriber failed (one is already installed).
#[derive(Debug, thiserror::Error)]
#[error("cannot install the log subscriber: {0}")]
pub struct InitError(#[from] tracing_subscriber::util::TryInitError);

/// Installs the process-wide subscriber: stderr, `RUST_LOG` level, JSON lines when `json`.
pub fn init(json: bool) -> Result<(), InitError> {
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = env_filter(std::env::var("RUST_LOG").ok().as_deref());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    subscriber(json, ansi, filter, std::io::stderr).try_init()?;
    Ok(())
}

/// The filter for a `RUST_LOG` value: [`DEFAULT_FILTER`] when there is none or it is invalid.
pub fn env_filter(rust_log: Option<&str>) -> EnvFilter {
    rust_log
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER))
}

/// The subscriber [`init`] installs, writing to `writer` (tests capture it).
pub fn subscriber<W>(
    json: bool,
    ansi: bool,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync + 'static>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    if json {
        Box::new(builder.json().finish())
    } else {
        Box::new(builder.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// A `MakeWriter` collecting everything written.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Capture {
            self.clone()
        }
    }

    fn logged(json: bool, filter: &str) -> String {
        let out = Capture::default();
        let sub = subscriber(json, false, env_filter(Some(filter)), out.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(node = "n1", "hello");
            tracing::debug!("details");
        });
        let bytes = out.0.lock().expect("capture").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn json_lines_with_the_flag() {
        let out = logged(true, "info");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields"]["message"], "hello");
        assert_eq!(v["fields"]["node"], "n1");
    }

    #[test]
    fn human_text_by_default_without_colour_off_a_terminal() {
        let out = logged(false, "info");
        assert!(out.contains("INFO") && out.contains("hello") && out.contains("node=\"n1\""));
        assert!(!out.trim_start().starts_with('{'), "{out}");
        assert!(!out.contains('\u{1b}'), "no ANSI escapes: {out:?}");
    }

    #[test]
    fn rust_log_sets_the_level_and_a_bad_value_falls_back_to_info() {
        assert!(logged(false, "debug").contains("details"));
        assert!(!logged(false, "info").contains("details"));
        assert_eq!(env_filter(None).to_string(), DEFAULT_FILTER);
        assert_eq!(env_filter(Some("[{")).to_string(), DEFAULT_FILTER);
        assert_eq!(env_filter(Some("debug")).to_string(), "debug");
    }

    #[test]
    fn init_installs_once() {
        init(false).expect("the first install succeeds");
        assert!(
            init(true).is_err(),
            "a second install is refused, not a panic"
        );
    }
}
