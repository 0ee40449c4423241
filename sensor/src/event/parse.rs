//! One-pass JSON reading of an event line (`sensor replay`'s hot path).
//!
//! The header fields are read into slots; at `kind` the body of that kind is deserialized
//! from the rest of the same map, with any header field that follows it taken out on the way.
//! The derived deserializer of [`Event`] instead copies every key and value into an
//! intermediate tree first (`#[serde(flatten)]` with an internally tagged enum), and a
//! two-pass reading (header, then body from the whole line again) scans each line twice.
//!
//! Only the sensor's own field order is read this way (the header, then `kind`, then the
//! body): a body field before `kind` is an error here, and [`Event::from_json`] then falls
//! back to the derived deserializer, which accepts any order.

use std::borrow::Cow;

use serde::de::{
    value::{BorrowedStrDeserializer, MapAccessDeserializer, StringDeserializer},
    DeserializeSeed, Deserializer, Error, MapAccess, Visitor,
};
use serde::Deserialize;

use super::{Body, Container, Event, Kind};

/// Parses one line in the sensor's own field order.
pub(super) fn event(line: &str) -> Result<Event, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(line);
    let ev = (&mut de).deserialize_map(EventVisitor)?;
    de.end()?;
    Ok(ev)
}

/// A header field.
#[derive(Clone, Copy)]
enum HeadKey {
    Ts,
    TsNs,
    Pid,
    Tid,
    Ppid,
    Uid,
    Gid,
    Comm,
    CgroupId,
    Mntns,
    Exe,
    Container,
}

impl HeadKey {
    fn of(k: &str) -> Option<HeadKey> {
        Some(match k {
            "ts" => HeadKey::Ts,
            "ts_ns" => HeadKey::TsNs,
            "pid" => HeadKey::Pid,
            "tid" => HeadKey::Tid,
            "ppid" => HeadKey::Ppid,
            "uid" => HeadKey::Uid,
            "gid" => HeadKey::Gid,
            "comm" => HeadKey::Comm,
            "cgroup_id" => HeadKey::CgroupId,
            "mntns" => HeadKey::Mntns,
            "exe" => HeadKey::Exe,
            "container" => HeadKey::Container,
            _ => return None,
        })
    }
}

/// The header as read so far.
#[derive(Default)]
struct Head {
    ts: Option<String>,
    ts_ns: Option<u64>,
    pid: Option<u32>,
    tid: Option<u32>,
    ppid: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    comm: Option<String>,
    cgroup_id: Option<u64>,
    mntns: Option<u32>,
    exe: Option<Option<String>>,
    container: Option<Option<Container>>,
}

