//! Client authentication: JWTs (HS256 always; RS256/ES256 when a public key is configured) and the
//! connect proxy that lets a backend vouch for a cookie session.

pub mod proxy;

use std::sync::Arc;

use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::protocol::{ChannelName, ClientError, CloseCode};

/// Who a connection is, once authenticated.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User id; empty = anonymous.
    pub user: Arc<str>,
    /// Extra channels this identity may subscribe to (the token's `channels` claim).
    pub channels: Box<[ChannelName]>,
    /// Server-side subscriptions (the token's `subs` claim): subscribed at authentication, and
    /// permitted like `channels`.
    pub subs: Box<[ChannelName]>,
    /// Raw JSON shown in presence.
    pub info: Option<Bytes>,
    /// Unix seconds after which the connection is closed with 4011 unless refreshed.
    pub expires_at: Option<u64>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Identity {
            user: Arc::from(""),
            channels: Box::new([]),
            subs: Box::new([]),
            info: None,
            expires_at: None,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.user.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("rejected by the connect proxy")]
    ProxyRejected,
    #[error("connect proxy unavailable")]
    ProxyUnavailable,
}

impl AuthError {
    pub fn client_error(self) -> ClientError {
        match self {
            AuthError::Expired => ClientError::TokenExpired,
            AuthError::ProxyUnavailable => ClientError::NotAvailable,
            _ => ClientError::Unauthorized,
        }
    }

    pub fn close_code(self) -> CloseCode {
        match self {
            AuthError::Expired => CloseCode::TokenExpired,
            _ => CloseCode::Forbidden,
        }
    }
}

/// JWT claims (PROTOCOL.md §Authentication).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Claims {
    #[serde(default)]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Server-side subscriptions: channels the connection is subscribed to at authentication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// A verification key from the config that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    pub key: &'static str,
    pub message: String,
}

fn key_error(key: &'static str) -> impl Fn(&dyn std::fmt::Display) -> KeyError {
    move |e| KeyError {
        key,
        message: e.to_string(),
    }
}

/// Verifies client tokens. Built once at start; verification is pure CPU (a few µs for HS256).
pub struct TokenVerifier {
    keys: Vec<(Algorithm, DecodingKey)>,
}

impl TokenVerifier {
    pub fn new(cfg: &AuthConfig) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if !cfg.token_secret.is_empty() {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(cfg.token_secret.as_bytes()),
            ));
        }
        if !cfg.rsa_public_key.is_empty() {
            let err = key_error("auth.rsa_public_key");
            let pem = std::fs::read(&cfg.rsa_public_key).map_err(|e| err(&e))?;
            keys.push((
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(&pem).map_err(|e| err(&e))?,
            ));
        }
        if !cfg.ecdsa_public_key.is_empty() {
            let err = key_error("auth.ecdsa_public_key");
            let pem = std::fs::read(&cfg.ecdsa_public_key).map_err(|e| err(&e))?;
            keys.push((
                Algorithm::ES256,
                DecodingKey::from_ec_pem(&pem).map_err(|e| err(&e))?,
            ));
        }
        Ok(TokenVerifier { keys })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let (alg, key) = self
            .keys
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .ok_or(AuthError::Invalid)?;
        let mut v = Validation::new(*alg);
        // `exp` is checked when present; tokens without it never expire (backend's choice).
        v.set_required_spec_claims::<&str>(&[]);
        v.leeway = 0;
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        identity_from(
            data.claims.sub,
            data.claims.channels,
            data.claims.subs,
            data.claims.info,
            data.claims.exp,
        )
    }
}

/// Builds an identity from claims (token or connect proxy), validating channel names.
pub fn identity_from(
    user: String,
    channels: Vec<String>,
    subs: Vec<String>,
    info: Option<serde_json::Value>,
    exp: Option<u64>,
) -> Result<Identity, AuthError> {
    let parse = |list: Vec<String>| {
        list.iter()
            .map(|c| ChannelName::parse(c).map_err(|_| AuthError::Invalid))
            .collect::<Result<Vec<_>, _>>()
    };
    let channels = parse(channels)?;
    let mut subs = parse(subs)?;
    subs.dedup();
    let info = match info {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(Bytes::from(
            serde_json::to_vec(&v).map_err(|_| AuthError::Invalid)?,
        )),
    };
    Ok(Identity {
        user: Arc::from(user),
        channels: channels.into_boxed_slice(),
        subs: subs.into_boxed_slice(),
        info,
        expires_at: exp,
    })
}

/// Mints an HS256 token (for `ferrocast token`, examples and tests).
pub fn mint(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding cannot fail")
}

pub use crate::clock::unix_secs as now_unix;

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(&AuthConfig {
            token_secret: "s3cret".into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn valid_token() {
        let t = mint(
            "s3cret",
            &Claims {
                sub: "17".into(),
                exp: Some(now_unix() + 60),
                channels: vec!["room:1".into()],
                subs: vec!["user:17".into(), "room:2".into()],
                info: Some(serde_json::json!({"name": "Ada"})),
            },
        );
        let id = verifier().verify(&t).unwrap();
        assert_eq!(&*id.user, "17");
        assert_eq!(id.channels[0].as_str(), "room:1");
        assert_eq!(id.subs.len(), 2);
        assert_eq!(id.subs[1].as_str(), "room:2");
        assert_eq!(&id.info.unwrap()[..], br#"{"name":"Ada"}"#);
    }

    #[test]
    fn wrong_secret_and_garbage_are_invalid() {
        let t = mint(
            "other",
            &Claims {
                sub: "1".into(),
                ..Default::default()
            },
        );
        assert_eq!(verifier().verify(&t).unwrap_err(), AuthError::Invalid);
        assert_eq!(
            verifier().verify("not.a.token").unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn expired_is_distinct() {
        let t = mint(
            "s3cret",
            &Claims {
                sub: "1".into(),
                exp: Some(now_unix() - 5),
                ..Default::default()
            },
        );
        let e = verifier().verify(&t).unwrap_err();
        assert_eq!(e, AuthError::Expired);
        assert_eq!(e.client_error().code(), 109);
        assert_eq!(e.close_code().as_u16(), 4011);
    }

    #[test]
    fn anonymous_token() {
        let t = mint("s3cret", &Claims::default());
        assert!(verifier().verify(&t).unwrap().is_anonymous());
    }
}
