//! `icom-certs`: the certificate CLI. Parses flags, calls [`icom_certs::CertDir`]
//! and prints what was written and what to do next. Failure is one line on
//! stderr (`error: …`) and exit code 1; usage errors exit 2, as clap does.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgGroup, Parser, Subcommand};
use icom_certs::{
    CertDir, Chains, DirLock, IndexEntry, Inspection, Kind, Validity, Written, CA_CERT_FILE,
    CA_KEY_FILE, CRL_FILE, INDEX_FILE,
};
use time::macros::format_description;
use time::OffsetDateTime;

/// Certificates for ICOM: a CA, the router's certificate, one client
/// certificate per game server, and the CRL.
#[derive(Debug, Parser)]
#[command(name = "icom-certs", version)]
struct Cli {
    /// The certificate directory.
    #[arg(long, global = true, env = "ICOM_CERTS_DIR", default_value = "./certs")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the CA: ca.pem, ca.key, index.json and an empty crl.pem.
    Init {
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// The CA's Common Name.
        #[arg(long, default_value = "ICOM CA")]
        name: String,
        /// Overwrite an existing CA (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue the router's certificate: router.pem and router.key.
    #[command(alias = "server")]
    #[command(group(ArgGroup::new("san").required(true).multiple(true).args(["dns", "ip"])))]
    Router {
        /// A DNS name clients dial (repeatable); the first is the CN.
        #[arg(long, value_name = "NAME", num_args = 1..)]
        dns: Vec<String>,
        /// An IP address clients dial (repeatable).
        #[arg(long, value_name = "ADDR", num_args = 1..)]
        ip: Vec<IpAddr>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Overwrite existing router.pem and router.key.
        #[arg(long)]
        force: bool,
        /// Allow it as a TLS client certificate too (EKU clientAuth as well
        /// as serverAuth): for a NATS node, which presents it when it dials
        /// the other nodes' routes.
        #[arg(long)]
        client_auth: bool,
    },
    /// Issue a game server's client certificate: SERVER_ID.pem and SERVER_ID.key.
    Client {
        /// The server id, the certificate's CN: letters, digits, '_', '.', '-',
        /// starting with a letter or digit, at most 64 bytes.
        #[arg(value_name = "SERVER_ID", allow_hyphen_values = true)]
        server_id: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Overwrite existing SERVER_ID.pem and SERVER_ID.key.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate (by serial) or every certificate of a server id,
    /// and rewrite crl.pem.
    Revoke {
        /// A serial number (hex, from `list`) or a server id.
        #[arg(value_name = "SERVER_ID|SERIAL")]
        target: String,
    },
    /// List every certificate issued.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Describe a certificate file and check it against the directory's CA.
    Inspect {
        /// The PEM certificate file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Carries out one command.
fn run(cli: Cli) -> Result<()> {
    let dir = cli.dir.as_path();
    // A command that writes waits for another one writing the same
    // directory (a directory that does not exist is left so: opening it
    // says there is no CA).
    let writes = !matches!(cli.command, Command::List { .. } | Command::Inspect { .. });
    let _lock = if writes && (dir.is_dir() || matches!(cli.command, Command::Init { .. })) {
        Some(DirLock::acquire(dir)?)
    } else {
        None
    };
    match cli.command {
        Command::Init { days, name, force } => init(dir, &name, days, force),
        Command::Router {
            dns,
            ip,
            days,
            force,
            client_auth,
        } => {
            let mut certs = CertDir::open(dir)?;
            let written = if client_auth {
                certs.issue_node(&dns, &ip, days, force)
            } else {
                certs.issue_router(&dns, &ip, days, force)
            }
            .context("cannot issue the router certificate")?;
            print_written("router certificate", &written);
            println!(
                "next: configure the router with {}, {}, {} and {};",
                written.cert_path.display(),
                written.key_path.display(),
                dir.join(CA_CERT_FILE).display(),
                dir.join(CRL_FILE).display(),
            );
            println!(
                "      then issue one client certificate per game server: icom-certs client SERVER_ID --dir {}",
                dir.display()
            );
            Ok(())
        }
        Command::Client {
            server_id,
            days,
            force,
        } => {
            let written = CertDir::open(dir)?
                .issue_client(&server_id, days, force)
                .context("cannot issue the client certificate")?;
            print_written("client certificate", &written);
            println!(
                "next: copy {}, {} and {} to the game server {server_id:?}",
                written.cert_path.display(),
                written.key_path.display(),
                dir.join(CA_CERT_FILE).display(),
            );
            Ok(())
        }
        Command::Revoke { target } => revoke(dir, &target),
        Command::List { json } => {
            let entries = CertDir::open(dir)?.list();
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print_table(dir, &entries);
            }
            Ok(())
        }
        Command::Inspect { file, json } => {
            let report = icom_certs::inspect(&file, dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_inspection(dir, &report);
            }
            Ok(())
        }
    }
}

/// `init`: creates the CA and says how to issue the router certificate.
fn init(dir: &Path, name: &str, days: u32, force: bool) -> Result<()> {
    let certs = CertDir::init(dir, name, days, force).context("cannot create the CA")?;
    println!("created CA {name:?} in {}:", dir.display());
    for (file, what) in [
        (
            CA_CERT_FILE,
            "CA certificate: every router and game server trusts it",
        ),
        (
            CA_KEY_FILE,
            "CA private key (mode 0600): keep it secret, keep it here",
        ),
        (INDEX_FILE, "record of every certificate issued"),
        (CRL_FILE, "revocation list (empty)"),
    ] {
        println!("  {:<24} {what}", certs.file(file).display());
    }
    println!(
        "next: icom-certs router --dir {} --dns router.example.org --ip 203.0.113.10",
        dir.display()
    );
    Ok(())
}

/// `revoke`: marks the target revoked and rewrites the CRL.
fn revoke(dir: &Path, target: &str) -> Result<()> {
    let outcome = CertDir::open(dir)?
        .revoke(target)
        .with_context(|| format!("cannot revoke {target:?}"))?;
    for entry in &outcome.revoked {
        println!(
            "revoked {} certificate {:?}, serial {}",
            kind_name(entry.kind),
            entry.common_name,
            entry.serial
        );
    }
    for entry in &outcome.already {
        println!(
            "already revoked: {} certificate {:?}, serial {}",
            kind_name(entry.kind),
            entry.common_name,
            entry.serial
        );
    }
    println!("wrote {}", outcome.crl_path.display());
    println!("next: make the router reload it (SIGHUP); connections with a revoked certificate are closed");
    Ok(())
}

/// What `router` and `client` wrote.
fn print_written(what: &str, written: &Written) {
    let issued = &written.issued;
    println!(
        "issued {what} {:?}, serial {}, valid until {}",
        issued.common_name,
        issued.serial,
        human_time(issued.not_after)
    );
    println!("  {}", written.cert_path.display());
    println!("  {} (mode 0600)", written.key_path.display());
}

/// The `list` table.
fn print_table(dir: &Path, entries: &[IndexEntry]) {
    if entries.is_empty() {
        println!("no certificates issued in {} yet", dir.display());
        return;
    }
    let cn_width = entries
        .iter()
        .map(|e| e.common_name.len())
        .max()
        .unwrap_or(0)
        .max(2);
    println!(
        "{:<32}  {:<6}  {:<cn_width$}  {:<23}  REVOKED",
        "SERIAL", "KIND", "CN", "EXPIRES"
    );
    for e in entries {
        let revoked = match e.revoked_at {
            Some(at) if e.revoked => format!("yes ({})", human_time(at)),
            _ if e.revoked => "yes".to_owned(),
            _ => "no".to_owned(),
        };
        println!(
            "{:<32}  {:<6}  {:<cn_width$}  {:<23}  {revoked}",
            e.serial.to_string(),
            kind_name(e.kind),
            e.common_name,
            human_time(e.not_after),
        );
    }
}

/// The human form of `inspect`.
fn print_inspection(dir: &Path, r: &Inspection) {
    let list = |items: &[String]| {
        if items.is_empty() {
            "(none)".to_owned()
        } else {
            items.join(", ")
        }
    };
    let validity = match r.validity {
        Validity::Valid => "valid now",
        Validity::Expired => "EXPIRED",
        Validity::NotYetValid => "NOT YET VALID",
    };
    let ekus = match &r.ekus {
        Some(ekus) => list(ekus),
        None => "(no EKU extension: any use)".to_owned(),
    };
    let chains = match r.chains_to_ca {
        Chains::Yes => format!("yes ({})", dir.join(CA_CERT_FILE).display()),
        Chains::No => format!("NO: not signed by {}", dir.join(CA_CERT_FILE).display()),
        Chains::Unknown => format!("unknown (no CA in {})", dir.display()),
    };
    let revoked = match r.revoked {
        Some(true) => "YES".to_owned(),
        Some(false) => "no".to_owned(),
        None => format!("unknown (not in {})", dir.join(INDEX_FILE).display()),
    };
    println!("file:          {}", r.file.display());
    if r.certs_in_file > 1 {
        println!(
            "               (holds {} certificates; the first is shown)",
            r.certs_in_file
        );
    }
    println!("subject:       {}", r.subject);
    println!("issuer:        {}", r.issuer);
    println!("common names:  {}", list(&r.common_names));
    println!("SANs:          {}", list(&r.sans));
    println!("EKU:           {ekus}");
    println!("CA:            {}", if r.is_ca { "yes" } else { "no" });
    println!("valid from:    {}", human_time(r.not_before));
    println!("valid until:   {} ({validity})", human_time(r.not_after));
    println!("serial:        {}", r.serial);
    println!("SHA-256:       {}", r.fingerprint_sha256);
    println!("chains to CA:  {chains}");
    println!("revoked:       {revoked}");
}

/// `router` or `client`.
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Router => "router",
        Kind::Client => "client",
    }
}

/// `2035-05-01 12:00:00 UTC`.
fn human_time(t: OffsetDateTime) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| t.to_string())
}
