//! The command line (docs/commands.md): parsing with clap, dispatch, and the one place that
//! turns an error into `error: ...` and an exit status.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::project::{Node, Project};
use crate::config::recipe::Mode;
use crate::deploy::outcome::Outcome;
use crate::deploy::pipeline::{self as deploy, DeployRequest, RollbackRequest, RollbackTarget};
use crate::error::{EXIT_BAD_INPUT, EXIT_OK, Error};
use crate::exec::report::{Reporter, Timeline};
use crate::push::hook::{self, Repo};
use crate::push::init::{self, InitRequest};
use crate::release::signing::SignWhich;
use crate::release::source::Part;
use crate::status;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "A git-push PaaS node with transactional deploys"
)]
struct Cli {
    /// The node's root directory (default: $KILN_ROOT, else /srv/projects).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a project (or repair a damaged one).
    Init {
        name: String,
        /// editable, cooking or final (default: from node.yml's environment).
        #[arg(long)]
        mode: Option<String>,
        /// The branch that deploys (default: master).
        #[arg(long)]
        branch: Option<String>,
        /// Where a final-mode project pulls releases from.
        #[arg(long)]
        source: Option<String>,
    },
    /// Deploy the deploy branch (or --rev) by hand.
    Deploy {
        name: String,
        #[arg(long)]
        rev: Option<String>,
        /// Deploy even if the commit is already live with the same pillar (otherwise a no-op).
        #[arg(long)]
        force: bool,
        /// Print one JSON result on stdout (the progress goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Mode, live release, last deploy, running deploy, drift.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// The release log.
    Releases {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Switch back to the release live before the current one (or the named one).
    Rollback {
        name: String,
        #[arg(conflicts_with = "to_before")]
        release: Option<String>,
        /// Undo RELEASE: take live what was live just before it went live, if it is still live
        /// (otherwise nothing changes).
        #[arg(long, value_name = "RELEASE")]
        to_before: Option<String>,
        /// Also put data/ back as it was when that release was live.
        #[arg(long)]
        with_data: bool,
        /// Print one JSON result on stdout (the progress goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// The log of a deploy or a manual rollback (default: the newest); with --app, the
    /// processes' output.
    Logs {
        name: String,
        #[arg(conflicts_with = "app")]
        release: Option<String>,
        /// Its structured events (logs/<release>.jsonl), one JSON object a line.
        #[arg(long)]
        json: bool,
        /// The app's processes' output (logs/app/), timestamped and prefixed by instance.
        #[arg(long)]
        app: bool,
        /// Only this process type's (with --app).
        #[arg(long = "type", value_name = "TYPE", requires = "app")]
        kind: Option<String>,
        /// Keep printing new lines (with --app).
        #[arg(short = 'f', long, requires = "app")]
        follow: bool,
        /// How many lines to show first (with --app).
        #[arg(
            short = 'n',
            long,
            value_name = "N",
            default_value_t = 100,
            requires = "app"
        )]
        lines: usize,
    },
    /// The project's processes: each instance's state, pid, port, uptime and restarts; or
    /// `kiln ps scale <name> TYPE=N...`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Ps {
        #[command(subcommand)]
        command: Option<PsCommand>,
        #[arg(required = true)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restart the project's processes (only those of TYPE, if given).
    Restart {
        name: String,
        #[arg(value_name = "TYPE")]
        kind: Option<String>,
    },
    /// Run a one-off command in run/ with the live release's environment; its exit status is
    /// kiln's.
    Run {
        name: String,
        /// The command and its arguments, as they are (`--` before them is optional, as
        /// `heroku run` and `dokku run` take them).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Stop every supervised process of the project and run its `services.stop`; it stays
    /// stopped (also across `kiln boot`) until `kiln start` or a deploy.
    Stop { name: String },
    /// Start a project stopped with `kiln stop`: its `services.start`, then its processes.
    Start { name: String },
    /// The node's process supervisor daemon and web check (started on demand by the commands
    /// that need it).
    Supervise {
        /// Leave the caller's session (how kiln starts it).
        #[arg(long, hide = true)]
        detach: bool,
        /// Stop every project's processes and the daemon, for machine maintenance; nothing
        /// starts them again until `kiln boot`.
        #[arg(long, conflicts_with = "detach")]
        stop: bool,
    },
    /// At machine start: finish interrupted deploys, start the supervisor and every project's
    /// processes.
    Boot,
    /// The supervisor of one process instance (started by `kiln supervise`).
    #[command(hide = true)]
    SuperviseInstance {
        project: String,
        instance: String,
        nonce: String,
    },
    /// Notifications (mail, webhooks) that are still to be delivered.
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// The merged settings (kiln's, kiln.yml defaults, pillar) as YAML, secrets masked.
    Config {
        name: String,
        /// Show the secret values too.
        #[arg(long)]
        reveal: bool,
        /// Print JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
    /// Change a project's mode (data/ is never touched).
    Mode { name: String, mode: String },
    /// Finish undoing an interrupted deploy.
    Recover {
        name: String,
        /// Give up the undo: record the failure in the release log and remove the journal,
        /// leaving run/ and data/ as they are.
        #[arg(long)]
        abandon: bool,
    },
    /// Release tarballs: what this node offers, and adding one by hand.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
    /// The build cache of a project's buildpacks (cache/<buildpack>/).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// The node's release signing key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// The front door: the nginx that routes each project's domains (node.yml `proxy`).
    Proxy {
        #[command(subcommand)]
        command: ProxyCommand,
    },
    /// A project's domains (project.yml `domains`), routed by the front door.
    Domains {
        #[command(subcommand)]
        command: DomainsCommand,
    },
    /// Who may come in over SSH: node.yml's users and the node user's authorized_keys.
    Access {
        #[command(subcommand)]
        command: AccessCommand,
    },
    /// The forced command of every key `kiln access sync` writes: runs what the SSH client
    /// asked for ($SSH_ORIGINAL_COMMAND) if USER may.
    Ssh {
        user: String,
        /// The fingerprint of the key USER came in with.
        #[arg(long)]
        key: Option<String>,
    },
    /// Invoked by the hooks installed in the bare repos.
    Hook {
        #[arg(value_parser = ["pre-receive", "post-receive"])]
        which: String,
        name: String,
        #[arg(value_parser = ["project", "pillar"])]
        repo: String,
    },
}

#[derive(Debug, Subcommand)]
enum PsCommand {
    /// Set how many instances of each process type run (kept across deploys); only what
    /// changes is started or stopped.
    Scale {
        name: String,
        #[arg(required = true, value_name = "TYPE=N")]
        counts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NotifyCommand {
    /// Try again, now, every notification still in the spool (of NAME, or of every project);
    /// exits 1 if some stay undelivered.
    Retry { name: Option<String> },
    /// What kiln starts in the background after a deploy: delivers the spool with retries and
    /// backoff, then exits.
    #[command(hide = true)]
    Deliver,
    /// Report what a process supervisor saw (kiln's own calls this itself, the systemd
    /// backend's units from `ExecStopPost=`, a runit `finish` script can run it): one alert
    /// per crash loop or failing check, then one "recovered".
    Report {
        name: String,
        #[command(subcommand)]
        report: ReportCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// An instance of PROCESS exited and was started again.
    Restarted { process: String },
    /// PROCESS has been running, without a restart, for UP (e.g. `90s`).
    Running {
        process: String,
        #[arg(long, value_name = "DURATION")]
        up: String,
    },
    /// The web check CHECK failed.
    CheckFailed {
        check: String,
        /// How it failed, for the alert.
        #[arg(long, default_value = "")]
        detail: String,
    },
    /// The web check CHECK passed.
    CheckPassed { check: String },
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// The releases this node offers to final-mode nodes (cooking: its good releases).
    List {
        name: String,
        /// The manifests as a JSON array (what `ssh://` sources read).
        #[arg(long)]
        json: bool,
    },
    /// Write a release's tarball to stdout (how production pulls over SSH).
    Export {
        name: String,
        release: String,
        /// Write its manifest instead.
        #[arg(long, conflicts_with = "signature")]
        manifest: bool,
        /// Write its manifest's signature instead (nothing for an unsigned release).
        #[arg(long)]
        signature: bool,
    },
    /// Add a release by hand: FILE is `<release>.tar.zst`, with `<release>.json` (and
    /// `<release>.json.sig`) next to it. Checked like a pull; a later deploy of its commit uses it.
    Import { name: String, file: PathBuf },
    /// Upload the releases this node offers to an S3-compatible store (default: project.yml's
    /// `publish`), then the store's index.json; what the store has already is not uploaded again.
    Publish {
        name: String,
        /// `s3://<bucket>/<prefix>`.
        url: Option<String>,
    },
    /// Sign releases baked before this node had its key (`kiln key generate`), without
    /// rebuilding: RELEASE, or every release the node offers with --all.
    #[command(
        group(clap::ArgGroup::new("which").required(true).args(["release", "all"])),
        override_usage = "kiln release sign <NAME> <RELEASE|--all>"
    )]
    Sign {
        name: String,
        release: Option<String>,
        /// Every good release this node offers.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AccessCommand {
    /// (Re)write the kiln section of authorized_keys from node.yml; other lines stay.
    Sync,
    /// Add the public key(s) in FILE (`-`: stdin) to USER, creating USER if needed; then sync.
    AddKey { user: String, file: PathBuf },
    /// Give USER a right on PROJECT (`*`: every project): deploy, config, operate, or
    /// node-wide admin (with `*`); then sync.
    Grant {
        user: String,
        project: String,
        right: String,
    },
    /// Take a right back; then sync.
    Revoke {
        user: String,
        project: String,
        right: String,
    },
    /// Users, their key fingerprints and rights.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ProxyCommand {
    /// Write every project's configuration, test it and start the node-private nginx
    /// (reload it if it runs).
    Start,
    /// Rewrite every project's configuration, test it (the previous one is kept if nginx
    /// refuses it) and reload nginx gracefully.
    Reload,
    /// Whether nginx runs, where it listens, and each project's domains, upstreams and
    /// whether its configuration is current.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop the node-private nginx gracefully.
    Stop,
}

#[derive(Debug, Subcommand)]
enum DomainsCommand {
    /// Route DOMAIN... to the project (`*.example.com`: every subdomain).
    Add {
        name: String,
        #[arg(required = true)]
        domains: Vec<String>,
    },
    /// Stop routing DOMAIN... to the project (its `tls` entry goes too).
    Remove {
        name: String,
        #[arg(required = true)]
        domains: Vec<String>,
    },
    /// The project's domains, `(https)` after those with a certificate.
    List { name: String },
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Remove what the buildpacks cached (all of it, or BUILDPACK's): the next build downloads
    /// and installs the dependencies again. Waits for a running deploy.
    Clear {
        name: String,
        /// One buildpack's cache (`python`, `nodejs`, ...).
        buildpack: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create this node's signing key; prints the public key for production's `trusted_key`.
    Generate,
    /// Print this node's public key.
    Show,
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                EXIT_BAD_INPUT
            } else {
                EXIT_OK
            };
            let _ = e.print();
            return code;
        }
    };
    let in_hook = matches!(cli.command, Command::Hook { .. });
    match dispatch(cli) {
        Ok(()) => EXIT_OK,
        Err(error) => {
            // A failed deploy already said so on its last output line; in a hook that line
            // reaches the pusher, so do not repeat it there.
            let announced = matches!(
                error,
                Error::DeployFailed { .. }
                    | Error::RollbackFailed { .. }
                    | Error::NotDeployed { .. }
            );
            if !(in_hook && announced) {
                let _ = writeln!(std::io::stderr(), "error: {}", error_chain(&error));
            }
            error.exit_code()
        }
    }
}

/// `kiln deploy` and `kiln rollback` of project `name`: the progress on stdout or, with
/// `--json`, on stderr, and then the one JSON result on stdout whatever happened (`outcome`
/// makes it; src/deploy/outcome.rs).
fn with_outcome<T>(
    node: &Node,
    name: &str,
    action: &'static str,
    json: bool,
    run: impl FnOnce(&Project, &mut Reporter) -> Result<T, Error>,
    outcome: impl FnOnce(&Project, &Result<T, Error>, Timeline, f64) -> Outcome,
) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let mut out = if json {
        Reporter::to_stderr()
    } else {
        Reporter::to_stdout()
    };
    let project = match node.project(name) {
        Ok(project) => project,
        Err(error) => {
            if json {
                print_outcome(&Outcome::of_error(name, action, &error, 0.0));
            }
            return Err(error);
        }
    };
    let result = run(&project, &mut out);
    if json {
        let timeline = out.timeline();
        let seconds = started.elapsed().as_secs_f64();
        print_outcome(&outcome(&project, &result, timeline, seconds));
    }
    result.map(|_| ())
}

/// The one JSON result of `--json` (a reader that went away is not an error).
fn print_outcome(outcome: &Outcome) {
    let _ = writeln!(std::io::stdout(), "{}", outcome.to_json());
}

fn error_chain(error: &Error) -> String {
    let text = crate::error::chain(error);
    // Lowercase first letter, as every kiln error line is.
    let mut chars = text.chars();
    match chars.next() {
        Some(first)
            if ![
                "deploy FAILED",
                "rollback FAILED",
                "NOT deployed",
                "Procfile",
            ]
            .iter()
            .any(|loud| text.starts_with(loud)) =>
        {
            first.to_lowercase().collect::<String>() + chars.as_str()
        }
        _ => text,
    }
}

fn parse_mode(value: &str) -> Result<Mode, Error> {
    value.parse().map_err(|_| Error::BadMode {
        value: value.to_string(),
    })
}

fn dispatch(cli: Cli) -> Result<(), Error> {
    if only_prints(&cli.command) {
        die_quietly_when_the_reader_goes();
    }
    let node = Node::open(cli.root)?;
    wake_supervisor(&node, &cli.command);
    match cli.command {
        Command::Init {
            name,
            mode,
            branch,
            source,
        } => {
            let mode = mode.as_deref().map(parse_mode).transpose()?;
            let kiln = std::env::current_exe()
                .map_err(|e| crate::error::io_error("find", std::path::Path::new("kiln"), e))?;
            let report = init::init(
                &node,
                &InitRequest {
                    name: name.clone(),
                    mode,
                    branch,
                    source,
                },
                &kiln,
            )?;
            let verb = if report.existed {
                "repaired"
            } else {
                "created"
            };
            println!("{verb} project `{name}` under {}", node.root.display());
            for path in &report.created {
                println!("  + {}", path.display());
            }
            println!("push to it with:");
            println!("  git remote add kiln {}", report.project_repo.display());
            if !node.config.users.is_empty() {
                // The SSH entry serves `<name>` (README, "SSH access"); this user and host
                // name are a guess at what reaches this node from elsewhere.
                let user = nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map_or_else(|| "kiln".to_string(), |user| user.name);
                let host = crate::notify::message::host_name();
                println!(
                    "  (from another machine, over SSH: git remote add kiln ssh://{user}@{host}/{name})"
                );
            }
            println!("  git push kiln master");
            println!(
                "pillar (private settings): {}",
                report.pillar_repo.display()
            );
            Ok(())
        }
        Command::Deploy {
            name,
            rev,
            force,
            json,
        } => {
            with_outcome(
                &node,
                &name,
                "deploy",
                json,
                |project, out| {
                    hook::keep_going_without_pusher();
                    deploy::deploy(
                        &node,
                        project,
                        &DeployRequest {
                            rev,
                            who: hook::pusher(),
                            who_key: hook::pusher_key(),
                            settings_only: false,
                            // Whoever typed the command knows how to run it again.
                            retry: None,
                            receive_pack: None,
                            force,
                        },
                        out,
                    )
                },
                Outcome::of_deploy,
            )
        }
        Command::Status { name, json } => {
            let project = node.project(&name)?;
            status::status(&node, &project, json)
        }
        Command::Releases { name, json } => {
            let project = node.project(&name)?;
            status::releases(&node, &project, json)
        }
        Command::Logs {
            name,
            release,
            json,
            app,
            kind,
            follow,
            lines,
        } => {
            let project = node.project(&name)?;
            if app {
                let query = crate::runtime::applog::LogQuery { kind, lines };
                status::app_logs(&node, &project, &query, follow)
            } else {
                status::logs(&project, release.as_deref(), json)
            }
        }
        Command::Ps {
            command: Some(PsCommand::Scale { name, counts }),
            ..
        } => {
            let project = node.project(&name)?;
            let mut out = Reporter::to_stdout();
            let said = crate::deploy::operate::scale(&node, &project, &counts, &mut out)?;
            println!("{said}");
            status::ps(&node, &project, false)
        }
        Command::Ps { name, json, .. } => {
            let name =
                name.ok_or_else(|| Error::Usage("say which project: `kiln ps <name>`".into()))?;
            let project = node.project(&name)?;
            status::ps(&node, &project, json)
        }
        Command::Restart { name, kind } => {
            let project = node.project(&name)?;
            let mut out = Reporter::to_stdout();
            let said = crate::deploy::operate::restart(&node, &project, kind.as_deref(), &mut out)?;
            println!("{said}");
            status::ps(&node, &project, false)
        }
        Command::Run { name, command } => {
            let project = node.project(&name)?;
            crate::deploy::operate::run(&node, &project, &command)
        }
        Command::Stop { name } => {
            let project = node.project(&name)?;
            let mut out = Reporter::to_stdout();
            let said = crate::deploy::operate::stop(&node, &project, &hook::pusher(), &mut out)?;
            println!("{said}");
            Ok(())
        }
        Command::Start { name } => {
            let project = node.project(&name)?;
            let mut out = Reporter::to_stdout();
            let said = crate::deploy::operate::start(&node, &project, &mut out)?;
            println!("{said}");
            status::ps(&node, &project, false)
        }
        Command::Supervise { stop: true, .. } => {
            for line in crate::deploy::operate::hold(&node, &hook::pusher())? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Supervise { detach, .. } => {
            let (root, config) = (node.root.clone(), node.config.supervisor.clone());
            let commands = crate::deploy::operate::NodeCommands::shared(node);
            crate::runtime::supervisor::daemon::run(&root, &config, detach, commands)
        }
        Command::SuperviseInstance {
            project,
            instance,
            nonce,
        } => crate::runtime::supervisor::instance::run(&node.root, &project, &instance, &nonce),
        Command::Boot => {
            let mut out = Reporter::to_stdout();
            let lines = crate::deploy::operate::boot(&node, &mut out)?;
            println!(
                "supervisor: {}",
                crate::deploy::operate::supervisor(&node).describe()
            );
            for line in lines {
                println!("{line}");
            }
            Ok(())
        }
        Command::Notify { command } => notify(&node, command),
        Command::Rollback {
            name,
            release,
            to_before,
            with_data,
            json,
        } => {
            let target = match (&release, &to_before) {
                (_, Some(id)) => RollbackTarget::Before(id),
                (Some(id), None) => RollbackTarget::Named(id),
                (None, None) => RollbackTarget::Previous,
            };
            with_outcome(
                &node,
                &name,
                "rollback",
                json,
                |project, out| {
                    deploy::rollback_to(
                        &node,
                        project,
                        &RollbackRequest {
                            target,
                            with_data,
                            who: hook::pusher(),
                            who_key: hook::pusher_key(),
                        },
                        out,
                    )
                },
                Outcome::of_rollback,
            )
        }
        Command::Config { name, reveal, json } => {
            let project = node.project(&name)?;
            let value = crate::status::config(&node, &project, reveal)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                // A JSON value always serializes; the YAML reads like the pillar.yml it
                // came from.
                print!("{}", serde_saphyr::to_string(&value).unwrap_or_default());
            }
            Ok(())
        }
        Command::Mode { name, mode } => {
            let mode = parse_mode(&mode)?;
            let project = node.project(&name)?;
            status::set_mode(&node, &project, mode)
        }
        Command::Recover { name, abandon } => {
            let project = node.project(&name)?;
            let mut out = Reporter::to_stdout();
            let _lock = crate::transaction::lock::lock(&project, "recovery", &mut out)?;
            if abandon {
                if !crate::deploy::rollback::abandon(&project, &mut out)? {
                    println!("nothing to abandon: no deploy of `{name}` is left to undo");
                }
            } else if !crate::deploy::rollback::recover(&node, &project, &mut out)? {
                println!("nothing to recover: no deploy of `{name}` was interrupted");
            }
            Ok(())
        }
        Command::Release { command } => release(&node, command),
        Command::Proxy { command } => proxy(&node, command),
        Command::Domains { command } => domains(&node, command),
        Command::Cache {
            command: CacheCommand::Clear { name, buildpack },
        } => {
            let project = node.project(&name)?;
            let mut out = Reporter::to_stdout();
            // A build writes into the cache: wait for it rather than pull it away.
            let _lock = crate::transaction::lock::lock(&project, "cache clear", &mut out)?;
            let cleared =
                crate::runtime::cache::clear(&project.paths.cache, &name, buildpack.as_deref())?;
            if cleared.removed.is_empty() {
                println!("the build cache of `{name}` is empty: nothing to clear");
            }
            for (buildpack, bytes) in cleared.removed {
                println!(
                    "cleared the build cache of `{name}` for buildpack `{buildpack}` ({})",
                    crate::runtime::cache::human(bytes)
                );
            }
            Ok(())
        }
        Command::Access { command } => access(&node, command),
        Command::Ssh { user, key } => crate::access::forced::run(&node, &user, key.as_deref()),
        Command::Key { command } => {
            let public = match command {
                KeyCommand::Generate => crate::release::signing::generate(&node.root)?,
                KeyCommand::Show => crate::release::signing::public_key(&node.root)?,
            };
            println!("{public}");
            Ok(())
        }
        Command::Hook { which, name, repo } => {
            let repo = if repo == "pillar" {
                Repo::Pillar
            } else {
                Repo::Project
            };
            let updates = hook::parse_updates(std::io::stdin().lock());
            let mut out = Reporter::to_stdout();
            if which == "pre-receive" {
                hook::pre_receive(&node, &name, repo, &updates, &mut out)
            } else {
                hook::post_receive(&node, &name, repo, &updates, &mut out)
            }
        }
    }
}

fn notify(node: &Node, command: NotifyCommand) -> Result<(), Error> {
    match command {
        NotifyCommand::Retry { name } => {
            if let Some(name) = &name {
                // Refuses a name that is not a project (nor one whose spool is left).
                let paths = node.paths(name)?;
                if !paths.project_yml.exists()
                    && crate::notify::spool::entry_paths(&node.root, Some(name)).is_empty()
                {
                    node.project(name)?;
                }
            }
            let retried = crate::notify::deliver::retry(node, name.as_deref(), &mut |line| {
                println!("{line}");
            })?;
            if retried.left > 0 {
                return Err(Error::Undelivered {
                    count: retried.left,
                    project: name,
                });
            }
            if retried.delivered == 0 {
                println!("nothing to deliver: the spool is empty");
            }
            Ok(())
        }
        NotifyCommand::Report { name, report } => {
            use crate::notify::alert::{self, Report, Source};
            let project = node.project(&name)?;
            let live =
                crate::transaction::release_log::ReleaseLog::load(&project.paths.release_log())?
                    .current;
            let since = match &report {
                ReportCommand::Running { up, .. } => {
                    let up = crate::config::duration::parse(up)
                        .map_err(|e| Error::Usage(format!("--up: {e}")))?;
                    chrono::Utc::now() - chrono::Duration::from_std(up).unwrap_or_default()
                }
                _ => chrono::Utc::now(),
            };
            let report = match &report {
                ReportCommand::Restarted { process } => Report::Restarted { process },
                ReportCommand::Running { process, .. } => Report::Running { process, since },
                ReportCommand::CheckFailed { check, detail } => {
                    Report::CheckFailed { check, detail }
                }
                ReportCommand::CheckPassed { check } => Report::CheckPassed { check },
            };
            let source = Source {
                node,
                project: &project,
                release: live.as_deref(),
            };
            match alert::report(&source, report, &[])? {
                Some(decision) => println!("notifying: {}", decision.summary),
                None => println!("recorded: nothing to notify"),
            }
            Ok(())
        }
        NotifyCommand::Deliver => {
            // Its own session: the pusher's terminal or ssh session ending must not stop it.
            let _ = nix::unistd::setsid();
            hook::keep_going_without_pusher();
            crate::notify::deliver::deliver_in_background(node)?;
            Ok(())
        }
    }
}

fn access(node: &Node, command: AccessCommand) -> Result<(), Error> {
    use crate::access::users::{self, Edit, Grant};
    let node_yml = node.root.join("node.yml");
    let grant = |right: &str| right.parse::<Grant>().map_err(Error::Usage);
    let edit = match command {
        AccessCommand::Sync => None,
        AccessCommand::List { json } => {
            let path = crate::access::keys::authorized_keys_path(&node.config)?;
            print!("{}", users::list(&node.config, &path, json));
            return Ok(());
        }
        AccessCommand::AddKey { user, file } => {
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| {
                    crate::error::io_error("read", std::path::Path::new("stdin"), e)
                })?;
                text
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| crate::error::io_error("read", &file, e))?
            };
            Some(Edit::AddKeys {
                user,
                keys: users::read_keys(&text),
            })
        }
        AccessCommand::Grant {
            user,
            project,
            right,
        } => Some(Edit::Grant {
            user,
            project,
            grant: grant(&right)?,
        }),
        AccessCommand::Revoke {
            user,
            project,
            right,
        } => Some(Edit::Revoke {
            user,
            project,
            grant: grant(&right)?,
        }),
    };
    let config = match edit {
        Some(edit) => {
            let (config, said) = users::edit_node_yml(&node_yml, &edit)?;
            println!("{said}");
            config
        }
        None => node.config.clone(),
    };
    let kiln = std::env::current_exe()
        .map_err(|e| crate::error::io_error("find", std::path::Path::new("kiln"), e))?;
    let synced = crate::access::keys::sync(&config, &kiln, &node.root)?;
    println!(
        "wrote {} key(s) to the kiln section of {}",
        synced.keys,
        synced.path.display()
    );
    Ok(())
}

