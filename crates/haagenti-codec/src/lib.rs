//! haagenti-codec: lossless codecs with stable tags: raw, lz4, zstd and the float-aware
//! byte-plane codec with an entropy-coded exponent plane.
