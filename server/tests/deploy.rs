//! The deployment files, run as written against the real binaries: the
//! Dockerfile's ENTRYPOINT + CMD, ENV, HEALTHCHECK and STOPSIGNAL; the compose
//! `certs` service's script (deploy/docker/mint-certs.sh), twice; the systemd
//! unit's ExecStart, ExecReload and KillSignal; compose.cluster.yaml's
//! services (certs, three NATS nodes with deploy/nats/, two routers with
//! their cluster environment), routing events between the routers, each
//! CA's certificates refused where the other CA's are taken.
//!
//! Nothing here can run Docker or systemd, so the test plays the image: its
//! /etc/icom and /var/lib/icom live in a temp dir, its /usr/local/bin is the
//! cargo target dir (icom-server, icom-certs) plus the files the Dockerfile
//! COPYs there, and the environment is the image's and nothing else. Files
//! are read from the repository, never restated here; the only changes to
//! the shipped config are the moved paths and free ports instead of 9090
//! (QUIC) and 9091 (metrics), so tests can run side by side.
//! scripts/test.d/20-deploy lints the same files (hadolint, shellcheck,
//! systemd-analyze) and checks that compose.yaml runs what this test runs;
//! this test reads compose.cluster.yaml itself (PyYAML from .venv-tools)
//! and needs the tools venv's nats-server (scripts/tools-venv).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use icom_certs::CertDir;
use icom_protocol::CloseCode;
use icom_server::{Config, ConfigFile, LogFormat};
use icom_tests::{free_tcp_port, free_udp_port, RawClient, RouterProcess};
use quinn::crypto::rustls::QuicClientConfig;

const BIN: &str = env!("CARGO_BIN_EXE_icom-server");

/// The image's folders that the test moves into its temp dir.
const IMAGE_DIRS: [&str; 2] = ["/etc/icom", "/var/lib/icom"];
/// Where the image keeps its programs.
const IMAGE_BIN: &str = "/usr/local/bin";
/// PATH in Debian images, and systemd's default.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// compose.yaml's `certs` service: its entrypoint and the environment it
/// sets besides ROUTER_DNS, ROUTER_IP and CLIENTS (20-deploy checks both).
const CERTS_ENTRYPOINT: &str = "icom-mint-certs";
const CERTS_ENV: [(&str, &str); 2] = [
    ("ICOM_CERTS_DIR", "/etc/icom/ca"),
    ("ROUTER_CERTS_DIR", "/etc/icom/certs"),
];
/// The config the systemd recipe installs as /etc/icom/icom-server.toml.
const SYSTEMD_CONFIG: &str = "deploy/docker/icom-server.toml";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn read_repo(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The cargo profile dir: icom-server, and icom-certs, built once for this
/// run (a dependency's binaries are not built for its dependents' tests).
fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(BIN).parent().unwrap().to_owned();
        let certs = icom_tests::workspace_bin("icom-certs", "icom-certs");
        assert_eq!(
            certs.parent(),
            Some(dir.as_path()),
            "icom-certs beside icom-server"
        );
        assert!(dir.join("icom-certs").is_file(), "no icom-certs in {dir:?}");
        dir
    })
    .clone()
}

// ---------------------------------------------------------------- Dockerfile

/// The final stage of the Dockerfile, as the image runs it.
#[derive(Debug, Default)]
struct Dockerfile {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    healthcheck: Vec<String>,
    healthcheck_options: BTreeMap<String, String>,
    stopsignal: Option<String>,
    expose: Vec<String>,
    user: Option<String>,
    workdir: Option<String>,
    volumes: Vec<String>,
    labels: BTreeMap<String, String>,
    /// Image path → where it comes from: a repository file, or a binary of
    /// the build stage (then `None`: it is the cargo target dir's).
    files: BTreeMap<String, Option<PathBuf>>,
}

/// Splits like a shell: whitespace outside double quotes, quotes removed.
fn words(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if quoted => cur.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quotes in {s:?}");
    if any {
        out.push(cur);
    }
    out
}

/// An exec-form (JSON array) argument list.
fn exec_form(what: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args.trim())
        .unwrap_or_else(|e| panic!("{what} must be in exec form (a JSON array): {args:?}: {e}"))
}

impl Dockerfile {
    fn load() -> Dockerfile {
        Dockerfile::parse(&read_repo("Dockerfile"))
    }

    fn parse(text: &str) -> Dockerfile {
        // Logical lines: comments dropped, continuations joined.
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    instructions.push(std::mem::take(&mut current));
                }
            }
        }
        let mut df = Dockerfile::default();
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        let expand = |args: &BTreeMap<String, String>, s: &str| {
            args.iter()
                .fold(s.to_owned(), |s, (k, v)| s.replace(&format!("${{{k}}}"), v))
        };
        for ins in instructions {
            let (keyword, rest) = ins.split_once(char::is_whitespace).unwrap_or((&ins, ""));
            let rest = rest.trim();
            match keyword.to_ascii_uppercase().as_str() {
                // Only the last stage is the image.
                "FROM" => {
                    df = Dockerfile::default();
                    args.clear();
                }
                "ARG" => {
                    let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                    args.insert(k.to_owned(), v.to_owned());
                }
                "ENTRYPOINT" => df.entrypoint = exec_form("ENTRYPOINT", rest),
                "CMD" => df.cmd = exec_form("CMD", rest),
                "ENV" => {
                    let w = words(rest);
                    if w.first().is_some_and(|w| w.contains('=')) {
                        for kv in w {
                            let (k, v) = kv.split_once('=').expect("ENV K=V");
                            df.env.push((k.to_owned(), expand(&args, v)));
                        }
                    } else {
                        let (k, v) = rest.split_once(char::is_whitespace).expect("ENV K V");
                        df.env.push((k.to_owned(), expand(&args, v.trim())));
                    }
                }
                "LABEL" => {
                    for kv in words(rest) {
                        let (k, v) = kv.split_once('=').expect("LABEL k=v");
                        df.labels.insert(k.to_owned(), expand(&args, v));
                    }
                }
                "HEALTHCHECK" => {
                    let (options, cmd) = rest
                        .split_once("CMD")
                        .expect("HEALTHCHECK [OPTIONS] CMD [...]");
                    for o in words(options) {
                        let (k, v) = o.split_once('=').expect("--option=value");
                        df.healthcheck_options.insert(k.to_owned(), v.to_owned());
                    }
                    df.healthcheck = exec_form("HEALTHCHECK CMD", cmd);
                }
                "STOPSIGNAL" => df.stopsignal = Some(rest.to_owned()),
                "EXPOSE" => df.expose.extend(words(rest)),
                "USER" => df.user = Some(rest.to_owned()),
                "WORKDIR" => df.workdir = Some(rest.to_owned()),
                "VOLUME" => df.volumes.extend(if rest.starts_with('[') {
                    exec_form("VOLUME", rest)
                } else {
                    words(rest)
                }),
                "COPY" | "ADD" => {
                    let w = words(rest);
                    let from_stage = w.iter().any(|w| w.starts_with("--from="));
                    let paths: Vec<&String> = w.iter().filter(|w| !w.starts_with("--")).collect();
                    let (dest, sources) = paths.split_last().expect("COPY SRC... DEST");
                    for src in sources {
                        let target = if dest.ends_with('/') {
                            let name = Path::new(src.as_str()).file_name().unwrap();
                            format!("{dest}{}", name.to_str().unwrap())
                        } else {
                            (*dest).clone()
                        };
                        let origin = (!from_stage).then(|| repo().join(src.as_str()));
                        df.files.insert(target, origin);
                    }
                }
                _ => {}
            }
        }
        df
    }

    /// The config file the image runs with: CMD's `--config`.
    fn config_path(&self) -> &str {
        flag_value(&self.cmd, "--config").expect("CMD passes --config")
    }
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

