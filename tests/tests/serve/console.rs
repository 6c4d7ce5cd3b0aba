//! The console (`capsule serve --console`) in a real headless Chromium,
//! driven over WebDriver (`chromedriver`, Debian's `chromium-driver`):
//! sign-in with keys of each role, the overview, a plugin whose every word
//! is markup, pausing from the page, a dead letter and its re-publish, the
//! graph, and the CSRF check. Screenshots of each page go to
//! `target/console/` for review.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use capsule_host::access::{ApiKey, Role, digest_of, parse_digest};
use capsule_host::serve::ServeOptions;
use capsule_host::services::calls::CallTarget;
use capsule_host::services::events::TopicPattern;
use capsule_host::services::kv::KvGrant;
use capsule_host::{Grants, PluginSpec};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{
    HELLO, HELLO_V0_1, INGEST_ENRICH, INGEST_TRANSFORM, MARKUP, ORDER_AUDIT, ROUTER, THUMBNAIL,
};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;

use super::{Server, TOKEN};

const VIEW_KEY: &str = "capsule_view_key_for_the_console_test_0000000000000000000000000000";
const CALL_KEY: &str = "capsule_call_key_for_the_console_test_0000000000000000000000000000";

fn key(name: &str, role: Role, secret: &str) -> ApiKey {
    ApiKey {
        name: name.to_owned(),
        digest: parse_digest(&digest_of(secret)).unwrap(),
        role,
        plugins: vec![capsule_host::access::NamePattern::parse("*").unwrap()],
        pipelines: Vec::new(),
        topics: Vec::new(),
        rate: None,
    }
}

/// A host with keys of each role, a plugin made of markup, a subscriber
/// that rejects malformed orders, a pipeline and a call edge.
async fn console_server() -> Server {
    let host = capsule_tests::host_builder()
        .api_keys(vec![
            key("watcher", Role::View, VIEW_KEY),
            key("shop", Role::Call, CALL_KEY),
        ])
        .build()
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(MARKUP)))
        .await
        .unwrap();
    let mut audit = Grants {
        kv: Some(KvGrant::new("audit")),
        ..Grants::default()
    };
    audit.events.subscribe = vec![TopicPattern::parse("orders.created").unwrap()];
    host.load(PluginSpec::from_path(plugin_path(ORDER_AUDIT)).grants(audit))
        .await
        .unwrap();
    // The router requires the `thumbnail` capability.
    host.load(PluginSpec::from_path(plugin_path(THUMBNAIL)))
        .await
        .unwrap();
    let router = Grants {
        calls: ["capability:greeting", "hello"]
            .into_iter()
            .map(|edge| CallTarget::parse(edge).unwrap())
            .collect(),
        ..Grants::default()
    };
    host.load(PluginSpec::from_path(plugin_path(ROUTER)).grants(router))
        .await
        .unwrap();
    for (name, plugin) in [("transform", INGEST_TRANSFORM), ("enrich", INGEST_ENRICH)] {
        host.load(PluginSpec::from_path(plugin_path(plugin)).with_name(name))
            .await
            .unwrap();
    }
    host.define_pipeline("ingest", vec!["transform".into(), "enrich".into()]);
    Server::serve(
        host,
        ServeOptions {
            console: true,
            ..ServeOptions::default()
        },
    )
    .await
}

