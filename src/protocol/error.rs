//! Every protocol error maps to exactly one documented code (docs/protocol.md).

/// An error answered to one command; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("internal error")]
    Internal,
    #[error("unauthorized")]
    Unauthorized,
    #[error("unknown channel")]
    UnknownChannel,
    #[error("permission denied")]
    PermissionDenied,
    #[error("method not found")]
    MethodNotFound,
    #[error("already subscribed")]
    AlreadySubscribed,
    #[error("limit exceeded")]
    LimitExceeded,
    /// A publication whose frame could not fit any subscriber's outbound queue
    /// (`limits.outbound_queue_bytes`): refused at publish time instead of closing every
    /// subscriber with 4005. Code 106, like the other limits.
    #[error("publication larger than limits.outbound_queue_bytes")]
    PublicationTooLarge,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("not available")]
    NotAvailable,
    #[error("token expired")]
    TokenExpired,
    #[error("too many requests")]
    TooManyRequests,
    #[error("unrecoverable position")]
    UnrecoverablePosition,
}

impl ClientError {
    pub fn code(&self) -> u16 {
        match self {
            ClientError::Internal => 100,
            ClientError::Unauthorized => 101,
            ClientError::UnknownChannel => 102,
            ClientError::PermissionDenied => 103,
            ClientError::MethodNotFound => 104,
            ClientError::AlreadySubscribed => 105,
            ClientError::LimitExceeded | ClientError::PublicationTooLarge => 106,
            ClientError::BadRequest(_) => 107,
            ClientError::NotAvailable => 108,
            ClientError::TokenExpired => 109,
            ClientError::TooManyRequests => 110,
            ClientError::UnrecoverablePosition => 112,
        }
    }

    /// The HTTP status the server API answers with for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            ClientError::Internal => 500,
            ClientError::Unauthorized | ClientError::TokenExpired => 401,
            ClientError::UnknownChannel | ClientError::BadRequest(_) => 400,
            ClientError::PermissionDenied => 403,
            ClientError::MethodNotFound => 404,
            ClientError::AlreadySubscribed => 409,
            ClientError::LimitExceeded | ClientError::PublicationTooLarge => 413,
            ClientError::NotAvailable => 503,
            ClientError::TooManyRequests => 429,
            ClientError::UnrecoverablePosition => 409,
        }
    }
}

/// WebSocket close codes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The peer closed first; we echo 1000.
    Normal = 1000,
    /// The peer vanished (reset, EOF): nothing is sent, counted as 1006.
    Gone = 1006,
    /// An RFC 6455 framing violation (reserved bits or opcodes, unmasked or fragmented control
    /// frames, bad continuation order, an invalid close frame).
    Protocol = 1002,
    /// A text message (or close reason) that is not UTF-8.
    InvalidPayload = 1007,
    /// A message past `limits.max_message_size` on the conformance echo route (`/ws` keeps its
    /// documented 4009).
    TooBig = 1009,
    ServerClose = 4000,
    AuthTimeout = 4001,
    Forbidden = 4003,
    BadRequest = 4004,
    SlowConsumer = 4005,
    TooManyRequests = 4006,
    ConnectionLimit = 4008,
    MessageTooBig = 4009,
    Shutdown = 4010,
    TokenExpired = 4011,
}

impl CloseCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The listed code with this number (the server's own codes, not 1000/1002/1006).
    pub fn from_u16(code: u16) -> Option<CloseCode> {
        Some(match code {
            4000 => CloseCode::ServerClose,
            4001 => CloseCode::AuthTimeout,
            4003 => CloseCode::Forbidden,
            4004 => CloseCode::BadRequest,
            4005 => CloseCode::SlowConsumer,
            4006 => CloseCode::TooManyRequests,
            4008 => CloseCode::ConnectionLimit,
            4009 => CloseCode::MessageTooBig,
            4010 => CloseCode::Shutdown,
            4011 => CloseCode::TokenExpired,
            _ => return None,
        })
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::Gone => "gone",
            CloseCode::Protocol => "protocol error",
            CloseCode::InvalidPayload => "invalid UTF-8",
            CloseCode::TooBig => "message too big",
            CloseCode::ServerClose => "server close",
            CloseCode::AuthTimeout => "auth timeout",
            CloseCode::Forbidden => "forbidden",
            CloseCode::BadRequest => "bad request",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::TooManyRequests => "too many requests",
            CloseCode::ConnectionLimit => "connection limit",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::Shutdown => "shutdown, reconnect elsewhere",
            CloseCode::TokenExpired => "token expired",
        }
    }
}