fn proxy(node: &Node, command: ProxyCommand) -> Result<(), Error> {
    use crate::proxy::front_door::{Applied, FrontDoor, node_sites};
    let front = FrontDoor::required(node)?;
    match command {
        ProxyCommand::Start => {
            let sites = node_sites(node)?;
            let (pid, already) = front.start(&sites)?;
            if already {
                println!("the node-private nginx was running (pid {pid}): configuration reloaded");
            } else {
                println!(
                    "started the node-private nginx (pid {pid}) under {}",
                    front.state_dir().display()
                );
            }
        }
        ProxyCommand::Reload => {
            let sites = node_sites(node)?;
            let routed = sites.iter().filter(|s| !s.domains.is_empty()).count();
            match front.install_all(&sites)? {
                Applied::NotRunning => println!(
                    "configuration of {routed} project(s) written and tested; the node-private nginx is not running: start it with `kiln proxy start`"
                ),
                _ => println!("configuration of {routed} project(s) written, tested and reloaded"),
            }
        }
        ProxyCommand::Status { json } => status::proxy_status(node, &front, json)?,
        ProxyCommand::Stop => match front.stop()? {
            Some(pid) => println!("stopped the node-private nginx (pid {pid})"),
            None => println!("the node-private nginx is not running"),
        },
    }
    Ok(())
}

