//! The command line of `commercex-load`.

use std::time::Duration;

use super::scenario::Mix;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";
pub const ADMIN_EMAIL_VAR: &str = "COMMERCEX_LOAD_ADMIN_EMAIL";
pub const ADMIN_PASSWORD_VAR: &str = "COMMERCEX_LOAD_ADMIN_PASSWORD";

pub const USAGE: &str = "\
Usage: commercex-load [OPTIONS]

Signs up users and creates products (or reuses those of an earlier run) through the API, then drives a mix of
browsing, searching, product pages, carts and checkouts followed until paid, and prints throughput, latency,
errors and orders settled per second.

Options:
  --url URL              a node to load (repeat for a cluster: each user is pinned to one, round-robin)
                         [default: http://127.0.0.1:8000]
  --users N              simulated users, each signed up anew [default: 50]
  --duration D           how long to run after setup: 500ms, 30s, 2m, 1h [default: 30s]
  --products N           products tagged for the load (categories `load-*`); missing ones are created
                         [default: 200]
  --admin-email EMAIL    an admin, to create products [default: $COMMERCEX_LOAD_ADMIN_EMAIL]
  --admin-password PASS  [default: $COMMERCEX_LOAD_ADMIN_PASSWORD]
  --mix SPEC             relative weights of what a user does next, e.g. browse=40,product=25,cart=20,checkout=10
                         (names: browse, search, product, cart, checkout; unnamed ones are 0)
                         [default: browse=35,search=10,product=25,cart=20,checkout=10]
  --ws-share F           share of users (0 to 1) that follow their orders on a WebSocket; the others poll
                         [default: 0.5]
  --think D              pause between a user's operations; 0 drives the server as hard as the users can
                         [default: 0ms]
  --signup-concurrency N sign-ups in flight at once (they are slow on purpose) [default: 8]
  --metrics URL          a node's metrics endpoint (http://host:port/metrics; repeat for each node): scraped
                         before and after the run, its MongoDB commands, Kafka records, Redis requests and
                         forwarded calls are reported per paid order
  --json                 also print the final report as one line of JSON on stdout
  -h, --help             this text

Exit status: 0 when the run completed (its errors are in the report), 1 when it could not run, 2 on bad usage.";

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub urls: Vec<String>,
    pub users: usize,
    pub duration: Duration,
    pub products: usize,
    pub admin: Option<(String, String)>,
    pub mix: Mix,
    pub ws_share: f64,
    pub think: Duration,
    pub signup_concurrency: usize,
    /// Metrics endpoints scraped before and after the run.
    pub metrics: Vec<String>,
    pub json: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            urls: vec![DEFAULT_URL.to_string()],
            users: 50,
            duration: Duration::from_secs(30),
            products: 200,
            admin: None,
            mix: Mix::default(),
            ws_share: 0.5,
            think: Duration::ZERO,
            signup_concurrency: 8,
            metrics: Vec::new(),
            json: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run(Box<Options>),
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown argument `{0}`")]
    Unknown(String),
    #[error("`{0}` needs a value")]
    MissingValue(String),
    #[error("`{flag}`: {message}")]
    BadValue { flag: String, message: String },
    #[error("`--admin-email` and `--admin-password` go together (or {ADMIN_EMAIL_VAR} and {ADMIN_PASSWORD_VAR})")]
    HalfAdmin,
}

/// Parses the arguments after the program name; `env` reads an environment variable (the admin's defaults).
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, ArgsError> {
    let mut options = Options::default();
    let mut urls = Vec::new();
    let mut admin_email = env(ADMIN_EMAIL_VAR).filter(|v| !v.is_empty());
    let mut admin_password = env(ADMIN_PASSWORD_VAR).filter(|v| !v.is_empty());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg, None),
        };
        if matches!(flag.as_str(), "-h" | "--help") {
            return Ok(Command::Help);
        }
        if flag == "--json" {
            if inline.is_some() {
                return Err(ArgsError::BadValue { flag, message: "takes no value".into() });
            }
            options.json = true;
            continue;
        }
        if !FLAGS_WITH_VALUES.contains(&flag.as_str()) {
            return Err(ArgsError::Unknown(flag));
        }
        let value = inline.or_else(|| args.next()).ok_or_else(|| ArgsError::MissingValue(flag.clone()))?;
        let bad = |message: String| ArgsError::BadValue { flag: flag.clone(), message };
        match flag.as_str() {
            "--url" => urls.push(parse_url(&value).map_err(bad)?),
            "--users" => options.users = parse_count(&value).map_err(bad)?,
            "--duration" => {
                options.duration = parse_duration(&value).map_err(bad)?;
                if options.duration.is_zero() {
                    return Err(bad("must be longer than 0".into()));
                }
            }
            "--products" => options.products = parse_count(&value).map_err(bad)?,
            "--admin-email" => admin_email = Some(value),
            "--admin-password" => admin_password = Some(value),
            "--mix" => options.mix = value.parse().map_err(bad)?,
            "--ws-share" => options.ws_share = parse_share(&value).map_err(bad)?,
            "--think" => options.think = parse_duration(&value).map_err(bad)?,
            "--signup-concurrency" => options.signup_concurrency = parse_count(&value).map_err(bad)?,
            "--metrics" => options.metrics.push(parse_metrics_url(&value).map_err(bad)?),
            _ => unreachable!("every flag taking a value is matched above"),
        }
    }
    if !urls.is_empty() {
        options.urls = urls;
    }
    options.admin = match (admin_email, admin_password) {
        (Some(email), Some(password)) => Some((email, password)),
        (None, None) => None,
        _ => return Err(ArgsError::HalfAdmin),
    };
    Ok(Command::Run(Box::new(options)))
}

