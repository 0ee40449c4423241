//! In-kernel filtering: the sensor's own activity, ignore lists and the optional allow-list.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid};
use sensor_common::ProbeError;

use crate::{config, IGNORE_CGROUPS, IGNORE_TGIDS, TRACE_TGIDS};

/// Whether the current task's events are reported.
#[inline(always)]
pub(crate) fn current_traced() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    tgid_traced(tgid)
}

#[inline(always)]
pub(crate) fn tgid_traced(tgid: u32) -> bool {
    // SAFETY: lookups in hash maps with plain integer keys; the returned references are not kept.
    unsafe {
        if IGNORE_TGIDS.get(&tgid).is_some() {
            return false;
        }
        // The cgroup id only when there are cgroups to ignore (a helper call saved per event).
        if config().ignore_cgroups != 0 {
            // SAFETY: helper without arguments.
            let cg = bpf_get_current_cgroup_id();
            if IGNORE_CGROUPS.get(&cg).is_some() {
                return false;
            }
        }
        if config().only_listed != 0 && TRACE_TGIDS.get(&tgid).is_none() {
            return false;
        }
    }
    true
}

/// With the allow-list on, a child of a listed process is listed too.
#[inline(always)]
pub(crate) fn inherit(parent: u32, child: u32) -> Result<(), ProbeError> {
    if config().only_listed == 0 {
        return Ok(());
    }
    // SAFETY: hash map lookup with an integer key; only presence is used.
    if unsafe { TRACE_TGIDS.get(&parent) }.is_some() {
        TRACE_TGIDS
            .insert(&child, &1, 0)
            .map_err(|_| ProbeError::MapUpdate)?;
    }
    Ok(())
}
