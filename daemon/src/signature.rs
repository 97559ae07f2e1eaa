//! Signed policies (`--require-signature PUBKEY`): every policy file must come with
//! a minisign signature (`FILE.minisig`, made with `minisign -Sm FILE`) by the
//! given key, so a compromised push channel cannot install a policy of its own.

use minisign_verify::{PublicKey, Signature};
use std::path::Path;

/// A minisign public key, from a `.pub` file or the bare base64 key.
pub struct PolicyKey(PublicKey);

impl PolicyKey {
    pub fn load(spec: &str) -> Result<Self, String> {
        let key = match std::fs::read_to_string(spec) {
            Ok(text) => PublicKey::decode(text.trim())
                .or_else(|_| PublicKey::from_base64(text.lines().last().unwrap_or("").trim())),
            Err(_) => PublicKey::from_base64(spec.trim()),
        };
        key.map(Self)
            .map_err(|e| format!("--require-signature {spec}: not a minisign public key ({e})"))
    }

    /// Verifies `bytes` (the content of `path`) against `path.minisig`.
    pub fn verify(&self, path: &Path, bytes: &[u8]) -> Result<(), String> {
        let mut sig_path = path.as_os_str().to_owned();
        sig_path.push(".minisig");
        let text = std::fs::read_to_string(&sig_path).map_err(|e| {
            format!(
                "unsigned policy file: cannot read {} ({e}); sign it with `minisign -Sm`",
                Path::new(&sig_path).display()
            )
        })?;
        let sig = Signature::decode(&text).map_err(|e| {
            format!(
                "malformed signature {}: {e}",
                Path::new(&sig_path).display()
            )
        })?;
        self.0
            .verify(bytes, &sig, false)
            .map_err(|e| format!("signature check failed ({e}): the file was changed after signing or signed by another key"))
    }
}

/// A signed policy set: `DIR/MANIFEST.json` lists every policy file of the
/// directory with its SHA-256 and an increasing serial, and
/// `MANIFEST.json.minisig` signs it. With a manifest, a file's bytes must
/// match their digest (instead of carrying a signature of their own), a file
/// the manifest lists must be there (a deleted fragment is refused), a file
/// it does not list must not (an added one is refused), and the daemon
/// refuses a serial older than the one in force (a replayed set).
pub const MANIFEST: &str = "MANIFEST.json";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub serial: u64,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub name: String,
    pub sha256: String,
}

/// A directory whose signed manifest checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedSet {
    pub dir: std::path::PathBuf,
    pub serial: u64,
    files: std::collections::BTreeMap<String, String>,
}

impl SignedSet {
    /// The file names its manifest lists.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }
}