// ------------------------------------------------------------- systemd unit

/// The `[Service]` section of the unit: key → values in order.
fn systemd_service() -> BTreeMap<String, Vec<String>> {
    let text = read_repo("deploy/systemd/icom-server.service");
    let mut section = String::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "keep the unit's lines unbroken: {line}"
        );
        if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("Key=Value");
            out.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    out
}

fn one<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match unit.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("the unit must set {key}= once, has {other:?}"),
    }
}

/// A unit command line: no prefixes, no quoting, so whitespace splits it.
fn unit_command(line: &str) -> Vec<String> {
    assert!(
        !line.starts_with(['-', '@', '+', '!', ':']) && !line.contains(['"', '\'']),
        "the test reads unit commands without prefixes or quotes: {line}"
    );
    line.split_whitespace().map(str::to_owned).collect()
}

// ------------------------------------------------------------ the fake image

/// The image's filesystem, moved: /etc/icom and /var/lib/icom under a temp
/// dir, /usr/local/bin the cargo target dir and the Dockerfile's COPYs.
struct Image {
    df: Dockerfile,
    root: tempfile::TempDir,
    bin: PathBuf,
    /// A compose service's volumes: container path → the folder here that
    /// stands for the volume (or its subpath), longest path first.
    mounts: Vec<(String, PathBuf)>,
}

impl Image {
    fn new() -> Image {
        Image::with_mounts(Vec::new())
    }

    /// A container of the image with `mounts` over its folders.
    fn with_mounts(mut mounts: Vec<(String, PathBuf)>) -> Image {
        mounts.sort_by_key(|(target, _)| std::cmp::Reverse(target.len()));
        let image = Image {
            df: Dockerfile::load(),
            root: tempfile::tempdir().unwrap(),
            bin: bin_dir(),
            mounts,
        };
        for dir in IMAGE_DIRS
            .into_iter()
            .chain(["/etc/icom/certs", "/etc/icom/ca"])
        {
            std::fs::create_dir_all(image.host(dir)).unwrap();
        }
        image
    }

    /// Where an image path is on this machine.
    fn host(&self, path: &str) -> PathBuf {
        for (target, dir) in &self.mounts {
            if let Some(rest) = path.strip_prefix(target.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return dir.join(rest.trim_start_matches('/'));
                }
            }
        }
        let moved = IMAGE_DIRS
            .iter()
            .any(|d| path == *d || path.starts_with(&format!("{d}/")));
        assert!(moved, "{path} is not under {IMAGE_DIRS:?}");
        self.root.path().join(path.trim_start_matches('/'))
    }

    /// `s` with every mount and image folder replaced by where it is here.
    fn moved(&self, s: &str) -> String {
        let s = self.mounts.iter().fold(s.to_owned(), |s, (target, dir)| {
            s.replace(target.as_str(), dir.to_str().unwrap())
        });
        IMAGE_DIRS
            .iter()
            .fold(s, |s, d| s.replace(d, self.host(d).to_str().unwrap()))
    }

    /// The file a program name or image path runs, as the image's PATH finds it.
    fn program(&self, name: &str) -> PathBuf {
        let image_path = if name.contains('/') {
            name.to_owned()
        } else {
            format!("{IMAGE_BIN}/{name}")
        };
        match self.df.files.get(&image_path) {
            Some(Some(file)) => file.clone(),
            Some(None) => self.bin.join(Path::new(&image_path).file_name().unwrap()),
            None => panic!("the Dockerfile puts nothing at {image_path}"),
        }
    }

    /// The container's environment: the image's ENV, PATH and HOME, with the
    /// image's /usr/local/bin standing for the cargo target dir.
    fn env(&self) -> Vec<(String, String)> {
        let path = DEFAULT_PATH.replace(IMAGE_BIN, self.bin.to_str().unwrap());
        let mut env = vec![
            ("PATH".to_owned(), path),
            ("HOME".to_owned(), self.moved("/var/lib/icom")),
        ];
        for (k, v) in &self.df.env {
            env.retain(|(have, _)| have != k);
            env.push((k.clone(), self.moved(v)));
        }
        env
    }

    /// `argv` as the container would run it, with only `extra` added to its
    /// environment.
    fn command(&self, argv: &[String], extra: &[(&str, &str)]) -> Command {
        let (program, args) = argv.split_first().expect("a command");
        let mut cmd = Command::new(self.program(program));
        cmd.args(args.iter().map(|a| self.moved(a)))
            .env_clear()
            .envs(self.env())
            .envs(extra.iter().map(|(k, v)| (k, self.moved(v))));
        if let Some(dir) = &self.df.workdir {
            cmd.current_dir(self.host(dir));
        }
        cmd
    }

    /// ENTRYPOINT + CMD.
    fn router_command(&self, extra: &[(&str, &str)]) -> Command {
        let argv: Vec<String> = self
            .df
            .entrypoint
            .iter()
            .chain(&self.df.cmd)
            .cloned()
            .collect();
        self.command(&argv, extra)
    }

    /// Installs the files the Dockerfile COPYs under /etc/icom, paths and
    /// ports moved.
    fn install_config(&self, ports: Ports) {
        for (image_path, origin) in &self.df.files {
            if !image_path.starts_with("/etc/icom/") {
                continue;
            }
            let origin = origin
                .as_ref()
                .expect("config files come from the repository");
            let text = std::fs::read_to_string(origin).unwrap();
            let text = ports.moved(&self.moved(&text));
            std::fs::write(self.host(image_path), text).unwrap();
        }
    }

    /// Runs the compose `certs` service's entrypoint.
    fn mint(&self, clients: &str) -> Output {
        let mut env: Vec<(&str, &str)> = CERTS_ENV.to_vec();
        env.extend([
            ("ROUTER_DNS", "icom-router"),
            ("ROUTER_IP", ""),
            ("CLIENTS", clients),
        ]);
        let out = self
            .command(&[CERTS_ENTRYPOINT.to_owned()], &env)
            .output()
            .expect("running the certs script");
        assert!(
            out.status.success(),
            "{CERTS_ENTRYPOINT} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs HEALTHCHECK's command as Docker does: in the container's
    /// environment (plus `extra`), while the router runs.
    async fn healthcheck(&self, extra: &[(&str, &str)]) -> Output {
        let cmd = self.command(&self.df.healthcheck, extra);
        let timeout = self
            .df
            .healthcheck_options
            .get("--timeout")
            .and_then(|t| t.strip_suffix('s'))
            .and_then(|t| t.parse().ok())
            .expect("HEALTHCHECK --timeout=Ns");
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(timeout), cmd.output())
            .await
            .expect("the healthcheck ends within its --timeout")
            .expect("the healthcheck runs")
    }
}

