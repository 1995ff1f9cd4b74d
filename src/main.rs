//! The `streamserver` command: arguments, logger, exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use streamserver::config::Config;

const USAGE: &str = "\
streamserver: store and stream video files over HTTP

Usage: streamserver [--config PATH] [--listen ADDR]

Options:
  --config PATH   JSON config file (default: ./conf.json; a missing default file means defaults)
  --listen ADDR   address and port to listen on, overriding `listen` in the config
                  (for example 127.0.0.1:9000)
  --help          print this help and exit
  --version       print the version and exit

Logging goes to stderr; set RUST_LOG (default: info) to change the level.";

struct Args {
    config: Option<PathBuf>,
    listen: Option<String>,
}

enum Parsed {
    Run(Args),
    Exit(&'static str),
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut parsed = Args { config: None, listen: None };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value; see --help"))
        };
        match flag.as_str() {
            "--config" => parsed.config = Some(PathBuf::from(value("--config")?)),
            "--listen" => parsed.listen = Some(value("--listen")?),
            "-h" | "--help" => return Ok(Parsed::Exit(USAGE)),
            "-V" | "--version" => return Ok(Parsed::Exit(concat!("streamserver ", env!("CARGO_PKG_VERSION")))),
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    Ok(Parsed::Run(parsed))
}

fn load_config(args: &Args) -> Result<Config, String> {
    let path = args.config.clone().unwrap_or_else(|| PathBuf::from("conf.json"));
    let mut config = Config::load(&path, args.config.is_some()).map_err(|e| e.to_string())?;
    if let Some(listen) = &args.listen {
        config.listen = listen.clone();
        config.listen_addr().map_err(|e| format!("--listen: {}", e.trim_start_matches("field `listen`: ")))?;
    }
    Ok(config)
}

/// Keeps freed memory from piling up in glibc's allocator: with its defaults, each of the
/// many worker threads gets its own arena, and the threshold for returning large buffers to the
/// system rises after the first one is freed, so RSS grows by a few MiB under load and stays.
/// Two arenas and a fixed 128 KiB mmap threshold keep RSS flat (see the soak figures in
/// RELIABILITY.md); requests allocate little, so threads rarely wait on a shared arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Exit(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("streamserver: {message}");
            return ExitCode::from(2);
        }
    };
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("streamserver: {message}");
            return ExitCode::from(2);
        }
    };

    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match streamserver::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error}");
            match error {
                streamserver::StartError::Config(_) => ExitCode::from(2),
                streamserver::StartError::Runtime(_) => ExitCode::FAILURE,
            }
        }
    }
}
