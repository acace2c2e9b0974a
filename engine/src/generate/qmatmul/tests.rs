//! The kernels against each other, against candle's dequantised weights, and the
//! quantisation and f16 helpers they rest on.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::*;

const ALL: [BlockType; 8] = [
    BlockType::Q4_0,
    BlockType::Q4_1,
    BlockType::Q5_0,
    BlockType::Q5_1,
    BlockType::Q8_0,
    BlockType::Q4K,
    BlockType::Q5K,
    BlockType::Q6K,
];

fn ggml(kind: BlockType) -> GgmlDType {
    match kind {
        BlockType::Q4_0 => GgmlDType::Q4_0,
        BlockType::Q4_1 => GgmlDType::Q4_1,
        BlockType::Q5_0 => GgmlDType::Q5_0,
        BlockType::Q5_1 => GgmlDType::Q5_1,
        BlockType::Q8_0 => GgmlDType::Q8_0,
        BlockType::Q4K => GgmlDType::Q4K,
        BlockType::Q5K => GgmlDType::Q5K,
        BlockType::Q6K => GgmlDType::Q6K,
    }
}

/// Where a block keeps its f16 fields (scales, mins).
fn f16_fields(kind: BlockType) -> &'static [usize] {
    match kind {
        BlockType::Q4_0 | BlockType::Q5_0 | BlockType::Q8_0 => &[0],
        BlockType::Q4_1 | BlockType::Q5_1 | BlockType::Q4K | BlockType::Q5K => &[0, 2],
        BlockType::Q6K => &[208],
    }
}

fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// `bytes` as a matrix, in an anonymous map standing in for the file.
fn matrix(bytes: &[u8], kind: BlockType, rows: usize, cols: usize) -> MappedMatrix {
    let mut map = memmap2::MmapMut::map_anon(bytes.len()).unwrap();
    map.copy_from_slice(bytes);
    let map = Arc::new(map.make_read_only().unwrap());
    MappedMatrix::new(map, 0..bytes.len(), kind, rows, cols).unwrap()
}

/// A `rows × cols` matrix of `kind` quantised by candle from random values (each row with
/// its own magnitude and offset, so scales and mins vary), and candle's dequantisation of it.
fn quantised_by_candle(kind: BlockType, rows: usize, cols: usize) -> (MappedMatrix, Vec<f32>) {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d ^ kind.bytes() as u64);
    let mut unit = move || (next() % 20_001) as f32 / 10_000.0 - 1.0;
    let mut w = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let (scale, offset) = (0.01 + unit().abs() * 0.2, unit() * 0.02);
        w.extend((0..cols).map(|_| offset + scale * unit()));
    }
    let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, ggml(kind)).unwrap();
    let want = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (matrix(&q.data().unwrap(), kind, rows, cols), want)
}

fn activations(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut next = xorshift(seed);
    // Not centred, so the blocks' sums (the mins' partners) are far from zero.
    (0..rows * cols)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 0.7)
        .collect()
}

#[test]
fn f16_conversion_covers_every_class() {
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x0000), 0.0);
    assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x7bff), 65504.0);
    assert!(f16_to_f32(0x7c00).is_infinite());
    assert!(f16_to_f32(0x7e00).is_nan());
    assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    // Rounding to half: exact values survive, ties go to even, tiny values go subnormal.
    for h in [0x3c00u16, 0xc000, 0x0001, 0x03ff, 0x7bff, 0x3555] {
        assert_eq!(f32_to_f16(f16_to_f32(h)), h);
    }
    assert_eq!(
        f32_to_f16(1.0 + 2f32.powi(-11)),
        0x3c00,
        "tie to even (down)"
    );
    assert_eq!(
        f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)),
        0x3c02,
        "tie to even (up)"
    );
    assert_eq!(f32_to_f16(65520.0), 0x7c00, "overflow");
    assert_eq!(
        f32_to_f16(2f32.powi(-25)),
        0x0000,
        "half the smallest subnormal, to even"
    );
    assert_eq!(f32_to_f16(3.0 * 2f32.powi(-25)), 0x0002);
}

