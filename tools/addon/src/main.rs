//! The ICOM addon tool: what HEMTT would do for the addon, for the checks
//! and packaging that run here.
//!
//! - `check <addon dir>`: preprocesses `config.cpp` (its `#include`s and
//!   macros) and parses it with HEMTT's config parser, then checks what the
//!   addon promises: `CfgPatches` requiring `cba_main`, a file for every
//!   function in `CfgFunctions`, the XEH scripts, and `$PBOPREFIX$`.
//! - `preprocess <file.sqf>`: prints the file with its includes and macros
//!   expanded, for the SQF linter.
//! - `pack <addon dir> <out.pbo>`: writes the PBO, with the prefix of
//!   `$PBOPREFIX$`.

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hemtt_config::{Config, Options, Parse, Rapify};
use hemtt_pbo::WritablePbo;
use hemtt_preprocessor::{preprocess_file, Context, Error, Processed, Resolver};
use hemtt_tokens::Token;
use peekmore::PeekMore;

mod rap;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["check", dir] => check(Path::new(dir)),
        ["preprocess", file] => preprocess(Path::new(file)).map(|text| print!("{text}")),
        ["pack", dir, out] => pack(Path::new(dir), Path::new(out)),
        _ => Err("usage: icom-addon-tool check <addon dir> | preprocess <file.sqf> | pack <addon dir> <out.pbo>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves `#include`s as the game does inside this addon: relative to
/// the including file, or absolute under the addon's prefix
/// (`\z\icom\addons\main\...`), with `\` as the separator.
struct AddonResolver {
    dir: PathBuf,
    prefix: String,
}

impl AddonResolver {
    fn new(dir: &Path) -> Result<AddonResolver, String> {
        let prefix = std::fs::read_to_string(dir.join("$PBOPREFIX$"))
            .map_err(|e| format!("{}: {e}", dir.join("$PBOPREFIX$").display()))?;
        Ok(AddonResolver {
            dir: dir.to_owned(),
            prefix: prefix.trim().trim_start_matches('\\').replace('\\', "/"),
        })
    }

    fn addon_of(file: &Path) -> Result<AddonResolver, String> {
        let mut dir = file.parent();
        while let Some(d) = dir {
            if d.join("$PBOPREFIX$").is_file() {
                return AddonResolver::new(d);
            }
            dir = d.parent();
        }
        Err(format!(
            "{} is not inside an addon (no $PBOPREFIX$ above it)",
            file.display()
        ))
    }
}

impl Resolver for AddonResolver {
    fn find_include(
        &self,
        _: &Context,
        _: &str,
        from: &str,
        to: &str,
        source: Vec<Token>,
    ) -> Result<(PathBuf, String), Error> {
        let to = to.replace('\\', "/");
        let path = if let Some(absolute) = to.strip_prefix('/') {
            match absolute.strip_prefix(&format!("{}/", self.prefix)) {
                Some(inside) => self.dir.join(inside),
                None => {
                    return Err(Error::IncludeNotFound {
                        target: source,
                        trace: Vec::new(),
                    })
                }
            }
        } else {
            Path::new(from).parent().unwrap_or(Path::new(".")).join(to)
        };
        let text = std::fs::read_to_string(&path)?;
        Ok((path, text))
    }
}

fn tokens(file: &Path) -> Result<Vec<Token>, String> {
    let resolver = AddonResolver::addon_of(file)?;
    let entry = file.to_str().ok_or("a path that is not UTF-8")?;
    preprocess_file(entry, &resolver).map_err(|e| format!("{}: {e}", file.display()))
}

fn preprocess(file: &Path) -> Result<String, String> {
    Ok(Processed::from(tokens(file)?).output().to_owned())
}

fn check(dir: &Path) -> Result<(), String> {
    let config_path = dir.join("config.cpp");
    let tokens = tokens(&config_path)?;
    let first = tokens.first().cloned().ok_or("config.cpp is empty")?;
    let config = Config::parse(
        &Options::default(),
        &mut tokens.into_iter().peekmore(),
        &first,
    )
    .map_err(|e| format!("{}: {e}", config_path.display()))?;
    // Read the structure back from the binarised form (what the game reads
    // from a config.bin): it proves that the parse is complete, and gives
    // the checks below a plain tree.
    let mut bin = Vec::new();
    config
        .rapify(&mut bin, 0)
        .map_err(|e| format!("binarising config.cpp: {e}"))?;
    let root = rap::read(&bin).map_err(|e| format!("reading the binarised config: {e}"))?;
    let mut problems = Vec::new();

    let resolver = AddonResolver::new(dir)?;
    let component = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !resolver.prefix.ends_with(&format!("addons/{component}")) {
        problems.push(format!(
            "$PBOPREFIX$ {} does not end with addons\\{component}",
            resolver.prefix
        ));
    }

    match root.class("CfgPatches") {
        None => problems.push("no class CfgPatches".into()),
        Some(patches) => {
            if patches.classes().next().is_none() {
                problems.push("CfgPatches has no addon class".into());
            }
            for patch in patches.classes() {
                let required = patch.strings("requiredAddons");
                if !required.iter().any(|r| r.eq_ignore_ascii_case("cba_main")) {
                    problems.push(format!(
                        "CfgPatches >> {} does not require cba_main",
                        patch.name
                    ));
                }
                for key in ["units", "weapons", "requiredVersion", "name"] {
                    if !patch.has(key) {
                        problems.push(format!("CfgPatches >> {} has no {key}", patch.name));
                    }
                }
            }
        }
    }

    for (event, script) in [
        ("Extended_PreInit_EventHandlers", "XEH_preInit"),
        ("Extended_PostInit_EventHandlers", "XEH_postInit"),
    ] {
        let init = root
            .class(event)
            .and_then(|c| c.classes().next())
            .and_then(|c| c.string("init"));
        match init {
            Some(init) if init.contains(&format!("{script}.sqf")) => {}
            other => problems.push(format!("{event}: init {other:?} does not run {script}.sqf")),
        }
        if !dir.join(format!("{script}.sqf")).is_file() {
            problems.push(format!("{script}.sqf is missing"));
        }
    }

    let mut listed = Vec::new();
    match root.class("CfgFunctions") {
        None => problems.push("no class CfgFunctions".into()),
        Some(tags) => {
            for tag in tags.classes() {
                for category in tag.classes() {
                    for function in category.classes() {
                        listed.push(function.name.to_lowercase());
                        let file = dir
                            .join("functions")
                            .join(format!("fn_{}.sqf", function.name));
                        if !file.is_file() {
                            problems.push(format!(
                                "CfgFunctions >> {} >> {} >> {}: {} is missing",
                                tag.name,
                                category.name,
                                function.name,
                                file.display()
                            ));
                        }
                    }
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("functions")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(function) = name
                .strip_prefix("fn_")
                .and_then(|n| n.strip_suffix(".sqf"))
            {
                if !listed.contains(&function.to_lowercase()) {
                    problems.push(format!("functions/{name} is not listed in CfgFunctions"));
                }
            }
        }
    }

    if problems.is_empty() {
        println!(
            "{}: config.cpp parses and binarises; CfgPatches, XEH and {} functions check out",
            dir.display(),
            listed.len()
        );
        Ok(())
    } else {
        Err(problems.join("\n       "))
    }
}

fn pack(dir: &Path, out: &Path) -> Result<(), String> {
    let resolver = AddonResolver::new(dir)?;
    let mut pbo: WritablePbo<Cursor<Vec<u8>>> = WritablePbo::new();
    pbo.add_property("prefix", resolver.prefix.replace('/', "\\"));
    let mut files = Vec::new();
    collect(dir, dir, &mut files).map_err(|e| format!("{}: {e}", dir.display()))?;
    files.sort();
    for relative in &files {
        let bytes = std::fs::read(dir.join(relative)).map_err(|e| format!("{relative}: {e}"))?;
        pbo.add_file(relative.as_str(), Cursor::new(bytes))
            .map_err(|e| format!("{relative}: {e}"))?;
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut file = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    pbo.write(&mut file, true)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "{}: {} files, prefix {}",
        out.display(),
        files.len(),
        resolver.prefix.replace('/', "\\")
    );
    Ok(())
}

/// Every file of the addon but `$PBOPREFIX$` (it becomes the header's
/// prefix), as paths relative to the addon with `/`.
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.file_name().is_some_and(|n| n != "$PBOPREFIX$") {
            if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(())
}
