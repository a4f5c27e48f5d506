//! Every expert in RAM: the reference [`ExpertProvider`] that the streaming cache must match bit for bit.

use crate::formats::WeightIndex;
use crate::tensor::{AlignedBuf, QMatRef};
use crate::Result;

use super::{ExpertLayout, ExpertProvider, ExpertSet, ExpertWeights, ProjLayout};

/// One projection of every expert of a layer, stacked: `[n_expert * rows, cols]`.
struct Stacked {
    layout: ProjLayout,
    data: AlignedBuf,
}

impl Stacked {
    fn load(index: &WeightIndex, layout: &ProjLayout, progress: &mut dyn FnMut(u64)) -> Result<Stacked> {
        let per = layout.expert_bytes() as usize;
        let mut data = AlignedBuf::zeroed(per * layout.spans.len());
        for (e, span) in layout.spans.iter().enumerate() {
            index.read_at(span.file, span.offset, &mut data.as_mut_slice()[e * per..(e + 1) * per])?;
            progress(span.len);
        }
        Ok(Stacked { layout: layout.clone(), data })
    }

    fn expert(&self, e: usize) -> QMatRef<'_> {
        let per = self.layout.expert_bytes() as usize;
        QMatRef::new(
            self.layout.dtype,
            self.layout.rows,
            self.layout.cols,
            &self.data.as_slice()[e * per..(e + 1) * per],
        )
    }
}

/// All experts of all layers, read once at load.
pub struct ResidentExperts {
    layers: Vec<Option<[Stacked; 3]>>,
}

impl ResidentExperts {
    /// Reads every expert; `progress` is called with the bytes of each read.
    pub fn load(index: &WeightIndex, layout: &ExpertLayout, progress: &mut dyn FnMut(u64)) -> Result<Self> {
        let mut layers = Vec::with_capacity(layout.layers.len());
        for l in &layout.layers {
            layers.push(match l {
                None => None,
                Some(l) => Some([
                    Stacked::load(index, &l.gate, progress)?,
                    Stacked::load(index, &l.up, progress)?,
                    Stacked::load(index, &l.down, progress)?,
                ]),
            });
        }
        Ok(ResidentExperts { layers })
    }
}

struct ResidentSet<'a> {
    layer: &'a [Stacked; 3],
    ids: Vec<u32>,
    next: usize,
}

impl ExpertSet for ResidentSet<'_> {
    fn next(&mut self) -> Option<Result<(usize, ExpertWeights<'_>)>> {
        let i = self.next;
        let e = *self.ids.get(i)? as usize;
        self.next += 1;
        let [g, u, d] = self.layer;
        Some(Ok((i, ExpertWeights { gate: g.expert(e), up: u.expert(e), down: d.expert(e) })))
    }
}

impl ExpertProvider for ResidentExperts {
    fn acquire<'a>(&'a self, layer: usize, ids: &[u32]) -> Result<Box<dyn ExpertSet + 'a>> {
        let l = self.layers[layer].as_ref().expect("acquire on a layer without experts");
        Ok(Box::new(ResidentSet { layer: l, ids: ids.to_vec(), next: 0 }))
    }
}
