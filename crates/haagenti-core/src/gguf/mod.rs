//! Validating reader of GGUF headers (versions 2 and 3, little-endian). Never loads
//! tensor data.
//!
//! A GGUF file is a fixed header (magic, version, tensor and key-value counts), the
//! key-value metadata, the tensor infos, padding up to the data section (aligned to
//! `general.alignment`, default 32), then the tensors' data. [`read_header`] reads
//! everything up to the end of the tensor infos, incrementally and with every count and
//! length bounded before anything is allocated for it, and checks it against the file's
//! length: a file is accepted only when its header is fully consistent with it. Every
//! violation is a [`FragmentError::InvalidGguf`] naming the file and holding the
//! [`GgufError`] that says what is wrong.
//!
//! The result ([`GgufHeader`]) says where everything is, so that the file can be cut into
//! its verbatim metadata, one byte range per tensor and the padding between them
//! ([`GgufHeader::pieces`]) and rebuilt bit for bit. [`quant`] holds the reference
//! quantizers of the legacy block types.

pub mod quant;

use std::collections::HashSet;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use crate::error::{FragmentError, Result};
use crate::types::Dtype;

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// Length of the fixed header: magic, version, tensor count, key-value count.
pub const FIXED_HEADER_LEN: u64 = 24;
/// Largest metadata accepted: the fixed header, key-values and tensor infos together
/// (real files hold a few MiB, nearly all of it the tokenizer).
pub const MAX_METADATA_LEN: u64 = 128 << 20;
/// Most tensors accepted in one file.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most key-value pairs accepted in one file.
pub const MAX_KEY_VALUES: u64 = 1 << 20;
/// Longest string accepted (keys and values), in bytes.
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// Most elements accepted in one array (at any nesting level).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Deepest array nesting accepted: an array of arrays is depth 2.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Longest tensor name accepted, in bytes (llama.cpp itself stops at 63).
pub const MAX_TENSOR_NAME_LEN: u64 = 64;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// The key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// What is wrong with a GGUF file. Wrapped, with the file's path, in
/// [`FragmentError::InvalidGguf`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file ends (or the header says it ends) before something it must hold.
    #[error("truncated: {what} at byte {offset} needs {needed} bytes but only {available} remain")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes the file has from `offset` on.
        available: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// Version 1 (32-bit counts and lengths, before August 2023).
    #[error(
        "GGUF version 1 is not supported (only versions 2 and 3): convert the file with a current llama.cpp"
    )]
    VersionOne,
    /// A big-endian file (its version reads byte-swapped).
    #[error("big-endian GGUF (version {version}) is not supported")]
    BigEndian {
        /// The version, read big-endian.
        version: u32,
    },
    /// A version other than 1, 2 or 3.
    #[error("unknown GGUF version {version} (versions 2 and 3 are supported)")]
    UnknownVersion {
        /// The version found.
        version: u32,
    },
    /// More tensors than [`MAX_TENSORS`].
    #[error("tensor count {count} exceeds the limit of {MAX_TENSORS}")]
    TooManyTensors {
        /// The count in the header.
        count: u64,
    },
    /// More key-value pairs than [`MAX_KEY_VALUES`].
    #[error("key-value count {count} exceeds the limit of {MAX_KEY_VALUES}")]
    TooManyKeyValues {
        /// The count in the header.
        count: u64,
    },
    /// The metadata (header, key-values, tensor infos) is longer than [`MAX_METADATA_LEN`].
    #[error("{what} at byte {offset} ends past the metadata limit of {MAX_METADATA_LEN} bytes")]
    MetadataTooLong {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
    },
    /// A string longer than [`MAX_STRING_LEN`] (or, for a tensor name,
    /// [`MAX_TENSOR_NAME_LEN`]).
    #[error("{what}: string of {len} bytes exceeds the limit of {limit}")]
    StringTooLong {
        /// Which string.
        what: String,
        /// Its length as stored.
        len: u64,
        /// The limit that applies.
        limit: u64,
    },
    /// A key or tensor name that is not UTF-8.
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// Which string.
        what: String,
    },
    /// An array longer than [`MAX_ARRAY_LEN`].
    #[error("key {key:?}: array of {len} elements exceeds the limit of {MAX_ARRAY_LEN}")]
    ArrayTooLong {
        /// The key holding it.
        key: String,
        /// Its length as stored.
        len: u64,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`].
    #[error("key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")]
    ArrayTooDeep {
        /// The key holding it.
        key: String,
    },
    /// A value type id that GGUF does not define.
    #[error("key {key:?}: unknown value type {type_id}")]
    UnknownValueType {
        /// The key holding it.
        key: String,
        /// The type id found.
        type_id: u32,
    },
    /// A bool stored as something other than 0 or 1.
    #[error("key {key:?}: bool stored as {byte} (only 0 and 1 are bools)")]
    BadBool {
        /// The key holding it.
        key: String,
        /// The byte found.
        byte: u8,
    },
    /// A key that appears twice.
    #[error("key {key:?} appears twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `general.alignment` is not a u32.
    #[error("general.alignment must be a u32, found a {found}")]
    AlignmentType {
        /// The value type found.
        found: GgufValueType,
    },
    /// `general.alignment` is not a power of two.
    #[error("general.alignment {alignment} is not a power of two")]
    BadAlignment {
        /// The value found.
        alignment: u32,
    },
    /// A tensor name that appears twice.
    #[error("tensor {name:?} appears twice")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A tensor with more than [`MAX_DIMS`] dimensions.
    #[error("tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS})")]
    TooManyDims {
        /// The tensor.
        name: String,
        /// Its dimension count.
        n_dims: u32,
    },
    /// A tensor whose element count or byte size does not fit in 63 bits.
    #[error("tensor {name:?}: dimensions {dims:?} overflow ({what})")]
    DimensionOverflow {
        /// The tensor.
        name: String,
        /// Its dimensions, innermost first as stored.
        dims: Vec<u64>,
        /// "element count" or "byte size".
        what: &'static str,
    },
    /// A ggml type id this build does not know (or one ggml has removed).
    #[error("tensor {name:?}: unknown ggml type {type_id}")]
    UnknownGgmlType {
        /// The tensor.
        name: String,
        /// The type id found.
        type_id: u32,
    },
    /// A row (the innermost dimension) that is not a whole number of blocks.
    #[error(
        "tensor {name:?}: row of {row} elements is not a whole number of {ggml_type} blocks of {block_size}"
    )]
    RaggedRow {
        /// The tensor.
        name: String,
        /// Its innermost dimension.
        row: u64,
        /// Its type.
        ggml_type: GgmlType,
        /// The type's block size.
        block_size: u64,
    },
    /// A tensor offset that is not a multiple of the alignment.
    #[error("tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        /// The tensor.
        name: String,
        /// Its offset within the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u32,
    },
    /// A tensor reaching past the end of the file.
    #[error(
        "tensor {name:?}: data at offset {offset} ({len} bytes) runs past the end of the file ({file_len} bytes, data section from {data_start})"
    )]
    OutOfRange {
        /// The tensor.
        name: String,
        /// Its offset within the data section.
        offset: u64,
        /// Its length in bytes.
        len: u64,
        /// Where the data section starts.
        data_start: u64,
        /// The file's length.
        file_len: u64,
    },
    /// Two tensors sharing bytes.
    #[error("tensor {name:?} overlaps tensor {other:?}")]
    Overlap {
        /// The later tensor (by offset).
        name: String,
        /// The tensor it overlaps.
        other: String,
    },
}

/// The type of a metadata value, with GGUF's ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    /// The type of GGUF id `id`.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// GGUF's id of this type.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// gguf-py's name (`GGUFValueType`): `UINT8`, `FLOAT32`, `STRING`, …
    pub fn name(self) -> &'static str {
        use GgufValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }

    /// Bytes one value takes, for the fixed-size types.
    pub fn fixed_size(self) -> Option<u64> {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

impl std::fmt::Display for GgufValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value, typed as stored. Strings are kept as bytes (GGUF says UTF-8, and
/// tokenizer vocabularies occasionally are not); [`GgufValue::as_str`] reads them.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(Vec<u8>),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// The value's type.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            Self::U8(_) => GgufValueType::U8,
            Self::I8(_) => GgufValueType::I8,
            Self::U16(_) => GgufValueType::U16,
            Self::I16(_) => GgufValueType::I16,
            Self::U32(_) => GgufValueType::U32,
            Self::I32(_) => GgufValueType::I32,
            Self::F32(_) => GgufValueType::F32,
            Self::Bool(_) => GgufValueType::Bool,
            Self::String(_) => GgufValueType::String,
            Self::Array(_) => GgufValueType::Array,
            Self::U64(_) => GgufValueType::U64,
            Self::I64(_) => GgufValueType::I64,
            Self::F64(_) => GgufValueType::F64,
        }
    }

    /// A string value, if it is one and is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    /// An integer value of any width, if it is one and is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// An array value: its element type and elements. Arrays of arrays hold each inner
/// array with its own element type.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<Vec<u8>>),
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufArray {
    /// The type of the elements.
    pub fn element_type(&self) -> GgufValueType {
        match self {
            Self::U8(_) => GgufValueType::U8,
            Self::I8(_) => GgufValueType::I8,
            Self::U16(_) => GgufValueType::U16,
            Self::I16(_) => GgufValueType::I16,
            Self::U32(_) => GgufValueType::U32,
            Self::I32(_) => GgufValueType::I32,
            Self::F32(_) => GgufValueType::F32,
            Self::Bool(_) => GgufValueType::Bool,
            Self::String(_) => GgufValueType::String,
            Self::Array(_) => GgufValueType::Array,
            Self::U64(_) => GgufValueType::U64,
            Self::I64(_) => GgufValueType::I64,
            Self::F64(_) => GgufValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Array(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

macro_rules! ggml_types {
    ($($name:ident = $id:literal, $block:literal, $size:literal;)*) => {
        /// A ggml tensor type: every type id of gguf-py's `GGML_QUANT_SIZES`, with its
        /// block size (elements) and type size (bytes per block).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum GgmlType {
            $(
                #[doc = concat!("`", stringify!($name), "` (id ", stringify!($id), "): blocks of ",
                    stringify!($block), " elements in ", stringify!($size), " bytes.")]
                $name = $id,
            )*
        }

        impl GgmlType {
            /// Every known type, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$name),*];

            /// The type of ggml id `id`; `None` for ids ggml never had or has removed.
            pub fn from_id(id: u32) -> Option<Self> {
                match id {
                    $($id => Some(Self::$name),)*
                    _ => None,
                }
            }

            /// ggml's name of the type (`Q4_0`, `BF16`, …).
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }

            /// Elements per block (1 for the plain types).
            pub fn block_size(self) -> u64 {
                match self {
                    $(Self::$name => $block,)*
                }
            }

            /// Bytes per block.
            pub fn type_size(self) -> u64 {
                match self {
                    $(Self::$name => $size,)*
                }
            }
        }
    };
}

ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 18;
    Q4_1 = 3, 32, 20;
    Q5_0 = 6, 32, 22;
    Q5_1 = 7, 32, 24;
    Q8_0 = 8, 32, 34;
    Q8_1 = 9, 32, 40;
    Q2_K = 10, 256, 84;
    Q3_K = 11, 256, 110;
    Q4_K = 12, 256, 144;
    Q5_K = 13, 256, 176;
    Q6_K = 14, 256, 210;
    Q8_K = 15, 256, 292;
    IQ2_XXS = 16, 256, 66;
    IQ2_XS = 17, 256, 74;
    IQ3_XXS = 18, 256, 98;
    IQ1_S = 19, 256, 50;
    IQ4_NL = 20, 32, 18;
    IQ3_S = 21, 256, 110;
    IQ2_S = 22, 256, 82;
    IQ4_XS = 23, 256, 136;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, 256, 56;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, 256, 54;
    TQ2_0 = 35, 256, 66;
    MXFP4 = 39, 32, 17;
    NVFP4 = 40, 64, 36;
    Q1_0 = 41, 128, 18;
}

impl GgmlType {
    /// ggml's id of the type.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The element type of a plain (one element per block) type, as safetensors names
    /// it: F32, F16, BF16, F64 and the signed integers. `None` for block types.
    pub fn dtype(self) -> Option<Dtype> {
        Some(match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::BF16 => Dtype::BF16,
            Self::F64 => Dtype::F64,
            Self::I8 => Dtype::I8,
            Self::I16 => Dtype::I16,
            Self::I32 => Dtype::I32,
            Self::I64 => Dtype::I64,
            _ => return None,
        })
    }

    /// Bytes of `elements` elements of this type: `None` unless they are a whole number
    /// of blocks and the size fits in 63 bits.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        if elements % self.block_size() != 0 {
            return None;
        }
        (elements / self.block_size())
            .checked_mul(self.type_size())
            .filter(|&b| b <= i64::MAX as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One key-value pair.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufKv {
    /// The key.
    pub key: String,
    /// The value, typed as stored.
    pub value: GgufValue,
    /// The pair's bytes in the file (key, type, value).
    pub range: Range<u64>,
}

/// One tensor as its tensor info describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensor {
    /// The tensor's name.
    pub name: String,
    /// Dimensions as stored: innermost (ggml's `ne[0]`, the row) first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset as stored, relative to the data section.
    pub offset: u64,
    /// Absolute offset of the data in the file.
    pub start: u64,
    /// Length of the data in bytes.
    pub len: u64,
    /// The tensor info's bytes in the file.
    pub info_range: Range<u64>,
}

impl GgufTensor {
    /// Dimensions outermost first, as numpy, PyTorch and safetensors write shapes.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Number of elements (1 for a tensor of no dimensions).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// End of the data (exclusive).
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// The data's byte range in the file.
    pub fn range(&self) -> Range<u64> {
        self.start..self.end()
    }
}

/// A stretch of the file, in file order: [`GgufHeader::pieces`] tiles the whole file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GgufPiece {
    /// The metadata (fixed header, key-values, tensor infos): `GgufHeader::raw`.
    Metadata(Range<u64>),
    /// The data of `GgufHeader::tensors[i]` (possibly empty).
    Tensor(usize),
    /// Bytes no tensor covers: alignment padding (zeros, fewer than the alignment, in
    /// files written by llama.cpp and gguf-py) or whatever else a writer left there.
    Padding(Range<u64>),
}

/// A parsed, validated GGUF header.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    /// 2 or 3.
    pub version: u32,
    /// Data alignment: `general.alignment`, or [`DEFAULT_ALIGNMENT`].
    pub alignment: u32,
    /// Key-value pairs in file order.
    pub kvs: Vec<GgufKv>,
    /// Tensors in tensor-info order.
    pub tensors: Vec<GgufTensor>,
    /// The metadata verbatim: the file's first `metadata_len()` bytes.
    pub raw: Vec<u8>,
    /// The key-value section's bytes in the file.
    pub kv_range: Range<u64>,
    /// The tensor-info section's bytes in the file.
    pub tensor_info_range: Range<u64>,
    /// Offset of the data section (the end of the tensor infos, aligned up).
    pub data_start: u64,
    /// Size of the whole file in bytes.
    pub file_len: u64,
    /// The file in order: metadata, then tensors and padding, tiling `0..file_len`.
    pub pieces: Vec<GgufPiece>,
}

impl GgufHeader {
    /// Length of the metadata (fixed header, key-values, tensor infos).
    pub fn metadata_len(&self) -> u64 {
        self.raw.len() as u64
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kvs.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The padding ranges, in file order.
    pub fn padding(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            GgufPiece::Padding(r) => Some(r.clone()),
            _ => None,
        })
    }
}

/// Whether `bytes` start like a GGUF file (the magic only).
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&GGUF_MAGIC)
}

/// Reads and validates the header of the GGUF file at `path`.
pub fn read_header(path: &Path) -> Result<GgufHeader> {
    let file = std::fs::File::open(path).map_err(|e| FragmentError::io("open", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| FragmentError::io("stat", path, e))?
        .len();
    read_header_from(&mut std::io::BufReader::new(file), file_len, path)
}

/// Reads and validates a header from `reader`, positioned at the start of a file of
/// `file_len` bytes. Reads exactly the metadata (the reader is left at its end, before
/// the padding and the tensor data), in small reads: wrap an unbuffered reader in a
/// `BufReader`. `path` is only used in error messages.
pub fn read_header_from(reader: &mut impl Read, file_len: u64, path: &Path) -> Result<GgufHeader> {
    let mut input = Input {
        reader,
        raw: Vec::new(),
        file_len,
        path,
    };
    match parse(&mut input) {
        Ok(h) => Ok(h),
        Err(Fail::Gguf(error)) => Err(FragmentError::InvalidGguf {
            path: path.to_path_buf(),
            error,
        }),
        Err(Fail::Io(e)) => Err(e),
    }
}

enum Fail {
    Gguf(GgufError),
    Io(FragmentError),
}

impl From<GgufError> for Fail {
    fn from(e: GgufError) -> Self {
        Self::Gguf(e)
    }
}

type Parsed<T> = std::result::Result<T, Fail>;

/// The metadata read so far, and the reader it comes from.
struct Input<'a, R> {
    reader: &'a mut R,
    raw: Vec<u8>,
    file_len: u64,
    path: &'a Path,
}

impl<R: Read> Input<'_, R> {
    fn pos(&self) -> u64 {
        self.raw.len() as u64
    }

    /// Reads `n` more bytes, after checking they are in the file and under the metadata
    /// limit (so nothing is allocated for bytes that are not there); returns where they
    /// start in `raw`.
    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Parsed<usize> {
        let pos = self.pos();
        let available = self.file_len.saturating_sub(pos);
        if n > available {
            return Err(GgufError::Truncated {
                what: what(),
                offset: pos,
                needed: n,
                available,
            }
            .into());
        }
        if pos + n > MAX_METADATA_LEN {
            return Err(GgufError::MetadataTooLong {
                what: what(),
                offset: pos,
            }
            .into());
        }
        let start = self.raw.len();
        // n <= MAX_METADATA_LEN - pos: bounded.
        self.raw.resize(start + n as usize, 0);
        self.reader
            .read_exact(&mut self.raw[start..])
            .map_err(|e| Fail::Io(FragmentError::io("read", self.path, e)))?;
        Ok(start)
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Parsed<[u8; N]> {
        let at = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.raw[at..at + N]);
        Ok(out)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Parsed<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Parsed<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed string of at most `limit` bytes.
    fn string(&mut self, limit: u64, what: &dyn Fn() -> String) -> Parsed<Vec<u8>> {
        let len = self.u64(|| format!("length of {}", what()))?;
        if len > limit {
            return Err(GgufError::StringTooLong {
                what: what(),
                len,
                limit,
            }
            .into());
        }
        let at = self.take(len, what)?;
        Ok(self.raw[at..].to_vec())
    }

    fn utf8(&mut self, limit: u64, what: &dyn Fn() -> String) -> Parsed<String> {
        let bytes = self.string(limit, what)?;
        String::from_utf8(bytes).map_err(|_| GgufError::NotUtf8 { what: what() }.into())
    }

    fn value(&mut self, ty: GgufValueType, key: &str, depth: usize) -> Parsed<GgufValue> {
        let what = || format!("value of key {key:?}");
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            GgufValueType::Bool => {
                let [b] = self.array(what)?;
                GgufValue::Bool(bool_of(b, key)?)
            }
            GgufValueType::String => GgufValue::String(self.string(MAX_STRING_LEN, &what)?),
            GgufValueType::Array => GgufValue::Array(self.array_value(key, depth + 1)?),
        })
    }

    /// An array (element type, count, elements) at nesting level `depth` (1: the value
    /// of a key).
    fn array_value(&mut self, key: &str, depth: usize) -> Parsed<GgufArray> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::ArrayTooDeep { key: key.into() }.into());
        }
        let type_id = self.u32(|| format!("array element type of key {key:?}"))?;
        let ty = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.into(),
            type_id,
        })?;
        let len = self.u64(|| format!("array length of key {key:?}"))?;
        if len > MAX_ARRAY_LEN {
            return Err(GgufError::ArrayTooLong {
                key: key.into(),
                len,
            }
            .into());
        }
        let what = || format!("array elements of key {key:?}");
        if let Some(size) = ty.fixed_size() {
            // len <= 2^24 and size <= 8: no overflow; take() bounds the allocation.
            let at = self.take(len * size, what)?;
            let bytes = &self.raw[at..];
            macro_rules! fixed {
                ($variant:ident, $t:ty, $n:literal) => {
                    GgufArray::$variant(
                        bytes
                            .chunks_exact($n)
                            .map(|c| {
                                let mut a = [0u8; $n];
                                a.copy_from_slice(c);
                                <$t>::from_le_bytes(a)
                            })
                            .collect(),
                    )
                };
            }
            return Ok(match ty {
                GgufValueType::U8 => GgufArray::U8(bytes.to_vec()),
                GgufValueType::I8 => fixed!(I8, i8, 1),
                GgufValueType::U16 => fixed!(U16, u16, 2),
                GgufValueType::I16 => fixed!(I16, i16, 2),
                GgufValueType::U32 => fixed!(U32, u32, 4),
                GgufValueType::I32 => fixed!(I32, i32, 4),
                GgufValueType::F32 => fixed!(F32, f32, 4),
                GgufValueType::U64 => fixed!(U64, u64, 8),
                GgufValueType::I64 => fixed!(I64, i64, 8),
                GgufValueType::F64 => fixed!(F64, f64, 8),
                GgufValueType::Bool => GgufArray::Bool(
                    bytes
                        .iter()
                        .map(|&b| bool_of(b, key))
                        .collect::<std::result::Result<_, _>>()?,
                ),
                GgufValueType::String | GgufValueType::Array => {
                    unreachable!("variable-size types have no fixed size")
                }
            });
        }
        // Variable-size elements: each is at least 8 bytes (a string length, or an
        // element type and a count), so a hostile count fails on reading, not allocating.
        let capacity = len.min(4096) as usize;
        if ty == GgufValueType::String {
            let mut out = Vec::with_capacity(capacity);
            let what = || format!("string in the array of key {key:?}");
            for _ in 0..len {
                out.push(self.string(MAX_STRING_LEN, &what)?);
            }
            Ok(GgufArray::String(out))
        } else {
            let mut out = Vec::with_capacity(capacity);
            for _ in 0..len {
                out.push(self.array_value(key, depth + 1)?);
            }
            Ok(GgufArray::Array(out))
        }
    }
}

fn bool_of(byte: u8, key: &str) -> std::result::Result<bool, GgufError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        byte => Err(GgufError::BadBool {
            key: key.into(),
            byte,
        }),
    }
}

fn parse<R: Read>(input: &mut Input<'_, R>) -> Parsed<GgufHeader> {
    let magic: [u8; 4] = input.array(|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic }.into());
    }
    let version = input.u32(|| "version".into())?;
    match version {
        2 | 3 => {}
        1 => return Err(GgufError::VersionOne.into()),
        v if matches!(v.swap_bytes(), 1..=3) => {
            return Err(GgufError::BigEndian {
                version: v.swap_bytes(),
            }
            .into());
        }
        v => return Err(GgufError::UnknownVersion { version: v }.into()),
    }
    let n_tensors = input.u64(|| "tensor count".into())?;
    if n_tensors > MAX_TENSORS {
        return Err(GgufError::TooManyTensors { count: n_tensors }.into());
    }
    let n_kv = input.u64(|| "key-value count".into())?;
    if n_kv > MAX_KEY_VALUES {
        return Err(GgufError::TooManyKeyValues { count: n_kv }.into());
    }

    // Key-values.
    let kv_start = input.pos();
    let mut kvs = Vec::with_capacity(n_kv.min(1024) as usize);
    let mut keys = HashSet::new();
    for i in 0..n_kv {
        let start = input.pos();
        let key = input.utf8(MAX_STRING_LEN, &|| format!("key of key-value {i}"))?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey { key }.into());
        }
        let type_id = input.u32(|| format!("value type of key {key:?}"))?;
        let ty = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            type_id,
        })?;
        let value = input.value(ty, &key, 0)?;
        kvs.push(GgufKv {
            key,
            value,
            range: start..input.pos(),
        });
    }
    let kv_range = kv_start..input.pos();

    let alignment = match kvs.iter().find(|kv| kv.key == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(GgufKv {
            value: GgufValue::U32(a),
            ..
        }) => {
            if !a.is_power_of_two() {
                return Err(GgufError::BadAlignment { alignment: *a }.into());
            }
            *a
        }
        Some(kv) => {
            return Err(GgufError::AlignmentType {
                found: kv.value.value_type(),
            }
            .into());
        }
    };

    // Tensor infos.
    let info_start = input.pos();
    let mut tensors = Vec::with_capacity(n_tensors.min(1024) as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let start = input.pos();
        let name = input.utf8(MAX_TENSOR_NAME_LEN, &|| format!("name of tensor {i}"))?;
        if !names.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor { name }.into());
        }
        let n_dims = input.u32(|| format!("dimension count of tensor {name:?}"))?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { name, n_dims }.into());
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(input.u64(|| format!("dimensions of tensor {name:?}"))?);
        }
        let type_id = input.u32(|| format!("type of tensor {name:?}"))?;
        let offset = input.u64(|| format!("offset of tensor {name:?}"))?;
        let overflow = |what| GgufError::DimensionOverflow {
            name: name.clone(),
            dims: dims.clone(),
            what,
        };
        // ggml counts elements in an i64.
        dims.iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| overflow("element count"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
            name: name.clone(),
            type_id,
        })?;
        let row = dims.first().copied().unwrap_or(1);
        if row % ggml_type.block_size() != 0 {
            return Err(GgufError::RaggedRow {
                name,
                row,
                ggml_type,
                block_size: ggml_type.block_size(),
            }
            .into());
        }
        let len = ggml_type
            .bytes_for(row)
            .and_then(|r| {
                dims.iter()
                    .skip(1)
                    .try_fold(r, |acc, &d| acc.checked_mul(d))
            })
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| overflow("byte size"))?;
        tensors.push(GgufTensor {
            name,
            dims,
            ggml_type,
            offset,
            start: 0, // set below, once the data section is known
            len,
            info_range: start..input.pos(),
        });
    }
    let info_end = input.pos();
    let tensor_info_range = info_start..info_end;

    // The data section starts at the end of the infos, aligned up.
    let align = u64::from(alignment);
    let data_start = info_end.div_ceil(align) * align; // info_end <= 128 MiB: no overflow
    let file_len = input.file_len;
    if data_start > file_len {
        return Err(GgufError::Truncated {
            what: "padding before the data section".into(),
            offset: info_end,
            needed: data_start - info_end,
            available: file_len - info_end,
        }
        .into());
    }
    for t in &mut tensors {
        if t.offset % align != 0 {
            return Err(GgufError::MisalignedOffset {
                name: t.name.clone(),
                offset: t.offset,
                alignment,
            }
            .into());
        }
        let in_file = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.len))
            .is_some_and(|end| end <= file_len);
        if !in_file {
            return Err(GgufError::OutOfRange {
                name: t.name.clone(),
                offset: t.offset,
                len: t.len,
                data_start,
                file_len,
            }
            .into());
        }
        t.start = data_start + t.offset;
    }

    // Tensors in file order (stable: empty tensors sharing an offset keep info order).
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].start, tensors[i].end()));
    let mut pieces = Vec::with_capacity(2 * order.len() + 2);
    pieces.push(GgufPiece::Metadata(0..info_end));
    let mut cursor = info_end;
    let mut last: Option<usize> = None;
    for &i in &order {
        let t = &tensors[i];
        if t.start < cursor {
            let other = last.map_or_else(|| "the metadata".into(), |j| tensors[j].name.clone());
            return Err(GgufError::Overlap {
                name: t.name.clone(),
                other,
            }
            .into());
        }
        if t.start > cursor {
            pieces.push(GgufPiece::Padding(cursor..t.start));
        }
        pieces.push(GgufPiece::Tensor(i));
        cursor = t.end();
        last = Some(i);
    }
    if cursor < file_len {
        pieces.push(GgufPiece::Padding(cursor..file_len));
    }

    Ok(GgufHeader {
        version,
        alignment,
        kvs,
        tensors,
        raw: std::mem::take(&mut input.raw),
        kv_range,
        tensor_info_range,
        data_start,
        file_len,
        pieces,
    })
}

#[cfg(test)]
mod tests;
