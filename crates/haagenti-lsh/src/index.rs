//! [`SimilarityIndex`]: banded LSH over bit signatures, and its segment format.
//!
//! # Layout
//!
//! Entries (id, signature words, a caller tag `meta`) live in flat arrays. Each band `b`
//! covers signature bits `b*rows .. (b+1)*rows`; two signatures that agree on all bits of
//! one band are *nominated* as candidates, then verified on the full signature.
//!
//! Per band, older entries sit in a compressed bucket table (offsets + items, 4 bytes per
//! entry and band): a query reads one contiguous run per band. Newer entries are chained
//! from a small head table; when they exceed 1/8 of the rest, everything is re-sorted into
//! the compressed tables (amortised O(bands) per insert). Removal marks an entry dead;
//! dead entries are dropped once they outnumber live ones.
//!
//! About `32 + bits/8 + 8 + 4 * bands + 9` bytes per entry (145 with 256 bits and 16
//! bands) plus vector slack: 159 MB measured at 10^6 fragments.
//!
//! # Segment format (version 1)
//!
//! ```text
//! magic "HGLSHIDX" | version u8 = 1 | scheme tag u16 | bits u16 | count u32
//! count x (id [32] | meta u64 | bits/64 x word u64) | checksum: BLAKE3(all before)[..8]
//! ```
//!
//! Integers are little-endian. Banding parameters are not stored: they are a query-time
//! choice, so segments stay valid when the defaults change. Any number of segments (of one
//! scheme and length) load into one index; a fragment present in several loads once.

use haagenti_core::{
    CandidateIndex, FragmentError, FragmentId, Result, SchemeTag, Signature, SimilarityMatch,
    SimilarityThreshold,
};

#[cfg(feature = "experimental")]
use crate::{BYTE_MINHASH_TAG, jaccard_from_hamming};
use crate::{COSINE_SKETCH_TAG, cosine_from_hamming, hamming};

/// Default number of bands (the crate README has the measurements behind 16 x 16).
const DEFAULT_BANDS: u32 = 16;
/// Default number of signature bits per band.
const DEFAULT_ROWS: u32 = 16;

/// Magic bytes opening every index segment (see the module docs for the format).
pub const SEGMENT_MAGIC: [u8; 8] = *b"HGLSHIDX";
/// Segment format version written and read by this build.
pub const SEGMENT_VERSION: u8 = 1;
/// Longest signature a segment or index accepts, in bits.
const MAX_SEGMENT_BITS: u32 = 4096;

const HEADER_LEN: usize = 8 + 1 + 2 + 2 + 4;
const CHECKSUM_LEN: usize = 8;
const SEGMENT_KEY: &str = "lsh index segment";
const NIL: u32 = u32::MAX;
/// Entries are addressed by u32 and NIL is reserved.
const MAX_ENTRIES: usize = (u32::MAX - 1) as usize;
/// Compressed bucket tables hold at most 2^18 slots per band (1 MiB).
const MAX_TABLE_BITS: u32 = 18;
const MIN_REBUILD: usize = 2048;

/// Parameters of a [`SimilarityIndex`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// Scheme of every signature in the index: [`COSINE_SKETCH_TAG`], or with the
    /// `experimental` feature `BYTE_MINHASH_TAG`.
    pub scheme: SchemeTag,
    /// Signature length in bits, a multiple of 64 up to 4096.
    pub bits: u32,
    /// Number of bands.
    pub bands: u32,
    /// Bits per band, 1 to 32; `bands * rows <= bits`.
    pub rows: u32,
}

impl IndexConfig {
    /// Default configuration for [`crate::CosineSketch`] signatures (256 bits, 16 x 16).
    pub fn cosine() -> Self {
        Self {
            scheme: COSINE_SKETCH_TAG,
            bits: crate::cosine::DEFAULT_COSINE_BITS as u32,
            bands: DEFAULT_BANDS,
            rows: DEFAULT_ROWS,
        }
    }

