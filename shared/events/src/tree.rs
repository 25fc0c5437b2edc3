//! A JSON tree that borrows its strings from the event's bytes, for the schema pass and the typed decode.
//!
//! Every function checks each event against its JSON Schema and then decodes it into its payload type. Built as a
//! `serde_json::Value`, the tree cost one allocation per string and per map node, the largest single cost of a
//! no-op function's attempt (tests/bench/ANALYSIS.md, section 7). This tree allocates one vector per object and
//! per array; a string without escapes points into the bytes.
//!
//! It must give the same verdicts as the `serde_json::Value` it replaces, so it is built by serde_json's own
//! parser (same syntax errors, numbers, recursion limit) and keeps `Value`'s object semantics: the last of
//! repeated keys wins. A small object keeps its members in the text's order, which no verdict depends on: sorting
//! them cost about 6% of a no-op attempt's instructions (tests/bench/ANALYSIS.md, section 31). The order of
//! *errors* does depend on it (`Value`'s `BTreeMap` iterates by key), so a refused event is checked again after
//! [`Tree::sort_members`], and its message is the one `Value` gives. `tests/fuzz.rs` holds the two paths to the
//! same verdict and message on random and mutated events.

use std::{borrow::Cow, fmt};

use jsonschema::{
    JsonType,
    json::{Array, Json, Node, NodeIdentity, Object},
};
use serde::{
    Deserialize, Deserializer,
    de::{
        self, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, Unexpected,
        VariantAccess, Visitor,
    },
    forward_to_deserialize_any,
};
use serde_json::{Map, Number, Value};

/// One JSON value. Covariant in `'a`, so a `&'b Tree<'a>` is a `&'b Tree<'b>` where the schema pass wants one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tree<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Tree<'a>>),
    /// Each key once. Up to [`SCANNED_MEMBERS`] members in any order (the text's, or by key after
    /// [`Tree::sort_members`]); more are sorted by key.
    Object(Vec<(Cow<'a, str>, Tree<'a>)>),
}

impl<'a> Tree<'a> {
    fn to_json_value(&self) -> Value {
        match self {
            Tree::Null => Value::Null,
            Tree::Bool(boolean) => Value::Bool(*boolean),
            Tree::Number(number) => Value::Number(number.clone()),
            Tree::String(string) => Value::String(string.clone().into_owned()),
            Tree::Array(items) => Value::Array(items.iter().map(Tree::to_json_value).collect()),
            Tree::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(key, value)| (key.clone().into_owned(), value.to_json_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }

    /// The member `key` of an object.
    pub(crate) fn get(&self, key: &str) -> Option<&Tree<'a>> {
        match self {
            Tree::Object(members) => member(members, key),
            _ => None,
        }
    }

    /// Orders every object's members by key, as `Value`'s map iterates them: for the second check of a refused
    /// event, whose errors must come in `Value`'s order.
    pub(crate) fn sort_members(&mut self) {
        match self {
            Tree::Array(items) => items.iter_mut().for_each(Tree::sort_members),
            Tree::Object(members) => {
                members.sort_unstable_by(|(a, _), (b, _)| key_order(a, b));
                members
                    .iter_mut()
                    .for_each(|(_, value)| value.sort_members());
            }
            _ => {}
        }
    }

    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Tree::Null => Unexpected::Unit,
            Tree::Bool(boolean) => Unexpected::Bool(*boolean),
            Tree::Number(number) => {
                if let Some(n) = number.as_u64() {
                    Unexpected::Unsigned(n)
                } else if let Some(n) = number.as_i64() {
                    Unexpected::Signed(n)
                } else {
                    Unexpected::Float(number.as_f64().unwrap_or(f64::NAN))
                }
            }
            Tree::String(string) => Unexpected::Str(string),
            Tree::Array(_) => Unexpected::Seq,
            Tree::Object(_) => Unexpected::Map,
        }
    }
}

/// Objects of up to this many members are kept in the text's order and searched from the start; larger ones are
/// sorted and searched by halves, so an object of many thousand members (a 256 KiB event can hold 40,000) costs
/// no quadratic scan. A CloudEvent's attributes and a typical payload stay under it.
const SCANNED_MEMBERS: usize = 16;