/// Free ports for the router's QUIC (UDP) and metrics (TCP) listeners.
#[derive(Debug, Clone, Copy)]
struct Ports {
    udp: u16,
    metrics: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            udp: free_udp_port(),
            metrics: free_tcp_port(),
        }
    }

    /// The shipped config's addresses, 0.0.0.0:9090 (QUIC) and
    /// 127.0.0.1:9091 (metrics), moved to these ports.
    fn moved(self, config: &str) -> String {
        for line in [
            "\nlisten = \"0.0.0.0:9090\"\n",
            "\nlisten = \"127.0.0.1:9091\"\n",
        ] {
            assert!(
                config.contains(line),
                "the test moves {line:?} to a free port"
            );
        }
        config
            .replace("\"0.0.0.0:9090\"", &format!("\"0.0.0.0:{}\"", self.udp))
            .replace(
                "\"127.0.0.1:9091\"",
                &format!("\"127.0.0.1:{}\"", self.metrics),
            )
    }

    fn addr(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.udp))
    }
}

/// A client TLS config from PEM files, as a game server has them.
fn client_crypto(ca: &Path, cert: &Path, key: &Path) -> Arc<QuicClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in icom_certs::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            icom_certs::load_certs(cert).unwrap(),
            icom_certs::load_key(key).unwrap(),
        )
        .unwrap();
    tls.alpn_protocols = vec![icom_protocol::ALPN.to_vec()];
    Arc::new(QuicClientConfig::try_from(tls).unwrap())
}

/// Every file under `dir`: contents, mode and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                let rel = entry.path().strip_prefix(dir).unwrap().to_owned();
                let bytes = std::fs::read(entry.path()).unwrap();
                out.insert(
                    rel,
                    (bytes, meta.permissions().mode(), meta.modified().unwrap()),
                );
            }
        }
    }
    out
}

/// Paths whose entry differs between two snapshots (added, removed, changed).
fn changed(
    a: &BTreeMap<PathBuf, (Vec<u8>, u32, SystemTime)>,
    b: &BTreeMap<PathBuf, (Vec<u8>, u32, SystemTime)>,
) -> Vec<String> {
    let mut keys: Vec<&PathBuf> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.display().to_string())
        .collect()
}

/// A one-request HTTP server on 127.0.0.1 answering `status`; returns its
/// address and the request line it got.
fn http_once(status: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 512];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        );
        let text = String::from_utf8_lossy(&request).into_owned();
        text.lines().next().unwrap_or_default().to_owned()
    });
    (addr, handle)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// --------------------------------------------------------------------- tests

