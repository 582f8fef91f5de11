//! One throwaway etcd member on loopback, for the store's tests and the
//! ingest benchmark (not for production: no TLS, data in a temp dir).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::EtcdOptions;

/// A port nothing listens on now (bound, then closed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a loopback port")
}

/// The member, killed and its data removed on drop.
pub struct EtcdMember {
    child: Child,
    /// Its client URL.
    pub url: String,
    dir: PathBuf,
}

impl EtcdMember {
    /// `None` (said on stderr) when there is no `etcd` binary
    /// (`ROOMY_ETCD_BIN`, else `etcd` on PATH), unless ROOMY_REQUIRE_ETCD=1
    /// (the test command), where that panics.
    pub fn start() -> Option<EtcdMember> {
        let bin = std::env::var_os("ROOMY_ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("etcd"));
        if Command::new(&bin).arg("--version").output().is_err() {
            assert!(
                std::env::var("ROOMY_REQUIRE_ETCD").as_deref() != Ok("1"),
                "no etcd binary ({}): apt-get install etcd-server",
                bin.display()
            );
            eprintln!(
                "SKIPPED: no etcd binary ({}); apt-get install etcd-server to run the etcd engine's tests",
                bin.display()
            );
            return None;
        }
        let (client, peer) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("roomy-etcd-{}-{client}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("etcd temp dir");
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(&bin)
            .arg("--name=t")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=t={peer_url}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).expect("etcd log"))
            .spawn()
            .expect("start etcd");
        let member = EtcdMember { child, url, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(member.url.trim_start_matches("http://")).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(member)
    }

    /// Store options for this member under `prefix`.
    pub fn options(&self, prefix: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![self.url.clone()],
            prefix: prefix.into(),
            tls: None,
            timeout: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(3),
        }
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
