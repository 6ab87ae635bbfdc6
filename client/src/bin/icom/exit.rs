//! `icom`'s exit status: what each number means, and which error maps to
//! which.

use icom_client::{ConnectError, ForgetError, PingError, RequestError, RosterError, SendError};

/// Exit status: success.
pub(crate) const OK: u8 = 0;
/// Exit status: any other error.
pub(crate) const FAILED: u8 = 1;
/// Exit status: refused (ack not ok, forbidden, certificate refused).
pub(crate) const REFUSED: u8 = 3;
/// Exit status: timed out.
pub(crate) const TIMEOUT: u8 = 4;

/// Maps an error to the exit status the help text promises.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(e) = e.downcast_ref::<ConnectError>() {
        return match e {
            e if e.is_refused() => REFUSED,
            ConnectError::Timeout(_) => TIMEOUT,
            _ => FAILED,
        };
    }
    if let Some(e) = e.downcast_ref::<SendError>() {
        return send_code(e);
    }
    if let Some(e) = e.downcast_ref::<RequestError>() {
        return match e {
            RequestError::Send(e) => send_code(e),
            e if e.is_timeout() => TIMEOUT,
            _ => FAILED,
        };
    }
    if let Some(e) = e.downcast_ref::<ForgetError>() {
        return match e {
            ForgetError::Refused { .. } => REFUSED,
            e if e.is_timeout() => TIMEOUT,
            _ => FAILED,
        };
    }
    if let Some(e) = e.downcast_ref::<PingError>() {
        return if e.is_timeout() { TIMEOUT } else { FAILED };
    }
    if let Some(e) = e.downcast_ref::<RosterError>() {
        return if e.is_timeout() { TIMEOUT } else { FAILED };
    }
    FAILED
}

fn send_code(e: &SendError) -> u8 {
    match e {
        SendError::Refused { .. } => REFUSED,
        e if e.is_timeout() => TIMEOUT,
        _ => FAILED,
    }
}
