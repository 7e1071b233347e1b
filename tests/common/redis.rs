//! A private `redis-server` for one test: a free loopback port, no persistence, killed on drop.
//! Never the machine's own Redis on 6379. Include with
//! `#[path = "common/redis.rs"] mod redis_server;`.
//!
//! `redis-server` must be on PATH (or named by `REDIS_SERVER`); scripts/test.sh installs it.
#![allow(dead_code)] // each test file uses a different part of the helper

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    /// Start on a free port and wait until it answers PING.
    pub fn start() -> Self {
        let mut s = Self { port: free_port(), child: None, dir: tempfile::tempdir().unwrap() };
        s.spawn();
        s
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} (install redis-server; scripts/test.sh does): {e}"));
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not answer PING within 5 s", self.port);
    }

    fn ping(&self) -> bool {
        let Ok(c) = redis::Client::open(self.url()) else { return false };
        let Ok(mut conn) = c.get_connection_with_timeout(Duration::from_millis(200)) else { return false };
        redis::cmd("PING").query::<String>(&mut conn).is_ok_and(|p| p == "PONG")
    }

    /// Kill the server (SIGKILL: like a crash) and wait for it to go.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port (empty: no persistence), after [`RedisServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Run one command on a fresh connection.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let c = redis::Client::open(self.url()).unwrap();
        let mut conn = c.get_connection_with_timeout(Duration::from_secs(2)).unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).unwrap()
    }

    /// Calls of `command` so far, from `INFO commandstats` (e.g. `evalsha`).
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.query(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Total calls of every command, from `INFO commandstats`.
    pub fn total_calls(&self) -> u64 {
        let info: String = self.query(&["INFO", "commandstats"]);
        info.lines()
            .filter_map(|l| l.split_once(":calls=").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
