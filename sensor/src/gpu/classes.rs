//! Names for GPU driver objects and commands, kept in one place and versioned: each new GPU
//! generation brings new compute/GPFIFO/copy/usermode classes (gVisor's nvproxy keeps a
//! per-version table for the same reason). Sources: NVIDIA open-gpu-kernel-modules
//! `src/common/sdk/nvidia/inc/class/*.h`, `nv-ioctl-numbers.h`, `nv_escape.h`,
//! `kernel-open/nvidia-uvm/uvm_ioctl.h`, `uvm_linux_ioctl.h`; Linux
//! `include/uapi/linux/kfd_ioctl.h`, `include/uapi/drm/amdgpu_drm.h`. Summarised with links in
//! shared/reference/detection-signals.md §4.

/// Bump when an entry is added or changed; reported in `sensor_start`.
pub const TABLE_VERSION: &str = "2026.11-1";

/// What an RM class is, for the session logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClassRole {
    Root,
    Device,
    Subdevice,
    Event,
    Memory,
    VaSpace,
    ChannelGroup,
    ContextShare,
    /// A work-submission channel.
    Gpfifo,
    /// A compute engine object bound to a channel: "will launch kernels".
    Compute,
    Copy,
    /// Doorbell MMIO region.
    Usermode,
    Debugger,
    Mps,
    Video,
    ConfidentialCompute,
    Other,
}

/// (hClass, name, role).
const CLASSES: &[(u32, &str, ClassRole)] = {
    use ClassRole::*;
    &[
        (0x0000, "NV01_ROOT", Root),
        (0x0001, "NV01_ROOT_NON_PRIV", Root),
        (0x0041, "NV01_ROOT_CLIENT", Root),
        (0x0005, "NV01_EVENT", Event),
        (0x0079, "NV01_EVENT_OS_EVENT", Event),
        (0x003e, "NV01_MEMORY_SYSTEM", Memory),
        (0x0040, "NV01_MEMORY_LOCAL_USER", Memory),
        (0x0070, "NV01_MEMORY_VIRTUAL", Memory),
        (0x0073, "NV04_DISPLAY_COMMON", Other),
        (0x0080, "NV01_DEVICE_0", Device),
        (0x00de, "RM_USER_SHARED_DATA", Other),
        (0x00f8, "NV_MEMORY_FABRIC", Memory),
        (0x00fd, "NV_MEMORY_MULTICAST_FABRIC", Memory),
        (0x2080, "NV20_SUBDEVICE_0", Subdevice),
        (0x2081, "NV2081_BINAPI", Subdevice),
        (0x503c, "NV50_THIRD_PARTY_P2P", Memory),
        (0x50a0, "NV50_MEMORY_VIRTUAL", Memory),
        (0x83de, "GT200_DEBUGGER", Debugger),
        (0x900e, "MPS_COMPUTE", Mps),
        (0x9067, "FERMI_CONTEXT_SHARE_A", ContextShare),
        (0x90e6, "GF100_SUBDEVICE_MASTER", Subdevice),
        (0x90e7, "GF100_SUBDEVICE_INFOROM", Subdevice),
        (0x90f1, "FERMI_VASPACE_A", VaSpace),
        (0xa06c, "KEPLER_CHANNEL_GROUP_A", ChannelGroup),
        (0xa06f, "KEPLER_CHANNEL_GPFIFO_A", Gpfifo),
        (0xa16f, "KEPLER_CHANNEL_GPFIFO_B", Gpfifo),
        (0xa0bc, "NVENC_SW_SESSION", Video),
        (0xc36f, "VOLTA_CHANNEL_GPFIFO_A", Gpfifo),
        (0xc46f, "TURING_CHANNEL_GPFIFO_A", Gpfifo),
        (0xc56f, "AMPERE_CHANNEL_GPFIFO_A", Gpfifo),
        (0xc86f, "HOPPER_CHANNEL_GPFIFO_A", Gpfifo),
        (0xc96f, "BLACKWELL_CHANNEL_GPFIFO_A", Gpfifo),
        (0xca6f, "BLACKWELL_CHANNEL_GPFIFO_B", Gpfifo),
        (0xc3c0, "VOLTA_COMPUTE_A", Compute),
        (0xc5c0, "TURING_COMPUTE_A", Compute),
        (0xc6c0, "AMPERE_COMPUTE_A", Compute),
        (0xc7c0, "AMPERE_COMPUTE_B", Compute),
        (0xc9c0, "ADA_COMPUTE_A", Compute),
        (0xcbc0, "HOPPER_COMPUTE_A", Compute),
        (0xcdc0, "BLACKWELL_COMPUTE_A", Compute),
        (0xcec0, "BLACKWELL_COMPUTE_B", Compute),
        (0xc3b5, "VOLTA_DMA_COPY_A", Copy),
        (0xc5b5, "TURING_DMA_COPY_A", Copy),
        (0xc6b5, "AMPERE_DMA_COPY_A", Copy),
        (0xc7b5, "AMPERE_DMA_COPY_B", Copy),
        (0xc8b5, "HOPPER_DMA_COPY_A", Copy),
        (0xc9b5, "BLACKWELL_DMA_COPY_A", Copy),
        (0xc361, "VOLTA_USERMODE_A", Usermode),
        (0xc461, "TURING_USERMODE_A", Usermode),
        (0xc561, "AMPERE_USERMODE_A", Usermode),
        (0xc661, "HOPPER_USERMODE_A", Usermode),
        (0xc761, "BLACKWELL_USERMODE_A", Usermode),
        (0xc637, "AMPERE_SMC_PARTITION_REF", Other),
        (0xc639, "AMPERE_SMC_EXEC_PARTITION_REF", Other),
        (0xc640, "AMPERE_SMC_MONITOR_SESSION", Other),
        (0xc9b7, "NVC9B7_VIDEO_ENCODER", Video),
        (0xcb33, "NV_CONFIDENTIAL_COMPUTE", ConfidentialCompute),
        (0xcba2, "HOPPER_SEC2_WORK_LAUNCH_A", ConfidentialCompute),
    ]
};

