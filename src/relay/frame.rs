//! HTTP/2's frame layout (RFC 9113 §4.1, §6): the frame types and flags the
//! relay's reader and writer (and the sidecar's `:authority` repair) share.

/// A frame header's length.
pub(crate) const HEAD: usize = 9;
/// The frame size every peer allows until it says otherwise, and the only
/// one the relay allows its clients.
pub(crate) const DEFAULT_MAX_FRAME: usize = 16 << 10;
/// The frame size the relay allows its backends (SETTINGS_MAX_FRAME_SIZE).
pub(crate) const BACKEND_MAX_FRAME: usize = 128 << 10;

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
/// HEADERS carries a stream dependency (the PRIORITY flag).
pub(crate) const PRIORITY_FLAG: u8 = 0x20;
