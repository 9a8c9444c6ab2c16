//! The reader against hand-built files: what it accepts, and each violation with its
//! reason. (Files written by gguf-py itself: `tests/gguf_reference.rs`.)

use super::*;

use haagenti_testkit::gguf::{array, file, kv, string, tensor_info};

fn parse(bytes: &[u8]) -> Result<GgufHeader> {
    read_header_from(&mut &bytes[..], bytes.len() as u64, Path::new("t.gguf"))
}

/// The reader's error for `bytes`, checking that the message names the file.
fn err(bytes: &[u8]) -> GgufError {
    match parse(bytes) {
        Err(e @ FragmentError::InvalidGguf { .. }) => {
            assert!(
                e.to_string().starts_with("t.gguf: invalid GGUF file: "),
                "{e}"
            );
            let FragmentError::InvalidGguf { error, .. } = e else {
                unreachable!()
            };
            error
        }
        Err(e) => panic!("not an InvalidGguf error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

fn name_kv() -> Vec<u8> {
    let mut v = Vec::new();
    string(&mut v, b"tiny");
    kv("general.name", 8, &v)
}

/// Two tensors: an F32 [4] at 0 (16 bytes) and a Q8_0 of 2 rows of 32 at 32 (68 bytes),
/// and the file ending right after the last one.
fn two_tensors() -> Vec<u8> {
    file(
        3,
        &[name_kv(), kv("x.count", 4, &7u32.to_le_bytes())],
        &[
            tensor_info("a", &[4], 0, 0),
            tensor_info("b.weight", &[32, 2], 8, 32),
        ],
        32,
        32 + 68,
    )
}

#[test]
fn accepts_a_valid_file_and_says_where_everything_is() {
    let bytes = two_tensors();
    let h = parse(&bytes).unwrap();
    assert_eq!((h.version, h.alignment), (3, 32));
    assert_eq!(h.kvs.len(), 2);
    assert_eq!(h.get("general.name").unwrap().as_str(), Some("tiny"));
    assert_eq!(h.get("x.count"), Some(&GgufValue::U32(7)));
    assert_eq!(h.kv_range.start, FIXED_HEADER_LEN);
    assert_eq!(h.kvs[0].range.start, FIXED_HEADER_LEN);
    assert_eq!(h.kvs[1].range.end, h.kv_range.end);
    assert_eq!(h.tensor_info_range.start, h.kv_range.end);
    assert_eq!(h.metadata_len(), h.tensor_info_range.end);
    assert_eq!(h.raw[..], bytes[..h.raw.len()]);
    assert_eq!(h.data_start % 32, 0);
    assert!(h.data_start >= h.metadata_len() && h.data_start < h.metadata_len() + 32);
    let b = h.tensor("b.weight").unwrap();
    assert_eq!(b.shape(), [2, 32]);
    assert_eq!(
        (b.ggml_type, b.n_elements(), b.len),
        (GgmlType::Q8_0, 64, 68)
    );
    assert_eq!(b.start, h.data_start + 32);
    assert_eq!(b.end(), bytes.len() as u64);
    assert_eq!(h.tensors[0].info_range.end, h.tensors[1].info_range.start);
    assert_eq!(
        h.pieces,
        [
            GgufPiece::Metadata(0..h.metadata_len()),
            GgufPiece::Padding(h.metadata_len()..h.data_start),
            GgufPiece::Tensor(0),
            GgufPiece::Padding(h.data_start + 16..h.data_start + 32),
            GgufPiece::Tensor(1),
        ]
    );
    assert_eq!(h.padding().count(), 2);
    // Version 2 has the same layout.
    let mut v2 = bytes.clone();
    v2[4] = 2;
    assert_eq!(parse(&v2).unwrap().version, 2);
    // A reader left at the end of the metadata.
    let mut reader = &bytes[..];
    read_header_from(&mut reader, bytes.len() as u64, Path::new("t.gguf")).unwrap();
    assert_eq!(reader.len() as u64, bytes.len() as u64 - h.metadata_len());
}

#[test]
fn reads_every_value_type_and_nested_arrays() {
    let mut s = Vec::new();
    string(&mut s, "héllo".as_bytes());
    let mut strings = Vec::new();
    for t in ["a", "", "ünï"] {
        string(&mut strings, t.as_bytes());
    }
    let inner1 = array(5, 2, &[1, 0, 0, 0, 2, 0, 0, 0]);
    let inner2 = array(8, 1, &strings[..9]); // ["a"]
    let nested = array(9, 2, &[inner1, inner2].concat());
    let kvs = [
        kv("u8", 0, &[200]),
        kv("i8", 1, &[0x80]),
        kv("u16", 2, &60000u16.to_le_bytes()),
        kv("i16", 3, &(-2i16).to_le_bytes()),
        kv("u32", 4, &4_000_000_000u32.to_le_bytes()),
        kv("i32", 5, &(-3i32).to_le_bytes()),
        kv("f32", 6, &1.5f32.to_le_bytes()),
        kv("bool", 7, &[1]),
        kv("str", 8, &s),
        kv("strs", 9, &array(8, 3, &strings)),
        kv("u64", 10, &u64::MAX.to_le_bytes()),
        kv("i64", 11, &i64::MIN.to_le_bytes()),
        kv("f64", 12, &(-0.25f64).to_le_bytes()),
        kv("bools", 9, &array(7, 3, &[0, 1, 1])),
        kv(
            "f32s",
            9,
            &array(6, 2, &[1.0f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat()),
        ),
        kv("empty", 9, &array(10, 0, &[])),
        kv("nested", 9, &nested),
    ];
    let h = parse(&file(3, &kvs, &[], 32, 0)).unwrap();
    let v = |k: &str| h.get(k).unwrap().clone();
    assert_eq!(v("u8"), GgufValue::U8(200));
    assert_eq!(v("i8"), GgufValue::I8(-128));
    assert_eq!(v("u16"), GgufValue::U16(60000));
    assert_eq!(v("i16"), GgufValue::I16(-2));
    assert_eq!(v("u32"), GgufValue::U32(4_000_000_000));
    assert_eq!(v("i32"), GgufValue::I32(-3));
    assert_eq!(v("f32"), GgufValue::F32(1.5));
    assert_eq!(v("bool"), GgufValue::Bool(true));
    assert_eq!(v("str").as_str(), Some("héllo"));
    assert_eq!(
        v("strs"),
        GgufValue::Array(GgufArray::String(vec![
            b"a".to_vec(),
            vec![],
            "ünï".as_bytes().to_vec()
        ]))
    );
    assert_eq!(v("u64").as_u64(), Some(u64::MAX));
    assert_eq!(v("i64"), GgufValue::I64(i64::MIN));
    assert_eq!(v("f64"), GgufValue::F64(-0.25));
    assert_eq!(
        v("bools"),
        GgufValue::Array(GgufArray::Bool(vec![false, true, true]))
    );
    assert_eq!(v("f32s"), GgufValue::Array(GgufArray::F32(vec![1.0, 2.0])));
    let GgufValue::Array(empty) = v("empty") else {
        panic!()
    };
    assert_eq!(
        (empty.element_type(), empty.is_empty()),
        (GgufValueType::U64, true)
    );
    assert_eq!(
        v("nested"),
        GgufValue::Array(GgufArray::Array(vec![
            GgufArray::I32(vec![1, 2]),
            GgufArray::String(vec![b"a".to_vec()])
        ]))
    );
    assert!(h.tensors.is_empty());
    assert_eq!(h.pieces.len(), 2, "metadata and padding: {:?}", h.pieces);
}

#[test]
fn custom_alignment_moves_the_data_section() {
    for align in [1u32, 64, 4096] {
        let kvs = [kv(ALIGNMENT_KEY, 4, &align.to_le_bytes())];
        let infos = [
            tensor_info("t", &[8], 24, 0),
            tensor_info("u", &[2], 0, u64::from(align.max(8))),
        ];
        let bytes = file(3, &kvs, &infos, align as usize, align.max(8) as usize + 8);
        let h = parse(&bytes).unwrap();
        assert_eq!(h.alignment, align);
        assert_eq!(h.data_start % u64::from(align), 0);
        assert_eq!(h.tensors[1].end(), bytes.len() as u64);
        // Tensors sorted into file order regardless of info order.
        let infos = [infos[1].clone(), infos[0].clone()];
        let h = parse(&file(
            3,
            &kvs,
            &infos,
            align as usize,
            align.max(8) as usize + 8,
        ))
        .unwrap();
        assert_eq!(h.pieces.last(), Some(&GgufPiece::Tensor(0)));
    }
}

#[test]
fn empty_tensors_and_scalars_are_accepted() {
    let infos = [
        tensor_info("scalar", &[], 0, 0),
        tensor_info("empty", &[0, 5], 8, 32),
        tensor_info("next", &[32], 8, 32),
    ];
    let h = parse(&file(3, &[], &infos, 32, 32 + 34)).unwrap();
    assert_eq!((h.tensors[0].n_elements(), h.tensors[0].len), (1, 4));
    assert_eq!(h.tensors[1].len, 0);
    let order: Vec<_> = h
        .pieces
        .iter()
        .filter_map(|p| match p {
            GgufPiece::Tensor(i) => Some(*i),
            _ => None,
        })
        .collect();
    assert_eq!(order, [0, 1, 2]);
}

#[test]
fn refuses_bad_magic_and_versions() {
    let mut bytes = two_tensors();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(matches!(err(&bytes), GgufError::BadMagic { .. }));
    let set_version = |v: u32| {
        let mut b = two_tensors();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        b
    };
    let e = err(&set_version(1));
    assert_eq!(e, GgufError::VersionOne);
    assert!(e.to_string().contains("version 1 is not supported"), "{e}");
    assert_eq!(
        err(&set_version(0)),
        GgufError::UnknownVersion { version: 0 }
    );
    assert_eq!(
        err(&set_version(4)),
        GgufError::UnknownVersion { version: 4 }
    );
    assert_eq!(
        err(&set_version(3u32.swap_bytes())),
        GgufError::BigEndian { version: 3 }
    );
}

#[test]
fn every_truncation_is_refused_with_its_place() {
    let mut s = Vec::new();
    string(&mut s, b"x");
    let kvs = [
        name_kv(),
        kv("strs", 9, &array(8, 2, &[s.clone(), s].concat())),
        kv("nested", 9, &array(9, 1, &array(0, 2, &[1, 2]))),
    ];
    let infos = [
        tensor_info("a", &[4], 0, 0),
        tensor_info("b", &[32, 2], 8, 32),
    ];
    let bytes = file(3, &kvs, &infos, 32, 32 + 68);
    let h = parse(&bytes).unwrap();
    for len in 0..bytes.len() {
        let e = err(&bytes[..len]);
        let ok = match &e {
            GgufError::Truncated { offset, .. } => *offset <= len as u64,
            GgufError::OutOfRange { .. } => len as u64 >= h.data_start,
            _ => false,
        };
        assert!(ok, "cut at {len}: {e}");
    }
    // The reader is told a longer file than it yields: an I/O error, not a panic.
    let e = read_header_from(&mut &bytes[..30], bytes.len() as u64, Path::new("t.gguf"));
    assert!(matches!(e, Err(FragmentError::Io { .. })), "{e:?}");
}

#[test]
fn hostile_counts_and_lengths_are_refused_before_allocating() {
    const HUGE: u64 = 1 << 63;
    let mut bytes = file(3, &[], &[], 32, 0);
    bytes[8..16].copy_from_slice(&HUGE.to_le_bytes());
    assert_eq!(err(&bytes), GgufError::TooManyTensors { count: HUGE });
    let mut bytes = file(3, &[], &[], 32, 0);
    bytes[16..24].copy_from_slice(&HUGE.to_le_bytes());
    assert_eq!(err(&bytes), GgufError::TooManyKeyValues { count: HUGE });
    // Under the limit but far beyond the file: truncated, not allocated.
    let mut bytes = file(3, &[], &[], 32, 0);
    bytes[16..24].copy_from_slice(&MAX_KEY_VALUES.to_le_bytes());
    assert!(matches!(err(&bytes), GgufError::Truncated { .. }));

    let mut key = HUGE.to_le_bytes().to_vec();
    key.extend_from_slice(b"k");
    let mut bytes = file(3, &[], &[], 32, 0);
    bytes[16] = 1;
    bytes.splice(24..24, key);
    assert!(matches!(
        err(&bytes),
        GgufError::StringTooLong { len: HUGE, .. }
    ));

    let string_value = kv("s", 8, &HUGE.to_le_bytes());
    assert!(matches!(
        err(&file(3, &[string_value], &[], 32, 0)),
        GgufError::StringTooLong {
            len: HUGE,
            limit: MAX_STRING_LEN,
            ..
        }
    ));
    let long = kv("a", 9, &array(0, HUGE, &[]));
    assert_eq!(
        err(&file(3, &[long], &[], 32, 0)),
        GgufError::ArrayTooLong {
            key: "a".into(),
            len: HUGE
        }
    );
    let nested = kv("n", 9, &array(9, 1, &array(0, HUGE, &[])));
    assert_eq!(
        err(&file(3, &[nested], &[], 32, 0)),
        GgufError::ArrayTooLong {
            key: "n".into(),
            len: HUGE
        }
    );
    let strings = kv("s", 9, &array(8, 1, &HUGE.to_le_bytes()));
    assert!(matches!(
        err(&file(3, &[strings], &[], 32, 0)),
        GgufError::StringTooLong { len: HUGE, .. }
    ));
    // Array counts under the limit but beyond the file: truncated.
    let strings = kv("s", 9, &array(8, MAX_ARRAY_LEN, &[]));
    assert!(matches!(
        err(&file(3, &[strings], &[], 32, 0)),
        GgufError::Truncated { .. }
    ));
    let inner = kv("s", 9, &array(9, MAX_ARRAY_LEN, &[]));
    assert!(matches!(
        err(&file(3, &[inner], &[], 32, 0)),
        GgufError::Truncated { .. }
    ));

    let mut name = tensor_info("t", &[4], 0, 0);
    name[..8].copy_from_slice(&HUGE.to_le_bytes());
    assert!(matches!(
        err(&file(3, &[], &[name], 32, 16)),
        GgufError::StringTooLong {
            len: HUGE,
            limit: MAX_TENSOR_NAME_LEN,
            ..
        }
    ));
    let dims = tensor_info("t", &[HUGE], 0, 0);
    assert!(matches!(
        err(&file(3, &[], &[dims], 32, 16)),
        GgufError::DimensionOverflow {
            what: "element count",
            ..
        }
    ));
    let offset = tensor_info("t", &[4], 0, HUGE);
    assert!(matches!(
        err(&file(3, &[], &[offset], 32, 16)),
        GgufError::OutOfRange { .. }
    ));
    // A reader that never ends, of a file claiming to be 2^64 - 1 bytes.
    let mut endless = b"GGUF"
        .iter()
        .copied()
        .chain(3u32.to_le_bytes())
        .collect::<Vec<_>>();
    endless.extend_from_slice(&0u64.to_le_bytes());
    endless.extend_from_slice(&1u64.to_le_bytes());
    endless.extend_from_slice(&HUGE.to_le_bytes());
    let mut reader = std::io::Read::chain(&endless[..], std::io::repeat(b'k'));
    let e = read_header_from(&mut reader, u64::MAX, Path::new("t.gguf")).unwrap_err();
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
}

#[test]
fn refuses_bad_alignment() {
    for bad in [0u32, 3, 48, u32::MAX] {
        let kvs = [kv(ALIGNMENT_KEY, 4, &bad.to_le_bytes())];
        assert_eq!(
            err(&file(3, &kvs, &[], 32, 0)),
            GgufError::BadAlignment { alignment: bad }
        );
    }
    let kvs = [kv(ALIGNMENT_KEY, 10, &64u64.to_le_bytes())];
    assert_eq!(
        err(&file(3, &kvs, &[], 32, 0)),
        GgufError::AlignmentType {
            found: GgufValueType::U64
        }
    );
    // Offsets must be multiples of the alignment.
    let infos = [tensor_info("t", &[4], 0, 16)];
    assert!(matches!(
        err(&file(3, &[], &infos, 32, 64)),
        GgufError::MisalignedOffset {
            offset: 16,
            alignment: 32,
            ..
        }
    ));
}

#[test]
fn refuses_overlaps_and_out_of_range_offsets() {
    let infos = [tensor_info("a", &[4], 0, 0), tensor_info("b", &[4], 0, 32)];
    assert!(parse(&file(3, &[], &infos, 32, 64)).is_ok());
    let infos = [tensor_info("a", &[16], 0, 0), tensor_info("b", &[4], 0, 0)];
    assert_eq!(
        err(&file(3, &[], &infos, 32, 64)),
        GgufError::Overlap {
            name: "a".into(),
            other: "b".into()
        }
    );
    let infos = [
        tensor_info("a", &[16], 0, 32),
        tensor_info("b", &[32], 0, 0),
    ];
    assert_eq!(
        err(&file(3, &[], &infos, 32, 128)),
        GgufError::Overlap {
            name: "a".into(),
            other: "b".into()
        }
    );
    let infos = [tensor_info("a", &[16], 0, 64)];
    assert!(matches!(
        err(&file(3, &[], &infos, 32, 100)),
        GgufError::OutOfRange { .. }
    ));
    let infos = [tensor_info("a", &[16], 0, u64::MAX - 31)];
    assert!(matches!(
        err(&file(3, &[], &infos, 32, 100)),
        GgufError::OutOfRange { .. }
    ));
    // The padding before the data section is part of the file.
    let mut bytes = file(3, &[], &[tensor_info("a", &[0], 0, 0)], 32, 0);
    let meta = parse(&bytes).unwrap().metadata_len() as usize;
    bytes.truncate(meta + 1);
    assert!(matches!(err(&bytes), GgufError::Truncated { .. }));
}

#[test]
fn refuses_bad_types_dimensions_and_names() {
    for id in [4u32, 5, 31, 32, 33, 36, 37, 38, 42, u32::MAX] {
        let infos = [tensor_info("t", &[32], id, 0)];
        assert_eq!(
            err(&file(3, &[], &infos, 32, 64)),
            GgufError::UnknownGgmlType {
                name: "t".into(),
                type_id: id
            }
        );
    }
    let kvs = [kv("k", 13, &[0])];
    assert_eq!(
        err(&file(3, &kvs, &[], 32, 0)),
        GgufError::UnknownValueType {
            key: "k".into(),
            type_id: 13
        }
    );
    let kvs = [kv("k", 9, &array(99, 0, &[]))];
    assert_eq!(
        err(&file(3, &kvs, &[], 32, 0)),
        GgufError::UnknownValueType {
            key: "k".into(),
            type_id: 99
        }
    );
    let infos = [tensor_info("t", &[33], 8, 0)];
    assert!(matches!(
        err(&file(3, &[], &infos, 32, 64)),
        GgufError::RaggedRow {
            row: 33,
            block_size: 32,
            ..
        }
    ));
    let infos = [tensor_info("t", &[1, 1, 1, 1, 1], 0, 0)];
    assert!(matches!(
        err(&file(3, &[], &infos, 32, 64)),
        GgufError::TooManyDims { n_dims: 5, .. }
    ));
    let infos = [tensor_info("t", &[1 << 32, 1 << 32], 0, 0)];
    assert!(matches!(
        err(&file(3, &[], &infos, 32, 64)),
        GgufError::DimensionOverflow {
            what: "element count",
            ..
        }
    ));
    let infos = [tensor_info("t", &[1 << 31, 1 << 31], 0, 0)];
    assert!(matches!(
        err(&file(3, &[], &infos, 32, 64)),
        GgufError::DimensionOverflow {
            what: "byte size",
            ..
        }
    ));
    let infos = [tensor_info("t", &[4], 0, 0), tensor_info("t", &[4], 0, 32)];
    assert_eq!(
        err(&file(3, &[], &infos, 32, 64)),
        GgufError::DuplicateTensor { name: "t".into() }
    );
    let long = "n".repeat(65);
    assert!(matches!(
        err(&file(3, &[], &[tensor_info(&long, &[4], 0, 0)], 32, 16)),
        GgufError::StringTooLong {
            len: 65,
            limit: 64,
            ..
        }
    ));
    let longest = "n".repeat(64);
    assert!(parse(&file(3, &[], &[tensor_info(&longest, &[4], 0, 0)], 32, 16)).is_ok());
    let mut bad_name = tensor_info("t", &[4], 0, 0);
    bad_name[8] = 0xff;
    assert!(matches!(
        err(&file(3, &[], &[bad_name], 32, 16)),
        GgufError::NotUtf8 { .. }
    ));
}

#[test]
fn refuses_bad_key_values() {
    let kvs = [kv("k", 0, &[1]), kv("k", 0, &[2])];
    assert_eq!(
        err(&file(3, &kvs, &[], 32, 0)),
        GgufError::DuplicateKey { key: "k".into() }
    );
    assert_eq!(
        err(&file(3, &[kv("b", 7, &[2])], &[], 32, 0)),
        GgufError::BadBool {
            key: "b".into(),
            byte: 2
        }
    );
    assert_eq!(
        err(&file(3, &[kv("b", 9, &array(7, 2, &[1, 7]))], &[], 32, 0)),
        GgufError::BadBool {
            key: "b".into(),
            byte: 7
        }
    );
    let mut bad_key = kv("k", 0, &[1]);
    bad_key[8] = 0xc3;
    assert!(matches!(
        err(&file(3, &[bad_key], &[], 32, 0)),
        GgufError::NotUtf8 { .. }
    ));
    // Invalid UTF-8 in a string value is kept as bytes.
    let mut v = Vec::new();
    string(&mut v, &[0xff, 0xfe]);
    let h = parse(&file(3, &[kv("s", 8, &v)], &[], 32, 0)).unwrap();
    assert_eq!(h.get("s"), Some(&GgufValue::String(vec![0xff, 0xfe])));
    assert_eq!(h.get("s").unwrap().as_str(), None);
}

#[test]
fn array_nesting_is_bounded() {
    let nest = |depth: usize| {
        let mut v = array(0, 1, &[9]);
        for _ in 1..depth {
            v = array(9, 1, &v);
        }
        kv("deep", 9, &v)
    };
    assert!(parse(&file(3, &[nest(MAX_ARRAY_DEPTH)], &[], 32, 0)).is_ok());
    assert_eq!(
        err(&file(3, &[nest(MAX_ARRAY_DEPTH + 1)], &[], 32, 0)),
        GgufError::ArrayTooDeep { key: "deep".into() }
    );
    // An endless nest in a long file stops at the bound, not the stack.
    let mut deep = Vec::new();
    for _ in 0..100_000 {
        deep.extend_from_slice(&array(9, 1, &[]));
    }
    assert!(matches!(
        err(&file(3, &[kv("deep", 9, &deep)], &[], 32, 0)),
        GgufError::ArrayTooDeep { .. }
    ));
}

#[test]
fn ggml_type_table_is_consistent() {
    for &t in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(t.id()), Some(t));
        assert_eq!(t.bytes_for(t.block_size()), Some(t.type_size()));
        if t.block_size() > 1 {
            assert_eq!(t.bytes_for(t.block_size() + 1), None);
        }
    }
    assert_eq!(GgmlType::ALL.len(), 34);
    for &t in GgmlType::ALL {
        match t.dtype() {
            Some(d) => assert_eq!((t.block_size(), t.type_size()), (1, d.size() as u64)),
            None => assert!(t.block_size() > 1, "{t}"),
        }
    }
    assert_eq!(GgmlType::Q6_K.to_string(), "Q6_K");
    assert_eq!(GgmlType::F32.bytes_for(u64::MAX / 2), None);
}

#[test]
fn mutated_files_never_panic_and_accepted_ones_tile_the_file() {
    let base = two_tensors();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut bytes = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        if next() % 4 == 0 {
            bytes.truncate((next() % bytes.len() as u64) as usize);
        }
        let Ok(h) = parse(&bytes) else { continue };
        accepted += 1;
        let mut cursor = 0;
        for p in &h.pieces {
            let r = match p {
                GgufPiece::Metadata(r) | GgufPiece::Padding(r) => r.clone(),
                GgufPiece::Tensor(i) => h.tensors[*i].range(),
            };
            assert_eq!(r.start, cursor);
            cursor = r.end;
        }
        assert_eq!(cursor, bytes.len() as u64);
    }
    assert!(accepted > 0);
}
