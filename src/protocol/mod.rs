//! Protocol v1: channel names, error and close codes, client commands (parsing, pure and
//! testable without sockets) and the server's frames (replies, publications, pushes).

pub mod command;
pub mod error;
pub mod reply;

pub use command::{Command, CommandKind, Position};
pub use error::{ClientError, CloseCode};

use std::fmt;
use std::sync::Arc;

/// A validated channel name: at most 255 bytes of `[A-Za-z0-9_\-:.@=,]`.
///
/// Cheap to clone (an `Arc<str>`) because one name is shared by a shard's subscription table, every
/// subscriber's subscription list and every publication on it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &str) -> Result<Self, ClientError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(ClientError::BadRequest(
                "channel name must be 1..=255 bytes",
            ));
        }
        let ok = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:.@=,".contains(&b));
        if !ok {
            return Err(ClientError::BadRequest(
                "channel name has a character outside [A-Za-z0-9_-:.@=,]",
            ));
        }
        Ok(ChannelName(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:`, or "" for a bare name.
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map(|(ns, _)| ns).unwrap_or("")
    }

    /// For `user:<id>`, the id.
    pub fn personal_user(&self) -> Option<&str> {
        self.0.strip_prefix("user:")
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(ChannelName::parse("room:42").is_ok());
        assert!(ChannelName::parse("a-b_c.d@e=f,g:h").is_ok());
        assert!(ChannelName::parse("").is_err());
        assert!(ChannelName::parse("room 42").is_err());
        assert!(ChannelName::parse("room/42").is_err());
        assert!(ChannelName::parse(&"x".repeat(256)).is_err());
        assert!(ChannelName::parse(&"x".repeat(255)).is_ok());
        let c = ChannelName::parse("room:42:extra").unwrap();
        assert_eq!(c.namespace(), "room");
        assert_eq!(ChannelName::parse("lobby").unwrap().namespace(), "");
        assert_eq!(
            ChannelName::parse("user:17").unwrap().personal_user(),
            Some("17")
        );
    }
}
