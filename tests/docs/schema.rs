//! The keys of every configuration file, read from the library's raw serde
//! structs themselves (never from a list kept by hand), so the operator
//! manual (`docs/rules.md`) can be checked against the code: `tests/docs.rs`
//! fails, naming the key, when a field is added, renamed or removed without
//! the manual following. A test-only module: nothing of it ships.
//!
//! How: [`Walker`] is a `serde::Deserializer` that produces no data of its
//! own. A derived `Deserialize` asks it for a struct and passes the
//! struct's field names (`deserialize_struct(name, FIELDS, ..)`); the walker
//! records them and feeds each field back through itself, so nested tables
//! (`[listen]`), arrays of tables (`platform_keys = [{..}]`), options and
//! `toml::Spanned` wrappers are followed, and enums report their variants.
//! A field whose type refuses the walker's stand-in value (a string that is
//! not a duration, say) is skipped and the walk is repeated without it, so
//! one odd type never hides the fields after it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde::de::value::{BorrowedStrDeserializer, Error, StrDeserializer};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use callgate::provider::ProviderKind;

/// One file or table of the configuration and its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// `gateway`, `route`, or `keys.<provider>`.
    pub id: String,
    /// The Rust struct the keys come from, for messages.
    pub source: &'static str,
    /// Dotted key (`listen.addr`, `platform_keys.serial`) → the values it
    /// takes when it is an enum (`forward` → `original`, `normalized`).
    pub keys: BTreeMap<String, Vec<&'static str>>,
}

/// Every section: the gateway file, a `[[route]]` table (without `keys`,
/// which the provider owns) and each provider's `[route.keys]`.
pub fn sections() -> Result<Vec<Section>, String> {
    let mut out = vec![
        section::<callgate::config::GatewayFile>("gateway", "config::GatewayFile")?,
        section::<callgate::rules::RouteFile>("route", "rules::RouteFile")?,
        section::<callgate::rules::MerchantFile>("route.merchant", "rules::MerchantFile")?,
        section::<callgate::rules::IpSetFile>("ipset", "rules::IpSetFile")?,
    ];
    for kind in ProviderKind::ALL {
        use callgate::provider::{alipay, alipay_md5, jdpay, unionpay, wechat_v2, wechat_v3};
        let id = format!("keys.{}", kind.as_str());
        out.push(match kind {
            ProviderKind::Alipay => section::<alipay::KeysFile>(&id, "provider::alipay::KeysFile"),
            ProviderKind::AlipayMd5 => {
                section::<alipay_md5::KeysFile>(&id, "provider::alipay_md5::KeysFile")
            }
            ProviderKind::WechatV2 => {
                section::<wechat_v2::KeysFile>(&id, "provider::wechat_v2::KeysFile")
            }
            ProviderKind::WechatV3 => {
                section::<wechat_v3::KeysFile>(&id, "provider::wechat_v3::KeysFile")
            }
            ProviderKind::Unionpay => {
                section::<unionpay::KeysFile>(&id, "provider::unionpay::KeysFile")
            }
            ProviderKind::Jdpay => section::<jdpay::KeysFile>(&id, "provider::jdpay::KeysFile"),
        }?);
    }
    Ok(out)
}

fn section<T: DeserializeOwned>(id: &str, source: &'static str) -> Result<Section, String> {
    let walked = walk::<T>().map_err(|e| format!("{source}: {e}"))?;
    let mut keys = BTreeMap::new();
    for (path, table) in &walked.tables {
        for field in table.fields {
            let key = join(path, field);
            // A plain sub-table (`[listen]`) is documented by its own keys;
            // an array of tables is a key itself, and so are its keys.
            if walked.tables.get(&key).is_some_and(|t| !t.array) {
                continue;
            }
            let values = walked.enums.get(&key).map(|v| v.to_vec());
            keys.insert(key, values.unwrap_or_default());
        }
    }
    Ok(Section {
        id: id.to_owned(),
        source,
        keys,
    })
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

// === the walk ===

#[derive(Debug, Clone, Copy)]
struct Table {
    fields: &'static [&'static str],
    /// Reached through a sequence: an array of tables.
    array: bool,
}