pub fn class(id: u32) -> Option<(&'static str, ClassRole)> {
    CLASSES.iter().find(|c| c.0 == id).map(|c| (c.1, c.2))
}

pub fn class_name(id: u32) -> String {
    class(id)
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| format!("CLASS_{id:#06x}"))
}

/// Whether allocating `id` starts a compute session (a channel or a compute engine object).
pub fn starts_compute(id: u32) -> bool {
    matches!(class(id), Some((_, ClassRole::Compute | ClassRole::Gpfifo)))
}

/// NVIDIA escape numbers (`_IOC_NR`), nv-ioctl-numbers.h and nv_escape.h.
pub fn nv_escape_name(nr: u32) -> Option<&'static str> {
    Some(match nr {
        0x27 => "NV_ESC_RM_ALLOC_MEMORY",
        0x28 => "NV_ESC_RM_ALLOC_OBJECT",
        0x29 => "NV_ESC_RM_FREE",
        0x2a => "NV_ESC_RM_CONTROL",
        0x2b => "NV_ESC_RM_ALLOC",
        0x34 => "NV_ESC_RM_DUP_OBJECT",
        0x35 => "NV_ESC_RM_SHARE",
        0x39 => "NV_ESC_RM_I2C_ACCESS",
        0x41 => "NV_ESC_RM_IDLE_CHANNELS",
        0x4a => "NV_ESC_RM_VID_HEAP_CONTROL",
        0x4d => "NV_ESC_RM_ACCESS_REGISTRY",
        0x4e => "NV_ESC_RM_MAP_MEMORY",
        0x4f => "NV_ESC_RM_UNMAP_MEMORY",
        0x52 => "NV_ESC_RM_GET_EVENT_DATA",
        0x54 => "NV_ESC_RM_ALLOC_CONTEXT_DMA2",
        0x56 => "NV_ESC_RM_ADD_VBLANK_CALLBACK",
        0x57 => "NV_ESC_RM_MAP_MEMORY_DMA",
        0x58 => "NV_ESC_RM_UNMAP_MEMORY_DMA",
        0x59 => "NV_ESC_RM_BIND_CONTEXT_DMA",
        0x5c => "NV_ESC_RM_EXPORT_OBJECT_TO_FD",
        0x5d => "NV_ESC_RM_IMPORT_OBJECT_FROM_FD",
        0x5e => "NV_ESC_RM_UPDATE_DEVICE_MAPPING_INFO",
        0x5f => "NV_ESC_RM_LOCKLESS_DIAGNOSTIC",
        0xc8 => "NV_ESC_CARD_INFO",
        0xc9 => "NV_ESC_REGISTER_FD",
        0xce => "NV_ESC_ALLOC_OS_EVENT",
        0xcf => "NV_ESC_FREE_OS_EVENT",
        0xd1 => "NV_ESC_STATUS_CODE",
        0xd2 => "NV_ESC_CHECK_VERSION_STR",
        0xd3 => "NV_ESC_IOCTL_XFER_CMD",
        0xd4 => "NV_ESC_ATTACH_GPUS_TO_FD",
        0xd5 => "NV_ESC_QUERY_DEVICE_INTR",
        0xd6 => "NV_ESC_SYS_PARAMS",
        0xd7 => "NV_ESC_NUMA_INFO",
        0xd8 => "NV_ESC_SET_NUMA_STATUS",
        0xd9 => "NV_ESC_EXPORT_TO_DMABUF_FD",
        0xda => "NV_ESC_WAIT_OPEN_COMPLETE",
        _ => return None,
    })
}

