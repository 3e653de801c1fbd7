//! The release `commercex` binary as a child process of a benchmark, on a port of its own with a fresh data
//! directory, killed when dropped; and what /proc says of a process's memory and CPU. Shared by several
//! benchmarks, each using part of it.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the binary with `env` on top of a fresh data directory and a free port; returns once `/health`
    /// answers.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_commercex"));
        command
            .env("COMMERCEX__HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("COMMERCEX__STORE__DATA_DIR", dir.path())
            .env("COMMERCEX__AUTH__JWT_SECRET", "benchmark-secret-0123456789abcdef0123456789")
            .env("COMMERCEX__LOG__LEVEL", "warn")
            .env("COMMERCEX__TELEMETRY__METRICS_ADDR", "")
            .stdout(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("starts the commercex binary");
        let server = Self { child, base: format!("http://127.0.0.1:{port}"), _dir: dir };
        let client = reqwest::Client::new();
        let started = Instant::now();
        while client.get(format!("{}/health", server.base)).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of the server's /proc/PID/status (`VmRSS:`, `VmHWM:`), in MiB.
    pub fn status_mib(&self, field: &str) -> f64 {
        status_mib(&self.pid().to_string(), field)
    }

    /// CPU seconds the server has used (user + system).
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(&self.pid().to_string())
    }
}

/// A field of /proc/PID/status (`VmRSS:`, `VmHWM:`) of process `pid` (or `self`), in MiB.
pub fn status_mib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// CPU seconds process `pid` (or `self`) has used so far (user + system).
pub fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
