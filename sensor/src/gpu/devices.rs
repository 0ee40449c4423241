//! Which character devices are GPUs: fixed majors (NVIDIA 195, DRM 226), dynamic majors from
//! `/proc/devices` (nvidia-uvm, nvidia-caps, nvswitch/nvlink, kfd), and configured extras (tests
//! use a harmless char device as a stand-in). The agent writes the result into the kernel's
//! `GPU_DEVS` map and refreshes it, because drivers may load after the sensor starts.

use sensor_common::{flags, gpu::dev, gpu_dev_key, GpuDev};
use serde::Deserialize;

/// `NV_MAJOR_DEVICE_NUMBER` (kernel-open/common/inc/nv-chardev-numbers.h).
pub const NVIDIA_MAJOR: u32 = 195;
/// `DRM_MAJOR` (include/drm/drm_device.h / drm_drv.c registers "drm" on 226).
pub const DRM_MAJOR: u32 = 226;
/// `MISC_MAJOR` 10 (include/uapi/linux/major.h) and `TUN_MINOR` 200
/// (include/linux/miscdevice.h): /dev/net/tun.
pub const TUN_MAJOR: u32 = 10;
pub const TUN_MINOR: u32 = 200;

/// A configured GPU device (config `[[gpu.devices]]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub major: u32,
    /// Omitted: every minor of the major.
    pub minor: Option<u32>,
    /// "nvidia", "nvidia-uvm", "nvidia-caps", "nvidia-fabric", "kfd" or "drm".
    pub kind: String,
    /// Minor number to report instead of the real one (e.g. 255 for a stand-in nvidiactl).
    pub gpu_minor: Option<u32>,
    /// A stand-in, not a real driver: its ioctl return codes are not held against the calls
    /// (it rejects every GPU command with ENOTTY).
    #[serde(default)]
    pub emulated: bool,
}

/// A configured device kind's id, by the name events use for it (`crate::event::Device`).
pub fn kind_from_name(name: &str) -> Option<u32> {
    crate::event::Device::GPU
        .iter()
        .find(|d| d.as_str() == name)
        .map(|d| d.id())
}

/// Driver names in the "Character devices" part of /proc/devices → kind. Names: NVIDIA
/// `nv.c` ("nvidia-frontend"/"nvidia"), `uvm.c` ("nvidia-uvm"), `nv-caps.c` ("nvidia-caps",
/// "nvidia-caps-imex-channels"), nvswitch/nvlink modules; amdkfd `kfd_chardev.c` ("kfd").
fn kind_of_driver(name: &str) -> Option<u32> {
    Some(match name {
        "nvidia" | "nvidia-frontend" => dev::NVIDIA,
        "nvidia-uvm" => dev::NVIDIA_UVM,
        "nvidia-caps" | "nvidia-caps-imex-channels" => dev::NVIDIA_CAPS,
        "nvidia-nvswitch" | "nvidia-nvlink" => dev::NVIDIA_FABRIC,
        "kfd" => dev::KFD,
        "drm" => dev::DRM,
        _ => return None,
    })
}

/// Parses /proc/devices: (major, kind) for every GPU driver among the character devices.
pub fn parse_proc_devices(text: &str) -> Vec<(u32, u32)> {
    let mut out = vec![];
    let mut in_char = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Character devices") {
            in_char = true;
            continue;
        }
        if line.starts_with("Block devices") {
            in_char = false;
            continue;
        }
        if !in_char {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(maj), Some(name)) = (it.next(), it.next()) else {
            continue;
        };
        if let (Ok(maj), Some(k)) = (maj.parse::<u32>(), kind_of_driver(name)) {
            out.push((maj, k));
        }
    }
    out
}

/// The full set of map entries: fixed majors, /proc/devices, configured extras (last wins).
pub fn entries(proc_devices: &str, extra: &[DeviceSpec]) -> Result<Vec<(u64, GpuDev)>, String> {
    let wild = |major, kind| {
        (
            gpu_dev_key(major, u32::MAX),
            GpuDev {
                kind,
                flags: 0,
                gpu_minor: u32::MAX,
                _pad: 0,
            },
        )
    };
    let mut v = vec![
        wild(NVIDIA_MAJOR, dev::NVIDIA),
        wild(DRM_MAJOR, dev::DRM),
        (
            gpu_dev_key(TUN_MAJOR, TUN_MINOR),
            GpuDev {
                kind: dev::TUN,
                flags: 0,
                gpu_minor: u32::MAX,
                _pad: 0,
            },
        ),
    ];
    for (maj, k) in parse_proc_devices(proc_devices) {
        v.push(wild(maj, k));
    }
    for d in extra {
        let kind = kind_from_name(&d.kind)
            .ok_or_else(|| format!("gpu.devices: unknown kind {:?}", d.kind))?;
        v.push((
            gpu_dev_key(d.major, d.minor.unwrap_or(u32::MAX)),
            GpuDev {
                kind,
                flags: if d.emulated { flags::GPU_EMULATED } else { 0 },
                gpu_minor: d.gpu_minor.unwrap_or(u32::MAX),
                _pad: 0,
            },
        ));
    }
    Ok(v)
}

/// Whether (major, minor) is in the device set.
pub fn matches(entries: &[(u64, GpuDev)], major: u32, minor: u32) -> bool {
    entries
        .iter()
        .any(|(k, _)| *k == gpu_dev_key(major, minor) || *k == gpu_dev_key(major, u32::MAX))
}

/// Processes that already hold a GPU device fd (started before the sensor): every
/// `/proc/PID/fd/N` that is a character device in the set.
pub fn processes_with_gpu_fds(entries: &[(u64, GpuDev)]) -> Vec<u32> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = vec![];
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(m) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if m.file_type().is_char_device() {
                let rdev = m.rdev();
                if matches(entries, libc::major(rdev), libc::minor(rdev)) {
                    out.push(pid);
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: &str = "Character devices:\n  1 mem\n  4 /dev/vc/0\n195 nvidia-frontend\n\
226 drm\n238 nvidia-uvm\n241 nvidia-caps\n510 nvidia-nvswitch\n\nBlock devices:\n  8 sd\n241 nvidia-uvm\n";

    #[test]
    fn proc_devices_char_section_only() {
        let v = parse_proc_devices(H100);
        assert_eq!(
            v,
            vec![
                (195, dev::NVIDIA),
                (226, dev::DRM),
                (238, dev::NVIDIA_UVM),
                (241, dev::NVIDIA_CAPS),
                (510, dev::NVIDIA_FABRIC)
            ]
        );
        assert!(parse_proc_devices("garbage\n\u{0}").is_empty());
    }

    #[test]
    fn entries_with_a_stand_in() {
        let extra = [DeviceSpec {
            major: 1,
            minor: Some(3),
            kind: "nvidia".into(),
            gpu_minor: Some(255),
            emulated: true,
        }];
        let v = entries("", &extra).unwrap();
        assert_eq!(v[0].0, gpu_dev_key(195, u32::MAX));
        let (k, d) = v.last().unwrap();
        assert_eq!(*k, gpu_dev_key(1, 3));
        assert_eq!(
            (d.kind, d.flags, d.gpu_minor),
            (dev::NVIDIA, flags::GPU_EMULATED, 255)
        );
        let bad = [DeviceSpec {
            kind: "tpu".into(),
            ..extra[0].clone()
        }];
        assert!(entries("", &bad).unwrap_err().contains("tpu"));
        assert!(matches(&v, 1, 3) && matches(&v, 195, 7) && !matches(&v, 1, 5));
    }
}
