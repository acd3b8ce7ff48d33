//! Walking an event once, down the paths the patterns name, handing each leaf to
//! [`PatternSet::leaf`]: over a parsed tree, or straight over JSON text (fields no pattern
//! names are skipped by the parser without being decoded).
//!
//! `in_array` marks leaves reached through an object inside an array: patterns must be
//! satisfied within one such object, which the set checks when it matters.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{PatternSet, Scratch};
use crate::pattern::Leaf;

pub(super) fn value(set: &PatternSet, event: &Value, s: &mut Scratch) {
    at_value(set, 0, event, false, false, s)
}

/// `element`: `v` is an element of an array (objects in it put their leaves `in_array`).
fn at_value(
    set: &PatternSet,
    node: u32,
    v: &Value,
    in_array: bool,
    element: bool,
    s: &mut Scratch,
) {
    match v {
        Value::Object(fields) => {
            let children = &set.nodes[node as usize].children;
            if children.is_empty() {
                return;
            }
            for (key, field) in fields {
                if let Some(child) = children.get(key) {
                    at_value(set, child, field, in_array || element, false, s);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                at_value(set, node, item, in_array, true, s);
            }
        }
        leaf => {
            if let Some(leaf) = Leaf::of(leaf) {
                set.leaf(node, leaf, in_array, s)
            }
        }
    }
}

pub(super) fn json(
    set: &PatternSet,
    text: &[u8],
    s: &mut Scratch,
) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(text);
    At {
        set,
        s,
        node: 0,
        in_array: false,
        element: false,
    }
    .deserialize(&mut de)?;
    de.end()
}

/// A value of the JSON text at a node of the path trie.
struct At<'a> {
    set: &'a PatternSet,
    s: &'a mut Scratch,
    node: u32,
    in_array: bool,
    element: bool,
}

impl At<'_> {
    fn leaf(self, leaf: Leaf<'_>) {
        self.set.leaf(self.node, leaf, self.in_array, self.s)
    }
}

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for At<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.leaf(Leaf::Bool(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.leaf(Leaf::Num(v as f64));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.leaf(Leaf::Num(v as f64));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.leaf(Leaf::Num(v));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.leaf(Leaf::Str(v));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.leaf(Leaf::Null);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let At {
            set,
            s,
            node,
            in_array,
            element,
        } = self;
        let children = &set.nodes[node as usize].children;
        while let Some(child) = map.next_key_seed(Key(children))? {
            match child {
                Some(node) => map.next_value_seed(At {
                    set,
                    s: &mut *s,
                    node,
                    in_array: in_array || element,
                    element: false,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let At {
            set,
            s,
            node,
            in_array,
            ..
        } = self;
        while seq
            .next_element_seed(At {
                set,
                s: &mut *s,
                node,
                in_array,
                element: true,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// A field name, resolved to its child in the trie (None: no pattern names it).
struct Key<'a>(&'a super::Children);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<u32>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<u32>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<u32>, E> {
        Ok(self.0.get(v))
    }
}
