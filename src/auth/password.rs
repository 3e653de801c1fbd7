//! argon2id hashing on the blocking pool: hashing is deliberately slow and must never stall an async worker.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::AuthError;

#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    /// A valid hash of a random password, verified against when an account does not exist.
    decoy: String,
}

impl PasswordHasher {
    pub fn new(memory_kib: u32, iterations: u32) -> Result<Self, AuthError> {
        let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| AuthError::Hashing(e.to_string()))?;
        let mut hasher = Self { params, decoy: String::new() };
        hasher.decoy = hasher.hash_now(&super::tokens::random_token())?;
        Ok(hasher)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    fn hash_now(&self, password: &str) -> Result<String, AuthError> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hashing(e.to_string()))
    }

    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.hash_now(&password))
            .await
            .map_err(|e| AuthError::Hashing(e.to_string()))?
    }

    /// Verifies `password` against `hash`, or against a decoy when `hash` is `None` (and then returns false).
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, AuthError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let real = hash.is_some();
            let stored = hash.unwrap_or_else(|| this.decoy.clone());
            let parsed = PasswordHash::new(&stored).map_err(|e| AuthError::Hashing(e.to_string()))?;
            // Verification uses the parameters recorded in the hash, so changing the config does not lock users out.
            Ok(real && this.argon2().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|e| AuthError::Hashing(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_are_salted() {
        let h = PasswordHasher::new(1024, 1).unwrap();
        let a = h.hash("s3cret-pass".into()).await.unwrap();
        let b = h.hash("s3cret-pass".into()).await.unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(h.verify("s3cret-pass".into(), Some(a.clone())).await.unwrap());
        assert!(!h.verify("wrong-pass1".into(), Some(a)).await.unwrap());
        assert!(!h.verify("s3cret-pass".into(), None).await.unwrap());
    }
}
