//! `torchless tokenize MODEL_OR_TOKENIZER_JSON [TEXT]`: print token ids.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use torchless_model::{DecodeOptions, EncodeOptions, Tokenizer};

#[derive(Args, Debug, Clone)]
pub struct TokenizeArgs {
    /// A GGUF file (a vocabulary-only one too), a torchless model file or a Hugging Face
    /// tokenizer.json.
    pub source: PathBuf,
    /// Text to encode; without it, stdin is read verbatim (nothing stripped).
    pub text: Option<String>,
    /// Do not put the BOS token first (it is put first when the model's prompts start with it).
    #[arg(long = "no-bos")]
    pub no_bos: bool,
    /// Treat special-token strings (`<s>`, `</s>`, `[INST]`, ...) in the text as their ids.
    #[arg(long = "parse-special")]
    pub parse_special: bool,
    /// Print {"ids": [...], "pieces": [...], "decoded": "..."}.
    #[arg(long)]
    pub json: bool,
}

/// Loads a tokenizer from a model file (torchless or GGUF, including a vocabulary-only GGUF:
/// the one [`torchless_model::Model::load`] builds) or a tokenizer.json.
pub fn load_tokenizer(source: &Path) -> anyhow::Result<Tokenizer> {
    torchless_model::load_tokenizer(source).with_context(|| {
        format!(
            "cannot load a tokenizer from {} (a GGUF file, a model file or a tokenizer.json)",
            source.display()
        )
    })
}

pub fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    let tokenizer = load_tokenizer(&args.source)?;
    let text = match &args.text {
        Some(text) => text.clone(),
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            String::from_utf8(bytes).context("stdin is not valid UTF-8")?
        }
    };
    let ids = tokenizer.encode(
        &text,
        EncodeOptions {
            add_bos: !args.no_bos && tokenizer.adds_bos(),
            parse_special: args.parse_special,
        },
    );
    if args.json {
        let pieces: Vec<&str> = ids
            .iter()
            .map(|&id| tokenizer.token_to_piece(id).unwrap_or(""))
            .collect();
        let decoded = tokenizer.decode(&ids, DecodeOptions::default());
        println!(
            "{}",
            serde_json::json!({"ids": ids, "pieces": pieces, "decoded": decoded})
        );
    } else {
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", ids.join(" "));
    }
    Ok(())
}
