//! What a captured first segment says: the application protocol a process speaks, whatever its
//! executable is called. Pure functions over the bytes the kernel kept (at most
//! `sensor_common::PAYLOAD_LEN`); every parser is bounds-checked and gives up on anything it does
//! not recognise (a truncated or hostile payload yields `Unknown`, never a panic).
//!
//! Sources: SSH identification string RFC 4253 §4.2; TLS 1.2/1.3 ClientHello RFC 8446 §4.1.2 and
//! server_name RFC 6066 §3; HTTP/1.1 request line and Host RFC 9112 §3, RFC 9110 §7.2; Stratum
//! (`mining.subscribe`/`mining.authorize`) and XMRig's JSON-RPC `login` with `agent`
//! (shared/reference/detection-signals.md §3.2); DNS message RFC 1035 §4.1.

use serde::{Deserialize, Serialize};

use crate::event::AppProto;

/// Longest text kept of a banner, SNI, Host, request line or agent.
const MAX_TEXT: usize = 255;

/// The application-layer facts of a first segment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppInfo {
    #[serde(default)]
    pub proto: AppProto,
    /// SSH identification string without CR LF (`SSH-2.0-OpenSSH_9.2p1 Debian-2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_banner: Option<String>,
    /// TLS ClientHello server_name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// HTTP request line (`GET /x HTTP/1.1`) and Host header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_host: Option<String>,
    /// JSON-RPC `method` of the first message (`mining.subscribe`, `login`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_method: Option<String>,
    /// The `agent` of an XMRig-style `login` (`XMRig/6.21.0 (Linux x86_64) …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miner_agent: Option<String>,
}

/// Methods that make a JSON-RPC first message a mining protocol (Stratum v1, Ethereum
/// stratum/getwork proxies, XMRig `login` with an agent).
const STRATUM_METHODS: &[&str] = &[
    "mining.subscribe",
    "mining.authorize",
    "mining.extranonce.subscribe",
    "mining.configure",
    "eth_submitlogin",
    "eth_getwork",
    "eth_submitwork",
    "eth_submithashrate",
];

fn text(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(b);
    let t = t.trim_end_matches(['\r', '\n']);
    t.chars().take(MAX_TEXT).collect()
}

/// Classifies the first data segment of a TCP connection.
pub fn parse_stream(data: &[u8]) -> AppInfo {
    if let Some(b) = ssh_banner(data) {
        return AppInfo {
            proto: AppProto::Ssh,
            ssh_banner: Some(b),
            ..AppInfo::default()
        };
    }
    if let Some(sni) = tls_client_hello(data) {
        return AppInfo {
            proto: AppProto::Tls,
            sni,
            ..AppInfo::default()
        };
    }
    if let Some((line, host)) = http_request(data) {
        return AppInfo {
            proto: AppProto::Http,
            http_request: Some(line),
            http_host: host,
            ..AppInfo::default()
        };
    }
    if let Some(info) = json_rpc(data) {
        return info;
    }
    AppInfo::default()
}

/// RFC 4253 §4.2: `SSH-protoversion-softwareversion SP comments CR LF`; 1.99 is a 2.0 server
/// that also speaks 1.x. Lines before it are allowed only from servers; a client starts with it.
fn ssh_banner(d: &[u8]) -> Option<String> {
    if !(d.starts_with(b"SSH-2.0-") || d.starts_with(b"SSH-1.99-")) {
        return None;
    }
    let end = d.iter().position(|&c| c == b'\n').unwrap_or(d.len());
    Some(text(&d[..end]))
}

/// A big-endian integer of `n` bytes at `*at`, advancing it.
fn be(d: &[u8], at: &mut usize, n: usize) -> Option<usize> {
    let s = d.get(*at..at.checked_add(n)?)?;
    *at += n;
    Some(s.iter().fold(0usize, |v, &b| (v << 8) | b as usize))
}

