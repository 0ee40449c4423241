//! The one way a probe writes a record (reserve → count a drop → fill → submit) and the one way
//! it reports a failure (per-CPU counters by [`Hook`] and [`ProbeError`]).

use sensor_common::{probe_error_index, Hook, ProbeError};

use crate::{ring_len, submit_flags, DROPS, EVENTS, PROBE_ERRORS};

/// Reserves a `T` in the ring buffer, lets `fill` initialise it and submits it (with the
/// wakeup policy of [`submit_flags`]); discards it when `fill` fails.
///
/// `fill` gets a pointer to `size_of::<T>()` bytes of ring-buffer memory that the program owns
/// exclusively until submit/discard. The memory is uninitialised: `fill` must write every field
/// (through the pointer; no reference to the uninitialised `T` may be made).
///
/// A failed reservation is counted in `DROPS` at index `kind` (the agent's `kernel_dropped`)
/// and returned as [`ProbeError::RingFull`], which the program's wrapper counts again in
/// `PROBE_ERRORS` for its hook.
#[inline(always)]
pub(crate) fn emit<T: 'static>(
    kind: u32,
    fill: impl FnOnce(*mut T) -> Result<(), ProbeError>,
) -> Result<(), ProbeError> {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_drop(kind);
        return Err(ProbeError::RingFull);
    };
    match fill(entry.as_mut_ptr()) {
        Ok(()) => {
            entry.submit(submit_flags(ring_len(core::mem::size_of::<T>())));
            Ok(())
        }
        Err(e) => {
            entry.discard(0);
            Err(e)
        }
    }
}

/// Counts a failed ring-buffer reservation for record kind `k`.
#[inline(always)]
fn count_drop(k: u32) {
    if let Some(p) = DROPS.get_ptr_mut(k) {
        // SAFETY: p points at this CPU's slot of a per-CPU array value; no other context on this
        // CPU runs concurrently with a tracing program, so a plain increment is race-free.
        unsafe { *p += 1 };
    }
}

/// Counts `e` for `hook`. Used for failures a probe survives (it still writes its record with a
/// fallback value); [`finish`] counts the ones that stopped it.
#[inline(always)]
pub(crate) fn count_error(hook: Hook, e: ProbeError) {
    if let Some(p) = PROBE_ERRORS.get_ptr_mut(probe_error_index(hook, e)) {
        // SAFETY: as in count_drop: this CPU's slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// The end of every program: counts the error that stopped `try_*`, if any. Programs always
/// return 0 (the return value of a tracepoint program is ignored by the kernel).
#[inline(always)]
pub(crate) fn finish(hook: Hook, r: Result<(), ProbeError>) -> u32 {
    if let Err(e) = r {
        count_error(hook, e);
    }
    0
}

/// Counts a failure the probe survives and carries on with `fallback`.
#[inline(always)]
pub(crate) fn or_count<T>(hook: Hook, r: Result<T, ProbeError>, fallback: T) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            count_error(hook, e);
            fallback
        }
    }
}
