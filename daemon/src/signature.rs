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
