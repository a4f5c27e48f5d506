//! The expert store: reads one expert's three matrices from the model files into a cache slot.
//!
//! Files are opened a second time with `O_DIRECT` (falling back to buffered reads, then dropping the pages with
//! `posix_fadvise(DONTNEED)`, where a file system refuses it), so expert bytes never pile up in the page cache
//! that a memory cgroup also charges. Direct reads need 4 KiB-aligned offsets, lengths and buffers, so each
//! projection is read as the aligned range around it and the matrix is viewed at its offset inside the slot. An
//! MLX affine projection is three ranges (packed values, scales, biases), each read and placed the same way.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::budget::SlotClasses;
use super::io::{ReadReq, DIRECT_ALIGN};
use super::{ExpertLayout, ExpertWeights};
use crate::formats::{FileStamp, WeightIndex};
use crate::tensor::{PlanesRef, QMatRef};
use crate::{Error, Result};

/// Where one projection of one expert goes: the aligned file range read and the matrix's place in the slot.
#[derive(Clone, Copy, Debug)]
pub(super) struct Placement {
    pub file: usize,
    pub read_offset: u64,
    pub read_len: usize,
    pub slot_offset: usize,
    pub data_offset: usize,
    pub data_len: usize,
}

/// Most ranges one expert can take: three projections of up to three planes each.
const PARTS_MAX: usize = 9;

/// The placements of one expert's ranges, in layout order (gate, up, down; each projection's packed values,
/// then its scales and biases for an MLX affine one).
#[derive(Clone, Copy, Debug)]
pub(super) struct Placements {
    items: [Placement; PARTS_MAX],
    n: usize,
}

impl std::ops::Deref for Placements {
    type Target = [Placement];
    fn deref(&self) -> &[Placement] {
        &self.items[..self.n]
    }
}

impl<'a> IntoIterator for &'a Placements {
    type Item = &'a Placement;
    type IntoIter = std::slice::Iter<'a, Placement>;
    fn into_iter(self) -> Self::IntoIter {
        self.items[..self.n].iter()
    }
}

/// Reads single experts through the expert layout.
pub struct ExpertStore {
    layout: ExpertLayout,
    files: Vec<Arc<File>>,
    paths: Vec<Arc<PathBuf>>,
    /// What each file was when the index was built.
    meta: Vec<FileStamp>,
    /// Whether the files were opened with O_DIRECT.
    pub direct: bool,
    slot_bytes: usize,
    classes: SlotClasses,
}

fn align_down(x: u64) -> u64 {
    x / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64
}

fn align_up(x: usize) -> usize {
    x.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
}

