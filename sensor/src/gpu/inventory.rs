//! The node's GPUs as NVML names them: index, minor, UUID, PCI bus id and model, so that
//! metrics, events and incidents carry the labels DCGM exporter uses (`gpu` = index, `UUID`,
//! `pci_bus_id`, `device` = `nvidia<minor>`, `modelName`) beside the minor the kernel sees.
//! Filled by the NVML sampler; empty without NVML (then only the minor is known).

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// One GPU's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuIdentity {
    /// NVML index (DCGM's `gpu` label).
    pub index: u32,
    /// Minor number of `/dev/nvidiaN`.
    pub minor: u32,
    /// `GPU-…` (DCGM's `UUID` label).
    pub uuid: String,
    /// `00000000:18:00.0` (DCGM's `pci_bus_id` label).
    pub pci_bus_id: String,
    /// Model name (DCGM's `modelName` label).
    pub name: String,
}

/// Shared between the NVML thread (writer) and the pipeline and metrics (readers).
#[derive(Clone, Default, Debug)]
pub struct Inventory(Arc<RwLock<Vec<GpuIdentity>>>);

impl Inventory {
    /// Replaces the list; returns whether it changed.
    pub fn set(&self, mut gpus: Vec<GpuIdentity>) -> bool {
        gpus.sort_by_key(|g| g.index);
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        if *g == gpus {
            return false;
        }
        *g = gpus;
        true
    }

    pub fn all(&self) -> Vec<GpuIdentity> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn by_minor(&self, minor: u32) -> Option<GpuIdentity> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|g| g.minor == minor)
            .cloned()
    }

    pub fn by_index(&self, index: u32) -> Option<GpuIdentity> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|g| g.index == index)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_by_minor_and_index_and_change_detection() {
        let inv = Inventory::default();
        let g = |index, minor| GpuIdentity {
            index,
            minor,
            uuid: format!("GPU-{index}"),
            pci_bus_id: format!("00000000:{:02x}:00.0", 0x18 + index),
            name: "NVIDIA H100".into(),
        };
        assert!(inv.set(vec![g(1, 0), g(0, 3)]));
        assert!(!inv.set(vec![g(0, 3), g(1, 0)]), "same set, other order");
        assert_eq!(inv.by_minor(0).unwrap().index, 1);
        assert_eq!(inv.by_index(0).unwrap().minor, 3);
        assert!(inv.by_minor(7).is_none());
        assert_eq!(inv.all()[0].index, 0);
    }
}
