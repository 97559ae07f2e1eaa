//! The .deb (packaging/deb/build.sh) installs, upgrades, is removed and purged
//! with dpkg on this machine; its units verify; and none of it touches
//! enforcement that is in force.

use std::path::Path;
use std::process::Command;
use warden_tests::{Lab, sh, workspace};

const PROXY_USER: &str = "ollama-warden-proxy";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status} ${Version}", "ollama-warden"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.strip_prefix("install ok installed ").map(str::to_owned)
}

fn user_exists() -> bool {
    Command::new("getent")
        .args(["passwd", PROXY_USER])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Purges the package and removes the user this test created, even on failure.
struct Cleanup {
    created_user: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "ollama-warden"])
            .output();
        if self.created_user {
            let _ = Command::new("userdel").arg(PROXY_USER).output();
        }
    }
}

#[test]
fn the_deb_installs_upgrades_and_removes_cleanly_and_leaves_enforcement_alone() {
    assert_eq!(
        installed_version(),
        None,
        "ollama-warden is installed on this machine; this test installs and purges it, \
         so it refuses to run"
    );
    let _cleanup = Cleanup {
        created_user: !user_exists(),
    };
    let mut lab = Lab::new();
    let ns = lab.netns("pkg");
    let out = lab.run_dir.join("debs");
    let build = |version: &str| {
        let deb = run(Command::new(workspace().join("packaging/deb/build.sh"))
            .arg(warden_tests::warden_bin())
            .arg(version)
            .arg(&out));
        deb.trim().to_owned()
    };
    let (v1, v2) = (build("0.1.0~test1"), build("0.1.0~test2"));

    // Enforcement in force before, during and after: the maintainer scripts
    // never touch it (a lab daemon with its own pins stands in for it).
    let policy = lab.policy(
        "p.toml",
        &format!(
            "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{}\"]\n",
            lab.cgroup("server")
        ),
    );
    let d = lab.daemon(Some(&ns), &policy);
    let generation = lab.status()["generation"].clone();

    let text = run(Command::new("dpkg").args(["-i", &v1]));
    assert!(text.contains("nothing started"), "{text}");
    assert_eq!(installed_version().as_deref(), Some("0.1.0~test1"));
    assert!(user_exists(), "the proxy's system user");
    let meta = std::fs::metadata("/etc/ollama-warden/proxy.toml").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.mode() & 0o777,
        0o640,
        "proxy config readable by its group only"
    );
    let check = run(Command::new("/usr/bin/warden").args([
        "policy",
        "check",
        "/etc/ollama-warden/policy.d",
    ]));
    assert!(check.starts_with("ok: 1 file(s); ports [11434]"), "{check}");
    // The units verify against the installed binary and paths.
    let verify = run(Command::new("systemd-analyze").args([
        "verify",
        "/usr/lib/systemd/system/ollama-warden.service",
        "/usr/lib/systemd/system/ollama-warden-proxy.service",
    ]));
    assert!(
        !verify.contains("ollama-warden"),
        "systemd-analyze verify complains about our units:\n{verify}"
    );

    // An operator's edit of a conffile survives the upgrade.
    let conf = Path::new("/etc/ollama-warden/policy.d/00-default.toml");
    let edited = format!(
        "{}# edited by the operator\n",
        std::fs::read_to_string(conf).unwrap()
    );
    std::fs::write(conf, &edited).unwrap();
    run(Command::new("dpkg").args(["--force-confold", "-i", &v2]));
    assert_eq!(installed_version().as_deref(), Some("0.1.0~test2"));
    assert_eq!(std::fs::read_to_string(conf).unwrap(), edited);

    // Removal keeps configuration; purge removes it.
    run(Command::new("dpkg").args(["-r", "ollama-warden"]));
    assert!(!Path::new("/usr/bin/warden").exists());
    assert!(!Path::new("/usr/lib/systemd/system/ollama-warden.service").exists());
    assert!(conf.exists(), "remove keeps conffiles");
    run(Command::new("dpkg").args(["-P", "ollama-warden"]));
    assert!(
        !Path::new("/etc/ollama-warden").exists(),
        "purge removes /etc/ollama-warden"
    );
    assert!(!Path::new("/etc/default/ollama-warden").exists());
    assert_eq!(installed_version(), None);

    let status = lab.status();
    assert_eq!(status["enforcing"], true, "{status:#}");
    assert_eq!(status["generation"], generation);
    assert_eq!(
        sh(&format!("kill -0 {} && echo alive", d.pid())).trim(),
        "alive"
    );
}
