//! Reading request fields with errors that name the field, and the sampling parameters both APIs share.
//! Unknown fields are ignored (clients send many: `user`, `metadata`, `store`, ...); a known field of the wrong
//! type or out of range is a 400.

use engine::sample::SamplerConfig;
use engine::sample_defaults::SamplingDefaults;
use serde_json::{Map, Value};

use crate::config::Limits;
use crate::error::ApiError;

/// The JSON type of `v`, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON object whose fields are read by name; `path` prefixes field names in errors (`messages[2].`).
#[derive(Clone, Copy)]
pub struct Fields<'a> {
    pub map: &'a Map<String, Value>,
    pub path: &'a str,
}

impl<'a> Fields<'a> {
    /// `v` as an object, or a 400 naming `what`.
    pub fn of(v: &'a Value, path: &'a str, what: &str) -> Result<Fields<'a>, ApiError> {
        match v {
            Value::Object(map) => Ok(Fields { map, path }),
            other => Err(ApiError::invalid(format!("{what} must be a JSON object, not {}", type_name(other)))),
        }
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.path)
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> ApiError {
        ApiError::field(&self.name(key), format!("expected {want}, got {}", type_name(got)))
    }

    /// The field, absent or null meaning `None`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }

    /// A number within `[lo, hi]`.
    pub fn number(&self, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
                _ => Err(ApiError::field(&self.name(key), format!("{n} is out of range [{lo}, {hi}]"))),
            },
            Some(v) => Err(self.wrong(key, "a number", v)),
        }
    }

    /// A whole number within `[lo, hi]`.
    pub fn integer(&self, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
                Some(_) => Err(ApiError::field(&self.name(key), format!("{n} is out of range [{lo}, {hi}]"))),
                None => Err(ApiError::field(&self.name(key), format!("{n} is not a whole number in range"))),
            },
            Some(v) => Err(self.wrong(key, "an integer", v)),
        }
    }

    pub fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong(key, "an array", v)),
        }
    }

    pub fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(self.wrong(key, "an object", v)),
        }
    }

    /// A required field.
    pub fn require<T>(&self, key: &str, v: Result<Option<T>, ApiError>) -> Result<T, ApiError> {
        v?.ok_or_else(|| ApiError::field(&self.name(key), "is required"))
    }

    /// `stop`: a string or an array of strings (empty strings ignored), bounded.
    pub fn stop(&self, key: &str, limits: &Limits) -> Result<Vec<String>, ApiError> {
        let stops: Vec<String> = match self.get(key) {
            None => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(ApiError::field(
                        &format!("{}[{i}]", self.name(key)),
                        format!("expected a string, got {}", type_name(v)),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => return Err(self.wrong(key, "a string or an array of strings", v)),
        };
        if stops.len() > limits.stop_max {
            return Err(ApiError::field(
                &self.name(key),
                format!("{} stop strings; at most {}", stops.len(), limits.stop_max),
            ));
        }
        if let Some(s) = stops.iter().find(|s| s.len() > limits.stop_bytes_max) {
            return Err(ApiError::field(
                &self.name(key),
                format!("a stop string of {} bytes; at most {}", s.len(), limits.stop_bytes_max),
            ));
        }
        Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
    }

    /// `max_tokens` (or the first of `keys` present): a whole number from 1 to the limit.
    pub fn max_tokens(&self, keys: &[&str], limits: &Limits) -> Result<Option<usize>, ApiError> {
        for k in keys {
            if let Some(n) = self.integer(k, 1, limits.max_tokens_max as i64)? {
                return Ok(Some(n as usize));
            }
        }
        Ok(None)
    }
}

/// The sampling fields a request may give; what it leaves out comes from the model file's recommendation, then
/// llama.cpp's defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl Sampling {
    /// Reads the fields; `temperature_max` is 2 for OpenAI, 1 for Anthropic.
    pub fn read(f: &Fields<'_>, temperature_max: f64) -> Result<Sampling, ApiError> {
        let f32_ = |v: Option<f64>| v.map(|x| x as f32);
        Ok(Sampling {
            temperature: f32_(f.number("temperature", 0.0, temperature_max)?),
            top_p: f32_(f.number("top_p", 0.0, 1.0)?),
            top_k: f.integer("top_k", 0, 1 << 20)?.map(|k| k as usize),
            min_p: f32_(f.number("min_p", 0.0, 1.0)?),
            presence_penalty: f32_(f.number("presence_penalty", -2.0, 2.0)?),
            frequency_penalty: f32_(f.number("frequency_penalty", -2.0, 2.0)?),
            repeat_penalty: f32_(f.number("repeat_penalty", 0.01, 100.0)?),
            seed: f.integer("seed", i64::MIN, i64::MAX)?.map(|s| s as u64),
        })
    }

    /// The sampler: these fields, else the model's recommendation, else llama.cpp's defaults; a random seed
    /// unless one is given.
    pub fn config(&self, recommended: &SamplingDefaults) -> SamplerConfig {
        let base = recommended.apply(SamplerConfig::default());
        SamplerConfig {
            temperature: self.temperature.unwrap_or(base.temperature),
            top_k: self.top_k.unwrap_or(base.top_k),
            top_p: self.top_p.unwrap_or(base.top_p),
            min_p: self.min_p.unwrap_or(base.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(base.repeat_penalty),
            repeat_last_n: base.repeat_last_n,
            presence_penalty: self.presence_penalty.unwrap_or(base.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(base.frequency_penalty),
            seed: self.seed.unwrap_or_else(random_u64),
        }
    }
}

/// A random 64-bit number (seeds, ids).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// An id with `prefix` and 24 random characters (`chatcmpl-...`, `call_...`, `msg_...`, `toolu_...`).
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let (mut a, mut b) = (random_u64(), random_u64());
    let mut s = String::from(prefix);
    for i in 0..24 {
        let x = if i < 12 { &mut a } else { &mut b };
        s.push(ALPHABET[(*x % ALPHABET.len() as u64) as usize] as char);
        *x /= ALPHABET.len() as u64;
    }
    s
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
