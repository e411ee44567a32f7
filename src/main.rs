//! The `ferrocast` binary: `serve` (the default), `config check`, and `token`.

use clap::{Parser, Subcommand};

use ferrocast::auth::{mint, now_unix, Claims};
use ferrocast::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ferrocast", version, about = "WebSocket edge server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML config file (every key can also be set by FERROCAST_<SECTION>__<KEY>).
    #[arg(long, short)]
    config: Option<String>,
    /// Override a key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Shortcut for --set listen.public=ADDR.
    #[arg(long)]
    public: Option<String>,
    /// Shortcut for --set listen.admin=ADDR.
    #[arg(long)]
    admin: Option<String>,
    /// Shortcut for --set listen.shards=N.
    #[arg(long)]
    shards: Option<usize>,
}

impl ServeArgs {
    fn overrides(&self) -> Vec<String> {
        let mut sets = self.sets.clone();
        if let Some(p) = &self.public {
            sets.push(format!("listen.public={p}"));
        }
        if let Some(a) = &self.admin {
            sets.push(format!("listen.admin={a}"));
        }
        if let Some(n) = self.shards {
            sets.push(format!("listen.shards={n}"));
        }
        sets
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    Serve(ServeArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Mint an HS256 client token (for demos, tests and scripts).
    Token {
        #[arg(long)]
        secret: String,
        #[arg(long, default_value = "")]
        user: String,
        /// Lifetime, e.g. 1h; 0 = no expiry.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Extra channels, comma-separated.
        #[arg(long, default_value = "")]
        channels: String,
        /// Server-side subscriptions (subscribed at connect), comma-separated.
        #[arg(long, default_value = "")]
        subs: String,
        /// JSON shown in presence.
        #[arg(long)]
        info: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config file and print the effective config.
    Check {
        file: Option<String>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERROCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let code = match cli.command.unwrap_or(Cmd::Serve(ServeArgs::default())) {
        Cmd::Serve(args) => match Config::load(args.config.as_deref(), &args.overrides()) {
            Ok(cfg) => match ferrocast::node::run(cfg) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ferrocast: {e:#}");
                    1
                }
            },
            Err(e) => {
                eprintln!("ferrocast: invalid config: {e}");
                2
            }
        },
        Cmd::Config {
            command: ConfigCmd::Check { file, sets },
        } => match Config::load(file.as_deref(), &sets) {
            Ok(cfg) => {
                print!("{}", cfg.to_toml());
                eprintln!("config ok");
                0
            }
            Err(e) => {
                eprintln!("invalid config: {e}");
                1
            }
        },
        Cmd::Token {
            secret,
            user,
            ttl,
            channels,
            subs,
            info,
        } => {
            let ttl = match humantime::parse_duration(&ttl) {
                Ok(d) => d,
                Err(_) if ttl == "0" => std::time::Duration::ZERO,
                Err(e) => {
                    eprintln!("--ttl: {e}");
                    std::process::exit(2);
                }
            };
            let info = match info.map(|i| serde_json::from_str(&i)) {
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => {
                    eprintln!("--info: {e}");
                    std::process::exit(2);
                }
                None => None,
            };
            let claims = Claims {
                sub: user,
                exp: (!ttl.is_zero()).then(|| now_unix() + ttl.as_secs()),
                channels: list(&channels),
                subs: list(&subs),
                info,
            };
            println!("{}", mint(&secret, &claims));
            0
        }
    };
    std::process::exit(code);
}

/// A comma-separated list, empty items dropped.
fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}
