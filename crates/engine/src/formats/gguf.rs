//! GGUF (v2 and v3) as llama.cpp writes it. (Skeleton: the reader is being written.)

use std::path::Path;

use super::WeightIndex;
use crate::{Error, Result};

#[derive(Debug, Default)]
pub struct GgufMetadata {}

pub fn open(path: &Path) -> Result<WeightIndex> {
    Err(Error::format(path, "GGUF reader not written yet"))
}

impl GgufMetadata {
    pub fn get_u64(&self, _key: &str) -> Option<u64> {
        None
    }
    pub fn get_f32(&self, _key: &str) -> Option<f32> {
        None
    }
    pub fn get_str(&self, _key: &str) -> Option<&str> {
        None
    }
}
