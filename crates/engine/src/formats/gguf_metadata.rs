//! GGUF metadata: the value types of the format ([`GgufType`], [`GgufValue`], [`GgufArray`]) and
//! [`GgufMetadata`], the ordered key/value map of one file with typed accessors whose errors name the key and file.
//!
//! Arrays are typed vectors (`GgufArray::String(Vec<String>)`, `GgufArray::F32(Vec<f32>)`, ...), so a 150k-token
//! vocabulary is one `Vec<String>` and scores one `Vec<f32>`, borrowed as slices by the accessors.
//! This module only holds values; reading is in `gguf`, writing in `gguf_writer`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A GGUF value type, with its id in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgufType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufType {
    pub fn from_id(id: u32) -> Option<GgufType> {
        use GgufType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// The name gguf-py prints (`UINT32`, `STRING`, ...).
    pub fn name(self) -> &'static str {
        use GgufType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }

    /// The fewest bytes one value of this type takes in a file (a string's or array's length prefix alone).
    pub fn min_bytes(self) -> u64 {
        use GgufType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    /// Decoded as UTF-8; invalid sequences become U+FFFD (GGUF writers only write UTF-8).
    String(String),
    Array(GgufArray),
}

/// A metadata array: one typed vector per element type. Nested arrays hold their own element type each.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
}

impl GgufValue {
    pub fn type_(&self) -> GgufType {
        match self {
            GgufValue::U8(_) => GgufType::U8,
            GgufValue::I8(_) => GgufType::I8,
            GgufValue::U16(_) => GgufType::U16,
            GgufValue::I16(_) => GgufType::I16,
            GgufValue::U32(_) => GgufType::U32,
            GgufValue::I32(_) => GgufType::I32,
            GgufValue::U64(_) => GgufType::U64,
            GgufValue::I64(_) => GgufType::I64,
            GgufValue::F32(_) => GgufType::F32,
            GgufValue::F64(_) => GgufType::F64,
            GgufValue::Bool(_) => GgufType::Bool,
            GgufValue::String(_) => GgufType::String,
            GgufValue::Array(_) => GgufType::Array,
        }
    }

    /// Any integer value as i128 (wide enough for every GGUF integer type), or `None` for other types.
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// A float value (`F32` or `F64`, the latter rounded) or `None`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            GgufValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// A type description for error messages: `UINT32`, `ARRAY[STRING]`.
    pub fn type_name(&self) -> String {
        match self {
            GgufValue::Array(a) => format!("ARRAY[{}]", a.elem_type().name()),
            v => v.type_().name().to_string(),
        }
    }
}

impl GgufArray {
    pub fn elem_type(&self) -> GgufType {
        match self {
            GgufArray::U8(_) => GgufType::U8,
            GgufArray::I8(_) => GgufType::I8,
            GgufArray::U16(_) => GgufType::U16,
            GgufArray::I16(_) => GgufType::I16,
            GgufArray::U32(_) => GgufType::U32,
            GgufArray::I32(_) => GgufType::I32,
            GgufArray::U64(_) => GgufType::U64,
            GgufArray::I64(_) => GgufType::I64,
            GgufArray::F32(_) => GgufType::F32,
            GgufArray::F64(_) => GgufType::F64,
            GgufArray::Bool(_) => GgufType::Bool,
            GgufArray::String(_) => GgufType::String,
            GgufArray::Array(_) => GgufType::Array,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Integer elements as i128, or `None` when the elements are not integers.
    pub fn ints(&self) -> Option<Vec<i128>> {
        fn conv<T: Copy + Into<i128>>(v: &[T]) -> Vec<i128> {
            v.iter().map(|&x| x.into()).collect()
        }
        Some(match self {
            GgufArray::U8(v) => conv(v),
            GgufArray::I8(v) => conv(v),
            GgufArray::U16(v) => conv(v),
            GgufArray::I16(v) => conv(v),
            GgufArray::U32(v) => conv(v),
            GgufArray::I32(v) => conv(v),
            GgufArray::U64(v) => conv(v),
            GgufArray::I64(v) => conv(v),
            _ => return None,
        })
    }
}

/// At most this many array elements are printed by `Display`.
const DISPLAY_ELEMS_MAX: usize = 8;

impl fmt::Display for GgufValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufValue::U8(v) => write!(f, "{v}"),
            GgufValue::I8(v) => write!(f, "{v}"),
            GgufValue::U16(v) => write!(f, "{v}"),
            GgufValue::I16(v) => write!(f, "{v}"),
            GgufValue::U32(v) => write!(f, "{v}"),
            GgufValue::I32(v) => write!(f, "{v}"),
            GgufValue::U64(v) => write!(f, "{v}"),
            GgufValue::I64(v) => write!(f, "{v}"),
            GgufValue::F32(v) => write!(f, "{v}"),
            GgufValue::F64(v) => write!(f, "{v}"),
            GgufValue::Bool(v) => write!(f, "{v}"),
            GgufValue::String(s) => write!(f, "{s:?}"),
            GgufValue::Array(a) => write!(f, "{a}"),
        }
    }
}