/// UVM commands: the raw request value (uvm_ioctl.h, uvm_linux_ioctl.h).
pub fn uvm_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        0x30000001 => "UVM_INITIALIZE",
        0x30000002 => "UVM_DEINITIALIZE",
        1 => "UVM_RESERVE_VA",
        2 => "UVM_RELEASE_VA",
        3 => "UVM_REGION_COMMIT",
        4 => "UVM_REGION_DECOMMIT",
        23 => "UVM_CREATE_RANGE_GROUP",
        24 => "UVM_DESTROY_RANGE_GROUP",
        25 => "UVM_REGISTER_GPU_VASPACE",
        26 => "UVM_UNREGISTER_GPU_VASPACE",
        27 => "UVM_REGISTER_CHANNEL",
        28 => "UVM_UNREGISTER_CHANNEL",
        29 => "UVM_ENABLE_PEER_ACCESS",
        30 => "UVM_DISABLE_PEER_ACCESS",
        31 => "UVM_SET_RANGE_GROUP",
        33 => "UVM_MAP_EXTERNAL_ALLOCATION",
        34 => "UVM_FREE",
        35 => "UVM_MEM_MAP",
        37 => "UVM_REGISTER_GPU",
        38 => "UVM_UNREGISTER_GPU",
        39 => "UVM_PAGEABLE_MEM_ACCESS",
        42 => "UVM_SET_PREFERRED_LOCATION",
        43 => "UVM_UNSET_PREFERRED_LOCATION",
        46 => "UVM_SET_ACCESSED_BY",
        47 => "UVM_UNSET_ACCESSED_BY",
        51 => "UVM_MIGRATE",
        53 => "UVM_MIGRATE_RANGE_GROUP",
        56 => "UVM_TOOLS_INIT_EVENT_TRACKER",
        62 => "UVM_TOOLS_READ_PROCESS_MEMORY",
        63 => "UVM_TOOLS_WRITE_PROCESS_MEMORY",
        65 => "UVM_MAP_DYNAMIC_PARALLELISM_REGION",
        66 => "UVM_UNMAP_EXTERNAL",
        68 => "UVM_ALLOC_SEMAPHORE_POOL",
        69 => "UVM_CLEAN_UP_ZOMBIE_RESOURCES",
        70 => "UVM_PAGEABLE_MEM_ACCESS_ON_GPU",
        71 => "UVM_POPULATE_PAGEABLE",
        72 => "UVM_VALIDATE_VA_RANGE",
        73 => "UVM_CREATE_EXTERNAL_RANGE",
        74 => "UVM_MAP_EXTERNAL_SPARSE",
        75 => "UVM_MM_INITIALIZE",
        76 => "UVM_TOOLS_INIT_EVENT_TRACKER_V2",
        78 => "UVM_ALLOC_DEVICE_P2P",
        79 => "UVM_CLEAR_ALL_ACCESS_COUNTERS",
        80 => "UVM_DISCARD",
        2047 => "UVM_IS_8_SUPPORTED",
        _ => return None,
    })
}

