//! `torchless chat MODEL`: multi-turn chat, one user message per line of stdin.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use anyhow::Context;
use clap::Args;
use torchless_model::{Chat, GenerateOptions, Lazy, Residency, Resident};

use super::load_model;
use crate::options::{ModelArgs, SamplingArgs};
use crate::output;

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Most tokens per answer.
    #[arg(
        short = 'n',
        long = "max-tokens",
        value_name = "N",
        default_value_t = 512
    )]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A Jinja chat template to use instead of the file's (a Hugging Face `chat_template`).
    #[arg(long = "chat-template-file", value_name = "PATH")]
    pub chat_template_file: Option<std::path::PathBuf>,
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    if args.model.lazy {
        run_with::<Lazy>(args)
    } else {
        run_with::<Resident>(args)
    }
}

fn run_with<R: Residency>(args: ChatArgs) -> anyhow::Result<()> {
    let template = super::read_chat_template(args.chat_template_file.as_deref())?;
    let mut model = load_model::<R>(&args.model)?;
    if template.is_some() {
        model.set_chat_template(template)?;
    }
    let mut session = model
        .session_with(args.model.session_options())
        .context("cannot create a session")?;
    let mut chat = Chat::new(&mut session);
    let interactive = std::io::stdin().is_terminal();
    let interrupted = output::interrupt_flag();
    let mut stdout = std::io::stdout().lock();
    let sampling = args.sampling.params();
    if interactive {
        eprintln!("chat: one message per line; Ctrl-D to quit, Ctrl-C to stop an answer");
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read from stdin")?;
        let message = line.trim();
        if message.is_empty() {
            continue;
        }
        interrupted.store(false, Ordering::SeqCst);
        let options = GenerateOptions {
            max_tokens: args.max_tokens,
            sampling: sampling.clone(),
            stop_at_eos: true,
            logprobs: 0,
            stop_tokens: Vec::new(),
            grammar: None,
        };
        let json = args.model.json;
        let answer = chat.send(message, options, |token| {
            if !json {
                let _ = stdout.write_all(token.text.as_bytes());
                let _ = stdout.flush();
            }
            if interrupted.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        if json {
            let value = serde_json::json!({
                "turn": chat.turns(),
                "user": message,
                "answer": answer.text.trim_start(),
                "generated_ids": answer.ids,
                "timings": output::stats_json(&answer.stats),
            });
            writeln!(stdout, "{value}")?;
        } else {
            writeln!(stdout)?;
        }
        stdout.flush()?;
        if args.model.debug || interactive {
            eprintln!("{}", output::stats_line(&answer.stats));
        }
    }
    Ok(())
}
