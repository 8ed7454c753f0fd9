//! `torchless MODEL "PROMPT"`: stream a completion.

use std::io::{IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context};
use torchless_model::{GenerateOptions, Lazy, Residency, Resident};

use super::load_model;
use crate::options::GenerateArgs;
use crate::output;

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.model.lazy {
        run_with::<Lazy>(args)
    } else {
        run_with::<Resident>(args)
    }
}

fn run_with<R: Residency>(args: GenerateArgs) -> anyhow::Result<()> {
    let prompt_text = match (&args.prompt, &args.prompt_ids) {
        (Some(p), _) if p == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the prompt from stdin")?;
            Some(text)
        }
        (Some(p), _) => Some(p.clone()),
        (None, Some(_)) => None,
        (None, None) => {
            bail!("no prompt: give one as an argument, `-` for stdin, or use --prompt-ids")
        }
    };
    let model = load_model::<R>(&args.model)?;
    let tokenizer = model.tokenizer();
    let prompt_ids = match (&prompt_text, &args.prompt_ids) {
        (Some(text), _) => tokenizer.encode(text, tokenizer.prompt_options()),
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("no prompt"),
    };
    let sampling = args.sampling.params();
    if args.model.debug {
        eprintln!("seed: {} | prompt ids: {prompt_ids:?}", sampling.seed);
    }
    let mut session = model
        .session_with(args.model.session_options())
        .context("cannot create a session")?;
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: sampling.clone(),
        stop_at_eos: !args.ignore_eos,
        logprobs: args.logprobs.unwrap_or(0),
        stop_tokens: Vec::new(),
        grammar: None,
    };

    let interrupted = output::interrupt_flag();
    let json = args.model.json;
    let debug = args.model.debug;
    let mut stdout = std::io::stdout().lock();
    let mut write_failed = None;
    let generation = session.generate(&prompt_ids, options, |token| {
        if debug {
            eprintln!("[token {} logprob {:.4}]", token.id, token.logprob);
        }
        if !json {
            if let Err(e) = stdout
                .write_all(token.text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                write_failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        if interrupted.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    if let Some(e) = write_failed {
        // A closed pipe (e.g. `| head`) is not worth an error message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write to stdout");
        }
    }

    if json {
        let mut value = serde_json::json!({
            "prompt_ids": prompt_ids,
            "generated_ids": generation.ids,
            "text": generation.text,
            "stop_reason": format!("{:?}", generation.stats.stop_reason),
            "seed": sampling.seed,
            "timings": output::stats_json(&generation.stats),
        });
        if args.logprobs.is_some() {
            value["logprobs"] = generation
                .tokens
                .iter()
                .map(|t| {
                    t.top_logprobs
                        .iter()
                        .map(|&(id, logprob)| serde_json::json!({"id": id, "logprob": logprob}))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
                .into();
        }
        writeln!(stdout, "{value}").context("cannot write to stdout")?;
    } else {
        // Text held back at the very end (an incomplete UTF-8 sequence) is already in `text`;
        // only a terminal gets a closing newline, so piped output is exactly the generated text.
        let streamed: usize = generation.tokens.iter().map(|t| t.text.len()).sum();
        let rest = &generation.text[streamed.min(generation.text.len())..];
        let _ = stdout.write_all(rest.as_bytes());
        if std::io::stdout().is_terminal() {
            let _ = writeln!(stdout);
        }
        let _ = stdout.flush();
    }
    eprintln!("{}", output::stats_line(&generation.stats));
    Ok(())
}
