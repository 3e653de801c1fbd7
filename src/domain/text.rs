//! Free text sent by users (names, titles, descriptions, addresses, reasons, codes): the one rule for which
//! characters may be stored. Stored text is shown to other people, in emails, admin screens and logs, so nothing
//! that controls a terminal, reorders what is displayed or hides itself is accepted.

use serde::{Deserialize, Serialize};

/// A user-supplied text field that holds a character no text field accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("`{field}` must not contain control or invisible formatting characters (found U+{:04X})", u32::from(*.ch))]
pub struct InvalidText {
    pub field: crate::domain::Name,
    pub ch: char,
}

/// Text that breaks a field's own rules (empty, too long) or holds a forbidden character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TextError {
    #[error(transparent)]
    Forbidden(#[from] InvalidText),
    #[error("`{field}` {message}")]
    Rule { field: crate::domain::Name, message: String },
}

/// Whether line breaks belong in the field: only multi-line text (a product description) may hold `\n`, `\r\n`
/// and `\t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    Single,
    Multi,
}

/// Characters refused in every text field: C0 and C1 controls and DEL (which drive terminals and split log lines),
/// the bidirectional marks, embeddings, overrides and isolates (which make text display in another order than it
/// is stored, e.g. a file name that reads `txt.exe` backwards), the Unicode line and paragraph separators, and
/// invisible characters that make two identical-looking texts differ or smuggle hidden text (zero-width space, word
/// joiner and invisible operators, the byte-order mark, deprecated format controls, interlinear annotations, tag
/// characters). Zero-width joiner and non-joiner stay allowed: emoji sequences and several scripts need them.
fn forbidden(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1F}'
            | '\u{7F}'..='\u{9F}'
            | '\u{61C}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// The one check every user-supplied text field goes through.
pub fn check(field: &'static str, value: &str, lines: Lines) -> Result<(), InvalidText> {
    let mut chars = value.chars().peekable();
    while let Some(ch) = chars.next() {
        let allowed = match (lines, ch) {
            (Lines::Multi, '\n' | '\t') => true,
            (Lines::Multi, '\r') => chars.peek() == Some(&'\n'),
            _ => !forbidden(ch),
        };
        if !allowed {
            return Err(InvalidText { field: field.into(), ch });
        }
    }
    Ok(())
}

/// A required single-line field: no forbidden character, then trimmed, non-empty and at most `max` characters.
pub(crate) fn required_text(field: &'static str, value: &str, max: usize) -> Result<String, TextError> {
    check(field, value, Lines::Single)?;
    let v = value.trim();
    if v.is_empty() {
        return Err(TextError::Rule { field: field.into(), message: "must not be empty".into() });
    }
    within(field, v, max)
}

/// An optional multi-line field (may be empty): no forbidden character, then trimmed, at most `max` characters.
pub(crate) fn long_text(field: &'static str, value: &str, max: usize) -> Result<String, TextError> {
    check(field, value, Lines::Multi)?;
    within(field, value.trim(), max)
}

fn within(field: &'static str, v: &str, max: usize) -> Result<String, TextError> {
    if v.chars().count() > max {
        return Err(TextError::Rule { field: field.into(), message: format!("must be at most {max} characters") });
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DANGEROUS: [char; 20] = [
        '\u{0}',
        '\u{7}',
        '\u{8}',
        '\u{1B}',
        '\u{7F}',
        '\u{85}',
        '\u{9B}',
        '\u{61C}',
        '\u{200B}',
        '\u{200E}',
        '\u{200F}',
        '\u{2028}',
        '\u{2029}',
        '\u{202A}',
        '\u{202E}',
        '\u{2066}',
        '\u{2069}',
        '\u{2060}',
        '\u{FEFF}',
        '\u{E0041}',
    ];

    #[test]
    fn dangerous_characters_are_refused_everywhere_in_every_field() {
        for ch in DANGEROUS {
            for value in [format!("{ch}"), format!("Mug{ch}"), format!("{ch}Mug"), format!("M{ch}ug")] {
                for lines in [Lines::Single, Lines::Multi] {
                    assert_eq!(check("title", &value, lines), Err(InvalidText { field: "title".into(), ch }), "{ch:?}");
                }
            }
        }
    }

    #[test]
    fn line_breaks_only_in_multi_line_text() {
        for text in ["two\nlines", "crlf\r\nline", "a\ttab"] {
            assert!(check("description", text, Lines::Multi).is_ok(), "{text:?}");
            assert!(check("title", text, Lines::Single).is_err(), "{text:?}");
        }
        // A lone carriage return rewrites the line it is printed on.
        assert_eq!(
            check("description", "ok\rfake", Lines::Multi),
            Err(InvalidText { field: "description".into(), ch: '\r' })
        );
        assert!(check("description", "ends with\r", Lines::Multi).is_err());
    }

    #[test]
    fn ordinary_text_in_any_script_is_accepted() {
        for text in
            ["Crème brûlée", "Ｗｉｄｅ mug", "שלום", "مرحبا", "नमस्ते", "کتاب‌ها", "👩‍👩‍👧 family", "{{total}}", "50% off!"]
        {
            assert!(check("title", text, Lines::Single).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn the_message_names_the_field_and_the_character() {
        let e = required_text("name", "Eve\u{202E}gnp.exe", 100).unwrap_err();
        assert_eq!(e.to_string(), "`name` must not contain control or invisible formatting characters (found U+202E)");
        assert_eq!(required_text("name", "  ", 100).unwrap_err().to_string(), "`name` must not be empty");
        assert_eq!(required_text("name", " Ada ", 100), Ok("Ada".to_string()));
        assert_eq!(long_text("description", " a\nb ", 5), Ok("a\nb".to_string()));
        assert!(matches!(long_text("description", "abcdef", 5), Err(TextError::Rule { .. })));
    }

    proptest! {
        /// Whatever the input, accepted text holds no forbidden character, and refused text names one it holds.
        #[test]
        fn accepted_text_never_holds_a_forbidden_character(s in "\\PC{0,20}|[\\x00-\\x{9F}\\x{2000}-\\x{2070}a-z]{0,20}") {
            match check("f", &s, Lines::Single) {
                Ok(()) => prop_assert!(!s.chars().any(forbidden)),
                Err(InvalidText { ch, .. }) => prop_assert!(forbidden(ch) && s.contains(ch)),
            }
        }
    }
}
