//! Entry points for the fuzz targets of `fuzz/` (cargo-fuzz) and their stable stand-in
//! (`tests/fuzz_smoke.rs`): each takes any bytes and must return without panicking, hanging or allocating more
//! than its input justifies, and asserts what must hold of whatever it accepts.
//!
//! | entry point | what it feeds | what it checks besides "no panic" |
//! |---|---|---|
//! | [`model_config`] | `config.json` text for a fixture's weights (byte 0 picks the fixture) | an accepted config loads and runs two tokens to finite logits |
//! | [`chat_template`] | template source, messages and extra variables | a render stays within its output bound |
//! | [`tokenizer_json`] | a `tokenizer.json` and text | an accepted tokenizer encodes, decodes and stream-decodes the text |
//! | [`hot_file`], [`routing_profile`], [`route_trace`] | the text of each file, for a fixed model shape | what is accepted names only experts of that model; the plan a profile makes fits the cache |
//!
//! The fixed model of the last three: [`FUZZ_MODEL`], 4 layers (layer 0 dense) of 8 experts, top-2.

use std::path::Path;

use crate::experts::budget::SlotClasses;
use crate::experts::profile::{plan_classes, ModelIdentity, RoutingProfile};
use crate::experts::warm::HotFile;
use crate::formats::{Metadata, WeightIndex};
use crate::layers::moe::{Route, RouteHook};
use crate::models::{LoadOptions, Logits, Model};
use crate::ops::Cpu;
use crate::routes::RouteReplay;
use crate::tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, Tokenizer};

/// The model the hot-file, profile and trace targets check against (their seeds are written for it).
pub const FUZZ_MODEL: (&str, u64, usize, usize, usize) = ("model.gguf", 123_456, 4, 8, 2);

fn identity() -> ModelIdentity {
    let (file, size_bytes, n_layer, n_expert, n_expert_used) = FUZZ_MODEL;
    ModelIdentity { file: file.into(), size_bytes, n_layer, n_expert, n_expert_used }
}

/// Layer 0 dense, the others MoE.
fn moe_layers() -> Vec<bool> {
    (0..FUZZ_MODEL.2).map(|l| l > 0).collect()
}

/// The fixtures (in `tests/fixtures/`) whose weights [`model_config`] loads, by `data[0] % 3`.
pub const CONFIG_FIXTURES: [&str; 3] = ["llama-h64", "qwen3moe-h64", "qwen3moe-h256"];

/// `data[0]` picks a fixture of `fixtures` ([`CONFIG_FIXTURES`]), the rest is its `config.json`: a config the
/// loader accepts must give a model that runs two tokens to finite logits.
pub fn model_config(data: &[u8], fixtures: &Path) {
    let Some((&which, json)) = data.split_first() else { return };
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(json) else { return };
    if !config.is_object() {
        return;
    }
    let dir = fixtures.join(CONFIG_FIXTURES[which as usize % CONFIG_FIXTURES.len()]);
    let mut index = WeightIndex::open(&dir).unwrap_or_else(|e| panic!("fixture {}: {e}", dir.display()));
    index.metadata = Metadata::HfConfig { config, dir };
    let Ok(model) = Model::load(&index, &LoadOptions::default()) else { return };
    let cpu = Cpu::new(1);
    let Ok(mut session) = model.try_new_session(4) else { return };
    let tokens = [1, 2].map(|t: u32| t % model.info.n_vocab.max(1) as u32);
    let logits = model.forward(&cpu, &mut session, &tokens, Logits::Last).expect("an accepted config runs");
    assert!(logits.iter().all(|x| x.is_finite()), "an accepted config gives non-finite logits");
}

/// Template source, then (after a 0 byte) messages separated by 1 bytes, then (after another 0) extra variables
/// as JSON: a render that succeeds stays within its output bound.
pub fn chat_template(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let Ok(template) = ChatTemplate::new(&source) else { return };
    const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];
    let messages: Vec<ChatMessage> = parts
        .next()
        .unwrap_or_default()
        .split(|&b| b == 1)
        .enumerate()
        .map(|(i, m)| ChatMessage::new(ROLES[i % ROLES.len()], String::from_utf8_lossy(m)))
        .collect();
    let extra = parts.next().and_then(|e| serde_json::from_slice(e).ok()).unwrap_or(serde_json::Value::Null);
    let input = messages.iter().map(|m| m.role.len() + m.content.len()).sum::<usize>()
        + if extra.is_null() { 0 } else { extra.to_string().len() };
    if let Ok(out) = template.render_with(&messages, data.len().is_multiple_of(2), Some("<s>"), Some("</s>"), &extra) {
        assert!(out.len() <= crate::tokenizer::render_bytes_max(input), "{} bytes rendered", out.len());
    }
}

