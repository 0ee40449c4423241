//! Fills [`Offsets`] from the table sensor-common declares with it ([`Offsets::FIELDS`]: each
//! field's BTF member, tracefs field(s) or BTF prototype), and checks that every tracepoint
//! field the programs read lies inside the record copy they read it from
//! ([`sensor_common::record_size`]) and inside the record the tracefs format describes.

use std::collections::HashMap;

use sensor_common::{OffsetSource, Offsets, TpField, TpRead};

use super::{
    btf::Btf,
    tracefs::{Format, TracefsError},
    HookError,
};

/// Tracefs formats by (category, event), loaded once each.
pub struct Formats<L> {
    load: L,
    cache: HashMap<(&'static str, &'static str), Format>,
}

impl<L: FnMut(&str, &str) -> Result<Format, TracefsError>> Formats<L> {
    pub fn new(load: L) -> Self {
        Formats {
            load,
            cache: HashMap::new(),
        }
    }

    fn get(&mut self, category: &'static str, event: &'static str) -> Result<&Format, HookError> {
        if !self.cache.contains_key(&(category, event)) {
            let f = (self.load)(category, event)?;
            self.cache.insert((category, event), f);
        }
        Ok(&self.cache[&(category, event)])
    }
}

/// The running kernel's formats (tracefs must be mounted).
pub fn tracefs_formats() -> Formats<impl FnMut(&str, &str) -> Result<Format, TracefsError>> {
    Formats::new(Format::load)
}

/// Resolves every field of [`Offsets`] from its [`OffsetSource`].
pub fn resolve<L>(btf: &Btf, formats: &mut Formats<L>) -> Result<Offsets, HookError>
where
    L: FnMut(&str, &str) -> Result<Format, TracefsError>,
{
    let mut o = Offsets::UNSET;
    for f in Offsets::FIELDS {
        let v = match f.source {
            OffsetSource::Btf(strukt, member) => btf.member_offset(strukt, member)?,
            OffsetSource::Tracefs(tp, read) => tracefs_offset(f.name, &[tp], read, formats)?,
            // Several tracepoints, one offset in the programs: they must agree.
            OffsetSource::Shared(tps, read) => tracefs_offset(f.name, tps, read, formats)?,
            OffsetSource::RawTpArgs(tp, args) => u32::from(btf.raw_tp_arg_count(tp) == Some(args)),
        };
        *(f.slot)(&mut o) = v;
    }
    // Read as blocks (eBPF task.rs `sk_ends`, `socket_type_sk`): fields that must be adjacent.
    for (what, ok) in [
        (
            "sock_common: skc_rcv_saddr 4 bytes after skc_daddr",
            o.skc_rcv_saddr == o.skc_daddr.wrapping_add(4),
        ),
        (
            "sock_common: skc_dport 12 bytes after skc_daddr",
            o.skc_dport == o.skc_daddr.wrapping_add(12),
        ),
        (
            "sock_common: skc_num 2 bytes after skc_dport",
            o.skc_num == o.skc_dport.wrapping_add(2),
        ),
        (
            "sock_common: skc_v6_rcv_saddr 16 bytes after skc_v6_daddr",
            o.skc_v6_rcv_saddr == o.skc_v6_daddr.wrapping_add(16),
        ),
        (
            "socket: type and sk inside the first 32 bytes",
            o.socket_type <= 30 && o.socket_sk <= 24,
        ),
    ] {
        if !ok {
            return Err(HookError::Layout(format!(
                "{what} (the programs read these together)"
            )));
        }
    }
    // These are read with direct context loads at compile-time offsets.
    for (name, got, want) in [(
        "sys_exit_* ret",
        o.tp_exit_ret,
        sensor_common::TP_SYSCALL_EXIT_RET,
    )] {
        if got != want {
            return Err(HookError::Layout(format!(
                "syscalls/{name} is at offset {got}, the programs read it at {want} (struct syscall_trace_enter/exit changed)"
            )));
        }
    }
    Ok(o)
}

/// The offset of a field that the programs read from the tracepoints `at` (one or more): the
/// same in all of them, and every read of it fits (see [`check_read`]).
pub fn tracefs_offset<L>(
    what: &str,
    at: &[TpField],
    read: TpRead,
    formats: &mut Formats<L>,
) -> Result<u32, HookError>
where
    L: FnMut(&str, &str) -> Result<Format, TracefsError>,
{
    let mut first: Option<(u32, String)> = None;
    for &(category, event, field) in at {
        let f = formats.get(category, event)?;
        let off = f.offset(field)?;
        check_read(what, f, field, read)?;
        match &first {
            None => first = Some((off, f.path().to_string())),
            Some((o0, p0)) if *o0 != off => {
                return Err(HookError::Layout(format!(
                    "{what}: at {off} in {}, at {o0} in {p0}",
                    f.path()
                )))
            }
            Some(_) => {}
        }
    }
    first
        .map(|(o, _)| o)
        .ok_or_else(|| HookError::Layout(format!("{what}: no tracepoint field listed")))
}