fn domains(node: &Node, command: DomainsCommand) -> Result<(), Error> {
    use crate::proxy::domains::{self, Edit};
    let (name, edit) = match command {
        DomainsCommand::List { name } => {
            let project = node.project(&name)?;
            print!("{}", domains::list(&project));
            return Ok(());
        }
        DomainsCommand::Add { name, domains } => (name, Edit::Add(domains)),
        DomainsCommand::Remove { name, domains } => (name, Edit::Remove(domains)),
    };
    let project = node.project(&name)?;
    let mut out = Reporter::to_stdout();
    // project.yml is read by every deploy: change it between deploys only.
    let _lock = crate::transaction::lock::lock(&project, "domains", &mut out)?;
    crate::deploy::rollback::recover(node, &project, &mut out)?;
    let project = node.project(&name)?;
    for line in domains::edit(node, &project, &edit)? {
        println!("{line}");
    }
    Ok(())
}

fn release(node: &Node, command: ReleaseCommand) -> Result<(), Error> {
    match command {
        ReleaseCommand::List { name, json } => {
            let project = node.project(&name)?;
            let stdout = std::io::stdout();
            crate::release::publish::list(
                &project.paths,
                project.config.mode,
                json,
                &mut stdout.lock(),
            )
        }
        ReleaseCommand::Export {
            name,
            release,
            manifest,
            signature,
        } => {
            let project = node.project(&name)?;
            let part = if manifest {
                Part::Manifest
            } else if signature {
                Part::Signature
            } else {
                Part::Tarball
            };
            let stdout = std::io::stdout();
            crate::release::publish::export(&project.paths, &release, part, &mut stdout.lock())
        }
        ReleaseCommand::Import { name, file } => {
            let project = node.project(&name)?;
            let mut out = Reporter::to_stdout();
            let manifest = crate::release::fetch::import(node, &project, &file, &mut out)?;
            println!(
                "imported release {} ({}) into {}; deploy its commit with `kiln deploy {name} --rev {}`",
                manifest.release,
                manifest.commit.get(..7).unwrap_or(&manifest.commit),
                project.paths.releases.display(),
                manifest.commit
            );
            Ok(())
        }
        ReleaseCommand::Publish { name, url } => {
            let project = node.project(&name)?;
            let url = url.or_else(|| project.config.publish.clone()).ok_or_else(|| {
                Error::Usage(format!(
                    "where to? `kiln release publish {name} s3://<bucket>/<prefix>`, or set `publish:` in project.yml"
                ))
            })?;
            let mut out = Reporter::to_stdout();
            let _lock = crate::transaction::lock::lock(&project, "publishing", &mut out)?;
            crate::deploy::rollback::recover(node, &project, &mut out)?;
            let log =
                crate::transaction::release_log::ReleaseLog::load(&project.paths.release_log())?;
            let done = crate::release::publish::publish_to(
                &node.config.s3,
                &project.paths,
                &log,
                project.config.mode,
                &url,
            )?;
            for id in &done.uploaded {
                println!("{id}: uploaded to {url}");
            }
            for id in &done.present {
                println!("{id}: already in {url}");
            }
            Ok(())
        }
        ReleaseCommand::Sign { name, release, all } => {
            let project = node.project(&name)?;
            let mut out = Reporter::to_stdout();
            let _lock = crate::transaction::lock::lock(&project, "signing", &mut out)?;
            crate::deploy::rollback::recover(node, &project, &mut out)?;
            let which = match (&release, all) {
                (Some(id), false) => SignWhich::One(id),
                _ => SignWhich::All,
            };
            let outcomes = crate::release::signing::sign_releases(node, &project, which)?;
            if outcomes.is_empty() {
                println!("project `{name}` offers no release to sign");
            }
            for (id, outcome) in outcomes {
                println!("{id}: {}", outcome.as_str());
            }
            Ok(())
        }
    }
}