impl fmt::Display for GgufArray {
    /// `[1, 2, 3]`, or the first elements and the count: `["a", "b", ... (151936 items)]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Debug>(f: &mut fmt::Formatter<'_>, v: &[T]) -> fmt::Result {
            write!(f, "[")?;
            for (i, x) in v.iter().take(DISPLAY_ELEMS_MAX).enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{x:?}")?;
            }
            if v.len() > DISPLAY_ELEMS_MAX {
                write!(f, ", ... ({} items)", v.len())?;
            }
            write!(f, "]")
        }
        match self {
            GgufArray::U8(v) => list(f, v),
            GgufArray::I8(v) => list(f, v),
            GgufArray::U16(v) => list(f, v),
            GgufArray::I16(v) => list(f, v),
            GgufArray::U32(v) => list(f, v),
            GgufArray::I32(v) => list(f, v),
            GgufArray::U64(v) => list(f, v),
            GgufArray::I64(v) => list(f, v),
            GgufArray::F32(v) => list(f, v),
            GgufArray::F64(v) => list(f, v),
            GgufArray::Bool(v) => list(f, v),
            GgufArray::String(v) => list(f, v),
            GgufArray::Array(v) => {
                write!(f, "[")?;
                for (i, a) in v.iter().take(DISPLAY_ELEMS_MAX).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{a}")?;
                }
                if v.len() > DISPLAY_ELEMS_MAX {
                    write!(f, ", ... ({} items)", v.len())?;
                }
                write!(f, "]")
            }
        }
    }
}

/// The key/value metadata of one GGUF file, in file order, with the file's path for error messages.
///
/// Accessors come in three forms: `get_*` (`None` when the key is missing or of another type), `opt_*`
/// (`Ok(None)` when missing, `Err` naming key, type and file when present with the wrong type) and `require_*`
/// (`Err` when missing too). Integer accessors accept any integer type whose value fits.
#[derive(Default)]
pub struct GgufMetadata {
    /// GGUF version of the file (2 or 3).
    pub version: u32,
    /// `general.alignment` or the default 32: tensor data offsets are multiples of it.
    pub alignment: u64,
    /// Absolute offset in the file where the tensor data section starts.
    pub data_offset: u64,
    path: PathBuf,
    kvs: Vec<(String, GgufValue)>,
    by_key: HashMap<String, usize>,
}

/// Long arrays (150k tokens) are shown shortened, as by `Display`.
impl fmt::Debug for GgufMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Kvs<'a>(&'a [(String, GgufValue)]);
        impl fmt::Debug for Kvs<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut m = f.debug_map();
                for (k, v) in self.0 {
                    m.key(k).value(&format_args!("{v}"));
                }
                m.finish()
            }
        }
        f.debug_struct("GgufMetadata")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("kvs", &Kvs(&self.kvs))
            .finish()
    }
}

macro_rules! int_accessors {
    ($t:ty, $get:ident, $opt:ident, $require:ident) => {
        #[doc = concat!("The value as `", stringify!($t), "` if it is an integer that fits; `None` otherwise.")]
        pub fn $get(&self, key: &str) -> Option<$t> {
            self.$opt(key).ok().flatten()
        }

        #[doc = concat!("`Ok(None)` if missing; an error if present but not an integer that fits `", stringify!($t), "`.")]
        pub fn $opt(&self, key: &str) -> Result<Option<$t>> {
            let Some(v) = self.get(key) else { return Ok(None) };
            match v.as_int().map(<$t>::try_from) {
                Some(Ok(x)) => Ok(Some(x)),
                Some(Err(_)) => Err(self.bad(key, v, concat!("a value that fits ", stringify!($t)))),
                None => Err(self.bad(key, v, "an integer")),
            }
        }

        #[doc = concat!("The value as `", stringify!($t), "`, or an error naming the key and file.")]
        pub fn $require(&self, key: &str) -> Result<$t> {
            self.$opt(key)?.ok_or_else(|| self.missing(key))
        }
    };
}

