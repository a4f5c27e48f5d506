//! Every expert in RAM: the reference [`ExpertProvider`] that the streaming cache must match bit for bit.

use crate::formats::WeightIndex;
use crate::tensor::{AlignedBuf, PlanesRef, QMatRef};
use crate::Result;

use super::{ExpertLayout, ExpertProvider, ExpertSet, ExpertSpan, ExpertWeights, ProjLayout};

/// One projection of every expert of a layer, stacked: `[n_expert * rows, cols]` (and, for an MLX affine
/// projection, its scales and biases stacked the same way).
struct Stacked {
    layout: ProjLayout,
    data: AlignedBuf,
    planes: Option<(AlignedBuf, AlignedBuf)>,
}

/// The spans of every expert read one after the other into one buffer; spans that follow each other in a file (a
/// GGUF layer's experts are one tensor) in one read, past the page cache with `direct`.
fn read_stacked(
    index: &WeightIndex,
    spans: &[ExpertSpan],
    direct: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<AlignedBuf> {
    let per = spans.first().map_or(0, |s| s.len) as usize;
    let mut data = AlignedBuf::zeroed(per * spans.len());
    let mut e = 0;
    while e < spans.len() {
        let mut k = e + 1;
        while k < spans.len()
            && spans[k].file == spans[e].file
            && spans[k].len == per as u64
            && spans[k].offset == spans[k - 1].offset + per as u64
        {
            k += 1;
        }
        index.read_large(spans[e].file, spans[e].offset, &mut data.as_mut_slice()[e * per..k * per], direct)?;
        progress((k - e) as u64 * per as u64);
        e = k;
    }
    Ok(data)
}

impl Stacked {
    fn load(index: &WeightIndex, layout: &ProjLayout, direct: bool, progress: &mut dyn FnMut(u64)) -> Result<Stacked> {
        let data = read_stacked(index, &layout.spans, direct, progress)?;
        let planes = match &layout.planes {
            Some(p) => Some((
                read_stacked(index, &p.scales, direct, progress)?,
                read_stacked(index, &p.biases, direct, progress)?,
            )),
            None => None,
        };
        Ok(Stacked { layout: layout.clone(), data, planes })
    }

    fn expert(&self, e: usize) -> QMatRef<'_> {
        let l = &self.layout;
        fn slice(buf: &AlignedBuf, e: usize, per: u64) -> &[u8] {
            let per = per as usize;
            &buf.as_slice()[e * per..(e + 1) * per]
        }
        let data = slice(&self.data, e, l.spans[0].len);
        match (&l.planes, &self.planes) {
            (Some(p), Some((s, b))) => QMatRef::affine(
                l.rows,
                l.cols,
                data,
                PlanesRef {
                    format: p.format,
                    scales: slice(s, e, p.scales[0].len),
                    biases: slice(b, e, p.biases[0].len),
                },
            ),
            _ => QMatRef::new(l.dtype, l.rows, l.cols, data),
        }
    }
}

/// All experts of all layers, read once at load.
pub struct ResidentExperts {
    layers: Vec<Option<[Stacked; 3]>>,
}

impl ResidentExperts {
    /// Reads every expert (past the page cache with `direct`); `progress` is called with the bytes of each read.
    pub fn load(
        index: &WeightIndex,
        layout: &ExpertLayout,
        direct: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(layout.layers.len());
        for l in &layout.layers {
            layers.push(match l {
                None => None,
                Some(l) => Some([
                    Stacked::load(index, &l.gate, direct, progress)?,
                    Stacked::load(index, &l.up, direct, progress)?,
                    Stacked::load(index, &l.down, direct, progress)?,
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

    /// Every expert is in memory: the next ones `admit` accepts.
    fn next_group(&mut self, admit: &mut dyn FnMut(usize) -> bool) -> Option<Result<Vec<(usize, ExpertWeights<'_>)>>> {
        if self.next >= self.ids.len() {
            return None;
        }
        admit(self.next);
        let mut end = self.next + 1;
        while end < self.ids.len() && admit(end) {
            end += 1;
        }
        let [g, u, d] = self.layer;
        let group = (self.next..end)
            .map(|i| {
                let e = self.ids[i] as usize;
                (i, ExpertWeights { gate: g.expert(e), up: u.expert(e), down: d.expert(e) })
            })
            .collect();
        self.next = end;
        Some(Ok(group))
    }
}

impl ExpertProvider for ResidentExperts {
    fn acquire<'a>(&'a self, layer: usize, ids: &[u32]) -> Result<Box<dyn ExpertSet + 'a>> {
        let l = self.layers[layer].as_ref().expect("acquire on a layer without experts");
        Ok(Box::new(ResidentSet { layer: l, ids: ids.to_vec(), next: 0 }))
    }
}
