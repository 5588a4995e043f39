//! A real nginx in front of heimdall's `/decision` for integration tests, configured with the
//! `auth_request` recipe of docs/integrations/forward-auth.md (the fenced `nginx` block after
//! "**nginx:**").
//!
//! nginx runs in the foreground without a master process (`daemon off; master_process off;`), in
//! a temporary prefix of its own (configuration, pid file, error log, temp directories), listening
//! on a free loopback port. The recipe's `http://heimdall:8080` and `http://app` are replaced by
//! the loopback addresses of heimdall's side port and of the upstream; nothing else of the recipe
//! is changed, so the test runs what operators copy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::process::{ManagedProcess, fail, fresh_dir};
use super::{free_port, tools};

/// How long nginx may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The documented nginx recipe: the first ```` ```nginx ```` block after the `**nginx:**` line of
/// the forward-auth guide.
pub fn documented_recipe() -> Result<String, String> {
    const GUIDE: &str = "docs/integrations/forward-auth.md";
    let readme = std::fs::read_to_string(tools::repo_root().join(GUIDE))
        .map_err(|e| format!("read {GUIDE}: {e}"))?;
    let (_, after) = readme
        .split_once("**nginx:**")
        .ok_or(format!("{GUIDE} has no `**nginx:**` recipe"))?;
    let (_, block) = after
        .split_once("```nginx\n")
        .ok_or(format!("the nginx recipe of {GUIDE} has no ```nginx block"))?;
    let (recipe, _) = block
        .split_once("\n```")
        .ok_or(format!("the nginx block of {GUIDE} is not closed"))?;
    Ok(recipe.to_owned())
}

/// The recipe with its placeholders pointed at loopback: `http://heimdall:8080` → heimdall's side
/// port, `http://app` → the upstream. Each must occur in the recipe.
pub fn render_recipe(
    recipe: &str,
    heimdall: SocketAddr,
    app: SocketAddr,
) -> Result<String, String> {
    for addr in [heimdall, app] {
        if !addr.ip().is_loopback() {
            return Err(format!(
                "test nginx only talks to loopback addresses, not {addr}"
            ));
        }
    }
    let mut rendered = recipe.to_owned();
    // `http://app` is also a prefix of nothing else in the recipe; heimdall's goes first anyway.
    for (placeholder, addr) in [("http://heimdall:8080", heimdall), ("http://app", app)] {
        if !rendered.contains(placeholder) {
            return Err(format!("the nginx recipe does not contain `{placeholder}`"));
        }
        rendered = rendered.replace(placeholder, &format!("http://{addr}"));
    }
    Ok(rendered)
}

/// A running nginx; killed (and its prefix removed) when dropped.
pub struct Nginx {
    /// `None` only while dropping.
    process: Option<ManagedProcess>,
    listen: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with `server_body` (directives inside one `server { }` block, such as a
    /// rendered recipe) and waits until it accepts connections.
    ///
    /// Returns `None` when nginx is not installed outside CI ([`tools::require`]); panics when an
    /// installed nginx does not start, with its error log.
    pub async fn start(server_body: &str) -> Option<Nginx> {
        let binary = tools::require("nginx")?;
        match Self::try_start(&binary, server_body).await {
            Ok(nginx) => Some(nginx),
            Err(message) => fail(&message),
        }
    }

    async fn try_start(binary: &Path, server_body: &str) -> Result<Nginx, String> {
        let dir = fresh_dir("nginx")?;
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("create {}: {e}", dir.join(sub).display()))?;
        }
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.display();
        let config = format!(
            "worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             access_log off;\n\
             client_body_temp_path {d}/tmp/body;\n\
             proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi;\n\
             scgi_temp_path {d}/tmp/scgi;\n\
             server {{\n\
             listen {listen};\n\
             server_name _;\n\
             {server_body}\n\
             }}\n\
             }}\n"
        );
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let log_path = dir.join("logs").join("stderr.log");
        let mut command = Command::new(binary);
        command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(dir.join("logs").join("error.log"))
            .args(["-g", "daemon off; master_process off;"]);
        let process = ManagedProcess::spawn("nginx", &mut command, &log_path)?;
        let nginx = Nginx {
            process: Some(process),
            listen,
            dir,
        };
        let ready = match &nginx.process {
            Some(process) => {
                process
                    .wait_ready(READY_TIMEOUT, POLL_INTERVAL, || async {
                        tokio::net::TcpStream::connect(listen)
                            .await
                            .map(drop)
                            .map_err(|e| format!("connect {listen}: {e}"))
                    })
                    .await
            }
            None => Ok(()),
        };
        match ready {
            Ok(()) => Ok(nginx),
            Err(e) => Err(format!(
                "nginx did not listen on {listen} within {}s: {e}\n{}",
                READY_TIMEOUT.as_secs(),
                nginx.log()
            )),
        }
    }

    /// The address nginx listens on (127.0.0.1).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// nginx's error log and output so far.
    pub fn log(&self) -> String {
        let logs = self.dir.join("logs");
        let mut text = std::fs::read_to_string(logs.join("error.log")).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(logs.join("stderr.log")).unwrap_or_default());
        text
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Dropping the process kills it before its prefix goes.
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