#[derive(Debug, Default)]
struct Walked {
    tables: BTreeMap<String, Table>,
    enums: BTreeMap<String, &'static [&'static str]>,
    /// Fields not to offer (their type refused the stand-in value).
    skip: BTreeSet<String>,
    /// The first field whose value failed in this pass.
    failed: Option<String>,
}

/// Walks `T` until a pass offers every field it can.
fn walk<T: DeserializeOwned>() -> Result<Walked, String> {
    let state = RefCell::new(Walked::default());
    for _ in 0..256 {
        state.borrow_mut().failed = None;
        let _ = T::deserialize(Walker {
            state: &state,
            path: String::new(),
            array: false,
        });
        let failed = state.borrow_mut().failed.take();
        match failed {
            None => return Ok(state.into_inner()),
            Some(path) => {
                if !state.borrow_mut().skip.insert(path.clone()) {
                    return Err(format!("cannot walk field `{path}`"));
                }
            }
        }
    }
    Err("too many fields refuse the walk".to_owned())
}

/// Serde's name for `toml::Spanned` (serde_spanned): a struct that is not a
/// table of the file, whose value field is the spanned value.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";

/// The deserializer that walks a type; `path` is the dotted key it stands at.
struct Walker<'w> {
    state: &'w RefCell<Walked>,
    path: String,
    array: bool,
}

impl<'w> Walker<'w> {
    fn at(&self, path: String, array: bool) -> Walker<'w> {
        Walker {
            state: self.state,
            path,
            array,
        }
    }
}