/// A TLS ClientHello: `Some(sni)` (the server name when the capture reaches it), `None` when
/// the bytes are not a ClientHello.
fn tls_client_hello(d: &[u8]) -> Option<Option<String>> {
    // Record: type 22 (handshake), legacy version 3.x, length; handshake type 1 (ClientHello).
    if d.len() < 6 || d[0] != 0x16 || d[1] != 0x03 || d[5] != 0x01 {
        return None;
    }
    let sni = (|| {
        let mut at = 9; // record header 5 + handshake type 1 + length 3
        at += 2 + 32; // legacy_version, random
        let sid = be(d, &mut at, 1)?;
        at += sid;
        let suites = be(d, &mut at, 2)?;
        at += suites;
        let comp = be(d, &mut at, 1)?;
        at += comp;
        let ext_len = be(d, &mut at, 2)?;
        let end = at.saturating_add(ext_len).min(d.len());
        while at + 4 <= end {
            let ty = be(d, &mut at, 2)?;
            let len = be(d, &mut at, 2)?;
            if ty == 0 {
                // server_name: list length, then (type 0 = host_name, length, name).
                let mut p = at;
                be(d, &mut p, 2)?;
                if be(d, &mut p, 1)? != 0 {
                    return None;
                }
                let n = be(d, &mut p, 2)?;
                let name = d.get(p..p + n)?;
                if name.is_empty() || !name.iter().all(|c| c.is_ascii_graphic()) {
                    return None;
                }
                return Some(text(name).to_ascii_lowercase());
            }
            at += len;
        }
        None
    })();
    Some(sni)
}

const HTTP_METHODS: &[&str] = &[
    "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ",
];

/// An HTTP/1.x request: its request line and Host header.
fn http_request(d: &[u8]) -> Option<(String, Option<String>)> {
    if !HTTP_METHODS.iter().any(|m| d.starts_with(m.as_bytes())) {
        return None;
    }
    let s = String::from_utf8_lossy(d);
    let mut lines = s.split("\r\n");
    let line = lines.next()?;
    if !line.contains(" HTTP/1.") && !line.contains(" HTTP/2") {
        return None;
    }
    let host = lines
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("host")
                .then(|| v.trim().to_ascii_lowercase())
        })
        .map(|h| h.chars().take(MAX_TEXT).collect());
    Some((text(line.as_bytes()), host))
}

/// The string value of `"key"` in JSON text that may be cut short (no full parse needed).
fn json_str(s: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let at = s.find(&pat)? + pat.len();
    let rest = s[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let mut out = String::new();
    let mut esc = false;
    for c in rest.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else if c == '"' {
            return Some(out.chars().take(MAX_TEXT).collect());
        } else {
            out.push(c);
        }
    }
    None // cut before the closing quote
}

/// A JSON-RPC first message (Stratum, XMRig, getwork proxies), read from text that may be cut
/// at the capture length.
fn json_rpc(d: &[u8]) -> Option<AppInfo> {
    let s = std::str::from_utf8(d)
        .or_else(|e| std::str::from_utf8(&d[..e.valid_up_to()]))
        .ok()?;
    if !s.trim_start().starts_with('{') {
        return None;
    }
    let method = json_str(s, "method")?;
    let lower = method.to_ascii_lowercase();
    let agent = json_str(s, "agent");
    let mining = STRATUM_METHODS.contains(&lower.as_str())
        || (lower == "login" && agent.is_some() && s.contains("\"login\""));
    Some(AppInfo {
        proto: if mining {
            AppProto::Stratum
        } else {
            AppProto::JsonRpc
        },
        rpc_method: Some(method),
        miner_agent: if mining { agent } else { None },
        ..AppInfo::default()
    })
}

/// The question of a DNS query message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuestion {
    pub id: u16,
    /// Lower-case, dot-separated, no trailing dot; bytes outside `[a-z0-9-_]` as `\DDD`.
    pub qname: String,
    pub qtype: u16,
}