    /// Default configuration for [`crate::ByteMinHash`] signatures (256 bits, 16 x 16).
    /// Experimental, like them.
    #[cfg(feature = "experimental")]
    pub fn minhash() -> Self {
        Self {
            scheme: BYTE_MINHASH_TAG,
            bits: crate::minhash::DEFAULT_MINHASH_BITS as u32,
            bands: DEFAULT_BANDS,
            rows: DEFAULT_ROWS,
        }
    }

    /// Checks the parameters: a scheme this build knows, `bits` a multiple of 64 up to
    /// 4096, `rows` 1 to 32, at least one band, `bands * rows <= bits`.
    ///
    /// Errors: [`FragmentError::InvalidInput`] naming the broken rule.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| {
            Err(FragmentError::InvalidInput(format!(
                "index config {self:?}: {why}"
            )))
        };
        if estimator(self.scheme).is_none() {
            return bad("unknown signature scheme");
        }
        if self.bits == 0 || self.bits % 64 != 0 || self.bits > MAX_SEGMENT_BITS {
            return bad("bits must be a multiple of 64 up to 4096");
        }
        if !(1..=32).contains(&self.rows) || self.bands == 0 {
            return bad("rows must be 1..=32 and bands at least 1");
        }
        if u64::from(self.bands) * u64::from(self.rows) > u64::from(self.bits) {
            return bad("bands * rows exceeds the signature length");
        }
        Ok(())
    }

    fn words(&self) -> usize {
        self.bits as usize / 64
    }
}

/// Maps a Hamming distance to the scheme's similarity estimate.
fn estimator(scheme: SchemeTag) -> Option<fn(u32, usize) -> f32> {
    match scheme {
        COSINE_SKETCH_TAG => Some(cosine_from_hamming),
        #[cfg(feature = "experimental")]
        BYTE_MINHASH_TAG => Some(jaccard_from_hamming),
        _ => None,
    }
}

/// Bits `band*rows .. (band+1)*rows` of a signature, as an integer.
#[inline]
fn band_value(words: &[u64], band: u32, rows: u32) -> u64 {
    let start = (band * rows) as usize;
    let (w, off) = (start / 64, start % 64);
    let lo = words.get(w).copied().unwrap_or(0) >> off;
    let hi = if off + rows as usize > 64 {
        words.get(w + 1).copied().unwrap_or(0) << (64 - off)
    } else {
        0
    };
    (lo | hi) & ((1u64 << rows) - 1)
}

/// Buckets of the older entries of one band: entries with slot `s` are
/// `items[offsets[s]..offsets[s + 1]]`.
#[derive(Debug, Default)]
struct BucketTable {
    offsets: Vec<u32>,
    items: Vec<u32>,
}

/// A banded LSH index over bit signatures of one scheme. See the module documentation.
pub struct SimilarityIndex {
    config: IndexConfig,
    words: usize,
    /// Similarity estimate for each Hamming distance `0..=bits`.
    estimates: Vec<f32>,
    ids: Vec<FragmentId>,
    sigs: Vec<u64>,
    meta: Vec<u64>,
    live: Vec<bool>,
    live_count: usize,
    /// Open addressing (linear probing) from id to entry; NIL is empty.
    id_table: Vec<u32>,
    /// Entries `0..base_len` are in `tables`; the rest are chained from `recent_heads`.
    base_len: usize,
    table_bits: u32,
    tables: Vec<BucketTable>,
    recent_bits: u32,
    recent_heads: Vec<u32>,
    /// `recent_next[(entry - base_len) * bands + band]`.
    recent_next: Vec<u32>,
}

impl std::fmt::Debug for SimilarityIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimilarityIndex")
            .field("config", &self.config)
            .field("len", &self.live_count)
            .field("entries", &self.ids.len())
            .finish_non_exhaustive()
    }
}

impl SimilarityIndex {
    /// An empty index.
    pub fn new(config: IndexConfig) -> Result<Self> {
        config.validate()?;
        let estimate = estimator(config.scheme).ok_or_else(|| {
            FragmentError::InvalidInput(format!("unknown signature scheme {}", config.scheme))
        })?;
        let mut index = Self {
            config,
            words: config.words(),
            estimates: (0..=config.bits)
                .map(|h| estimate(h, config.bits as usize))
                .collect(),
            ids: Vec::new(),
            sigs: Vec::new(),
            meta: Vec::new(),
            live: Vec::new(),
            live_count: 0,
            id_table: Vec::new(),
            base_len: 0,
            table_bits: 0,
            tables: Vec::new(),
            recent_bits: 0,
            recent_heads: Vec::new(),
            recent_next: Vec::new(),
        };
        index.rebuild();
        Ok(index)
    }