impl GgufMetadata {
    /// An empty map for `path`; the parser fills it with [`GgufMetadata::insert`].
    pub(crate) fn new(path: &Path, version: u32) -> GgufMetadata {
        GgufMetadata { version, alignment: 32, data_offset: 0, path: path.to_path_buf(), ..Default::default() }
    }

    /// Adds a key; returns `false` (and keeps the first) if the key is already there.
    pub(crate) fn insert(&mut self, key: String, value: GgufValue) -> bool {
        if self.by_key.contains_key(&key) {
            return false;
        }
        self.by_key.insert(key.clone(), self.kvs.len());
        self.kvs.push((key, value));
        true
    }

    /// The file this metadata came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.kvs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kvs.is_empty()
    }

    /// Key/value pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.kvs.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.by_key.get(key).map(|&i| &self.kvs[i].1)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    fn missing(&self, key: &str) -> Error {
        Error::config(&self.path, format!("GGUF metadata key '{key}' is missing"))
    }

    fn bad(&self, key: &str, v: &GgufValue, expected: &str) -> Error {
        Error::config(
            &self.path,
            format!("GGUF metadata key '{key}' has type {} (value {v}), expected {expected}", v.type_name()),
        )
    }

    int_accessors!(u8, get_u8, opt_u8, require_u8);
    int_accessors!(u32, get_u32, opt_u32, require_u32);
    int_accessors!(i32, get_i32, opt_i32, require_i32);
    int_accessors!(u64, get_u64, opt_u64, require_u64);
    int_accessors!(i64, get_i64, opt_i64, require_i64);
    int_accessors!(usize, get_usize, opt_usize, require_usize);

    /// An `F32` or `F64` value as f32.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(GgufValue::as_f32)
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f32().map(Some).ok_or_else(|| self.bad(key, v, "a float")),
        }
    }

    pub fn require_f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(GgufValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(GgufValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad(key, v, "a bool")),
        }
    }

    pub fn require_bool(&self, key: &str) -> Result<bool> {
        self.opt_bool(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.bad(key, v, "a string")),
        }
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// `general.architecture` (`qwen3moe`, `deepseek2`, ...).
    pub fn arch(&self) -> Result<&str> {
        self.require_str("general.architecture")
    }

    /// A string array (token lists, merges) borrowed; `None` if missing or not an array of strings.
    pub fn get_str_array(&self, key: &str) -> Option<&[String]> {
        self.opt_str_array(key).ok().flatten()
    }

    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(GgufArray::String(v))) => Ok(Some(v)),
            Some(v) => Err(self.bad(key, v, "an array of strings")),
        }
    }

    pub fn require_str_array(&self, key: &str) -> Result<&[String]> {
        self.opt_str_array(key)?.ok_or_else(|| self.missing(key))
    }

    /// An f32 array (token scores) borrowed; `None` if missing or not an array of `FLOAT32`.
    pub fn get_f32_array(&self, key: &str) -> Option<&[f32]> {
        self.opt_f32_array(key).ok().flatten()
    }

    pub fn opt_f32_array(&self, key: &str) -> Result<Option<&[f32]>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(GgufArray::F32(v))) => Ok(Some(v)),
            Some(v) => Err(self.bad(key, v, "an array of FLOAT32")),
        }
    }

    pub fn require_f32_array(&self, key: &str) -> Result<&[f32]> {
        self.opt_f32_array(key)?.ok_or_else(|| self.missing(key))
    }

    /// An array of any integer type whose elements all fit i32 (token types, per-layer counts), copied.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        self.opt_i32_array(key).ok().flatten()
    }

    pub fn opt_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let GgufValue::Array(a) = v else {
            return Err(self.bad(key, v, "an array of integers"));
        };
        if let GgufArray::I32(x) = a {
            return Ok(Some(x.clone()));
        }
        let Some(ints) = a.ints() else {
            return Err(self.bad(key, v, "an array of integers"));
        };
        let out: std::result::Result<Vec<i32>, _> = ints.into_iter().map(i32::try_from).collect();
        out.map(Some).map_err(|_| self.bad(key, v, "an array of integers that fit i32"))
    }

    pub fn require_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.opt_i32_array(key)?.ok_or_else(|| self.missing(key))
    }
}
