//! Codec conformance suite: round trips of adversarial inputs and bounded decoding.
