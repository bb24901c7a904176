//! The layered key map behind [`super::load`] and the two serde
//! deserializers over it: [`Node`], which reads a settings struct from the
//! map (case-insensitive keys, dotted field names as nested keys, scalars
//! parsed from text as viper does), and [`Probe`], which lists the keys a
//! settings struct reads, so that no second list of keys has to be kept.

use std::collections::BTreeMap;

use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, Visitor};
use serde_yaml::Value;

use super::{ConfigError, Key};

/// The layered configuration: lower-cased dotted key path → value. Null
/// values count as unset.
#[derive(Debug, Default)]
pub(super) struct KeyMap(pub(super) BTreeMap<String, Value>);

impl KeyMap {
    /// A value replaces everything set below its key, and anything set at a
    /// key above it (a connection parameter over a whole connection string).
    pub(super) fn set(&mut self, path: String, v: Value) {
        let below = format!("{path}.");
        self.0.retain(|k, _| !k.starts_with(&below));
        let mut above = path.as_str();
        while let Some(dot) = above.rfind('.') {
            above = &above[..dot];
            self.0.remove(above);
        }
        self.0.insert(path, v);
    }

    /// Deserialises a settings struct from the whole map.
    pub(super) fn get<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        T::deserialize(Node::root(&self.0)).map_err(|e| ConfigError::Invalid {
            key: e.key.unwrap_or_default(),
            msg: e.msg,
        })
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// A deserialisation error, and the key it is about once known.
#[derive(Debug)]
struct DeError {
    key: Option<String>,
    msg: String,
}

impl DeError {
    fn at(mut self, key: &str) -> DeError {
        self.key.get_or_insert_with(|| key.to_string());
        self
    }
}

impl std::fmt::Display for DeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DeError {
            key: None,
            msg: msg.to_string(),
        }
    }
}

static NO_KEYS: BTreeMap<String, Value> = BTreeMap::new();

/// A place in the key map, deserialised as whatever the settings struct asks
/// for: a struct yields the fields that are set (the rest keep their
/// default), and scalars are parsed from text, since environment variables
/// and flags are text (viper's weak typing).
#[derive(Clone)]
struct Node<'a> {
    map: &'a BTreeMap<String, Value>,
    /// Lower-cased path, for lookups.
    path: String,
    /// Canonical key, for messages.
    key: String,
    leaf: Option<&'a Value>,
}

impl<'a> Node<'a> {
    fn root(map: &'a BTreeMap<String, Value>) -> Node<'a> {
        Node {
            map,
            path: String::new(),
            key: String::new(),
            leaf: None,
        }
    }

    fn child(&self, name: &str) -> Node<'a> {
        let path = join(&self.path, &name.to_lowercase());
        Node {
            map: self.map,
            leaf: self.map.get(&path),
            key: join(&self.key, name),
            path,
        }
    }

    fn element(&self, v: &'a Value) -> Node<'a> {
        Node {
            map: &NO_KEYS,
            path: String::new(),
            key: self.key.clone(),
            leaf: Some(v),
        }
    }

    /// The non-null entries below this node, if it is not a leaf.
    fn below(&self) -> impl Iterator<Item = (&'a String, &'a Value)> + '_ {
        let prefix = format!("{}.", self.path);
        self.map
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(|(_, v)| !v.is_null())
    }

    fn is_set(&self) -> bool {
        match self.leaf {
            Some(v) => !v.is_null(),
            None => self.below().next().is_some(),
        }
    }

    fn text(&self) -> Result<String, DeError> {
        match self.leaf {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(Value::Bool(b)) => Ok(b.to_string()),
            _ => Err(de::Error::custom(
                "expected a single value, got a list or map",
            )),
        }
    }

    fn parse<T: std::str::FromStr>(&self, what: &str) -> Result<T, DeError> {
        let s = self.text()?;
        s.trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("expected {what}, got {s:?}")))
    }
}

impl<'de> IntoDeserializer<'de, DeError> for Node<'_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! parse_scalar {
    ($($method:ident $visit:ident $t:ty, $what:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            v.$visit(self.parse::<$t>($what)?)
        }
    )*};
}