/// KFD commands (`_IOC_NR`), kfd_ioctl.h.
pub fn kfd_name(nr: u32) -> Option<&'static str> {
    Some(match nr {
        0x01 => "AMDKFD_IOC_GET_VERSION",
        0x02 => "AMDKFD_IOC_CREATE_QUEUE",
        0x03 => "AMDKFD_IOC_DESTROY_QUEUE",
        0x05 => "AMDKFD_IOC_GET_CLOCK_COUNTERS",
        0x07 => "AMDKFD_IOC_UPDATE_QUEUE",
        0x08 => "AMDKFD_IOC_CREATE_EVENT",
        0x0c => "AMDKFD_IOC_WAIT_EVENTS",
        0x11 => "AMDKFD_IOC_SET_SCRATCH_BACKING_VA",
        0x14 => "AMDKFD_IOC_GET_PROCESS_APERTURES_NEW",
        0x15 => "AMDKFD_IOC_ACQUIRE_VM",
        0x16 => "AMDKFD_IOC_ALLOC_MEMORY_OF_GPU",
        0x17 => "AMDKFD_IOC_FREE_MEMORY_OF_GPU",
        0x18 => "AMDKFD_IOC_MAP_MEMORY_TO_GPU",
        0x19 => "AMDKFD_IOC_UNMAP_MEMORY_FROM_GPU",
        0x1f => "AMDKFD_IOC_SMI_EVENTS",
        0x20 => "AMDKFD_IOC_SVM",
        0x23 => "AMDKFD_IOC_AVAILABLE_MEMORY",
        _ => return None,
    })
}

/// `kfd_ioctl_create_queue_args.queue_type`: KFD_IOC_QUEUE_TYPE_COMPUTE 0, SDMA 1,
/// COMPUTE_AQL 2 (kfd_ioctl.h).
pub fn kfd_queue_is_compute(queue_type: u32) -> bool {
    queue_type == 0 || queue_type == 2
}

/// amdgpu DRM commands (`_IOC_NR`, DRM_COMMAND_BASE 0x40 included), amdgpu_drm.h.
pub fn drm_name(nr: u32) -> Option<&'static str> {
    Some(match nr {
        0x40 => "DRM_AMDGPU_GEM_CREATE",
        0x41 => "DRM_AMDGPU_GEM_MMAP",
        0x42 => "DRM_AMDGPU_CTX",
        0x43 => "DRM_AMDGPU_BO_LIST",
        0x44 => "DRM_AMDGPU_CS",
        0x45 => "DRM_AMDGPU_INFO",
        0x48 => "DRM_AMDGPU_GEM_VA",
        0x49 => "DRM_AMDGPU_WAIT_CS",
        0x52 => "DRM_AMDGPU_WAIT_FENCES",
        0x53 => "DRM_AMDGPU_VM",
        0x55 => "DRM_AMDGPU_SCHED",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_unique_ids_and_knows_the_h100_compute_set() {
        let mut ids: Vec<u32> = CLASSES.iter().map(|c| c.0).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate class id");
        assert_eq!(
            class(0xcbc0),
            Some(("HOPPER_COMPUTE_A", ClassRole::Compute))
        );
        assert!(starts_compute(0xc86f) && starts_compute(0xcbc0) && starts_compute(0xcec0));
        // nvidia-smi's classes (fixture README) never start a session.
        for c in [
            0x0000, 0x0073, 0x0080, 0x00de, 0x2080, 0x2081, 0x90e7, 0xc639, 0xc640,
        ] {
            assert!(!starts_compute(c), "{c:#x}");
        }
        assert_eq!(class_name(0x1234), "CLASS_0x1234");
        assert_eq!(nv_escape_name(0x2b), Some("NV_ESC_RM_ALLOC"));
        assert_eq!(uvm_name(0x30000001), Some("UVM_INITIALIZE"));
        assert_eq!(kfd_name(2), Some("AMDKFD_IOC_CREATE_QUEUE"));
        assert_eq!(drm_name(0x44), Some("DRM_AMDGPU_CS"));
    }
}