/// Random blocks of each type (random payload bytes, scales in a sane range): the dispatched
/// kernel (AVX2 here) and the portable one agree (integer sums are exact; only the f32
/// accumulation order differs), for every tile height.
#[test]
fn dispatched_and_portable_kernels_agree() {
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let cols = 512;
    for kind in ALL {
        let mut row: Vec<u8> = (0..cols / kind.width() * kind.bytes())
            .map(|_| next() as u8)
            .collect();
        for blk in row.chunks_exact_mut(kind.bytes()) {
            for (n, &at) in f16_fields(kind).iter().enumerate() {
                // Scales between 2^-8 and 2^-5, the second field (a min) of either sign.
                let sign = if n == 1 && next().is_multiple_of(2) {
                    0x8000
                } else {
                    0
                };
                let h: u16 = sign | (0x1c00 + (next() % 0x0c00) as u16);
                blk[at..at + 2].copy_from_slice(&h.to_le_bytes());
            }
        }
        for rows in [1, 2, 7] {
            let x = activations(rows, cols, next());
            let mut q = QuantRows::default();
            q.quantize(&x, cols);
            let (mut got, mut want) = (vec![0f32; rows], vec![0f32; rows]);
            dot_rows(kind, &row, &q, &mut got);
            portable::dot_rows(kind, &row, &q, &mut want);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{kind:?} × {rows}: {got:?} vs {want:?}"
                );
            }
        }
    }
}

/// Every type's dot product against the plain f64 dot of candle's dequantised weights with
/// the dequantised activations: only the f32 rounding of scales and sums separates them (and,
/// for Q4_1 and Q5_1, the f16 rounding of the activations' sums).
#[test]
fn kernels_match_dequantised_weights() {
    let (rows, cols, m) = (5, 512, 3);
    for kind in ALL {
        let (w, dense) = quantised_by_candle(kind, rows, cols);
        let x = activations(m, cols, 0x1234_5678 ^ kind.bytes() as u64);
        let mut q = QuantRows::default();
        q.quantize(&x, cols);
        let xdq: Vec<f64> =
            q.q.iter()
                .enumerate()
                .map(|(i, &v)| f64::from(v) * f64::from(q.d[i / QK]))
                .collect();
        let (mut got, mut scratch) = (Vec::new(), Vec::new());
        w.matmul(&q, &mut got, &mut scratch);
        // Measured: below 1e-7, and 7e-5 with the f16 sums.
        let tolerance = if matches!(kind, BlockType::Q4_1 | BlockType::Q5_1) {
            5e-4
        } else {
            1e-6
        };
        let mut worst = 0f64;
        for r in 0..m {
            for j in 0..rows {
                let (wr, xr) = (&dense[j * cols..][..cols], &xdq[r * cols..][..cols]);
                let want: f64 = wr.iter().zip(xr).map(|(&a, &b)| f64::from(a) * b).sum();
                let size: f64 = wr
                    .iter()
                    .zip(xr)
                    .map(|(&a, &b)| (f64::from(a) * b).abs())
                    .sum();
                let err = (f64::from(got[r * rows + j]) - want).abs() / size;
                worst = worst.max(err);
            }
        }
        eprintln!("{kind:?}: worst error {worst:e} of Σ|w·x|");
        assert!(worst <= tolerance, "{kind:?}: error {worst:e} of Σ|w·x|");
    }
}

/// The embedding lookup gives candle's dequantisation to the bit.
#[test]
fn dequantize_row_matches_candle() {
    for kind in ALL {
        let (rows, cols) = (3, 768);
        let (w, want) = quantised_by_candle(kind, rows, cols);
        let mut row = vec![0f32; cols];
        for j in 0..rows {
            w.dequantize_row(j, &mut row);
            assert_eq!(row, want[j * cols..][..cols], "{kind:?} row {j}");
        }
    }
}

