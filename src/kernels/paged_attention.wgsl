// Paged attention for one head and one query, over the blocks of one slab.
//
// Each token's KV is `head_dim` keys then `head_dim` values (f32) at
// `block_offsets[b] + t * 2 * head_dim` (in f32 units) of the slab. The
// result is a partial softmax (its running max, its sum of exponentials and
// the weighted sum of values), so the host can merge the partials of a
// session whose blocks lie in several slabs (as in split-K flash decoding).

struct Params {
    head_dim: u32,
    blocks: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> slab: array<f32>;
@group(0) @binding(1) var<storage, read> block_offsets: array<u32>;
@group(0) @binding(2) var<storage, read> block_tokens: array<u32>;
@group(0) @binding(3) var<storage, read> query: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

@compute @workgroup_size(1)
fn main() {
    let d = params.head_dim;
    var m = -3.0e38;
    var l = 0.0;
    for (var i = 0u; i < d; i = i + 1u) {
        partial[2u + i] = 0.0;
    }
    for (var b = 0u; b < params.blocks; b = b + 1u) {
        for (var t = 0u; t < block_tokens[b]; t = t + 1u) {
            let base = block_offsets[b] + t * 2u * d;
            var score = 0.0;
            for (var i = 0u; i < d; i = i + 1u) {
                score = score + query[i] * slab[base + i];
            }
            score = score * params.scale;
            let m_new = max(m, score);
            let correction = exp(m - m_new);
            let p = exp(score - m_new);
            l = l * correction + p;
            for (var i = 0u; i < d; i = i + 1u) {
                partial[2u + i] = partial[2u + i] * correction + p * slab[base + d + i];
            }
            m = m_new;
        }
    }
    partial[0] = m;
    partial[1] = l;
}