impl ExpertStore {
    /// Opens the model files for direct reads and checks they are still the files the index was built from.
    pub fn open(index: &WeightIndex, layout: &ExpertLayout) -> Result<ExpertStore> {
        let mut files = Vec::new();
        let mut paths = Vec::new();
        let mut metas = Vec::new();
        let mut direct = true;
        for mf in &index.files {
            let f = match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&mf.path) {
                Ok(f) => f,
                Err(_) => {
                    direct = false;
                    File::open(&mf.path).map_err(|e| Error::io(&mf.path, e))?
                }
            };
            let meta = f.metadata().map_err(|e| Error::io(&mf.path, e))?;
            if let Some(change) = FileStamp::of(&meta).change_since(&mf.stamp) {
                return Err(Error::format(
                    &mf.path,
                    format!("changed since it was opened ({change}): the model file was replaced or rewritten"),
                ));
            }
            files.push(Arc::new(f));
            paths.push(Arc::new(mf.path.clone()));
            metas.push(mf.stamp);
        }
        let mut store = ExpertStore {
            layout: layout.clone(),
            files,
            paths,
            meta: metas,
            direct,
            slot_bytes: 0,
            classes: SlotClasses::uniform(&[], 0),
        };
        let layer_bytes: Vec<Option<u64>> = (0..layout.layers.len())
            .map(|l| {
                layout.layers[l].as_ref().map(|_| {
                    (0..layout.n_expert)
                        .map(|e| {
                            let p = store.placements(l, e);
                            p.last().map_or(0, |p| (p.slot_offset + p.read_len) as u64)
                        })
                        .max()
                        .unwrap_or(0)
                })
            })
            .collect();
        store.slot_bytes = layer_bytes.iter().flatten().copied().max().unwrap_or(0) as usize;
        store.classes = SlotClasses::from_layer_bytes(&layer_bytes);
        Ok(store)
    }

    pub fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    /// Bytes of the largest cache slot: enough for the aligned reads of any expert of any layer.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// The slot sizes the layers' experts need (each class's size holds the aligned reads of any expert of its
    /// layers).
    pub fn slot_classes(&self) -> &SlotClasses {
        &self.classes
    }

    pub(super) fn placements(&self, layer: usize, e: usize) -> Placements {
        let le = self.layout.layers[layer].as_ref().expect("a MoE layer");
        let empty = Placement { file: 0, read_offset: 0, read_len: 0, slot_offset: 0, data_offset: 0, data_len: 0 };
        let mut out = Placements { items: [empty; PARTS_MAX], n: 0 };
        let mut slot_offset = 0;
        for span in le.projs().into_iter().flat_map(|p| p.parts(e)) {
            let read_offset = align_down(span.offset);
            let delta = (span.offset - read_offset) as usize;
            let read_len = align_up(delta + span.len as usize);
            out.items[out.n] = Placement {
                file: span.file,
                read_offset,
                read_len,
                slot_offset,
                data_offset: slot_offset + delta,
                data_len: span.len as usize,
            };
            out.n += 1;
            slot_offset += read_len;
        }
        out
    }

    /// The reads that bring expert `e` of `layer` into the slot at `slot` (its class's size, 4 KiB aligned).
    pub fn read_reqs(&self, layer: usize, e: usize, slot: *mut u8) -> Vec<ReadReq> {
        self.placements(layer, e)
            .iter()
            .map(|p| ReadReq {
                file: Arc::clone(&self.files[p.file]),
                path: Arc::clone(&self.paths[p.file]),
                offset: p.read_offset,
                // SAFETY (of the pointer arithmetic): slot_offset + read_len <= slot_bytes by construction.
                dst: slot.wrapping_add(p.slot_offset),
                len: p.read_len,
                len_needed: p.data_offset - p.slot_offset + p.data_len,
                expected: self.meta[p.file],
            })
            .collect()
    }

    /// Bytes read from disk to bring expert `e` of `layer` into a slot (its three ranges, 4 KiB aligned).
    pub fn read_bytes(&self, layer: usize, e: usize) -> u64 {
        self.placements(layer, e).iter().map(|p| p.read_len as u64).sum()
    }

    /// A read of `len` bytes at `offset` of file `file` into `dst`, of which the first `len_needed` must arrive.
    pub(super) fn read_req(&self, file: usize, offset: u64, dst: *mut u8, len: usize, len_needed: usize) -> ReadReq {
        ReadReq {
            file: Arc::clone(&self.files[file]),
            path: Arc::clone(&self.paths[file]),
            offset,
            dst,
            len,
            len_needed,
            expected: self.meta[file],
        }
    }

    /// The matrices of expert `e` of `layer` in a slot filled by [`ExpertStore::read_reqs`].
    pub fn view<'a>(&self, layer: usize, e: usize, slot: &'a [u8]) -> ExpertWeights<'a> {
        let le = self.layout.layers[layer].as_ref().expect("a MoE layer");
        let p = self.placements(layer, e);
        let bytes = |i: usize| &slot[p[i].data_offset..p[i].data_offset + p[i].data_len];
        // The first placement of each projection: gate's is 0, then each projection takes its parts.
        let (g0, u0) = (0, le.gate.n_parts());
        let d0 = u0 + le.up.n_parts();
        let m = |i: usize, pl: &crate::experts::ProjLayout| match &pl.planes {
            None => QMatRef::new(pl.dtype, pl.rows, pl.cols, bytes(i)),
            Some(ps) => QMatRef::affine(
                pl.rows,
                pl.cols,
                bytes(i),
                PlanesRef { format: ps.format, scales: bytes(i + 1), biases: bytes(i + 2) },
            ),
        };
        ExpertWeights { gate: m(g0, &le.gate), up: m(u0, &le.up), down: m(d0, &le.down) }
    }

    /// Drops cached pages of the model files (after buffered reads, where O_DIRECT was refused).
    pub fn drop_page_cache(&self) {
        if !self.direct {
            for f in &self.files {
                use std::os::fd::AsRawFd;
                // SAFETY: a valid open descriptor; the call only advises the kernel.
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            }
        }
    }
}