/// Parses a DNS query (QR = 0, at least one question). Compression pointers are not valid in a
/// query's first name and make it unparsable.
pub fn parse_dns_query(m: &[u8]) -> Option<DnsQuestion> {
    if m.len() < 12 || m[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([m[0], m[1]]);
    if u16::from_be_bytes([m[4], m[5]]) == 0 {
        return None;
    }
    let mut at = 12;
    let mut name = String::new();
    let mut wire = 0usize;
    loop {
        let len = *m.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        wire += len + 1;
        if wire > 255 {
            return None;
        }
        let label = m.get(at..at + len)?;
        at += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            let c = b.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
                name.push(c as char);
            } else {
                name.push_str(&format!("\\{c:03}"));
            }
        }
    }
    let qtype = u16::from_be_bytes([*m.get(at)?, *m.get(at + 1)?]);
    Some(DnsQuestion {
        id,
        qname: name,
        qtype,
    })
}

/// Mnemonic of a DNS QTYPE (RFC 1035 §3.2.2, RFC 3596, RFC 2782, RFC 9460), else `TYPEn`
/// (RFC 3597).
pub fn qtype_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        64 => "SVCB".into(),
        65 => "HTTPS".into(),
        10 => "NULL".into(),
        255 => "ANY".into(),
        n => format!("TYPE{n}"),
    }
}

/// The registrable zone of a name, approximated as its last two labels (three when the
/// second-level label is a common public-suffix second level such as `co.uk`).
pub fn zone(qname: &str) -> &str {
    let labels: Vec<&str> = qname.split('.').collect();
    let n = labels.len();
    let keep = if n >= 3
        && matches!(labels[n - 2], "co" | "com" | "net" | "org" | "ac" | "gov")
        && labels[n - 1].len() == 2
    {
        3
    } else {
        2
    };
    if n <= keep {
        return qname;
    }
    let skip: usize = labels[..n - keep].iter().map(|l| l.len() + 1).sum();
    &qname[skip..]
}

