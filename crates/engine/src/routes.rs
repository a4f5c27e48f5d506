//! Route traces: record which experts the router chose, per token and layer, or replay a recorded trace in place
//! of the router, so the real cache and loader run with real routing on a synthetic model of the same shape.
//!
//! The format is the CSV of tests/fixtures/traces (a real Qwen3-30B-A3B trace): `#` comment lines (model, shape, per-layer expert bytes), then
//! `turn,phase,step,layer,slot,expert,weight,residency,expert_bytes` rows; phase 0 is the prompt, 1 decode, `step`
//! counts tokens within the phase, `slot` is the rank in the top-k. Replay is a benchmark mode, not inference:
//! its logits mean nothing, and every output of a replay run says so.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::layers::routing::{Route, RouteHook};
use crate::{Error, Result};

/// Writes every routing decision to a CSV trace.
pub struct RouteRecorder {
    state: Mutex<RecorderState>,
}

struct RecorderState {
    out: BufWriter<std::fs::File>,
    path: PathBuf,
    /// Position of the first single-token (decode) call.
    decode_start: Option<usize>,
    expert_bytes: Vec<u64>,
    error: Option<String>,
}

impl RouteRecorder {
    /// Creates `path` with the trace header; `expert_bytes[layer]` is one expert's bytes (0 for dense layers).
    pub fn create(
        path: &Path,
        model: &str,
        arch: &str,
        n_expert: usize,
        n_used: usize,
        expert_bytes: &[u64],
    ) -> Result<Self> {
        let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::new(f);
        let mut header = format!(
            "# route_trace v1\n# model={model} arch={arch} n_layer={} n_expert={n_expert} n_expert_used={n_used} \
             source=flash-moe\n",
            expert_bytes.len()
        );
        for (l, b) in expert_bytes.iter().enumerate() {
            header.push_str(&format!("# layer={l} expert_bytes={b} dense_bytes=0\n"));
        }
        header.push_str("turn,phase,step,layer,slot,expert,weight,residency,expert_bytes\n");
        out.write_all(header.as_bytes()).map_err(|e| Error::io(path, e))?;
        let state = RecorderState {
            out,
            path: path.to_path_buf(),
            decode_start: None,
            expert_bytes: expert_bytes.to_vec(),
            error: None,
        };
        Ok(RouteRecorder { state: Mutex::new(state) })
    }

    /// Flushes the file; reports a write error met while recording.
    pub fn finish(&self) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = st.error.take() {
            return Err(Error::Invalid(e));
        }
        let path = st.path.clone();
        st.out.flush().map_err(|e| Error::io(&path, e))
    }
}

impl RouteHook for RouteRecorder {
    fn route(&self, layer: usize, pos: usize, n_call: usize, route: &mut Route) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if n_call == 1 && st.decode_start.is_none() && pos > 0 {
            st.decode_start = Some(pos);
        }
        let (phase, step) = match st.decode_start {
            Some(d) if pos >= d => (1, pos - d),
            _ => (0, pos),
        };
        let bytes = st.expert_bytes.get(layer).copied().unwrap_or(0);
        let mut rows = String::new();
        for (slot, (e, w)) in route.experts.iter().zip(&route.weights).enumerate() {
            rows.push_str(&format!("0,{phase},{step},{layer},{slot},{e},{w:.6},0,{bytes}\n"));
        }
        if let Err(e) = st.out.write_all(rows.as_bytes()) {
            st.error = Some(format!("{}: {e}", st.path.display()));
        }
        Ok(())
    }
}

/// The largest step (token position) and layer a trace may name: far beyond any context and any model, small
/// enough that positions computed from them never overflow.
pub const TRACE_STEP_MAX: usize = 1 << 32;
pub const TRACE_LAYER_MAX: usize = 1 << 16;

/// A recorded trace that replaces the router's choices.
pub struct RouteReplay {
    path: PathBuf,
    /// (absolute position, layer) -> (expert, weight) in slot order.
    steps: HashMap<(usize, usize), Vec<(u32, f32)>>,
    n_tokens: usize,
    /// Prompt positions: where a trace lacks a layer of a prompt token (engines skip the last layer's rows that
    /// no output needs), the model's own routing stands.
    n_prompt: usize,
}