/// "The next kiln command brings the apps back": a command about a project starts the node's
/// supervisor daemon if a formation should run and it does not (say, it was killed). A failure
/// here is only a warning: the command itself may not need it.
/// The commands that only show something: a reader that stops reading them (`kiln releases
/// shop | head`) is no error.
fn only_prints(command: &Command) -> bool {
    matches!(
        command,
        Command::Status { .. }
            | Command::Releases { .. }
            | Command::Logs { .. }
            | Command::Ps { command: None, .. }
            | Command::Config { .. }
            | Command::Key {
                command: KeyCommand::Show
            }
            | Command::Release {
                command: ReleaseCommand::List { .. } | ReleaseCommand::Export { .. }
            }
            | Command::Access {
                command: AccessCommand::List { .. }
            }
            | Command::Proxy {
                command: ProxyCommand::Status { .. }
            }
            | Command::Domains {
                command: DomainsCommand::List { .. }
            }
    )
}

/// Rust ignores SIGPIPE, so `println!` to a closed pipe panics (`failed printing to stdout:
/// Broken pipe`, with a backtrace). A view ends quietly instead, killed by SIGPIPE as `git log |
/// head` is. Only views: a deploy keeps ignoring it, since a pusher who hangs up must not stop
/// a deploy halfway.
#[allow(unsafe_code)]
fn die_quietly_when_the_reader_goes() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler of ours; it runs before any thread is started.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn wake_supervisor(node: &Node, command: &Command) {
    let about_a_project = !matches!(
        command,
        Command::Supervise { .. }
            | Command::SuperviseInstance { .. }
            | Command::Boot
            | Command::Key { .. }
            | Command::Access { .. }
            | Command::Ssh { .. }
            | Command::Init { .. }
    );
    if !about_a_project {
        return;
    }
    if let Err(e) = crate::deploy::operate::supervisor(node).wake() {
        let _ = writeln!(std::io::stderr(), "warning: {}", error_chain(&e));
    }
}
