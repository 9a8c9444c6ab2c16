//! Canonical, length-limited (11 bits) Huffman coding of bytes in four streams.
//!
//! The body format is specified in [`crate::planes_codec`]. Encoding counts each
//! quarter's bytes, so every stream's exact size is known before a bit is written, and
//! codes the four quarters in lock-step; decoding reads 64 bits per refill, makes five
//! lookups per refill in a `2^11`-entry table whose entries hold every whole code (up
//! to three) the 11 bits start with, and runs the four streams in lock-step too, so the
//! core overlaps four independent dependency chains; the last symbols of each stream
//! are resolved one lookup per symbol.
//! Lengths over 11 bits are avoided by halving the frequencies and rebuilding the tree,
//! which costs little because only very rare symbols are affected.

/// Longest code; bounds the decode table to `2^11` entries (4 KiB, in L1).
pub(crate) const MAX_CODE_LEN: u32 = 11;
const TABLE_BITS_MASK: u64 = (1 << MAX_CODE_LEN) - 1;
const TABLE_SIZE: usize = 1 << MAX_CODE_LEN;
const STREAMS: usize = 4;
/// Symbols decoded per 64-bit refill: 5 × 11 bits fit in the 57 bits a refill guarantees.
const PER_REFILL: usize = 5;

/// Byte frequencies.
pub(crate) type Histogram = [u32; 256];

/// Counts bytes, with four sub-histograms so repeated bytes do not serialise on one counter.
pub(crate) fn histogram(data: &[u8]) -> Histogram {
    let mut h = [[0u32; 256]; 4];
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h[0][usize::from(c[0])] += 1;
        h[1][usize::from(c[1])] += 1;
        h[2][usize::from(c[2])] += 1;
        h[3][usize::from(c[3])] += 1;
    }
    for &b in chunks.remainder() {
        h[0][usize::from(b)] += 1;
    }
    let mut out = [0u32; 256];
    for (i, o) in out.iter_mut().enumerate() {
        *o = h[0][i] + h[1][i] + h[2][i] + h[3][i];
    }
    out
}

/// Order-0 entropy of `hist` in bytes, rounded up: a lower bound on the coded size.
pub(crate) fn entropy_bytes(hist: &Histogram) -> usize {
    let total: u64 = hist.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return 0;
    }
    let t = total as f64;
    let bits: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let c = f64::from(c);
            c * (t / c).log2()
        })
        .sum();
    (bits / 8.0).ceil() as usize
}

/// Code lengths (at most [`MAX_CODE_LEN`]) for the symbols present in `hist`.
///
/// Always yields a complete code of at least two symbols (a lone symbol gets a partner),
/// so any bit pattern decodes. When plain Huffman exceeds the limit, frequencies are
/// halved (never below 1) and the tree rebuilt, which flattens the rare tail.
fn code_lengths(hist: &Histogram) -> [u8; 256] {
    let mut freqs: Vec<(u64, u8)> = (0..=255u8)
        .filter(|&s| hist[usize::from(s)] > 0)
        .map(|s| (u64::from(hist[usize::from(s)]), s))
        .collect();
    match freqs.as_slice() {
        [] => freqs.extend([(1, 0), (1, 1)]),
        [(_, s)] => {
            let partner = s ^ 1;
            freqs.push((1, partner));
        }
        _ => {}
    }
    loop {
        let lens = huffman_lengths(&freqs);
        if lens.iter().all(|&l| u32::from(l) <= MAX_CODE_LEN) {
            let mut out = [0u8; 256];
            for (&(_, s), &l) in freqs.iter().zip(&lens) {
                out[usize::from(s)] = l;
            }
            return out;
        }
        for f in &mut freqs {
            f.0 = (f.0 >> 1).max(1);
        }
    }
}

