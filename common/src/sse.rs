//! Server-Sent Events encoding (the `text/event-stream` wire format) as bytes, for handlers
//! that stream events or log lines. No HTTP framework here: the API layer wraps these in its
//! responses.

/// The media type of an event stream.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// The idle keep-alive comment.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// One event with a single-line payload: `data: <line>\n\n`. A payload holds no line break, so
/// `\r` and `\n` (which SSE would read as line ends) are dropped.
pub fn data_line(line: &str) -> String {
    let mut event = String::with_capacity(line.len() + 8);
    event.push_str("data: ");
    push_line(&mut event, line);
    event.push_str("\n\n");
    event
}

/// One event with optional `id:` and `event:` fields; each line of `data` becomes one `data:`
/// field, so the client reassembles it with `\n` between lines.
pub fn event(id: Option<&str>, name: Option<&str>, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 32);
    for (field, value) in [("id", id), ("event", name)] {
        if let Some(value) = value {
            out.push_str(field);
            out.push_str(": ");
            push_line(&mut out, value);
            out.push('\n');
        }
    }
    for line in lines(data) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// A comment (ignored by clients; keeps idle connections open): `: <text>\n\n`.
pub fn comment(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    out.push_str(": ");
    push_line(&mut out, text);
    out.push_str("\n\n");
    out
}

fn push_line(out: &mut String, text: &str) {
    out.extend(text.chars().filter(|&c| c != '\r' && c != '\n'));
}

/// The lines of `data` split at `\r\n`, `\r` or `\n`, as an SSE parser splits them.
fn lines(data: &str) -> impl Iterator<Item = &str> {
    data.split('\n')
        .flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_never_carry_line_breaks() {
        assert_eq!(data_line("a\rb"), "data: ab\n\n");
        assert_eq!(data_line("a\nb"), "data: ab\n\n");
        assert_eq!(data_line(""), "data: \n\n");
    }

    #[test]
    fn events_carry_id_name_and_multi_line_data() {
        assert_eq!(
            event(Some("3"), Some("started"), "{\"a\":1}"),
            "id: 3\nevent: started\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            event(None, None, "x\ny\r\nz\rw"),
            "data: x\ndata: y\ndata: z\ndata: w\n\n"
        );
        assert_eq!(event(Some("1\n2"), None, ""), "id: 12\ndata: \n\n");
    }

    #[test]
    fn comments_and_keep_alive() {
        assert_eq!(
            comment("lagged: 7 events skipped"),
            ": lagged: 7 events skipped\n\n"
        );
        assert_eq!(comment("keep-alive").as_bytes(), KEEP_ALIVE);
    }
}
