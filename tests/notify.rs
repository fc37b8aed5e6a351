//! End to end: notifications and the structured deploy log (issue 14). Real pushes to a real
//! node whose notifications go to a real SMTP server (aiosmtpd) and real HTTP receivers, all
//! on 127.0.0.1 and stopped by the test. Delivery runs in kiln's detached background process:
//! every test waits until the spool says it is done, so no kiln process outlives it.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::notify::{Answer, SmtpOptions, SmtpSink, WebhookReceiver, self_signed_certificate};
use common::*;
use serde_json::Value;

const SECRET: &str = "hunter2-mail-secret";
/// Long enough for a loaded CI machine; a delivery normally takes milliseconds.
const PATIENCE: Duration = Duration::from_secs(60);

/// node.yml's `notify:` with the test's mail server, `smtp_extra` lines under `smtp:` and
/// `extra` lines under `notify:`. The pause between attempts is short; the timeout stays the
/// default 10s unless `extra` says otherwise, so that a loaded machine does not turn a slow
/// answer into a failed delivery.
fn smtp_yml(port: u16, smtp_extra: &str, extra: &str) -> String {
    format!(
        "notify:\n  smtp:\n    host: 127.0.0.1\n    port: {port}\n    from: kiln@node.example\n{smtp_extra}  backoff: 1s\n{extra}"
    )
}

/// Two attempts: what a test of failures waits for.
const TWO_ATTEMPTS: &str = "  attempts: 2\n";

/// The spool entries of the node (every project), as JSON.
fn spool(node: &Node) -> Vec<Value> {
    let dir = node.root.join(".kiln/spool");
    let mut entries = Vec::new();
    for project in fs::read_dir(&dir).into_iter().flatten().flatten() {
        for file in fs::read_dir(project.path()).unwrap().flatten() {
            let path = file.path();
            // An entry removed meanwhile (delivered) is simply not there any more.
            if path.extension().is_some_and(|x| x == "json")
                && let Ok(bytes) = fs::read(&path)
                && let Ok(value) = serde_json::from_slice(&bytes)
            {
                entries.push(value);
            }
        }
    }
    entries
}

