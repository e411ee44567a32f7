//! HS256 client tokens, minted locally from the server's secret (what a backend would do).

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
}

/// Mints tokens for many users with one key.
pub struct Minter {
    key: EncodingKey,
    header: Header,
    ttl_secs: u64,
}

impl Minter {
    pub fn new(secret: &str, ttl_secs: u64) -> Self {
        Minter {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::default(), // HS256
            ttl_secs,
        }
    }

    pub fn token(&self, user: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: user,
            exp: now + self.ttl_secs,
            iat: now,
        };
        encode(&self.header, &claims, &self.key).expect("HS256 signing cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    #[test]
    fn tokens_verify_with_the_same_secret() {
        let t = Minter::new("s3cret", 3600).token("17");
        #[derive(serde::Deserialize)]
        struct C {
            sub: String,
        }
        let d = decode::<C>(
            &t,
            &DecodingKey::from_secret(b"s3cret"),
            &Validation::default(),
        )
        .unwrap();
        assert_eq!(d.claims.sub, "17");
        assert!(decode::<C>(
            &t,
            &DecodingKey::from_secret(b"other"),
            &Validation::default()
        )
        .is_err());
    }
}