/// `chromedriver` on a free loopback port, ended when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "chromedriver could not start ({err}): install Debian's `chromium` and \
                     `chromium-driver` (.ci/run does)"
                )
            });
        // Owned at once: dropping it ends the process on every path.
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // reqwest shares the host's TLS build, which needs a provider.
        capsule_host::tls::install_provider();
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(response) = client.get(format!("{}/status", driver.url)).send().await
                && response.status().is_success()
            {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer on {}", driver.url);
    }

    /// A new headless Chromium session with its own profile.
    async fn browser(&self, profile: &std::path::Path) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": chromium(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1440,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> String {
    for candidate in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(candidate).exists() {
            return candidate.to_owned();
        }
    }
    "chromium".to_owned()
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Clicks what `locator` finds and waits for the page it leads to: the old
/// document goes stale, the new one finishes loading.
async fn click_and_load(browser: &Client, locator: Locator<'_>) {
    let old = browser.find(Locator::Css("html")).await.unwrap();
    browser
        .find(locator)
        .await
        .unwrap_or_else(|err| panic!("{locator:?}: {err}"))
        .click()
        .await
        .unwrap();
    for _ in 0..200 {
        if old.tag_name().await.is_err() {
            let ready = browser
                .execute("return document.readyState", Vec::new())
                .await
                .unwrap();
            if ready == "complete" {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{locator:?}: the click led to no new page");
}

async fn sign_in(browser: &Client, base: &str, key: &str) {
    browser
        .goto(&format!("{base}/console/login"))
        .await
        .unwrap();
    browser
        .find(Locator::Id("key"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
    click_and_load(browser, Locator::Id("sign-in")).await;
}

async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("{css}: {err}"))
        .text()
        .await
        .unwrap()
}

/// Greets Ada through the API with the `call` key: the answer's status.
async fn greet(server: &Server) -> StatusCode {
    server
        .client
        .post(server.url("/v1/plugins/hello/call?op=greet"))
        .bearer_auth(CALL_KEY)
        .body(r#"{"name":"Ada"}"#)
        .send()
        .await
        .unwrap()
        .status()
}

/// The browser's console session cookie.
async fn session_cookie(browser: &Client) -> String {
    browser
        .get_named_cookie("capsule_console")
        .await
        .unwrap()
        .value()
        .to_owned()
}

/// Posts a console form outside the browser, with `cookie` as the session.
async fn post_form(server: &Server, path: &str, cookie: &str, form: &str) -> StatusCode {
    server
        .client
        .post(server.url(path))
        .header("cookie", format!("capsule_console={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .unwrap()
        .status()
}

async fn no_script_ran(browser: &Client) {
    // An `alert()` would leave a dialog open; the injected `onerror` would
    // have set the title.
    assert!(
        browser.get_alert_text().await.is_err(),
        "a dialog is open: plugin text ran as script"
    );
    let title = browser.title().await.unwrap();
    assert_ne!(title, "pwned", "plugin text ran as script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_plugins_and_refusals_and_lets_an_admin_act_in_a_real_browser() {
    let server = console_server().await;
    let base = server.base.clone();
    // Traffic for the pages to show: hello succeeds, markup always fails.
    for _ in 0..5 {
        assert_eq!(greet(&server).await, StatusCode::OK);
        let response = server
            .client
            .post(server.url("/v1/plugins/markup/call?op=run"))
            .bearer_auth(CALL_KEY)
            .send()
            .await
            .unwrap();
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["kind"], "plugin_error", "{error}");
    }
    // A malformed order, itself markup, that order-audit rejects.
    let response = server
        .client
        .post(server.url("/v1/events/orders.created"))
        .bearer_auth(TOKEN)
        .body("<script>alert(3)</script>")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let driver = Driver::start().await;
    let profile = capsule_tests::temp_dir("console-browser");
    let browser = driver.browser(&profile).await;

    // With keys in the policy, the console asks who is looking.
    browser.goto(&format!("{base}/console")).await.unwrap();
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/login")
    );
    // A `call` key is not for the console.
    sign_in(&browser, &base, CALL_KEY).await;
    assert!(
        text_of(&browser, "p.error")
            .await
            .contains("cannot use the console")
    );
    sign_in(&browser, &base, "capsule_not_a_key").await;
    assert!(
        text_of(&browser, "p.error")
            .await
            .contains("not a valid API key")
    );
    screenshot(&browser, "login").await;

    // The view key: the overview lists every plugin with its numbers.
    sign_in(&browser, &base, VIEW_KEY).await;
    assert_eq!(browser.current_url().await.unwrap().path(), "/console");
    let table = text_of(&browser, "#plugins").await;
    for plugin in [
        "hello",
        "markup",
        "order-audit",
        "router",
        "transform",
        "enrich",
    ] {
        assert!(
            table.contains(plugin),
            "{plugin} missing from the overview: {table}"
        );
    }
    let hello_row = text_of(&browser, "tr[data-plugin=hello]").await;
    assert!(hello_row.contains("active"), "{hello_row}");
    assert!(
        hello_row.contains("0.07") || hello_row.contains("0.08"),
        "5 calls in the last minute: {hello_row}"
    );
    let markup_row = text_of(&browser, "tr[data-plugin=markup]").await;
    assert!(
        markup_row.contains("100.0%"),
        "every markup call failed: {markup_row}"
    );
    assert!(
        text_of(&browser, "header .who")
            .await
            .contains("watcher (view)")
    );
    assert_eq!(
        text_of(&browser, "#dead-letter-count").await,
        "dead letters here: 1"
    );
    screenshot(&browser, "overview").await;

    // A plugin whose description, error and log are markup shows them as
    // text, and nothing runs.
    browser
        .goto(&format!("{base}/console/plugins/markup"))
        .await
        .unwrap();
    assert_eq!(
        text_of(&browser, "#description").await,
        "<script>alert(1)</script>"
    );
    // Kinds and counts for a view key; the messages, which may quote other
    // callers' input, only for admin keys.
    let errors = text_of(&browser, "#errors").await;
    assert!(errors.contains("plugin_error"), "{errors}");
    assert!(errors.contains("shown to admin keys"), "{errors}");
    assert!(!errors.contains("<img"), "{errors}");
    no_script_ran(&browser).await;
    // A view key sees no actions and no audit log.
    assert!(browser.find(Locator::Id("pause")).await.is_err());
    assert!(
        text_of(&browser, "#denials")
            .await
            .contains("shown to admin keys")
    );
    screenshot(&browser, "plugin-markup").await;

    // Nor may it act by posting the forms itself, with its own session's
    // CSRF token.
    let view_cookie = session_cookie(&browser).await;
    let view_csrf = browser
        .find(Locator::Css("header .who input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    for (path, form) in [
        ("/console/plugins/hello/pause", format!("csrf={view_csrf}")),
        (
            "/console/events/republish",
            format!("csrf={view_csrf}&id=00"),
        ),
    ] {
        assert_eq!(
            post_form(&server, path, &view_cookie, &form).await,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    assert_eq!(
        server.host.status("hello").unwrap().state,
        capsule_host::PluginState::Active
    );

    // Grants next to imports: hello was granted its log here, not the
    // metrics and events it imports, which `capsule check` would warn of.
    browser
        .goto(&format!("{base}/console/plugins/hello"))
        .await
        .unwrap();
    let grants = text_of(&browser, "#grants").await;
    assert!(
        grants.contains("capsule:plugin/log@0.2.0 granted: log"),
        "{grants}"
    );
    assert!(
        grants.contains("capsule:plugin/metrics@0.2.0 not granted: metrics"),
        "{grants}"
    );

    // The dead letter, with its payload as text.
    browser
        .goto(&format!("{base}/console/events"))
        .await
        .unwrap();
    let letters = text_of(&browser, "#dead-letters").await;
    assert!(letters.contains("order-audit"), "{letters}");
    assert!(letters.contains("<script>alert(3)</script>"), "{letters}");
    assert!(letters.contains("malformed order"), "{letters}");
    assert!(
        text_of(&browser, "#topics")
            .await
            .contains("orders.created")
    );
    no_script_ran(&browser).await;
    // Viewing is not acting: no re-publish button for a view key.
    assert!(browser.find(Locator::Css(".republish")).await.is_err());
    screenshot(&browser, "events").await;

    // The graph: the pipeline's stages and the router's call edge.
    browser
        .goto(&format!("{base}/console/graph"))
        .await
        .unwrap();
    let svg = browser
        .find(Locator::Css("svg.graph"))
        .await
        .unwrap()
        .html(false)
        .await
        .unwrap();
    assert!(
        svg.contains("pipeline ingest: transform then enrich"),
        "{svg}"
    );
    assert!(svg.contains("router may call hello"), "{svg}");
    assert!(svg.contains("router may call greeting"), "{svg}");
    assert!(svg.contains("topic orders.created"), "{svg}");
    screenshot(&browser, "graph").await;

    // The admin token: pause hello from its page, through the confirmation.
    click_and_load(&browser, Locator::Css("header .who button")).await;
    sign_in(&browser, &base, TOKEN).await;
    browser
        .goto(&format!("{base}/console/plugins/hello"))
        .await
        .unwrap();
    click_and_load(&browser, Locator::Id("pause")).await;
    assert!(text_of(&browser, "main").await.contains("Pause `hello`?"));
    click_and_load(&browser, Locator::Id("confirm")).await;
    assert!(
        text_of(&browser, "p.flash")
            .await
            .contains("Done: pause hello")
    );
    assert!(text_of(&browser, "h1").await.contains("paused"));
    assert_eq!(greet(&server).await, StatusCode::SERVICE_UNAVAILABLE);
    // The admin sees error messages, as text.
    browser
        .goto(&format!("{base}/console/plugins/markup"))
        .await
        .unwrap();
    let errors = text_of(&browser, "#errors").await;
    assert!(errors.contains("<img src=x onerror="), "{errors}");
    no_script_ran(&browser).await;
    browser
        .goto(&format!("{base}/console/plugins/hello"))
        .await
        .unwrap();
    // The admin sees the audit log on the page: the pause, by the token.
    let audit = text_of(&browser, "#denials").await;
    assert!(
        audit.contains("admin-token") && audit.contains("pause"),
        "{audit}"
    );
    screenshot(&browser, "plugin-hello-paused").await;

    // A form without the session's CSRF token is refused, even with the
    // session's cookie.
    let cookie = session_cookie(&browser).await;
    assert_eq!(
        post_form(
            &server,
            "/console/plugins/hello/resume",
            &cookie,
            "csrf=0000"
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        server.host.status("hello").unwrap().state,
        capsule_host::PluginState::Paused
    );

    click_and_load(&browser, Locator::Id("resume")).await;
    click_and_load(&browser, Locator::Id("confirm")).await;
    assert!(
        text_of(&browser, "p.flash")
            .await
            .contains("Done: resume hello")
    );
    assert_eq!(
        server.host.status("hello").unwrap().state,
        capsule_host::PluginState::Active
    );

    // A rollout: both versions side by side, and the admin aborts it. (The
    // router requires hello's `greeting`, which the 0.1 version does not
    // provide: it goes first, or the rollout would be refused.)
    assert!(server.host.unload("router").await);
    let started = server
        .admin(
            "/v1/plugins/hello/rollout",
            serde_json::json!({ "path": plugin_path(HELLO_V0_1), "share": 30 }).to_string(),
        )
        .await;
    assert_eq!(started.status(), StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(greet(&server).await, StatusCode::OK);
    }
    browser
        .goto(&format!("{base}/console/plugins/hello"))
        .await
        .unwrap();
    let stable = text_of(&browser, "#rollout-versions tr[data-track=stable]").await;
    let canary = text_of(&browser, "#rollout-versions tr[data-track=canary]").await;
    assert!(text_of(&browser, "#rollout").await.contains("takes 30%"));
    let calls = |row: &str| -> u64 { row.split_whitespace().nth(3).unwrap().parse().unwrap() };
    assert_eq!(calls(&stable) + calls(&canary), 10, "{stable} | {canary}");
    assert!(calls(&canary) > 0, "{canary}");
    screenshot(&browser, "plugin-hello-rollout").await;
    click_and_load(&browser, Locator::Id("abort")).await;
    click_and_load(&browser, Locator::Id("confirm")).await;
    assert!(
        text_of(&browser, "p.flash")
            .await
            .contains("Done: abort hello")
    );
    assert!(text_of(&browser, "#rollout").await.contains("aborted"));

    // Re-publishing the dead letter: order-audit rejects it again.
    browser
        .goto(&format!("{base}/console/events"))
        .await
        .unwrap();
    click_and_load(&browser, Locator::Css("a.republish")).await;
    // Asked first, naming who will receive it.
    assert!(
        text_of(&browser, "#receivers")
            .await
            .contains("order-audit")
    );
    screenshot(&browser, "republish-confirm").await;
    click_and_load(&browser, Locator::Id("confirm")).await;
    assert!(
        text_of(&browser, "p.flash")
            .await
            .contains("Done: re-publish on `orders.created`")
    );
    let mut letters = 0;
    for _ in 0..50 {
        letters = server.host.dead_letters().len();
        if letters >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(letters, 2, "the re-published event was rejected again");
    no_script_ran(&browser).await;

    browser.close().await.unwrap();
    drop(driver);
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

#[tokio::test]
async fn the_console_is_off_unless_asked_and_read_only_for_anonymous_readers() {
    // Off by default.
    let server = Server::start().await;
    assert_eq!(server.get("/console").await.status(), StatusCode::NOT_FOUND);
    server.stop().await.unwrap();

    // On a host without keys reading is open, as for the API, but acting
    // needs a signed-in admin.
    let server = Server::start_with(ServeOptions {
        console: true,
        ..ServeOptions::default()
    })
    .await;
    let page = server.get("/console").await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let body = page.text().await.unwrap();
    assert!(body.contains("anonymous (read only)"));
    assert!(body.contains("hello-secret"));
    // A config secret is no more visible here than in the API: its name is,
    // its value is not.
    let secret = server.get("/console/plugins/hello-secret").await;
    assert_eq!(secret.status(), StatusCode::OK);
    let secret = secret.text().await.unwrap();
    assert!(secret.contains("greeting"), "the grants are listed by name");
    assert!(!secret.contains("Psst-zq7"));
    let confirm = server.get("/console/plugins/hello/confirm/pause").await;
    assert_eq!(confirm.status(), StatusCode::FORBIDDEN);
    let act = server
        .client
        .post(server.url("/console/plugins/hello/pause"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=")
        .send()
        .await
        .unwrap();
    assert_eq!(act.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        server.host.status("hello").unwrap().state,
        capsule_host::PluginState::Active
    );
    // A login needs the form's token as well as its cookie: a form posted
    // from another site, even with the right key, signs nobody in.
    let forged = server
        .client
        .post(server.url("/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={TOKEN}&csrf=0123"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let cookies: Vec<_> = forged.headers().get_all("set-cookie").iter().collect();
    assert!(
        cookies
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("capsule_console=")),
        "{cookies:?}"
    );
    // The cluster: an embedded host lists itself, serving its plugins.
    let cluster = server.get("/console/cluster").await;
    assert_eq!(cluster.status(), StatusCode::OK);
    let cluster = cluster.text().await.unwrap();
    assert!(cluster.contains("(this host)"), "{cluster}");
    assert!(cluster.contains("hello-strict 0.1.0"), "{cluster}");
    // The static parts are served with the console.
    let script = server.get("/console/static/console.js").await;
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        server.get("/console/plugins/nope").await.status(),
        StatusCode::NOT_FOUND
    );
    server.stop().await.unwrap();
}

/// Signs in to the console with `key` outside a browser: the login form's
/// token and cookie, then the form. The session cookie's value.
async fn console_login(server: &Server, key: &str) -> String {
    // reqwest shares the host's TLS build, which needs a provider.
    capsule_host::tls::install_provider();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = client
        .get(server.url("/console/login"))
        .send()
        .await
        .unwrap();
    let login_cookie = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = form.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let signed_in = client
        .post(server.url("/console/login"))
        .header("cookie", login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={key}&csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("capsule_console=")
        .unwrap()
        .to_owned()
}

/// What `GET /console` answers the session `cookie`: its status, and where
/// a redirect points.
async fn overview_as(server: &Server, cookie: &str) -> (StatusCode, Option<String>) {
    // reqwest shares the host's TLS build, which needs a provider.
    capsule_host::tls::install_provider();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .get(server.url("/console"))
        .header("cookie", format!("capsule_console={cookie}"))
        .send()
        .await
        .unwrap();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    (response.status(), location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_or_demoted_by_an_apply_ends_its_console_sessions_at_once() {
    let dir = capsule_tests::temp_dir("console-rotation");
    let (watcher, ops) = (
        capsule_host::access::generate_key().unwrap(),
        capsule_host::access::generate_key().unwrap(),
    );
    let hello = format!(
        "[plugins.hello]\npath = \"{}\"\n",
        super::plugin_file(HELLO)
    );
    let keys = |watcher_role: Option<&str>| {
        let mut keys = vec![("ops", "admin", "", ops.as_str())];
        if let Some(role) = watcher_role {
            // Only a `call` key names what it may call.
            let scope = if role == "call" {
                "plugins = [\"*\"]"
            } else {
                ""
            };
            keys.push(("watcher", role, scope, watcher.as_str()));
        }
        super::api_keys(&keys)
    };
    let path = super::write_policy(&dir, &format!("{}\n{hello}", keys(Some("view"))));
    let policy = capsule_host::Policy::load(&path).unwrap();
    let host = capsule_host::HostBuilder::from_policy(&policy)
        .build()
        .unwrap();
    assert!(host.load_policy(&policy).await.is_empty());
    let server = Server::serve(
        host,
        ServeOptions {
            policy_file: Some(path.clone()),
            console: true,
            ..ServeOptions::default()
        },
    )
    .await;
    let apply = |server: &Server| {
        let request = server
            .client
            .post(server.url("/v1/policy/apply"))
            .bearer_auth(&ops)
            .send();
        async move { request.await.unwrap().status() }
    };

    // Demoted to `call`: the session no longer sees the console.
    let session = console_login(&server, &watcher).await;
    assert_eq!(overview_as(&server, &session).await.0, StatusCode::OK);
    super::write_policy(&dir, &format!("{}\n{hello}", keys(Some("call"))));
    assert_eq!(apply(&server).await, StatusCode::OK);
    assert_eq!(
        overview_as(&server, &session).await,
        (StatusCode::SEE_OTHER, Some("/console/login".to_owned()))
    );

    // Back to `view`, signed in again, then removed: the same.
    super::write_policy(&dir, &format!("{}\n{hello}", keys(Some("view"))));
    assert_eq!(apply(&server).await, StatusCode::OK);
    let session = console_login(&server, &watcher).await;
    assert_eq!(overview_as(&server, &session).await.0, StatusCode::OK);
    super::write_policy(&dir, &format!("{}\n{hello}", keys(None)));
    assert_eq!(apply(&server).await, StatusCode::OK);
    assert_eq!(
        overview_as(&server, &session).await,
        (StatusCode::SEE_OTHER, Some("/console/login".to_owned()))
    );
    // The admin key's own session is untouched.
    let admin = console_login(&server, &ops).await;
    assert_eq!(overview_as(&server, &admin).await.0, StatusCode::OK);
    server.stop().await.unwrap();
}
