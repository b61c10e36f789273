//! What a guest's calls into the host may cost the host.
//!
//! Fuel counts the guest's own instructions; work the host does on the guest's behalf would be
//! free without this module, so a fuel-limited guest could burn host CPU or memory without end
//! in a loop of cheap calls. Every bound here is per store (one run, or one `describe`):
//!
//! * **Handles.** The resource table (files, streams, pollables, …) holds at most
//!   [`MAX_HANDLES`] entries; a guest that opens or subscribes without dropping is refused
//!   (tag `HandleLimit`). This also bounds the host file descriptors one run can hold.
//! * **Data copied in.** One call (or the run's result) may copy at most [`hostcall_fuel`] bytes
//!   from the guest: as much as the agent's memory limit lets it hold, at most 128 MiB
//!   (wasmtime's hostcall fuel; without it wasmtime allows 128 MiB whatever the limit).
//! * **Random bytes.** One `get-random-bytes` call returns at most [`MAX_RANDOM_BYTES`]
//!   (wasmtime-wasi's default is 64 MiB).
//! * **Host CPU.** Every return from the host costs [`HOST_CALL_FUEL`], plus a unit per byte the
//!   random generators produce (`get-random-bytes` draws a `u32` for each byte it returns, so
//!   four units a byte) and per byte of `log` and `emit` text, charged against the run's
//!   fuel: a run whose charges reach the fuel it has left ends with `OutOfFuel` like one that
//!   computed too long, and the charges count in its `fuelUsed`. This is checked when a host
//!   call returns; computation after the last host call is held to the store's fuel alone, so a
//!   run can use at most its fuel in instructions plus what its host calls were charged (less
//!   than twice its fuel), and a loop of host calls no more than its fuel.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::{StoreContextMut, Trap};
use wasmtime_wasi::Rng;

/// Most resources (handles) a guest may hold at once.
pub(crate) const MAX_HANDLES: usize = 256;
/// Largest `get-random-bytes` (and `get-insecure-random-bytes`) request, in bytes.
pub(crate) const MAX_RANDOM_BYTES: u64 = 1 << 20;
/// Fuel charged for every call into the host, whatever it does: about what the round trip
/// costs in guest instructions.
pub(crate) const HOST_CALL_FUEL: u64 = 1_000;

/// Bytes one call may copy from the guest into the host: the agent's memory limit (a guest
/// cannot hand over more than it can hold, so the host allocates no more than that for any
/// call, however the data is shaped), between 1 MiB and 128 MiB.
pub(crate) fn hostcall_fuel(memory_bytes: u64) -> usize {
    let bytes = memory_bytes.clamp(1 << 20, 128 << 20);
    usize::try_from(bytes).unwrap_or(128 << 20)
}

/// Work the host did for the guest since the last charge, in fuel units.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostWork {
    /// Bytes of randomness generated (counted by [`MeteredRng`]).
    random: Arc<AtomicU64>,
    /// Other per-byte work (`log` and `emit` text).
    bytes: u64,
    /// Fuel charged for host calls so far.
    charged: u64,
}

impl HostWork {
    /// Notes `bytes` of work to charge when the current host call returns.
    pub(crate) fn add(&mut self, bytes: usize) {
        self.bytes = self.bytes.saturating_add(bytes as u64);
    }

    /// Fuel charged for host calls so far (on top of what the guest's own code used).
    pub(crate) fn charged(&self) -> u64 {
        self.charged
    }

    /// A generator that counts what it produces into this budget.
    pub(crate) fn rng(&self) -> MeteredRng {
        MeteredRng {
            inner: wasmtime_wasi::thread_rng(),
            produced: Arc::clone(&self.random),
        }
    }

    /// The fuel the host call now returning costs, resetting the per-byte counts.
    fn take(&mut self) -> u64 {
        let random = self.random.swap(0, Ordering::Relaxed);
        let bytes = std::mem::take(&mut self.bytes);
        HOST_CALL_FUEL.saturating_add(random).saturating_add(bytes)
    }
}

/// For the store's call hook, when a host call returns: adds the cost of the call to the work
/// charged, and ends the run with `OutOfFuel` once the charges reach the fuel the guest has
/// left. (The charges are kept here rather than taken from the store's fuel, which the guest's
/// compiled code holds on to across a call into the host, so that a change made meanwhile does
/// not always last.)
pub(crate) fn charge<T>(
    store: &mut StoreContextMut<'_, T>,
    work: impl FnOnce(&mut T) -> &mut HostWork,
) -> wasmtime::Result<()> {
    let left = store.get_fuel()?;
    let work = work(store.data_mut());
    let cost = work.take();
    work.charged = work.charged.saturating_add(cost);
    if work.charged >= left {
        return Err(Trap::OutOfFuel.into());
    }
    Ok(())
}

/// A random generator that counts the bytes it produces.
pub(crate) struct MeteredRng {
    inner: Box<dyn Rng + Send>,
    produced: Arc<AtomicU64>,
}

impl rand_core::TryRng for MeteredRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.produced.fetch_add(4, Ordering::Relaxed);
        Ok(self.inner.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.produced.fetch_add(8, Ordering::Relaxed);
        Ok(self.inner.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.produced.fetch_add(dst.len() as u64, Ordering::Relaxed);
        self.inner.fill_bytes(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_call_costs_its_fixed_charge_plus_the_bytes_it_produced() {
        let mut work = HostWork::default();
        assert_eq!(work.take(), HOST_CALL_FUEL);
        let mut rng = work.rng();
        let mut buf = [0u8; 100];
        rand_core::Rng::fill_bytes(&mut rng, &mut buf);
        let _ = rand_core::Rng::next_u64(&mut rng);
        work.add(10);
        assert_eq!(work.take(), HOST_CALL_FUEL + 118);
        assert_eq!(work.take(), HOST_CALL_FUEL, "the counts start again");
    }

    #[test]
    fn hostcall_fuel_follows_the_memory_limit() {
        assert_eq!(hostcall_fuel(64 << 20), 64 << 20);
        assert_eq!(hostcall_fuel(4 << 10), 1 << 20);
        assert_eq!(hostcall_fuel(u64::MAX), 128 << 20);
    }
}