/// Waits until the background delivery has nothing left to do: the spool is empty, or every
/// recipient left in it has used up its attempts.
fn wait_until_delivery_settles(node: &Node) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let entries = spool(node);
        // Pending: still being tried; all delivered: about to leave the spool.
        let busy = entries.iter().any(|entry| {
            let targets = entry["targets"].as_array().unwrap();
            targets.iter().any(|t| t["status"] == "pending")
                || targets.iter().all(|t| t["status"] == "delivered")
        });
        if !busy {
            // The deliverer exits right after its last save; give it that moment.
            std::thread::sleep(Duration::from_millis(300));
            return spool(node);
        }
        assert!(
            started.elapsed() < PATIENCE,
            "delivery never settled: {entries:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn push_pillar(node: &Node, project: &Project, yaml: &str) {
    let pillar = node.app("pillar");
    pillar.write("pillar.yml", yaml);
    pillar.commit("pillar");
    let out = pillar.git(&[
        "push",
        "-f",
        project.path("git/pillar.git").to_str().unwrap(),
        "HEAD:master",
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

fn releases_json(node: &Node, name: &str) -> Value {
    serde_json::from_str(&node.ok(&["releases", name, "--json"])).unwrap()
}

#[test]
fn a_good_and_a_failed_deploy_each_mail_once_with_subject_body_and_no_secret() {
    let node = Node::new();
    let sink = SmtpSink::start(&node.dir.path().join("mail"), SmtpOptions::default());
    node.write_node_yml(&format!(
        "environment: staging\n{}",
        smtp_yml(sink.port, "", "")
    ));
    let project = node.init("shop", "cooking");
    project.add_setting("notify: [ops@example.com]");
    push_pillar(&node, &project, &format!("env:\n  DB_PASSWORD: {SECRET}\n"));
    let app = node.app("shop");
    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - echo \"built with $DB_PASSWORD\"\n",
    );
    let good_commit = app.commit("a good one");
    let output = app.deploy(&project);
    let good = project.current().unwrap();
    let mails = sink.wait_for(1, PATIENCE);
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    assert_eq!(mail.rcpt_tos, ["ops@example.com"]);
    assert_eq!(mail.mail_from, "kiln@node.example");
    assert_eq!(
        mail.subject,
        format!(
            "[kiln] shop (staging): deployed {good} ({})",
            &good_commit[..7]
        )
    );
    for expected in [
        "pushed by:".to_string(),
        format!("release:     {good}"),
        format!("commit:      {good_commit} a good one"),
        "outcome:     deployed".to_string(),
        format!("logs/{good}.log (`kiln logs shop {good}`)"),
        "  build        ".to_string(),
        "  post_deploy  ".to_string(),
        "built with ********".to_string(),
        // The tail of the log ends with the push's last line.
        format!("-----> deployed {good}"),
    ] {
        assert!(
            mail.body.contains(&expected),
            "{expected:?} not in:\n{}",
            mail.body
        );
    }
    assert!(output.contains("built with ********"), "{output}");

    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - echo \"about to fail with $DB_PASSWORD\"\n    - exit 3\n",
    );
    let bad_commit = app.commit("a bad one");
    let (ok, output) = app.push(&project);
    assert!(
        ok,
        "a post-receive deploy does not refuse the push: {output}"
    );
    assert!(
        last_remote_line(&output).contains("deploy FAILED at build (exit 3: exit 3)"),
        "{output}"
    );
    let bad = project
        .releases()
        .into_iter()
        .rfind(|(_, status)| status == "failed")
        .unwrap()
        .0;
    let mails = sink.wait_for(2, PATIENCE);
    assert_eq!(mails.len(), 2, "{mails:?}");
    let mail = &mails[1];
    assert_eq!(
        mail.subject,
        format!(
            "[kiln] shop (staging): FAILED at build: {bad} ({}), rolled back",
            &bad_commit[..7]
        )
    );
    for expected in [
        format!("deploy FAILED at build (exit 3: exit 3); rolled back to {good}"),
        "outcome:     failed".to_string(),
        "failed at:   build".to_string(),
        "command:     exit 3".to_string(),
        "exit code:   3".to_string(),
        "about to fail with ********".to_string(),
    ] {
        assert!(
            mail.body.contains(&expected),
            "{expected:?} not in:\n{}",
            mail.body
        );
    }
    for mail in &mails {
        assert!(
            !mail.raw.contains(SECRET),
            "the mail leaks the secret:\n{}",
            mail.raw
        );
        assert!(
            !mail.raw.contains("hunter2"),
            "the mail leaks part of the secret"
        );
    }

    // Exactly one mail each: nothing is left to send, and nothing more came.
    let left = wait_until_delivery_settles(&node);
    assert!(left.is_empty(), "{left:#?}");
    assert_eq!(sink.mails().len(), 2);

    // What operators read: outcome, who, durations and the notification results.
    let releases = releases_json(&node, "shop");
    for record in releases["releases"].as_array().unwrap() {
        assert_eq!(
            record["notifications"][0]["status"], "delivered",
            "{record}"
        );
        assert_eq!(record["notifications"][0]["to"], "ops@example.com");
        assert!(record["duration_ms"].as_i64().is_some(), "{record}");
        assert!(!record["stages"].as_array().unwrap().is_empty(), "{record}");
        assert!(record["who"].is_string());
    }
    let failed = &releases["releases"][1];
    assert_eq!(failed["status"], "failed");
    let stages = stage_names(failed);
    assert_eq!(stages, ["gather", "pre_install", "configure", "build"]);
    let table = node.ok(&["releases", "shop"]);
    assert!(table.contains("1/1 sent"), "{table}");
    let status = node.ok(&["status", "shop"]);
    assert!(
        status.contains("notified:    mail ops@example.com: delivered"),
        "{status}"
    );
    assert!(status.contains("stages:      gather "), "{status}");
    // The delivery is in the deploy's structured log too.
    let delivered = project
        .events(&bad)
        .into_iter()
        .find(|e| e["event"] == "notification" && e["outcome"] == "delivered")
        .expect("a notification event");
    assert_eq!(delivered["notification"]["to"], "ops@example.com");
    assert_eq!(delivered["release"], bad.as_str());
}

#[test]
fn starttls_with_a_self_signed_certificate_is_trusted_only_through_ca_file() {
    let node = Node::new();
    let (cert, key) = self_signed_certificate(node.dir.path());
    let sink = SmtpSink::start(
        &node.dir.path().join("mail"),
        SmtpOptions {
            tls: Some((cert.clone(), key)),
            auth: Some(("kiln".into(), "mail-pass-4711".into())),
            ..SmtpOptions::default()
        },
    );
    let tls = "    security: starttls\n    username: kiln\n    password: mail-pass-4711\n";
    // Not trusted yet: the certificate is refused, never accepted silently.
    node.write_node_yml(&smtp_yml(sink.port, tls, TWO_ATTEMPTS));
    let project = node.init("shop", "cooking");
    project.add_setting("notify: [ops@example.com]");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build: [true]\n");
    app.commit("app");
    app.deploy(&project);
    let left = wait_until_delivery_settles(&node);
    assert_eq!(left.len(), 1, "{left:?}");
    let error = left[0]["targets"][0]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("certificate") || error.contains("Certificate"),
        "{error}"
    );
    assert!(sink.mails().is_empty());
    let status = node.ok(&["status", "shop"]);
    assert!(
        status.contains("undelivered: 1 notification(s)"),
        "{status}"
    );
    assert!(
        status.contains("mail ops@example.com: FAILED after 2 attempt(s)"),
        "{status}"
    );

    // Trusted through node.yml's ca_file: `kiln notify retry` delivers, over TLS, logged in.
    node.write_node_yml(&smtp_yml(
        sink.port,
        &format!("{tls}    ca_file: {}\n", cert.display()),
        TWO_ATTEMPTS,
    ));
    let retried = node.kiln(&["notify", "retry", "shop"]);
    assert_success(&retried, "kiln notify retry");
    assert!(
        String::from_utf8_lossy(&retried.stdout).contains("mail to ops@example.com: delivered"),
        "{}",
        text(&retried)
    );
    let mails = sink.wait_for(1, PATIENCE);
    assert_eq!(mails.len(), 1);
    assert!(mails[0].tls, "the mail came in clear text");
    assert_eq!(mails[0].auth_user.as_deref(), Some("kiln"));
    assert!(spool(&node).is_empty());
    assert!(!mails[0].raw.contains("mail-pass-4711"));
}