/// Unlimited Huffman code lengths for `freqs` (at least two entries), deterministic.
fn huffman_lengths(freqs: &[(u64, u8)]) -> Vec<u8> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    let n = freqs.len();
    // Nodes 0..n are leaves, n.. are internal, created in increasing id order, so a
    // parent always has a larger id than its children.
    let mut parent = vec![0usize; 2 * n - 1];
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = freqs
        .iter()
        .enumerate()
        .map(|(i, &(f, _))| Reverse((f, i)))
        .collect();
    let mut next = n;
    while let (Some(Reverse((fa, a))), Some(Reverse((fb, b)))) = (heap.pop(), heap.pop()) {
        parent[a] = next;
        parent[b] = next;
        heap.push(Reverse((fa + fb, next)));
        next += 1;
    }
    let root = next - 1;
    let mut depth = vec![0u8; 2 * n - 1];
    for id in (0..root).rev() {
        depth[id] = depth[parent[id]].saturating_add(1);
    }
    depth.truncate(n);
    depth
}

/// Bit-reversed canonical codes for `lens` (assumed valid, max [`MAX_CODE_LEN`]).
fn canonical_codes(lens: &[u8; 256]) -> [u16; 256] {
    let mut count = [0u16; MAX_CODE_LEN as usize + 1];
    for &l in lens {
        count[usize::from(l)] += 1;
    }
    count[0] = 0;
    let mut next = [0u16; MAX_CODE_LEN as usize + 2];
    let mut code = 0u16;
    for len in 1..=MAX_CODE_LEN as usize {
        code = (code + count[len - 1]) << 1;
        next[len] = code;
    }
    let mut codes = [0u16; 256];
    for (s, &l) in lens.iter().enumerate() {
        if l > 0 {
            let c = next[usize::from(l)];
            next[usize::from(l)] += 1;
            codes[s] = c.reverse_bits() >> (16 - u32::from(l));
        }
    }
    codes
}

/// Segment boundaries of `n` symbols over the four streams.
fn segments(n: usize) -> [std::ops::Range<usize>; STREAMS] {
    let seg = n.div_ceil(STREAMS);
    std::array::from_fn(|k| (k * seg).min(n)..((k + 1) * seg).min(n))
}

/// Appends the Huffman body of `data` to `out`.
pub(crate) fn encode(data: &[u8], out: &mut Vec<u8>) {
    let ranges = segments(data.len());
    let seg_hists = ranges.clone().map(|r| histogram(&data[r]));
    let mut hist = [0u32; 256];
    for h in &seg_hists {
        for (t, c) in hist.iter_mut().zip(h) {
            *t += c;
        }
    }
    let lens = code_lengths(&hist);
    let codes = canonical_codes(&lens);
    // code in the low 16 bits, length above.
    let mut table = [0u32; 256];
    for (t, (&c, &l)) in table.iter_mut().zip(codes.iter().zip(&lens)) {
        *t = u32::from(c) | (u32::from(l) << 16);
    }

    let max_symbol = lens.iter().rposition(|&l| l > 0).unwrap_or(0);
    out.push(max_symbol as u8);
    for pair in lens[..=max_symbol].chunks(2) {
        let hi = pair.get(1).copied().unwrap_or(0);
        out.push(pair[0] | (hi << 4));
    }
    // Exact stream sizes from the segment histograms: the output is laid out once.
    let sizes = seg_hists.map(|h| {
        let bits: u64 = h
            .iter()
            .zip(&lens)
            .map(|(&c, &l)| u64::from(c) * u64::from(l))
            .sum();
        bits.div_ceil(8) as usize
    });
    for size in &sizes[..STREAMS - 1] {
        out.extend((*size as u32).to_le_bytes());
    }
    let start = out.len();
    out.resize(start + sizes.iter().sum::<usize>(), 0);
    let (b0, rest) = out[start..].split_at_mut(sizes[0]);
    let (b1, rest) = rest.split_at_mut(sizes[1]);
    let (b2, b3) = rest.split_at_mut(sizes[2]);
    let mut w = [b0, b1, b2, b3].map(BitWriter::new);
    let [s0, s1, s2, s3] = ranges.map(|r| &data[r]);

    // Four independent accumulators in lock-step, as in the decoder.
    let common = s3.len() / PER_REFILL * PER_REFILL;
    for (((g0, g1), g2), g3) in s0[..common]
        .chunks_exact(PER_REFILL)
        .zip(s1[..common].chunks_exact(PER_REFILL))
        .zip(s2[..common].chunks_exact(PER_REFILL))
        .zip(s3[..common].chunks_exact(PER_REFILL))
    {
        w[0].put(g0, &table);
        w[1].put(g1, &table);
        w[2].put(g2, &table);
        w[3].put(g3, &table);
    }
    for (w, s) in w.iter_mut().zip([s0, s1, s2, s3]) {
        for g in s[common..].chunks(PER_REFILL) {
            w.put(g, &table);
        }
        w.finish();
    }
}

