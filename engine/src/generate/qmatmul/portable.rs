//! The block layouts in plain code: every type unpacked 32 weights at a time to small
//! integers and their scales, the form both the scalar dot product and the dequantisation
//! use. It is the fallback off x86-64 (or without AVX2) and the reference the AVX2 kernels are
//! tested against.

use super::{BlockType, QK, QuantRows, f16_to_f32, k_scales};

/// 32 weights: weight `i` = `scale[i / 16] · q[i] + min`. Only Q6_K has two scales; every
/// other type repeats its one.
pub(super) struct Unpacked {
    pub(super) q: [i8; QK],
    pub(super) scale: [f32; 2],
    pub(super) min: f32,
}

impl Unpacked {
    fn uniform(q: [i8; QK], scale: f32, min: f32) -> Self {
        Self {
            q,
            scale: [scale; 2],
            min,
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The 32-weight types' values: nibble `i` (low halves first), topped by bit `i` of `fifth`
/// as its fifth bit, less `offset`.
fn nibbles(q: &mut [i8; QK], qs: &[u8], fifth: u32, offset: i8) {
    for i in 0..16 {
        let lo = (qs[i] & 0x0f) | ((fifth >> i) as u8 & 1) << 4;
        let hi = (qs[i] >> 4) | ((fifth >> (i + 16)) as u8 & 1) << 4;
        q[i] = lo as i8 - offset;
        q[i + 16] = hi as i8 - offset;
    }
}

/// The 32 weights from `b · 32` on of a row of `kind` blocks.
///
/// Every scale is formed exactly as candle's dequantisation forms it (`d · sc` before the
/// weight multiplies it, the min negated rather than subtracted), so `scale · q + min` gives
/// its values to the bit.
pub(super) fn unpack(kind: BlockType, row: &[u8], b: usize) -> Unpacked {
    let per = kind.width() / QK;
    let blk = &row[b / per * kind.bytes()..][..kind.bytes()];
    // The 32-weight run within a super-block.
    let j = b % per;
    let mut q = [0i8; QK];
    match kind {
        BlockType::Q4_0 => {
            nibbles(&mut q, &blk[2..18], 0, 8);
            Unpacked::uniform(q, f16_at(blk, 0), 0.0)
        }
        BlockType::Q4_1 => {
            nibbles(&mut q, &blk[4..20], 0, 0);
            Unpacked::uniform(q, f16_at(blk, 0), f16_at(blk, 2))
        }
        BlockType::Q5_0 => {
            nibbles(&mut q, &blk[6..22], u32_at(blk, 2), 16);
            Unpacked::uniform(q, f16_at(blk, 0), 0.0)
        }
        BlockType::Q5_1 => {
            nibbles(&mut q, &blk[8..24], u32_at(blk, 4), 0);
            Unpacked::uniform(q, f16_at(blk, 0), f16_at(blk, 2))
        }
        BlockType::Q8_0 => {
            for (q, &v) in q.iter_mut().zip(&blk[2..34]) {
                *q = v as i8;
            }
            Unpacked::uniform(q, f16_at(blk, 0), 0.0)
        }
        BlockType::Q4K | BlockType::Q5K => {
            let (sc, m) = k_scales(blk[4..16].try_into().unwrap_or(&[0; 12]));
            let (nibbles, fifth) = if kind == BlockType::Q4K {
                (&blk[16..144], None)
            } else {
                (&blk[48..176], Some(&blk[16..48]))
            };
            let run = &nibbles[j / 2 * 32..][..32];
            for (i, q) in q.iter_mut().enumerate() {
                let nibble = if j.is_multiple_of(2) {
                    run[i] & 0x0f
                } else {
                    run[i] >> 4
                };
                let high = fifth.map_or(0, |h| ((h[i] >> j) & 1) << 4);
                *q = (nibble | high) as i8;
            }
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            Unpacked::uniform(q, d * f32::from(sc[j]), -(dmin * f32::from(m[j])))
        }
        BlockType::Q6K => {
            let (half, k) = (j / 4, j % 4);
            let ql = &blk[64 * half + 32 * (k % 2)..][..32];
            let qh = &blk[128 + 32 * half..][..32];
            for (i, q) in q.iter_mut().enumerate() {
                let low = if k < 2 { ql[i] & 0x0f } else { ql[i] >> 4 };
                let high = (qh[i] >> (2 * k)) & 3;
                *q = (low | (high << 4)) as i8 - 32;
            }
            let d = f16_at(blk, 208);
            let sc = |n: usize| d * f32::from(blk[192 + n] as i8);
            Unpacked {
                q,
                scale: [sc(2 * j), sc(2 * j + 1)],
                min: 0.0,
            }
        }
    }
}

/// One weight row against every activation row: per block, two exact integer sums (one per
/// half, for Q6_K's scales) scaled in f32, plus the min times the activations' sum. Each
/// block is unpacked once for all rows.
pub(super) fn dot_rows(kind: BlockType, wrow: &[u8], x: &QuantRows, out: &mut [f32]) {
    let nb = x.cols / QK;
    let sums = kind.sums(x);
    out.fill(0.0);
    for b in 0..nb {
        let u = unpack(kind, wrow, b);
        for (r, acc) in out.iter_mut().enumerate() {
            let xi = r * nb + b;
            let xq = &x.q[xi * QK..(xi + 1) * QK];
            let half = |h: usize| -> i32 {
                (16 * h..16 * h + 16)
                    .map(|i| i32::from(u.q[i]) * i32::from(xq[i]))
                    .sum()
            };
            *acc += x.d[xi] * (u.scale[0] * half(0) as f32 + u.scale[1] * half(1) as f32);
            *acc += u.min * sums[xi];
        }
    }
}
