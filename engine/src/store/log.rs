//! Append-only log files: the framing shared by result packs and run journals.
//!
//! A log is a sequence of frames, each `length (u32 LE) ‖ checksum (16 bytes
//! of blake3 over the payload) ‖ payload`. Frames are only ever appended, one
//! `write` per batch, so a process killed at any moment leaves a log whose
//! every frame is whole; a machine that loses power may leave the last frame
//! short or half-written. [`scan`] tells the two kinds of damage apart: a bad
//! frame that ends the file is a *torn tail* (the write that never finished;
//! drop it), a bad frame with more bytes after it is *damage* (the file was
//! changed behind Cairn's back; say so).
//!
//! This module knows nothing about what the payloads mean.

/// Bytes before each payload: its length and its checksum.
pub const HEADER: usize = 4 + CHECKSUM;
const CHECKSUM: usize = 16;
/// No single record is this large; a length above it is damage, not data.
pub const MAX_PAYLOAD: usize = 1 << 30;

/// The checksum stored with a payload.
pub fn checksum(payload: &[u8]) -> [u8; CHECKSUM] {
    let mut sum = [0; CHECKSUM];
    sum.copy_from_slice(&blake3::hash(payload).as_bytes()[..CHECKSUM]);
    sum
}

/// Append one framed payload to `out`.
pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(payload));
    out.extend_from_slice(payload);
}

/// The payload of the one frame that is all of `bytes`, if it is intact.
pub fn unframe(bytes: &[u8]) -> Option<&[u8]> {
    match next(bytes) {
        Next::Frame { payload, len } if len == bytes.len() => Some(payload),
        _ => None,
    }
}

enum Next<'a> {
    Frame {
        payload: &'a [u8],
        len: usize,
    },
    /// The frame claims more bytes than there are.
    Short,
    /// The frame is complete but its checksum or length is wrong.
    Bad {
        len: usize,
    },
}

fn next(bytes: &[u8]) -> Next<'_> {
    let Some(header) = bytes.get(..HEADER) else {
        return Next::Short;
    };
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        // No write of Cairn's leaves such a length: this is not a torn
        // frame but a damaged one, whatever follows it.
        return Next::Bad { len: HEADER };
    }
    let Some(payload) = bytes.get(HEADER..HEADER + len) else {
        return Next::Short;
    };
    if header[4..] != checksum(payload) {
        return Next::Bad { len: HEADER + len };
    }
    Next::Frame {
        payload,
        len: HEADER + len,
    }
}

/// What a log holds.
#[derive(Debug, Default)]
pub struct Scan<'a> {
    /// Each intact frame: its offset in the log and its payload.
    pub records: Vec<(u64, &'a [u8])>,
    /// Length of the prefix made of intact frames.
    pub valid_len: u64,
    /// Offset of a bad frame followed by more data: the log was damaged
    /// there, and nothing after it is trusted.
    pub damage: Option<u64>,
}

impl Scan<'_> {
    /// Bytes after the intact prefix that are not part of damage: a write
    /// that never finished.
    pub fn torn(&self, total: usize) -> bool {
        self.damage.is_none() && self.valid_len < total as u64
    }
}

/// Read the frames of a whole log (or of its part from some frame boundary).
pub fn scan(bytes: &[u8]) -> Scan<'_> {
    let mut scan = Scan::default();
    let mut at = 0usize;
    while at < bytes.len() {
        match next(&bytes[at..]) {
            Next::Frame { payload, len } => {
                scan.records.push((at as u64, payload));
                at += len;
            }
            Next::Short => break,
            Next::Bad { len } => {
                // A crash can leave zeroed blocks past the last real write;
                // they are a torn tail too.
                let zeros = bytes[at..].iter().all(|&b| b == 0);
                if at + len < bytes.len() && !zeros {
                    scan.damage = Some(at as u64);
                }
                break;
            }
        }
    }
    scan.valid_len = at as u64;
    scan
}

/// Open (creating if needed) a log for appending and reading back.
pub fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            frame(p, &mut out);
        }
        out
    }

    #[test]
    fn intact_frames_read_back_in_order() {
        let bytes = log(&[b"one", b"", b"three"]);
        let scan = scan(&bytes);
        let payloads: Vec<&[u8]> = scan.records.iter().map(|(_, p)| *p).collect();
        assert_eq!(payloads, [&b"one"[..], b"", b"three"]);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert!(scan.damage.is_none() && !scan.torn(bytes.len()));
        assert_eq!(scan.records[1].0, (HEADER + 3) as u64);
    }

    #[test]
    fn a_cut_anywhere_in_the_last_frame_is_a_torn_tail() {
        let bytes = log(&[b"first", b"second record"]);
        let first_len = HEADER + 5;
        for cut in first_len + 1..bytes.len() {
            let scan = scan(&bytes[..cut]);
            assert_eq!(scan.records.len(), 1, "cut at {cut}");
            assert_eq!(scan.valid_len, first_len as u64);
            assert!(scan.torn(cut) && scan.damage.is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_in_the_last_frame_is_torn_and_in_the_middle_is_damage() {
        let mut bytes = log(&[b"first", b"second"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tail = scan(&bytes);
        assert_eq!(tail.records.len(), 1);
        assert!(tail.torn(bytes.len()));

        let mut bytes = log(&[b"first", b"second"]);
        bytes[HEADER] ^= 1;
        let middle = scan(&bytes);
        assert!(middle.records.is_empty());
        assert_eq!(middle.damage, Some(0));
    }

    #[test]
    fn a_huge_length_is_damage_not_an_allocation() {
        let mut bytes = vec![0xff; HEADER];
        bytes.extend_from_slice(b"more");
        assert_eq!(scan(&bytes).damage, Some(0));
        assert!(unframe(&bytes).is_none());
    }

    #[test]
    fn zeroes_after_the_last_frame_are_a_torn_tail() {
        let mut bytes = log(&[b"first"]);
        bytes.extend_from_slice(&[0; 4096]);
        let scan = scan(&bytes);
        assert_eq!(scan.records.len(), 1);
        assert!(scan.torn(bytes.len()));
    }

    #[test]
    fn unframe_wants_exactly_one_intact_frame() {
        let one = log(&[b"x"]);
        assert_eq!(unframe(&one), Some(&b"x"[..]));
        assert!(unframe(&log(&[b"x", b"y"])).is_none());
        assert!(unframe(&one[..one.len() - 1]).is_none());
    }
}