#[test]
fn the_deployment_files_agree_with_each_other_and_the_config_validates() {
    let df = Dockerfile::load();
    assert_eq!(df.entrypoint, ["icom-server"], "ENTRYPOINT");
    assert_eq!(df.expose, ["9090/udp"], "EXPOSE");
    assert_eq!(df.stopsignal.as_deref(), Some("SIGTERM"), "STOPSIGNAL");
    let user = df.user.as_deref().expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER must be a numeric non-root uid (so runAsNonRoot can check it), not {user}"
    );
    assert_eq!(
        df.labels
            .get("org.opencontainers.image.version")
            .map(String::as_str),
        Some(env!("CARGO_PKG_VERSION")),
        "the image's version label follows the workspace version"
    );
    for (image_path, origin) in &df.files {
        if let Some(origin) = origin {
            assert!(origin.exists(), "COPY source {origin:?} is missing");
            if image_path.starts_with(&format!("{IMAGE_BIN}/")) {
                let mode = std::fs::metadata(origin).unwrap().permissions().mode();
                assert!(mode & 0o111 != 0, "{origin:?} must be executable");
            }
        }
    }
    for needed in [
        "icom-server",
        "icom-certs",
        CERTS_ENTRYPOINT,
        &df.healthcheck[0],
    ] {
        assert!(
            df.files.contains_key(&format!("{IMAGE_BIN}/{needed}")),
            "the image has no {IMAGE_BIN}/{needed}"
        );
    }

    // The shipped config: parses, validates, and fits the image's layout.
    let config_path = df.config_path();
    let origin = df.files[config_path].clone().expect("the config is COPYed");
    let text = std::fs::read_to_string(&origin).unwrap();
    let file: ConfigFile = toml::from_str(&text).expect("the shipped config parses");
    assert_eq!(file.listen.to_string(), "0.0.0.0:9090");
    assert!(
        df.volumes.iter().any(|v| Path::new(v) == file.data_dir),
        "data_dir {:?} is one of the VOLUMEs {:?}",
        file.data_dir,
        df.volumes
    );
    for p in [&file.tls.ca, &file.tls.cert, &file.tls.key]
        .into_iter()
        .chain(file.tls.crl.as_ref())
    {
        assert!(p.starts_with("/etc/icom/certs"), "{p:?}");
    }
    assert_eq!(file.log.format, LogFormat::Text);
    assert!(file.metrics.enabled, "the healthcheck asks /readyz");
    assert!(
        file.metrics.listen.ip().is_loopback(),
        "the unauthenticated metrics stay on the loopback"
    );
    Config::try_from(file).expect("the shipped config validates");

    // The healthcheck checks the config the router runs with.
    assert_eq!(df.healthcheck.get(1).map(String::as_str), Some(config_path));

    // systemd runs the same binary with the same config and stop signal.
    let unit = systemd_service();
    let exec = unit_command(one(&unit, "ExecStart"));
    assert_eq!(exec[0], format!("{IMAGE_BIN}/icom-server"));
    assert_eq!(exec[1..], ["--config", config_path]);
    assert_eq!(one(&unit, "KillSignal"), "SIGTERM");
    assert_eq!(one(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one(&unit, "Restart"), "on-failure");
    assert_eq!(one(&unit, "User"), "icom");
    assert_eq!(one(&unit, "StateDirectory"), "icom");
    assert_eq!(
        one(&unit, "WorkingDirectory"),
        "/var/lib/icom",
        "the state directory"
    );
    assert_eq!(repo().join(SYSTEMD_CONFIG), origin);
}