/// LSB-first bit writer into a slice sized exactly for its stream.
struct BitWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
    acc: u64,
    nbits: u32,
}

impl<'a> BitWriter<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            acc: 0,
            nbits: 0,
        }
    }

    /// Codes up to [`PER_REFILL`] symbols and stores the accumulator.
    #[inline(always)]
    fn put(&mut self, group: &[u8], table: &[u32; 256]) {
        for &s in group {
            let e = table[usize::from(s)];
            self.acc |= u64::from(e & 0xffff) << self.nbits;
            self.nbits += e >> 16;
        }
        // nbits <= 7 + 5 * 11 = 62: the accumulator holds it all. Bytes stored past the
        // whole ones are rewritten by the next store, which starts at the partial byte.
        let bytes = self.acc.to_le_bytes();
        match self.buf.get_mut(self.pos..self.pos + 8) {
            Some(dst) => dst.copy_from_slice(&bytes),
            None => {
                let tail = self.buf.get_mut(self.pos..).unwrap_or_default();
                for (d, b) in tail.iter_mut().zip(bytes) {
                    *d = b;
                }
            }
        }
        let whole = self.nbits / 8;
        self.pos += whole as usize;
        self.acc >>= whole * 8;
        self.nbits -= whole * 8;
    }

    fn finish(&mut self) {
        if self.nbits > 0 {
            if let Some(b) = self.buf.get_mut(self.pos) {
                *b = self.acc as u8;
            }
        }
    }
}

/// Reads 64 bits at `bitpos`, zero-padded past the end of `data`; at least 57 are valid.
#[inline(always)]
fn peek(data: &[u8], bitpos: usize) -> u64 {
    let byte = bitpos >> 3;
    let word = match data.get(byte..).and_then(<[u8]>::first_chunk::<8>) {
        Some(w) => u64::from_le_bytes(*w),
        None => {
            let mut tmp = [0u8; 8];
            for (t, b) in tmp.iter_mut().zip(data.get(byte..).unwrap_or(&[])) {
                *t = *b;
            }
            u64::from_le_bytes(tmp)
        }
    };
    word >> (bitpos & 7)
}

/// Decodes up to [`PER_REFILL`] symbols into `out` from one refill; returns bits used.
#[inline(always)]
fn decode_group(table: &[u16; TABLE_SIZE], data: &[u8], bitpos: usize, out: &mut [u8]) -> usize {
    let mut bits = peek(data, bitpos);
    let mut used = 0usize;
    for o in out {
        let e = table[(bits & TABLE_BITS_MASK) as usize];
        *o = e as u8;
        let l = u32::from(e >> 8);
        bits >>= l;
        used += l as usize;
    }
    used
}