/// The gap between the deploy's end (its `deploy_end` event) and `then`.
fn gap_after_deploy_end(project: &Project, release: &str, then: SystemTime) -> Duration {
    let end = project
        .events(release)
        .into_iter()
        .find(|e| e["event"] == "deploy_end")
        .expect("a deploy_end event");
    let end: chrono::DateTime<chrono::Utc> = end["time"].as_str().unwrap().parse().unwrap();
    let then: chrono::DateTime<chrono::Utc> = then.into();
    (then - end).to_std().unwrap_or_default()
}

#[test]
fn undeliverable_notifications_change_neither_outcome_nor_exit_status_nor_the_last_line() {
    let node = Node::new();
    let down = free_port();
    let failing = WebhookReceiver::start(Answer::Fail);
    let hanging = WebhookReceiver::start(Answer::Hang);
    node.write_node_yml(&format!(
        "{}  webhooks: ['{}', '{}']\n",
        // A short timeout: the hanging webhook holds each attempt for all of it.
        smtp_yml(down, "", "  attempts: 2\n  timeout: 3s\n"),
        failing.url("/hook"),
        hanging.url("/hook")
    ));
    let project = node.init("shop", "cooking");
    project.add_setting("notify: [ops@example.com]");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build: [true]\n");
    app.commit("good");

    // A push: deployed, and git returns within a second of the deploy's end although the
    // hanging webhook holds each attempt for its whole 3s timeout. Delivering in the
    // foreground would make the gap at least 3s (one attempt of the hanging hook); the
    // margin to 1s covers a slow machine's process exit and git's own work.
    let (ok, output) = app.push(&project);
    let pushed = SystemTime::now();
    assert!(
        ok && last_remote_line(&output).contains("-----> deployed"),
        "{output}"
    );
    let release = project.current().unwrap();
    let gap = gap_after_deploy_end(&project, &release, pushed);
    assert!(
        gap < Duration::from_secs(1),
        "the push returned {gap:?} after the deploy's end"
    );

    // `kiln deploy` by hand: exit 0, and exit 1 for a failure, whatever the notifications do.
    let started = Instant::now();
    let out = node.kiln(&["deploy", "shop", "--force"]);
    let returned = SystemTime::now();
    assert_success(&out, "kiln deploy");
    let second = project.current().unwrap();
    assert_ne!(second, release);
    assert!(gap_after_deploy_end(&project, &second, returned) < Duration::from_secs(1));
    assert!(started.elapsed() < Duration::from_secs(30));
    app.write("kiln.yml", "stages:\n  build: ['exit 4']\n");
    app.commit("bad");
    app.push_next(&project);
    let out = node.kiln(&["deploy", "shop", "--rev", "next"]);
    let returned = SystemTime::now();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed = project.releases().last().unwrap().clone();
    assert_eq!(failed.1, "failed");
    assert!(gap_after_deploy_end(&project, &failed.0, returned) < Duration::from_secs(1));
    assert_eq!(project.current(), Some(second.clone()));

    // Delivery failed in the background, was retried, logged, and is shown in `kiln status`.
    let left = wait_until_delivery_settles(&node);
    assert_eq!(left.len(), 3, "{left:?}");
    let status = node.ok(&["status", "shop"]);
    assert!(
        status.contains("undelivered: 3 notification(s)"),
        "{status}"
    );
    assert!(status.contains("answered HTTP 500"), "{status}");
    assert!(status.contains("no answer within 3s"), "{status}");
    // Two attempts each, and one more for the earlier ones at each later deploy (the flush).
    assert!(
        status.contains("mail ops@example.com: FAILED after "),
        "{status}"
    );
    assert!(
        failing.requests().len() >= 6,
        "each of 3 notifications tried twice"
    );
    // Each recipient's failure is logged (a later deploy's flush may log another attempt).
    let logged: std::collections::BTreeSet<String> = project
        .events(&failed.0)
        .into_iter()
        .filter(|e| e["event"] == "notification" && e["outcome"] == "failed")
        .map(|e| e["notification"]["to"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(logged.len(), 3, "{logged:?}");
    let table = node.ok(&["releases", "shop"]);
    assert!(table.contains("0/3 sent, 3 FAILED"), "{table}");
    // By hand, still failing: exit 1, one line per recipient and the error.
    let retried = node.kiln(&["notify", "retry", "shop"]);
    assert_eq!(retried.status.code(), Some(1), "{}", text(&retried));
    assert!(
        text(&retried).contains(
            "error: 3 notification(s) did not reach every recipient and stay in the spool"
        ),
        "{}",
        text(&retried)
    );
}

#[test]
fn a_webhook_receiver_gets_the_documented_json_with_a_valid_signature() {
    let node = Node::new();
    let receiver = WebhookReceiver::start(Answer::Ok);
    let key = "s3cr3t-hook-key";
    node.write_node_yml(&format!(
        "environment: staging\nnotify:\n  webhooks:\n    - {{url: '{}', secret: secrets.hook}}\n",
        receiver.url("/signed")
    ));
    let project = node.init("shop", "cooking");
    project.add_setting(&format!("notify: ['{}']", receiver.url("/plain")));
    push_pillar(&node, &project, &format!("secrets:\n  hook: {key}\n"));
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build: ['echo built']\n");
    let commit = app.commit("hooked");
    app.deploy(&project);
    let release = project.current().unwrap();
    let requests = receiver.wait_for(2, PATIENCE);
    assert_eq!(requests.len(), 2, "{requests:?}");
    let signed = requests
        .iter()
        .find(|r| r.line.contains("/signed"))
        .unwrap();
    let plain = requests.iter().find(|r| r.line.contains("/plain")).unwrap();
    assert!(signed.line.starts_with("POST "), "{}", signed.line);
    assert_eq!(signed.headers["content-type"], "application/json");
    assert_eq!(signed.headers["x-kiln-event"], "success");
    assert_eq!(signed.headers["x-kiln-delivery"], format!("shop/{release}"));
    // The signature is the HMAC-SHA256 of the exact body under the pillar's value.
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(&signed.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(signed.headers["x-kiln-signature"], expected);
    assert!(!plain.headers.contains_key("x-kiln-signature"));
    assert_eq!(signed.body, plain.body, "one document for every receiver");
    let body = String::from_utf8(signed.body.clone()).unwrap();
    assert!(!body.contains(key), "the payload leaks the signing key");

    let json: Value = serde_json::from_slice(&signed.body).unwrap();
    assert_eq!(json["project"], "shop");
    assert_eq!(json["environment"], "staging");
    assert_eq!(json["event"], "success");
    assert_eq!(json["outcome"], "deployed");
    assert_eq!(json["release"], release.as_str());
    assert_eq!(json["commit"], commit.as_str());
    assert_eq!(json["short_commit"], &commit[..7]);
    assert!(json["pusher"]["who"].is_string());
    let stages = stage_names(&json);
    assert_eq!(
        stages,
        [
            "gather",
            "pre_install",
            "configure",
            "build",
            "bundle",
            "deploy",
            "post_deploy"
        ]
    );
    assert!(json["stages"][3]["duration_ms"].is_u64());
    assert!(json["duration_ms"].is_u64());
    assert_eq!(
        PathBuf::from(json["log"].as_str().unwrap()),
        project.path(&format!("logs/{release}.log"))
    );
    assert!(
        json["text"].as_str().unwrap().starts_with(&format!(
            "*shop* (staging): deployed {release} ({})",
            &commit[..7]
        )),
        "{json}"
    );
    assert!(json.get("log_tail").is_none());

    // A pillar without the key: the signed hook fails (never sent unsigned), the other goes.
    push_pillar(&node, &project, "env:\n  X: y\n");
    let left = wait_until_delivery_settles(&node);
    let requests = receiver.wait_for(3, PATIENCE);
    let unsigned_to_signed = requests
        .iter()
        .filter(|r| r.line.contains("/signed"))
        .count();
    assert_eq!(unsigned_to_signed, 1, "{requests:?}");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0]["targets"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("has no `secrets.hook` to sign the webhook with"),
        "{left:?}"
    );
}

#[test]
fn the_spool_keeps_what_could_not_be_sent_until_retry_or_the_next_deploy() {
    let node = Node::new();
    let port = free_port();
    node.write_node_yml(&smtp_yml(port, "", TWO_ATTEMPTS));
    let project = node.init("shop", "cooking");
    project.add_setting("notify: [ops@example.com]");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build: [true]\n");
    app.commit("one");
    app.deploy(&project);
    let first = project.current().unwrap();
    let left = wait_until_delivery_settles(&node);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["targets"][0]["status"], "failed");

    // The server comes up: `kiln notify retry` delivers it.
    let mails = node.dir.path().join("mail");
    let sink = SmtpSink::start(
        &mails,
        SmtpOptions {
            port,
            ..SmtpOptions::default()
        },
    );
    let retried = node.kiln(&["notify", "retry", "shop"]);
    assert_success(&retried, "kiln notify retry");
    let got = sink.wait_for(1, PATIENCE);
    assert_eq!(got.len(), 1);
    assert!(got[0].subject.contains(&first), "{}", got[0].subject);
    assert!(spool(&node).is_empty());
    assert_eq!(
        releases_json(&node, "shop")["releases"][0]["notifications"][0]["status"],
        "delivered"
    );
    let again = node.kiln(&["notify", "retry", "shop"]);
    assert_success(&again, "kiln notify retry");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to deliver"));

    // Down again for one deploy; the next deploy sends its own and the one left.
    drop(sink);
    app.commit("two");
    app.deploy(&project);
    let second = project.current().unwrap();
    assert_eq!(wait_until_delivery_settles(&node).len(), 1);
    let sink = SmtpSink::start(
        &mails,
        SmtpOptions {
            port,
            ..SmtpOptions::default()
        },
    );
    app.commit("three");
    app.deploy(&project);
    let third = project.current().unwrap();
    assert!(wait_until_delivery_settles(&node).is_empty());
    let subjects: Vec<String> = sink.mails().iter().map(|m| m.subject.clone()).collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    assert!(subjects.iter().any(|s| s.contains(&second)), "{subjects:?}");
    assert!(subjects.iter().any(|s| s.contains(&third)), "{subjects:?}");
}

#[test]
fn alerts_send_one_mail_per_crash_loop_and_one_when_it_recovers() {
    let node = Node::new();
    let sink = SmtpSink::start(&node.dir.path().join("mail"), SmtpOptions::default());
    node.write_node_yml(&smtp_yml(
        sink.port,
        "",
        "  alerts: {restarts: 3, within: 5m, stable: 1m}\n  on: [failure, alert]\n",
    ));
    let project = node.init("shop", "cooking");
    project.add_setting("notify: [ops@example.com]");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build: [true]\n");
    app.commit("one");
    app.deploy(&project);
    // `on:` leaves successful deploys out.
    assert!(wait_until_delivery_settles(&node).is_empty());
    assert!(sink.mails().is_empty());

    let mut said = Vec::new();
    for _ in 0..8 {
        said.push(node.ok(&["notify", "report", "shop", "restarted", "web"]));
    }
    assert_eq!(
        said.iter().filter(|s| s.starts_with("notifying")).count(),
        1,
        "{said:?}"
    );
    // Up, but not for long enough yet; then long enough; then again (already recovered).
    node.ok(&["notify", "report", "shop", "running", "web", "--up", "30s"]);
    node.ok(&["notify", "report", "shop", "running", "web", "--up", "2m"]);
    node.ok(&["notify", "report", "shop", "running", "web", "--up", "3m"]);
    assert!(wait_until_delivery_settles(&node).is_empty());
    let mails = sink.mails();
    let subjects: Vec<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "[kiln] shop (staging): ALERT: `web` is crash-looping (4 restarts within 5m)",
            "[kiln] shop (staging): recovered: `web` is running again",
        ]
    );
    // How long it has been up, as people say it (regression: `2m3ms`).
    assert!(
        mails[1]
            .body
            .contains("the process `web` has been up for 2m without a restart"),
        "{}",
        mails[1].body
    );
    let release = project.current().unwrap();
    assert!(
        mails[0].body.contains(&format!("release:     {release}")),
        "{}",
        mails[0].body
    );
    // Each alert is in the project's alerts log with its delivery.
    let logged = fs::read_to_string(project.path("logs/alerts.jsonl")).unwrap();
    assert_eq!(logged.lines().count(), 2, "{logged}");
}

