//! The floor a proxy hop sets: a bare nginx `proxy_pass` (Debian's `nginx-light`) in front of the
//! same upstream, with keep-alive connections to it, run in the same benchmark as joch so every
//! joch figure can be read beside it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A running nginx; stopped on drop.
pub struct Nginx {
    child: Child,
    /// Its MCP URL (`http://127.0.0.1:PORT/mcp`).
    pub url: String,
    _dir: tempfile::TempDir,
}

/// The nginx binary, installing `nginx-light` (Debian) when there is none.
pub fn binary() -> anyhow::Result<PathBuf> {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    eprintln!("bench: installing nginx-light (the proxy-hop floor)");
    let sudo = if is_root() { None } else { Some("sudo") };
    let apt = |args: &[&str]| {
        let mut c = match sudo {
            Some(s) => {
                let mut c = Command::new(s);
                c.arg("apt-get");
                c
            }
            None => Command::new("apt-get"),
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null()).status()
    };
    apt(&["update", "-qq"])?;
    let st = apt(&["install", "-y", "-qq", "nginx-light"])?;
    if !st.success() || !Path::new("/usr/sbin/nginx").exists() {
        bail!("could not install nginx-light (apt-get install nginx-light)");
    }
    Ok(PathBuf::from("/usr/sbin/nginx"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        .unwrap_or(false)
}

impl Nginx {
    /// Starts nginx on a free loopback port, proxying to `upstream` (HOST:PORT).
    pub fn start(upstream: &str) -> anyhow::Result<Nginx> {
        let bin = binary()?;
        let dir = tempfile::TempDir::new()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = format!(
            "daemon off;\nworker_processes auto;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream mcp {{ server {upstream}; keepalive 64; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 1000000;\n\
                 location / {{\n      proxy_pass http://mcp;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
            d = dir.path().display(),
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not listen on {port}; see {}/error.log", dir.path().display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { child, url: format!("http://127.0.0.1:{port}/mcp"), _dir: dir })
    }

    /// Its processes (master and workers), for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        let mut p = vec![self.child.id()];
        p.extend(crate::procs::children(self.child.id()));
        p
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-QUIT").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}
