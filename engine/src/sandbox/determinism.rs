//! Virtual clocks and seeded randomness.
//!
//! A task that is not granted the real clock or OS randomness sees these
//! instead. Both are pure functions of a 32-byte seed that the caller derives
//! from the component and its input, so the same task on the same input
//! observes the same times and the same random bytes on every run, on every
//! machine. Clocks tick forward by a fixed step on each read, so a task that
//! waits for time to pass by polling still makes progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// The instant every virtual wall clock starts at: 2000-01-01T00:00:00Z.
pub const VIRTUAL_EPOCH: Duration = Duration::from_secs(946_684_800);
/// How far a virtual clock moves on each read.
pub const TICK: Duration = Duration::from_micros(1);

/// A wall clock that starts at [`VIRTUAL_EPOCH`] and advances [`TICK`] per read.
#[derive(Default)]
pub struct VirtualWallClock {
    reads: AtomicU64,
}

impl HostWallClock for VirtualWallClock {
    fn resolution(&self) -> Duration {
        TICK
    }
    fn now(&self) -> Duration {
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        VIRTUAL_EPOCH + TICK * u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// A monotonic clock that starts at zero and advances [`TICK`] per read.
#[derive(Default)]
pub struct VirtualMonotonicClock {
    reads: AtomicU64,
}

impl HostMonotonicClock for VirtualMonotonicClock {
    fn resolution(&self) -> u64 {
        TICK.as_nanos() as u64
    }
    fn now(&self) -> u64 {
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        n.saturating_mul(TICK.as_nanos() as u64)
    }
}

/// A deterministic random stream: blake3 in extendable-output mode, keyed by
/// the seed and a purpose string (so the secure and insecure streams differ).
pub struct SeededRng {
    stream: blake3::OutputReader,
}

impl SeededRng {
    pub fn new(seed: &[u8; 32], purpose: &str) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("cairn sandbox random stream v1");
        hasher.update(purpose.as_bytes());
        hasher.update(seed);
        Self {
            stream: hasher.finalize_xof(),
        }
    }
}

impl rand_core::TryRng for SeededRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut buf = [0; 4];
        self.stream.fill(&mut buf);
        Ok(u32::from_le_bytes(buf))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut buf = [0; 8];
        self.stream.fill(&mut buf);
        Ok(u64::from_le_bytes(buf))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.stream.fill(dst);
        Ok(())
    }
}

/// The `wasi:random/insecure-seed` value for a seed.
pub fn insecure_seed(seed: &[u8; 32]) -> u128 {
    let bytes = blake3::derive_key("cairn sandbox insecure seed v1", seed);
    u128::from_le_bytes(bytes[..16].try_into().expect("16 of 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    #[test]
    fn same_seed_same_stream_different_purpose_different_stream() {
        let seed = [7; 32];
        let (mut a, mut b) = (
            SeededRng::new(&seed, "secure"),
            SeededRng::new(&seed, "secure"),
        );
        assert_eq!(a.next_u64(), b.next_u64());
        let mut c = SeededRng::new(&seed, "insecure");
        assert_ne!(a.next_u64(), c.next_u64());
        let mut d = SeededRng::new(&[8; 32], "secure");
        assert_ne!(SeededRng::new(&seed, "secure").next_u64(), d.next_u64());
    }

    #[test]
    fn clocks_start_fixed_and_move_forward() {
        let wall = VirtualWallClock::default();
        assert_eq!(wall.now(), VIRTUAL_EPOCH);
        assert_eq!(wall.now(), VIRTUAL_EPOCH + TICK);
        let mono = VirtualMonotonicClock::default();
        let (t0, t1) = (mono.now(), mono.now());
        assert!(t1 > t0);
    }
}
