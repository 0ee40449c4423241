//! Draining the BPF ring buffer with tokio (`AsyncFd` on the ring's epoll-able fd) into a bounded
//! user-side queue. A full queue drops the record and counts it: the kernel side must never wait
//! on us, and every loss is visible.
//!
//! The queue is a std `sync_channel`: the pipeline thread blocks on it with a plain futex wait.
//! Waiting through tokio (`block_on` of a `timeout`) put a timer into the runtime's driver for
//! every wait, hundreds of times a second: at 10k events/s the hand-off cost about as much CPU
//! as the events themselves.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use aya::maps::{MapData, RingBuf};
use bytes::Bytes;
use sensor_common::kind;
use tokio::{io::unix::AsyncFd, sync::watch};

/// Counters shared by the ring reader and the pipeline.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records read from the ring, by kind (index 0 counts unknown kinds).
    pub received: [AtomicU64; kind::MAX as usize],
    /// Records dropped because the user-side queue was full, by kind.
    pub user_dropped: [AtomicU64; kind::MAX as usize],
    /// Records that failed to decode (reported as `decode_error` events).
    pub decode_errors: AtomicU64,
}

impl Counters {
    pub fn received(&self) -> Vec<u64> {
        self.received
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    pub fn user_dropped(&self) -> Vec<u64> {
        self.user_dropped
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

fn record_kind(b: &[u8]) -> usize {
    let k = b
        .get(..4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
        .unwrap_or(0);
    if k < kind::MAX {
        k as usize
    } else {
        0
    }
}

/// Reads records until `stop` flips, then drains what is left and returns (closing `tx`).
pub async fn drain(
    ring: RingBuf<MapData>,
    tx: std::sync::mpsc::SyncSender<Bytes>,
    counters: Arc<Counters>,
    poll: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // SAFETY: the RingBuf owns its map fd for its whole lifetime and `as_raw_fd` always returns
    // that same fd; the AsyncFd takes ownership of the RingBuf, so the fd outlives the
    // registration.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                read_all(guard.get_inner_mut(), &tx, &counters);
                guard.clear_ready();
            }
            _ = tick.tick() => read_all(fd.get_mut(), &tx, &counters),
            _ = stop.changed() => {
                read_all(fd.get_mut(), &tx, &counters);
                return Ok(());
            }
        }
    }
}

fn read_all(ring: &mut RingBuf<MapData>, tx: &std::sync::mpsc::SyncSender<Bytes>, c: &Counters) {
    while let Some(item) = ring.next() {
        let b = Bytes::copy_from_slice(&item);
        drop(item);
        let k = record_kind(&b);
        c.received[k].fetch_add(1, Ordering::Relaxed);
        if tx.try_send(b).is_err() {
            c.user_dropped[k].fetch_add(1, Ordering::Relaxed);
        }
    }
}