/// Shannon entropy of `s` in bits per character, ×100 (integer for rules).
pub fn entropy_x100(s: &str) -> i64 {
    if s.is_empty() {
        return 0;
    }
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    (h * 100.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_banner_is_ssh_whatever_follows() {
        let i = parse_stream(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n\0\0\x01");
        assert_eq!(i.proto, AppProto::Ssh);
        assert_eq!(
            i.ssh_banner.as_deref(),
            Some("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3")
        );
        assert_eq!(
            parse_stream(b"SSH-2.0-paramiko_3.4.0\r\n").proto,
            AppProto::Ssh
        );
        assert_eq!(parse_stream(b"SSH-1.5-old\r\n").proto, AppProto::Unknown);
        assert_eq!(parse_stream(b"xSSH-2.0-x").proto, AppProto::Unknown);
    }

    /// A ClientHello as `openssl s_client -servername pool.example.org` sends it (trimmed to
    /// the fields the parser walks).
    fn client_hello(sni: &str) -> Vec<u8> {
        let mut ext = vec![];
        // A GREASE-like unknown extension first, then server_name.
        ext.extend([0x0a, 0x0a, 0x00, 0x00]);
        let name = sni.as_bytes();
        let list_len = name.len() + 3;
        ext.extend([0x00, 0x00]);
        ext.extend(((list_len + 2) as u16).to_be_bytes());
        ext.extend((list_len as u16).to_be_bytes());
        ext.push(0);
        ext.extend((name.len() as u16).to_be_bytes());
        ext.extend(name);
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(32);
        body.extend([1u8; 32]);
        body.extend([0x00, 0x04, 0x13, 0x01, 0x13, 0x02]);
        body.extend([0x01, 0x00]);
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![0x01];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn tls_sni() {
        let i = parse_stream(&client_hello("Pool.SupportXMR.com"));
        assert_eq!(i.proto, AppProto::Tls);
        assert_eq!(i.sni.as_deref(), Some("pool.supportxmr.com"));
        // Cut before the extension: still TLS, no name.
        let ch = client_hello("x.example");
        let i = parse_stream(&ch[..60]);
        assert_eq!((i.proto, i.sni), (AppProto::Tls, None));
    }

    #[test]
    fn http_request_line_and_host() {
        let i =
            parse_stream(b"GET /v1/models HTTP/1.1\r\nUser-Agent: x\r\nHost: HF.co:443\r\n\r\n");
        assert_eq!(i.proto, AppProto::Http);
        assert_eq!(i.http_request.as_deref(), Some("GET /v1/models HTTP/1.1"));
        assert_eq!(i.http_host.as_deref(), Some("hf.co:443"));
        assert_eq!(parse_stream(b"GET nothing").proto, AppProto::Unknown);
    }

    #[test]
    fn stratum_and_xmrig_login_past_byte_64() {
        let i = parse_stream(br#"{"id":1,"method":"mining.subscribe","params":["cgminer/4"]}"#);
        assert_eq!(i.proto, AppProto::Stratum);
        assert_eq!(i.rpc_method.as_deref(), Some("mining.subscribe"));
        let wallet = "4".repeat(95);
        let login = format!(
            r#"{{"id":1,"jsonrpc":"2.0","method":"login","params":{{"login":"{wallet}","pass":"x","agent":"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0","algo":["rx/0"]}}}}"#
        );
        assert!(login.find("agent").unwrap() > 64);
        let i = parse_stream(login.as_bytes());
        assert_eq!(i.proto, AppProto::Stratum);
        assert!(i.miner_agent.unwrap().starts_with("XMRig/6.21.0"));
        // An ordinary JSON-RPC login (no agent) is not mining.
        let i = parse_stream(br#"{"method":"login","params":{"user":"bob"}}"#);
        assert_eq!((i.proto, i.miner_agent), (AppProto::JsonRpc, None));
        // Cut inside the method string: not classified.
        assert_eq!(
            parse_stream(br#"{"id":1,"method":"mini"#).proto,
            AppProto::Unknown
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for n in 0..2000usize {
            let mut b = vec![0u8; n % 600];
            for v in &mut b {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = x as u8;
            }
            if n % 3 == 0 && !b.is_empty() {
                b[0] = 0x16;
                if b.len() > 5 {
                    b[1] = 3;
                    b[5] = 1;
                }
            }
            let _ = parse_stream(&b);
            let _ = parse_dns_query(&b);
        }
    }

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend(l.as_bytes());
        }
        m.push(0);
        m.extend(qtype.to_be_bytes());
        m.extend([0, 1]);
        m
    }

    #[test]
    fn dns_questions() {
        let q = parse_dns_query(&query("Pool.SupportXMR.com", 1)).unwrap();
        assert_eq!(
            (q.id, q.qname.as_str(), q.qtype),
            (0x1234, "pool.supportxmr.com", 1)
        );
        let mut m = query("a.b", 16);
        m[13] = b' ';
        assert_eq!(parse_dns_query(&m).unwrap().qname, "\\032.b");
        // A response (QR=1) and a compression pointer are not queries.
        let mut r = query("a.b", 1);
        r[2] |= 0x80;
        assert!(parse_dns_query(&r).is_none());
        let mut p = query("a.b", 1);
        p[12] = 0xc0;
        assert!(parse_dns_query(&p).is_none());
        assert_eq!(qtype_name(16), "TXT");
        assert_eq!(qtype_name(999), "TYPE999");
    }

    #[test]
    fn zones_and_entropy() {
        assert_eq!(zone("a.b.pool.supportxmr.com"), "supportxmr.com");
        assert_eq!(zone("x.y.example.co.uk"), "example.co.uk");
        assert_eq!(zone("localhost"), "localhost");
        assert!(entropy_x100("aaaaaaaa") == 0);
        assert!(entropy_x100("q8f3k2m9x7z1v5b4n6c0") > 400);
    }
}
