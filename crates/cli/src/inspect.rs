//! `flash-moe inspect`: what a model file holds, without reading its weights.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use engine::formats::{Metadata, WeightIndex};

use crate::mib;

#[derive(Args)]
pub struct InspectArgs {
    /// A GGUF file, a .safetensors file or a Hugging Face model directory [default: the bundled model].
    #[arg(default_value_os_t = crate::bundled_model(), hide_default_value = true)]
    pub model: PathBuf,
    /// Also list every tensor.
    #[arg(long)]
    pub tensors: bool,
}

/// Whether a tensor holds routed experts (GGUF `*_exps`, safetensors `experts.N.` / `switch_mlp`).
pub fn is_expert_tensor(name: &str) -> bool {
    name.contains("_exps.") || name.contains(".experts.") || name.contains("switch_mlp")
}

pub fn main(a: InspectArgs) -> Result<()> {
    let index = WeightIndex::open(&a.model)?;
    let arch = engine::models::architecture(&index)?;
    println!("model         {}", index.path.display());
    for f in &index.files {
        println!("file          {} ({:.1} MiB)", f.path.display(), mib(f.size));
    }
    println!("architecture  {arch}");
    match &index.metadata {
        Metadata::Gguf(m) => {
            println!("format        GGUF v{}", m.version);
            for (k, v) in m.iter() {
                let s = v.to_string();
                let s = if s.len() > 100 {
                    format!("{}... ({} chars)", &s[..s.floor_char_boundary(100)], s.len())
                } else {
                    s
                };
                println!("  {k} = {s}");
            }
        }
        Metadata::HfConfig { config, dir } => {
            match config.get("quantization") {
                Some(q) => println!(
                    "format        MLX safetensors ({}, affine {} bits in groups of {})",
                    dir.display(),
                    q.get("bits").map_or("?".into(), |b| b.to_string()),
                    q.get("group_size").map_or("?".into(), |g| g.to_string())
                ),
                None => println!("format        safetensors ({})", dir.display()),
            }
            if let Some(obj) = config.as_object() {
                for (k, v) in obj {
                    println!("  {k} = {v}");
                }
            }
        }
    }

    let mut by_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    let (mut expert_bytes, mut other_bytes) = (0u64, 0u64);
    for t in &index.tensors {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.len;
        if is_expert_tensor(&t.name) {
            expert_bytes += t.len;
        } else {
            other_bytes += t.len;
        }
    }
    println!("tensors       {}", index.tensors.len());
    for (name, (n, bytes)) in &by_type {
        println!("  {name:<6} {n:6} tensors {:10.2} MiB", mib(*bytes));
    }
    let total = (expert_bytes + other_bytes).max(1);
    println!(
        "experts       {:.2} MiB ({:.1}%)  (streamed from disk)",
        mib(expert_bytes),
        100.0 * expert_bytes as f64 / total as f64
    );
    println!(
        "other         {:.2} MiB ({:.1}%)  (resident)",
        mib(other_bytes),
        100.0 * other_bytes as f64 / total as f64
    );
    match engine::models::describe(&index) {
        Ok(d) => {
            println!("family        {}", d.family.name());
            for (label, text) in d.lines {
                println!("{label:<13} {text}");
            }
            for n in d.notes {
                println!("note          {n}");
            }
        }
        Err(e) => println!("family        not runnable by flash-moe: {e}"),
    }
    if a.tensors {
        for t in &index.tensors {
            println!(
                "  {:<48} {:<5} {:?} file {} offset {} len {}",
                t.name,
                t.dtype.name(),
                t.shape,
                t.file,
                t.offset,
                t.len
            );
        }
    }
    Ok(())
}
