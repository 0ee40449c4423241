//! NVML sampling (when `libnvidia-ml.so.1` can be loaded; nvml-wrapper dlopens it): per-process
//! SM/memory utilisation, device utilisation and PCIe throughput every few seconds, handed to the
//! pipeline, which joins them to compute sessions by pid. Without NVML the sampler says so once
//! and stops; the rest of the sensor carries on.

use std::{sync::mpsc, time::Duration};

use nvml_wrapper::{enum_wrappers::device::PcieUtilCounter, Nvml};

use crate::{
    event::GpuUsage,
    gpu::{
        inventory::{GpuIdentity, Inventory},
        session::UsageSample,
    },
};

/// The identity of device `i` (index, minor, UUID, PCI bus id, model); None when NVML cannot
/// name it (a lost GPU).
fn identity(nvml: &Nvml, i: u32) -> Option<GpuIdentity> {
    let dev = nvml.device_by_index(i).ok()?;
    Some(GpuIdentity {
        index: i,
        minor: dev.minor_number().ok()?,
        uuid: dev.uuid().ok()?,
        pci_bus_id: dev.pci_info().map(|p| p.bus_id).unwrap_or_default(),
        name: dev.name().unwrap_or_default(),
    })
}

/// Starts the sampler thread, supervised (a panic in the driver library restarts it). Samples
/// go to `tx`; the GPUs' identities to `inventory`; the thread ends when the receiver is gone.
/// `library` is the file dlopened (a name is searched the usual way).
pub fn spawn(
    health: &crate::health::Health,
    library: std::path::PathBuf,
    interval: Duration,
    tx: mpsc::Sender<UsageSample>,
    inventory: Inventory,
) {
    use crate::health::Exit;
    crate::health::supervise_thread(health, "nvml", move || {
        let tx = tx.clone();
        let nvml = match Nvml::builder().lib_path(library.as_os_str()).init() {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(
                    "NVML not available ({e}): GPU sessions are reported without utilisation"
                );
                return Ok(Exit::Done(format!("NVML not available: {e}")));
            }
        };
        let count = nvml.device_count().unwrap_or(0);
        let ids: Vec<GpuIdentity> = (0..count).filter_map(|i| identity(&nvml, i)).collect();
        for g in &ids {
            tracing::info!(index = g.index, minor = g.minor, uuid = %g.uuid, pci_bus_id = %g.pci_bus_id, model = %g.name, "GPU");
        }
        inventory.set(ids);
        tracing::info!(devices = count, "NVML sampling every {interval:?}");
        let mut last_seen: Vec<Option<u64>> = vec![None; count as usize];
        loop {
            std::thread::sleep(interval);
            // Identities are re-read each round: a GPU reset or lost changes them.
            inventory.set((0..count).filter_map(|i| identity(&nvml, i)).collect());
            for i in 0..count {
                let Ok(dev) = nvml.device_by_index(i) else {
                    continue;
                };
                let util = dev.utilization_rates().ok();
                let rx = dev.pcie_throughput(PcieUtilCounter::Receive).unwrap_or(0);
                let txp = dev.pcie_throughput(PcieUtilCounter::Send).unwrap_or(0);
                let minor = dev.minor_number().ok();
                // "On MIG-enabled GPUs, querying process utilization is not currently
                // supported" (nvml.h): then there is nothing to join.
                let Ok(samples) = dev.process_utilization_stats(last_seen[i as usize]) else {
                    continue;
                };
                for s in samples {
                    let ls = last_seen[i as usize].get_or_insert(0);
                    *ls = (*ls).max(s.timestamp);
                    let id = inventory.by_index(i);
                    let usage = GpuUsage {
                        gpu_index: i,
                        gpu_minor: minor,
                        gpu_uuid: id.as_ref().map(|g| g.uuid.clone()),
                        pci_bus_id: id.map(|g| g.pci_bus_id),
                        sm_util: s.sm_util,
                        mem_util: s.mem_util,
                        device_gpu_util: util.as_ref().map_or(0, |u| u.gpu),
                        device_mem_util: util.as_ref().map_or(0, |u| u.memory),
                        pcie_rx_kbps: rx,
                        pcie_tx_kbps: txp,
                    };
                    if tx.send(UsageSample { pid: s.pid, usage }).is_err() {
                        return Ok(Exit::Done("the pipeline stopped".into()));
                    }
                }
            }
        }
    });
}
