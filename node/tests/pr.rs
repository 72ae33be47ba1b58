//! Idea → PR on the node: the scripted agent writes files in a host workspace cloned from an
//! authenticated git HTTP server; the node commits as the user, pushes with a credential
//! brokered from a connected client, and opens/reuses the PR on a fake GitHub API whose every
//! request and response is validated against `github-rest.openapi.json`.

use crate::support::agent_util as util;
use crate::support::git_http;
use crate::support::github;
use crate::support::harness;

use git_http::git;
use sam_crdt::{Role as MsgRole, Status};
use sam_protocol::ctl::{Request, Response};
use sam_protocol::pr::{GitIdentity, PrOutcome, PrRequest, PrResponse, PrSettings, branch_for};
use sam_protocol::workspace::{GitCredential, WorkspaceRequest, WorkspaceResponse};
use util::AgentNode;

const TOKEN: &str = "ghp_PLANTED_test_token_0123456789";
const GIT_PASSWORD: &str = "git-pw-PLANTED-42";

struct Setup {
    n: AgentNode,
    gh: github::FakeGitHub,
    repos: tempfile::TempDir,
    remote: String,
    conv: String,
    work: std::path::PathBuf,
}

fn settings(s: &Setup, idea: &str) -> PrSettings {
    PrSettings {
        repo_url: s.remote.clone(),
        base: "main".into(),
        branch: branch_for(idea),
        idea: idea.into(),
        identity: GitIdentity {
            name: "Ada Lovelace".into(),
            email: "ada@example.invalid".into(),
        },
        token: TOKEN.into(),
        api: Some(s.gh.url.clone()),
    }
}

/// Answers every credential request with `password` (a client's `git credential fill`).
fn serve_credentials(n: &AgentNode, password: &'static str) {
    let key = n.owner.clone();
    let ticket = n.handle.ticket();
    tokio::spawn(async move {
        let Ok((_ep, c)) = harness::client(&key, &ticket).await else {
            return;
        };
        loop {
            let Ok(Response::Workspace(WorkspaceResponse::Credential(req))) = c
                .request(Request::Workspace(WorkspaceRequest::WaitCredential))
                .await
            else {
                return;
            };
            let Some(req) = req else { continue };
            let answer = Some(GitCredential {
                username: "sam".into(),
                password: password.into(),
            });
            let _ = c
                .request(Request::Workspace(WorkspaceRequest::AnswerCredential {
                    request: req.id,
                    answer,
                }))
                .await;
        }
    });
}

async fn setup(password: &'static str) -> Setup {
    let n = AgentNode::start(&[]).await;
    let repos = tempfile::tempdir().expect("tempdir");
    git_http::make_repo(repos.path());
    let base = git_http::git_server(
        repos.path().to_path_buf(),
        sam_node::pr::git::base64(format!("sam:{GIT_PASSWORD}").as_bytes()),
    )
    .await;
    let remote = format!("{base}/o/r.git");
    let gh = github::FakeGitHub::start(TOKEN).await;
    gh.add_repo("o/r");
    let conv = n.conv(&[]).await;
    let ws = n
        .node()
        .docs()
        .read(&conv, |c| c.workspace().id)
        .await
        .expect("read");
    // The workspace: a clone of the remote (credentials inline only for the test's clone).
    std::fs::create_dir_all(&n.root).expect("mkdir");
    let authed = remote.replace("http://", &format!("http://sam:{GIT_PASSWORD}@"));
    git(&n.root, &["clone", "-q", &authed, &ws]);
    let work = n.root.join(&ws);
    git(&work, &["remote", "set-url", "origin", &remote]);
    serve_credentials(&n, password);
    Setup {
        n,
        gh,
        repos,
        remote,
        conv,
        work,
    }
}

async fn pr(s: &Setup, req: PrRequest) -> PrResponse {
    let (ep, c) = harness::client(&s.n.owner, &s.n.handle.ticket())
        .await
        .expect("connect");
    let r = c.request(Request::Pr(req)).await.expect("pr request");
    c.close();
    ep.close().await;
    match r {
        Response::Pr(p) => p,
        other => panic!("unexpected {other:?}"),
    }
}

async fn run(s: &Setup, idea: &str) -> PrOutcome {
    match pr(
        s,
        PrRequest::Run {
            conv: s.conv.clone(),
            settings: Some(settings(s, idea)),
        },
    )
    .await
    {
        PrResponse::Outcome(o) => o,
        other => panic!("unexpected {other:?}"),
    }
}

fn system_texts(m: &[sam_crdt::MessageView]) -> Vec<String> {
    m.iter()
        .filter(|x| x.role == MsgRole::System)
        .map(|x| x.text.clone())
        .collect()
}

