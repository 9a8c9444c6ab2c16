//! haagenti-testkit: what the tests of every haagenti crate share.
//!
//! - [`store`] and [`codec`]: the conformance suites every [`FragmentStore`] backend and
//!   every [`Codec`] runs in its tests ([`store::check_store`], [`codec::check_codec`]),
//!   with their golden helpers.
//! - [`synth`]: seeded, realistic model families (safetensors files and directories of
//!   Llama-shaped models, fine-tunes, casts, LoRA merges): the test and benchmark corpus.
//! - [`env`](mod@env): what a test needs from its machine (the local S3 server), failing with
//!   what to do unless a skip variable asks for the skip.
//! - [`faults`]: [`FaultProxy`](faults::FaultProxy), an HTTP proxy in front of the local
//!   S3 server that resets, throttles, loses and cuts a seeded share of requests.
//! - [`gguf`](mod@gguf): hand-built GGUF bytes for tests of what the reader refuses.
//! - [`hooks`]: [`HookStore`](hooks::HookStore), a store wrapper that counts calls and
//!   injects faults (failed or full writes, truncated or slow reads) and pauses.
//! - [`library`]: a library with test-sized fragments ([`library::test_library`]) and
//!   the check of what gc leaves ([`library::assert_only_live_objects`]).
//! - [`read_path`]: the byte-range read suite every store runs
//!   ([`read_path::check_read_path`]): any range of any stored file, for every encoding,
//!   equals the source and fetches only the fragments it touches.
//!
//! A test-only crate: it panics where a test should fail.
//!
//! [`FragmentStore`]: haagenti_core::FragmentStore
//! [`Codec`]: haagenti_core::Codec
#![warn(missing_docs, unreachable_pub)]

#[allow(clippy::unwrap_used)] // test code: a panic is the failure report
pub mod codec;
pub mod env;
pub mod faults;
pub mod gguf;
pub mod hooks;
pub mod library;
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
pub mod read_path;
#[allow(clippy::unwrap_used)] // test code: a panic is the failure report
pub mod store;
pub mod synth;