    /// An index holding the entries of one segment.
    pub fn from_bytes(config: IndexConfig, bytes: &[u8]) -> Result<Self> {
        let mut index = Self::new(config)?;
        index.load_segment(bytes)?;
        Ok(index)
    }

    /// The index parameters.
    pub fn config(&self) -> IndexConfig {
        self.config
    }

    /// Number of fragments in the index.
    pub fn len(&self) -> usize {
        self.live_count
    }

    /// Whether the index holds no fragment.
    pub fn is_empty(&self) -> bool {
        self.live_count == 0
    }

    /// Whether `id` is in the index.
    pub fn contains(&self, id: &FragmentId) -> bool {
        self.lookup(id).is_some_and(|e| self.live[e])
    }

    /// The `meta` tag stored with `id`.
    pub fn meta(&self, id: &FragmentId) -> Option<u64> {
        self.lookup(id)
            .filter(|&e| self.live[e])
            .map(|e| self.meta[e])
    }

    /// Adds a fragment. Returns `false` (and changes nothing) if `id` is already present.
    /// `meta` is a caller tag returned by [`Self::meta`] and passed to query filters (for
    /// example the fragment length and dtype, to consider only delta-compatible bases).
    pub fn insert(&mut self, id: FragmentId, signature: &Signature, meta: u64) -> Result<bool> {
        self.check_signature(signature)?;
        let added = self.insert_raw(id, &signature.words, meta, true)?;
        if self.ids.len() - self.base_len > self.rebuild_threshold() {
            self.rebuild();
        }
        Ok(added)
    }

    /// Removes a fragment; returns whether it was present.
    pub fn remove(&mut self, id: &FragmentId) -> bool {
        let Some(e) = self.lookup(id).filter(|&e| self.live[e]) else {
            return false;
        };
        self.live[e] = false;
        self.live_count -= 1;
        let dead = self.ids.len() - self.live_count;
        if dead > MIN_REBUILD.max(self.live_count) {
            self.compact();
        }
        true
    }

    /// Fragments whose estimated similarity to `signature` is at least `threshold`, best
    /// first (ties by id), at most `limit` of them.
    pub fn find_similar(
        &self,
        signature: &Signature,
        threshold: SimilarityThreshold,
        limit: usize,
    ) -> Result<Vec<SimilarityMatch>> {
        self.find_similar_where(signature, threshold, limit, |_, _| true)
    }