/// Checks that the programs' read of `read.size` bytes at `field` lies inside the field and
/// the record as `format` describes them, and inside each record copy (`read.copies` bytes)
/// it is picked out of. A read that does not fit would silently give zeros (outside a copy)
/// or a neighbour's bytes.
pub fn check_read(what: &str, format: &Format, field: &str, read: TpRead) -> Result<(), HookError> {
    let (off, size) = format.field(field)?;
    let end = u64::from(off) + u64::from(read.size);
    let bad = |why: String| {
        Err(HookError::RecordFit(format!(
            "{}: field `{field}` ({what}) at offset {off}, {size} bytes: {why}",
            format.path()
        )))
    };
    if read.size > size {
        return bad(format!("the programs read {} bytes of it", read.size));
    }
    let record = format.record_size();
    if end > u64::from(record) {
        return bad(format!(
            "the programs read up to byte {end}, past the {record}-byte record"
        ));
    }
    for &copy in read.copies {
        if end > copy as u64 {
            return bad(format!(
                "the programs read it from a copy of the first {copy} bytes of the record \
                 (sensor-common record_size), which ends before byte {end}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const ENTER_CONNECT: &str = "name: sys_enter_connect\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;\n\
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;\n";

    /// A sys_enter_bind whose arguments sit 32 bytes further on (as if the record grew a
    /// header): addrlen ends at byte 72, past the 48-byte copy.
    const ENTER_BIND_SHIFTED: &str = "name: sys_enter_bind\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int fd;\toffset:48;\tsize:8;\tsigned:0;\n\
\tfield:struct sockaddr * umyaddr;\toffset:56;\tsize:8;\tsigned:0;\n\
\tfield:int addrlen;\toffset:64;\tsize:8;\tsigned:0;\n";

    fn synthetic(
        files: &'static [(&'static str, &'static str)],
    ) -> Formats<impl FnMut(&str, &str) -> Result<Format, TracefsError>> {
        Formats::new(move |_cat: &str, ev: &str| {
            files
                .iter()
                .find(|(n, _)| *n == ev)
                .map(|(n, text)| Format::parse(n, text))
                .ok_or_else(|| TracefsError::Read {
                    path: ev.to_string(),
                    source: std::io::ErrorKind::NotFound.into(),
                })
        })
    }

    /// An 8-byte argument read out of a 48-byte copy of the record.
    const SOCKADDR_READ: TpRead = TpRead {
        size: 8,
        copies: &[48],
    };

    #[test]
    fn a_field_past_the_record_copy_is_an_error() {
        let f = Format::parse("sys_enter_bind", ENTER_BIND_SHIFTED);
        let e = check_read("tp_sockaddr_fd", &f, "fd", SOCKADDR_READ).unwrap_err();
        assert!(matches!(e, HookError::RecordFit(_)), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("sys_enter_bind") && msg.contains("`fd`"),
            "{msg}"
        );
        assert!(msg.contains("first 48 bytes"), "{msg}");
        // The same read from the context (no copy) fits.
        let direct = TpRead {
            size: 8,
            copies: &[],
        };
        check_read("x", &f, "fd", direct).unwrap();
        // In the real layout it fits the copy too.
        let ok = Format::parse("sys_enter_connect", ENTER_CONNECT);
        check_read("tp_sockaddr_fd", &ok, "addrlen", SOCKADDR_READ).unwrap();
    }

    #[test]
    fn a_read_wider_than_the_field_or_record_is_an_error() {
        let f = Format::parse("sys_enter_connect", ENTER_CONNECT);
        let wide = TpRead {
            size: 16,
            copies: &[],
        };
        assert!(matches!(
            check_read("x", &f, "addrlen", wide),
            Err(HookError::RecordFit(_))
        ));
        // A field whose format line has no size cannot be read at all.
        let nosize = Format::parse("t", "field:int fd;\toffset:16;\n");
        assert!(matches!(
            check_read("x", &nosize, "fd", SOCKADDR_READ),
            Err(HookError::RecordFit(_))
        ));
        assert!(matches!(
            check_read("x", &f, "nope", SOCKADDR_READ),
            Err(HookError::Tracefs(TracefsError::NoField { .. }))
        ));
    }

    #[test]
    fn shared_offsets_must_agree_and_fit() {
        let mut fm = synthetic(&[
            ("sys_enter_connect", ENTER_CONNECT),
            ("sys_enter_bind", ENTER_BIND_SHIFTED),
        ]);
        let connect_only = [("syscalls", "sys_enter_connect", "fd")];
        assert_eq!(
            tracefs_offset("fd", &connect_only, SOCKADDR_READ, &mut fm).unwrap(),
            16
        );
        // bind's fd is at 48: out of the copy (checked first), and at another offset.
        let both = [
            ("syscalls", "sys_enter_connect", "fd"),
            ("syscalls", "sys_enter_bind", "fd"),
        ];
        assert!(matches!(
            tracefs_offset("fd", &both, SOCKADDR_READ, &mut fm),
            Err(HookError::RecordFit(_))
        ));
        let direct = TpRead {
            size: 8,
            copies: &[],
        };
        let e = tracefs_offset("fd", &both, direct, &mut fm).unwrap_err();
        assert!(matches!(e, HookError::Layout(_)), "{e}");
        assert!(
            e.to_string()
                .contains("at 48 in sys_enter_bind, at 16 in sys_enter_connect"),
            "{e}"
        );
        assert!(matches!(
            tracefs_offset(
                "x",
                &[("syscalls", "sys_enter_nope", "fd")],
                direct,
                &mut fm
            ),
            Err(HookError::Tracefs(TracefsError::Read { .. }))
        ));
    }

    #[test]
    fn every_field_has_a_source_and_unset_follows_it() {
        let mut names = std::collections::HashSet::new();
        let mut o = Offsets::UNSET;
        for (i, f) in Offsets::FIELDS.iter().enumerate() {
            assert!(names.insert(f.name), "{} twice", f.name);
            assert_eq!(*(f.slot)(&mut o), f.source.unset(), "{}", f.name);
            // Each slot is a distinct u32 of the struct, in declaration order.
            let base = &o as *const Offsets as usize;
            let at = (f.slot)(&mut o) as *mut u32 as usize;
            assert_eq!(at - base, i * 4, "{}", f.name);
        }
    }

    /// The table against the running kernel: every offset resolves, every tracefs read fits,
    /// and spot checks agree with BTF and tracefs read directly.
    #[test]
    fn running_kernel_resolves_every_offset() {
        let p = Path::new("/sys/kernel/btf/vmlinux");
        if !p.exists() {
            eprintln!("skipped: {} not present", p.display());
            return;
        }
        if !Path::new("/sys/kernel/tracing/events/syscalls").is_dir()
            && !Path::new("/sys/kernel/debug/tracing/events/syscalls").is_dir()
        {
            eprintln!("skipped: tracefs not mounted or not readable");
            return;
        }
        let btf = Btf::from_file(p).unwrap();
        let o = resolve(&btf, &mut tracefs_formats()).unwrap();
        let mut o2 = o;
        for f in Offsets::FIELDS {
            let v = *(f.slot)(&mut o2);
            match f.source {
                OffsetSource::Btf(..) | OffsetSource::Tracefs(..) | OffsetSource::Shared(..) => {
                    assert_ne!(v, u32::MAX, "{} unresolved", f.name)
                }
                OffsetSource::RawTpArgs(..) => assert!(v <= 1, "{}", f.name),
            }
        }
        assert_eq!(o.task_tgid, o.task_pid + 4);
        assert_eq!(
            o.mnt_ns_inum,
            btf.member_offset("mnt_namespace", "ns.inum").unwrap()
        );
        assert_eq!(
            o.exit_has_group_dead,
            u32::from(btf.raw_tp_arg_count("sched_process_exit") == Some(2))
        );
        // x86-64 pt_regs (arch/x86/include/asm/ptrace.h): ... dx, si, di, orig_ax.
        assert_eq!(o.regs_arg1, o.regs_arg2 + 8);
        assert_eq!(o.regs_arg0, o.regs_arg1 + 8);
        assert_eq!(o.regs_nr, o.regs_arg0 + 8);
        let dup3 = Format::load("syscalls", "sys_exit_dup3").unwrap();
        assert_eq!(o.tp_exit_ret, dup3.offset("ret").unwrap());
        // skc_dport and skc_num share skc_portpair; skc_daddr opens the address pair.
        assert_eq!(
            o.skc_dport,
            btf.member_offset("sock_common", "skc_portpair").unwrap()
        );
        assert_eq!(
            o.skc_daddr,
            btf.member_offset("sock_common", "skc_addrpair").unwrap()
        );
        let iss = Format::load("sock", "inet_sock_set_state").unwrap();
        assert_eq!(o.tp_iss_daddr_v6, iss.offset("daddr_v6").unwrap());
        assert_eq!(
            o.tp_exit_ret,
            Format::load("syscalls", "sys_exit_openat")
                .unwrap()
                .offset("ret")
                .unwrap()
        );
        // The same through the agent's entry point.
        assert_eq!(super::super::resolve_offsets(&btf).unwrap(), o);
    }
}