/// Decodes a Huffman body into `out`, which it fills exactly; `out.len()` is the symbol
/// count. Errors describe what is malformed.
pub(crate) fn decode(body: &[u8], out: &mut [u8]) -> Result<(), String> {
    let (&max_symbol, rest) = body.split_first().ok_or("empty huffman body")?;
    let nibble_bytes = (usize::from(max_symbol) + 2) / 2;
    let (packed, rest) = rest
        .split_at_checked(nibble_bytes)
        .ok_or("huffman code lengths truncated")?;
    let mut lens = [0u8; 256];
    for (i, l) in lens
        .iter_mut()
        .enumerate()
        .take(usize::from(max_symbol) + 1)
    {
        let byte = packed.get(i / 2).copied().unwrap_or(0);
        *l = if i % 2 == 0 { byte & 0xf } else { byte >> 4 };
    }
    let table = decode_table(&lens)?;

    let (size_bytes, data) = rest
        .split_at_checked(4 * (STREAMS - 1))
        .ok_or("huffman stream sizes truncated")?;
    let mut ends = [data.len(); STREAMS];
    let mut at = 0usize;
    for (k, chunk) in size_bytes.chunks_exact(4).enumerate() {
        let size = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
        at = at
            .checked_add(size)
            .filter(|&e| e <= data.len())
            .ok_or("huffman stream size exceeds the body")?;
        ends[k] = at;
    }
    let starts = [0, ends[0], ends[1], ends[2]];

    let multi = multi_table(&table);
    let ranges = segments(out.len());
    let (o0, r) = out.split_at_mut(ranges[0].len());
    let (o1, r) = r.split_at_mut(ranges[1].len());
    let (o2, o3) = r.split_at_mut(ranges[2].len());
    let outs = [o0, o1, o2, o3];
    let mut pos = starts.map(|s| s * 8);
    let mut at = [0usize; STREAMS];

    // Lock-step while every stream has room for a whole multi-symbol group: four
    // independent chains keep the core busy, each lookup resolving up to three symbols.
    // Rounds are counted ahead from the room left (a round writes at most
    // `3 * MULTI_LOOKUPS` symbols per stream), not checked one by one.
    loop {
        let rounds = outs
            .iter()
            .zip(&at)
            .map(|(o, &a)| {
                o.len()
                    .checked_sub(a + MULTI_SLACK)
                    .map_or(0, |room| room / (3 * MULTI_LOOKUPS) + 1)
            })
            .min()
            .unwrap_or(0);
        if rounds == 0 {
            break;
        }
        for _ in 0..rounds {
            for k in 0..STREAMS {
                let (bits, symbols) = decode_multi(&multi, data, pos[k], outs[k], at[k]);
                pos[k] += bits;
                at[k] += symbols;
            }
        }
    }
    for (k, o) in outs.into_iter().enumerate() {
        for c in o[at[k]..].chunks_mut(PER_REFILL) {
            pos[k] += decode_group(&table, data, pos[k], c);
        }
        // A stream must end in its own last byte: catches truncation and most damage.
        if pos[k].div_ceil(8) != ends[k] {
            return Err(format!(
                "huffman stream {k} ends at bit {}, its size says byte {}",
                pos[k], ends[k]
            ));
        }
    }
    Ok(())
}

/// Lookups per refill of [`decode_multi`]: each takes at most 11 of the 57 valid bits.
const MULTI_LOOKUPS: usize = 5;
/// Output room [`decode_multi`] needs: each lookup stores four bytes (three symbols and
/// scratch) at most 12 bytes in, and indexing within 20 bytes with an offset masked to
/// 15 lets the compiler drop the bounds checks.
const MULTI_SLACK: usize = 20;

/// Decodes [`MULTI_LOOKUPS`] lookups of the multi-symbol table into `out` from `at` (which
/// must leave [`MULTI_SLACK`] bytes of room; bytes past the symbols decoded are scratch,
/// overwritten later); returns the bits used and the symbols decoded. Equivalent to
/// single-symbol lookups one after another.
#[inline(always)]
fn decode_multi(
    table: &[u32; TABLE_SIZE],
    data: &[u8],
    bitpos: usize,
    out: &mut [u8],
    at: usize,
) -> (usize, usize) {
    let mut bits = peek(data, bitpos);
    let Some(room) = out
        .get_mut(at..at + MULTI_SLACK)
        .and_then(|r| <&mut [u8; MULTI_SLACK]>::try_from(r).ok())
    else {
        return (0, 0);
    };
    let mut used = 0usize;
    let mut written = 0usize;
    for _ in 0..MULTI_LOOKUPS {
        let e = table[(bits & TABLE_BITS_MASK) as usize];
        // `written` is at most 12 here; the mask only tells the compiler so.
        let w = written & 15;
        room[w..w + 4].copy_from_slice(&e.to_le_bytes());
        let l = (e >> 24) & 0xf;
        bits >>= l;
        used += l as usize;
        written += (e >> 28) as usize;
    }
    (used, written)
}

