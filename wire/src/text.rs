//! Text from peers (file names, paths, tags, error reasons) shown on a terminal.
//!
//! A peer chooses these bytes. Written raw, an escape sequence in a shared file's name clears
//! the user's screen, rewrites what was printed before it, or sets the clipboard (OSC 52); a
//! bidirectional override makes `evil\u{202e}3pm.exe` read as `evilexe.mp3`. [`terminal_safe`]
//! writes every such character as a visible escape instead, and leaves all other text as it is.

use std::borrow::Cow;
use std::fmt::Write;

/// True for the characters a terminal may act on rather than show: C0 and C1 controls, DEL,
/// and the Unicode format characters that reorder or hide text.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061c}' // Arabic letter mark (bidi)
            | '\u{200b}'..='\u{200f}' // zero-width characters, LRM, RLM
            | '\u{2028}'..='\u{202e}' // line and paragraph separators, bidi embeddings and overrides
            | '\u{2060}'..='\u{2069}' // word joiner, invisible operators, bidi isolates
            | '\u{feff}' // zero-width no-break space
            | '\u{e0000}'..='\u{e007f}' // invisible tag characters
        )
}

/// `text` with every character a terminal could act on written as a visible `\u{..}` escape
/// (`\t`, `\n` and `\r` as such); unchanged, and not copied, when there is none.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text (as `serde_json` writes it) with the characters a terminal could act on that it
/// leaves raw (C1 controls, format characters) written as `\uXXXX` escapes: the same JSON
/// value, safe to print. `serde_json` escapes C0 controls itself; the line breaks and tabs
/// between values are left alone.
pub fn json_terminal_safe(json: &str) -> Cow<'_, str> {
    // serde_json escapes the C0 controls, not DEL.
    let unsafe_here = |c: char| (!c.is_ascii() || c == '\u{7f}') && is_unsafe(c);
    if !json.chars().any(unsafe_here) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if unsafe_here(c) {
            // As UTF-16, as JSON escapes are: a surrogate pair outside the BMP.
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{:04x}", u);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_are_shown_not_obeyed() {
        assert!(matches!(
            terminal_safe("Björk – Jóga.flac"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            terminal_safe("canopy evil \u{1b}[2J\u{1b}]52;c;ZXZpbA==\u{7} tune.mp3"),
            "canopy evil \\u{1b}[2J\\u{1b}]52;c;ZXZpbA==\\u{7} tune.mp3"
        );
        assert_eq!(terminal_safe("a\u{9b}31mb"), "a\\u{9b}31mb");
        assert_eq!(terminal_safe("evil\u{202e}3pm.exe"), "evil\\u{202e}3pm.exe");
        assert_eq!(terminal_safe("two\nlines\r\t"), "two\\nlines\\r\\t");
        assert_eq!(terminal_safe("del\u{7f}"), "del\\u{7f}");
        assert_eq!(
            terminal_safe("a\u{61c}b\u{e0041}c"),
            "a\\u{61c}b\\u{e0041}c"
        );
    }

    #[test]
    fn json_stays_the_same_value() {
        let json = "{\n  \"name\": \"a\u{9b}2J\u{202e}b\\u001b\"\n}";
        let safe = json_terminal_safe(json);
        assert_eq!(safe, "{\n  \"name\": \"a\\u009b2J\\u202eb\\u001b\"\n}");
        assert!(matches!(
            json_terminal_safe("{\"a\": \"é\"}\n"),
            Cow::Borrowed(_)
        ));
        // DEL, which serde_json leaves raw, and a character outside the BMP (two escapes).
        assert_eq!(
            json_terminal_safe("\"\u{7f}\u{e0041}\""),
            "\"\\u007f\\udb40\\udc41\""
        );
    }

    proptest! {
        #[test]
        fn nothing_unsafe_survives(s in any::<String>()) {
            let shown = terminal_safe(&s);
            prop_assert!(!shown.chars().any(is_unsafe), "{:?}", shown);
            if !s.chars().any(is_unsafe) {
                prop_assert_eq!(shown.as_ref(), s.as_str());
            }
        }
    }
}
