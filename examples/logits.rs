//! The next-token logits after a prompt given as token ids, one JSON array on stdout:
//! `cargo run --release --example logits -- MODEL 1,415,5565`.
//!
//! Used by `scripts/real_model/check_smollm2.py` to compare torchless with `transformers` value
//! by value; the prompt is processed as the CLI processes one (batched prefill).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(ids)) = (args.next(), args.next()) else {
        return Err("usage: logits MODEL ID,ID,...".into());
    };
    let ids: Vec<u32> = ids
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad token id list {ids:?}: {e}"))?;

    let model = torchless_model::Mistral::load(&path)?;
    let mut session = model.session()?;
    let logits = session.prefill(&ids)?;
    let text: Vec<String> = logits.iter().map(|v| format!("{v:e}")).collect();
    println!("[{}]", text.join(","));
    Ok(())
}
