//! The container image, built here without Docker or a registry (scripts/build-image.sh:
//! mmdebstrap bookworm minbase + the sensor binary, `podman import`) and run with podman the
//! way the DaemonSet runs it: the capabilities its manifest adds (read from
//! deploy/kubernetes/base/20-daemonset.yaml), host PID namespace, read-only root, the host
//! paths it mounts, and the stand-in NVML mounted where the NVIDIA container toolkit puts the
//! driver's `libnvidia-ml.so.1`. Proves that the glibc library is dlopened and used inside.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use sensor_tests::{free_port, http_get, nvml_stub, require_root, sensor_bin, wait_until};
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The capabilities the DaemonSet's container adds.
fn daemonset_caps() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo().join("deploy/kubernetes/base/20-daemonset.yaml")).unwrap();
    let ds = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(ds["spec"]["template"]["spec"]["hostPID"], Value::Bool(true));
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"],
        Value::Bool(true)
    );
    c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

struct Cleanup {
    name: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", &self.name]).output();
        let _ = podman().args(["rmi", "-f", &self.image]).output();
    }
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.arg("--cgroup-manager=cgroupfs");
    c
}

/// `podman run` with the runtime settings this host needs (runc: crun refuses hybrid cgroups;
/// limits can only be lowered here).
fn run_args() -> Vec<String> {
    [
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn image_runs_the_sensor_as_the_daemonset_does_and_dlopens_nvml() {
    let name = "image_runs_the_sensor_as_the_daemonset_does_and_dlopens_nvml";
    if !require_root(name) {
        return;
    }
    let tag = format!("test-{}", std::process::id());
    let image = format!("localhost/gpu-sensor:{tag}");
    let ctr = format!("gpu-sensor-test-{}", std::process::id());
    let _cleanup = Cleanup {
        name: ctr.clone(),
        image: image.clone(),
    };
    let out = Command::new("bash")
        .arg(repo().join("scripts/build-image.sh"))
        .arg(sensor_bin())
        .arg(&tag)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "build-image.sh: {log}");
    println!(
        "{}",
        log.lines()
            .filter(|l| l.contains("built"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // --version
    let o = podman()
        .args(run_args())
        .arg(&image)
        .arg("--version")
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && v.starts_with("sensor "), "{v}");

    let dir = std::env::temp_dir().join(format!("sensor-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["config", "spool", "nvml", "nvml-log"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let port = free_port();
    std::fs::write(
        dir.join("config/sensor.toml"),
        format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[gpu]\nnvml_interval_secs = 1\n\n[alerting]\nspool_dir = \"/var/lib/gpu-sensor/spool\"\n"
        ),
    )
    .unwrap();

    // check-config, on the config as mounted.
    let o = podman()
        .args(run_args())
        .arg("-v")
        .arg(format!(
            "{}:/etc/gpu-sensor/config:ro",
            dir.join("config").display()
        ))
        .arg(&image)
        .args(["check-config", "/etc/gpu-sensor/config/sensor.toml"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "check-config in the image: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // A short `sensor run` with the DaemonSet's privileges and mounts and a stand-in NVML.
    nvml_stub(&dir.join("nvml"));
    std::fs::write(
        dir.join("nvml/nvml.conf"),
        "driver 550.54.15\ndevice 0 0 GPU-5d3c6a2e-0c1b-4f7e-9a51-2b8e3f0d4c11 00000000:18:00.0 NVIDIA_H100_80GB_HBM3 97 41 2100 900\n",
    )
    .unwrap();
    let caps = daemonset_caps();
    let mut c = podman();
    c.args(run_args())
        .args([
            "--name",
            &ctr,
            "--pid=host",
            "--network=host",
            "--read-only",
            "--cap-drop=all",
        ])
        .arg(format!("--cap-add={}", caps.join(",")))
        .args([
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
        ])
        .args(["-v", "/sys/kernel/btf:/sys/kernel/btf:ro"])
        .args(["-v", "/sys/kernel/tracing:/sys/kernel/tracing"])
        .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
        .arg("-v")
        .arg(format!(
            "{}:/var/lib/gpu-sensor",
            dir.join("spool").display()
        ))
        .arg("-v")
        .arg(format!(
            "{}:/etc/gpu-sensor/config:ro",
            dir.join("config").display()
        ))
        .arg("-v")
        .arg(format!(
            "{}:/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1:ro",
            dir.join("nvml/libnvidia-ml.so.1").display()
        ))
        .arg("-v")
        .arg(format!(
            "{}:/etc/nvml-stub/nvml.conf:ro",
            dir.join("nvml/nvml.conf").display()
        ))
        .arg("-v")
        .arg(format!(
            "{}:/var/log/nvml-stub",
            dir.join("nvml-log").display()
        ))
        .args(["-e", "NVML_STUB_CONFIG=/etc/nvml-stub/nvml.conf"])
        .args(["-e", "NVML_STUB_LOG=/var/log/nvml-stub/calls"])
        .arg(&image)
        .args(["run", "--config", "/etc/gpu-sensor/config/sensor.toml"])
        .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let start: serde_json::Value = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("sensor_start from the container");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        if v["kind"] == "sensor_start" {
            break v;
        }
    };
    let hooks: Vec<&str> = start["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    println!("hooks in the container: {}", hooks.len());
    for want in [
        "sched_process_exec",
        "sys_exit_ioctl",
        "sys_exit_connect",
        "cgroup_skb/egress",
    ] {
        assert!(
            hooks.iter().any(|h| h.contains(want)),
            "{want} not attached inside the container: {hooks:?}"
        );
    }
    // NVML: the glibc library was dlopened and named the GPU; the metrics carry its DCGM labels.
    let addr = format!("127.0.0.1:{port}");
    let info = "gpu_sensor_gpu_info{gpu=\"0\",minor=\"0\",UUID=\"GPU-5d3c6a2e-0c1b-4f7e-9a51-2b8e3f0d4c11\",pci_bus_id=\"00000000:18:00.0\",device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\"} 1";
    let mut metrics = String::new();
    wait_until(20, || {
        metrics = http_get(&addr, "/metrics").1;
        metrics.contains(info)
    });
    assert!(metrics.contains(info), "{metrics}");
    assert!(metrics.contains("gpu_sensor_component_up{component=\"nvml\"} 1"));
    let calls_file = dir.join("nvml-log/calls");
    let read_calls = || std::fs::read_to_string(&calls_file).unwrap_or_default();
    // The first sampling round comes one interval (1 s) after start.
    wait_until(20, || {
        read_calls().contains("nvmlDeviceGetProcessUtilization")
    });
    let calls = read_calls();
    for f in [
        "nvmlInit_v2",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetPciInfo_v3",
        "nvmlDeviceGetProcessUtilization",
    ] {
        assert!(calls.contains(f), "{f} never called: {calls}");
    }
    assert_eq!(http_get(&addr, "/readyz").0, 200);

    // SIGINT through podman: the sensor detaches and exits 0 with its final loss record.
    let k = podman()
        .args(["kill", "--signal", "INT", &ctr])
        .output()
        .unwrap();
    assert!(k.status.success(), "{}", String::from_utf8_lossy(&k.stderr));
    let mut last_final = false;
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(30)) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        last_final |= v["kind"] == "loss" && v["final"] == true;
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "sensor in the container exited {st}");
    assert!(last_final, "no final loss record");
    let _ = std::fs::remove_dir_all(&dir);
}
