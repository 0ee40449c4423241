//! Agent configuration: a TOML file where every field has a default. Unknown fields and bad
//! values are errors that name the file, line and column (never a panic).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The whole configuration. See README "Configuration" for every field.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ring: RingConfig,
    pub filter: FilterConfig,
    pub output: OutputConfig,
    pub gpu: GpuConfig,
    pub rules: crate::rules::RulesConfig,
    pub context: ContextConfig,
    pub net: NetConfig,
    pub metrics: MetricsConfig,
    pub alerting: crate::alerting::AlertingConfig,
    pub maps: MapsConfig,
    pub workload: crate::context::workload::WorkloadConfig,
    pub incidents: crate::incidents::IncidentsConfig,
    /// Export to the cluster's log pipeline (`[export.file]`, `[export.otlp]`).
    pub export: crate::export::ExportConfig,
    /// Programs not to attach (`[hooks] disable`): to measure what each hook costs the node
    /// (`cargo xtask bench`), or to run without one; what it would have seen is not seen.
    pub hooks: HooksConfig,
    /// Path of the kernel BTF used to resolve struct offsets.
    pub btf_path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ring: RingConfig::default(),
            filter: FilterConfig::default(),
            output: OutputConfig::default(),
            gpu: GpuConfig::default(),
            rules: crate::rules::RulesConfig::default(),
            context: ContextConfig::default(),
            net: NetConfig::default(),
            metrics: MetricsConfig::default(),
            alerting: crate::alerting::AlertingConfig::default(),
            maps: MapsConfig::default(),
            workload: Default::default(),
            incidents: Default::default(),
            export: Default::default(),
            hooks: Default::default(),
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Program names (`sensor_start.hooks` lists them as `tracepoint/syscalls/<name>`,
    /// `raw_tp/<name>`, `cgroup_skb/egress`): e.g. `["sys_exit_ioctl", "sys_exit_openat"]`.
    pub disable: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RingConfig {
    /// BPF ring buffer size: bytes or a size with a unit ("16KiB", "8MiB"). A power of two and
    /// a multiple of the page size (a kernel requirement of BPF_MAP_TYPE_RINGBUF).
    #[serde(deserialize_with = "de_size")]
    pub size: u64,
    /// Capacity of the user-side queue between the ring reader and the pipeline, in events.
    /// When it is full, events are dropped and counted (`user_dropped`).
    pub queue: usize,
    /// Milliseconds between reads of the ring when no wakeup came: the kernel side wakes the
    /// reader only for batches, so this bounds the latency of a lone event. 5 ms: at 10k
    /// events/s the agent then wakes 200 times a second, not 500 (`bench poll`: 4.3 % of a
    /// core against 6.2 % at 2 ms, syscall-to-alert p99 5.3 ms against 2.2 ms).
    pub poll_interval_ms: u64,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            size: 8 << 20,
            queue: 65536,
            poll_interval_ms: 5,
        }
    }
}

/// Capacities of the kernel maps (config `[maps]`): what they hold, and so what they lock.
/// The sensor reports each map's locked memory at start-up (`sensor_start.map_bytes`) and as
/// `gpu_sensor_bpf_map_bytes{map}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MapsConfig {
    /// Outbound TCP connections followed from connect to close (TRACKED_SOCKS, LRU: the oldest
    /// are forgotten first; a forgotten one gets no `tcp_close` and no stdio/dup verdict).
    pub tracked_connections: u32,
    /// New outbound connections waiting for their first data segment (FRESH_CONNS, LRU).
    pub fresh_connections: u32,
    /// Processes with GPU device files open (GPU_TGIDS, LRU).
    pub gpu_processes: u32,
}

impl Default for MapsConfig {
    fn default() -> Self {
        MapsConfig {
            tracked_connections: 16384,
            fresh_connections: 8192,
            gpu_processes: 16384,
        }
    }
}