impl<'de> Deserializer<'de> for Node<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.leaf {
            Some(Value::Bool(b)) => v.visit_bool(*b),
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => v.visit_u64(u),
                (_, Some(i), _) => v.visit_i64(i),
                (_, _, Some(f)) => v.visit_f64(f),
                _ => v.visit_unit(),
            },
            Some(Value::String(s)) => v.visit_str(s),
            Some(Value::Sequence(_)) => self.deserialize_seq(v),
            Some(Value::Null) => v.visit_unit(),
            Some(_) => Err(de::Error::custom("unexpected value")),
            None if self.is_set() => self.deserialize_map(v),
            None => v.visit_unit(),
        }
    }

    parse_scalar! {
        deserialize_bool visit_bool bool, "true or false";
        deserialize_u8 visit_u8 u8, "an integer from 0 to 255";
        deserialize_u16 visit_u16 u16, "an integer from 0 to 65535";
        deserialize_u32 visit_u32 u32, "a non-negative integer";
        deserialize_u64 visit_u64 u64, "a non-negative integer";
        deserialize_i8 visit_i8 i8, "an integer";
        deserialize_i16 visit_i16 i16, "an integer";
        deserialize_i32 visit_i32 i32, "an integer";
        deserialize_i64 visit_i64 i64, "an integer";
        deserialize_f32 visit_f32 f32, "a number";
        deserialize_f64 visit_f64 f64, "a number";
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_string(self.text()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.is_set() {
            v.visit_some(self)
        } else {
            v.visit_none()
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    /// A YAML list, or text split at commas (environment variables, flags).
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.leaf {
            Some(Value::Sequence(items)) => v.visit_seq(de::value::SeqDeserializer::new(
                items.iter().map(|i| self.element(i)),
            )),
            Some(Value::String(s)) => v.visit_seq(de::value::SeqDeserializer::new(
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty()),
            )),
            Some(Value::Number(_) | Value::Bool(_)) => v.visit_seq(
                de::value::SeqDeserializer::new(std::iter::once(self.text()?)),
            ),
            _ => Err(de::Error::custom("expected a list of strings")),
        }
    }

    /// The sub-keys below this key, or the text of a key set whole.
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if let Some(leaf) = self.leaf.filter(|l| !l.is_null()) {
            return match leaf {
                Value::String(s) => v.visit_str(s),
                _ => Err(de::Error::custom("expected a map")),
            };
        }
        let mut names: Vec<&str> = Vec::new();
        let skip = self.path.len() + 1;
        for (k, _) in self.below() {
            let rest = &k[skip..];
            let name = rest.split('.').next().unwrap_or(rest);
            if names.last() != Some(&name) {
                names.push(name);
            }
        }
        let entries: Vec<(String, Node)> = names
            .into_iter()
            .map(|n| (n.to_string(), self.child(n)))
            .collect();
        v.visit_map(Entries {
            entries: entries.into_iter(),
            pending: None,
        })
    }

    /// The struct's fields that are set, looked up case-insensitively.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let entries: Vec<(String, Node)> = fields
            .iter()
            .map(|f| (f.to_string(), self.child(f)))
            .filter(|(_, n)| n.is_set())
            .collect();
        v.visit_map(Entries {
            entries: entries.into_iter(),
            pending: None,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_enum(self.text()?.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct tuple tuple_struct identifier ignored_any
    }
}

struct Entries<'a> {
    entries: std::vec::IntoIter<(String, Node<'a>)>,
    pending: Option<Node<'a>>,
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((name, node)) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some(node);
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, DeError> {
        let node = self
            .pending
            .take()
            .ok_or_else(|| de::Error::custom("value without a key"))?;
        let key = node.key.clone();
        seed.deserialize(node).map_err(|e| e.at(&key))
    }
}

/// What a settings type reads at one place, as found by [`Probe`].
#[derive(Debug)]
enum Shape {
    Struct(&'static [&'static str]),
    Map,
    Leaf,
}

#[derive(Debug)]
struct Found(Option<Shape>);

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for Found {}

impl de::Error for Found {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Found(None)
    }
}

/// A deserializer that walks one route of field names into a settings type
/// and stops, with an error, at the end of it, saying what was asked for
/// there. Walking every route lists the type's keys without a second list
/// to keep in step.
struct Probe<'r>(&'r [&'static str]);

impl Probe<'_> {
    fn stop<T>(self, shape: Shape) -> Result<T, Found> {
        Err(Found(self.0.is_empty().then_some(shape)))
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Found;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
        self.stop(Shape::Leaf)
    }

    fn deserialize_map<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
        self.stop(Shape::Map)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Found> {
        match self.0.split_first() {
            None => Err(Found(Some(Shape::Struct(fields)))),
            Some((field, rest)) => v.visit_map(ProbeField {
                field: Some(field),
                rest,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Found> {
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Found> {
        v.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct enum identifier
        ignored_any
    }
}

struct ProbeField<'r> {
    field: Option<&'static str>,
    rest: &'r [&'static str],
}

impl<'de> de::MapAccess<'de> for ProbeField<'_> {
    type Error = Found;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Found> {
        match self.field.take() {
            Some(f) => seed.deserialize(f.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<S: de::DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Found> {
        seed.deserialize(Probe(self.rest))
    }
}

/// Appends the keys `T` reads to `out`.
pub(super) fn keys_of<T: DeserializeOwned>(out: &mut Vec<Key>) {
    fn walk<T: DeserializeOwned>(route: &mut Vec<&'static str>, out: &mut Vec<Key>) {
        let path = route.join(".");
        match T::deserialize(Probe(route)) {
            Err(Found(Some(Shape::Struct(fields)))) => {
                for f in fields {
                    route.push(f);
                    walk::<T>(route, out);
                    route.pop();
                }
            }
            Err(Found(Some(Shape::Map))) => out.push(Key { path, map: true }),
            Err(Found(Some(Shape::Leaf))) => out.push(Key { path, map: false }),
            _ => {}
        }
    }
    walk::<T>(&mut Vec::new(), out);
}