const FLAGS_WITH_VALUES: [&str; 11] = [
    "--url",
    "--users",
    "--duration",
    "--products",
    "--admin-email",
    "--admin-password",
    "--mix",
    "--ws-share",
    "--think",
    "--signup-concurrency",
    "--metrics",
];

/// `30s`, `2m`, `500ms`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let expected = || format!("expected a duration such as 500ms, 30s, 2m or 1h, got `{text}`");
    let n: u64 = number.parse().map_err(|_| expected())?;
    let unit_ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(expected()),
    };
    n.checked_mul(unit_ms).map(Duration::from_millis).ok_or_else(|| format!("`{text}` is too long"))
}

fn parse_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("expected a whole number, got `{text}`")),
    }
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("expected a number from 0 to 1, got `{text}`")),
    }
}

/// `http://host:port`, without a trailing slash. Plain HTTP only: the client is built without TLS.
fn parse_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("http://")
        .ok_or_else(|| format!("expected http://host:port (plain HTTP only), got `{text}`"))?;
    if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains('/') {
        return Err(format!("expected http://host:port with no path, got `{text}`"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// `http://host:port/path` (plain HTTP only).
fn parse_metrics_url(text: &str) -> Result<String, String> {
    match text.strip_prefix("http://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(text.to_string()),
        _ => Err(format!("expected http://host:port/metrics (plain HTTP only), got `{text}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, ArgsError> {
        run_with_env(args, &[])
    }

    fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Options, ArgsError> {
        let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        match parse(args.iter().map(|a| a.to_string()), lookup)? {
            Command::Run(options) => Ok(*options),
            Command::Help => panic!("help"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in ["", "s", "10x", "1.5s", "-3s", "ms10", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults() {
        let o = run(&[]).unwrap();
        assert_eq!(o, Options::default());
        assert_eq!(o.urls, [DEFAULT_URL]);
        assert_eq!((o.users, o.duration, o.products), (50, Duration::from_secs(30), 200));
    }

    #[test]
    fn every_flag_in_both_forms() {
        let o = run(&[
            "--url",
            "http://127.0.0.1:8001/",
            "--url=http://127.0.0.1:8002",
            "--users",
            "200",
            "--duration=2m",
            "--products",
            "10",
            "--admin-email",
            "a@b.test",
            "--admin-password=pw",
            "--mix",
            "browse=1,checkout=3",
            "--ws-share",
            "0.25",
            "--think",
            "20ms",
            "--signup-concurrency",
            "4",
            "--metrics",
            "http://127.0.0.1:9464/metrics",
            "--json",
        ])
        .unwrap();
        assert_eq!(o.urls, ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]);
        assert_eq!((o.users, o.duration, o.products), (200, Duration::from_secs(120), 10));
        assert_eq!(o.admin, Some(("a@b.test".into(), "pw".into())));
        assert_eq!(o.mix, "checkout=3,browse=1".parse().unwrap());
        assert_eq!((o.ws_share, o.think, o.signup_concurrency, o.json), (0.25, Duration::from_millis(20), 4, true));
        assert_eq!(o.metrics, ["http://127.0.0.1:9464/metrics"]);
    }

    #[test]
    fn admin_from_the_environment_unless_given() {
        let env = [(ADMIN_EMAIL_VAR, "env@x.test"), (ADMIN_PASSWORD_VAR, "env-pw")];
        assert_eq!(run_with_env(&[], &env).unwrap().admin, Some(("env@x.test".into(), "env-pw".into())));
        let o = run_with_env(&["--admin-email", "cli@x.test", "--admin-password", "cli-pw"], &env).unwrap();
        assert_eq!(o.admin, Some(("cli@x.test".into(), "cli-pw".into())));
        assert_eq!(run(&["--admin-email", "a@x.test"]), Err(ArgsError::HalfAdmin));
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(run(&["--user", "3"]), Err(ArgsError::Unknown("--user".into())));
        assert_eq!(run(&["extra"]), Err(ArgsError::Unknown("extra".into())));
        assert_eq!(run(&["--users"]), Err(ArgsError::MissingValue("--users".into())));
        for bad in [
            &["--users", "0"][..],
            &["--users", "many"],
            &["--duration", "0s"],
            &["--duration", "soon"],
            &["--ws-share", "1.5"],
            &["--url", "https://shop.test"],
            &["--url", "http://127.0.0.1:8000/api"],
            &["--mix", "browse=1,dance=2"],
            &["--json=yes"],
            &["--metrics", "127.0.0.1:9464/metrics"],
        ] {
            assert!(matches!(run(bad), Err(ArgsError::BadValue { .. })), "{bad:?}");
        }
    }

    #[test]
    fn help() {
        for flag in ["-h", "--help"] {
            assert_eq!(parse([flag.to_string()], |_| None), Ok(Command::Help));
        }
    }
}