/// The value of `key` among an object's members.
fn member<'b, 'a>(members: &'b [(Cow<'a, str>, Tree<'a>)], key: &str) -> Option<&'b Tree<'a>> {
    if members.len() <= SCANNED_MEMBERS {
        return members
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value);
    }
    members
        .binary_search_by(|(name, _)| key_order(name, key))
        .ok()
        .map(|at| &members[at].1)
}

/// `str`'s order (bytes, then length), compared in place: member names are short and mostly differ in their first
/// byte, where a `memcmp` call per comparison cost more than the comparison (the sort and the lookups of every
/// event).
fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes().cmp(b.bytes())
}

// ---- Parsing: serde_json's parser, this tree's visitor ----

impl<'de> Deserialize<'de> for Tree<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Tree<'de>, E> {
        Ok(Tree::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Tree<'de>, E> {
        Ok(Tree::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Tree<'de>, E> {
        Ok(Tree::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Tree<'de>, E> {
        // As `Value` does: a JSON text has no NaN or infinity, so this is only for other deserializers.
        Ok(Number::from_f64(value).map_or(Tree::Null, Tree::Number))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Owned(value)))
    }

    fn visit_none<E>(self) -> Result<Tree<'de>, E> {
        Ok(Tree::Null)
    }

    fn visit_unit<E>(self) -> Result<Tree<'de>, E> {
        Ok(Tree::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tree<'de>, D::Error> {
        Tree::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Tree::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree<'de>, A::Error> {
        // serde_json gives no size hint; room for a CloudEvent's attributes and a few extensions spares the
        // vector's regrowth and copies for most objects.
        let mut members: Vec<(Cow<'de, str>, Tree<'de>)> =
            Vec::with_capacity(map.size_hint().unwrap_or(16).min(64));
        // A bit per name read so far (of a hash of its length and three of its bytes): a name whose bit is not set
        // was not read before, so its search among the members is skipped: about 300 of a no-op attempt's
        // 12,800 parsing instructions (tests/bench/ANALYSIS.md, section 40).
        let mut seen = 0_u64;
        while let Some(Key(key)) = map.next_key()? {
            let value = map.next_value()?;
            let bit = name_bit(&key);
            let maybe_seen = seen & bit != 0;
            seen |= bit;
            // As `Value`'s map, a repeated key keeps its last value: among the first members, in place.
            if maybe_seen
                && members.len() <= SCANNED_MEMBERS
                && let Some(kept) = members.iter_mut().find(|(name, _)| *name == key)
            {
                kept.1 = value;
                continue;
            }
            members.push((key, value));
        }
        if members.len() > SCANNED_MEMBERS {
            // Sorted by key, and of a repeated key the last value. The sort is stable, so of equal keys the last
            // in the text is the last in the run; `dedup_by` keeps the run's first entry, so it takes the value of
            // each later one.
            members.sort_by(|(a, _), (b, _)| key_order(a, b));
            members.dedup_by(|later, kept| {
                if later.0 == kept.0 {
                    std::mem::swap(&mut later.1, &mut kept.1);
                    true
                } else {
                    false
                }
            });
        }
        Ok(Tree::Object(members))
    }
}

/// One of 64 bits for `name`: equal names get the same bit; unequal ones mostly do not (a CloudEvent's attribute
/// names all differ in their length or in their first, second or last byte).
fn name_bit(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let byte = |at: Option<&u8>| u32::from(at.copied().unwrap_or(0));
    // Truncating a name's length is harmless: it only mixes into the hash.
    #[allow(clippy::cast_possible_truncation)]
    let length = bytes.len() as u32;
    let mixed = length.wrapping_mul(31)
        ^ byte(bytes.first()).wrapping_mul(7)
        ^ byte(bytes.get(1)).wrapping_mul(13)
        ^ byte(bytes.last()).wrapping_mul(3);
    1 << (mixed % 64)
}

