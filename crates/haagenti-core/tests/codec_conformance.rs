//! The codec conformance suite, run against the raw codec.

use haagenti_core::RawCodec;
use haagenti_testkit::codec::check_codec;

#[test]
fn raw_codec_conforms() {
    check_codec(&RawCodec);
}