#[test]
fn the_compose_certs_script_is_idempotent_and_syncs_the_crl() {
    let image = Image::new();
    let ca = image.host(CERTS_ENV[0].1);
    let certs = image.host(CERTS_ENV[1].1);

    let first = image.mint("server_1, server_2");
    assert!(
        text(&first.stdout).contains("copied"),
        "{}",
        text(&first.stdout)
    );
    for f in [
        "ca.pem",
        "ca.key",
        "index.json",
        "crl.pem",
        "router.pem",
        "router.key",
        "server_1.pem",
        "server_1.key",
        "server_2.pem",
        "server_2.key",
    ] {
        assert!(ca.join(f).is_file(), "the CA dir has no {f}");
    }
    let mut router_files: Vec<String> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    router_files.sort();
    assert_eq!(
        router_files,
        ["ca.pem", "crl.pem", "router.key", "router.pem"],
        "the router gets its four files and never the CA key"
    );
    let key_mode = std::fs::metadata(certs.join("router.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o077, 0, "router.key is private: {key_mode:o}");
    let router_pem = icom_certs::inspect(&ca.join("router.pem"), &ca).unwrap();
    for san in ["DNS:icom-router", "DNS:localhost"] {
        assert!(
            router_pem.sans.iter().any(|s| s == san),
            "{:?}",
            router_pem.sans
        );
    }

    // Again, as every `docker compose up` does: nothing changes at all.
    let (ca_before, certs_before) = (snapshot(&ca), snapshot(&certs));
    std::thread::sleep(Duration::from_millis(20));
    let second = image.mint("server_1 server_2");
    assert_eq!(changed(&ca_before, &snapshot(&ca)), Vec::<String>::new());
    assert_eq!(
        changed(&certs_before, &snapshot(&certs)),
        Vec::<String>::new()
    );
    assert!(
        !text(&second.stdout).contains("copied"),
        "{}",
        text(&second.stdout)
    );
    assert!(second.stderr.is_empty(), "{}", text(&second.stderr));

    // One more client: its files and the index, nothing else.
    let third = image.mint("server_1 server_2 server_3");
    assert_eq!(
        changed(&ca_before, &snapshot(&ca)),
        ["index.json", "server_3.key", "server_3.pem"]
    );
    assert_eq!(
        changed(&certs_before, &snapshot(&certs)),
        Vec::<String>::new()
    );
    assert!(!text(&third.stdout).contains("copied"));

    // A revocation, then the script again: the router's CRL follows.
    CertDir::open(&ca).unwrap().revoke("server_2").unwrap();
    let fourth = image.mint("");
    assert_eq!(changed(&certs_before, &snapshot(&certs)), ["crl.pem"]);
    assert_eq!(
        std::fs::read(certs.join("crl.pem")).unwrap(),
        std::fs::read(ca.join("crl.pem")).unwrap()
    );
    assert!(
        text(&fourth.stdout).contains("SIGHUP"),
        "{}",
        text(&fourth.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_command_env_healthcheck_and_stop_signal_work() {
    let image = Image::new();
    image.mint("server_1");
    let ports = Ports::free();
    image.install_config(ports);

    // Before the router runs, the healthcheck fails and says why.
    let out = image.healthcheck(&[]).await;
    assert!(!out.status.success(), "healthy without a router?");
    let err = text(&out.stderr);
    let want = format!("nothing listens on UDP port {}", ports.udp);
    assert!(err.contains(&want), "{err}");

    let mut router = RouterProcess::spawn(&mut image.router_command(&[]));
    let line = router.wait_log("listening");
    assert!(
        !line.contains('\x1b'),
        "docker logs get plain lines: {line:?}"
    );
    let ca = image.host(CERTS_ENV[0].1);
    let crypto = client_crypto(
        &image.host("/etc/icom/certs/ca.pem"),
        &ca.join("server_1.pem"),
        &ca.join("server_1.key"),
    );
    let mut client = RawClient::connect_with(ports.addr(), crypto).await.unwrap();
    let welcome = client.hello().await.unwrap();
    assert_eq!(welcome.server_id, "server_1");

    // Healthy: the config loads, the port is bound, /readyz says 200.
    let out = image.healthcheck(&[]).await;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{said}");
    let readyz = format!("http://127.0.0.1:{}/readyz 200", ports.metrics);
    assert!(
        said.starts_with("healthy: ") && said.contains(&readyz),
        "{said}"
    );

    // HEALTHCHECK_URL replaces the URL; an answer other than 200 is unhealthy.
    let (http, request) = http_once("200 OK");
    let url = format!("http://{http}/healthz");
    let out = image.healthcheck(&[("HEALTHCHECK_URL", &url)]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(request.join().unwrap(), "GET /healthz HTTP/1.0");
    let (http, request) = http_once("503 Service Unavailable");
    let url = format!("http://{http}/readyz");
    let out = image.healthcheck(&[("HEALTHCHECK_URL", &url)]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("503"), "{}", text(&out.stderr));
    request.join().unwrap();

    // A config file that no longer loads is reported while the router runs.
    let key = image.host("/etc/icom/certs/router.key");
    let saved = std::fs::read(&key).unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let out = image.healthcheck(&[]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("router.key"), "{err}");
    std::fs::write(&key, saved).unwrap();

    // `docker stop` sends STOPSIGNAL: clients are told, and the exit is 0.
    router.signal(image.df.stopsignal.as_deref().unwrap());
    client.expect_closed(CloseCode::Shutdown).await;
    let status = router.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");

    // And once it is gone, the healthcheck says so.
    let out = image.healthcheck(&[]).await;
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_takes_settings_from_icom_environment_variables() {
    // What the README tells Docker users: ICOM_* variables, not a new CMD;
    // the healthcheck reads them as the router does.
    let image = Image::new();
    image.mint("");
    let ports = Ports::free();
    image.install_config(ports);
    let env = [
        ("ICOM_LOG__FORMAT", "json"),
        ("ICOM_METRICS__ENABLED", "false"),
    ];
    let mut router = RouterProcess::spawn(&mut image.router_command(&env));
    let line = router.wait_log("listening");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO");
    let metrics = std::net::TcpStream::connect(("127.0.0.1", ports.metrics));
    assert!(metrics.is_err(), "metrics are off");
    let out = image.healthcheck(&env).await;
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !said.contains("http"),
        "no HTTP check without metrics: {said}"
    );
    router.signal("SIGTERM");
    assert!(router.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_unit_starts_reloads_and_stops_the_router() {
    let unit = systemd_service();
    let root = tempfile::tempdir().unwrap();
    let host = |p: &str| {
        assert!(IMAGE_DIRS.iter().any(|d| p.starts_with(d)), "{p}");
        root.path().join(p.trim_start_matches('/'))
    };
    let moved = |s: &str| {
        IMAGE_DIRS
            .iter()
            .fold(s.to_owned(), |s, d| s.replace(d, host(d).to_str().unwrap()))
    };

    // What the install steps put in /etc/icom; what StateDirectory= makes.
    let certs = host("/etc/icom/certs");
    let mut dir = CertDir::init(&certs, "ICOM CA", 30, false).unwrap();
    dir.issue_router(&["localhost".to_owned()], &[], 30, false)
        .unwrap();
    dir.issue_client("eu-1", 30, false).unwrap();
    let ports = Ports::free();
    let config = ports.moved(&read_repo(SYSTEMD_CONFIG));
    std::fs::write(host("/etc/icom/icom-server.toml"), moved(&config)).unwrap();
    let state = host(&format!("/var/lib/{}", one(&unit, "StateDirectory")));
    std::fs::create_dir_all(&state).unwrap();

    // ExecStart, in the environment systemd gives a service.
    let exec = unit_command(one(&unit, "ExecStart"));
    assert_eq!(exec[0], format!("{IMAGE_BIN}/icom-server"));
    let mut cmd = Command::new(BIN);
    cmd.args(exec[1..].iter().map(|a| moved(a)))
        .current_dir(host(one(&unit, "WorkingDirectory")))
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("LANG", "C.UTF-8")
        .env("USER", one(&unit, "User"))
        .env("HOME", &state)
        .env("STATE_DIRECTORY", &state)
        .env("CONFIGURATION_DIRECTORY", host("/etc/icom"));
    for assignment in unit.get("Environment").into_iter().flatten() {
        for kv in words(assignment) {
            let (k, v) = kv.split_once('=').expect("Environment=K=V");
            cmd.env(k, moved(v));
        }
    }
    let mut router = RouterProcess::spawn(&mut cmd);
    let line = router.wait_log("listening");
    assert!(
        !line.contains('\x1b'),
        "the journal gets plain lines: {line:?}"
    );
    let (cert, key) = dir.client_paths("eu-1");
    let crypto = client_crypto(&certs.join("ca.pem"), &cert, &key);
    let mut client = RawClient::connect_with(ports.addr(), crypto).await.unwrap();
    client.hello().await.unwrap();
    assert!(
        std::fs::read_dir(&state).unwrap().next().is_some(),
        "the store is in the state directory"
    );

    // ExecReload, as systemctl reload runs it.
    let reload = unit_command(one(&unit, "ExecReload"));
    let pid = router.id().to_string();
    let status = Command::new(&reload[0])
        .args(reload[1..].iter().map(|a| a.replace("$MAINPID", &pid)))
        .status()
        .unwrap();
    assert!(status.success(), "{reload:?}");
    router.wait_log("reloaded on SIGHUP");

    // systemctl stop sends KillSignal; exit 0 is a clean stop (no restart).
    router.signal(one(&unit, "KillSignal"));
    client.expect_closed(CloseCode::Shutdown).await;
    let status = router.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

// ------------------------------------------------------- compose.cluster.yaml

/// The cluster deployment: its compose file, and the NATS configs its nodes
/// mount (a folder, bind-mounted).
const CLUSTER_COMPOSE: &str = "compose.cluster.yaml";

/// A compose file as JSON: PyYAML from the tools venv (scripts/tools-venv)
/// reads the YAML, merge keys and all; then every `${VAR:-default}`,
/// `${VAR-default}` and `${VAR}` takes its value from `vars`, else its
/// default, else "", as `docker compose` does with an empty environment.
fn compose_file(rel: &str, vars: &[(&str, &str)]) -> serde_json::Value {
    let python = repo().join(".venv-tools/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/tools-venv (PyYAML reads the compose file)",
        python.display()
    );
    let out = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(repo().join(rel))
        .output()
        .unwrap();
    assert!(out.status.success(), "reading {rel}: {}", text(&out.stderr));
    let mut doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    interpolate(&mut doc, vars);
    doc
}

fn interpolate(v: &mut serde_json::Value, vars: &[(&str, &str)]) {
    match v {
        serde_json::Value::String(s) => {
            while let Some(start) = s.find("${") {
                let end = start + s[start..].find('}').expect("a closing brace");
                let inner = &s[start + 2..end];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, d),
                    None => inner.split_once('-').unwrap_or((inner, "")),
                };
                let value = vars
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map_or(default, |(_, v)| v)
                    .to_owned();
                s.replace_range(start..=end, &value);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|v| interpolate(v, vars)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|v| interpolate(v, vars)),
        _ => {}
    }
}

/// A service's `environment:` (a mapping or a list of K=V).
fn service_env(svc: &serde_json::Value) -> Vec<(String, String)> {
    match &svc["environment"] {
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_owned)))
            .collect(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|kv| {
                let (k, v) = kv.as_str().unwrap().split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn str_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// A service's `volumes:` as container path → folder here: a named volume
/// is `volumes/NAME` (with its subpath), a bind mount is the repository's
/// folder.
fn service_mounts(svc: &serde_json::Value, volumes: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for m in svc["volumes"].as_array().into_iter().flatten() {
        let (kind, source, target, subpath) = match m {
            serde_json::Value::String(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                let kind = if parts[0].starts_with('.') || parts[0].starts_with('/') {
                    "bind"
                } else {
                    "volume"
                };
                (kind, parts[0], parts[1], None)
            }
            long => (
                long["type"].as_str().unwrap(),
                long["source"].as_str().unwrap(),
                long["target"].as_str().unwrap(),
                long["volume"]["subpath"].as_str(),
            ),
        };
        let dir = match kind {
            "bind" => repo().join(source.trim_start_matches("./")),
            "volume" => {
                let dir = volumes.join(source);
                let dir = subpath.map_or(dir.clone(), |p| dir.join(p));
                std::fs::create_dir_all(&dir).unwrap();
                dir
            }
            other => panic!("a volume of type {other}"),
        };
        out.push((target.to_owned(), dir));
    }
    out
}

/// One NATS node of the compose file, run as a process here: its configs
/// copied with their ports and certificate folder moved.
struct NatsNode {
    name: String,
    client: u16,
    cluster: u16,
    http: u16,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET `path` over HTTP/1.0 (the body comes unchunked), blocking.
fn http10(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Waits, at most [`icom_tests::NATS_WAIT`], until `done` holds; panics
/// with `what` otherwise.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + icom_tests::NATS_WAIT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `send` whose whole encoding is exactly `size` bytes: a bin32 payload.
fn send_of_size(id: u64, to: &str, size: usize) -> icom_protocol::Send {
    let with = |n: usize| {
        let mut data = vec![0xc6];
        data.extend_from_slice(&u32::try_from(n).unwrap().to_be_bytes());
        data.resize(5 + n, 0x5a);
        icom_tests::send(
            id,
            icom_protocol::Target::Server(to.into()),
            "big",
            bytes::Bytes::from(data),
        )
    };
    let probe = with(size - 1024).encode().len();
    let s = with(size - 1024 + (size - probe));
    assert_eq!(s.encode().len(), size);
    s
}

/// Sends `make(id)` for ids from `first` until the ack is ok: a recipient
/// on another router is `not_found` until this router has heard of it.
/// Panics on any other failure, or after [`icom_tests::NATS_WAIT`].
async fn send_when_known(
    c: &mut RawClient,
    first: u64,
    make: impl Fn(u64) -> icom_protocol::Send,
) -> (u64, icom_protocol::Ack) {
    let deadline = std::time::Instant::now() + icom_tests::NATS_WAIT;
    for id in first.. {
        let ack = c.send(&make(id)).await.unwrap();
        if ack.ok {
            return (id, ack);
        }
        let code = ack.error.as_ref().map(|e| e.code);
        assert_eq!(code, Some(icom_protocol::AckCode::NotFound), "{ack:?}");
        assert!(std::time::Instant::now() < deadline, "{ack:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_compose_file_runs_two_routers_over_three_nats_nodes() {
    let doc = compose_file(CLUSTER_COMPOSE, &[("CLIENTS", "server_1 server_2")]);
    assert_eq!(doc["name"], "icom-cluster");
    let services = doc["services"].as_object().unwrap();
    let volumes = tempfile::tempdir().unwrap();

    // 1. The certs service, twice: the second run changes nothing.
    let certs_svc = &services["certs"];
    let certs = Image::with_mounts(service_mounts(certs_svc, volumes.path()));
    let env = service_env(certs_svc);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let entrypoint = str_list(&certs_svc["entrypoint"]);
    for round in 0..2 {
        let out = certs.command(&entrypoint, &env).output().unwrap();
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{said}");
        assert_eq!(said.contains("copied"), round == 0, "{said}");
    }
    let ca_dir = certs.host("/etc/icom/ca");
    // It made each node's JetStream folder in the volume the nodes mount.
    for node in ["nats-1", "nats-2", "nats-3"] {
        assert!(
            certs.host("/var/lib/icom").join(node).is_dir(),
            "the certs service did not make {node}'s JetStream folder"
        );
    }

    // 2. The NATS nodes: each node's command, its configs (a copy with its
    //    ports moved, its certificates where its volume is, the other
    //    nodes' names resolving to localhost), checked with -t, then run.
    let mut nodes: Vec<NatsNode> = services
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("nats:")))
        .map(|(name, svc)| {
            let dir = tempfile::tempdir().unwrap();
            NatsNode {
                name: name.clone(),
                client: free_tcp_port(),
                cluster: free_tcp_port(),
                http: free_tcp_port(),
                config: PathBuf::new(),
                log: dir.path().join("nats.log"),
                _dir: dir,
                child: None,
            }
            .with_config(svc, volumes.path())
        })
        .collect();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["nats-1", "nats-2", "nats-3"]);
    let routes: Vec<(String, u16)> = nodes.iter().map(|n| (n.name.clone(), n.cluster)).collect();
    let bin = icom_tests::nats_server_bin();
    for node in &mut nodes {
        node.resolve(&routes);
        let out = Command::new(&bin)
            .arg("-c")
            .arg(&node.config)
            .arg("-t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nats-server -t {}: {}{}",
            node.name,
            text(&out.stdout),
            text(&out.stderr)
        );
        let log = std::fs::File::create(&node.log).unwrap();
        node.child = Some(
            Command::new(&bin)
                .arg("-c")
                .arg(&node.config)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    // Healthy (the compose healthcheck's URL), and routed to the others.
    let health_path = str_list(&services["nats-1"]["healthcheck"]["test"])
        .iter()
        .find_map(|a| a.strip_prefix("http://127.0.0.1:8222").map(str::to_owned))
        .expect("the NATS healthcheck asks http://127.0.0.1:8222/...");
    for node in &nodes {
        let http = SocketAddr::from(([127, 0, 0, 1], node.http));
        let others: BTreeMap<String, ()> = nodes
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| (n.name.clone(), ()))
            .collect();
        let logs = || std::fs::read_to_string(&node.log).unwrap_or_default();
        wait_until(
            &format!("{} is not healthy:\n{}", node.name, logs()),
            || http10(http, &health_path).is_some_and(|(s, _)| s == 200),
        );
        wait_until(
            &format!("{} has no route to every other node", node.name),
            || {
                let Some((200, body)) = http10(http, "/routez") else {
                    return false;
                };
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let peers: BTreeMap<String, ()> = v["routes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["remote_name"].as_str().map(|n| (n.to_owned(), ())))
                    .collect();
                peers == others
            },
        );
    }

    // 3. The routers: the image's config, the service's volumes and its
    //    environment (the cluster section), nats-N resolving to localhost.
    let nats_dns = |s: &str| {
        nodes.iter().fold(s.to_owned(), |s, n| {
            s.replace(
                &format!("{}:4222", n.name),
                &format!("localhost:{}", n.client),
            )
        })
    };
    let mut routers = Vec::new();
    for name in ["router-a", "router-b"] {
        let svc = &services[name];
        assert_eq!(
            svc["image"], certs_svc["image"],
            "{name}: the image of certs"
        );
        let image = Image::with_mounts(service_mounts(svc, volumes.path()));
        let ports = Ports::free();
        image.install_config(ports);
        let env: Vec<(String, String)> = service_env(svc)
            .into_iter()
            .map(|(k, v)| (k, nats_dns(&v)))
            .collect();
        assert!(
            env.iter()
                .any(|(k, v)| k == "ICOM_CLUSTER__NAME" && v == name),
            "{name}: ICOM_CLUSTER__NAME"
        );
        let env_ref: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

        // --check-config loads the cluster section from the environment
        // and reads its files; without the NATS key it fails.
        let config = image.df.config_path().to_owned();
        let check = |extra: &[(&str, &str)]| {
            let mut e = env_ref.clone();
            e.extend_from_slice(extra);
            let argv = [
                image.df.entrypoint.clone(),
                vec!["--check-config".to_owned(), config.clone()],
            ]
            .concat();
            image.command(&argv, &e).output().unwrap()
        };
        let out = check(&[]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let out = check(&[("ICOM_CLUSTER__KEY", "/etc/icom/certs/missing.key")]);
        assert!(!out.status.success(), "{name}: the cluster key is not read");
        assert!(
            text(&out.stderr).contains("NATS TLS file"),
            "{}",
            text(&out.stderr)
        );

        let mut router = RouterProcess::spawn(&mut image.router_command(&env_ref));
        router.wait_log("cluster: connected to NATS");
        routers.push((name, image, ports, router, env));
    }

    // 4. A game server on each router; events cross over NATS, the largest
    //    the router takes too (NATS's max_payload leaves room for it).
    let client = |i: usize, id: &str| {
        let (_, image, ports, _, _) = &routers[i];
        let crypto = client_crypto(
            &image.host("/etc/icom/certs/ca.pem"),
            &ca_dir.join(format!("{id}.pem")),
            &ca_dir.join(format!("{id}.key")),
        );
        RawClient::connect_with(ports.addr(), crypto)
    };
    let mut s1 = client(0, "server_1").await.unwrap();
    assert_eq!(s1.hello().await.unwrap().server_id, "server_1");
    let mut s2 = client(1, "server_2").await.unwrap();
    assert_eq!(s2.hello().await.unwrap().server_id, "server_2");
    let payload = bytes::Bytes::from(rmp_serde::to_vec("across").unwrap());
    let to = icom_protocol::Target::Server("server_2".into());
    let (id, ack) = send_when_known(&mut s1, 1, |id| {
        icom_tests::send(id, to.clone(), "hello", payload.clone())
    })
    .await;
    assert_eq!(ack.delivered, 1);
    let d = s2.deliver().await.unwrap();
    assert_eq!(
        (d.from.as_str(), d.id, d.event.as_str()),
        ("server_1", id, "hello")
    );
    assert_eq!(d.data, payload);
    let max = ConfigFile::default().limits.max_event_bytes as usize;
    let (_, ack) = send_when_known(&mut s2, 1, |id| send_of_size(id, "server_1", max)).await;
    assert_eq!(ack.delivered, 1, "a {max}-byte event: {ack:?}");
    let big = send_of_size(0, "server_1", max);
    assert_eq!(s1.deliver().await.unwrap().data, big.data);
    // A durable send: the routers may use the JetStream stream (the nodes'
    // permissions), and a copy queued on one router is stored for all.
    let later = icom_protocol::Send {
        ttl_ms: Some(60_000),
        ..icom_tests::send(
            90,
            icom_protocol::Target::Server("server_9".into()),
            "later",
            payload.clone(),
        )
    };
    let ack = s1.send(&later).await.unwrap();
    assert!(ack.ok && ack.queued == 1, "{ack:?}");

    // 5. No NATS certificate is a game server: a node's (CN nats-1, with
    //    clientAuth for its routes) and a router's NATS client certificate
    //    (CN icom-router-a) are refused in the TLS handshake by the routers,
    //    whose CA for game servers (ca.pem) did not issue them.
    let (_, image_a, ports_a, _, env_a) = &routers[0];
    let cluster_file = |key: &str| {
        let (_, path) = env_a.iter().find(|(k, _)| k == key).unwrap();
        image_a.host(path)
    };
    let node_certs = service_mounts(&services["nats-1"], volumes.path())
        .into_iter()
        .find(|(target, _)| target == "/etc/nats/certs")
        .expect("nats-1 mounts its certificates at /etc/nats/certs")
        .1;
    for (what, cert, key) in [
        (
            "nats-1's certificate",
            node_certs.join("server.pem"),
            node_certs.join("server.key"),
        ),
        (
            "router-a's NATS client certificate",
            cluster_file("ICOM_CLUSTER__CERT"),
            cluster_file("ICOM_CLUSTER__KEY"),
        ),
    ] {
        let crypto = client_crypto(&image_a.host("/etc/icom/certs/ca.pem"), &cert, &key);
        let said = match RawClient::connect_with(ports_a.addr(), crypto).await {
            Ok(mut c) => c.hello().await,
            Err(e) => Err(e),
        };
        match said {
            Ok(w) => panic!(
                "{what} ({}) was welcomed by router-a as the game server {:?}",
                cert.display(),
                w.server_id
            ),
            // A TLS alert (QUIC crypto error 0x100..0x200), not an
            // application close after the handshake.
            Err(icom_tests::RawError::Closed(quinn::ConnectionError::ConnectionClosed(c)))
                if (0x100..0x200).contains(&u64::from(c.error_code)) => {}
            Err(icom_tests::RawError::Closed(quinn::ConnectionError::TransportError(_))) => {}
            Err(e) => panic!("{what}: expected a TLS refusal by router-a, got {e:?}"),
        }
    }

    // 6. And the other way round, a router (the image, router-a's certs
    //    folder and cluster environment) that presents to NATS
    //    - a game server's certificate: the NATS nodes refuse it in the TLS
    //      handshake, since the ICOM CA is not theirs;
    //    - nats-1's certificate (the NATS CA's, but CN=nats-1 is no user):
    //      NATS refuses it as an authorization violation.
    //    Either serves its own servers meanwhile (and takes SIGTERM), and
    //    keeps retrying: each refusal comes again after `listening`.
    let intruder = |cert: &Path, key: &Path| {
        let mounts = service_mounts(&services["router-a"], volumes.path());
        let image = Image::with_mounts(
            mounts
                .into_iter()
                .filter(|(target, _)| target == "/etc/icom/certs")
                .collect(),
        );
        image.install_config(Ports::free());
        let mut env: Vec<(String, String)> = routers[0].4.clone();
        env.retain(|(k, _)| {
            ![
                "ICOM_CLUSTER__NAME",
                "ICOM_CLUSTER__CERT",
                "ICOM_CLUSTER__KEY",
            ]
            .contains(&k.as_str())
        });
        for (k, v) in [
            ("ICOM_CLUSTER__NAME", "intruder".to_owned()),
            ("ICOM_CLUSTER__CERT", cert.display().to_string()),
            ("ICOM_CLUSTER__KEY", key.display().to_string()),
            ("ICOM_CLUSTER__CONNECT_TIMEOUT_MS", "500".to_owned()),
        ] {
            env.push((k.to_owned(), v));
        }
        let env_ref: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let router = RouterProcess::spawn(&mut image.router_command(&env_ref));
        (image, router)
    };
    let node_logged = |what: &str| {
        nodes.iter().any(|n| {
            std::fs::read_to_string(&n.log)
                .unwrap_or_default()
                .contains(what)
        })
    };
    let stop = |mut router: RouterProcess| {
        router.signal("SIGTERM");
        assert!(router.wait_exit(Duration::from_secs(10)).success());
    };

    let (_image, mut game) = intruder(&ca_dir.join("server_1.pem"), &ca_dir.join("server_1.key"));
    game.wait_log("listening");
    wait_until(
        "no NATS node refused the game server's certificate in the TLS handshake",
        || node_logged("certificate signed by unknown authority"),
    );
    stop(game);

    let (_image, mut node) = intruder(
        &node_certs.join("server.pem"),
        &node_certs.join("server.key"),
    );
    node.wait_log("listening");
    node.wait_log("authorization violation");
    wait_until("no NATS node logged an authentication error", || {
        node_logged("authentication error")
    });
    stop(node);

    // 7. docker compose stop: SIGTERM, exit 0.
    for (name, image, _, mut router, _) in routers {
        router.signal(image.df.stopsignal.as_deref().unwrap());
        let status = router.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "{name}: {status:?}");
    }
}

impl NatsNode {
    /// Copies the configs the service mounts into this node's folder,
    /// moving its ports and its certificates' folder; names the config of
    /// the service's command.
    fn with_config(mut self, svc: &serde_json::Value, volumes: &Path) -> NatsNode {
        let mounts = service_mounts(svc, volumes);
        let command = str_list(&svc["command"]);
        assert_eq!(command[0], "nats-server", "{}: {command:?}", self.name);
        let config = flag_value(&command, "--config").expect("--config FILE");
        let (conf_target, conf_src) = mounts
            .iter()
            .find(|(t, _)| config.starts_with(&format!("{t}/")))
            .expect("the config's folder is mounted");
        let conf_dir = self._dir.path().join("conf");
        std::fs::create_dir_all(&conf_dir).unwrap();
        for entry in std::fs::read_dir(conf_src).unwrap() {
            let path = entry.unwrap().path();
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (target, dir) in &mounts {
                if target != conf_target {
                    text = text.replace(target.as_str(), dir.to_str().unwrap());
                }
            }
            for (from, to) in [
                ("\"0.0.0.0:4222\"", format!("\"127.0.0.1:{}\"", self.client)),
                (
                    "\"0.0.0.0:6222\"",
                    format!("\"127.0.0.1:{}\"", self.cluster),
                ),
                ("\"127.0.0.1:8222\"", format!("\"127.0.0.1:{}\"", self.http)),
            ] {
                if path.file_name().unwrap() == "cluster.conf" {
                    assert!(text.contains(from), "the test moves {from} in cluster.conf");
                }
                text = text.replace(from, &to);
            }
            std::fs::write(conf_dir.join(path.file_name().unwrap()), text).unwrap();
        }
        self.config = conf_dir.join(config.strip_prefix(&format!("{conf_target}/")).unwrap());
        assert!(self.config.is_file(), "{}: no {config}", self.name);
        self
    }

    /// The routes: every node's name resolves to localhost, at its moved
    /// cluster port.
    fn resolve(&self, routes: &[(String, u16)]) {
        let dir = self.config.parent().unwrap();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (name, port) in routes {
                text = text.replace(&format!("{name}:6222"), &format!("localhost:{port}"));
            }
            std::fs::write(&path, text).unwrap();
        }
    }
}
