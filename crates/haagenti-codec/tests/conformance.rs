//! Every codec of this crate runs the core conformance suite.

use haagenti_codec::PlanesCodec;
use haagenti_testkit::codec::check_codec;

#[test]
fn planes_codec_conforms() {
    check_codec(&PlanesCodec);
}

#[cfg(feature = "lz4")]
#[test]
fn lz4_codec_conforms() {
    check_codec(&haagenti_codec::Lz4Codec);
}

#[cfg(feature = "zstd")]
#[test]
fn zstd_codec_conforms() {
    check_codec(&haagenti_codec::ZstdCodec::default());
    check_codec(&haagenti_codec::ZstdCodec { level: 1 });
}