/// A stand-in that every plain string type and `Dur` accept.
const STAND_IN: &str = "1s";

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_borrowed_str(STAND_IN)
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bool(true)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(1)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(1)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(1)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(1)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(1)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(1)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(1)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(1)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(1.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(1.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_char('a')
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_borrowed_str(STAND_IN)
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_borrowed_str(STAND_IN)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bytes(STAND_IN.as_bytes())
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bytes(STAND_IN.as_bytes())
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let path = self.path.clone();
        v.visit_seq(Elements {
            walker: self.at(path, true),
            left: 1,
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Error> {
        let path = self.path.clone();
        v.visit_seq(Elements {
            walker: self.at(path, false),
            left: len,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, v)
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        // A table with keys of the operator's choosing: its values sit at `*`.
        let path = join(&self.path, "*");
        v.visit_map(AnyKey {
            walker: Some(self.at(path, true)),
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        if name != SPANNED {
            self.state.borrow_mut().tables.insert(
                self.path.clone(),
                Table {
                    fields,
                    array: self.array,
                },
            );
        }
        v.visit_map(Fields {
            walker: self,
            fields,
            spanned: name == SPANNED,
            next: 0,
            current: None,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.state
            .borrow_mut()
            .enums
            .insert(self.path.clone(), variants);
        let first: StrDeserializer<'_, Error> = variants
            .first()
            .copied()
            .unwrap_or_default()
            .into_deserializer();
        v.visit_enum(first)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_borrowed_str(STAND_IN)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
}

/// A struct's fields, each offered once (minus the skipped ones).
struct Fields<'w> {
    walker: Walker<'w>,
    fields: &'static [&'static str],
    spanned: bool,
    next: usize,
    current: Option<&'static str>,
}

impl Fields<'_> {
    fn child(&self, field: &str) -> String {
        if self.spanned {
            // The spanned value stands where the field itself stands.
            self.walker.path.clone()
        } else {
            join(&self.walker.path, field)
        }
    }
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        while let Some(&field) = self.fields.get(self.next) {
            self.next += 1;
            if !self.spanned && self.walker.state.borrow().skip.contains(&self.child(field)) {
                continue;
            }
            self.current = Some(field);
            return seed
                .deserialize(BorrowedStrDeserializer::<Error>::new(field))
                .map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let field = self.current.take().unwrap_or_default();
        let path = self.child(field);
        let array = self.spanned && field == SPANNED_VALUE && self.walker.array;
        let result = seed.deserialize(self.walker.at(path.clone(), array));
        if result.is_err() && !self.spanned {
            let mut state = self.walker.state.borrow_mut();
            if state.failed.is_none() {
                state.failed = Some(path);
            }
        }
        result
    }
}

/// One element of a sequence or tuple.
struct Elements<'w> {
    walker: Walker<'w>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let w = self.walker.at(self.walker.path.clone(), self.walker.array);
        seed.deserialize(w).map(Some)
    }
}

/// A map with one entry, keyed `*`.
struct AnyKey<'w> {
    walker: Option<Walker<'w>>,
}

impl<'de> de::MapAccess<'de> for AnyKey<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.walker.is_none() {
            return Ok(None);
        }
        seed.deserialize(BorrowedStrDeserializer::<Error>::new(STAND_IN))
            .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        match self.walker.take() {
            Some(w) => seed.deserialize(w),
            None => Err(de::Error::custom("no value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        plain: String,
        spanned: toml::Spanned<String>,
        dur: toml::Spanned<callgate::load::Dur>,
        #[serde(rename = "renamed-key")]
        renamed: Option<u64>,
        table: Inner,
        maybe: Option<Inner>,
        list: Vec<toml::Spanned<Inner>>,
        mode: Mode,
        picky: Picky,
        after_picky: bool,
        named: std::collections::HashMap<String, Inner>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: String,
        b: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        First,
        SecondOne,
    }

    /// A type that refuses whatever it is given.
    struct Picky;
    impl<'de> Deserialize<'de> for Picky {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            Err(de::Error::custom(format!("not {s}")))
        }
    }

    #[test]
    fn walks_every_shape_of_field() {
        let s = section::<Outer>("t", "Outer").unwrap();
        let keys: Vec<&str> = s.keys.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "after_picky",
                "dur",
                "list",
                "list.a",
                "list.b",
                "maybe.a",
                "maybe.b",
                "mode",
                "named",
                "named.*.a",
                "named.*.b",
                "picky",
                "plain",
                "renamed-key",
                "spanned",
                "table.a",
                "table.b",
            ]
        );
        assert_eq!(s.keys["mode"], vec!["first", "second_one"]);
        assert!(s.keys["plain"].is_empty());
    }

    #[test]
    fn every_real_section_walks() {
        let sections = sections().unwrap();
        let ids: Vec<&str> = sections.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "gateway",
                "route",
                "route.merchant",
                "ipset",
                "keys.alipay",
                "keys.alipay_md5",
                "keys.wechat_v2",
                "keys.wechat_v3",
                "keys.unionpay",
                "keys.jdpay"
            ]
        );
        let gateway = &sections[0];
        assert!(gateway.keys.contains_key("listen.addr"));
        assert!(gateway.keys.contains_key("limits.drain_timeout"));
        assert!(!gateway.keys.contains_key("listen"));
        assert_eq!(
            gateway.keys["journal.fsync"],
            vec!["always", "interval", "never"]
        );
        let route = &sections[1];
        assert_eq!(route.keys["forward"], vec!["original", "normalized"]);
        assert_eq!(route.keys["provider"].len(), ProviderKind::ALL.len());
        let v3 = sections.iter().find(|s| s.id == "keys.wechat_v3").unwrap();
        assert!(v3.keys.contains_key("platform_keys.serial"), "{v3:?}");
        let merchant = sections.iter().find(|s| s.id == "route.merchant").unwrap();
        assert!(merchant.keys.contains_key("upstream"), "{merchant:?}");
    }
}