/// Rows that do not fill whole blocks are left to candle.
#[test]
fn partial_blocks_are_not_mapped() {
    let map = memmap2::MmapMut::map_anon(4 * 144).unwrap();
    let map = Arc::new(map.make_read_only().unwrap());
    assert!(MappedMatrix::new(map.clone(), 0..4 * 144, BlockType::Q4K, 2, 512).is_some());
    // 640 weights: 20 blocks of 32, but two and a half super-blocks.
    assert!(MappedMatrix::new(map.clone(), 0..360, BlockType::Q4K, 1, 640).is_none());
    assert!(MappedMatrix::new(map, 0..4 * 144, BlockType::Q4K, 1, 1024).is_some());
}

#[test]
fn rounding_takes_halves_away_from_zero() {
    for x in [
        0.0f32, 0.49999997, 0.5, 1.5, 2.5, -0.5, -1.5, -2.4999998, 126.5, -127.49, 3e9, -3e9, 1e-30,
    ] {
        assert_eq!(round_away(x), x.round() as i32, "{x}");
    }
    assert_eq!(round_away(f32::NAN), 0);
    let mut state = 0x1234_5678_9abc_def1u64;
    for _ in 0..100_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let x = f32::from_bits(state as u32 & 0x7fff_ffff) % 256.0 - 128.0;
        if x.is_finite() {
            assert_eq!(round_away(x), x.round() as i32, "{x}");
        }
    }
}

#[test]
fn quantisation_keeps_values_within_half_a_step() {
    let x: Vec<f32> = (0..64)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37)
        .collect();
    let mut q = QuantRows::default();
    q.quantize(&x, 64);
    for (b, xb) in x.chunks(QK).enumerate() {
        let mut sum = 0.0;
        for (i, v) in xb.iter().enumerate() {
            let back = f32::from(q.q[b * QK + i]) * q.d[b];
            // Half a step, plus the f16 rounding of the scale (2^-11 relative) times 127.
            assert!(
                (back - v).abs() <= q.d[b] * (0.5 + 127.0 / 2048.0),
                "{back} vs {v}"
            );
            sum += f32::from(q.q[b * QK + i]);
        }
        assert!((q.s[b] - q.d[b] * sum).abs() <= (q.d[b] * sum).abs() / 512.0 + 1e-6);
        assert_eq!(q.sum[b], q.d[b] * sum);
    }
}