impl MapsConfig {
    fn check(&self) -> Result<(), String> {
        in_range(
            "maps.tracked_connections",
            self.tracked_connections as u64,
            256,
            1 << 20,
        )?;
        in_range(
            "maps.fresh_connections",
            self.fresh_connections as u64,
            256,
            1 << 20,
        )?;
        in_range(
            "maps.gpu_processes",
            self.gpu_processes as u64,
            256,
            1 << 20,
        )
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Processes (thread-group ids) never reported. The sensor always ignores itself.
    pub ignore_pids: Vec<u32>,
    /// cgroup v2 ids never reported.
    pub ignore_cgroup_ids: Vec<u64>,
    /// When non-empty, only these processes and the processes they fork afterwards are reported.
    pub only_pids: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Seconds between `loss` events (emitted when a counter changed; a final one at exit).
    pub loss_interval_secs: u64,
    /// What to do when stdout's reader goes away (EPIPE, or any other write error).
    pub on_stdout_closed: StdoutClosed,
}

/// Policy for a stdout that cannot be written any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StdoutClosed {
    /// Log it, mark the sensor unhealthy and exit with status 1 (a supervisor restarts it).
    #[default]
    Exit,
    /// Log it once, count it, and keep running with the alert sinks, the recording and the
    /// metrics (events are no longer printed).
    Continue,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            loss_interval_secs: 10,
            on_stdout_closed: StdoutClosed::Exit,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve /metrics, /healthz and /readyz.
    pub enabled: bool,
    /// Listen address. 9943 collides with none of the usual node agents (node-exporter 9100,
    /// DCGM-exporter 9400, Falco 8765, Tetragon 2112, Tracee 3366).
    pub listen: std::net::SocketAddr,
    /// Most connections served at once; further ones are closed at once (and counted).
    pub max_connections: usize,
    /// Seconds a client has to send its request headers (and the TLS handshake).
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay open in all. One request per connection: no idle
    /// keep-alive connections are held.
    pub connection_timeout_secs: u64,
    /// TLS: PEM certificate chain and PEM private key (both or neither).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// When set, `/metrics` requires `Authorization: Bearer <token>` with the token in this file
    /// (Prometheus: `authorization.credentials_file`). `/healthz` and `/readyz` stay open for the
    /// kubelet's probes; they reveal no data.
    pub bearer_token_file: Option<PathBuf>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 9943)),
            max_connections: 64,
            header_timeout_secs: 5,
            connection_timeout_secs: 30,
            tls_cert_file: None,
            tls_key_file: None,
            bearer_token_file: None,
        }
    }
}

impl MetricsConfig {
    fn check(&self) -> Result<(), String> {
        in_range(
            "metrics.max_connections",
            self.max_connections as u64,
            1,
            4096,
        )?;
        in_range(
            "metrics.header_timeout_secs",
            self.header_timeout_secs,
            1,
            300,
        )?;
        in_range(
            "metrics.connection_timeout_secs",
            self.connection_timeout_secs,
            self.header_timeout_secs,
            3600,
        )?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("metrics.tls_cert_file and metrics.tls_key_file go together".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Capture the first data segment (512 bytes) of each new outbound TCP connection and every
    /// DNS query, at the socket level (`cgroup_skb/egress` on the cgroup v2 root): SSH banners,
    /// Stratum/XMRig logins, TLS SNI, HTTP Host, DNS names, whatever syscall sent them. Costs
    /// each sent packet one socket-cookie lookup; no syscall is hooked for it.
    pub first_payload: bool,
    /// The cgroup v2 mount to attach that program to (default: `/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on a hybrid host). In a container, mount the host's cgroup v2
    /// root here: a container's own cgroup namespace root covers only itself.
    pub cgroup_path: Option<PathBuf>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            first_payload: true,
            cgroup_path: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    /// Environment variables whose value tags an agent episode (e.g. an RL rollout id); read
    /// from /proc/PID/environ at exec time, inherited by children, copied into alerts.
    pub episode_env: Vec<String>,
    /// Pod annotations that tag an agent episode; copied into the container info of events and
    /// used as the alert's `episode` when no environment tag is set.
    pub episode_annotations: Vec<String>,
    /// Kubernetes API base URL; default: in-cluster (KUBERNETES_SERVICE_HOST/PORT + service
    /// account). Unset outside a cluster: containers carry ids only.
    pub kube_api: Option<String>,
    /// This node's name for the pod field selector; default: env NODE_NAME.
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Extra GPU device numbers (beyond NVIDIA 195, DRM 226 and the /proc/devices drivers),
    /// e.g. a stand-in device for tests.
    pub devices: Vec<crate::gpu::devices::DeviceSpec>,
    /// Seconds between re-reads of /proc/devices (drivers loaded after start-up).
    pub refresh_secs: u64,
    /// Sample NVML when libnvidia-ml.so.1 is present.
    pub nvml: bool,
    /// The NVML library dlopened: a name searched the usual way (the NVIDIA container toolkit
    /// mounts it into the image's library directory) or a path (e.g. under the GPU operator's
    /// `/run/nvidia/driver`).
    pub nvml_library: PathBuf,
    pub nvml_interval_secs: u64,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            devices: vec![],
            refresh_secs: 30,
            nvml: true,
            nvml_library: PathBuf::from("libnvidia-ml.so.1"),
            nvml_interval_secs: 5,
        }
    }
}