impl PolicyKey {
    /// The signed sets among `paths` (directories with a manifest), each
    /// manifest's signature checked and its file list compared with what
    /// the directory holds.
    pub fn sets(&self, paths: &[std::path::PathBuf]) -> Result<Vec<SignedSet>, String> {
        let mut sets = Vec::new();
        for dir in paths.iter().filter(|p| p.is_dir()) {
            let path = dir.join(MANIFEST);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            self.verify(&path, &bytes)?;
            let m: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a policy set manifest ({e})", path.display()))?;
            let files: std::collections::BTreeMap<String, String> =
                m.files.into_iter().map(|f| (f.name, f.sha256)).collect();
            let present = policy_files(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if let Some(missing) = files.keys().find(|n| !present.contains(*n)) {
                return Err(format!(
                    "{}: {missing} is in the signed manifest (serial {}) but missing: a fragment was deleted",
                    dir.display(),
                    m.serial
                ));
            }
            if let Some(extra) = present.iter().find(|n| !files.contains_key(*n)) {
                return Err(format!(
                    "{}: {extra} is not in the signed manifest (serial {}): a fragment was added",
                    dir.display(),
                    m.serial
                ));
            }
            sets.push(SignedSet {
                dir: dir.clone(),
                serial: m.serial,
                files,
            });
        }
        Ok(sets)
    }

    /// Verifies a policy file: by its set's manifest if it is in one, else
    /// by its own signature.
    pub fn verify_in(&self, sets: &[SignedSet], path: &Path, bytes: &[u8]) -> Result<(), String> {
        let in_set = sets.iter().find(|s| path.parent() == Some(s.dir.as_path()));
        let Some(set) = in_set else {
            return self.verify(path, bytes);
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let digest = sha256_hex(bytes);
        match set.files.get(&name) {
            Some(want) if *want == digest => Ok(()),
            Some(_) => Err(format!(
                "does not match the signed manifest of {} (serial {}): changed after signing",
                set.dir.display(),
                set.serial
            )),
            None => Err(format!(
                "is not in the signed manifest of {}",
                set.dir.display()
            )),
        }
    }
}

/// The policy files of a directory as the loader reads them (`*.toml`,
/// not hidden, not recursive), by name.
fn policy_files(dir: &Path) -> std::io::Result<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") && !name.starts_with('.') && e.file_type()?.is_file() {
            out.insert(name);
        }
    }
    Ok(out)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The signed sets in force: (directory, serial).
pub type Serials = Vec<(String, u64)>;

/// Refuses a set older than the one in force for the same directory.
pub fn check_serials(in_force: &[(String, u64)], new: &[SignedSet]) -> Result<(), String> {
    for s in new {
        let dir = s.dir.display().to_string();
        if let Some((_, old)) = in_force.iter().find(|(d, _)| *d == dir)
            && s.serial < *old
        {
            return Err(format!(
                "{dir}: policy set serial {} is older than serial {old} in force: a replayed set",
                s.serial
            ));
        }
    }
    Ok(())
}

/// `warden policy sign DIR --key SECRET`: writes `DIR/MANIFEST.json` (every
/// policy file with its SHA-256; the serial given, or one more than the
/// manifest there) and its signature, made by the `minisign` tool (which
/// asks for an encrypted key's password).
pub fn sign_dir(dir: &Path, key: &Path, serial: Option<u64>) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let previous = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
        .map_or(0, |m| m.serial);
    let serial = serial.unwrap_or(previous + 1);
    let mut files = Vec::new();
    for name in policy_files(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let bytes = std::fs::read(dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
        files.push(ManifestFile {
            name,
            sha256: sha256_hex(&bytes),
        });
    }
    if files.is_empty() {
        return Err(format!("{}: no *.toml policy files to sign", dir.display()));
    }
    let manifest = Manifest { serial, files };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())? + "\n";
    // The manifest goes in place only once its signature exists: written
    // under a hidden name, signed there, then both renamed (signature first,
    // so a daemon reading in between sees the old manifest with a signature
    // that does not match it, and rejects).
    let tmp = dir.join(".MANIFEST.json");
    std::fs::write(&tmp, &text).map_err(|e| e.to_string())?;
    if let Err(e) = minisign_sign(
        &tmp,
        key,
        &format!("ollama-warden policy set, serial {serial}"),
    ) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let mut sig_tmp = tmp.as_os_str().to_owned();
    sig_tmp.push(".minisig");
    let mut sig_path = path.as_os_str().to_owned();
    sig_path.push(".minisig");
    std::fs::rename(&sig_tmp, &sig_path).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    Ok(manifest)
}

/// Signs `file` with the `minisign` tool (which asks for an encrypted key's
/// password), writing
/// `file.minisig` with `trusted` as its trusted comment.
pub fn minisign_sign(file: &Path, key: &Path, trusted: &str) -> Result<(), String> {
    let status = std::process::Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(key)
        .arg("-m")
        .arg(file)
        .args(["-t", trusted])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running minisign (it makes the signature): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "minisign could not sign with {} ({status})",
            key.display()
        ))
    }
}