/// The multi-symbol table: for each 11-bit index, as many whole codes (up to three) as
/// fit in its bits, decoded one after another with `table`. Entry = the symbols in
/// bytes 0-2, their total length in bits 24-27, their count in bits 28-29.
fn multi_table(table: &[u16; TABLE_SIZE]) -> [u32; TABLE_SIZE] {
    let mut multi = [0u32; TABLE_SIZE];
    for (i, m) in multi.iter_mut().enumerate() {
        let mut rest = i;
        let mut total = 0u32;
        let mut count = 0u32;
        let mut symbols = 0u32;
        while count < 3 {
            let e = table[rest];
            let l = u32::from(e >> 8);
            if total + l > MAX_CODE_LEN {
                break;
            }
            symbols |= u32::from(e & 0xff) << (8 * count);
            total += l;
            count += 1;
            rest >>= l;
        }
        *m = symbols | total << 24 | count << 28;
    }
    multi
}

/// Decode table: entry = symbol | length << 8, indexed by the next 11 bits.
fn decode_table(lens: &[u8; 256]) -> Result<[u16; TABLE_SIZE], String> {
    let mut kraft = 0usize;
    for &l in lens {
        if u32::from(l) > MAX_CODE_LEN {
            return Err(format!("huffman code length {l} exceeds {MAX_CODE_LEN}"));
        }
        if l > 0 {
            kraft += TABLE_SIZE >> l;
        }
    }
    if kraft != TABLE_SIZE {
        return Err("huffman code lengths do not form a complete code".into());
    }
    let codes = canonical_codes(lens);
    let mut table = [0u16; TABLE_SIZE];
    for (s, (&l, &c)) in lens.iter().zip(&codes).enumerate() {
        if l == 0 {
            continue;
        }
        let entry = s as u16 | (u16::from(l) << 8);
        let mut i = usize::from(c);
        while i < TABLE_SIZE {
            table[i] = entry;
            i += 1 << l;
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use haagenti_testkit::synth::Rng;

    fn round_trip(data: &[u8]) -> usize {
        let mut body = Vec::new();
        encode(data, &mut body);
        let mut back = vec![0u8; data.len()];
        decode(&body, &mut back).unwrap();
        assert_eq!(back, data);
        body.len()
    }

    #[test]
    fn round_trips_small_and_skewed() {
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 % 5) as u8).collect();
            round_trip(&data);
        }
        round_trip(&[9; 1000]);
        let mut rng = Rng::new(1);
        let mut random = vec![0u8; 10_001];
        rng.fill_bytes(&mut random);
        round_trip(&random);
        // Skewed bytes at lengths around the multi-symbol lock-step's edges.
        for n in [59, 60, 61, 64, 100, 1000, 4099] {
            let data: Vec<u8> = (0..n)
                .map(|_| (120.0 + rng.normal() * 2.0).clamp(0.0, 255.0) as u8)
                .collect();
            round_trip(&data);
        }
    }

    #[test]
    fn length_limit_holds_on_geometric_frequencies() {
        // Frequencies 2^k force unlimited Huffman depths far beyond 11.
        let mut data = Vec::new();
        for s in 0..24u8 {
            data.extend(std::iter::repeat_n(s, 1 << (s / 2)));
        }
        let lens = code_lengths(&histogram(&data));
        assert!(lens.iter().all(|&l| u32::from(l) <= MAX_CODE_LEN));
        round_trip(&data);
    }

    #[test]
    fn coded_size_is_near_entropy() {
        let mut rng = Rng::new(3);
        // Exponent-like byte: a narrow bell of ~3 bits entropy.
        let data: Vec<u8> = (0..200_000)
            .map(|_| (120.0 + rng.normal() * 2.0).clamp(0.0, 255.0) as u8)
            .collect();
        let size = round_trip(&data);
        let bound = entropy_bytes(&histogram(&data));
        assert!(size < bound + bound / 50 + 200, "{size} vs entropy {bound}");
    }
}
