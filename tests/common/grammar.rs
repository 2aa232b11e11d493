//! A reference model of where the WHATWG event-stream grammar lets a whole
//! event be inserted, written line by line, apart from the byte-at-a-time
//! tracker it checks (`src/sse.rs`, which includes this file in its tests).

/// For every prefix length `p` in `0..=input.len()`: may a whole event be
/// inserted after `input[..p]` without joining another?
///
/// That is: `p` is the start of the stream or the end of a line (a CR, an LF,
/// or the LF of a CRLF, so also between the CR and the LF), and no field line
/// has come since the last blank line. Comment lines (`:` first) are ignored
/// by the parser, so they do not open an event.
pub fn boundaries(input: &[u8]) -> Vec<bool> {
    let mut out = vec![false; input.len() + 1];
    out[0] = true;
    let mut in_event = false;
    let mut line_start = 0;
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'\r' && input[i] != b'\n' {
            i += 1;
            continue;
        }
        match input[line_start..i].first() {
            None => in_event = false,
            Some(b':') => {}
            Some(_) => in_event = true,
        }
        out[i + 1] = !in_event;
        if input[i] == b'\r' && input.get(i + 1) == Some(&b'\n') {
            i += 1;
            out[i + 1] = !in_event;
        }
        i += 1;
        line_start = i;
    }
    out
}