/// A member name, borrowed from the bytes where it has no escapes (serde's own `Cow<str>` always copies).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(value)))
            }
            fn visit_str<E>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value.to_owned())))
            }
            fn visit_string<E>(self, value: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

// ---- The schema pass: jsonschema's representation traits ----

/// The representation marker `jsonschema::options_for` takes.
pub(crate) struct Borrowed;

impl Json for Borrowed {
    type Node<'a> = &'a Tree<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();

    // A lookup scans a small object's members and searches a large one's by halves.
    const KEYS_PER_LOOKUP: usize = 2;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>(
        (): &mut (),
        string: &str,
        f: impl FnOnce(<Borrowed as Json>::Node<'_>) -> T,
    ) -> T {
        f(&Tree::String(Cow::Borrowed(string)))
    }
}

/// The members of an object node.
#[derive(Clone, Copy)]
pub(crate) struct Members<'a>(&'a [(Cow<'a, str>, Tree<'a>)]);

/// The items of an array node.
#[derive(Clone, Copy)]
pub(crate) struct Items<'a>(&'a [Tree<'a>]);

impl<'a> Node<'a, Borrowed> for &'a Tree<'a> {
    type Object = Members<'a>;
    type Array = Items<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<Members<'a>> {
        match self {
            Tree::Object(members) => Some(Members(members)),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<Items<'a>> {
        match self {
            Tree::Array(items) => Some(Items(items)),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self {
            Tree::String(string) => Some(Cow::Borrowed(string.as_ref())),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self {
            Tree::Number(number) => Some(number),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self {
            Tree::Bool(boolean) => Some(*boolean),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Tree::Null)
    }

    fn json_type(&self) -> JsonType {
        match self {
            Tree::Null => JsonType::Null,
            Tree::Bool(_) => JsonType::Boolean,
            Tree::Number(_) => JsonType::Number,
            Tree::String(_) => JsonType::String,
            Tree::Array(_) => JsonType::Array,
            Tree::Object(_) => JsonType::Object,
        }
    }

    /// Every event's `specversion` is checked against a `const`: scalars compare here, without building a `Value`.
    fn equals_value(&self, expected: &Value) -> bool {
        match (*self, expected) {
            (Tree::Null, Value::Null) => true,
            (Tree::Bool(a), Value::Bool(b)) => a == b,
            (Tree::String(a), Value::String(b)) => a.as_ref() == b.as_str(),
            (Tree::Number(a), Value::Number(b)) => jsonschema::json::cmp::equal_numbers(&a, b),
            (Tree::Array(_) | Tree::Object(_), Value::Array(_) | Value::Object(_)) => {
                jsonschema::json::cmp::equal(&Tree::to_json_value(self), expected)
            }
            _ => false,
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(Tree::to_json_value(self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(
            std::ptr::from_ref::<Tree<'a>>(*self) as usize
        ))
    }
}

impl<'a> Object<'a, Borrowed> for Members<'a> {
    type Node = &'a Tree<'a>;
    type MemberName = &'a str;
    type MembersIter = std::iter::Map<
        std::slice::Iter<'a, (Cow<'a, str>, Tree<'a>)>,
        fn(&'a (Cow<'a, str>, Tree<'a>)) -> (&'a str, &'a Tree<'a>),
    >;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, key: &Box<str>) -> Option<&'a Tree<'a>> {
        member(self.0, key)
    }

    fn members(&self) -> Self::MembersIter {
        self.0.iter().map(|(name, value)| (name.as_ref(), value))
    }
}

impl<'a> Array<'a, Borrowed> for Items<'a> {
    type Node = &'a Tree<'a>;
    type ElementsIter = std::slice::Iter<'a, Tree<'a>>;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn elements(&self) -> Self::ElementsIter {
        self.0.iter()
    }
}

// ---- The typed decode: the tree as a serde deserializer ----
//
// It gives what `serde_json::Value`'s deserializer gives (the same visitor calls, the same `invalid type` errors,
// in serde_json's error type), so `describe_json_error` reads its errors as before.

impl<'de> Deserializer<'de> for &'de Tree<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Tree::Null => visitor.visit_unit(),
            Tree::Bool(boolean) => visitor.visit_bool(*boolean),
            Tree::Number(number) => number.deserialize_any(visitor),
            Tree::String(string) => visitor.visit_borrowed_str(string),
            Tree::Array(items) => {
                let mut seq = ItemAccess(items.iter());
                let value = visitor.visit_seq(&mut seq)?;
                if seq.0.len() == 0 {
                    Ok(value)
                } else {
                    Err(de::Error::invalid_length(
                        items.len(),
                        &"fewer elements in array",
                    ))
                }
            }
            Tree::Object(members) => {
                let mut map = MemberAccess {
                    iter: members.iter(),
                    value: None,
                };
                let value = visitor.visit_map(&mut map)?;
                if map.iter.len() == 0 {
                    Ok(value)
                } else {
                    Err(de::Error::invalid_length(
                        members.len(),
                        &"fewer elements in map",
                    ))
                }
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Tree::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            Tree::String(variant) => visitor.visit_enum(Variant {
                name: variant,
                value: None,
            }),
            Tree::Object(members) => match members.as_slice() {
                [(variant, value)] => visitor.visit_enum(Variant {
                    name: variant,
                    value: Some(value),
                }),
                _ => Err(de::Error::invalid_value(
                    Unexpected::Map,
                    &"map with a single key",
                )),
            },
            other => Err(de::Error::invalid_type(
                other.unexpected(),
                &"string or map",
            )),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Tree::Null => visitor.visit_unit(),
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf seq tuple
        tuple_struct map struct identifier
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for &'de Tree<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

struct ItemAccess<'de>(std::slice::Iter<'de, Tree<'de>>);

impl<'de> SeqAccess<'de> for ItemAccess<'de> {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, serde_json::Error> {
        self.0.next().map(|item| seed.deserialize(item)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct MemberAccess<'de> {
    iter: std::slice::Iter<'de, (Cow<'de, str>, Tree<'de>)>,
    value: Option<&'de Tree<'de>>,
}

impl<'de> MapAccess<'de> for MemberAccess<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, serde_json::Error> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(de::value::BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, serde_json::Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::custom("value is missing")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct Variant<'de> {
    name: &'de str,
    value: Option<&'de Tree<'de>>,
}

impl<'de> EnumAccess<'de> for Variant<'de> {
    type Error = serde_json::Error;
    type Variant = VariantValue<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), serde_json::Error> {
        let variant = seed.deserialize(de::value::BorrowedStrDeserializer::new(self.name))?;
        Ok((variant, VariantValue(self.value)))
    }
}

/// What follows a variant's name: nothing for a unit variant written as a string.
struct VariantValue<'de>(Option<&'de Tree<'de>>);

impl<'de> VariantAccess<'de> for VariantValue<'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), serde_json::Error> {
        match self.0 {
            None => Ok(()),
            Some(value) => Deserialize::deserialize(value),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, serde_json::Error> {
        match self.0 {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        match self.0 {
            // As `Value`'s: an empty list is a unit.
            Some(Tree::Array(items)) if items.is_empty() => visitor.visit_unit(),
            Some(value @ Tree::Array(_)) => value.deserialize_any(visitor),
            Some(other) => Err(de::Error::invalid_type(
                other.unexpected(),
                &"tuple variant",
            )),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"tuple variant",
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        match self.0 {
            Some(value @ Tree::Object(_)) => value.deserialize_any(visitor),
            Some(other) => Err(de::Error::invalid_type(
                other.unexpected(),
                &"struct variant",
            )),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"struct variant",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(text: &str) -> Tree<'_> {
        serde_json::from_str(text).unwrap()
    }

    fn keys<'t>(tree: &'t Tree<'_>) -> Vec<&'t str> {
        let Tree::Object(members) = tree else {
            panic!("an object")
        };
        members.iter().map(|(key, _)| key.as_ref()).collect()
    }

    #[test]
    fn repeated_keys_keep_the_last_value_and_small_objects_keep_the_text_order() {
        let text = r#"{"b": 1, "a": 2, "b": 3, "c": {"z": 1, "y": 2}, "a": 4}"#;
        let mut tree = parse(text);
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(tree.to_json_value(), value);
        assert_eq!(keys(&tree), ["b", "a", "c"]);
        assert_eq!(tree.get("a"), Some(&Tree::Number(4.into())));
        assert_eq!(tree.get("b"), Some(&Tree::Number(3.into())));
        assert_eq!(tree.get("d"), None);

        tree.sort_members();
        assert_eq!(keys(&tree), ["a", "b", "c"]);
        assert_eq!(keys(tree.get("c").unwrap()), ["y", "z"]);
        assert_eq!(tree.get("a"), Some(&Tree::Number(4.into())));
        assert_eq!(tree.to_json_value(), value);
    }

    #[test]
    fn large_objects_are_sorted_and_keep_the_last_of_repeated_keys() {
        for count in [SCANNED_MEMBERS, SCANNED_MEMBERS + 1, 200] {
            // Every key twice, in descending order, the second time with its final value; then the first key
            // once more, past the scanned members.
            let mut members: Vec<String> = (0..count)
                .rev()
                .flat_map(|n| [format!(r#""k{n:03}": 0"#), format!(r#""k{n:03}": {n}"#)])
                .collect();
            members.push(format!(r#""k{:03}": {}"#, count - 1, count - 1));
            let text = format!("{{{}}}", members.join(","));
            let tree = parse(&text);
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(tree.to_json_value(), value, "{count} keys");
            assert_eq!(keys(&tree).len(), count);
            if count > SCANNED_MEMBERS {
                assert!(keys(&tree).is_sorted(), "{count} keys");
            }
            for n in 0..count {
                let key = format!("k{n:03}");
                assert_eq!(tree.get(&key), Some(&Tree::Number(n.into())), "{key}");
            }
            assert_eq!(tree.get("k"), None);
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let tree = parse(r#"{"plain": "ada", "esc\u0061ped": "a\nb"}"#);
        let Tree::Object(members) = &tree else {
            panic!("an object")
        };
        assert!(matches!(members[0].0, Cow::Borrowed("plain")));
        assert!(matches!(members[0].1, Tree::String(Cow::Borrowed("ada"))));
        assert!(matches!(members[1].0, Cow::Owned(_)), "{members:?}");
        assert!(matches!(members[1].1, Tree::String(Cow::Owned(_))));
    }

    #[test]
    fn the_typed_decode_reads_what_the_value_decode_reads() {
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Kind {
            Plain,
            Wrapped(u8),
            Shaped { x: i32 },
        }
        #[derive(Debug, PartialEq, Deserialize)]
        struct Newtype(String);
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Payload {
            name: Newtype,
            count: u32,
            ratio: f64,
            tags: Vec<String>,
            maybe: Option<i64>,
            kinds: Vec<Kind>,
            #[serde(default)]
            absent: Option<bool>,
            any: Value,
        }
        let text = json!({
            "name": "ada", "count": 3, "ratio": 1, "tags": ["x", "y"], "maybe": null,
            "kinds": ["plain", {"wrapped": 7}, {"shaped": {"x": -1}}], "any": {"b": [1, 2.5, null]},
        })
        .to_string();
        let tree = parse(&text);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            Payload::deserialize(&tree).unwrap(),
            Payload::deserialize(value).unwrap()
        );

        for bad in [
            json!({"name": 1, "count": 3}),
            json!({"name": "a", "count": -3}),
            json!({"name": "a", "count": "3"}),
            json!({"name": "a", "count": 3, "ratio": 1, "tags": [], "maybe": null, "kinds": ["nope"], "any": 1}),
            json!({"name": "a", "count": 3, "ratio": 1, "tags": [], "maybe": null, "kinds": [{"a": 1, "b": 2}], "any": 1}),
            json!({"name": "a", "count": 3, "ratio": 1, "tags": [], "maybe": null, "kinds": [], "any": 1, "extra": 1}),
            json!([1, 2]),
        ] {
            let text = bad.to_string();
            let tree = parse(&text);
            let from_tree = Payload::deserialize(&tree).unwrap_err().to_string();
            let from_value = Payload::deserialize(bad).unwrap_err().to_string();
            assert_eq!(from_tree, from_value, "{text}");
        }
    }
}