impl RouteReplay {
    /// Loads a trace, checking its experts against the model's `n_expert`. Positions count prompt steps first,
    /// then decode steps (of turn 0; later turns are ignored).
    pub fn load(path: &Path, n_expert: usize) -> Result<RouteReplay> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path, n_expert)
    }

    /// [`RouteReplay::load`] of the text of a trace (`path` names it in errors). Never panics, whatever the text
    /// holds (the `route_trace` fuzz target calls it): steps and layers beyond any model and slots beyond the
    /// experts of a layer are refused.
    pub fn parse(text: &str, path: &Path, n_expert: usize) -> Result<RouteReplay> {
        let bad = |line: usize, msg: &str| Error::format(path, format!("line {line}: {msg}"));
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.starts_with("turn,") || line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 7 {
                return Err(bad(i + 1, "expected turn,phase,step,layer,slot,expert,weight,..."));
            }
            let num = |j: usize| f[j].trim().parse::<usize>().map_err(|_| bad(i + 1, "not a number"));
            let (turn, phase, step, layer, slot, expert) = (num(0)?, num(1)?, num(2)?, num(3)?, num(4)?, num(5)?);
            let weight: f32 = f[6].trim().parse().map_err(|_| bad(i + 1, "weight is not a number"))?;
            if expert >= n_expert {
                return Err(bad(i + 1, &format!("expert {expert}, but the model has {n_expert} experts per layer")));
            }
            if slot >= n_expert {
                return Err(bad(i + 1, &format!("top-k slot {slot}, but a layer has {n_expert} experts")));
            }
            if step > TRACE_STEP_MAX || layer > TRACE_LAYER_MAX {
                return Err(bad(
                    i + 1,
                    &format!("step {step} or layer {layer} is beyond any model (at most {TRACE_STEP_MAX} and {TRACE_LAYER_MAX})"),
                ));
            }
            if turn == 0 && phase <= 1 {
                rows.push((phase, step, layer, slot, expert as u32, weight));
            }
        }
        let n_prompt = rows.iter().filter(|r| r.0 == 0).map(|r| r.1 + 1).max().unwrap_or(0);
        // Decode steps count from 0, or go on from the prompt's positions (both occur in real traces).
        let decode_from_zero = rows.iter().filter(|r| r.0 == 1).map(|r| r.1).min().is_some_and(|m| m < n_prompt);
        let mut steps: HashMap<(usize, usize), Vec<(u32, f32)>> = HashMap::new();
        for &(phase, step, layer, slot, e, w) in &rows {
            let pos = if phase == 1 && decode_from_zero { n_prompt + step } else { step };
            let v = steps.entry((pos, layer)).or_default();
            if v.len() <= slot {
                v.resize(slot + 1, (u32::MAX, 0.0));
            }
            v[slot] = (e, w);
        }
        for ((pos, layer), v) in &steps {
            if v.iter().any(|&(e, _)| e == u32::MAX) {
                return Err(Error::format(path, format!("token {pos} layer {layer}: a top-k slot is missing")));
            }
            let mut ids: Vec<u32> = v.iter().map(|&(e, _)| e).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != v.len() {
                return Err(Error::format(path, format!("token {pos} layer {layer}: an expert appears twice")));
            }
        }
        let n_tokens = steps.keys().map(|&(p, _)| p + 1).max().unwrap_or(0);
        if n_tokens == 0 {
            return Err(Error::format(path, "the trace holds no routing rows"));
        }
        Ok(RouteReplay { path: path.to_path_buf(), steps, n_tokens, n_prompt })
    }

    /// Tokens (prompt + decode) the trace covers.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }
}

impl RouteHook for RouteReplay {
    fn route(&self, layer: usize, pos: usize, _n_call: usize, route: &mut Route) -> Result<()> {
        let Some(v) = self.steps.get(&(pos, layer)) else {
            if pos < self.n_prompt {
                return Ok(());
            }
            return Err(Error::Invalid(format!(
                "{}: no routing for token {pos} of layer {layer} (the trace covers {} tokens): shorten the run",
                self.path.display(),
                self.n_tokens
            )));
        };
        route.experts.clear();
        route.weights.clear();
        for &(e, w) in v {
            route.experts.push(e);
            route.weights.push(w);
        }
        Ok(())
    }
}
