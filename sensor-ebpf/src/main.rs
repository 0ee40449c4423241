//! Kernel side of the sensor: hooks → one BPF ring buffer.
//!
//! Only tracepoints, raw tracepoints and one `cgroup_skb` program are used (kprobes are not
//! compiled into the target kernels; LSM and fentry/fexit loads are refused). Every kernel struct offset comes from
//! [`CONFIG`], which the agent fills from the running kernel's BTF before loading: Rust eBPF emits
//! no CO-RE relocations, so nothing here may assume a layout.
#![no_std]
#![no_main]

mod emit;
mod filter;
mod gpu;
mod net;
mod proc;
mod sock;
mod task;

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use sensor_common::{kind, ProgConfig, FILTER_MAP_ENTRIES, PROBE_ERROR_ENTRIES};

/// All events. Its size is set by the agent at load time (`ring_buffer_size` in the config).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU count of ring-buffer reservations that failed, indexed by event kind.
#[map(name = "DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::MAX, 0);

/// Per-CPU count of probe failures, indexed by `probe_error_index(hook, error)`
/// (sensor-common `Hook`, `ProbeError`).
#[map(name = "PROBE_ERRORS")]
pub static PROBE_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_ERROR_ENTRIES, 0);

/// Thread groups whose activity is never reported (the sensor itself, configured pids).
#[map(name = "IGNORE_TGIDS")]
pub static IGNORE_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_MAP_ENTRIES, 0);

/// cgroup v2 ids whose activity is never reported.
#[map(name = "IGNORE_CGROUPS")]
pub static IGNORE_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(FILTER_MAP_ENTRIES, 0);

/// With `only_listed`, the thread groups that are reported; forks of a listed process are added.
#[map(name = "TRACE_TGIDS")]
pub static TRACE_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_MAP_ENTRIES, 0);

/// Offsets and settings, overridden by the agent at load time (`EbpfLoader::override_global`).
#[no_mangle]
static CONFIG: ProgConfig = ProgConfig::DEFAULT;

/// Reads the load-time configuration. The volatile read keeps the compiler from folding the
/// compile-time default into the code.
#[inline(always)]
pub(crate) fn config() -> &'static ProgConfig {
    // SAFETY: CONFIG is a static that lives for the program's lifetime; read_volatile of a
    // valid, aligned pointer to it is sound. We return a reference to the static itself after
    // forcing the compiler to treat it as opaque.
    unsafe { &*core::ptr::read_volatile(&(&CONFIG as *const ProgConfig)) }
}

/// `bpf_ringbuf_submit` flags (include/uapi/linux/bpf.h: BPF_RB_NO_WAKEUP 1,
/// BPF_RB_FORCE_WAKEUP 2; `bpf_ringbuf_query` BPF_RB_AVAIL_DATA 0).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Submit flags for a record that occupies `len` bytes of the ring (header included): wake
/// the agent only when this record takes the data waiting past a multiple of
/// `ProgConfig::wakeup_bytes`, so a backlog costs one wakeup per `wakeup_bytes` of records,
/// not one per record. A wakeup is an irq_work, which raises a self-IPI (an APIC write: a trap
/// into the hypervisor in a VM) and then wakes the reader; forcing it for every record while
/// the backlog stayed above the mark made a stalled or busy reader slow every producer
/// (measured: UDP connects ~2× slower with the reader stopped than running). A crossing that
/// concurrent producers or a draining reader hide is caught by the next one or by the
/// reader's poll timer (`ring.poll_interval_ms`). 0 wakes for every record.
#[inline(always)]
pub(crate) fn submit_flags(len: u64) -> u64 {
    let mark = config().wakeup_bytes as u64;
    if mark == 0 {
        return BPF_RB_FORCE_WAKEUP;
    }
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA);
    if avail / mark != avail.saturating_sub(len) / mark {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Bytes a reservation of `size` takes in the ring: the record rounded up to 8 plus the
/// 8-byte record header (kernel/bpf/ringbuf.c, `__bpf_ringbuf_reserve`: `round_up(size +
/// BPF_RINGBUF_HDR_SZ, 8)`, BPF_RINGBUF_HDR_SZ 8 in include/uapi/linux/bpf.h).
pub(crate) const fn ring_len(size: usize) -> u64 {
    ((size + 8 + 7) & !7) as u64
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
