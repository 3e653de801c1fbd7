//! Accounts and sessions: sign-up/in with argon2id password hashes, short-lived JWT access tokens, rotating
//! single-use refresh tokens grouped in families (a replayed refresh token revokes its family), revocation on
//! sign-out and instant lock-out of blocked users. Every revocation check fails closed.

pub mod password;
pub mod tokens;

use std::sync::Arc;

use chrono::Utc;
use serde::Deserialize;

use crate::domain::user::{self, AccountStatus, Address, Role, User, UserError};
use crate::store::{Page, RefreshToken, RefreshUse, RevocationStore, StoreError, UserStore};
use password::PasswordHasher;
use tokens::{AccessClaims, TokenError, TokenKeys};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Invalid(#[from] UserError),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("email or password is incorrect")]
    InvalidCredentials,
    #[error("authentication required")]
    MissingToken,
    #[error("token is invalid")]
    InvalidToken,
    #[error("token has expired")]
    TokenExpired,
    #[error("token has been revoked")]
    TokenRevoked,
    #[error("refresh token was already used; every session of this sign-in has been revoked")]
    RefreshReused,
    #[error("this account is blocked")]
    AccountBlocked,
    #[error("user not found")]
    UserNotFound,
    #[error("administrators cannot block themselves")]
    CannotBlockSelf,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// Every password-hashing slot is taken and the wait queue is full.
    #[error("too many sign-ins in progress; try again shortly")]
    Busy,
}

/// A signed-in request: who, and which token and session family it came with.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub claims: AccessClaims,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }
}

/// A session that ended before its access token expired, announced so that long-lived connections (the
/// notification WebSocket) close at once instead of living on until the token expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Signed out, or the family was revoked after a refresh-token replay: every token of the family is dead.
    Revoked { user_id: String, family: String },
    /// The account was blocked: every session of the user is dead.
    Blocked { user_id: String },
}

impl SessionEnd {
    /// Whether this ends the session `claims` belong to.
    pub fn ends(&self, claims: &AccessClaims) -> bool {
        match self {
            SessionEnd::Revoked { user_id, family } => *user_id == claims.sub && *family == claims.fam,
            SessionEnd::Blocked { user_id } => *user_id == claims.sub,
        }
    }
}

