//! `haagenti_fragments::open`: every kind of location, the errors of the bad ones, and a
//! library opened this way ingesting and reading a tensor back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use haagenti_fragments::prelude::*;

#[cfg(feature = "fs")]
/// Writes a safetensors file with one bf16 tensor `w` of 512x512 values; returns its data.
fn write_model(path: &std::path::Path) -> Vec<u8> {
    let data: Vec<u8> = (0..512u32 * 512)
        .flat_map(|i| {
            // bf16 values of a smooth curve: realistic enough for every codec path.
            let v = ((i as f32) * 0.001).sin() * 0.05;
            let bits = (v.to_bits() >> 16) as u16;
            bits.to_le_bytes()
        })
        .collect();
    let header = format!(
        r#"{{"w":{{"dtype":"BF16","shape":[512,512],"data_offsets":[0,{}]}}}}"#,
        data.len()
    );
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
    data
}

async fn invalid_location(location: &str, options: OpenOptions) -> String {
    match open(location, options).await {
        Err(e @ FragmentError::InvalidLocation { .. }) => {
            let FragmentError::InvalidLocation {
                location: given, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(given, location);
            e.to_string()
        }
        Err(e) => panic!("{location:?}: expected InvalidLocation, got {e:?}"),
        Ok(_) => panic!("{location:?}: opened"),
    }
}

#[cfg(feature = "fs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_opens_ingests_and_reads_a_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    let data = write_model(&src);
    let location = dir.path().join("lib");
    let lib = open(
        location.to_str().unwrap(),
        OpenOptions::default()
            .cache_bytes(16 << 20)
            .fragment_size(Some(64 << 10))
            .parallelism(Some(2)),
    )
    .await
    .unwrap();
    assert!(location.join("tmp").is_dir(), "the directory is created");
    assert_eq!(lib.config().fragment_size, 64 << 10);
    assert_eq!(lib.config().parallelism, 2);

    let report = lib
        .ingest("m", &src, IngestOptions::default())
        .await
        .unwrap();
    assert_eq!(report.tensors, 1);
    let model: ModelHandle = lib.open_model("m").await.unwrap();
    let tensor = model.read_tensor("w").await.unwrap();
    assert_eq!(tensor.to_bytes(), data);
    // Read again: served by the cache that `cache_bytes` turned on.
    let before = lib.metrics();
    model.read_tensor("w").await.unwrap();
    assert_eq!(lib.metrics().since(&before).store_reads, 0);

    // The same file under a second name: every fragment is now used by both models.
    lib.ingest("m2", &src, IngestOptions::default())
        .await
        .unwrap();
    let users = lib.fragment_users().await.unwrap();
    assert_eq!(users.len(), report.new_fragments as usize);
    for models in users.values() {
        assert_eq!(models.iter().collect::<Vec<_>>(), ["m", "m2"]);
    }
}

#[cfg(feature = "fs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_url_opens_the_same_library() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    write_model(&src);
    let path = dir.path().join("lib");
    let by_path = open(path.to_str().unwrap(), OpenOptions::default())
        .await
        .unwrap();
    by_path
        .ingest("m", &src, IngestOptions::default())
        .await
        .unwrap();
    let url = format!("file://{}", path.display());
    let by_url = open(&url, OpenOptions::default()).await.unwrap();
    assert_eq!(by_url.models().await.unwrap(), ["m"]);
    let store = haagenti_fragments::open_store(&url, &OpenOptions::default())
        .await
        .unwrap();
    assert!(!store.list("manifests/").await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_locations_fail_with_invalid_location_naming_why() {
    let cases = [
        ("", "is empty"),
        ("file://", "must be absolute"),
        ("file://relative/lib", "must be absolute (file:///path)"),
        ("http://example.com/lib", "unsupported scheme"),
        ("gs://bucket/lib", "unsupported scheme"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
    ];
    for (location, needle) in cases {
        let message = invalid_location(location, OpenOptions::default()).await;
        assert!(
            message.contains(needle),
            "{location:?}: {message:?} lacks {needle:?}"
        );
        assert!(message.starts_with("library location "), "{message}");
    }
    #[cfg(not(feature = "s3"))]
    {
        let message = invalid_location("s3://bucket/lib", OpenOptions::default()).await;
        assert!(message.contains("no S3 support"), "{message}");
    }
}

#[tokio::test]
async fn out_of_range_options_fail_before_touching_the_location() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("lib");
    let err = open(
        location.to_str().unwrap(),
        OpenOptions::default().fragment_size(Some(1000)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FragmentError::InvalidInput(_)), "{err:?}");
    assert!(!location.exists());
    #[cfg(not(feature = "lsh"))]
    {
        let err = open(
            location.to_str().unwrap(),
            OpenOptions::default().similarity(true),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("lsh feature"), "{err}");
    }
}