fn remote_log(s: &Setup, branch: &str) -> String {
    git(
        &s.repos.path().join("o/r.git"),
        &["log", "--format=%an <%ae> %s", branch],
    )
}

fn assert_no_secret(dir: &std::path::Path) {
    for entry in walk(dir) {
        if let Ok(bytes) = std::fs::read(&entry) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(TOKEN), "token found in {}", entry.display());
            assert!(
                !text.contains(GIT_PASSWORD),
                "git password found in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idea_to_pr_then_a_follow_up_pushes_to_the_same_pr() {
    let t0 = std::time::Instant::now();
    let s = setup(GIT_PASSWORD).await;
    let idea = "Add a greeting file";
    let r = pr(
        &s,
        PrRequest::Enable {
            conv: s.conv.clone(),
            settings: settings(&s, idea),
        },
    )
    .await;
    assert_eq!(r, PrResponse::Enabled);
    let t_setup = t0.elapsed();
    let p =
        s.n.prompt(&s.conv, "write hello.txt hi there; say done")
            .await;
    let done = s.n.ended(&s.conv, &p).await;
    assert_eq!(done.status, Status::Done, "{done:?}");
    let t_turn = t0.elapsed();
    let m =
        s.n.wait(&s.conv, "the PR message", |m| !system_texts(m).is_empty())
            .await;
    let t_pr = t0.elapsed();
    let texts = system_texts(&m);
    assert!(texts[0].contains("Pull request #1 opened"), "{texts:?}");
    assert!(texts[0].contains("/o/r/pull/1"), "{texts:?}");
    let pulls = s.gh.pulls("o/r");
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].head, "sam/add-a-greeting-file");
    assert_eq!(pulls[0].base, "main");
    assert_eq!(pulls[0].title, idea);
    assert!(pulls[0].body.contains("Transcript excerpt") && !pulls[0].body.contains("://"));
    let log = remote_log(&s, "sam/add-a-greeting-file");
    assert!(
        log.starts_with("Ada Lovelace <ada@example.invalid> Add a greeting file"),
        "{log}"
    );

    // A follow-up: one more commit on the same branch, the same PR.
    let p = s.n.prompt(&s.conv, "write more.txt again; say ok").await;
    s.n.ended(&s.conv, &p).await;
    let m =
        s.n.wait(&s.conv, "the second PR message", |m| {
            system_texts(m).len() >= 2
        })
        .await;
    assert!(
        system_texts(&m)[1].contains("existing pull request #1"),
        "{m:?}"
    );
    assert_eq!(s.gh.pulls("o/r").len(), 1);
    assert_eq!(remote_log(&s, "sam/add-a-greeting-file").lines().count(), 3);
    // A turn that changes nothing: said clearly, no PR step.
    let p = s.n.prompt(&s.conv, "say nothing to change").await;
    s.n.ended(&s.conv, &p).await;
    let m =
        s.n.wait(&s.conv, "the no-change message", |m| {
            system_texts(m).len() >= 3
        })
        .await;
    assert!(system_texts(&m)[2].contains("No changes"), "{m:?}");
    // No secret anywhere on the node: files, the document, the PR.
    assert_no_secret(s.n.dir.path());
    for t in system_texts(&m) {
        assert!(!t.contains(TOKEN));
    }
    s.gh.assert_clean();
    println!(
        "BENCH idea→PR (host workspace, scripted agent): setup {:?}, agent turn {:?}, commit+push+PR {:?}, total {:?}",
        t_setup,
        t_turn - t_setup,
        t_pr - t_turn,
        t_pr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_end_with_a_clear_status_and_keep_the_commit() {
    let s = setup(GIT_PASSWORD).await;
    let idea = "Fix the docs";
    // Repository unknown to the API: pushed, commit kept, clear message.
    s.gh.lock().repos.clear();
    std::fs::write(s.work.join("a.txt"), "a\n").expect("write");
    let o = run(&s, idea).await;
    let PrOutcome::Failed {
        stage,
        message,
        commit,
    } = &o
    else {
        panic!("{o:?}")
    };
    assert_eq!(stage, "pr");
    assert!(message.contains("not found"), "{message}");
    let commit = commit.clone().expect("commit kept");
    assert!(git(&s.work, &["log", "-1", "--format=%H"]).trim() == commit);
    // Retry once the repo exists (like `sam pr CONV`): the PR opens.
    s.gh.add_repo("o/r");
    let o = run(&s, idea).await;
    assert!(
        matches!(
            &o,
            PrOutcome::Opened {
                reused: false,
                number: 1,
                ..
            }
        ),
        "{o:?}"
    );
    // An existing PR (POST answers 422): found and reused.
    s.gh.lock().pulls.clear();
    s.gh.lock().pulls.insert(
        "o/r".into(),
        vec![github::Pull {
            number: 7,
            title: "old".into(),
            head: branch_for(idea),
            base: "main".into(),
            body: String::new(),
        }],
    );
    std::fs::write(s.work.join("b.txt"), "b\n").expect("write");
    let o = run(&s, idea).await;
    assert!(
        matches!(
            &o,
            PrOutcome::Opened {
                reused: true,
                number: 7,
                ..
            }
        ),
        "{o:?}"
    );
    // A token without rights on the PR API (403).
    s.gh.inject("post", "/repos/o/r/pulls", 403);
    s.gh.lock().pulls.clear();
    std::fs::write(s.work.join("c.txt"), "c\n").expect("write");
    let o = run(&s, idea).await;
    let PrOutcome::Failed {
        stage,
        message,
        commit,
    } = &o
    else {
        panic!("{o:?}")
    };
    assert_eq!(stage, "pr");
    assert!(message.contains("may not"), "{message}");
    assert!(commit.is_some());
    // A bad token (401).
    s.gh.lock().inject.clear();
    let mut bad = settings(&s, idea);
    bad.token = "ghp_wrong".into();
    let o = match pr(
        &s,
        PrRequest::Run {
            conv: s.conv.clone(),
            settings: Some(bad),
        },
    )
    .await
    {
        PrResponse::Outcome(o) => o,
        other => panic!("{other:?}"),
    };
    assert!(
        matches!(&o, PrOutcome::Failed { message, .. } if message.contains("token was refused")),
        "{o:?}"
    );
    // Base moved with a conflicting change: the branch push is refused? No: the branch is
    // separate; GitHub shows the conflict. A moved *branch* (someone pushed to it) is refused.
    let other = s.repos.path().join("other");
    git(s.repos.path(), &["clone", "-q", "o/r.git", "other"]);
    git(&other, &["checkout", "-q", &branch_for(idea)]);
    std::fs::write(other.join("a.txt"), "theirs\n").expect("write");
    git(&other, &["commit", "-qam", "theirs"]);
    git(&other, &["push", "-q", "origin", "HEAD"]);
    std::fs::write(s.work.join("a.txt"), "ours\n").expect("write");
    let o = run(&s, idea).await;
    let PrOutcome::Failed {
        stage,
        message,
        commit,
    } = &o
    else {
        panic!("{o:?}")
    };
    assert_eq!(stage, "push");
    assert!(message.contains("refused"), "{message}");
    let kept = commit.clone().expect("kept");
    assert_eq!(git(&s.work, &["log", "-1", "--format=%H"]).trim(), kept);
    let m = s.n.messages(&s.conv).await;
    assert!(
        system_texts(&m)
            .iter()
            .any(|t| t.contains("Retry with `sam pr")),
        "{m:?}"
    );
    assert_no_secret(s.n.dir.path());
    s.gh.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_push_rights_and_agent_crash_keep_the_work() {
    let s = setup("wrong-password").await;
    let idea = "Crash halfway";
    pr(
        &s,
        PrRequest::Enable {
            conv: s.conv.clone(),
            settings: settings(&s, idea),
        },
    )
    .await;
    let p = s.n.prompt(&s.conv, "write half.txt partial; crash").await;
    let done = s.n.ended(&s.conv, &p).await;
    assert_ne!(done.status, Status::Done);
    let m =
        s.n.wait(&s.conv, "the PR message", |m| !system_texts(m).is_empty())
            .await;
    let t = &system_texts(&m)[0];
    assert!(t.contains("(agent)") && t.contains("kept in commit"), "{t}");
    assert!(git(&s.work, &["show", "--stat", "HEAD"]).contains("half.txt"));
    // Retrying pushes with a credential that has no rights: a clear push failure.
    let o = run(&s, idea).await;
    let PrOutcome::Failed {
        stage,
        message,
        commit,
    } = &o
    else {
        panic!("{o:?}")
    };
    assert_eq!(stage, "push");
    assert!(message.contains("credential"), "{message}");
    assert!(commit.is_some());
    assert!(s.gh.pulls("o/r").is_empty());
    assert_no_secret(s.n.dir.path());
}

#[tokio::test]
async fn the_fake_refuses_a_request_that_breaks_the_spec() {
    let gh = github::FakeGitHub::start(TOKEN).await;
    gh.add_repo("o/r");
    // `head` and `base` are required by the spec.
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            &format!("authorization: Bearer {TOKEN}"),
        ])
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"title":"t"}"#,
        ])
        .arg(format!("{}/repos/o/r/pulls", gh.url))
        .output()
        .await
        .expect("curl");
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not match the spec"));
    assert!(!gh.lock().violations.is_empty());
}
