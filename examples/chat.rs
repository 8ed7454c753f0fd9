//! Multi-turn chat with the Mistral instruct template; the KV cache is kept across turns:
//! `cargo run --release --example chat -- [MODEL]`.

use std::ops::ControlFlow;

use torchless_model::{Chat, GenerateOptions, Mistral};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/fixtures/models/small-gqa-int8.bin".into());
    let model = Mistral::load(&path)?;
    let mut session = model.session()?;
    let mut chat = Chat::new(&mut session);

    for question in [
        "What is the capital of France?",
        "And of Italy?",
        "Which of the two is larger?",
    ] {
        println!("> {question}");
        let options = GenerateOptions {
            max_tokens: 24,
            ..GenerateOptions::default()
        };
        chat.send(question, options, |token| {
            print!("{}", token.text);
            ControlFlow::Continue(())
        })?;
        println!();
    }
    println!("({} turns)", chat.turns());
    Ok(())
}
