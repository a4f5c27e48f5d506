//! The sampling settings a model file recommends: GGUF `general.sampling.*` keys (written by llama.cpp's
//! converter from the model's `generation_config.json`) or a Hugging Face directory's `generation_config.json`.
//! Commands start from these, fill the rest with llama.cpp's defaults ([`SamplerConfig::default`]), and let the
//! command line override any of them.

use crate::formats::{Metadata, WeightIndex};
use crate::sample::SamplerConfig;

/// Values a model file recommends; `None` where it says nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    /// Where they came from (`GGUF general.sampling.*`, `generation_config.json`).
    pub source: Option<&'static str>,
}

impl SamplingDefaults {
    /// Reads what `index`'s model recommends. Values out of range (a negative temperature, a top-p above 1) are
    /// ignored, as if the file did not say.
    pub fn of(index: &WeightIndex) -> SamplingDefaults {
        let mut d = match &index.metadata {
            Metadata::Gguf(m) => SamplingDefaults {
                temperature: m.get_f32("general.sampling.temp"),
                top_k: m.get_usize("general.sampling.top_k"),
                top_p: m.get_f32("general.sampling.top_p"),
                min_p: m.get_f32("general.sampling.min_p"),
                repeat_penalty: m.get_f32("general.sampling.penalty_repeat"),
                repeat_last_n: m.get_usize("general.sampling.penalty_last_n"),
                source: Some("GGUF general.sampling.*"),
            },
            Metadata::HfConfig { dir, .. } => {
                let text = std::fs::read_to_string(dir.join("generation_config.json")).unwrap_or_default();
                let json: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                SamplingDefaults::from_generation_config(&json)
            }
        };
        d.sanitize();
        if d.is_empty() {
            d.source = None;
        }
        d
    }

    /// transformers' `generation_config.json`: `do_sample: false` means greedy.
    pub fn from_generation_config(g: &serde_json::Value) -> SamplingDefaults {
        let f = |k: &str| g.get(k).and_then(serde_json::Value::as_f64).map(|v| v as f32);
        let u = |k: &str| g.get(k).and_then(serde_json::Value::as_u64).and_then(|v| usize::try_from(v).ok());
        let greedy = g.get("do_sample").and_then(serde_json::Value::as_bool) == Some(false);
        SamplingDefaults {
            temperature: if greedy { Some(0.0) } else { f("temperature") },
            top_k: u("top_k"),
            top_p: f("top_p"),
            min_p: f("min_p"),
            repeat_penalty: f("repetition_penalty"),
            repeat_last_n: None,
            source: Some("generation_config.json"),
        }
    }

    fn sanitize(&mut self) {
        let keep = |v: Option<f32>, lo: f32, hi: f32| v.filter(|x| x.is_finite() && (lo..=hi).contains(x));
        self.temperature = keep(self.temperature, 0.0, f32::MAX);
        self.top_p = keep(self.top_p, 0.0, 1.0);
        self.min_p = keep(self.min_p, 0.0, 1.0);
        self.repeat_penalty = keep(self.repeat_penalty, f32::MIN_POSITIVE, f32::MAX);
    }

    pub fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_k.is_none()
            && self.top_p.is_none()
            && self.min_p.is_none()
            && self.repeat_penalty.is_none()
            && self.repeat_last_n.is_none()
    }

    /// llama.cpp's defaults overridden by what the file recommends.
    pub fn apply(&self, base: SamplerConfig) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature.unwrap_or(base.temperature),
            top_k: self.top_k.unwrap_or(base.top_k),
            top_p: self.top_p.unwrap_or(base.top_p),
            min_p: self.min_p.unwrap_or(base.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(base.repeat_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(base.repeat_last_n),
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_values_and_greedy() {
        let g = serde_json::json!({"do_sample": true, "temperature": 0.6, "top_k": 20, "top_p": 0.95});
        let d = SamplingDefaults::from_generation_config(&g);
        assert_eq!((d.temperature, d.top_k, d.top_p, d.min_p), (Some(0.6), Some(20), Some(0.95), None));
        let c = d.apply(SamplerConfig::default());
        assert_eq!((c.temperature, c.top_k, c.min_p), (0.6, 20, 0.05));
        let greedy = SamplingDefaults::from_generation_config(&serde_json::json!({"do_sample": false}));
        assert_eq!(greedy.temperature, Some(0.0));
        let mut bad = SamplingDefaults::from_generation_config(&serde_json::json!({"temperature": -1.0, "top_p": 3}));
        bad.sanitize();
        assert!(bad.is_empty());
    }
}