    /// [`Self::find_similar`] restricted to entries for which `keep(id, meta)` holds.
    pub fn find_similar_where(
        &self,
        signature: &Signature,
        threshold: SimilarityThreshold,
        limit: usize,
        mut keep: impl FnMut(&FragmentId, u64) -> bool,
    ) -> Result<Vec<SimilarityMatch>> {
        self.check_signature(signature)?;
        let mut found = Vec::new();
        self.nominate(&signature.words, &mut found);
        // Verify on the full signature first (one read per candidate), then look at
        // liveness and the caller's filter for the few that pass.
        let mut matches = Vec::new();
        for e in found.into_iter().map(|e| e as usize) {
            let similarity = self.estimates[hamming(self.sig(e), &signature.words) as usize];
            if similarity >= threshold.get() && self.live[e] && keep(&self.ids[e], self.meta[e]) {
                matches.push(SimilarityMatch {
                    id: self.ids[e],
                    similarity,
                });
            }
        }
        matches.sort_unstable_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.id.cmp(&b.id))
        });
        matches.truncate(limit);
        Ok(matches)
    }

    /// Every fragment sharing at least one band with `signature` (the unverified
    /// candidates a query starts from), in no particular order.
    pub fn candidates(&self, signature: &Signature) -> Result<Vec<FragmentId>> {
        self.check_signature(signature)?;
        let mut found = Vec::new();
        self.nominate(&signature.words, &mut found);
        Ok(found
            .into_iter()
            .map(|e| e as usize)
            .filter(|&e| self.live[e])
            .map(|e| self.ids[e])
            .collect())
    }

    /// Approximate heap memory held by the index, in bytes.
    pub fn memory_bytes(&self) -> usize {
        let tables: usize = self
            .tables
            .iter()
            .map(|t| t.offsets.capacity() + t.items.capacity())
            .sum();
        self.ids.capacity() * 32
            + (self.sigs.capacity() + self.meta.capacity()) * 8
            + self.live.capacity()
            + (self.id_table.capacity()
                + tables
                + self.recent_heads.capacity()
                + self.recent_next.capacity())
                * 4
    }

    /// The signature and `meta` tag stored for `id`.
    pub fn entry(&self, id: &FragmentId) -> Option<(Signature, u64)> {
        let e = self.lookup(id).filter(|&e| self.live[e])?;
        let signature = Signature {
            scheme: self.config.scheme,
            words: self.sig(e).to_vec(),
        };
        Some((signature, self.meta[e]))
    }

    /// The live entries of `ids` (duplicates and absent ids skipped) as one segment.
    pub fn segment_of(&self, ids: &[FragmentId]) -> Vec<u8> {
        let mut writer = SegmentWriter::new(self.config.scheme, self.config.bits);
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = self.lookup(id).filter(|&e| self.live[e])
                && seen.insert(e)
            {
                writer.push_words(&self.ids[e], self.sig(e), self.meta[e]);
            }
        }
        writer.finish()
    }

    /// Every live entry as one segment (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut writer = SegmentWriter::new(self.config.scheme, self.config.bits);
        for e in (0..self.ids.len()).filter(|&e| self.live[e]) {
            writer.push_words(&self.ids[e], self.sig(e), self.meta[e]);
        }
        writer.finish()
    }

    /// Adds every entry of a segment (of this index's scheme and signature length); entries
    /// already present are skipped. Returns how many were added. The segment is fully
    /// validated (checksum included) before the index changes.
    pub fn load_segment(&mut self, bytes: &[u8]) -> Result<usize> {
        let segment = parse_segment(bytes)?;
        if segment.scheme != self.config.scheme || segment.bits != self.config.bits {
            return Err(FragmentError::InvalidInput(format!(
                "{SEGMENT_KEY} holds scheme {} with {} bits; this index is scheme {} with {} bits",
                segment.scheme, segment.bits, self.config.scheme, self.config.bits
            )));
        }
        if self.ids.len().saturating_add(segment.count) > MAX_ENTRIES {
            return Err(FragmentError::InvalidInput(format!(
                "{SEGMENT_KEY}: {} more entries exceed the index limit of {MAX_ENTRIES}",
                segment.count
            )));
        }
        let entry_len = 40 + 8 * self.words;
        self.reserve(segment.count);
        let mut words = vec![0u64; self.words];
        let mut added = 0;
        for raw in segment.body.chunks_exact(entry_len) {
            let (id, rest) = raw.split_at(32);
            let (meta, sig) = rest.split_at(8);
            let mut id_bytes = [0u8; 32];
            id_bytes.copy_from_slice(id);
            for (w, c) in words.iter_mut().zip(sig.chunks_exact(8)) {
                *w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            }
            let meta = u64::from_le_bytes(meta.try_into().unwrap_or([0; 8]));
            if self.insert_raw(FragmentId(id_bytes), &words, meta, false)? {
                added += 1;
            }
        }
        self.rebuild();
        Ok(added)
    }

    /// Makes room for `more` entries (bounded by the caller: a validated segment's count).
    fn reserve(&mut self, more: usize) {
        self.ids.reserve(more);
        self.sigs.reserve(more * self.words);
        self.meta.reserve(more);
        self.live.reserve(more);
        let wanted = ((self.ids.len() + more) * 2).next_power_of_two().max(64);
        if wanted > self.id_table.len() {
            self.id_table = vec![NIL; wanted];
            for e in 0..self.ids.len() {
                if self.live[e] {
                    self.id_table_place(e);
                }
            }
        }
    }

    fn check_signature(&self, signature: &Signature) -> Result<()> {
        if signature.scheme != self.config.scheme || signature.words.len() != self.words {
            return Err(FragmentError::InvalidInput(format!(
                "signature of scheme {} with {} bits does not fit an index of scheme {} with {} bits",
                signature.scheme,
                signature.words.len() * 64,
                self.config.scheme,
                self.config.bits
            )));
        }
        Ok(())
    }

    fn sig(&self, e: usize) -> &[u64] {
        &self.sigs[e * self.words..(e + 1) * self.words]
    }

    fn rebuild_threshold(&self) -> usize {
        MIN_REBUILD.max(self.base_len / 8)
    }

    fn id_slot(&self, id: &FragmentId) -> usize {
        // Ids are BLAKE3 hashes: their first bytes are already uniform.
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&id.0[..8]);
        (u64::from_le_bytes(prefix) as usize) & (self.id_table.len() - 1)
    }

    fn lookup(&self, id: &FragmentId) -> Option<usize> {
        if self.id_table.is_empty() {
            return None;
        }
        let mask = self.id_table.len() - 1;
        let mut slot = self.id_slot(id);
        loop {
            let e = self.id_table[slot];
            if e == NIL {
                return None;
            }
            if self.ids[e as usize] == *id {
                return Some(e as usize);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Points `id` at entry `e` (replacing an older entry of the same id).
    fn id_table_set(&mut self, e: usize) {
        if (self.ids.len() + 1) * 2 > self.id_table.len() {
            let size = ((self.ids.len() + 1) * 2).next_power_of_two().max(64);
            self.id_table = vec![NIL; size];
            for old in 0..self.ids.len() {
                if old != e && self.live[old] {
                    self.id_table_place(old);
                }
            }
        }
        self.id_table_place(e);
    }

    fn id_table_place(&mut self, e: usize) {
        let mask = self.id_table.len() - 1;
        let mut slot = self.id_slot(&self.ids[e]);
        loop {
            let cur = self.id_table[slot];
            if cur == NIL || self.ids[cur as usize] == self.ids[e] {
                self.id_table[slot] = e as u32;
                return;
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Appends an entry; `link` chains it into the recent tables (bulk loads rebuild
    /// instead).
    fn insert_raw(&mut self, id: FragmentId, words: &[u64], meta: u64, link: bool) -> Result<bool> {
        if let Some(e) = self.lookup(&id) {
            if self.live[e] {
                return Ok(false);
            }
        }
        if self.ids.len() >= MAX_ENTRIES {
            return Err(FragmentError::InvalidInput(format!(
                "similarity index is full ({MAX_ENTRIES} entries)"
            )));
        }
        let e = self.ids.len();
        self.ids.push(id);
        self.sigs.extend_from_slice(words);
        self.meta.push(meta);
        self.live.push(true);
        self.live_count += 1;
        self.id_table_set(e);
        if link {
            self.link_recent(e);
        }
        Ok(true)
    }

    fn link_recent(&mut self, e: usize) {
        let bands = self.config.bands as usize;
        let mask = (1usize << self.recent_bits) - 1;
        for b in 0..self.config.bands {
            let v = band_value(self.sig(e), b, self.config.rows) as usize;
            let head = &mut self.recent_heads[(b as usize) << self.recent_bits | (v & mask)];
            self.recent_next.push(*head);
            *head = (e - self.base_len) as u32;
        }
        debug_assert_eq!(self.recent_next.len(), (e + 1 - self.base_len) * bands);
    }

    /// Slot of band value `v` in the compressed tables: its top `table_bits` bits.
    fn table_slot(&self, v: u64) -> usize {
        (v >> (self.config.rows - self.table_bits)) as usize
    }

    /// Re-sorts every entry into the compressed bucket tables.
    fn rebuild(&mut self) {
        let n = self.ids.len();
        let rows = self.config.rows;
        let bands = self.config.bands as usize;
        // About 4 entries per slot while small; one slot per band value once large.
        let wanted = (usize::BITS - (n / 4).leading_zeros()).max(4);
        self.table_bits = wanted.min(rows).min(MAX_TABLE_BITS);
        let slots = 1usize << self.table_bits;
        // Counting sort, one band at a time (its tables stay in cache).
        let mut tables = Vec::with_capacity(bands);
        for b in 0..self.config.bands {
            let mut offsets = vec![0u32; slots + 1];
            for e in 0..n {
                if self.live[e] {
                    offsets[self.table_slot(band_value(self.sig(e), b, rows)) + 1] += 1;
                }
            }
            for s in 0..slots {
                offsets[s + 1] += offsets[s];
            }
            let mut fill = offsets.clone();
            let mut items = vec![0u32; offsets[slots] as usize];
            for e in 0..n {
                if self.live[e] {
                    let slot = self.table_slot(band_value(self.sig(e), b, rows));
                    items[fill[slot] as usize] = e as u32;
                    fill[slot] += 1;
                }
            }
            tables.push(BucketTable { offsets, items });
        }
        self.tables = tables;
        self.base_len = n;
        // The recent table is sized for the entries it will hold before the next rebuild.
        let next = self.rebuild_threshold();
        self.recent_bits = (usize::BITS - next.leading_zeros()).min(rows).clamp(1, 16);
        self.recent_heads = vec![NIL; (self.config.bands as usize) << self.recent_bits];
        self.recent_next = Vec::new();
    }

    /// Drops dead entries and rebuilds every table.
    fn compact(&mut self) {
        let keep: Vec<usize> = (0..self.ids.len()).filter(|&e| self.live[e]).collect();
        let ids = keep.iter().map(|&e| self.ids[e]).collect();
        let meta = keep.iter().map(|&e| self.meta[e]).collect();
        let mut sigs = Vec::with_capacity(keep.len() * self.words);
        for &e in &keep {
            sigs.extend_from_slice(self.sig(e));
        }
        self.ids = ids;
        self.meta = meta;
        self.sigs = sigs;
        self.live = vec![true; keep.len()];
        self.id_table = Vec::new();
        let n = self.ids.len();
        self.id_table = vec![NIL; (n * 2).next_power_of_two().max(64)];
        for e in 0..n {
            self.id_table_place(e);
        }
        self.rebuild();
    }

    /// Appends (with repeats) every entry sharing a band with `words`, deduplicated.
    fn nominate(&self, words: &[u64], out: &mut Vec<u32>) {
        let rows = self.config.rows;
        let exact = self.table_bits == rows;
        let recent_mask = (1usize << self.recent_bits) - 1;
        let bands = self.config.bands as usize;
        for b in 0..self.config.bands {
            let v = band_value(words, b, rows);
            if let Some(table) = self.tables.get(b as usize) {
                let slot = self.table_slot(v);
                let (lo, hi) = (
                    table.offsets[slot] as usize,
                    table.offsets[slot + 1] as usize,
                );
                for &e in &table.items[lo..hi] {
                    if exact || band_value(self.sig(e as usize), b, rows) == v {
                        out.push(e);
                    }
                }
            }
            let mut r =
                self.recent_heads[(b as usize) << self.recent_bits | (v as usize & recent_mask)];
            while r != NIL {
                let e = self.base_len + r as usize;
                if band_value(self.sig(e), b, rows) == v {
                    out.push(e as u32);
                }
                r = self.recent_next[r as usize * bands + b as usize];
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// Writes a segment entry by entry, e.g. for the fragments one ingest added.
#[derive(Debug)]
pub struct SegmentWriter {
    scheme: SchemeTag,
    bits: u32,
    count: u32,
    buf: Vec<u8>,
}

impl SegmentWriter {
    /// A writer for signatures of `scheme` with `bits` bits.
    pub fn new(scheme: SchemeTag, bits: u32) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + 1024);
        buf.extend_from_slice(&SEGMENT_MAGIC);
        buf.push(SEGMENT_VERSION);
        buf.extend_from_slice(&scheme.to_le_bytes());
        buf.extend_from_slice(&(bits as u16).to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        Self {
            scheme,
            bits,
            count: 0,
            buf,
        }
    }

    /// Appends one entry; the signature must be of this writer's scheme and length.
    pub fn push(&mut self, id: &FragmentId, signature: &Signature, meta: u64) -> Result<()> {
        if signature.scheme != self.scheme
            || signature.words.len() * 64 != self.bits as usize
            || self.bits > MAX_SEGMENT_BITS
        {
            return Err(FragmentError::InvalidInput(format!(
                "signature of scheme {} with {} bits does not fit a segment of scheme {} with {} bits",
                signature.scheme,
                signature.words.len() * 64,
                self.scheme,
                self.bits
            )));
        }
        if self.count as usize >= MAX_ENTRIES {
            return Err(FragmentError::InvalidInput(format!(
                "{SEGMENT_KEY} is full ({MAX_ENTRIES} entries)"
            )));
        }
        self.push_words(id, &signature.words, meta);
        Ok(())
    }

    fn push_words(&mut self, id: &FragmentId, words: &[u64], meta: u64) {
        self.buf.extend_from_slice(&id.0);
        self.buf.extend_from_slice(&meta.to_le_bytes());
        for w in words {
            self.buf.extend_from_slice(&w.to_le_bytes());
        }
        self.count += 1;
    }

    /// Number of entries written so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no entry was written.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished segment bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&self.count.to_le_bytes());
        let checksum = FragmentId::of(&self.buf);
        self.buf.extend_from_slice(&checksum.0[..CHECKSUM_LEN]);
        self.buf
    }
}

struct ParsedSegment<'a> {
    scheme: SchemeTag,
    bits: u32,
    count: usize,
    body: &'a [u8],
}

/// Validates a segment's framing and checksum; never allocates.
fn parse_segment(bytes: &[u8]) -> Result<ParsedSegment<'_>> {
    let corrupt = |why: String| FragmentError::corrupt(SEGMENT_KEY, why);
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(corrupt(format!(
            "{} bytes is shorter than a header",
            bytes.len()
        )));
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    if bytes[8] != SEGMENT_VERSION {
        return Err(FragmentError::UnsupportedVersion {
            key: SEGMENT_KEY.into(),
            found: u32::from(bytes[8]),
            supported: u32::from(SEGMENT_VERSION),
        });
    }
    let scheme = u16::from_le_bytes([bytes[9], bytes[10]]);
    let bits = u32::from(u16::from_le_bytes([bytes[11], bytes[12]]));
    let count = u32::from_le_bytes([bytes[13], bytes[14], bytes[15], bytes[16]]) as usize;
    if bits == 0 || bits % 64 != 0 || bits > MAX_SEGMENT_BITS {
        return Err(corrupt(format!("invalid signature length {bits} bits")));
    }
    let (framed, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let body = &framed[HEADER_LEN..];
    let entry_len = 40 + bits as usize / 8;
    if count.checked_mul(entry_len) != Some(body.len()) {
        return Err(corrupt(format!(
            "{count} entries of {entry_len} bytes do not fill {} bytes",
            body.len()
        )));
    }
    if FragmentId::of(framed).0[..CHECKSUM_LEN] != *checksum {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(ParsedSegment {
        scheme,
        bits,
        count,
        body,
    })
}

impl CandidateIndex for SimilarityIndex {
    fn insert(&mut self, id: FragmentId, signature: &Signature, meta: u64) -> Result<bool> {
        SimilarityIndex::insert(self, id, signature, meta)
    }

    fn remove(&mut self, id: &FragmentId) -> bool {
        SimilarityIndex::remove(self, id)
    }

    fn entry(&self, id: &FragmentId) -> Option<(Signature, u64)> {
        SimilarityIndex::entry(self, id)
    }

    fn find_similar_where(
        &self,
        signature: &Signature,
        threshold: SimilarityThreshold,
        limit: usize,
        keep: &mut dyn FnMut(&FragmentId, u64) -> bool,
    ) -> Result<Vec<SimilarityMatch>> {
        SimilarityIndex::find_similar_where(self, signature, threshold, limit, keep)
    }

    fn load_segment(&mut self, bytes: &[u8]) -> Result<usize> {
        SimilarityIndex::load_segment(self, bytes)
    }

    fn len(&self) -> usize {
        SimilarityIndex::len(self)
    }

    fn segment(&self, ids: Option<&[FragmentId]>) -> Vec<u8> {
        match ids {
            Some(ids) => self.segment_of(ids),
            None => self.to_bytes(),
        }
    }
}