pub(crate) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// Parses "4096", "16KiB", "8MiB", "1GiB" (binary units; "K"/"M"/"G" accepted as the same).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected e.g. 8MiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        u => {
            return Err(format!(
                "bad size unit {u:?} in {s:?}: use B, KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&path.display().to_string(), &text)
    }

    pub fn from_toml(path: &str, text: &str) -> Result<Config, ConfigError> {
        // toml's Display quotes the offending source line, which may hold a secret (a sink URL):
        // report its message with the line and column only.
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|sp| {
                let before = &text[..sp.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {col}: ")
            });
            ConfigError::Parse {
                path: path.to_string(),
                message: format!("{}{}", at.unwrap_or_default(), e.message()),
            }
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        self.check().map_err(|message| ConfigError::Invalid {
            path: path.to_string(),
            message,
        })
    }

    /// Every value bounded and cross-checked (README "Configuration": limits): a value that
    /// would overflow a timer, exhaust memory or never work is refused here, never at run time.
    fn check(&self) -> Result<(), String> {
        let sz = self.ring.size;
        let min = sensor_common::MIN_RING_SIZE as u64;
        if sz < min || !sz.is_power_of_two() || sz > MAX_RING_SIZE {
            return Err(format!(
                "ring.size = {sz}: must be a power of two between {} KiB and 1GiB (the ring must hold at least two of the largest records, {} bytes each)",
                min >> 10,
                sensor_common::MAX_RECORD_SIZE
            ));
        }
        in_range("ring.poll_interval_ms", self.ring.poll_interval_ms, 1, 1000)?;
        in_range("ring.queue", self.ring.queue as u64, 1, MAX_QUEUE as u64)?;
        in_range("gpu.refresh_secs", self.gpu.refresh_secs, 1, DAY)?;
        in_range(
            "gpu.nvml_interval_secs",
            self.gpu.nvml_interval_secs,
            1,
            3600,
        )?;
        in_range("gpu.devices (count)", self.gpu.devices.len() as u64, 0, 64)?;
        for d in &self.gpu.devices {
            if crate::gpu::devices::kind_from_name(&d.kind).is_none() {
                return Err(format!(
                    "gpu.devices: unknown kind {:?} (nvidia, nvidia-uvm, nvidia-caps, nvidia-fabric, kfd, drm)",
                    d.kind
                ));
            }
        }
        in_range(
            "output.loss_interval_secs",
            self.output.loss_interval_secs,
            1,
            DAY,
        )?;
        in_range("rules.dedup_secs", self.rules.dedup_secs, 0, 7 * DAY)?;
        for g in &self.rules.agent_runtimes {
            glob::Pattern::new(g)
                .map_err(|e| format!("rules.agent_runtimes: bad glob {g:?}: {e}"))?;
        }
        for k in [&self.context.kube_api].into_iter().flatten() {
            if !(k.starts_with("https://") || k.starts_with("http://")) {
                return Err(format!("context.kube_api = {k:?}: must be an http(s) URL"));
            }
        }
        self.metrics.check()?;
        self.alerting.check()?;
        self.workload.check()?;
        self.maps.check()?;
        self.incidents.check()?;
        self.export.check()?;
        for h in &self.hooks.disable {
            if !crate::hook::PROGRAMS.contains(&h.as_str()) {
                return Err(format!(
                    "hooks.disable: no program {h:?}; the programs are {}",
                    crate::hook::PROGRAMS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// A day, in seconds: the longest period any timer accepts.
pub const DAY: u64 = 86_400;
/// Largest ring buffer.
pub const MAX_RING_SIZE: u64 = 1 << 30;
/// Largest user-side queue, in events.
pub const MAX_QUEUE: usize = 1 << 20;

/// `name` within `lo..=hi`, or an error that says the range.
pub fn in_range(name: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
    if v < lo || v > hi {
        return Err(format!("{name} = {v}: must be between {lo} and {hi}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::from_toml("c", "").unwrap(), Config::default());
    }

    #[test]
    fn hooks_disable_takes_known_programs() {
        let c = |s: &str| Config::from_toml("c", &format!("[hooks]\ndisable = [{s}]\n"));
        c("\"sys_exit_ioctl\", \"sys_exit_dup2\", \"sock_egress\"").unwrap();
        let e = c("\"sys_exit_ioctll\"").unwrap_err().to_string();
        assert!(
            e.contains("no program") && e.contains("sys_exit_ioctl,"),
            "{e}"
        );
        // The entry programs are gone (arguments come from the saved registers at exit).
        let e = c("\"sys_enter_connect\"").unwrap_err().to_string();
        assert!(e.contains("no program"), "{e}");
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("16KiB").unwrap(), 16384);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("8XB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        let c = Config::from_toml("c", "[ring]\nsize = \"64KiB\"\nqueue = 10\n").unwrap();
        assert_eq!(c.ring.size, 65536);
        assert_eq!(c.ring.queue, 10);
        let c = Config::from_toml(
            "c",
            "[[gpu.devices]]\nmajor = 1\nminor = 3\nkind = \"nvidia\"\ngpu_minor = 255\nemulated = true\n",
        )
        .unwrap();
        assert_eq!(c.gpu.devices[0].gpu_minor, Some(255));
    }

    #[test]
    fn parse_errors_do_not_echo_the_source_line() {
        let secret = "https://hooks.slack.com/services/T0/B0/SECRETSECRET";
        for text in [
            format!(
                "[[alerting.sinks]]\nname = \"s\"\nkind = \"slack\"\nwebhook_url = \"{secret}\"\n"
            ),
            format!("[[alerting.sinks]]\nname = \"s\"\nkind = \"slack\"\nurl = [\"{secret}\"]\n"),
        ] {
            let e = Config::from_toml("c", &text).unwrap_err().to_string();
            assert!(!e.contains("SECRETSECRET"), "{e}");
            assert!(e.contains("line 4") || e.contains("line 1"), "{e}");
        }
    }

    #[test]
    fn unknown_field_names_its_location() {
        let e = Config::from_toml("/etc/s.toml", "[ring]\nsize = \"8MiB\"\nsise = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/s.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("sise"), "{e}");
    }

    #[test]
    fn bad_values_are_errors() {
        for (text, needle) in [
            ("[ring]\nsize = \"3KiB\"\n", "power of two"),
            ("[ring]\nsize = 1024\n", "power of two"),
            ("[ring]\nqueue = 0\n", "queue"),
            ("[ring]\nqueue = -1\n", "line 2"),
            ("[filter]\nonly_pids = [\"x\"]\n", "line 2"),
            ("[output]\nloss_interval_secs = 0\n", "loss_interval"),
            (
                "[output]\nloss_interval_secs = 18446744073709551615\n",
                "loss_interval_secs = 18446744073709551615: must be between 1 and 86400",
            ),
            ("[output]\non_stdout_closed = \"ignore\"\n", "line 2"),
            ("[ring]\nsize = \"4KiB\"\n", "two of the largest records"),
            ("[ring]\nsize = \"8KiB\"\n", "between 16 KiB"),
            ("[ring]\nqueue = 18446744073709551615\n", "ring.queue"),
            ("[ring]\npoll_interval_ms = 0\n", "poll_interval_ms"),
            (
                "[gpu]\nrefresh_secs = 18446744073709551615\n",
                "gpu.refresh_secs",
            ),
            (
                "[rules]\ndedup_secs = 18446744073709551615\n",
                "rules.dedup_secs",
            ),
            ("[rules]\nagent_runtimes = [\"[\"]\n", "bad glob"),
            ("[context]\nkube_api = \"ftp://x\"\n", "http(s) URL"),
            ("ring = 5\n", "line 1"),
            ("[[gpu.devices]]\nmajor = 1\nkind = \"tpu\"\n", "tpu"),
            (
                "[[gpu.devices]]\nmajor = 1\nkind = \"nvidia\"\nbogus = 1\n",
                "bogus",
            ),
        ] {
            let e = Config::from_toml("c", text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} -> {e}");
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Keys of every section, with values of every TOML shape.
        fn entry() -> impl Strategy<Value = String> {
            let key = prop::sample::select(vec![
                "[ring]\nsize", "[ring]\nqueue", "[ring]\npoll_interval_ms",
                "[output]\nloss_interval_secs", "[output]\non_stdout_closed",
                "[gpu]\nrefresh_secs", "[gpu]\nnvml_interval_secs", "[rules]\ndedup_secs",
                "[rules]\nagent_runtimes", "[metrics]\nmax_connections",
                "[metrics]\nheader_timeout_secs", "[metrics]\nconnection_timeout_secs",
                "[metrics]\nlisten", "[context]\nkube_api", "[filter]\nonly_pids",
                "[[alerting.sinks]]\nname = \"s\"\nkind = \"webhook\"\nurl = \"http://x/\"\ntimeout_secs",
                "[[alerting.sinks]]\nname = \"s\"\nkind = \"slack\"\nurl = \"http://x/\"\nmax_spool",
                "[[alerting.sinks]]\nname = \"s\"\nkind = \"pagerduty\"\nrate_limit_window_secs",
            ]);
            let value = prop_oneof![
                any::<u64>().prop_map(|v| v.to_string()),
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:?}")),
                "[a-zA-Z0-9*/:.\\[\\] -]{0,12}".prop_map(|v| format!("{v:?}")),
                Just("[]".to_string()),
                Just("[\"[\"]".to_string()),
                Just("true".to_string()),
            ];
            (key, value).prop_map(|(k, v)| format!("{k} = {v}\n"))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

            /// Whatever the file says: an error or a config whose every duration and size can be
            /// used without overflow.
            #[test]
            fn any_config_loads_or_errors_without_panic(e in entry()) {
                if let Ok(c) = Config::from_toml("fuzz.toml", &e) {
                    let now = std::time::Instant::now();
                    let _ = now + std::time::Duration::from_secs(c.output.loss_interval_secs);
                    let _ = now + std::time::Duration::from_secs(c.gpu.refresh_secs);
                    let _ = c.rules.dedup_secs.checked_mul(1_000_000_000).expect("dedup in ns");
                    for s in &c.alerting.sinks {
                        let _ = now + std::time::Duration::from_secs(s.timeout_secs);
                        let _ = std::time::SystemTime::now() + std::time::Duration::from_secs(s.resolve_after_secs);
                        prop_assert!(s.max_spool >= 1);
                    }
                    prop_assert!(c.ring.queue >= 1 && c.ring.queue <= MAX_QUEUE);
                    let _ = tokio::sync::mpsc::channel::<u8>(c.ring.queue);
                }
            }

            /// Arbitrary text never panics the loader.
            #[test]
            fn any_text_never_panics(t in "\\PC{0,200}") {
                let _ = Config::from_toml("fuzz.toml", &t);
            }
        }
    }
}
