//! `sam-fake-llm`: the fake LLM server of the tests, for manual tries with real agents.
//!
//!   sam-fake-llm [--script FILE.json] [--log FILE.jsonl] [--listen 127.0.0.1:0]
//!
//! Prints its base URL (`http://127.0.0.1:PORT`) as the only line of stdout, then serves
//! until killed. The script format is `sam_node::fake_llm::Script`, e.g.
//! `{"text": "hi", "rules": [{"when": "write", "write": {"path": "/abs/f.txt", "content": "x\n"}, "after": "done"}]}`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sam_node::fake_llm::{FakeLlm, Script};

#[derive(Parser)]
#[command(about = "A scripted fake LLM (Anthropic, OpenAI Responses and Chat, Gemini) on loopback")]
struct Args {
    /// The script (JSON); without it every prompt gets a short text.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Append every request (path, headers, body, answer) as a JSON line to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let script = match &args.script {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<Script>(&text)
                .with_context(|| format!("parsing {}", p.display()))?
        }
        None => Script::default(),
    };
    let llm = FakeLlm::start_on(args.listen, script, args.log)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", llm.base_url())?;
    out.flush()?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