#[test]
fn every_event_carries_the_documented_fields_and_logs_go_with_their_releases() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", "keep: 1\nstages:\n  build: ['echo building']\n");
    app.commit("one");
    app.deploy(&project);
    let first = project.current().unwrap();
    let out = node.kiln(&["logs", "shop", &first, "--json"]);
    assert_success(&out, "kiln logs --json");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 10);
    let fields = [
        "time",
        "project",
        "release",
        "event",
        "stage",
        "command",
        "exit_code",
        "duration_ms",
        "outcome",
        "notification",
    ];
    for line in &lines {
        for field in fields {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
        assert_eq!(line["release"], first.as_str(), "{line}");
        assert_eq!(line["project"], "shop");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    let names: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(names[0], "deploy_start");
    assert_eq!(*names.last().unwrap(), "deploy_end");
    let ended = |event: &str, stage: &str| {
        lines
            .iter()
            .find(|l| l["event"] == event && l["stage"] == stage)
            .unwrap_or_else(|| panic!("no {event} of {stage}"))
            .clone()
    };
    let build = ended("stage_end", "build");
    assert!(build["duration_ms"].is_u64() && build["outcome"] == "ok");
    let command = ended("command_end", "build");
    assert_eq!(
        (command["command"].as_str(), command["exit_code"].as_i64()),
        (Some("echo building"), Some(0))
    );
    let output = lines.iter().find(|l| l["event"] == "output").unwrap();
    assert_eq!(
        (output["stage"].as_str(), output["command"].as_str()),
        (Some("build"), Some("echo building"))
    );
    assert_eq!(lines.last().unwrap()["outcome"], "deployed");

    // A failure names stage, command and exit code.
    app.write("kiln.yml", "keep: 1\nstages:\n  build: ['exit 5']\n");
    app.commit("two");
    app.push(&project);
    let failed = project.releases().last().unwrap().0.clone();
    let events = project.events(&failed);
    let failure = events.iter().find(|e| e["event"] == "failure").unwrap();
    assert_eq!(
        (
            failure["stage"].as_str(),
            failure["command"].as_str(),
            failure["exit_code"].as_i64()
        ),
        (Some("build"), Some("exit 5"), Some(5))
    );
    assert_eq!(events.last().unwrap()["outcome"], "failed");

    // Logs are pruned with their releases (keep: 1).
    app.write("kiln.yml", "keep: 1\nstages:\n  build: ['echo three']\n");
    app.commit("three");
    app.deploy(&project);
    app.commit("four");
    app.deploy(&project);
    let kept: Vec<String> = project.releases().into_iter().map(|(id, _)| id).collect();
    let pruned: Vec<&String> = kept
        .iter()
        .filter(|id| {
            !project.path(&format!("deploy/{id}")).exists()
                && !project.path(&format!("archives/{id}")).exists()
        })
        .collect();
    assert!(pruned.contains(&&first), "{kept:?}");
    for id in pruned {
        for suffix in ["log", "jsonl"] {
            assert!(
                !project.path(&format!("logs/{id}.{suffix}")).exists(),
                "logs/{id}.{suffix} outlived its release"
            );
        }
    }
    assert!(
        project
            .path(&format!("logs/{}.log", project.current().unwrap()))
            .exists()
    );
}

/// `kiln notify deliver` is what kiln runs detached; by hand it exits once nothing is due.
#[test]
fn the_background_delivery_exits_when_nothing_is_left() {
    let node = Node::new();
    node.init("shop", "cooking");
    let started = Instant::now();
    let status = Command::new(KILN)
        .arg("--root")
        .arg(&node.root)
        .args(["notify", "deliver"])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Regression: the notification timed the failing stage until it was written, so the undo
/// after the failure counted as part of the stage (the release log timed it until it failed).
/// Both now read the run's one timeline.
#[test]
fn regression_a_failed_stage_is_timed_without_its_rollback_in_the_notification() {
    let node = Node::new();
    let receiver = WebhookReceiver::start(Answer::Ok);
    let project = node.init("shop", "cooking");
    project.add_setting(&format!("notify: ['{}']", receiver.url("/hook")));
    let app = node.app("shop");
    // The undo starts the first release again, which takes a second.
    app.write("kiln.yml", "services:\n  start: sleep 1\n");
    app.commit("one");
    app.deploy(&project);
    app.write(
        "kiln.yml",
        "services:\n  start: sleep 1\nstages:\n  deploy: ['exit 3']\n",
    );
    app.commit("two fails");
    let (_, output) = app.push(&project);
    assert!(
        last_remote_line(&output).contains("deploy FAILED at deploy (exit 3: exit 3)"),
        "{output}"
    );
    let failed = project.releases().last().unwrap().0.clone();
    let requests = receiver.wait_for(2, PATIENCE);
    let document = requests
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .find(|doc| doc["release"] == failed.as_str())
        .expect("the failed deploy's notification");
    let releases = releases_json(&node, "shop");
    let record = releases["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == failed.as_str())
        .unwrap();
    assert_eq!(stage_names(&document), stage_names(record));
    assert_eq!(stage_names(&document).last().unwrap(), "deploy");
    assert_eq!(document["stages"], record["stages"]);
    let deploy_ms = document["stages"][5]["duration_ms"].as_u64().unwrap();
    let total_ms = document["duration_ms"].as_u64().unwrap();
    assert!(
        total_ms >= deploy_ms + 1000,
        "the undo's second is in the deploy's duration, not the stage's: {document}"
    );
}

/// `kiln rollback` tells the project's recipients in one mail, outcome rolled back, naming the
/// release it went back to and who ran it; node.yml `on: [rollback]` leaves the deploys out.
#[test]
fn a_rollback_sends_one_mail_with_outcome_rolled_back() {
    let node = Node::new();
    let sink = SmtpSink::start(&node.dir.path().join("mail"), SmtpOptions::default());
    node.write_node_yml(&smtp_yml(sink.port, "", "  on: [rollback]\n"));
    let project = node.init("shop", "cooking");
    project.add_setting("notify: [ops@example.com]");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build: ['echo one']\n");
    let first_commit = app.commit("the good one");
    app.deploy(&project);
    let first = project.current().unwrap();
    app.write("kiln.yml", "stages:\n  build: ['echo two']\n");
    app.commit("the regrettable one");
    app.deploy(&project);
    assert!(wait_until_delivery_settles(&node).is_empty());
    assert!(
        sink.mails().is_empty(),
        "`on: [rollback]` leaves deploys out"
    );

    let out = node.kiln_env(&["rollback", "shop"], &[("USER", "olga-operator")]);
    assert_success(&out, "kiln rollback");
    assert_eq!(project.current().as_deref(), Some(first.as_str()));
    let mails = sink.wait_for(1, PATIENCE);
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    assert_eq!(mail.rcpt_tos, ["ops@example.com"]);
    assert_eq!(
        mail.subject,
        format!(
            "[kiln] shop (staging): rolled back to {first} ({})",
            &first_commit[..7]
        )
    );
    assert_eq!(
        mail.body.lines().next().map(str::trim_end),
        Some(format!("rolled back to {first}").as_str()),
        "the headline first"
    );
    for expected in [
        "outcome:     rolled_back".to_string(),
        format!("release:     {first}"),
        format!("commit:      {first_commit} the good one"),
        "pushed by:   olga-operator".to_string(),
        format!("-----> rolled back to {first}"),
    ] {
        assert!(
            mail.body.contains(&expected),
            "{expected:?} not in:\n{}",
            mail.body
        );
    }
    assert!(wait_until_delivery_settles(&node).is_empty());
    assert_eq!(sink.mails().len(), 1, "one mail, nothing more");
}

/// project.yml `notify: {to: [...], author: true}` mails the deployed commit's author as well;
/// the body's "pushed by" names who pushed (a local push: the Unix user, `USER`), not the
/// commit's author.
#[test]
fn the_commit_author_is_mailed_too_and_pushed_by_names_the_pusher() {
    let node = Node::new();
    let sink = SmtpSink::start(&node.dir.path().join("mail"), SmtpOptions::default());
    node.write_node_yml(&smtp_yml(sink.port, "", ""));
    let project = node.init("shop", "cooking");
    project.add_setting("notify: {to: [ops@example.com], author: true}");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build: [true]\n");
    assert_success(&app.git(&["add", "-A"]), "git add");
    assert_success(
        &app.git(&[
            "commit",
            "-q",
            "--author",
            "Ann Author <ann@example.com>",
            "-m",
            "written by ann",
        ]),
        "git commit",
    );
    let (ok, output) = app.push_env(
        &project,
        "HEAD:master",
        &[("USER", std::path::Path::new("pat-pusher"))],
    );
    assert!(ok && output.contains("-----> deployed"), "{output}");
    let mails = sink.wait_for(2, PATIENCE);
    let mut to: Vec<String> = mails.iter().flat_map(|m| m.rcpt_tos.clone()).collect();
    to.sort();
    assert_eq!(to, ["ann@example.com", "ops@example.com"], "{mails:?}");
    for mail in &mails {
        assert!(
            mail.body
                .lines()
                .any(|line| line.trim_end() == "pushed by:   pat-pusher"),
            "{}",
            mail.body
        );
        assert!(mail.subject.contains(": deployed "), "{}", mail.subject);
    }
    assert!(wait_until_delivery_settles(&node).is_empty());
    assert_eq!(sink.mails().len(), 2);
}

/// `security: tls` speaks TLS from the first byte (SMTPS) to a server that speaks nothing
/// else, its self-signed certificate trusted through `ca_file`.
#[test]
fn implicit_tls_delivers_to_a_server_that_speaks_tls_from_the_first_byte() {
    let node = Node::new();
    let (cert, key) = self_signed_certificate(node.dir.path());
    let sink = SmtpSink::start(
        &node.dir.path().join("mail"),
        SmtpOptions {
            tls: Some((cert.clone(), key)),
            implicit_tls: true,
            ..SmtpOptions::default()
        },
    );
    node.write_node_yml(&smtp_yml(
        sink.port,
        &format!("    security: tls\n    ca_file: {}\n", cert.display()),
        TWO_ATTEMPTS,
    ));
    let project = node.init("shop", "cooking");
    project.add_setting("notify: [ops@example.com]");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build: [true]\n");
    app.commit("app");
    app.deploy(&project);
    let release = project.current().unwrap();
    let left = wait_until_delivery_settles(&node);
    assert!(left.is_empty(), "{left:#?}");
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].tls, "the mail came in clear text");
    assert!(mails[0].subject.contains(&release), "{}", mails[0].subject);
}