/// The repacked AVX-512 VNNI kernel against the row kernels, through `matmul_many` (so the
/// panels' scatter to the outputs is checked too): every type, row counts that leave the last
/// panel partly empty, every activation tile height, an odd number of blocks per row (the
/// symmetric types keep two blocks' scales to a line), and two matrices of different types
/// sharing one pass. Skipped (and said so) on CPUs without AVX-512 VNNI.
#[test]
fn repacked_panels_match_the_row_kernels() {
    if !crate::simd::avx512_vnni() {
        eprintln!("no AVX-512 VNNI here: the repacked kernel is not used, nothing to check");
        return;
    }
    for cols in [512, 96] {
        let kinds: Vec<BlockType> = ALL.into_iter().filter(|k| cols % k.width() == 0).collect();
        for (n, &kind) in kinds.iter().enumerate() {
            let other = kinds[(n + 3) % kinds.len()];
            let (rows_a, rows_b) = (37, 16);
            let (a, _) = quantised_by_candle(kind, rows_a, cols);
            let (b, _) = quantised_by_candle(other, rows_b, cols);
            let (mut pa, _) = quantised_by_candle(kind, rows_a, cols);
            let (mut pb, _) = quantised_by_candle(other, rows_b, cols);
            assert!(pa.repack() > 0 && pb.repack() > 0);
            // The outputs are reused from call to call, as a workspace's are: larger, smaller
            // and of the same size as before, nothing stale may remain.
            let (mut ga, mut gb) = (vec![], vec![]);
            for m in [1, 3, 4, 9, 15, 15, 2] {
                let x = activations(
                    m,
                    cols,
                    0x5151 ^ (m as u64) << 8 ^ n as u64 ^ ga.len() as u64,
                );
                let mut q = QuantRows::default();
                q.quantize(&x, cols);
                let (mut wa, mut wb) = (vec![], vec![]);
                let mut scratch = Vec::new();
                matmul_many(&[&a, &b], &q, &mut [&mut wa, &mut wb], &mut scratch);
                matmul_many(&[&pa, &pb], &q, &mut [&mut ga, &mut gb], &mut scratch);
                for (got, want, k) in [(&ga, &wa, kind), (&gb, &wb, other)] {
                    assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(want.iter()) {
                        assert!(
                            (g - w).abs() <= 2e-4 * (1.0 + w.abs()),
                            "{k:?} × {m} rows, {cols} columns: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}

/// The dispatched block quantiser (AVX2 here) gives the scalar one's bytes, max and sums,
/// ties and near-ties included (blocks whose max is 127, so values are their own quotients).
#[test]
fn vector_quantisation_matches_the_scalar_one() {
    let mut next = xorshift(0xdead_beef_cafe_f00d);
    let mut blocks: Vec<Vec<f32>> = vec![vec![0.0; QK]];
    let mut tie = vec![127.0f32; QK];
    for (i, v) in tie.iter_mut().enumerate().skip(1) {
        let base = (i as f32 - 16.0) * 3.0;
        *v = base + [0.5, -0.5, 0.49999997, -0.49999997, 0.50000006][i % 5];
    }
    blocks.push(tie);
    for _ in 0..2000 {
        let scale = 10f32.powi((next() % 9) as i32 - 4);
        blocks.push(
            (0..QK)
                .map(|_| ((next() % 200_001) as f32 / 100_000.0 - 1.0) * scale)
                .collect(),
        );
    }
    for xb in &blocks {
        let (mut got, mut want) = ([0i8; QK], [0i8; QK]);
        let g = quantize_block(xb, &mut got);
        let w = quantize_block_scalar(xb, &mut want);
        assert_eq!((got, g), (want, w), "{xb:?}");
    }
}

/// Repacked weights take the file's bits: every 32-weight type its file's bytes per weight,
/// the K-quants theirs but for the sub-block scales unpacked to a byte (decode reads every
/// weight once per token, so its time is these bytes). Packing itself is plain code, so this
/// runs on every x86-64 CPU, not only where the kernel that reads the panels does.
#[cfg(target_arch = "x86_64")]
#[test]
fn repacked_matrices_keep_the_files_size() {
    let (rows, cols) = (32, 1024);
    for kind in ALL {
        let (m, _) = quantised_by_candle(kind, rows, cols);
        let file = rows * cols / kind.width() * kind.bytes();
        let packed = super::packed::Packed::new(kind, m.bytes(), rows, cols).size();
        // Q4_K and Q5_K: 8 bytes of 6-bit scales become 16; Q6_K: the same 16.
        let extra = match kind {
            BlockType::Q4K | BlockType::Q5K => rows * cols / 256 * 4,
            BlockType::Q6K => rows * cols / 256 * 2,
            BlockType::Q4_0
            | BlockType::Q4_1
            | BlockType::Q5_0
            | BlockType::Q5_1
            | BlockType::Q8_0 => 0,
        };
        assert_eq!(packed, file + extra, "{kind:?}");
    }
}

/// The dispatched quantiser (AVX2 with F16C's rounding here) fills every buffer with the
/// portable path's values, to the bit.
#[test]
fn dispatched_quantisation_fills_what_the_portable_one_does() {
    let x = activations(7, 256, 0xf00d);
    let mut fast = QuantRows::default();
    fast.quantize(&x, 256);
    let n = x.len() / QK;
    let (mut q, mut d, mut s, mut sum, mut halves) = (
        vec![0i8; x.len()],
        vec![0f32; n],
        vec![0f32; n],
        vec![0f32; n],
        vec![0i32; 2 * n],
    );
    let run = BlockRun {
        x: &x,
        q: &mut q,
        d: &mut d,
        s: &mut s,
        sum: &mut sum,
        halves: &mut halves,
    };
    fill_blocks_with(run, quantize_block_scalar, round_f16);
    assert_eq!(fast.q, q);
    assert_eq!(fast.d, d);
    assert_eq!(fast.s, s);
    assert_eq!(fast.sum, sum);
    assert_eq!(fast.halves, halves);
}
