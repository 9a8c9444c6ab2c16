//! Writes one generated Llama-shaped model, for measuring ingest and export by hand:
//! `cargo run --release -p haagenti-testkit --example gen_model -- OUT.safetensors BYTES [bf16|f16|f32] [SEED]`

use haagenti_core::Dtype;
use haagenti_testkit::synth;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(out), Some(bytes)) = (
        args.first(),
        args.get(1).and_then(|b| b.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: gen_model OUT.safetensors BYTES [bf16|f16|f32] [SEED]");
        std::process::exit(2);
    };
    let dtype = match args.get(2).map(String::as_str) {
        None | Some("bf16") => Dtype::BF16,
        Some("f16") => Dtype::F16,
        Some("f32") => Dtype::F32,
        Some(other) => {
            eprintln!("unknown dtype {other:?}");
            std::process::exit(2);
        }
    };
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let started = std::time::Instant::now();
    match synth::generate_model(out.as_ref(), bytes, seed, dtype) {
        Ok(size) => println!(
            "wrote {out}: {size} bytes in {:.1}s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
