//! The `commercex` command line: run the node (the default), check a configuration, or seed a demo catalog.

use std::path::PathBuf;

use crate::config::ConfigError;

pub const USAGE: &str = "\
Usage: commercex [COMMAND] [--config FILE]

Commands:
  serve         run the node (the default)
  check-config  print the effective configuration (file, then COMMERCEX__* variables) with secrets masked;
                exit status 1 when it is not valid
  seed-demo     add a small demo catalog, a coupon and demo users to the configured store, then exit
                (on the embedded store, run it while the node is stopped); it creates an administrator with a
                published password, so it refuses a store with other accounts unless given --force

Options:
  -c, --config FILE  the configuration file [default: ./config.toml when it exists]
      --force        seed-demo: seed even a store that has accounts of its own
  -h, --help         this text
  -V, --version      the version";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Serve,
    CheckConfig,
    SeedDemo,
    Help,
    Version,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub command: Command,
    pub config: Option<PathBuf>,
    /// `--force`: `seed-demo` seeds a store with accounts of its own too.
    pub force: bool,
}

/// Reads the arguments after the program name.
pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, ConfigError> {
    let mut command = None;
    let mut config = None;
    let mut force = false;
    let set = |c: Command, command: &mut Option<Command>| match command.replace(c) {
        Some(previous) if previous != c => Err(ConfigError::Usage("give one command".into())),
        _ => Ok(()),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                let value = args.next().ok_or_else(|| ConfigError::Usage("--config needs a file path".into()))?;
                config = Some(PathBuf::from(value));
            }
            "-h" | "--help" | "help" => set(Command::Help, &mut command)?,
            "-V" | "--version" => set(Command::Version, &mut command)?,
            "serve" => set(Command::Serve, &mut command)?,
            "check-config" => set(Command::CheckConfig, &mut command)?,
            "seed-demo" => set(Command::SeedDemo, &mut command)?,
            "--force" => force = true,
            other => match other.strip_prefix("--config=") {
                Some(value) => config = Some(PathBuf::from(value)),
                None => return Err(ConfigError::Usage(format!("unknown argument `{other}`"))),
            },
        }
    }
    let command = command.unwrap_or(Command::Serve);
    if force && command != Command::SeedDemo {
        return Err(ConfigError::Usage("--force goes with seed-demo".into()));
    }
    Ok(Args { command, config, force })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, ConfigError> {
        parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn commands_and_the_config_file() {
        assert_eq!(args(&[]).unwrap(), Args { command: Command::Serve, config: None, force: false });
        let checked = args(&["check-config", "--config", "x.toml"]).unwrap();
        let x = Some(PathBuf::from("x.toml"));
        assert_eq!(checked, Args { command: Command::CheckConfig, config: x, force: false });
        let seeded = args(&["--config=y.toml", "seed-demo"]).unwrap();
        let y = Some(PathBuf::from("y.toml"));
        assert_eq!(seeded, Args { command: Command::SeedDemo, config: y, force: false });
        assert!(args(&["seed-demo", "--force"]).unwrap().force);
        assert!(args(&["serve", "--force"]).is_err(), "--force is for seed-demo only");
        assert_eq!(args(&["--version"]).unwrap().command, Command::Version);
        assert_eq!(args(&["serve", "-h"]).unwrap_err().to_string(), "give one command");
        assert!(args(&["--config"]).is_err());
        assert!(args(&["--bogus"]).unwrap_err().to_string().contains("--bogus"));
    }
}
