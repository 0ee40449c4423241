//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`), enough to resolve struct member
//! offsets (through anonymous structs/unions) and tracepoint prototypes at start-up.
//!
//! Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst. aya-obj parses BTF too, but its
//! member accessors are crate-private; see README "Design" for why this is not a dependency.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading BTF from {path}: {source} (the sensor needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("BTF struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
}

/// BTF kinds (include/uapi/linux/btf.h, `BTF_KIND_*`).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// size (struct/union/int/enum) or referenced type id (ptr/typedef/modifiers/func).
    size_or_type: u32,
    members: Vec<Member>,
    /// FUNC_PROTO parameter count.
    params: usize,
}

/// Parsed BTF: types by id (index 0 is `void`) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(&data)
    }

    /// Parses a little-endian BTF blob (`struct btf_header` then the type and string sections).
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != 0xeb9f {
            return Err(BtfError::Malformed(
                "bad magic (expected 0xeb9f, little endian)",
            ));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let tsec = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: vec![],
            params: 0,
        }];
        let mut p = 0usize;
        while p < tsec.len() {
            let name = u32_at(tsec, p)?;
            let info = u32_at(tsec, p + 4)?;
            let size_or_type = u32_at(tsec, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let k = (info >> 24) & 0x1f;
            let kind_flag = info >> 31;
            let mut t = Type {
                name,
                kind: k,
                size_or_type,
                members: vec![],
                params: 0,
            };
            match k {
                kind::INT | kind::VAR | kind::DECL_TAG => p += 4,
                kind::ARRAY => p += 12,
                kind::STRUCT | kind::UNION => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let off = u32_at(tsec, m + 8)?;
                        t.members.push(Member {
                            name: u32_at(tsec, m)?,
                            ty: u32_at(tsec, m + 4)?,
                            // With kind_flag the low 24 bits are the bit offset, the high 8 the
                            // bitfield size.
                            bit_offset: if kind_flag == 1 { off & 0xff_ffff } else { off },
                        });
                    }
                    p += vlen * 12;
                }
                kind::ENUM => p += vlen * 8,
                kind::FUNC_PROTO => {
                    t.params = vlen;
                    p += vlen * 8;
                }
                kind::DATASEC | kind::ENUM64 => p += vlen * 12,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => {}
                _ => return Err(BtfError::Malformed("unknown BTF kind")),
            }
            types.push(t);
        }
        if p != tsec.len() {
            return Err(BtfError::Malformed("type section ends inside a type"));
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            let n = btf.name(btf.types[id].name).to_string();
            if !n.is_empty() {
                btf.by_name.entry(n).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn ids_of_kind(&self, name: &str, k: u32) -> impl Iterator<Item = u32> + '_ {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |&id| self.types[id as usize].kind == k)
    }

    /// Skips typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            let t = &self.types[id as usize];
            match t.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct strukt`. `member` may be a dotted path through named
    /// sub-structs (`ns.inum`); anonymous structs/unions on the way are searched too.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .ids_of_kind(strukt, kind::STRUCT)
            .find(|&id| !self.types[id as usize].members.is_empty())
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        let mut cur = id;
        let mut total = 0u32;
        for part in member.split('.') {
            let (bits, ty) = self
                .find_member(cur, part)
                .ok_or_else(|| BtfError::NoMember {
                    strukt: strukt.to_string(),
                    member: member.to_string(),
                })?;
            total += bits / 8;
            cur = self.strip(ty);
        }
        Ok(total)
    }

    /// Finds `name` in struct/union `id`, descending into anonymous members. Returns the bit
    /// offset and the member's type id.
    fn find_member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let t = &self.types[id as usize];
        if t.kind != kind::STRUCT && t.kind != kind::UNION {
            return None;
        }
        for m in &t.members {
            let mname = self.name(m.name);
            if mname == name {
                return Some((m.bit_offset, m.ty));
            }
            if mname.is_empty() {
                if let Some((b, ty)) = self.find_member(self.strip(m.ty), name) {
                    return Some((m.bit_offset + b, ty));
                }
            }
        }
        None
    }

    /// Number of arguments of raw tracepoint `tp` (`btf_trace_<tp>` is a typedef of a pointer to
    /// a function whose first parameter is the BPF context, not a tracepoint argument).
    pub fn raw_tp_arg_count(&self, tp: &str) -> Option<usize> {
        let td = self
            .ids_of_kind(&format!("btf_trace_{tp}"), kind::TYPEDEF)
            .next()?;
        let ptr = self.strip(td);
        let ptr_t = &self.types[ptr as usize];
        if ptr_t.kind != kind::PTR {
            return None;
        }
        let proto = &self.types[self.strip(ptr_t.size_or_type) as usize];
        (proto.kind == kind::FUNC_PROTO).then(|| proto.params.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct inner { int a; int b; }`,
    /// `struct outer { long x; union { int y; struct inner in; }; }` and
    /// `typedef void (*btf_trace_t)(void *, int, int);`.
    fn sample() -> Vec<u8> {
        let mut strs = b"\0int\0a\0b\0inner\0x\0y\0in\0outer\0btf_trace_t\0long\0".to_vec();
        let off = |s: &str, strs: &Vec<u8>| -> u32 {
            let pat = format!("\0{s}\0");
            (strs
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap()
                + 1) as u32
        };
        let mut t: Vec<u32> = vec![];
        let info = |k: u32, vlen: u32, kf: u32| (kf << 31) | (k << 24) | vlen;
        // 1: int
        t.extend([off("int", &strs), info(kind::INT, 0, 0), 4, 32]);
        // 2: struct inner
        t.extend([off("inner", &strs), info(kind::STRUCT, 2, 0), 8]);
        t.extend([off("a", &strs), 1, 0, off("b", &strs), 1, 32]);
        // 3: anonymous union { int y; struct inner in; }
        t.extend([0, info(kind::UNION, 2, 0), 8]);
        t.extend([off("y", &strs), 1, 0, off("in", &strs), 2, 0]);
        // 4: long
        t.extend([off("long", &strs), info(kind::INT, 0, 0), 8, 64]);
        // 5: struct outer { long x; union ...; } (kind_flag form for offsets)
        t.extend([off("outer", &strs), info(kind::STRUCT, 2, 1), 16]);
        t.extend([off("x", &strs), 4, 0, 0, 3, 64]);
        // 6: func proto (void *, int, int) -> void ; 7: ptr void ; 8: ptr -> 6 ; 9: typedef -> 8
        t.extend([0, info(kind::FUNC_PROTO, 3, 0), 0, 0, 7, 0, 1, 0, 1]);
        t.extend([0, info(kind::PTR, 0, 0), 0]);
        t.extend([0, info(kind::PTR, 0, 0), 6]);
        t.extend([off("btf_trace_t", &strs), info(kind::TYPEDEF, 0, 0), 8]);
        let tbytes: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut b = vec![];
        b.extend(0xeb9fu16.to_le_bytes());
        b.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            tbytes.len() as u32,
            tbytes.len() as u32,
            strs.len() as u32,
        ] {
            b.extend(v.to_le_bytes());
        }
        b.extend(tbytes);
        b.append(&mut strs);
        b
    }

    #[test]
    fn resolves_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 12);
        assert_eq!(btf.member_offset("inner", "b").unwrap(), 4);
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn raw_tp_prototype_arity() {
        let mut b = sample();
        // rename "btf_trace_t" to look like a tracepoint typedef is not needed: query by suffix.
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.raw_tp_arg_count("t"), Some(2));
        assert_eq!(btf.raw_tp_arg_count("missing"), None);
        b[0] = 0;
        assert!(matches!(Btf::parse(&b), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let b = sample();
        for cut in [0, 10, 24, 40, b.len() - 30] {
            assert!(Btf::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn running_kernel_task_struct() {
        let p = Path::new("/sys/kernel/btf/vmlinux");
        if !p.exists() {
            eprintln!("skipped: {} not present", p.display());
            return;
        }
        let btf = Btf::from_file(p).unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        assert_eq!(tgid, pid + 4, "pid and tgid are adjacent pid_t fields");
        assert!(btf.member_offset("mm_struct", "arg_start").is_ok());
        assert!(btf.raw_tp_arg_count("sched_process_fork") == Some(2));
    }
}