fn put<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(A::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

impl Head {
    fn read<'de, A: MapAccess<'de>>(&mut self, k: HeadKey, map: &mut A) -> Result<(), A::Error> {
        match k {
            HeadKey::Ts => put(&mut self.ts, "ts", map),
            HeadKey::TsNs => put(&mut self.ts_ns, "ts_ns", map),
            HeadKey::Pid => put(&mut self.pid, "pid", map),
            HeadKey::Tid => put(&mut self.tid, "tid", map),
            HeadKey::Ppid => put(&mut self.ppid, "ppid", map),
            HeadKey::Uid => put(&mut self.uid, "uid", map),
            HeadKey::Gid => put(&mut self.gid, "gid", map),
            HeadKey::Comm => put(&mut self.comm, "comm", map),
            HeadKey::CgroupId => put(&mut self.cgroup_id, "cgroup_id", map),
            HeadKey::Mntns => put(&mut self.mntns, "mntns", map),
            HeadKey::Exe => put(&mut self.exe, "exe", map),
            HeadKey::Container => put(&mut self.container, "container", map),
        }
    }

    fn into_event<E: Error>(self, body: Body) -> Result<Event, E> {
        fn need<T, E: Error>(v: Option<T>, name: &'static str) -> Result<T, E> {
            v.ok_or_else(|| E::missing_field(name))
        }
        Ok(Event {
            ts: need(self.ts, "ts")?,
            ts_ns: need(self.ts_ns, "ts_ns")?,
            pid: need(self.pid, "pid")?,
            tid: need(self.tid, "tid")?,
            ppid: need(self.ppid, "ppid")?,
            uid: need(self.uid, "uid")?,
            gid: need(self.gid, "gid")?,
            comm: need(self.comm, "comm")?,
            cgroup_id: need(self.cgroup_id, "cgroup_id")?,
            mntns: need(self.mntns, "mntns")?,
            exe: self.exe.flatten(),
            container: self.container.flatten(),
            body,
        })
    }
}

/// A map key, borrowed from the line when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sensor event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let mut head = Head::default();
        while let Some(key) = map.next_key_seed(Key)? {
            if key == "kind" {
                let name = map.next_value_seed(Key)?;
                let kind = Kind::from_name(&name)
                    .ok_or_else(|| A::Error::custom(format!("unknown kind {name:?}")))?;
                let body = body(
                    kind,
                    MapAccessDeserializer::new(Rest {
                        map: &mut map,
                        head: &mut head,
                    }),
                )?;
                return head.into_event(body);
            }
            match HeadKey::of(&key) {
                Some(h) => head.read(h, &mut map)?,
                None => {
                    return Err(A::Error::custom(format!(
                        "body field `{key}` before `kind`"
                    )))
                }
            }
        }
        Err(A::Error::missing_field("kind"))
    }
}

/// The body of `kind` from the rest of the map.
fn body<'de, D: Deserializer<'de>>(kind: Kind, d: D) -> Result<Body, D::Error> {
    Ok(match kind {
        Kind::Exec => Body::Exec(Deserialize::deserialize(d)?),
        Kind::Fork => Body::Fork(Deserialize::deserialize(d)?),
        Kind::Exit => Body::Exit(Deserialize::deserialize(d)?),
        Kind::Connect => Body::Connect(Deserialize::deserialize(d)?),
        Kind::Bind => Body::Bind(Deserialize::deserialize(d)?),
        Kind::Listen => Body::Listen(Deserialize::deserialize(d)?),
        Kind::TcpClose => Body::TcpClose(Deserialize::deserialize(d)?),
        Kind::NetPayload => Body::NetPayload(Deserialize::deserialize(d)?),
        Kind::SockDup => Body::SockDup(Deserialize::deserialize(d)?),
        Kind::GpuIoctl => Body::GpuIoctl(Deserialize::deserialize(d)?),
        Kind::GpuOpen => Body::GpuOpen(Deserialize::deserialize(d)?),
        Kind::TunOpen => Body::TunOpen(Deserialize::deserialize(d)?),
        Kind::GpuSessionStart => Body::GpuSessionStart(Deserialize::deserialize(d)?),
        Kind::GpuSessionEnd => Body::GpuSessionEnd(Deserialize::deserialize(d)?),
        Kind::GpuQuery => Body::GpuQuery(Deserialize::deserialize(d)?),
        Kind::GpuUsage => Body::GpuUsage(Deserialize::deserialize(d)?),
        Kind::DnsQuery => Body::DnsQuery(Deserialize::deserialize(d)?),
    })
}

/// The map after `kind`, as the body sees it: header fields are read into the header and
/// not shown to the body.
struct Rest<'a, A> {
    map: &'a mut A,
    head: &'a mut Head,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Rest<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key_seed(Key)? {
            if key == "kind" {
                return Err(A::Error::duplicate_field("kind"));
            }
            match HeadKey::of(&key) {
                Some(h) => self.head.read(h, self.map)?,
                None => {
                    return match key {
                        Cow::Borrowed(k) => seed.deserialize(BorrowedStrDeserializer::new(k)),
                        Cow::Owned(k) => seed.deserialize(StringDeserializer::new(k)),
                    }
                    .map(Some)
                }
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}
