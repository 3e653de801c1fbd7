//! User accounts: identity rules, profile validation, roles.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use super::text::{self, InvalidText, Lines, TextError};
use super::{required_text, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    Active,
    Blocked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    /// Normalised (trimmed, NFKC, lower-case); unique.
    pub email: String,
    pub name: String,
    pub phone: Option<String>,
    pub address: Option<Address>,
    pub role: Role,
    pub status: AccountStatus,
    pub password_hash: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Bumped on every write; the store refuses a write based on an older version.
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum UserError {
    #[error("email address is not valid")]
    InvalidEmail,
    #[error("password {0}")]
    WeakPassword(&'static str),
    #[error("`{field}` {message}")]
    Invalid { field: crate::domain::Name, message: String },
    #[error(transparent)]
    InvalidText(#[from] InvalidText),
}

impl From<TextError> for UserError {
    fn from(e: TextError) -> Self {
        match e {
            TextError::Forbidden(e) => e.into(),
            TextError::Rule { field, message } => UserError::Invalid { field, message },
        }
    }
}

/// The one form of an email address that sign-up, sign-in and the bootstrap admin compare: Unicode NFKC (so
/// fullwidth `Ａｌｉｃｅ` and compatibility forms fold to `Alice`), lower-cased, NFKC again (lower-casing can
/// leave a non-normalised sequence), trimmed. Two spellings that normalise alike are one account.
pub fn normalize_email(raw: &str) -> Result<String, UserError> {
    text::check("email", raw, Lines::Single)?;
    let email: String = raw.nfkc().collect::<String>().to_lowercase().nfkc().collect();
    let email = email.trim().to_string();
    let (local, domain) = email.split_once('@').ok_or(UserError::InvalidEmail)?;
    let ok = !local.is_empty()
        && local.len() <= 64
        && email.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(email)
    } else {
        Err(UserError::InvalidEmail)
    }
}

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 128;

pub fn check_password(password: &str, email: &str) -> Result<(), UserError> {
    let len = password.chars().count();
    if len < MIN_PASSWORD {
        return Err(UserError::WeakPassword("must be at least 8 characters"));
    }
    if len > MAX_PASSWORD {
        return Err(UserError::WeakPassword("must be at most 128 characters"));
    }
    if !password.chars().any(char::is_alphabetic) || !password.chars().any(|c| c.is_ascii_digit()) {
        return Err(UserError::WeakPassword("must contain at least one letter and one digit"));
    }
    if password.trim().eq_ignore_ascii_case(email.trim()) {
        return Err(UserError::WeakPassword("must not be the email address"));
    }
    Ok(())
}

pub fn check_name(name: &str) -> Result<String, UserError> {
    Ok(required_text("name", name, 100)?)
}

pub fn check_phone(phone: &str) -> Result<String, UserError> {
    text::check("phone", phone, Lines::Single)?;
    let p = phone.trim();
    let digits = p.chars().filter(char::is_ascii_digit).count();
    let allowed = p.chars().all(|c| c.is_ascii_digit() || " +-().".contains(c));
    if allowed && (5..=20).contains(&digits) && p.len() <= 30 {
        Ok(p.to_string())
    } else {
        Err(UserError::Invalid { field: "phone".into(), message: "must be a phone number of 5 to 20 digits".into() })
    }
}

pub fn check_address(a: &Address) -> Result<Address, UserError> {
    let field = |field: &'static str, v: &str, max| -> Result<String, UserError> { Ok(required_text(field, v, max)?) };
    text::check("address.country", &a.country, Lines::Single)?;
    let country = a.country.trim().to_ascii_uppercase();
    if country.len() != 2 || !country.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(UserError::Invalid {
            field: "address.country".into(),
            message: "must be a two-letter country code".into(),
        });
    }
    Ok(Address {
        line1: field("address.line1", &a.line1, 200)?,
        line2: match a.line2.as_deref() {
            Some(l) if !l.trim().is_empty() => Some(field("address.line2", l, 200)?),
            Some(l) => {
                text::check("address.line2", l, Lines::Single)?;
                None
            }
            None => None,
        },
        city: field("address.city", &a.city, 100)?,
        postal_code: field("address.postalCode", &a.postal_code, 20)?,
        country,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalize_email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in
            ["", "ada", "@example.com", "ada@", "ada@example", "a da@example.com", "ada@@example.com", "ada@.com"]
        {
            assert_eq!(normalize_email(bad), Err(UserError::InvalidEmail), "{bad}");
        }
    }

    #[test]
    fn emails_fold_compatibility_forms_and_case() {
        assert_eq!(normalize_email("Ａｌｉｃｅ@Example.com").unwrap(), "alice@example.com");
        assert_eq!(normalize_email("ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ").unwrap(), "alice@example.com");
        assert_eq!(normalize_email("ＡＬＩＣＥ@EXAMPLE.COM").unwrap(), normalize_email("alice@example.com").unwrap());
        assert_eq!(normalize_email("ﬁnn@example.com").unwrap(), "finn@example.com");
        assert_eq!(
            normalize_email("alice\u{202E}@example.com"),
            Err(UserError::InvalidText(InvalidText { field: "email".into(), ch: '\u{202E}' }))
        );
    }

    #[test]
    fn profile_text_refuses_control_and_bidi_characters() {
        fn forbidden<T>(r: Result<T, UserError>, field: &str) -> bool {
            matches!(r, Err(UserError::InvalidText(InvalidText { field: f, .. })) if f == field)
        }
        assert!(forbidden(check_name("Mallory\u{202E}"), "name"));
        assert!(forbidden(check_name("Eve\n"), "name"));
        assert!(forbidden(check_phone("+1 555\u{0}0100"), "phone"));
        let good = Address {
            line1: "1 Main St".into(),
            line2: None,
            city: "Paris".into(),
            postal_code: "75001".into(),
            country: "FR".into(),
        };
        let cases = [
            ("address.line1", Address { line1: "1 Main\u{1B}[31m St".into(), ..good.clone() }),
            ("address.line2", Address { line2: Some("Flat\u{2066}2".into()), ..good.clone() }),
            ("address.line2", Address { line2: Some("\u{0}".into()), ..good.clone() }),
            ("address.city", Address { city: "Par\u{7F}is".into(), ..good.clone() }),
            ("address.postalCode", Address { postal_code: "75\u{200F}001".into(), ..good.clone() }),
            ("address.country", Address { country: "F\u{0}".into(), ..good.clone() }),
        ];
        for (field, a) in cases {
            assert!(forbidden(check_address(&a), field), "{field}");
        }
        assert!(check_address(&good).is_ok());
    }

    #[test]
    fn password_rules() {
        assert!(check_password("correct horse 1", "a@b.co").is_ok());
        assert!(check_password("short1", "a@b.co").is_err());
        assert!(check_password("onlyletters", "a@b.co").is_err());
        assert!(check_password("123456789", "a@b.co").is_err());
        assert!(check_password(&"a1".repeat(65), "a@b.co").is_err());
        assert!(check_password("ada1@example.com", "ada1@example.com").is_err());
    }

    #[test]
    fn profile_fields() {
        assert!(check_phone("+1 (555) 010-9999").is_ok());
        assert!(check_phone("call me").is_err());
        let a = Address {
            line1: " 1 Main St ".into(),
            line2: Some("".into()),
            city: "Paris".into(),
            postal_code: "75001".into(),
            country: "fr".into(),
        };
        let a = check_address(&a).unwrap();
        assert_eq!((a.line1.as_str(), a.line2, a.country.as_str()), ("1 Main St", None, "FR"));
        assert!(check_name("  ").is_err());
    }
}
