//! The deployment files, run as written against the real binaries: the
//! Dockerfile's ENTRYPOINT + CMD, ENV, HEALTHCHECK and STOPSIGNAL; the compose
//! `certs` service's script (deploy/docker/mint-certs.sh), twice; the systemd
//! unit's ExecStart, ExecReload and KillSignal.
//!
//! Nothing here can run Docker or systemd, so the test plays the image: its
//! /etc/icom and /var/lib/icom live in a temp dir, its /usr/local/bin is the
//! cargo target dir (icom-server, icom-certs) plus the files the Dockerfile
//! COPYs there, and the environment is the image's and nothing else. Files
//! are read from the repository, never restated here; the only changes to
//! the shipped config are the moved paths and free ports instead of 9090
//! (QUIC) and 9091 (metrics), so tests can run side by side.
//! scripts/test.d/20-deploy lints the same files (hadolint, shellcheck,
//! systemd-analyze) and checks that compose.yaml runs what this test runs.

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
}

impl Image {
    fn new() -> Image {
        let image = Image {
            df: Dockerfile::load(),
            root: tempfile::tempdir().unwrap(),
            bin: bin_dir(),
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
        let moved = IMAGE_DIRS
            .iter()
            .any(|d| path == *d || path.starts_with(&format!("{d}/")));
        assert!(moved, "{path} is not under {IMAGE_DIRS:?}");
        self.root.path().join(path.trim_start_matches('/'))
    }

    /// `s` with every image folder replaced by where it is here.
    fn moved(&self, s: &str) -> String {
        IMAGE_DIRS.iter().fold(s.to_owned(), |s, d| {
            s.replace(d, self.host(d).to_str().unwrap())
        })
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