/// Tokens handed to a client after sign-up, sign-in or refresh.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub access_token: String,
    pub access_ttl_secs: u64,
    pub refresh_token: String,
    pub refresh_ttl_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfilePatch {
    pub name: Option<String>,
    /// `null` clears the phone number.
    #[serde(default, deserialize_with = "double_option")]
    pub phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub address: Option<Option<Address>>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub struct AuthService {
    users: Arc<dyn UserStore>,
    revocations: Arc<dyn RevocationStore>,
    keys: TokenKeys,
    hasher: PasswordHasher,
    access_ttl: chrono::Duration,
    refresh_ttl: chrono::Duration,
    ended: tokio::sync::broadcast::Sender<SessionEnd>,
}

fn family_key(family: &str) -> String {
    format!("fam:{family}")
}

fn token_key(jti: &str) -> String {
    format!("jti:{jti}")
}

impl AuthService {
    pub fn new(
        users: Arc<dyn UserStore>,
        revocations: Arc<dyn RevocationStore>,
        keys: TokenKeys,
        hasher: PasswordHasher,
        access_ttl_secs: u64,
        refresh_ttl_secs: u64,
    ) -> Self {
        Self {
            users,
            revocations,
            keys,
            hasher,
            access_ttl: chrono::Duration::seconds(access_ttl_secs as i64),
            refresh_ttl: chrono::Duration::seconds(refresh_ttl_secs as i64),
            ended: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// Sessions ended on this node from now on (sign-out, family revocation, blocking).
    pub fn session_ends(&self) -> tokio::sync::broadcast::Receiver<SessionEnd> {
        self.ended.subscribe()
    }

    fn announce(&self, end: SessionEnd) {
        let _ = self.ended.send(end);
    }

    pub async fn signup(&self, email: &str, password: &str, name: &str) -> Result<Session, AuthError> {
        let user = self.create_user(email, password, name, Role::User).await?;
        self.start_session(user, uuid::Uuid::new_v4().to_string()).await
    }

    async fn create_user(&self, email: &str, password: &str, name: &str, role: Role) -> Result<User, AuthError> {
        let email = user::normalize_email(email)?;
        user::check_password(password, &email)?;
        let name = user::check_name(name)?;
        if self.users.user_by_email(&email).await?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        let password_hash = self.hasher.hash(password.to_string()).await?;
        let now = Utc::now();
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            email,
            name,
            phone: None,
            address: None,
            role,
            status: AccountStatus::Active,
            password_hash,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        match self.users.insert_user(&user).await {
            Ok(()) => Ok(user),
            Err(StoreError::Duplicate(_)) => Err(AuthError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the configured admin account if no account has that email yet.
    pub async fn ensure_admin(&self, email: &str, password: &str) -> Result<bool, AuthError> {
        match self.create_user(email, password, "Administrator", Role::Admin).await {
            Ok(_) => Ok(true),
            Err(AuthError::EmailTaken) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn signin(&self, email: &str, password: &str) -> Result<Session, AuthError> {
        let result = self.check_credentials(email, password).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(AuthError::InvalidCredentials) => "invalid_credentials",
            Err(AuthError::AccountBlocked) => "blocked",
            Err(AuthError::Busy) => "busy",
            Err(_) => "error",
        };
        metrics::counter!(crate::telemetry::metrics::SIGNINS, "outcome" => outcome).increment(1);
        result
    }

    async fn check_credentials(&self, email: &str, password: &str) -> Result<Session, AuthError> {
        let found = match user::normalize_email(email) {
            Ok(email) => self.users.user_by_email(&email).await?,
            Err(_) => None,
        };
        // Verify against a fixed hash when the account does not exist, so timing does not reveal which emails exist.
        let hash = found.as_ref().map(|u| u.password_hash.clone());
        let valid = self.hasher.verify(password.to_string(), hash).await?;
        let user = match found {
            Some(user) if valid => user,
            _ => return Err(AuthError::InvalidCredentials),
        };
        if user.status == AccountStatus::Blocked {
            return Err(AuthError::AccountBlocked);
        }
        self.start_session(user, uuid::Uuid::new_v4().to_string()).await
    }

    async fn start_session(&self, user: User, family: String) -> Result<Session, AuthError> {
        let now = Utc::now();
        let access_token = self.keys.issue(&user, &family, now, self.access_ttl)?;
        let refresh_token = tokens::random_token();
        let record = RefreshToken {
            user_id: user.id.clone(),
            family_id: family,
            expires_at: now + self.refresh_ttl,
            used: false,
        };
        self.users.insert_refresh_token(&tokens::digest(&refresh_token), &record).await?;
        Ok(Session {
            user,
            access_token,
            access_ttl_secs: self.access_ttl.num_seconds() as u64,
            refresh_token,
            refresh_ttl_secs: self.refresh_ttl.num_seconds() as u64,
        })
    }

    /// Exchanges a refresh token for a new pair. The presented token can never be used again; presenting it a
    /// second time revokes its whole family, including access tokens issued from it.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, AuthError> {
        let digest = tokens::digest(refresh_token);
        // A blocked account's refresh is refused without using the token, so after unblocking the session goes on
        // instead of being revoked as a replay.
        if let Some(record) = self.users.refresh_token(&digest).await? {
            if !record.used
                && self.users.user(&record.user_id).await?.is_some_and(|u| u.status == AccountStatus::Blocked)
            {
                return Err(AuthError::AccountBlocked);
            }
        }
        let record = match self.users.use_refresh_token(&digest).await? {
            RefreshUse::Unknown => return Err(AuthError::InvalidToken),
            RefreshUse::Reused(record) => {
                tracing::warn!(user_id = %record.user_id, family = %record.family_id, "refresh token replayed; revoking its family");
                self.revocations.revoke(&family_key(&record.family_id), Utc::now() + self.refresh_ttl).await?;
                self.announce(SessionEnd::Revoked { user_id: record.user_id, family: record.family_id });
                return Err(AuthError::RefreshReused);
            }
            RefreshUse::Consumed(record) => record,
        };
        if self.revocations.any_revoked(&[family_key(&record.family_id)]).await? {
            return Err(AuthError::TokenRevoked);
        }
        if record.expires_at <= Utc::now() {
            return Err(AuthError::TokenExpired);
        }
        let user = self.users.user(&record.user_id).await?.ok_or(AuthError::InvalidToken)?;
        if user.status == AccountStatus::Blocked {
            return Err(AuthError::AccountBlocked);
        }
        self.start_session(user, record.family_id).await
    }

    /// Verifies an access token: signature, expiry, revocation (of the token and of its family) and that the
    /// account still exists and is active. Any failure to check revocation refuses the token.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.keys.verify(token).map_err(|e| match e {
            TokenError::Expired => AuthError::TokenExpired,
            _ => AuthError::InvalidToken,
        })?;
        if self.revocations.any_revoked(&[token_key(&claims.jti), family_key(&claims.fam)]).await? {
            return Err(AuthError::TokenRevoked);
        }
        let user = self.users.user(&claims.sub).await?.ok_or(AuthError::InvalidToken)?;
        if user.status == AccountStatus::Blocked {
            return Err(AuthError::AccountBlocked);
        }
        Ok(Principal { user, claims })
    }

    /// Checks again that an authenticated session is still valid: not revoked, account not blocked.
    pub async fn recheck(&self, claims: &AccessClaims) -> Result<(), AuthError> {
        if self.revocations.any_revoked(&[token_key(&claims.jti), family_key(&claims.fam)]).await? {
            return Err(AuthError::TokenRevoked);
        }
        match self.users.user(&claims.sub).await? {
            None => Err(AuthError::InvalidToken),
            Some(u) if u.status == AccountStatus::Blocked => Err(AuthError::AccountBlocked),
            Some(_) => Ok(()),
        }
    }

    /// Revokes the access token and its whole session family (so the refresh token dies with it).
    pub async fn signout(&self, principal: &Principal) -> Result<(), AuthError> {
        let until = chrono::DateTime::from_timestamp(principal.claims.exp, 0).unwrap_or_else(Utc::now);
        self.revocations.revoke(&token_key(&principal.claims.jti), until).await?;
        self.revocations.revoke(&family_key(&principal.claims.fam), Utc::now() + self.refresh_ttl).await?;
        self.announce(SessionEnd::Revoked { user_id: principal.user.id.clone(), family: principal.claims.fam.clone() });
        Ok(())
    }

    pub async fn user(&self, id: &str) -> Result<User, AuthError> {
        self.users.user(id).await?.ok_or(AuthError::UserNotFound)
    }

    pub async fn update_profile(&self, user_id: &str, patch: ProfilePatch) -> Result<User, AuthError> {
        let name = patch.name.as_deref().map(user::check_name).transpose()?;
        let phone = patch.phone.map(|p| p.as_deref().map(user::check_phone).transpose()).transpose()?;
        let address = patch.address.map(|a| a.as_ref().map(user::check_address).transpose()).transpose()?;
        self.modify_user(user_id, |u| {
            if let Some(name) = &name {
                u.name = name.clone();
            }
            if let Some(phone) = &phone {
                u.phone = phone.clone();
            }
            if let Some(address) = &address {
                u.address = address.clone();
            }
        })
        .await
    }

    pub async fn set_status(&self, admin: &Principal, user_id: &str, status: AccountStatus) -> Result<User, AuthError> {
        if admin.user.id == user_id && status == AccountStatus::Blocked {
            return Err(AuthError::CannotBlockSelf);
        }
        let user = self.modify_user(user_id, |u| u.status = status).await?;
        if status == AccountStatus::Blocked {
            self.announce(SessionEnd::Blocked { user_id: user.id.clone() });
        }
        tracing::info!(admin = %admin.user.id, user_id, ?status, "account status changed");
        Ok(user)
    }

    pub async fn list_users(&self, page: u32, limit: u32) -> Result<Page<User>, AuthError> {
        Ok(self.users.list_users(page, limit).await?)
    }

    /// Read-modify-write with the store's version check, retried on a concurrent write.
    async fn modify_user(&self, user_id: &str, change: impl Fn(&mut User)) -> Result<User, AuthError> {
        for _ in 0..5 {
            let mut user = self.users.user(user_id).await?.ok_or(AuthError::UserNotFound)?;
            change(&mut user);
            user.version += 1;
            user.updated_at = Utc::now();
            match self.users.update_user(&user).await {
                Ok(()) => return Ok(user),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Store(StoreError::Unavailable("too many concurrent updates to this account".into())))
    }
}