/// A `tokenizer.json`, then (after a 0 byte) text: an accepted tokenizer encodes the text with and without
/// special tokens, and decodes and stream-decodes the ids, and ids from the text's bytes.
pub fn tokenizer_json(data: &[u8]) {
    let (json, text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let null = serde_json::Value::Null;
    let Ok(tokenizer) = Tokenizer::from_hf_json(json, &null, &null, None) else { return };
    let text = String::from_utf8_lossy(text);
    let n_vocab = tokenizer.n_vocab();
    for (add_special, parse_special) in [(false, false), (true, true)] {
        let Ok(ids) = tokenizer.encode(&text, add_special, parse_special) else { continue };
        assert!(ids.iter().all(|&id| (id as usize) < n_vocab), "an id outside the vocabulary of {n_vocab}");
        tokenizer.decode(&ids).expect("the ids it made decode");
        let mut stream = StreamDecoder::new();
        for &id in &ids {
            stream.push(&tokenizer, id).expect("the ids it made stream-decode");
        }
        stream.flush();
    }
    let raw: Vec<u32> = text.bytes().map(|b| u32::from(b) * 7).collect();
    let _ = tokenizer.decode(&raw);
}

/// The text of a hot file: one that loads names only experts of MoE layers of [`FUZZ_MODEL`].
pub fn hot_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let moe = moe_layers();
    let Ok(hot) = HotFile::parse(&text, Path::new("fuzz.hot.json"), &identity(), 7, &moe) else { return };
    for it in hot.items() {
        assert!(moe[it.layer] && (it.expert as usize) < FUZZ_MODEL.3, "{it:?}");
    }
}

/// The text of a routing profile: one that loads makes a cache plan (shares and pins) that fits the cache.
pub fn routing_profile(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(p) = RoutingProfile::parse(&text, Path::new("fuzz.profile.json"), &identity()) else { return };
    let moe = moe_layers();
    // Layers 1-2 in slots of one size, layer 3 in another (as a Q4_K_M mix makes them).
    let classes = SlotClasses {
        bytes: vec![1000, 1200],
        of_layer: (0..FUZZ_MODEL.2).map(|l| moe[l].then_some(usize::from(l == 3))).collect(),
    };
    let class_slots = [2 + data.len() % 11, 2 + data.len() % 5];
    let pin_fraction = (data.len() % 7) as f64 / 6.0;
    let plan = plan_classes(&p.totals(), &classes, &class_slots, FUZZ_MODEL.4, pin_fraction);
    for (c, &n) in class_slots.iter().enumerate() {
        let shared: usize = (0..FUZZ_MODEL.2).filter(|&l| classes.of_layer[l] == Some(c)).map(|l| plan.quotas[l]).sum();
        assert!(shared <= n, "class {c}: shares of {shared} slots out of {n}");
    }
    for &(l, e) in &plan.pinned {
        assert!(moe[l] && (e as usize) < FUZZ_MODEL.3, "pinned ({l}, {e})");
    }
}

/// The text of a route trace: one that loads replays only experts of [`FUZZ_MODEL`], `k` distinct ones.
pub fn route_trace(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(replay) = RouteReplay::parse(&text, Path::new("fuzz.csv"), FUZZ_MODEL.3) else { return };
    let mut route = Route { experts: Vec::new(), weights: Vec::new() };
    for pos in 0..replay.n_tokens().min(64) {
        for layer in 0..FUZZ_MODEL.2 {
            route.experts.clear();
            route.weights.clear();
            if replay.route(layer, pos, 1, &mut route).is_ok() {
                assert!(route.experts.iter().all(|&e| (e as usize) < FUZZ_MODEL.3), "{:?}", route.experts);
                assert_eq!(route.experts.len(), route.weights.len());
            }
        }
    }
}
